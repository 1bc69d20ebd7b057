"""Network predictions shared by evaluation (stage 8), pseudo-labelling (stage 2) and patch mining
(stage 5): optional horizontal-flip test-time augmentation, and the softmax entropy used to rank
images from easy to hard.

Grad mode is the caller's choice: wrap calls in ``torch.no_grad()`` / ``torch.inference_mode()``
when no gradient is wanted (the teacher in self-distillation, evaluation, pseudo-labels).
"""
import torch.nn.functional as F


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


def entropy_map(logits):
    """Per-pixel entropy (natural log) of the softmax over classes: N×C×H×W -> N×H×W."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def mean_entropy(logits):
    """Mean per-pixel softmax entropy of each image: N×C×H×W -> N."""
    return entropy_map(logits).flatten(1).mean(dim=1)
