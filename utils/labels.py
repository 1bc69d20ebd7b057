"""Class names, colours and id mappings, defined once.

The Cityscapes label table comes from the official ``cityscapesScripts`` package (the source of
truth: it is not retyped here). GTA5 labels use the Cityscapes label ids. SYNTHIA
(RAND-CITYSCAPES) uses its own ids, mapped below to the 19 Cityscapes train ids.
"""
import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

from utils.cli import UserError
from utils.io import read_label

IGNORE_INDEX = 255
NUM_CLASSES = 19

_TRAIN_LABELS = sorted((l for l in _CITYSCAPES_LABELS if 0 <= l.trainId < 255), key=lambda l: l.trainId)
CLASS_NAMES = tuple(l.name for l in _TRAIN_LABELS)

PALETTE = np.array([l.color for l in _TRAIN_LABELS], dtype=np.uint8)  # RGB, one row per train id
assert len(CLASS_NAMES) == NUM_CLASSES


def class_names(num_classes):
    """The Cityscapes names for 19 classes, else ``class 0``, ``class 1``, ..."""
    return CLASS_NAMES if num_classes == len(CLASS_NAMES) else tuple(f"class {k}" for k in range(num_classes))


# The SYNTHIA protocol drops terrain, truck and train (mIoU-16); the standard 13-class one also
# wall, fence and pole. The published code's 13-class mean drops fence, pole and traffic light
# instead (it keeps wall): the paper's 13-class column was computed that way.
MIOU16_EXCLUDED = (9, 14, 16)
MIOU13_EXCLUDED = (3, 4, 5, 9, 14, 16)
MIOU13_PUBLISHED_EXCLUDED = (4, 5, 6, 9, 14, 16)

# Published rare classes for hard patch mining (train ids).
RARE_CLASS_PRESETS = {
    "gta5": (6, 7, 12, 16, 17, 18),  # traffic light, traffic sign, rider, train, motorcycle, bicycle
    "synthia": (6, 7, 12, 17, 18),
}

# SYNTHIA RAND-CITYSCAPES class id -> Cityscapes train id (the 16 shared classes).
SYNTHIA_TO_TRAIN_ID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8,
    1: 10, 10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}


def cityscapes_label_id_lut():
    """A 256-entry ``uint8`` table: Cityscapes/GTA5 label id -> train id (255 where ignored)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in _CITYSCAPES_LABELS:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            lut[label.id] = label.trainId
    return lut


def synthia_label_id_lut():
    """A 256-entry ``uint8`` table: SYNTHIA class id -> train id (255 where not shared)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for synthia_id, train_id in SYNTHIA_TO_TRAIN_ID.items():
        lut[synthia_id] = train_id
    return lut


LABEL_ID_LUTS = {"cityscapes": cityscapes_label_id_lut, "gta5": cityscapes_label_id_lut,
                 "synthia": synthia_label_id_lut}

# The largest id a label-id image of each dataset holds. Cityscapes label ids are 0..33 in the
# official table (the license plate's -1 is never drawn into an image), GTA5 uses the same ids, and
# SYNTHIA RAND-CITYSCAPES class ids are 0..22. A train-id image holds 0..18 and 255 (ignored), so a
# value above the range (255 above all) marks a file that is no label-id file: train ids already.
_MAX_CITYSCAPES_ID = max(label.id for label in _CITYSCAPES_LABELS)
MAX_LABEL_ID = {"cityscapes": _MAX_CITYSCAPES_ID, "gta5": _MAX_CITYSCAPES_ID, "synthia": 22}


def colorize(train_ids):
    """Map an H×W array of train ids to an H×W×3 RGB ``uint8`` image (ignored pixels black)."""
    train_ids = np.asarray(train_ids)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[train_ids.astype(np.uint8)]


def parse_rare_classes(text, num_classes=NUM_CLASSES):
    """``gta5``/``synthia`` preset or comma-separated train ids -> sorted tuple (``auto`` is the
    caller's business). Raises ``ValueError`` with a readable message."""
    if text in RARE_CLASS_PRESETS:
        return RARE_CLASS_PRESETS[text]
    try:
        ids = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise ValueError(f"expected gta5, synthia, auto or comma-separated train ids, got {text!r}") from None
    if not ids or any(not 0 <= i < num_classes for i in ids):
        raise ValueError(f"rare classes must be train ids in 0..{num_classes - 1}, got {text!r}")
    return ids


_LUTS = {}


def read_synthia_label_ids(path):
    """SYNTHIA class ids (H×W, ``uint16``) from a GT/LABELS file: its red channel (third in BGR)."""
    return read_label(path, channel=2)


def label_ids_to_train_ids(label_ids, dataset, path):
    """Map a label-id map of ``dataset`` (cityscapes, gta5, synthia) to ``uint8`` train ids through
    its table (above). A value that is no label id of the dataset is a user error naming
    the file: such a file holds something else, most often train ids already (255 = ignored), which
    the table would silently turn into ignored pixels."""
    if dataset not in _LUTS:
        _LUTS[dataset] = LABEL_ID_LUTS[dataset]()
    largest = MAX_LABEL_ID[dataset]
    if label_ids.size and int(label_ids.max()) > largest:
        found = int(label_ids.max())
        hint = (f"{IGNORE_INDEX} is the ignored value of train ids: is it converted already?" if found == IGNORE_INDEX
                else "is it a label-id file of this dataset?")
        raise UserError(f"{path} holds the value {found}, not a {dataset} label id (0..{largest}): {hint}")
    return _LUTS[dataset][label_ids]
