"""Pictures of predictions: image | labels side by side, with column titles and a class legend, for
TensorBoard, the demo and ``main.py --mode predict`` (:func:`labelled_picture`)."""
import numpy as np

from utils.labels import NUM_CLASSES, PALETTE, colorize


def label_panel(image_rgb, label_maps, gap=2):
    """One row: an RGB image followed by colour-coded train-id maps, all resized to the image size.

    ``label_maps`` are H×W arrays of train ids (any resolution; nearest-resized to the image).
    """
    import cv2

    height, width = image_rgb.shape[:2]
    tiles = [image_rgb]
    for label in label_maps:
        label = np.asarray(label)
        if label.shape != (height, width):
            label = cv2.resize(label.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        tiles.append(colorize(label))
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [spacer, tile]
    return np.concatenate(row, axis=1)


def stack_rows(rows, gap=2):
    """Stack equally wide RGB rows vertically with a white gap between them."""
    spacer = np.full((gap, rows[0].shape[1], 3), 255, dtype=np.uint8)
    out = [rows[0]]
    for row in rows[1:]:
        out += [spacer, row]
    return np.concatenate(out, axis=0)


# -- titles and a class legend: every picture the toolkit writes ----------------------------------------
# Drawn with OpenCV's built-in Hershey font (no font files): black on white, sized to the columns.

MIN_TILE_WIDTH = 192  # narrower columns are enlarged (nearest, whole pixels) so that their titles fit
IGNORED = "ignored"


def _font(tile_width):
    """``(scale, thickness)`` of the text for columns ``tile_width`` pixels wide."""
    scale = min(1.4, max(0.5, tile_width / 480))
    return scale, 1 if scale < 0.9 else 2


def _text_size(text, scale, thickness):
    import cv2

    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    return width, height, baseline


def _put_text(canvas, text, x, y_baseline, scale, thickness):
    import cv2

    cv2.putText(canvas, text, (int(x), int(y_baseline)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                cv2.LINE_AA)


def title_bar(titles, tile_width, gap=2):
    """A white strip with ``titles`` centred over columns ``tile_width`` wide, ``gap`` apart."""
    scale, thickness = _font(tile_width)
    _, height, baseline = _text_size("Ag", scale, thickness)
    pad = max(4, height // 2)
    width = len(titles) * tile_width + (len(titles) - 1) * gap
    bar = np.full((height + baseline + 2 * pad, width, 3), 255, dtype=np.uint8)
    for k, title in enumerate(titles):
        s = scale
        while _text_size(title, s, thickness)[0] > tile_width - 4 and s > 0.3:  # a long title: smaller
            s *= 0.9
        text_width = _text_size(title, s, thickness)[0]
        x = k * (tile_width + gap) + max(2, (tile_width - text_width) // 2)
        _put_text(bar, title, x, pad + height, s, thickness)
    return bar


def legend(class_ids, width, tile_width, names=None, ignored=False):
    """A white strip ``width`` wide: a colour swatch and the name of every class in ``class_ids``
    (train ids, in that order), wrapped into lines; ``ignored`` adds the black of ignored pixels."""
    from utils.labels import class_names

    names = names or class_names(NUM_CLASSES)
    entries = [(PALETTE[c] if c < len(PALETTE) else np.zeros(3, np.uint8),
                names[c] if c < len(names) else f"class {c}") for c in class_ids]
    if ignored:
        entries.append((np.zeros(3, np.uint8), IGNORED))
    scale, thickness = _font(tile_width)
    scale *= 0.85
    _, height, baseline = _text_size("Ag", scale, thickness)
    swatch, pad = height + baseline, max(4, height // 2)
    line_height = swatch + pad
    lines, line, x = [], [], pad
    for colour, name in entries:
        entry_width = swatch + pad // 2 + _text_size(name, scale, thickness)[0] + 2 * pad
        if line and x + entry_width > width:
            lines.append(line)
            line, x = [], pad
        line.append((x, colour, name))
        x += entry_width
    if line:
        lines.append(line)
    strip = np.full((pad + len(lines) * line_height, width, 3), 255, dtype=np.uint8)
    for row, line in enumerate(lines):
        y = pad + row * line_height
        for x, colour, name in line:
            strip[y:y + swatch, x:x + swatch] = colour
            border = (128, 128, 128)
            strip[y, x:x + swatch] = border
            strip[y + swatch - 1, x:x + swatch] = border
            strip[y:y + swatch, x] = border
            strip[y:y + swatch, x + swatch - 1] = border
            _put_text(strip, name, x + swatch + pad // 2, y + height + (swatch - height - baseline) // 2, scale,
                      thickness)
    return strip


def classes_present(label_maps, num_classes=NUM_CLASSES):
    """The train ids (below ``num_classes``) found in any of ``label_maps``, sorted, and whether
    an ignored pixel (any other value) is among them."""
    seen = np.zeros(256, dtype=bool)
    for label in label_maps:
        seen[np.unique(np.asarray(label).astype(np.uint8))] = True
    present = [int(c) for c in np.flatnonzero(seen[:num_classes])]
    return present, bool(seen[num_classes:].any())


def annotate(grid, titles, class_ids, gap=2, ignored=False, names=None):
    """``grid`` (rows of ``len(titles)`` equally wide columns, ``gap`` apart) with ``titles`` above
    and the legend of ``class_ids`` below; columns narrower than :data:`MIN_TILE_WIDTH` are enlarged
    first by a whole factor (nearest), so that the text is legible."""
    import cv2

    columns = len(titles)
    tile_width = (grid.shape[1] - (columns - 1) * gap) // columns
    factor = max(1, -(-MIN_TILE_WIDTH // max(1, tile_width)))
    if factor > 1:
        grid = cv2.resize(grid, (grid.shape[1] * factor, grid.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
        tile_width, gap = tile_width * factor, gap * factor
        grid = grid[:, :columns * tile_width + (columns - 1) * gap]
    header = title_bar(titles, tile_width, gap)
    footer = legend(class_ids, grid.shape[1], tile_width, names=names, ignored=ignored)
    width = grid.shape[1]
    header, footer = (np.pad(part, ((0, 0), (0, width - part.shape[1]), (0, 0)), constant_values=255)
                      if part.shape[1] < width else part[:, :width] for part in (header, footer))
    return np.concatenate([header, grid, footer], axis=0)


def labelled_picture(rows, titles, num_classes=NUM_CLASSES, gap=2, legend_classes="present"):
    """Rows of image | train-id maps (``rows``: ``[(image_rgb, [label map, ...]), ...]``, see
    :func:`label_panel`) under column ``titles``, with a legend of the classes present in the maps
    (``legend_classes="all"``: every class): the pictures of the demo, of ``--mode predict`` and of
    TensorBoard."""
    grid = stack_rows([label_panel(image, maps, gap) for image, maps in rows], gap)
    maps = [m for _, label_maps in rows for m in label_maps]
    present, ignored = classes_present(maps, num_classes)
    class_ids = list(range(num_classes)) if legend_classes == "all" or not present else present
    from utils.labels import class_names

    return annotate(grid, titles, class_ids, gap, ignored=ignored, names=class_names(num_classes))
