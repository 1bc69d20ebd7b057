"""An optional on-disk cache of images already decoded and resized to the network's input size.

Decoding a 2048×1024 PNG and resizing it costs several times more than reading the 1024×512
result back as a raw array, and training reads every image once per epoch. With
``--image-cache DIR`` the first read of an image stores the resized ``uint8`` BGR array (and the
original size, which label checks need) under ``DIR``; later reads, in any epoch, worker or
process, load it from there.

By default (``--image-cache auto``) ``main.py`` keeps it in ``<log-tb-dir>/cache`` (:data:`DEFAULT_FOLDER`),
shared by every stage and round of that experiment root, when its disk has room
(:meth:`ResizedImageCache.room_for`: the entries still missing, ``W*H*3`` bytes each, must leave
:func:`disk_margin` free); else it goes without, and says why. A disk's free space does not show a
user's quota: an entry that cannot be written (a quota reached, a full or read-only disk) is not
kept, the image is used as read, and the process says once that it goes on without storing.

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
import shutil
import sys

import numpy as np

from utils.cli import UserError
from utils.io import atomic_write_bytes

DEFAULT_FOLDER = "cache"  # --image-cache auto: <log-tb-dir>/cache
ENTRY_OVERHEAD = 4096  # bytes of an entry besides its pixels: the .npz container, the file system's last block
GIB = 1 << 30


def entry_bytes(input_size):
    """The disk space one entry of an image resized to ``input_size`` (W, H) takes, at most."""
    return input_size[0] * input_size[1] * 3 + ENTRY_OVERHEAD


def disk_margin(total):
    """The free space the default cache leaves on a disk of ``total`` bytes: a tenth of it, at least
    1 GiB and at most 20 GiB."""
    return min(20 * GIB, max(GIB, total // 10))


def size_text(size):
    """``size`` bytes for a message: ``"320 MB"``, ``"4.7 GB"``."""
    return f"{size / 1e6:.0f} MB" if size < 1e9 else f"{size / 1e9:.1f} GB"


class ResizedImageCache:
    def __init__(self, root):
        self.root = root
        self.storing = True  # until an entry cannot be written

    def missing(self, image_paths, input_size, resize_backend):
        """How many of ``image_paths`` have no entry yet (an image not found counts as none: reading
        it reports it)."""
        count = 0
        for image_path in image_paths:
            try:
                count += not os.path.isfile(self.entry_path(image_path, input_size, resize_backend))
            except OSError:
                pass
        return count

    def room_for(self, image_paths, input_size, resize_backend):
        """``(missing, reason)``: how many of ``image_paths`` have no entry yet, and ``None`` when
        their entries fit on the cache's disk leaving :func:`disk_margin` free, else why not (a line)."""
        missing = self.missing(image_paths, input_size, resize_backend)
        if not missing:
            return 0, None
        folder = os.path.abspath(self.root)
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)  # the folder is made with the first entry
        usage = shutil.disk_usage(folder)
        needed, margin = missing * entry_bytes(input_size), disk_margin(usage.total)
        if usage.free < needed + margin:
            return missing, (f"{missing} images need about {size_text(needed)} and the disk of {self.root} has "
                             f"{size_text(usage.free)} free, less than that plus a margin of {size_text(margin)}")
        return missing, None

    def entry_path(self, image_path, input_size, resize_backend):
        stat = os.stat(image_path)
        key = (f"{os.path.abspath(image_path)}|{stat.st_size}|{stat.st_mtime_ns}|{input_size[0]}x{input_size[1]}"
               f"|{resize_backend}")
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
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
        if self.storing:
            buffer = io.BytesIO()
            np.savez(buffer, image=image, shape=np.asarray(shape, np.int64))
            try:
                atomic_write_bytes(path, buffer.getvalue())
            except (OSError, UserError) as err:  # a quota, a full or read-only disk: go on without storing
                self.storing = False
                reason = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) else str(err)
                print(f"image cache: cannot store entries in {self.root} ({reason}); this process reads images "
                      "from their files from now on", file=sys.stderr)
        return image, shape
