"""Network predictions shared by evaluation (stage 8), pseudo-labelling (stage 2), patch mining
(stage 5) and ``--mode predict``: optional horizontal-flip test-time augmentation, the average over
input scales, the upsampled argmax of one image, and the softmax entropy used to rank images from
easy to hard.

Grad mode is the caller's choice: wrap calls in ``torch.no_grad()`` / ``torch.inference_mode()``
when no gradient is wanted (the teacher in self-distillation, evaluation, pseudo-labels).
"""
import torch.nn.functional as F

SINGLE_SCALE = (1.0,)


def predict_logits(net, images, size=None, flip=False):
    """Logits of ``net`` for a batch ``images`` (N×3×H×W network input), bilinearly upsampled to
    ``size=(H, W)`` by the network when given (else at the network's output resolution).

    With ``flip=True`` the result is ``logits(x) + flip(logits(flip(x)))``, flipping along the
    width: the published flip augmentation *sums* the two logit maps (it does not average them),
    which leaves the argmax unchanged but matters for the entropy of the softmax.
    """
    logits = net(images, size=size)
    if flip:
        logits = logits + net(images.flip(-1), size=size).flip(-1)
    return logits


def multiscale_logits(net, images, scales=SINGLE_SCALE, flip=False, size=None):
    """Logits of ``net`` for ``images`` averaged over the input scale factors ``scales``, each
    flip-augmented as :func:`predict_logits` (``flip``).

    With the single scale 1.0 this is ``predict_logits(net, images, size, flip)``: the network's
    output, upsampled once (to ``size``, or left at the network's resolution for the caller to
    upsample once). Otherwise every scale's input is ``images`` resized bilinearly by that factor,
    its logits are upsampled by the network to ``size`` (default: the input size) and the float32
    results are averaged: the data stages' ``--multiscale`` and ``main.py --scales``.
    """
    if tuple(scales) == SINGLE_SCALE:
        return predict_logits(net, images, size=size, flip=flip)
    height, width = images.shape[-2:]
    size = (height, width) if size is None else tuple(size)
    total = None
    for scale in scales:
        scaled = images
        if scale != 1.0:
            scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False)
        logits = predict_logits(net, scaled, size=size, flip=flip).float()
        total = logits if total is None else total + logits
    return total if len(scales) == 1 else total / len(scales)


def upsampled_argmax(logits, size):
    """Train ids (``H×W``) of one image's logits ``C×h×w``, upsampled bilinearly to ``size=(H, W)``
    in float32 (``align_corners=True``, as the networks upsample): how evaluation brings logits to
    the ground truth's resolution and ``--mode predict`` to the image's own size."""
    full = F.interpolate(logits[None].float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=True)
    return full.argmax(1)[0]


def entropy_map(logits):
    """Per-pixel entropy (natural log) of the softmax over classes: N×C×H×W -> N×H×W."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)
