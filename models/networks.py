"""The one registry of networks ``--arch`` chooses from: DeepLabv2 (``models/deeplabv2.py``, the published
network) and the segmentation-library students (``models/students.py``). Every stage builds its
network through :func:`get_network`; all share one forward contract (``forward(x, size=None)`` on the
BGR minus Caffe mean input, logits upsampled bilinearly to ``size`` when given).

Weight files the toolkit writes say what they are (:func:`save_weights`): the network, its classes,
the input size it was trained at and the input it takes, in the state dict's own metadata, which
PyTorch's ``load_state_dict`` (and the published code's strict load) ignores. Commands read it
(:func:`network_flags_from_file`) and need ``--arch``, ``--num-classes`` and ``--input-size`` only to
override; a wrong ``--arch`` for a file is one line naming the right one."""
import collections
import io
import os

from models.archs import ARCH_NAMES, family  # noqa: F401 (the registry's names, and the family of each)
from models.archs import DEEPLABV2 as DEEPLABV2_ARCHS
from models.deeplabv2 import get_deeplabv2
from models.students import get_student
from utils.cli import UserError, typed_flags
from utils.torch_files import TorchFileError, load_torch_file, read_state_dict

NETWORK_KEY = "segmentation_network"  # in a weight file's state-dict metadata
NETWORK_INPUT = "BGR 0..255 minus the Caffe mean (104.0, 116.7, 122.7), N x 3 x H x W"

def get_network(arch="deeplabv2_r101", num_classes=19, restore_from=None, head_branches=2, freeze_bn_stats=False):
    """Build the network named ``arch`` and load ``restore_from`` if given (``head_branches``: DeepLabv2 only)."""
    if arch not in ARCH_NAMES:
        raise UserError(f"--arch {arch!r} is not one of: {', '.join(ARCH_NAMES)}")
    try:
        if arch in DEEPLABV2_ARCHS:
            return get_deeplabv2(num_classes=num_classes, restore_from=restore_from, arch=arch,
                                 head_branches=head_branches, freeze_bn_stats=freeze_bn_stats)
        return get_student(arch, num_classes, restore_from=restore_from, freeze_bn_stats=freeze_bn_stats)
    except TorchFileError as err:
        right = restore_from and "do not fit" in str(err) and arch_of_weights(restore_from, num_classes)
        if right and right != arch:
            raise TorchFileError(f"{restore_from} holds a {right} network, not a {arch}: add --arch {right}") from None
        raise


def arch_of_weights(path, num_classes=19):
    """The ``--arch`` whose network the weights in ``path`` fit (its metadata, else the key names and
    shapes compared with each network, built without memory), or ``None``."""
    info = network_of(path)
    if info:
        return info["arch"]
    import torch

    state = read_state_dict(path)
    for arch in ARCH_NAMES:
        def build():
            return (get_deeplabv2(arch=arch, num_classes=num_classes) if arch in DEEPLABV2_ARCHS
                    else get_student(arch, num_classes))
        try:
            with torch.device("meta"):  # no memory, no initialisation
                expected = build().state_dict()
        except RuntimeError:  # a network whose construction reads a tensor's value (SegFormer's drop path)
            expected = build().state_dict()
        if set(expected) == set(state) and all(tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items()):
            return arch
    return None


def describe(arch, num_classes, input_size):
    """What a weight file of this network says about itself (:data:`NETWORK_KEY`)."""
    return {"arch": arch, "num_classes": int(num_classes), "input_size": [int(v) for v in input_size],
            "input": NETWORK_INPUT}


def save_weights(path, state, info):
    """Write the state dict ``state`` to ``path`` (atomically) with ``info`` (:func:`describe`, or ``None``
    for a network of unknown origin) in its metadata."""
    import torch

    from utils.io import atomic_write_bytes

    metadata = collections.OrderedDict(getattr(state, "_metadata", None) or {})
    state = collections.OrderedDict(state)
    if info:
        metadata[NETWORK_KEY] = dict(info)
    state._metadata = metadata
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def network_of(path):
    """The :func:`describe` record of a weight file the toolkit wrote (in its metadata) or of a Lightning
    checkpoint ``main.py`` wrote (from its hyper-parameters), or ``None`` (another file)."""
    obj = load_torch_file(path, "weight file", mmap=True)
    hyper = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if isinstance(hyper, dict) and all(key in hyper for key in ("arch", "num_classes", "input_size")):
        try:
            info = describe(hyper["arch"], hyper["num_classes"], hyper["input_size"])
        except (TypeError, ValueError):
            return None
    else:
        info = (getattr(obj, "_metadata", None) or {}).get(NETWORK_KEY)
    fields = {"arch": str, "num_classes": int, "input_size": list}
    if not isinstance(info, dict) or any(not isinstance(info.get(k), t) for k, t in fields.items()) \
            or info["arch"] not in ARCH_NAMES or len(info["input_size"]) != 2:
        return None
    return info


def network_flags_from_file(args, argv, path_flag="--restore-from"):
    """Fill ``args.arch``, ``args.num_classes`` and ``args.input_size`` from the record of the weight
    file ``args.restore_from`` (a file the toolkit wrote) unless typed in ``argv``; a typed ``--arch``
    or ``--num-classes`` that contradicts the file is one line naming both (a typed ``--input-size``
    overrides the file's: a network runs at other sizes too)."""
    path = getattr(args, "restore_from", None)
    if not path or not os.path.isfile(path) or path.lower().endswith(".onnx"):
        return None
    try:
        info = network_of(path)
    except UserError:
        return None  # not a weight file: whoever loads it says so
    if info is None:
        return None
    typed = typed_flags(argv)
    for field, flag in (("arch", "--arch"), ("num_classes", "--num-classes")):
        if flag in typed and getattr(args, field) != info[field]:
            raise UserError(f"{flag} {getattr(args, field)}, but {path_flag} {path} is a {info['arch']} network "
                            f"with {info['num_classes']} classes: drop {flag} (the file says it) or give other weights")
        setattr(args, field, info[field])
    if "--input-size" not in typed:
        args.input_size = tuple(info["input_size"])
    return info

