"""Stage 2 without a provider: the easy/hard split of label maps made elsewhere (a segmentation
service's output), from the per-image confidence maps such services return beside them.

``generate_pseudo_labels.py`` ranks its images by the mean per-pixel entropy of the softmax of the
provider's flip-summed logits (``modules/pseudo_labels.py``). A service gives no logits; many give,
per image, the confidence of the predicted class at every pixel. Here that stands in for the
entropy: each image's value is the mean per-pixel uncertainty ``1 - confidence`` over its labelled
pixels (label 255, ignore, left out; an image with none counts as wholly uncertain, 1), and the
split is written exactly as ``generate_pseudo_labels.py`` writes its own (:func:`write_split`):
``easy.txt`` / ``hard.txt`` (``easy_<split>.txt`` … for another split), lines ``<name> <value>`` in
ascending value, ties by name, the lower ``n // 2`` easy. The two rankings order images alike but
their values are not comparable (entropy in nats, 0..ln C, against 1 - confidence in 0..1).

Naming: the label of item ``<name>`` is ``<labels>/<name><suffix>`` (``<city>/<stem>_gtFine_labelIds.png``
for Cityscapes, ``<name>.png`` for the other targets), ``<labels>`` being the folder the stages read
(``datasets.base.resolve_pseudo_label_root``); its confidence map has the same relative path under
``--confidence-root``, as a PNG or with ``.tif`` / ``.tiff`` in place of ``.png``. A confidence map
is one grey channel at its label's size: 8-bit (0..255 for 0..1), 16-bit (0..65535) or, in a TIFF,
float32 in 0..1.

Only the two lists are written: no ``.state/`` and no ``summary.json``, so the folder stays one the
other stages take as it is (``modules/stage_output.py``); a folder that is ``generate_pseudo_labels.py``'s
output (which has its entropy ranking) is refused. Every input is checked before anything is written.
"""
import dataclasses
import os
from typing import Optional

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.base import resolve_pseudo_label_root, stored_shape
from datasets.targets import TARGETS
from modules.prediction import ErrorsAsItems, check_item
from modules.pseudo_labels import report_names, state_dir, write_split
from modules.stage_output import pseudo_label_save_folder
from utils.cli import UserError
from utils.io import read_label
from utils.labels import IGNORE_INDEX
from utils.loaders import num_workers_or_default
from utils.run_folder import folder_lock

CONFIDENCE_ENDINGS = (".png", ".tif", ".tiff")  # in this order of preference; more than one is refused
FULL_SCALE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535, np.dtype(np.float32): 1.0}


@dataclasses.dataclass(frozen=True)
class LabelMapRanking:
    """Everything ``python -m tools.rank_label_maps`` is told."""
    pseudo_label_root: str
    confidence_root: str
    save: Optional[str] = None  # None: the folder generate_pseudo_labels.py would write the lists to
    target_dataset: str = "cityscapes"
    split: str = "train"
    num_workers: Optional[int] = None  # None: utils/loaders.py's default


# -- inputs ---------------------------------------------------------------------------------------------

def find_label_maps(root, split, suffix):
    """``(folder, [(name, relative path)], skipped)``: the label PNGs named ``<name><suffix>`` under the
    folder the stages read for ``root`` (hidden files and folders left out), sorted by name, and the
    number of other PNG files there."""
    folder = resolve_pseudo_label_root(root, split, depth=64)
    found, skipped, seen = [], 0, set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for file_name in filenames:
            if file_name.startswith(".") or not file_name.endswith(".png"):
                continue
            if not file_name.endswith(suffix):
                skipped += 1
                continue
            rel = os.path.relpath(os.path.join(dirpath, file_name), folder).replace(os.sep, "/")
            if "\n" in rel or "\r" in rel:
                raise UserError(f"a label's file name holds a line break (the lists are one image a line): {rel!r}")
            found.append((rel[:-len(suffix)], rel))
    if not found:
        raise UserError(f"no label maps in {folder}: looked for *{suffix} files (named as --target-dataset names "
                        "its pseudo-labels)")
    return folder, sorted(found), skipped


def confidence_path(confidence_root, rel):
    """The confidence map of the label at ``rel`` (relative to the label folder), or ``None``."""
    stem = rel[:-len(".png")]
    present = [path for path in (os.path.join(confidence_root, stem + ending) for ending in CONFIDENCE_ENDINGS)
               if os.path.isfile(path)]
    if len(present) > 1:
        raise UserError(f"two confidence maps for one label: {present[0]} and {present[1]}; keep one")
    return present[0] if present else None


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def pair_maps(config):
    """``(label folder, [(name, label path, confidence path)], skipped)``, every confidence map present
    and of its label's size as far as the file headers tell (the pixels are checked when read)."""
    if config.target_dataset not in TARGETS:
        raise UserError(f"--target-dataset: unknown target {config.target_dataset!r} (choose from {', '.join(TARGETS)})")
    if not os.path.isdir(config.pseudo_label_root):
        raise UserError(f"--pseudo-label-root: folder not found: {config.pseudo_label_root}")
    if not os.path.isdir(config.confidence_root):
        raise UserError(f"--confidence-root: folder not found: {config.confidence_root}")
    suffix = TARGETS[config.target_dataset].pseudo_label_suffix
    folder, labels, skipped = find_label_maps(config.pseudo_label_root, config.split, suffix)
    if _inside(config.confidence_root, folder) or _inside(folder, config.confidence_root):
        raise UserError(f"--confidence-root {config.confidence_root} and the label folder {folder} must be apart "
                        "(neither inside the other): the maps share the labels' file names")
    pairs, missing = [], []
    for name, rel in labels:
        path = confidence_path(config.confidence_root, rel)
        if path is None:
            missing.append(rel)
            continue
        pairs.append((name, os.path.join(folder, rel), path))
    if missing:
        more = f"; {len(missing)} of {len(labels)} labels have none" if len(missing) > 1 else ""
        raise UserError(f"confidence map not found: {os.path.join(config.confidence_root, missing[0])} (or .tif/.tiff), "
                        f"for the label {os.path.join(folder, missing[0])}{more}")
    for _, label_path, path in pairs:
        _check_same_size(stored_shape(label_path), stored_shape(path), label_path, path)
    return folder, pairs, skipped


def _check_same_size(label_shape, confidence_shape, label_path, path):
    if label_shape is not None and confidence_shape is not None and label_shape[:2] != confidence_shape[:2]:
        raise UserError(f"confidence map size {confidence_shape[1]}x{confidence_shape[0]} does not match its label "
                        f"({label_shape[1]}x{label_shape[0]}, {label_path}): {path}")


def read_confidence(path):
    """``(map, full scale)``: one grey channel, 8-bit (255 means 1), 16-bit (65535) or float32 in 0..1."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"cannot read confidence map (unreadable or truncated, or no PNG/TIFF image): {path}")
    if image.ndim != 2:
        raise UserError(f"confidence map is not grey ({image.shape[2]} channels: a colour, palette or alpha image); "
                        f"one channel of 8 or 16 bits wanted: {path}")
    if image.dtype not in FULL_SCALE:
        raise UserError(f"confidence map of {image.dtype} values; 8-bit (0..255) or 16-bit (0..65535) grey, or "
                        f"float32 in 0..1 in a TIFF, wanted: {path}")
    if image.dtype == np.float32 and not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
        raise UserError(f"float confidence map with values outside 0..1 (or NaN): {path}")
    return image, FULL_SCALE[image.dtype]


def mean_uncertainty(label, confidence, full_scale):
    """Mean of ``1 - confidence / full_scale`` over the pixels whose label is not 255 (ignore); 1 for
    an image without one. Integer maps are summed exactly, so the value does not depend on the order."""
    values = confidence[label != IGNORE_INDEX]
    if values.size == 0:
        return 1.0
    if confidence.dtype == np.float32:
        return 1.0 - float(values.sum(dtype=np.float64)) / values.size
    return 1.0 - int(values.sum(dtype=np.uint64)) / (values.size * full_scale)


class _Uncertainties(Dataset):
    """``(name, mean uncertainty)`` of every ``(name, label path, confidence path)``."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        name, label_path, path = self.pairs[index]
        label = read_label(label_path)
        confidence, full_scale = read_confidence(path)
        _check_same_size(label.shape, confidence.shape, label_path, path)
        return name, mean_uncertainty(label, confidence, full_scale)


# -- output ---------------------------------------------------------------------------------------------

def output_folder(config):
    """Where the lists go: ``--save``, else where ``generate_pseudo_labels.py`` puts them for this label
    folder (the folder given, or the run folder above ``label_ids/<split>``)."""
    return config.save or pseudo_label_save_folder(config.pseudo_label_root, config.split)


def check_not_generated(save, split):
    """Refuse a folder that is ``generate_pseudo_labels.py``'s output: it has its entropy ranking, and
    confidence values there would be mixed with (or taken for) entropies."""
    marks = [state_dir(save, split), report_names(save, split)["summary"]]
    made = next((path for path in marks if os.path.exists(path)), None)
    if made is not None:
        raise UserError(f"{save} holds the output of generate_pseudo_labels.py ({made}), which ranks by entropy "
                        "itself; rank label maps made elsewhere, or give another --save")


def rank(config):
    """Rank the label maps of ``config`` by their mean uncertainty and write the easy/hard lists.
    Returns ``{"folder", "save", "files", "easy", "hard", "skipped"}``."""
    folder, pairs, skipped = pair_maps(config)
    save = output_folder(config)
    if os.path.exists(save) and not os.path.isdir(save):
        raise UserError(f"--save {save} is a file, not a folder")
    check_not_generated(save, config.split)
    records = {}
    loader = DataLoader(ErrorsAsItems(_Uncertainties(pairs)), batch_size=None,
                        num_workers=num_workers_or_default(config.num_workers))
    for item in tqdm(loader, total=len(pairs), desc="ranking label maps", unit="image"):
        name, uncertainty = check_item(item)
        records[name] = [repr(float(uncertainty))]  # every digit, as generate_pseudo_labels.py writes
    with folder_lock(save, "--save"):
        check_not_generated(save, config.split)  # again, now that no other run can start in it
        easy, hard = write_split(save, config.split, records)
    files = report_names(save, config.split)
    return {"folder": folder, "save": save, "files": (files["easy"], files["hard"]), "easy": easy, "hard": hard,
            "skipped": skipped}
