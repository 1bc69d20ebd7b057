"""Photometric augmentation of the student's input in self-distillation (stage 6).

Batched, with independent random factors per sample and no per-image Python loop, on whatever
device the batch lives on. Input and output: RGB images in [0, 1], N×3×H×W.

- Colour jitter, applied to each sample with probability ``jitter_p`` (0.8): brightness,
  contrast and saturation factors uniform in ``[1 - s, 1 + s]``, hue shift uniform in
  ``[-s, s]`` *turns* of the colour circle (s = ``strength`` = 0.25; torchvision's hue
  convention, where 0.5 is half a turn, which is also what kornia's ``ColorJitter(..., hue=0.25)``
  of the published code draws). The formulas are torchvision's (``adjust_brightness``,
  ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``) with per-sample factors, in the
  fixed order brightness, contrast, saturation, hue (torchvision's ``ColorJitter`` would shuffle
  the order per call; a fixed order keeps the transform one straight line).
- Gaussian blur, applied to each sample with probability ``blur_p`` (0.5), sigma uniform in
  ``[0.15, 1.15]`` per sample, separable kernel whose size on each axis is about 10% of that
  side, made odd: ``c = ceil(0.1 * side)``, kernel ``c`` if odd else ``c - 1`` (103×51 at
  1024×512), reflect padding. Implemented as one grouped convolution over all samples.

Randomness is drawn with the caller's ``generator`` on its device (or on the images' device when
none is given) and then moved with a non-blocking copy; no value is read back to the host. The
draw (:func:`augment_draws`) and the tensor work (:func:`photometric_augment_with`) are separate
functions, so that the tensor work can be compiled (``--compile step``) on the eager draws.
Half-precision input is processed in float32 and returned in its own dtype.
"""
import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

try:  # the colour-space conversions behind torchvision's adjust_hue, batched over any leading dims
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv
except ImportError:  # pragma: no cover - depends on the torchvision version
    _rgb_to_hsv = _hsv_to_rgb = None

# ITU-R 601-2 luma weights, as in torchvision's rgb_to_grayscale
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def _per_sample(values):
    return values[:, None, None, None]


def _grey(images):
    r, g, b = images.unbind(1)
    return (_GREY_WEIGHTS[0] * r + _GREY_WEIGHTS[1] * g + _GREY_WEIGHTS[2] * b)[:, None]


def _blend(images, other, ratio):
    ratio = _per_sample(ratio)
    return (images * ratio + other * (1 - ratio)).clamp_(0, 1)


def adjust_hue(images, hue):
    """Rotate the hue of each sample by ``hue[i]`` turns (torchvision's ``adjust_hue`` per sample)."""
    if _rgb_to_hsv is None:
        return torch.stack([TF.adjust_hue(image, shift) for image, shift in zip(images, hue.tolist())])
    h, s, v = _rgb_to_hsv(images).unbind(1)
    h = (h + hue[:, None, None]).remainder_(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=1))


def color_jitter(images, brightness, contrast, saturation, hue):
    """Colour jitter with one factor per sample (tensors of length N), torchvision's formulas in a fixed order."""
    images = (images * _per_sample(brightness)).clamp_(0, 1)
    images = _blend(images, _grey(images).mean(dim=(1, 2, 3), keepdim=True), contrast)
    images = _blend(images, _grey(images), saturation)
    return adjust_hue(images, hue)


def blur_kernel_size(side):
    """Odd kernel length of about 10% of ``side`` (pixels): ceil(0.1 * side), minus one if even."""
    c = math.ceil(0.1 * side)
    return c if c % 2 == 1 else c - 1


def gaussian_kernels(sigma, size):
    """N normalised 1-D Gaussian kernels of odd length ``size``, one per entry of ``sigma`` (N×size)."""
    t = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2
    kernels = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(images, sigma, kernel_size=None):
    """Blur sample i with sigma[i]; ``kernel_size=(kh, kw)`` defaults to ~10% of each side, odd."""
    n, c, h, w = images.shape
    kh, kw = kernel_size or (blur_kernel_size(h), blur_kernel_size(w))
    channels = images.reshape(1, n * c, h, w)
    # sigma[i] for each channel of sample i; repeat_interleave would read a count back from a GPU
    sigma = sigma.to(images.dtype)[:, None].expand(n, c).reshape(n * c)
    if kw > 1:
        weight = gaussian_kernels(sigma, kw)[:, None, None, :]
        channels = F.conv2d(F.pad(channels, (kw // 2, kw // 2, 0, 0), mode="reflect"), weight, groups=n * c)
    if kh > 1:
        weight = gaussian_kernels(sigma, kh)[:, None, :, None]
        channels = F.conv2d(F.pad(channels, (0, 0, kh // 2, kh // 2), mode="reflect"), weight, groups=n * c)
    return channels.reshape(n, c, h, w)


def _strengths(strength):
    if isinstance(strength, (int, float)):
        strength = (strength,) * 4
    strength = tuple(float(s) for s in strength)
    if len(strength) != 4 or min(strength) < 0 or strength[3] > 0.5:
        raise ValueError(
            f"strength must be a number or (brightness, contrast, saturation, hue), non-negative with hue <= 0.5, "
            f"got {strength}"
        )
    return strength


def photometric_augment(images, generator=None, jitter_p=0.8, strength=0.25, blur_p=0.5, sigma=(0.15, 1.15)):
    """Randomly colour-jitter and blur each sample of an RGB batch in [0, 1] (N×3×H×W); same shape, dtype, device."""
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"photometric_augment expects float RGB images N×3×H×W in [0, 1], got {images.dtype} "
                         f"{tuple(images.shape)}")
    _strengths(strength)
    u = augment_draws(images.shape[0], generator, images.device)
    return photometric_augment_with(images, u, jitter_p, strength, blur_p, sigma)


def augment_draws(n, generator=None, device=None):
    """The random numbers of one :func:`photometric_augment` of ``n`` samples: N×7 uniform in
    [0, 1), drawn with ``generator`` on its device and moved to ``device`` without waiting."""
    rand_device = generator.device if generator is not None else device
    # one draw for everything, so a seeded generator reproduces the whole augmentation
    u = torch.rand(n, 7, generator=generator, device=rand_device)
    return u if device is None else u.to(device, non_blocking=True)


def photometric_augment_with(images, u, jitter_p=0.8, strength=0.25, blur_p=0.5, sigma=(0.15, 1.15)):
    """:func:`photometric_augment` with its random numbers ``u`` given (:func:`augment_draws`): no
    randomness and no value read back to the host, the form ``--compile step`` compiles."""
    b, c, s, h = _strengths(strength)
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    u = u.to(work.dtype)

    def factor(column, spread):
        return 1 - spread + 2 * spread * u[:, column]

    # Every sample is transformed and torch.where keeps the chosen ones: deciding per sample on
    # the host would need the coins there, i.e. a device synchronisation.
    if jitter_p > 0:
        jittered = color_jitter(
            work,
            brightness=factor(1, b).clamp(min=0),
            contrast=factor(2, c).clamp(min=0),
            saturation=factor(3, s).clamp(min=0),
            hue=h * (2 * u[:, 4] - 1),
        )
        work = torch.where(_per_sample(u[:, 0] < jitter_p), jittered, work)
    if blur_p > 0:
        sigmas = sigma[0] + (sigma[1] - sigma[0]) * u[:, 6]
        work = torch.where(_per_sample(u[:, 5] < blur_p), gaussian_blur(work, sigmas), work)
    return work.clamp(0, 1).to(images.dtype)
