"""The reading step every dataset shares: ``LabelledImages`` turns a list of (image path, label
path, name) into items ``dict(image, label, name, index)``; the Cityscapes, source-domain and
hard-patch datasets are thin subclasses that only say where their files are and how a label file
becomes train ids. Pixel conventions and resizing are ``datasets/pixels.py``.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.pixels import check_resize_backend, resize_image, resize_label, to_network_input
from utils.cli import UserError
from utils.io import read_image_bgr, read_label
from utils.labels import IGNORE_INDEX


def check_label_values(label, num_classes, path):
    """Train ids must be ``0..num_classes-1`` or 255 (ignore); otherwise name the file and values."""
    if label.dtype == np.uint8:
        counts = np.bincount(label.ravel(), minlength=256)
        bad = [v for v in np.flatnonzero(counts) if num_classes <= v != IGNORE_INDEX]
    else:
        bad = [v for v in np.unique(label) if not (0 <= v < num_classes or v == IGNORE_INDEX)]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise UserError(f"label values outside 0..{num_classes - 1} and {IGNORE_INDEX} in {path}: {shown} "
                        f"(is it a label-id file? convert it with utils/transfer_trainid.py)")


def check_files_exist(paths, what):
    """Fail before training starts when listed files are missing: name the first and the count."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" ({len(missing)} of {len(paths)} missing)" if len(missing) > 1 else ""
        raise UserError(f"{what} not found: {missing[0]}{more}")


def _size_text(shape):
    return f"{shape[1]}x{shape[0]}"


class LabelledImages(Dataset):
    """Items ``dict(image, label, name, index)`` from ``samples`` = [(image_path, label_path, name)].

    ``label_path`` is ``None`` for every sample when there are no labels (no label is read then).
    Images are resized to ``input_size=(W, H)`` (``None``: kept). Labels are checked against the
    original image size, then resized with nearest neighbour to the input size when
    ``resize_label`` (training) or kept at full resolution (evaluation). Both resize with
    ``resize_backend`` (see :data:`RESIZE_BACKENDS`). Subclasses override
    :meth:`read_train_ids` when their label files do not hold train ids.
    """

    # Labels written at the input size (pseudo-labels) are accepted as well as full-size ones.
    accept_input_size_labels = False
    # Relative size difference tolerated between an image and its label (both are resized).
    label_size_tolerance = 0.0

    def __init__(self, samples, input_size=None, resize_label=True, num_classes=19, resize_backend="pil"):
        check_resize_backend(resize_backend)
        self.samples = list(samples)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.resize_label = resize_label
        self.resize_backend = resize_backend
        self.num_classes = num_classes
        self.has_labels = bool(self.samples) and self.samples[0][1] is not None

    def __len__(self):
        return len(self.samples)

    @property
    def names(self):
        return [name for _, _, name in self.samples]

    def read_train_ids(self, path):
        """An H×W array of train ids from a label file."""
        return read_label(path)

    def _check_label_size(self, label, image_shape, path):
        sizes = [image_shape[:2]]
        if self.accept_input_size_labels and self.input_size is not None:
            sizes.append((self.input_size[1], self.input_size[0]))
        tol = self.label_size_tolerance
        for h, w in sizes:
            if abs(label.shape[0] - h) <= tol * h and abs(label.shape[1] - w) <= tol * w:
                return
        expected = " or ".join(_size_text(s) for s in sizes)
        raise UserError(f"label size {_size_text(label.shape)} does not match its image ({expected}): {path}")

    # An optional ``utils.image_cache.ResizedImageCache`` (``--image-cache``), used when images are resized.
    image_cache = None

    def _read_resized(self, image_path):
        image = read_image_bgr(image_path)
        original_shape = image.shape[:2]
        if self.input_size is not None:
            image = resize_image(image, self.input_size, self.resize_backend)
        return image, original_shape

    def __getitem__(self, index):
        image_path, label_path, name = self.samples[index]
        if self.image_cache is not None and self.input_size is not None:
            image, original_shape = self.image_cache.load(image_path, self.input_size, self.resize_backend,
                                                          self._read_resized)
        else:
            image, original_shape = self._read_resized(image_path)
        item = {"image": to_network_input(image), "name": name, "index": index}
        if label_path is not None:
            label = self.read_train_ids(label_path)
            self._check_label_size(label, original_shape, label_path)
            check_label_values(label, self.num_classes, label_path)
            if self.resize_label:
                label = resize_label(label, (image.shape[1], image.shape[0]), self.resize_backend)
            item["label"] = torch.from_numpy(label.astype(np.int64))
        return item


def collate(samples):
    """A batch of items: images stacked, names as a list; labels stacked, or a list when their
    sizes differ (full-resolution labels in evaluation). An item carrying a user error (see
    ``modules.prediction.ErrorsAsItems``) makes the batch that error, passed on to the step."""
    errors = [s["error"] for s in samples if "error" in s]
    if errors:
        return {"error": errors[0]}
    batch = {"name": [s["name"] for s in samples], "index": torch.tensor([s["index"] for s in samples])}
    if "image" in samples[0]:
        batch["image"] = torch.stack([s["image"] for s in samples])
    if "label" in samples[0]:
        labels = [s["label"] for s in samples]
        batch["label"] = torch.stack(labels) if all(label.shape == labels[0].shape for label in labels) else labels
    return batch
