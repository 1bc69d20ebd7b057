"""Label-free scores of a segmentation model on target images: how good it looks without a label.

The user of black-box adaptation has no target labels, yet a stage must keep one checkpoint, the
rounds must know when to stop, and the user must learn whether the adapted model beats the black
box. Each score below is computed from the model's class probabilities on images alone, so the
black box can be scored the same way, on the same images:

- ``flip``: agreement under a horizontal flip — the share of pixels whose label is the same on the
  image and on its mirror image (mirrored back). A model that learnt the scene, not the position,
  agrees with itself (augmentation consistency, as in the label-free validators benchmarked by
  Musgrave et al., 2022).
- ``confidence``: 1 − mean pixel entropy / log C.
- ``diversity``: entropy of the mean class distribution / log C: high when the predictions spread
  over many classes, low when they collapse onto the large ones.
- ``im``: information maximisation, ``diversity − (1 − confidence)``: confident *and* diverse.
- ``flip_im``: the mean of ``flip`` and ``im``; both are needed: agreement alone rewards a model
  that predicts few classes everywhere, information maximisation alone rewards over-confidence.

Every score is higher-is-better and lies in [−1, 1]. The states are sums, reduced across processes.
"""
import math

import torch
from torchmetrics import Metric

CRITERIA = ("flip_im", "flip", "im", "diversity", "confidence")
DEFAULT_CRITERION = "flip_im"


class LabelFreeScores(Metric):
    """Sums over the evaluated pixels: flip agreements, pixel entropies, class probabilities."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("pixels", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("agree", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("entropy", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("marginal", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits, flipped_logits):
        """Add a batch: ``logits`` N×C×H×W of the images, ``flipped_logits`` those of the mirrored
        images, mirrored back (the same shape)."""
        probabilities = logits.float().softmax(dim=1)
        log_p = logits.float().log_softmax(dim=1)
        self.pixels += probabilities.shape[0] * probabilities.shape[2] * probabilities.shape[3]
        self.agree += (logits.argmax(dim=1) == flipped_logits.argmax(dim=1)).sum().double()
        self.entropy += -(probabilities * log_p).sum().double()
        self.marginal += probabilities.sum(dim=(0, 2, 3)).double()

    def compute(self):
        return scores_from_sums(self.pixels, self.agree, self.entropy, self.marginal)


def scores_from_sums(pixels, agree, entropy, marginal):
    """The scores of the module docstring from the summed states (``{}`` when nothing was scored)."""
    pixels = float(pixels)
    if pixels == 0:
        return {}
    log_c = math.log(len(marginal))
    share = torch.as_tensor(marginal, dtype=torch.float64) / pixels
    share = share[share > 0]
    confidence = 1.0 - float(entropy) / pixels / log_c
    diversity = float(-(share * share.log()).sum()) / log_c
    flip = float(agree) / pixels
    im = diversity - (1.0 - confidence)
    return {"flip_im": (flip + im) / 2, "flip": flip, "im": im, "diversity": diversity, "confidence": confidence}


def flipped_logits(net, images, size=None):
    """The logits of the mirrored ``images``, mirrored back: what :meth:`LabelFreeScores.update` compares."""
    return net(images.flip(-1), size=size).flip(-1)
