"""The provider of the data stages (pseudo-labels, hard patch mining): a DeepLabv2 weight file, or a
provider file that is only run (``models/provider_files.py``: an ONNX model).

A provider file gets the contract's input and its scores are brought to the network interface the
stages use (``forward(images, size)`` -> logits N×C×H×W at ``size``, ``models/deeplabv2.py``), so
flip test-time augmentation, multi-scale, entropy and the easy/hard split run unchanged:

- the pipeline's input (BGR minus the Caffe mean, ``datasets/pixels.py``) goes back to RGB 0..255;
- the first output, class scores N×C×h×w at any resolution, is upsampled bilinearly to ``size``
  with ``align_corners=True``, as DeepLabv2 upsamples its logits;
- ``--provider-output probabilities``: the scores are class probabilities (each pixel's sum 1);
  ``auto`` (the default) decides on the first run, on a grey image: probabilities when its scores
  are in [0, 1] and sum to 1 at every pixel (logits of several classes never do), else logits.
  They are turned into log-probabilities *before* upsampling and then treated as logits, so the
  flip augmentation sums log-probabilities (a product of the two predictions, renormalised by the
  softmax) and the entropy is that of the renormalised product. For a provider whose
  probabilities are the softmax of logits z, log p = z - logsumexp(z) differs from z by one
  number per pixel, which every softmax cancels: labels and entropies are those of the logits
  themselves. Averaging probabilities would not give that back.

Every check of the file (readable, one float32 RGB input, scores with ``--num-classes`` channels
and two spatial dimensions, finite, probabilities that are probabilities) runs when it is loaded, on
one grey image at the input size, before a stage writes anything; every run of the file, that one
and each batch's, is stopped after ``RUN_SECONDS``.
Every batch's scores are then checked to be finite (:func:`check_finite`), whatever the network.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.pixels import network_input_to_rgb255
from models.networks import get_network
from models.provider_files import RUN_SECONDS, ProviderFileError, is_provider_file, open_provider_file
from modules.config import PROVIDER_OUTPUTS
from utils.cli import UserError

_TINY = torch.finfo(torch.float32).tiny  # log(0) would be -inf: the smallest normal float instead


class ProviderNetwork(nn.Module):
    """A provider file (``models/provider_files.py``) behind DeepLabv2's ``forward(images, size)``."""

    def __init__(self, provider, num_classes, output="auto"):
        super().__init__()
        if output not in PROVIDER_OUTPUTS:
            raise UserError(f"--provider-output must be one of {', '.join(PROVIDER_OUTPUTS)}, got {output!r}")
        self.provider, self.num_classes, self.output = provider, num_classes, output
        self.path = provider.path

    def scores(self, images):
        """The provider's first output for a network-input batch, checked against the contract."""
        scores = self.provider(network_input_to_rgb255(images.float()), RUN_SECONDS)
        if scores.dim() != 4 or scores.shape[0] != images.shape[0] or min(scores.shape[2:]) < 1:
            raise ProviderFileError(f"{self.path}: its first output has shape {list(scores.shape)} for "
                                    f"{images.shape[0]} image(s), not class scores N×C×h×w (one map per class)")
        if scores.shape[1] != self.num_classes:
            raise ProviderFileError(f"{self.path}: its first output has {scores.shape[1]} classes, --num-classes is "
                                    f"{self.num_classes}")
        return scores

    def forward(self, images, size=None):
        scores = self.scores(images)
        if self.output == "probabilities":
            scores = scores.clamp_min(_TINY).log()
        if size is not None:
            scores = F.interpolate(scores, size=tuple(int(s) for s in size), mode="bilinear", align_corners=True)
        return scores

    def check(self, input_size, scales=(1.0,)):
        """Run the file once on a grey image at ``input_size=(W, H)`` and check what comes out; check
        that it takes the size of every scale of ``scales``."""
        width, height = input_size
        for scale in scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            if not self.provider.accepts_size(*size):
                fixed = "x".join("any" if s is None else str(s) for s in self.provider.input_shape[:1:-1])
                why = f"--scales scale {scale}" if scale != 1.0 else "--input-size"
                raise ProviderFileError(f"{self.path} takes only {fixed} images (WxH), {why} gives "
                                        f"{size[1]}x{size[0]} (export it for that size, or with a free size)")
        grey = torch.zeros(1, 3, height, width)  # 0 in network input: the Caffe mean, a mid grey
        with torch.no_grad():
            scores = self.scores(grey)
        check_finite(scores, ["a grey image"], self.path)
        sums = scores.sum(dim=1)
        probabilities = scores.min() >= 0 and scores.max() <= 1 and torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
        if self.output == "auto":
            self.output = "probabilities" if probabilities else "logits"
        elif self.output == "probabilities" and not probabilities:
            raise ProviderFileError(
                f"{self.path}: --provider-output probabilities, but its first output is not probabilities "
                f"(values {scores.min().item():.3g} to {scores.max().item():.3g}, per-pixel sums "
                f"{sums.min().item():.3g} to {sums.max().item():.3g}); leave the flag out for logits")
        return self


def check_finite(scores, names, source):
    """Scores (N×C×h×w) must be finite: one line naming ``source`` (the provider) and the first
    image of ``names`` whose scores hold NaN or an infinity, which would become labels."""
    finite = torch.isfinite(scores).flatten(1).all(dim=1)
    if not bool(finite.all()):
        name = names[int((~finite).nonzero()[0])]
        raise ProviderFileError(f"{source}: its scores for {name} hold NaN or infinite values; nothing is "
                                "labelled from them")


def load_provider(restore_from, network, provider_output="auto", scales=(1.0,)):
    """The provider of ``--restore-from`` as a network: a provider file (``.onnx``), checked on one
    image, or a DeepLabv2 weight file built as ``network`` (``models.deeplabv2.NetworkConfig``)."""
    if not is_provider_file(restore_from):
        if provider_output == "probabilities":
            raise UserError(f"--provider-output {provider_output} is for a provider file (.onnx); a DeepLabv2 "
                            "weight file gives logits")
        return get_network(num_classes=network.num_classes, restore_from=restore_from, arch=network.arch,
                           head_branches=network.head_branches)
    provider = ProviderNetwork(open_provider_file(restore_from), network.num_classes, provider_output)
    return provider.check(network.input_size, scales)
