"""Pictures of predictions: image | labels side by side, for TensorBoard and the demo."""
import numpy as np

from utils.labels import colorize


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
