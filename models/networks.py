"""The one registry of networks ``--arch`` chooses from: DeepLabv2 (``models/deeplabv2.py``, the published
network) and the segmentation-library students (``models/students.py``). Every stage builds its
network through :func:`get_network`; all share one forward contract (``forward(x, size=None)`` on the
BGR minus Caffe mean input, logits upsampled bilinearly to ``size`` when given)."""
from models.deeplabv2 import ARCHS as DEEPLABV2_ARCHS
from models.deeplabv2 import get_deeplabv2
from models.students import STUDENTS, get_student
from utils.cli import UserError

ARCH_NAMES = tuple(DEEPLABV2_ARCHS) + tuple(STUDENTS)


def family(arch):
    """``deeplabv2``, ``transformer`` (SegFormer) or ``cnn`` (DeepLabV3+)."""
    return "deeplabv2" if arch in DEEPLABV2_ARCHS else STUDENTS[arch]["family"]


def get_network(arch="deeplabv2_r101", num_classes=19, restore_from=None, head_branches=2, freeze_bn_stats=False):
    """Build the network named ``arch`` and load ``restore_from`` if given (``head_branches``: DeepLabv2 only)."""
    if arch in DEEPLABV2_ARCHS:
        return get_deeplabv2(num_classes=num_classes, restore_from=restore_from, arch=arch,
                             head_branches=head_branches, freeze_bn_stats=freeze_bn_stats)
    if arch in STUDENTS:
        return get_student(arch, num_classes, restore_from=restore_from, freeze_bn_stats=freeze_bn_stats)
    raise UserError(f"--arch {arch!r} is not one of: {', '.join(ARCH_NAMES)}")

