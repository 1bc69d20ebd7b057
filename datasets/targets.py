"""The target domains by name (``--target-dataset``) and the flags that say where one lies, the
same for ``main.py``, ``generate_pseudo_labels.py`` and ``construct_hard_patch.py``.

Adding a target is one file in ``datasets/`` (a :class:`datasets.base.Target` subclass: its
folders, how it finds a split's images and places their labels) and one line in :data:`TARGETS`.
"""
import argparse

from datasets.acdc import ACDC
from datasets.cityscapes import Cityscapes
from datasets.darkzurich import DarkZurich
from datasets.folder import ImageFolder
from utils.cli import UserError

TARGETS = {
    "cityscapes": Cityscapes,
    "acdc": ACDC,
    "darkzurich": DarkZurich,
    "folder": ImageFolder,
}


def condition_list(text):
    """``--conditions``: comma-separated names, each once (checked against the target later)."""
    names = [n.strip() for n in str(text).split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, each once, such as fog,night, got {text!r}")
    return tuple(names)


def add_target_dataset_args(group, labels=True):
    """``--target-dataset``, ``--data-dir``, ``--image-root``, ``--conditions`` and, when ``labels``,
    ``--label-root`` (also spelt ``--label-dir``)."""
    group.add_argument("--target-dataset", choices=tuple(TARGETS), default="cityscapes",
                       help="the target domain's layout: cityscapes, acdc, darkzurich, or folder (any tree of "
                            ".png/.jpg images) (default: %(default)s)")
    truth = ", train-id ground truth in <data-dir>/gtFine2 (made by utils/transfer_trainid.py)" if labels else ""
    group.add_argument("--data-dir", default=None,
                       help="the target's root: for cityscapes, images in <data-dir>/leftImg8bit/<split>/<city>/"
                            f"<stem>_leftImg8bit.png{truth} (default: ./data/Cityscapes); for acdc and darkzurich, "
                            "the official download with rgb_anon/ and gt/ (default: ./data/ACDC, ./data/DarkZurich); "
                            "for folder, the folder of your images (no default)")
    group.add_argument("--image-root", default=None,
                       help="the image folder when it is not where --data-dir puts it (<data-dir>/leftImg8bit, "
                            "<data-dir>/rgb_anon)")
    if labels:
        group.add_argument("--label-root", "--label-dir", dest="label_root", default=None,
                           help="the train-id ground truth when it is not where --data-dir puts it "
                                "(<data-dir>/gtFine2/<split>/<city>/<stem>_gtFine_labelIds.png, <data-dir>/gt/...); "
                                "for folder, labels for evaluation: <relative path>/<stem>.png, mirroring the images")
    group.add_argument("--conditions", type=condition_list, default=None, metavar="NAME,...",
                       help="ACDC conditions (fog,night,rain,snow) or Dark Zurich times of day (day,twilight,night) "
                            "to read (default: every one; Dark Zurich: those of the split, day,twilight,night for "
                            "train and night otherwise)")
    return group


def make_target(name, data_dir=None, image_root=None, label_root=None, conditions=None):
    """The :class:`datasets.base.Target` of ``--target-dataset name`` and its flags (nothing is read)."""
    if name not in TARGETS:
        raise UserError(f"--target-dataset: unknown target {name!r} (choose from {', '.join(TARGETS)})")
    return TARGETS[name](data_dir=data_dir, image_root=image_root, label_root=label_root, conditions=conditions)
