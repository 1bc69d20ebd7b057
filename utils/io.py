"""Image and label files: the one reader of every stage (bytes read in Python, headers checked
against size bounds, then decoded from memory), atomic PNG writes.

No path is handed to OpenCV: it crashes on names that are not UTF-8 (a byte 0xff in a file name).
A file is read whole (at most :data:`MAX_FILE_BYTES`), its header's size checked (at most
:data:`MAX_SIDE` pixels per side and :data:`MAX_PIXELS` in all: a PNG may declare 100000×100000
pixels in a few bytes), and only then decoded. Label maps must hold integers of at most 16 bits.
"""
import io
import os
import tempfile
import warnings

import cv2
import numpy as np
from PIL import Image

from utils.cli import UserError

cv2.setNumThreads(1)  # loaders run in many worker processes; one thread each avoids oversubscription

MAX_FILE_BYTES = 1 << 30  # an image or label file
MAX_SIDE = 16384  # pixels per side of an image or label
MAX_PIXELS = 1 << 26  # 64 megapixels (16384x4096, 8192x8192)
# The bounds above are the toolkit's own, checked on every header; PIL's warning below them is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _too_large(path, what, size=""):
    return UserError(f"{what} too large{size}: {path} (at most {MAX_SIDE} pixels per side and "
                     f"{MAX_PIXELS // 2 ** 20} megapixels)")


def stored_shape(path, what="image", data=None):
    """``(height, width)`` of an image file from its header alone (of ``data``, its bytes, when
    given), as OpenCV decodes it (a JPEG's EXIF orientation turns it); ``None`` when the file is
    missing or no image format is recognised. A size beyond the bounds is a one-line ``UserError``."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            width, height = image.size
            if image.format == "JPEG" and image.getexif().get(0x0112) in (5, 6, 7, 8):
                width, height = height, width
    except Image.DecompressionBombError:
        raise _too_large(path, what) from None
    except Exception:  # missing, not an image, or a damaged header: PIL's plugins raise many kinds
        return None
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise _too_large(path, what, f" ({width}x{height})")
    return height, width


def _decode(path, what, flags):
    """The file ``path`` decoded with OpenCV ``flags`` from its bytes, after its header was checked."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"{what} not found: {path}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{what} file larger than {MAX_FILE_BYTES // 2 ** 30} GiB: {path}")
    if stored_shape(path, what, data) is None:
        raise UserError(f"cannot read {what} (not an image file, or a damaged one): {path}")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise UserError(f"cannot read {what} (unreadable or truncated): {path}")
    return array, data


def read_image_bgr(path):
    """Read a colour image as ``uint8`` H×W×3 in BGR order (OpenCV's and the network's order)."""
    image, _ = _decode(path, "image", cv2.IMREAD_COLOR)
    return image


def _is_palette_png(data):
    """Whether ``data`` is a PNG of palette indices (colour type 3 in its IHDR chunk)."""
    return len(data) >= 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[25] == 3


def read_label(path, channel=None):
    """Read a label map (train ids or label ids) as H×W, keeping its bit depth (integers of at most
    16 bits). A palette PNG (as GTA5's labels are) gives its indices, not the colours they stand
    for. From a multi-channel file, take ``channel`` in OpenCV's BGR(A) order; without one, the
    channels must be equal (some tools save grey labels that way): a colour picture of the classes
    is not a label map."""
    label, data = _decode(path, "label", cv2.IMREAD_UNCHANGED)
    if label.dtype.kind not in "iu" or label.dtype.itemsize > 2:
        raise UserError(f"{path} holds {label.dtype} values, not label ids (integers of 8 or 16 bits, as in a PNG)")
    if label.ndim == 3:
        if _is_palette_png(data):  # OpenCV turned the palette indices into colours: read the indices
            with Image.open(io.BytesIO(data)) as image:
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


def write_class_sets(path, bits):
    """Atomically write one set of classes per pixel (``bits``: H×W integers, bit ``c`` for class
    ``c``, classes 0..23) as an 8-bit three-channel PNG: bits 0–7 in blue, 8–15 in green, 16–23 in red."""
    write_png(path, np.stack([(bits >> shift) & 255 for shift in (0, 8, 16)], axis=-1).astype(np.uint8))


def class_set_bits(channels):
    """The H×W ``int64`` bit sets of :func:`read_class_sets` channels (resized or not)."""
    channels = channels.astype(np.int64)
    return channels[:, :, 0] | channels[:, :, 1] << 8 | channels[:, :, 2] << 16


NOT_CLASS_SETS = "{} is not a map of class sets (an 8-bit three-channel PNG)"


def read_class_sets(path):
    """The H×W×3 ``uint8`` channels of a :func:`write_class_sets` file in OpenCV's order (blue, green,
    red: bits 0–7, 8–15, 16–23), which :func:`class_set_bits` turns into bit sets."""
    sets, _ = _decode(path, "class sets", cv2.IMREAD_UNCHANGED)
    if sets.ndim != 3 or sets.shape[2] != 3 or sets.dtype != np.uint8:
        raise UserError(NOT_CLASS_SETS.format(path))
    return sets


def check_class_sets_header(path):
    """Refuse from its header alone a file that is not three-channel, as :func:`read_class_sets`
    would at its first read; a header that cannot be read is left to that read, which names it."""
    try:
        with Image.open(path) as image:
            mode = image.mode
    except Exception:  # PIL's plugins raise many kinds
        return
    if mode != "RGB":
        raise UserError(NOT_CLASS_SETS.format(path))


def atomic_write_text(path, text):
    # surrogateescape: a file name that is not UTF-8 (read from the disk) is written back as its bytes
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))
