"""BatchNorm folded into the convolution before it: the network the inference stages run
(pseudo-labels and hard patch mining, validation, test, ``--mode predict``).

In eval mode a BatchNorm is one affine map per channel, ``(x - mean) / sqrt(var + eps) * gamma + beta``,
so right after a convolution it merges into that convolution: its weight times
``s = gamma / sqrt(var + eps)`` per output channel, its bias ``(bias - mean) * s + beta``. The folded
network gives the same logits up to float rounding and skips one pass over each of those activations.

:func:`fold_batchnorm` works on a copy (training goes on with the original) and finds the pairs from
the structure, without tracing (the students' ``forward`` branches on input shapes, which torch.fx
cannot follow). A pair is

- a convolution and the BatchNorm right after it among the children of a plain ``nn.Sequential`` (no
  ``forward`` of its own): DeepLabv2's projection shortcuts, DeepLabV3+'s ASPP and decoder blocks
  (their separable convolution is itself such a ``Sequential``, ending in the pointwise convolution),
  SegFormer's fuse layer;
- ``convK`` / ``bnK`` of the ResNet blocks in :data:`NAMED_PAIRS` and :func:`named_pairs`, whose
  ``forward`` applies ``bnK(convK(x))`` and uses ``convK``'s output nowhere else: DeepLabv2's
  ``Bottleneck`` and stem, torchvision's ``ResNet``, ``Bottleneck`` and ``BasicBlock`` (the encoder of
  segmentation-models-pytorch's DeepLabV3+ is one).

Only exact ``nn.Conv2d`` and ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` with running statistics, used once
in the network and without hooks, are folded. Any other BatchNorm stays as it is and, in eval mode,
still computes the same (SMP's ASPP pooling branch, whose ``Sequential`` has a ``forward`` of its own).
"""
import collections
import copy
import sys

import torch
import torch.nn as nn

from models.deeplabv2 import Bottleneck, DeepLabV2

THREE_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
NAMED_PAIRS = ((Bottleneck, THREE_PAIRS), (DeepLabV2, (("conv1", "bn1"),)))
FOLDABLE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def named_pairs():
    """``(class, ((conv name, bn name), ...))`` of every block whose named pairs fold. torchvision's
    ResNet classes count only once torchvision is imported: no network can hold one before."""
    pairs = list(NAMED_PAIRS)
    resnet = sys.modules.get("torchvision.models.resnet")
    if resnet is not None:
        pairs += [(resnet.Bottleneck, THREE_PAIRS), (resnet.BasicBlock, THREE_PAIRS[:2]),
                  (resnet.ResNet, (("conv1", "bn1"),))]
    return pairs


def _plain_sequential(module):
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _last_conv(module):
    """``module`` if it is a convolution, else the convolution a plain ``Sequential`` ends in."""
    if type(module) is nn.Conv2d:
        return module
    if _plain_sequential(module) and len(module):
        return _last_conv(module[-1])
    return None


def candidate_pairs(net):
    """``(conv, parent, bn name)`` for every convolution directly followed by a BatchNorm (see the
    module's description), the BatchNorm being ``parent``'s child ``bn name``."""
    known = named_pairs()
    for parent in net.modules():
        if _plain_sequential(parent):
            children = list(parent._modules.items())
            for (_, before), (name, after) in zip(children, children[1:]):
                conv = _last_conv(before)
                if conv is not None and after is not None:
                    yield conv, parent, name
        for cls, pairs in known:
            if isinstance(parent, cls):
                for conv_name, bn_name in pairs:
                    conv = parent._modules.get(conv_name)
                    if type(conv) is nn.Conv2d:
                        yield conv, parent, bn_name


def _foldable(conv, bn, uses):
    return (type(bn) in FOLDABLE_NORMS and bn.running_mean is not None and bn.running_var is not None
            and bn.num_features == conv.out_channels and uses[id(conv)] == 1 and uses[id(bn)] == 1
            and not (conv._forward_pre_hooks or conv._forward_hooks or bn._forward_pre_hooks or bn._forward_hooks))


@torch.no_grad()
def fold_into(conv, bn):
    """Merge the eval-mode BatchNorm ``bn`` into the convolution ``conv`` before it, in place (the
    per-channel factors in double precision; the weight keeps its dtype and memory format)."""
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        scale = scale * bn.weight.double()
        shift = shift * bn.weight.double() + bn.bias.double()
    weight = conv.weight
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    weight.mul_(scale.to(weight.dtype).view(-1, *([1] * (weight.dim() - 1))))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(shift)


def fold_batchnorm(net):
    """An inference copy of ``net``: in eval mode, without gradients, each BatchNorm that directly
    follows a convolution (see the module's description) folded into it and replaced by
    ``nn.Identity``. ``net`` itself is not changed. A copy of a compiled network runs uncompiled
    (its compiled call would run the original): compile the copy if wanted."""
    # Normal tensors even when called under torch.inference_mode (Lightning's evaluation hooks).
    with torch.inference_mode(False), torch.no_grad():
        folded = copy.deepcopy(net)
        folded.eval()
        folded.requires_grad_(False)
        for module in folded.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
        uses = collections.Counter(id(m) for _, m in folded.named_modules(remove_duplicate=False))
        done = set()
        for conv, parent, name in list(candidate_pairs(folded)):
            bn = parent._modules[name]
            if id(bn) in done or not _foldable(conv, bn, uses):
                continue
            fold_into(conv, bn)
            parent._modules[name] = nn.Identity()
            done.add(id(bn))
    return folded
