"""From files to network samples: pixel conventions and the reading step every dataset shares.

The network (all stages) takes BGR pixel values 0-255 minus the Caffe mean, without division by a
standard deviation, as the published DeepLabv2 checkpoints expect. Images are resized bicubically
and labels with nearest neighbour, so that no label value is invented: by default with PIL, bit for
bit as the published loaders did (``--resize-backend cv2``: OpenCV, faster, other pixels).
Self-distillation (stage 6) augments colours in RGB [0, 1]; ``denormalize_to_rgb01`` /
``normalize_rgb01`` go there and back.

``LabelledImages`` turns a list of (image path, label path, name) into items
``dict(image, label, name, index)``; the Cityscapes, source-domain and hard-patch datasets are thin
subclasses that only say where their files are and how a label file becomes train ids.
"""
import os

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.cli import UserError
from utils.io import read_image_bgr, read_label
from utils.labels import IGNORE_INDEX

IMG_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
_MEAN = np.array(IMG_MEAN_BGR, dtype=np.float32)


def to_network_input(image_bgr_uint8):
    """H×W×3 BGR ``uint8`` image -> float32 tensor 3×H×W, BGR, 0-255 minus the mean."""
    image = np.asarray(image_bgr_uint8, dtype=np.float32) - _MEAN
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def to_bgr_uint8(tensor):
    """Inverse of :func:`to_network_input` (rounded, clipped to 0-255), for pictures."""
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().float().cpu().numpy()
    image = np.asarray(tensor, dtype=np.float32).transpose(1, 2, 0) + _MEAN
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _mean_like(images):
    return torch.tensor(IMG_MEAN_BGR, dtype=images.dtype, device=images.device).view(3, 1, 1)


def denormalize_to_rgb01(images):
    """Network input (…×3×H×W, BGR minus mean, any device) -> RGB in [0, 1]."""
    return ((images + _mean_like(images)) / 255.0).flip(-3).clamp(0.0, 1.0)


def normalize_rgb01(images):
    """RGB in [0, 1] (…×3×H×W, any device) -> network input (BGR, 0-255 minus mean)."""
    return images.flip(-3) * 255.0 - _mean_like(images)


# How images and labels are resized: "pil" (the default) as the published loaders did, "cv2" faster.
RESIZE_BACKENDS = ("pil", "cv2")


def add_resize_backend_arg(group):
    """``--resize-backend``, the same flag for training, evaluation and the data-stage scripts."""
    group.add_argument("--resize-backend", choices=RESIZE_BACKENDS, default=RESIZE_BACKENDS[0],
                       help="how images (bicubic) and labels (nearest) are resized to --input-size: pil, bit for "
                            "bit as the published loaders, or cv2 (OpenCV), several times faster but not the same "
                            "pixels (default: %(default)s)")


def _check_backend(backend):
    if backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize backend must be one of {', '.join(RESIZE_BACKENDS)}, got {backend!r}")


def resize_image(image, size, backend="pil"):
    """Bicubic resize of a ``uint8`` image to ``size=(width, height)``; the same array when it already has
    that size. ``pil`` equals the published ``Image.BICUBIC`` on the RGB image: PIL filters every channel
    alike, so the BGR array is resized as it is, without converting it to RGB and back."""
    _check_backend(backend)
    width, height = size
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if backend == "cv2":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.array(Image.fromarray(image).resize((width, height), Image.BICUBIC))  # a copy: PIL's is read-only


def resize_label(label, size, backend="pil"):
    """Nearest-neighbour resize of a label map to ``size=(width, height)`` (no new values). PIL takes the
    source pixel under each output pixel's centre, OpenCV's INTER_NEAREST the one under its corner, so the
    two differ by up to one source pixel; ``pil`` is the published ``Image.NEAREST``."""
    _check_backend(backend)
    width, height = size
    if label.shape[1] == width and label.shape[0] == height:
        return label
    if backend == "cv2":
        return cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.array(Image.fromarray(label).resize((width, height), Image.NEAREST))


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
        _check_backend(resize_backend)
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

