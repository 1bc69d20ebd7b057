"""The target domains by name (``--target-dataset``), without importing them: the names are the
flag's choices (``modules/config.py`` declares the flags), a target's class is imported when a
target is built.

Adding a target is one file in ``datasets/`` (a :class:`datasets.base.Target` subclass: its
folders, how it finds a split's images and places their labels) and one line in :data:`TARGETS`.
"""
from utils.cli import Registry, UserError

TARGETS = Registry({
    "cityscapes": "datasets.cityscapes.Cityscapes",
    "acdc": "datasets.acdc.ACDC",
    "darkzurich": "datasets.darkzurich.DarkZurich",
    "folder": "datasets.folder.ImageFolder",
})
CITYSCAPES_LIST_ROOT = "./datasets/list/cityscapes"  # Cityscapes' <split>.txt image lists, beside the code
# How images and labels are resized (datasets/pixels.py): "pil" (the default) as the published loaders did, "cv2" faster.
RESIZE_BACKENDS = ("pil", "cv2")


def make_target(name, data_dir=None, image_root=None, label_root=None, conditions=None):
    """The :class:`datasets.base.Target` of ``--target-dataset name`` and its flags (nothing is read)."""
    if name not in TARGETS:
        raise UserError(f"--target-dataset: unknown target {name!r} (choose from {', '.join(TARGETS)})")
    return TARGETS[name](data_dir=data_dir, image_root=image_root, label_root=label_root, conditions=conditions)
