"""Cityscapes, the target domain: training images with pseudo-labels or ground truth, val for testing.

Layout (the official one, with train-id labels made by ``utils/transfer_trainid.py``)::

    <image_root>/<split>/<city>/<stem>_leftImg8bit.png
    <label_root>/<split>/<city>/<stem>_gtFine_labelIds.png        train ids, full resolution
    <pseudo>/label_ids/<split>/<city>/<stem>_gtFine_labelIds.png  train ids, input size (stage 2)

Used by cross-domain distillation (stage 3, pseudo-labels), self-distillation (stage 6, images),
pseudo-labelling and patch mining (stages 2 and 5, images) and evaluation (stage 8, val labels at
full resolution). Every listed file is checked at construction, so a wrong path fails at once.
"""
import glob
import os

from datasets.base import LabelledImages, check_files_exist
from utils.cli import UserError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
DEFAULT_DATA_DIR = "./data/Cityscapes"
DEFAULT_LIST_ROOT = "./datasets/list/cityscapes"


def add_data_dir_args(group, labels=True):
    """Where the target lies, in the words every entry point uses: ``--data-dir`` (the Cityscapes
    root), with ``--image-root`` (and ``--label-root``, when ``labels``) for one folder elsewhere."""
    group.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                       help="Cityscapes root: images in <data-dir>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png"
                            + (", train-id ground truth in <data-dir>/gtFine2 (made by utils/transfer_trainid.py)"
                               if labels else "") + " (default: %(default)s)")
    group.add_argument("--image-root", default=None,
                       help="the image folder, <image-root>/<split>/<city>/<stem>_leftImg8bit.png, when it is not "
                            "<data-dir>/leftImg8bit")
    if labels:
        group.add_argument("--label-root", default=None,
                           help="the train-id ground truth, <label-root>/<split>/<city>/<stem>_gtFine_labelIds.png, "
                                "when it is not <data-dir>/gtFine2")


def image_folder(data_dir, image_root=None):
    return image_root or os.path.join(data_dir, "leftImg8bit")


def label_folder(data_dir, label_root=None):
    return label_root or os.path.join(data_dir, "gtFine2")


def list_images(image_root, split, list_root=None):
    """Image paths relative to ``<image_root>/<split>`` (``city/stem_leftImg8bit.png``).

    Read from ``<list_root>/<split>.txt`` when that file exists (first token per line, blank lines
    ignored), otherwise a sorted scan of ``<image_root>/<split>/*/*_leftImg8bit.png``.
    """
    if list_root is not None:
        list_file = os.path.join(list_root, f"{split}.txt")
        if os.path.isfile(list_file):
            with open(list_file) as f:
                entries = [line.split()[0] for line in f if line.strip()]
            # Some published lists carry the split folder in front of the city.
            return [e[len(split) + 1:] if e.startswith(split + "/") else e for e in entries]
    split_dir = os.path.join(image_root, split)
    if not os.path.isdir(split_dir):
        raise UserError(f"no images of split {split!r}: folder not found: {split_dir}")
    paths = glob.glob(os.path.join(glob.escape(split_dir), "*", "*" + IMAGE_SUFFIX))
    return sorted(os.path.relpath(p, split_dir).replace(os.sep, "/") for p in paths)


def _holds_labels(folder):
    """True when ``folder`` has PNG files directly or in its subfolders (one per city)."""
    with os.scandir(folder) as entries:
        subfolders = []
        for entry in entries:
            if entry.is_file() and entry.name.endswith(".png"):
                return True
            if entry.is_dir():
                subfolders.append(entry.path)
    for sub in subfolders:
        with os.scandir(sub) as entries:
            if any(e.is_file() and e.name.endswith(".png") for e in entries):
                return True
    return False


def resolve_pseudo_label_root(root, split="train"):
    """The folder holding ``<city>/<stem>_gtFine_labelIds.png`` pseudo-labels.

    Accepts the pseudo-labelling ``--save`` folder itself, its ``label_ids`` folder or the split
    folder: tries ``<root>/label_ids/<split>``, ``<root>/<split>``, then ``<root>``.
    """
    if not os.path.isdir(root):
        raise UserError(f"pseudo-label folder not found: {root}")
    candidates = [os.path.join(root, "label_ids", split), os.path.join(root, split), root]
    for folder in candidates:
        if os.path.isdir(folder) and _holds_labels(folder):
            return folder
    raise UserError(f"no pseudo-labels in {root}: looked for <city>/*.png under " + ", ".join(candidates))


def image_name(relative_path):
    """``city/stem`` from ``city/stem_leftImg8bit.png``."""
    if relative_path.endswith(IMAGE_SUFFIX):
        return relative_path[:-len(IMAGE_SUFFIX)]
    return os.path.splitext(relative_path)[0]


class CityscapesDataset(LabelledImages):
    """Cityscapes images of one split, with train-id ground truth (``label_root``), pseudo-labels
    (``pseudo_label_root``, which takes precedence) or no labels.

    ``images`` are the paths relative to the split folder; item names are ``city/stem``.
    """

    def __init__(self, image_root, split, input_size=(1024, 512), label_root=None, list_root=None,
                 pseudo_label_root=None, resize_label=True, num_classes=19, resize_backend="pil"):
        if not os.path.isdir(image_root):
            raise UserError(f"image folder not found: {image_root}")
        split_dir = os.path.join(image_root, split)
        if not os.path.isdir(split_dir):
            raise UserError(f"no images of split {split!r}: folder not found: {split_dir}")
        self.images = list_images(image_root, split, list_root)
        if not self.images:
            list_file = os.path.join(list_root, f"{split}.txt") if list_root is not None else None
            where = f"the image list {list_file} is empty" if list_file and os.path.isfile(list_file) \
                else f"found no <city>/*{IMAGE_SUFFIX} in {split_dir}"
            raise UserError(f"no images of split {split!r}: {where}")
        image_paths = [os.path.join(split_dir, rel) for rel in self.images]
        check_files_exist(image_paths, "listed image")
        names = [image_name(rel) for rel in self.images]

        if pseudo_label_root is not None:
            label_dir, what = resolve_pseudo_label_root(pseudo_label_root, split), "pseudo-label"
            # Pseudo-labels are written at the input size of the labelling run.
            self.accept_input_size_labels = True
        elif label_root is not None:
            label_dir, what = os.path.join(label_root, split), "label"
            if not os.path.isdir(label_dir):
                raise UserError(f"label folder not found: {label_dir} (train-id labels of split {split!r}, "
                                f"made by utils/transfer_trainid.py)")
        else:
            label_dir = None
        if label_dir is None:
            label_paths = [None] * len(names)
        else:
            label_paths = [os.path.join(label_dir, name + LABEL_SUFFIX) for name in names]
            check_files_exist(label_paths, what)
        super().__init__(zip(image_paths, label_paths, names), input_size=input_size,
                         resize_label=resize_label, num_classes=num_classes, resize_backend=resize_backend)
