"""Cityscapes, the target domain: training images with pseudo-labels or ground truth, val for testing.

Layout (the official one, with train-id labels made by ``utils/transfer_trainid.py``)::

    <image_root>/<split>/<city>/<stem>_leftImg8bit.png
    <label_root>/<split>/<city>/<stem>_gtFine_labelIds.png        train ids, full resolution
    <pseudo>/label_ids/<split>/<city>/<stem>_gtFine_labelIds.png  train ids, input size (stage 2)

Used by cross-domain distillation (stage 3, pseudo-labels), self-distillation (stage 6, images),
pseudo-labelling and patch mining (stages 2 and 5, images) and evaluation (stage 8, val labels at
full resolution). Every listed file is checked at construction, so a wrong path fails at once.
The other targets (ACDC, Dark Zurich, a folder of images) follow the same :class:`Target` protocol
(``datasets/base.py``, ``datasets/targets.py``).
"""
import glob
import os

from datasets.base import Target, TargetDataset, resolve_pseudo_label_root  # noqa: F401 (the published name)
from datasets.targets import CITYSCAPES_LIST_ROOT as DEFAULT_LIST_ROOT
from utils.cli import UserError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
DEFAULT_DATA_DIR = "./data/Cityscapes"


class Cityscapes(Target):
    key, title = "cityscapes", "Cityscapes"
    default_data_dir = DEFAULT_DATA_DIR
    image_folder, label_folder = "leftImg8bit", "gtFine2"
    layout_hint = "leftImg8bit/<split>/<city>/*_leftImg8bit.png under the Cityscapes root --data-dir"
    image_suffix = IMAGE_SUFFIX
    pseudo_label_suffix = LABEL_SUFFIX  # the published layout of the pseudo-labels
    default_list_root = DEFAULT_LIST_ROOT

    def scan(self, split):
        split_dir = os.path.join(self.images, split)
        if not os.path.isdir(split_dir):
            raise UserError(f"no images of split {split!r}: folder not found: {split_dir}")
        paths = glob.glob(os.path.join(glob.escape(split_dir), "*", "*" + IMAGE_SUFFIX))
        return sorted(os.path.relpath(p, split_dir).replace(os.sep, "/") for p in paths)

    def scan_hint(self, split):
        return f"<city>/*{IMAGE_SUFFIX} in {os.path.join(self.images, split)}"

    def label_dirs(self, split):
        folder = os.path.join(self.labels, split)
        return [(folder, f"label folder not found: {folder} (train-id labels of split {split!r}, made by "
                         "utils/transfer_trainid.py)")]

    def label_path(self, split, name):
        return os.path.join(self.labels, split, name + LABEL_SUFFIX)


def list_images(image_root, split, list_root=None):
    """Image paths relative to ``<image_root>/<split>`` (``city/stem_leftImg8bit.png``).

    Read from ``<list_root>/<split>.txt`` when that file exists (first token per line, blank lines
    ignored), otherwise a sorted scan of ``<image_root>/<split>/*/*_leftImg8bit.png``.
    """
    return Cityscapes(image_root=image_root).list_images(split, list_root)


class CityscapesDataset(TargetDataset):
    """Cityscapes images of one split, with train-id ground truth (``label_root``), pseudo-labels
    (``pseudo_label_root``, which takes precedence) or no labels.

    ``images`` are the paths relative to the split folder; item names are ``city/stem``.
    """

    def __init__(self, image_root, split, input_size=(1024, 512), label_root=None, list_root=None,
                 pseudo_label_root=None, resize_label=True, num_classes=19, resize_backend="pil"):
        super().__init__(Cityscapes(image_root=image_root, label_root=label_root), split, input_size=input_size,
                         labels=label_root is not None, list_root=list_root, pseudo_label_root=pseudo_label_root,
                         resize_label=resize_label, num_classes=num_classes, resize_backend=resize_backend)
