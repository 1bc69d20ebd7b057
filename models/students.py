"""Students from segmentation-models-pytorch (SMP): SegFormer (MiT-B0..B5) and DeepLabV3+ (ResNet-50/101).

Black-box adaptation never ties the student to the provider, so the student may be a modern network.
The networks themselves come from SMP, built with ``encoder_weights=None`` (nothing is downloaded,
at import or at construction); this file only wraps them in the contract every stage relies on
(``models/deeplabv2.DeepLabV2``'s):

- ``forward(x, size=None)``: ``x`` is the one network input of the whole toolkit (BGR 0-255 minus the
  Caffe mean, ``datasets/pixels.py``); the wrapper turns it into what the encoder was pretrained on
  (RGB in [0, 1], ImageNet mean/std) *inside the network*, so the data pipeline stays one. Logits come
  at 1/4 of the input (SMP's head built with ``upsampling=1``) and are upsampled bilinearly to ``size``
  when given, as DeepLabv2's.
- ``train()`` honours ``freeze_bn_stats`` for every BatchNorm (DeepLabV3+ has them in its ResNet and its
  ASPP; SegFormer's encoder normalises with LayerNorm, only the fuse layer of its MLP head is a
  BatchNorm). Unlike DeepLabv2's published setting, BatchNorm affine parameters train.
- ``param_groups(lr)``: encoder at ``lr``, decoder and classifier at ``10 * lr`` (the SegFormer recipe's
  "head x10"), norm layers without weight decay.

Weights (``load_student_weights``): a whole student (plain state dict or Lightning checkpoint, keys
``model.encoder.*``, ``model.decoder.*``, ``model.segmentation_head.*``) loads with a strict match; an
*encoder* ImageNet file loads into the encoder and leaves decoder and head freshly initialised:
NVlabs' ``mit_b*.pth`` (keys ``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ...: the same
names as SMP's MixVisionTransformerEncoder, whose code is NVIDIA's; the ImageNet classifier
``head.*`` is dropped) and torchvision / timm ResNet state dicts (``conv1.weight``, ``layer1.0.conv1.weight``,
...; ``fc.*`` dropped). Files are read with ``utils/torch_files.py`` (never the full unpickler); a file
that does not fit gets a ``TorchFileError`` naming the missing, unexpected and mis-shaped keys.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.archs import STUDENTS
from utils.cli import UserError
from utils.torch_files import TorchFileError, key_mismatch, read_state_dict

# The toolkit's one network input: BGR 0-255 minus this mean (datasets/pixels.IMG_MEAN_BGR; models/ sits
# beside datasets/ and does not import it, tests/test_students.py checks the two agree).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# ImageNet classifiers that encoder files carry and the student has no use for.
ENCODER_CLASSIFIER_PREFIXES = ("head.", "fc.")
# SMP refuses input sides that are no multiple of the encoder's output stride: forward pads to this.
INPUT_MULTIPLE = {"Segformer": 32, "DeepLabV3Plus": 16}


class LibraryStudent(nn.Module):
    """An SMP segmentation model with the toolkit's input convention and forward contract."""

    def __init__(self, arch, num_classes=19, freeze_bn_stats=False):
        super().__init__()
        import segmentation_models_pytorch as smp  # ~3 s to import: only when such a student is built

        spec = STUDENTS[arch]
        self.arch, self.num_classes, self.freeze_bn_stats = arch, num_classes, freeze_bn_stats
        self.family = spec["family"]
        self.input_multiple = INPUT_MULTIPLE[spec["model"]]
        self.model = getattr(smp, spec["model"])(encoder_name=spec["encoder"], encoder_weights=None,
                                                 classes=num_classes, upsampling=1)
        # BGR minus Caffe mean (0-255) -> RGB in [0, 1] -> ImageNet-normalised: x_rgb * scale + shift.
        # Not persistent: the state dict stays SMP's, and the constants cannot be lost or overwritten.
        mean_bgr = torch.tensor(CAFFE_MEAN_BGR).flip(0)  # RGB order
        scale = 1.0 / (255.0 * torch.tensor(IMAGENET_STD_RGB))
        shift = (mean_bgr / 255.0 - torch.tensor(IMAGENET_MEAN_RGB)) / torch.tensor(IMAGENET_STD_RGB)
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.train(self.training)

    def normalize(self, x):
        """Network input (BGR 0-255 minus the Caffe mean) -> the encoder's (RGB, ImageNet mean/std)."""
        return x.flip(1) * self.input_scale.to(x.dtype) + self.input_shift.to(x.dtype)

    def forward(self, x, size=None):
        """Logits N x C x h x w at 1/4 of the input, or bilinearly upsampled to ``size=(H, W)``.

        Any input size works (hard patches, 1920x1080 targets): a side that is no multiple of the
        encoder's output stride is padded at the bottom / right with the mean colour (0 after
        normalisation), and the logits are cropped back to the image."""
        height, width = x.shape[-2:]
        m = self.input_multiple
        pad_h, pad_w = -height % m, -width % m
        z = self.normalize(x)
        if pad_h or pad_w:
            z = F.pad(z, (0, pad_w, 0, pad_h))
        logits = self.model(z)
        if pad_h or pad_w:
            if size is None:
                return logits[..., :-(-height // 4), :-(-width // 4)].contiguous()
            logits = F.interpolate(logits, size=(height + pad_h, width + pad_w), mode="bilinear", align_corners=True)
            logits = logits[..., :height, :width]
        logits = logits.contiguous()
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
        return logits

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_bn_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def param_groups(self, lr, weight_decay=0.0):
        """Encoder at ``lr``, decoder and classifier at ``10 * lr``; norm layers' parameters never decay."""
        norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
        norms = {id(p) for m in self.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
        groups = []
        for part, part_lr in ((self.model.encoder, lr), (nn.ModuleList([self.model.decoder, self.model.segmentation_head]), 10 * lr)):
            params = [p for p in part.parameters() if p.requires_grad]
            decay = [p for p in params if id(p) not in norms]
            no_decay = [p for p in params if id(p) in norms]
            groups.append({"params": decay, "lr": part_lr, "weight_decay": weight_decay})
            if no_decay:
                groups.append({"params": no_decay, "lr": part_lr, "weight_decay": 0.0})
        return groups


def get_student(arch, num_classes=19, restore_from=None, freeze_bn_stats=False):
    """Build the SMP student named ``arch`` (see ``STUDENTS``) and load ``restore_from`` if given."""
    if arch not in STUDENTS:
        raise UserError(f"--arch {arch!r} is not one of: {', '.join(STUDENTS)}")
    net = LibraryStudent(arch, num_classes, freeze_bn_stats=freeze_bn_stats)
    if restore_from:
        load_student_weights(net, restore_from)
    return net


def _fit(state, expected, path, what):
    """``TorchFileError`` naming every key of ``state`` that does not fit ``expected``."""
    problems = key_mismatch(state, expected)
    if problems:
        raise TorchFileError(f"weights in {path} do not fit {what}: " + "; ".join(problems))


def load_student_weights(net, path, prefix=None):
    """Load a whole student, or an ImageNet encoder file into ``net.model.encoder`` (see the module doc)."""
    state = read_state_dict(path, prefix)
    for key, value in net.state_dict().items():  # files from PyTorch < 0.4.1 have no BN step counters
        if key.endswith("num_batches_tracked") and key not in state and any(k.startswith("model.") for k in state):
            state[key] = value
    if any(k.startswith("model.") for k in state):
        expected = net.state_dict()
        _fit(state, expected, path, f"{net.arch} with {net.num_classes} classes")
        net.load_state_dict(state, strict=True)
        return net
    # An encoder file: NVlabs MiT or torchvision/timm ResNet, possibly under an mmseg "backbone." prefix.
    if state and all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(ENCODER_CLASSIFIER_PREFIXES)}
    expected = net.model.encoder.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    _fit(state, expected, path, f"the {STUDENTS[net.arch]['encoder']} encoder of {net.arch} (an ImageNet "
                                "encoder file, or a whole student with keys under 'model.')")
    # SMP's encoders override load_state_dict without ``strict``; the fit was checked above.
    nn.Module.load_state_dict(net.model.encoder, state, strict=True)
    return net
