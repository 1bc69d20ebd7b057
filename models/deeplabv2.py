"""DeepLabv2 with a dilated ResNet backbone, checkpoint-compatible with the published models.

This is the network of every stage of the method: the provider's source-only model, the
cross-domain distillation student, and the student/teacher pair of self-distillation. Parameter
names, strides and the head's summing quirk match the DeepLabv2 code that produced the published
source-only and ImageNet checkpoints, so those load with a strict key match and give the same
outputs.

Read top to bottom: the blocks (``Bottleneck``, ``ClassifierHead``), the network (``DeepLabV2``),
the factory (``get_deeplabv2``), then weight files. Every form of weight file people actually have
(plain state dicts, Lightning checkpoints, the ImageNet DeepLab initialisation) goes through
``read_weight_file``; ``load_weights`` fits it to a network, and ``extract_state_dict`` takes a
network's weights out of a Lightning checkpoint (stage 4, checkpoint extraction).
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.archs import DEEPLABV2 as ARCHS
from utils.cli import UserError
from utils.torch_files import (TorchFileError, key_mismatch, load_torch_file, only_tensors, read_state_dict,
                               select_prefix)

HEAD_DILATIONS = (6, 12, 18, 24)


def frozen_batchnorm(channels):
    """BatchNorm whose affine parameters never train (the published setting); statistics still may."""
    bn = nn.BatchNorm2d(channels)
    for p in bn.parameters():
        p.requires_grad = False
    return bn


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1, x4 expansion) with the stride on the *first 1x1* conv.

    The published checkpoints come from Caffe-style ResNets, which stride the 1x1 conv; moving the
    stride to the 3x3 (torchvision's v1.5) would keep the keys but change the outputs.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = frozen_batchnorm(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = frozen_batchnorm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = frozen_batchnorm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ClassifierHead(nn.Module):
    """Atrous spatial pyramid: four 3x3 convs (dilation 6, 12, 18, 24) whose outputs are summed.

    Compatibility quirk: the code that produced the published checkpoints returned from its
    summing loop after adding the *second* branch, so those models were trained and evaluated
    with branches 0 and 1 only, although all four exist in their state dicts. ``branches=2``
    (the default) reproduces them; ``branches=4`` is the sum DeepLabv2 describes.
    """

    def __init__(self, inplanes, num_classes, branches=2):
        super().__init__()
        if not 1 <= branches <= len(HEAD_DILATIONS):
            raise UserError(f"--head-branches must be between 1 and {len(HEAD_DILATIONS)}, got {branches}")
        self.branches = branches
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, kernel_size=3, padding=d, dilation=d, bias=True) for d in HEAD_DILATIONS)
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)  # as published; biases keep PyTorch's default
        # Branches outside the sum stay in the state dict but get no gradient (DDP would otherwise
        # wait for gradients that never come).
        for conv in self.conv2d_list[branches:]:
            conv.requires_grad_(False)

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:self.branches]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """Dilated ResNet (output stride 8) + ``ClassifierHead``; logits for BGR, mean-subtracted input."""

    def __init__(self, num_classes=19, blocks=(3, 4, 23, 3), width=64, head_branches=2, freeze_bn_stats=False,
                 arch=None):
        super().__init__()
        self.num_classes = num_classes
        self.arch = arch or f"DeepLabV2(blocks={tuple(blocks)}, width={width})"
        self.freeze_bn_stats = freeze_bn_stats

        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = frozen_batchnorm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.inplanes = width
        self.layer1 = self._make_layer(width, blocks[0])
        self.layer2 = self._make_layer(width * 2, blocks[1], stride=2)
        # layer3/4 trade their stride for dilation: output stride 8 instead of 32.
        self.layer3 = self._make_layer(width * 4, blocks[2], dilation=2)
        self.layer4 = self._make_layer(width * 8, blocks[3], dilation=4)
        # Backbones are normally loaded from a file; He init keeps a from-scratch (tiny) one trainable.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.layer5 = ClassifierHead(self.inplanes, num_classes, head_branches)
        # Apply the BN mode now: Lightning never calls train() itself, it records every submodule's
        # mode before validation and restores it afterwards, so a freshly built network must
        # already have its frozen BN layers in eval mode.
        self.train(self.training)

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        # The first block of every layer changes the width, so it always has a projection shortcut.
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
            frozen_batchnorm(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x, size=None):
        """Logits N x C x h x w at 1/8 of the input, or bilinearly upsampled to ``size=(H, W)``.

        The logits are contiguous in the usual N x C x H x W order even when the network is
        channels-last: the per-pixel work downstream (losses, softmax, SpatialMix's gather, argmax)
        is several times slower on channels-last tensors, and the copy at 1/8 size costs little.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits = self.layer5(x).contiguous()
        if size is not None:
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
        return logits

    def train(self, mode=True):
        """Published behaviour: BN normalises with batch statistics in training and updates them.

        With ``freeze_bn_stats`` every BN stays in eval mode (running statistics, never updated),
        whatever mode the network or its Lightning module is put in.
        """
        super().train(mode)
        if self.freeze_bn_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):  # also once converted to SyncBatchNorm
                    m.eval()
        return self

    def param_groups(self, lr, weight_decay=0.0):
        """Optimiser groups: backbone at ``lr``, the freshly initialised head at ``10 * lr``; every
        trained parameter decays by ``weight_decay`` (the BatchNorm parameters are frozen)."""
        head = [p for p in self.layer5.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        return [{"params": backbone, "lr": lr, "weight_decay": weight_decay},
                {"params": head, "lr": 10 * lr, "weight_decay": weight_decay}]


def get_deeplabv2(num_classes=19, restore_from=None, arch="deeplabv2_r101", head_branches=2, freeze_bn_stats=False):
    """Build the network named ``arch`` (see ``ARCHS``) and load ``restore_from`` if given."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r} is not one of: {', '.join(ARCHS)}")
    net = DeepLabV2(num_classes, head_branches=head_branches, freeze_bn_stats=freeze_bn_stats, arch=arch,
                    **ARCHS[arch])
    if restore_from:
        load_weights(net, restore_from)
    return net


# -- weight files -----------------------------------------------------------------------------------------

# A weight file that is missing, unreadable, wants to run code, or does not fit the network.
WeightFileError = TorchFileError


def _read(path, prefix=None):
    """``(state_dict, fresh_head)``: the clean state dict of ``path`` and whether the head must stay fresh."""
    state = read_state_dict(path, prefix)
    is_imagenet_init = bool(state) and all(k.startswith("Scale.") for k in state)
    if is_imagenet_init:
        # The ImageNet DeepLab initialisation carries a classifier for other classes (fc*, layer5.*):
        # only the backbone is taken, the head stays freshly initialised.
        state = {k: v for k, v in ((k[len("Scale."):], v) for k, v in state.items())
                 if not (k.startswith("fc") or k.startswith("layer5."))}
    return state, is_imagenet_init


def read_weight_file(path, prefix=None):
    """The network weights in ``path`` as a plain state dict, whatever form the file has: those of
    ``utils.torch_files.read_state_dict``, and the ImageNet DeepLab init (``Scale.`` keys; its
    ``fc``/``layer5`` entries are dropped)."""
    return _read(path, prefix)[0]


def load_weights(net, path, prefix=None):
    """Load ``path`` into ``net`` with a strict match; ``WeightFileError`` names every key that does not fit."""
    state, fresh_head = _read(path, prefix)
    expected = net.state_dict()
    second_head = [k for k in state if k.startswith("layer6.")]
    if second_head:
        warnings.warn(f"{path}: ignoring {len(second_head)} tensors of a second classifier head (layer6.*)")
        state = {k: v for k, v in state.items() if not k.startswith("layer6.")}
    for key, value in expected.items():
        # Files from PyTorch < 0.4.1 have no BN step counters; the head of the ImageNet init stays fresh.
        if key not in state and (key.endswith("num_batches_tracked") or (fresh_head and key.startswith("layer5."))):
            state[key] = value

    problems = key_mismatch(state, expected)
    if problems:
        head = "layer5.conv2d_list.0.weight"
        if head in expected and head in state and state[head].shape != expected[head].shape \
                and state[head].shape[1:] == expected[head].shape[1:]:
            problems.append(f"the file's head has {state[head].shape[0]} classes, the network {net.num_classes}")
        raise WeightFileError(f"weights in {path} do not fit {net.arch} with {net.num_classes} classes: "
                              + "; ".join(problems))
    net.load_state_dict(state, strict=True)
    return net


def extract_state_dict(checkpoint_path, prefix="net"):
    """The plain state dict of the network stored under ``prefix.`` in a Lightning checkpoint."""
    obj = load_torch_file(checkpoint_path, "Lightning checkpoint")
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        hint = ""
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            hint = " (it already is a plain state dict: pass it to --restore-from as it is)"
        raise WeightFileError(f"not a Lightning checkpoint (no 'state_dict' entry): {checkpoint_path}{hint}")
    return only_tensors(select_prefix(obj["state_dict"], prefix, checkpoint_path), checkpoint_path)
