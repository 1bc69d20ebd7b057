"""Your own images as a target domain: any tree of ``.png`` / ``.jpg`` images under ``--data-dir``.

Layout::

    <data-dir>/<any/relative/path>/<stem>.png|.jpg|.jpeg      the images, any size
    <label-dir>/<any/relative/path>/<stem>.png                optional train-id labels, for evaluation

A split is the sub-folder of that name when ``--data-dir`` has one (``<data-dir>/train``,
``<data-dir>/val``), and the whole tree otherwise: adaptation needs no target labels, so the
images you adapt to may also be the ones you evaluate on. Labels mirror the images' relative
paths (the split folder included) with the image's stem and ``.png``; a label folder inside
``--data-dir`` is not scanned for images. Items are named by the image's relative path inside the
split without its extension, so pseudo-labels and predictions mirror the images.
"""
import os

from datasets.base import Target
from utils.cli import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class ImageFolder(Target):
    key, title = "folder", "image folder"
    image_folder = ""
    layout_hint = "any tree of .png/.jpg images under --data-dir"

    def _split_root(self, split):
        folder = os.path.join(self.images, split)
        return (folder, split) if os.path.isdir(folder) else (self.images, None)

    def image_dirs(self, split):
        return [(self.images, f"image folder not found: {self.images} (--target-dataset folder reads any tree of "
                              ".png/.jpg images under --data-dir)")]

    def scan(self, split):
        root, _ = self._split_root(split)
        skip = os.path.realpath(self.labels) if self.labels else None
        relative = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and os.path.realpath(os.path.join(dirpath, d)) != skip)
            for name in filenames:
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    relative.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        return sorted(relative)

    def scan_hint(self, split):
        return f".png/.jpg images under {self._split_root(split)[0]}"

    def image_path(self, split, relative):
        return os.path.join(self._split_root(split)[0], relative)

    def name(self, relative):
        return os.path.splitext(relative)[0]

    def _label_root(self, split):
        _, split_folder = self._split_root(split)
        return os.path.join(self.labels, split_folder) if split_folder else self.labels

    def label_dirs(self, split):
        folder = self._label_root(split)
        return [(folder, f"label folder not found: {folder} (--label-dir: train-id labels mirroring the images' "
                         "relative paths, <stem>.png)")]

    def label_path(self, split, name):
        return os.path.join(self._label_root(split), name + ".png")

    def no_labels(self):
        raise UserError("--target-dataset folder: no labels given: give --label-dir (train-id PNGs mirroring the "
                        "images' relative paths, <stem>.png)")
