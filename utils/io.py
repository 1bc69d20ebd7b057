"""Image and label files: OpenCV decoding with errors that name the file, atomic PNG writes."""
import os
import tempfile

import cv2
import numpy as np

from utils.cli import UserError

cv2.setNumThreads(1)  # loaders run in many worker processes; one thread each avoids oversubscription


def read_image_bgr(path):
    """Read a colour image as ``uint8`` H×W×3 in BGR order (OpenCV's and the network's order)."""
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image (unreadable or truncated): {path}")
    return image


def _is_palette_png(path):
    """Whether ``path`` is a PNG of palette indices (colour type 3 in its IHDR chunk)."""
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25] == 3


def read_label(path, channel=None):
    """Read a label map (train ids or label ids) as H×W, keeping its bit depth. A palette PNG (as
    GTA5's labels are) gives its indices, not the colours they stand for. From a multi-channel file,
    take ``channel`` in OpenCV's BGR(A) order; without one, the channels must be equal (some tools
    save grey labels that way): a colour picture of the classes is not a label map."""
    if not os.path.isfile(path):
        raise UserError(f"label not found: {path}")
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise UserError(f"cannot read label (unreadable or truncated): {path}")
    if label.ndim == 3:
        if _is_palette_png(path):  # OpenCV turned the palette indices into colours: read the indices
            from PIL import Image

            with Image.open(path) as image:
                return np.asarray(image)
        if channel is None:
            if not all(np.array_equal(label[:, :, 0], label[:, :, c]) for c in range(1, label.shape[2])):
                raise UserError(f"{path} is a colour image, not a map of label ids (one id per pixel, grey "
                                "or palette PNG): point at the label-id files")
            channel = 0
        label = label[:, :, channel]
    return label


def json_number(value, digits=None):
    """``value`` as a JSON number (rounded to ``digits``), or ``None`` for NaN, which JSON lacks
    (the IoU of a class absent from both prediction and ground truth)."""
    if value != value:
        return None
    return float(value) if digits is None else round(float(value), digits)


def encode_png(array, compression=None):
    """Encode an H×W (grey) or H×W×3 (BGR) ``uint8`` array as PNG bytes (``compression`` 0..9,
    OpenCV's default when ``None``)."""
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, compression]
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(array), params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def _file_mode():
    """The mode ``open()`` gives a new file under the process's umask (mkstemp's files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()
TEMP_PREFIX = ".tmp-"  # an atomic write's temporary file, beside its target until the rename


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file and a rename: never a truncated file."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder: the file to write cannot replace it")
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{folder} is a file, not a folder: {path} cannot be written") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
    except OSError as err:  # it names the temporary file: name the file being written
        raise OSError(err.errno, err.strerror, path) from None
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.filename in (None, tmp):  # a full disk names no file: name it
            raise OSError(err.errno, err.strerror, path) from None
        raise


def write_png(path, array):
    """Atomically write a ``uint8`` label map (H×W) or BGR image (H×W×3) as PNG."""
    atomic_write_bytes(path, encode_png(array))


def write_rgb_png(path, rgb):
    """Atomically write an RGB ``uint8`` image (H×W×3) as PNG."""
    write_png(path, np.ascontiguousarray(rgb[:, :, ::-1]))


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))
