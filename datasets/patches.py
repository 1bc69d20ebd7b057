"""Mined hard patches (stage 5 output) for the hard patch loss of self-distillation (stage 6).

Layout written by ``construct_hard_patch.py``::

    <root>/patches/<stem>_<k>.png   BGR image patch
    <root>/labels/<stem>_<k>.png    its train-id label (the pseudo-label), same size

Patches are used at their stored size (no resizing). A folder of patches made by hand (no
``.state/`` of a mining run in it) is accepted as it is; one whose mining run has not finished
(``.state/`` without ``summary.json``) is refused before this class reads it (``modules/stage_output.py``).
"""
import glob
import os

from datasets.base import LabelledImages, check_files_exist
from utils.cli import UserError


class HardPatchDataset(LabelledImages):
    """Items ``dict(image, label, name, index)`` with ``name`` the patch file name without ``.png``."""

    def __init__(self, root, num_classes=19):
        patch_dir = os.path.join(root, "patches")
        if not os.path.isdir(patch_dir):
            raise UserError(f"hard patch folder not found: {patch_dir} (made by construct_hard_patch.py)")
        patch_paths = sorted(glob.glob(os.path.join(glob.escape(patch_dir), "*.png")))
        if not patch_paths:
            raise UserError(f"no hard patches (*.png) in {patch_dir}")
        label_dir = os.path.join(root, "labels")
        if not os.path.isdir(label_dir):
            raise UserError(f"hard patch label folder not found: {label_dir}")
        names = [os.path.basename(p)[:-len(".png")] for p in patch_paths]
        label_paths = [os.path.join(label_dir, name + ".png") for name in names]
        check_files_exist(label_paths, "hard patch label")
        super().__init__(zip(patch_paths, label_paths, names), input_size=None, num_classes=num_classes)
