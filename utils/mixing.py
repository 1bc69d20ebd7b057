"""SpatialMix: layout-preserving four-quadrant mixing of a batch (stage 6, self-distillation).

Each mixed image ``i`` is cut at a random split point ``(x, y)`` into four quadrants: top-left
comes from image ``i`` itself, top-right, bottom-left and bottom-right from three *other* batch
elements ``j1, j2, j3`` (drawn uniformly, with replacement, among the others). Every quadrant is
taken from the same position of its source image, so sky stays on top and road at the bottom.
The teacher's logits are mixed with the very same per-pixel source map, which keeps image and
target aligned pixel for pixel.

Split points: ``x = floor(W * (0.2 + 0.6 * b_x))`` and ``y = floor(H * (0.2 + 0.6 * b_y))`` with
``b ~ Beta(beta, beta)`` (``beta <= 0``: the centre ``x = W // 2``, ``y = H // 2``). Columns
``[0, x)`` and rows ``[0, y)`` belong to the left and top quadrants.

Randomness is drawn with the caller's ``generator`` on the generator's device (or on the data's
device when no generator is given) and only then moved with a non-blocking copy, so nothing
waits on the host. The draws (:func:`draw_spatial_mix`, :func:`flip_coin`) and the tensor work
(:func:`mix_with_draws`, :func:`flip_with_coin`) are separate functions, so that the tensor work can
be compiled (``--compile step``) and take the very draws of the eager step. Beta samples come from ``torch._sample_dirichlet`` (the sampler behind
``torch.distributions.Beta``), which, unlike the distribution object, accepts a generator and
therefore makes runs reproducible.
"""
import torch

MIN_BATCH_MESSAGE = "SpatialMix needs a batch of at least 2 images (got {n}); use a batch size of 2 or more"


def _random_device(generator, device):
    if generator is not None:
        return generator.device
    return torch.device("cpu") if device is None else torch.device(device)


def _beta(shape, beta, generator, device):
    """Samples of the symmetric Beta(beta, beta) distribution, float32 on ``device``."""
    concentration = torch.full((*shape, 2), float(beta), dtype=torch.float32, device=device)
    sample = torch._sample_dirichlet(concentration, generator=generator)[..., 0]
    # Both gamma draws underflowing to zero (possible only for tiny beta) would give 0/0.
    return torch.nan_to_num(sample, nan=0.5).clamp_(0.0, 1.0)


def _split_points(size, b):
    """Integer split positions ``floor(size * (0.2 + 0.6 * b))``, kept inside [0.2, 0.8] of the side."""
    low, high = int(0.2 * size), int(0.8 * size)
    return (size * (0.2 + 0.6 * b.double())).floor_().long().clamp_(low, high)


def draw_spatial_mix(n, h, w, position_beta, generator=None, device=None):
    """All random choices of one SpatialMix call.

    Returns ``others`` (N×3 long: the sources of the top-right, bottom-left and bottom-right
    quadrants), ``xs`` and ``ys`` (N long split points), on ``device``.
    """
    if n < 2:
        raise ValueError(MIN_BATCH_MESSAGE.format(n=n))
    device = torch.device("cpu") if device is None else torch.device(device)
    rand_device = _random_device(generator, device)
    # i + k (mod n) with k uniform in 1..n-1 is uniform over the other elements.
    offsets = torch.randint(1, n, (n, 3), generator=generator, device=rand_device)
    others = (torch.arange(n, device=rand_device)[:, None] + offsets) % n
    if position_beta > 0:
        b = _beta((n, 2), position_beta, generator, rand_device)
        xs, ys = _split_points(w, b[:, 0]), _split_points(h, b[:, 1])
    else:
        xs = torch.full((n,), w // 2, dtype=torch.long, device=rand_device)
        ys = torch.full((n,), h // 2, dtype=torch.long, device=rand_device)
    # non_blocking: a blocking host-to-device copy would wait for the whole GPU queue
    return tuple(t.to(device, non_blocking=True) for t in (others, xs, ys))


def _source_map(others, xs, ys, h, w):
    """Per-pixel source index (N×H×W long) from the draws of :func:`_draw`."""
    n = others.shape[0]
    device = others.device
    anchor = torch.arange(n, device=device)[:, None, None]
    left = torch.arange(w, device=device)[None, None, :] < xs[:, None, None]
    top = torch.arange(h, device=device)[None, :, None] < ys[:, None, None]
    j1, j2, j3 = (others[:, k, None, None] for k in range(3))
    return torch.where(top, torch.where(left, anchor, j1), torch.where(left, j2, j3))


def spatial_mix_sources(n, h, w, position_beta, generator=None, device=None):
    """Per-pixel source map of one SpatialMix draw: N×H×W long, entry = batch index to copy from."""
    others, xs, ys = draw_spatial_mix(n, h, w, position_beta, generator, device)
    return _source_map(others, xs, ys, h, w)


def mix_with_sources(tensor, sources):
    """Copy every pixel of ``tensor`` (N×C×H×W) from the batch element named by ``sources`` (N×H×W)."""
    index = sources[:, None].expand(-1, tensor.shape[1], -1, -1)
    return torch.gather(tensor, 0, index)


def _check(images, logits):
    if images.dim() != 4 or logits.dim() != 4:
        raise ValueError(f"SpatialMix expects N×C×H×W tensors, got {tuple(images.shape)} and {tuple(logits.shape)}")
    if images.shape[0] != logits.shape[0] or images.shape[-2:] != logits.shape[-2:]:
        raise ValueError(
            f"SpatialMix needs images and logits of the same batch and size, got {tuple(images.shape)} "
            f"and {tuple(logits.shape)}"
        )
    if images.shape[0] < 2:
        raise ValueError(MIN_BATCH_MESSAGE.format(n=images.shape[0]))


def spatial_mix(images, logits, position_beta, generator=None):
    """Mix a batch with SpatialMix; returns ``(mixed_images, mixed_logits)`` of the input shapes and dtypes.

    ``images`` N×3×H×W and ``logits`` N×C×H×W (any dtype, any device) are mixed with one shared
    per-pixel source map, so the mixed target stays aligned with the mixed image.
    """
    _check(images, logits)
    n, _, h, w = images.shape
    return mix_with_draws(images, logits, *draw_spatial_mix(n, h, w, position_beta, generator, images.device))


def mix_with_draws(images, logits, others, xs, ys):
    """SpatialMix of ``images`` and ``logits`` with the draws of :func:`draw_spatial_mix`: no
    randomness and no value read back to the host, the form ``--compile step`` compiles."""
    sources = _source_map(others, xs, ys, *images.shape[-2:])
    return mix_with_sources(images, sources), mix_with_sources(logits, sources)


def random_flip(images, logits, p=0.5, generator=None):
    """Flip the whole batch (images and logits together) horizontally with probability ``p``.

    One coin per call, as the method flips the whole mixed batch; the coin stays on the device
    (``torch.where`` on a 0-dim mask), so no host synchronisation happens.
    """
    return flip_with_coin(flip_coin(p, generator, images.device), images, logits)


def flip_coin(p=0.5, generator=None, device=None):
    """The coin of :func:`random_flip`: a 0-dim boolean tensor on ``device``, true with probability ``p``."""
    rand_device = _random_device(generator, device)
    flip = torch.rand((), generator=generator, device=rand_device) < p
    return flip if device is None else flip.to(device, non_blocking=True)


def flip_with_coin(flip, images, logits):
    """Images and logits flipped horizontally where the 0-dim ``flip`` is true."""
    return torch.where(flip, images.flip(-1), images), torch.where(flip, logits.flip(-1), logits)
