"""Label-free scores of a segmentation model on target images: how good it looks without a label.

The user of black-box adaptation has no target labels, yet a stage must keep one checkpoint, the
rounds must know when to stop, and the user must learn whether the adapted model beats the black
box. Each score below is computed from the model's class probabilities on images alone, so the
black box can be scored the same way, on the same images:

- ``flip``: agreement under a horizontal flip — the share of pixels whose label is the same on the
  image and on its mirror image (mirrored back). A model that learnt the scene, not the position,
  agrees with itself (augmentation consistency, as in the label-free validators benchmarked by
  Musgrave et al., 2022).
- ``mix``: agreement under mixing (as MixVal scores on mixed target images): each image's quadrants
  are replaced by those of three other images of the batch, at their own positions
  (:func:`quadrant_mix`, SpatialMix's layout with a fixed split), and the labels predicted on the
  mixed image are compared with the mixed labels of the four images.
- ``confidence``: 1 − mean pixel entropy / log C.
- ``diversity``: entropy of the mean class distribution / log C: high when the predictions spread
  over many classes, low when they collapse onto the large ones.
- ``im``: information maximisation, ``diversity − (1 − confidence)``: confident *and* diverse.
- ``flip_im`` and ``mix_im``: the mean of an agreement and ``im``: agreement alone rewards a model
  that predicts few classes everywhere, information maximisation alone rewards over-confidence.
- ``last`` (for ``--select-by`` only): no score, the last checkpoint.

Every score is higher-is-better and lies in [−1, 1]. The states are sums, reduced across processes.
"""
import math

import torch
from torchmetrics import Metric

from utils.criteria import CRITERIA, DEFAULT_CRITERION  # noqa: F401 (the scores' names, re-exported)


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
        self.add_state("mix_pixels", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("mix_agree", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits, flipped_logits, mixed_logits):
        """Add a batch: ``logits`` N×C×H×W of the images, ``flipped_logits`` those of the mirrored
        images, mirrored back, ``mixed_logits`` those of :func:`quadrant_mix` of the images."""
        mixed_labels = quadrant_mix(logits.argmax(dim=1, keepdim=True))[:, 0]
        self.mix_agree += (mixed_logits.argmax(dim=1) == mixed_labels).sum().double()
        self.mix_pixels += mixed_labels.numel()
        probabilities = logits.float().softmax(dim=1)
        log_p = logits.float().log_softmax(dim=1)
        self.pixels += probabilities.shape[0] * probabilities.shape[2] * probabilities.shape[3]
        self.agree += (logits.argmax(dim=1) == flipped_logits.argmax(dim=1)).sum().double()
        self.entropy += -(probabilities * log_p).sum().double()
        self.marginal += probabilities.sum(dim=(0, 2, 3)).double()

    def compute(self):
        return scores_from_sums(self.pixels, self.agree, self.entropy, self.marginal, self.mix_pixels, self.mix_agree)


def scores_from_sums(pixels, agree, entropy, marginal, mix_pixels, mix_agree):
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
    mix = float(mix_agree) / float(mix_pixels)
    im = diversity - (1.0 - confidence)
    return {"flip_im": (flip + im) / 2, "mix_im": (mix + im) / 2, "flip": flip, "mix": mix, "im": im,
            "diversity": diversity, "confidence": confidence}


def quadrant_mix(x):
    """Each image of the batch ``x`` (N×C×H×W) with its top-right, bottom-left and bottom-right
    quadrants taken from the next one, two and three images (cyclically), at their own positions;
    a batch of one image stays itself. Applied alike to images and to labels at a lower resolution,
    the quadrants correspond where the sides are even multiples of the network's stride."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    mixed = x.clone()
    mixed[..., :h, w:] = x.roll(-1, 0)[..., :h, w:]
    mixed[..., h:, :w] = x.roll(-2, 0)[..., h:, :w]
    mixed[..., h:, w:] = x.roll(-3, 0)[..., h:, w:]
    return mixed


def label_free_logits(net, images):
    """What :meth:`LabelFreeScores.update` takes: the logits of ``images``, of their mirror images
    (mirrored back) and of their :func:`quadrant_mix`, at the network's output resolution."""
    return net(images), net(images.flip(-1)).flip(-1), net(quadrant_mix(images))
