"""Pixel conventions of the network and resizing, shared by every dataset and stage.

The network (all stages) takes BGR pixel values 0-255 minus the Caffe mean, without division by a
standard deviation, as the published DeepLabv2 checkpoints expect. Images are resized bicubically
and labels with nearest neighbour, so that no label value is invented: by default with PIL, bit for
bit as the published loaders did (``--resize-backend cv2``: OpenCV, faster, other pixels).
Self-distillation (stage 6) augments colours in RGB [0, 1]; ``denormalize_to_rgb01`` /
``normalize_rgb01`` go there and back; provider files take RGB 0-255 (``network_input_to_rgb255``,
``rgb255_to_network_input``).
"""
import cv2
import numpy as np
import torch
from PIL import Image

from datasets.targets import RESIZE_BACKENDS

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


def network_input_to_rgb255(images):
    """Network input (…×3×H×W, BGR minus mean) -> RGB 0-255 float, not rounded or clipped: what a
    provider file takes (``modules/providers.py``)."""
    return (images + _mean_like(images)).flip(-3)


def rgb255_to_network_input(images):
    """RGB 0-255 (…×3×H×W, any device) -> network input: the normalisation an exported provider
    carries inside (``tools/export_provider.py``)."""
    return images.flip(-3) - _mean_like(images)


def check_resize_backend(backend):
    if backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize backend must be one of {', '.join(RESIZE_BACKENDS)}, got {backend!r}")


# (OpenCV interpolation, PIL filter) of each kind of array
_FILTERS = {"image": (cv2.INTER_CUBIC, Image.BICUBIC), "label": (cv2.INTER_NEAREST, Image.NEAREST)}


def _resize(array, size, backend, kind):
    check_resize_backend(backend)
    width, height = size
    if array.shape[1] == width and array.shape[0] == height:
        return array
    opencv, pil = _FILTERS[kind]
    if backend == "cv2":
        return cv2.resize(array, (width, height), interpolation=opencv)
    return np.array(Image.fromarray(array).resize((width, height), pil))  # a copy: PIL's is read-only


def resize_image(image, size, backend="pil"):
    """Bicubic resize of a ``uint8`` image to ``size=(width, height)``; the same array when it already has
    that size. ``pil`` equals the published ``Image.BICUBIC`` on the RGB image: PIL filters every channel
    alike, so the BGR array is resized as it is, without converting it to RGB and back."""
    return _resize(image, size, backend, "image")


def resize_label(label, size, backend="pil"):
    """Nearest-neighbour resize of a label map to ``size=(width, height)`` (no new values). PIL takes the
    source pixel under each output pixel's centre, OpenCV's INTER_NEAREST the one under its corner, so the
    two differ by up to one source pixel; ``pil`` is the published ``Image.NEAREST``."""
    return _resize(label, size, backend, "label")
