"""An optional on-disk cache of images already decoded and resized to the network's input size.

Decoding a 2048×1024 PNG and resizing it costs several times more than reading the 1024×512
result back as a raw array, and training reads every image once per epoch. With
``--image-cache DIR`` the first read of an image stores the resized ``uint8`` BGR array (and the
original size, which label checks need) under ``DIR``; later reads, in any epoch, worker or
process, load it from there.

An entry is keyed by the image's absolute path, its byte size and modification time, the input
size and the resize backend, so a changed image, another ``--input-size`` or another
``--resize-backend`` (PIL and OpenCV give other pixels) is read from the PNG again. Entries are
written atomically (a temporary file and a rename), so loader workers and ranks sharing ``DIR``
never see a partial entry, and a damaged entry is read again from its PNG. The cache is safe to
delete at any time.
"""
import hashlib
import io
import os

import numpy as np

from utils.io import atomic_write_bytes


class ResizedImageCache:
    def __init__(self, root):
        self.root = root

    def entry_path(self, image_path, input_size, resize_backend):
        stat = os.stat(image_path)
        key = (f"{os.path.abspath(image_path)}|{stat.st_size}|{stat.st_mtime_ns}|{input_size[0]}x{input_size[1]}"
               f"|{resize_backend}")
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
        return os.path.join(self.root, digest[:2], f"{digest}.npz")

    def load(self, image_path, input_size, resize_backend, read_and_resize):
        """``(resized image, original H×W)``: from the cache, or from ``read_and_resize(path)``
        (which returns the same pair, resized with ``resize_backend``), stored for the next time."""
        try:
            path = self.entry_path(image_path, input_size, resize_backend)
        except FileNotFoundError:
            return read_and_resize(image_path)  # which reports the missing image
        if os.path.isfile(path):
            try:
                with np.load(path) as entry:
                    return entry["image"], tuple(int(v) for v in entry["shape"])
            except (OSError, ValueError, KeyError, EOFError):
                pass  # damaged (for example a disk that filled up): read the PNG again
        image, shape = read_and_resize(image_path)
        buffer = io.BytesIO()
        np.savez(buffer, image=image, shape=np.asarray(shape, np.int64))
        atomic_write_bytes(path, buffer.getvalue())
        return image, shape
