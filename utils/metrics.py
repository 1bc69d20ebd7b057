"""Segmentation scores: the confusion matrix, IoU per class, mIoU and the CSV record (stage 8).

The IoU maths lives here once and is shared by validation during training, ``--mode test`` and
the scripts. It follows the official Cityscapes pixel-level evaluator: one confusion matrix over
the whole split (ground-truth pixels marked ignore are skipped), IoU = TP / (TP + FP + FN) per
class, and the mean taken over the classes whose IoU is defined (TP + FP + FN > 0).
"""
import csv
import math
import os

import numpy as np
import torch
from torchmetrics import Metric

from utils.cli import UserError
from utils.labels import (IGNORE_INDEX, MIOU13_EXCLUDED, MIOU13_PUBLISHED_EXCLUDED, MIOU16_EXCLUDED, NUM_CLASSES,
                          class_names)

# Every mean once: scores key, label in the printed table, CSV column, train ids left out.
# Two 13-class means: the standard SYNTHIA-13 one, and the published code's (which the paper's
# 13-class column came from).
MEANS = (
    ("miou", "mIoU", "Mean", ()),
    ("miou16", "mIoU-16", "Mean-16", MIOU16_EXCLUDED),
    ("miou13", "mIoU-13", "Mean-13", MIOU13_EXCLUDED),
    ("miou13_published", "mIoU-13 (published code)", "Mean-13 (published code)", MIOU13_PUBLISHED_EXCLUDED),
)
MEAN_KEYS = tuple(m[0] for m in MEANS)
MEAN_COLUMNS = tuple(m[2] for m in MEANS)


class ConfusionMatrix(Metric):
    """Pixel counts ``confmat[ground truth, prediction]`` accumulated over many batches.

    The state is summed across processes when ``compute()`` runs under ``torch.distributed``, so
    every rank can evaluate its own shard of the split and all of them see the full matrix.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, pred, target):
        """Add a batch: ``pred`` and ``target`` are integer tensors of the same shape (train ids)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to(device=self.confmat.device, dtype=torch.long)
        target = target.reshape(-1).to(device=self.confmat.device, dtype=torch.long)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        c = self.num_classes
        # An out-of-range prediction would silently land in the next row of the flattened matrix.
        if ((pred < 0) | (pred >= c) | (target < 0) | (target >= c)).any():
            raise ValueError(f"labels must be in 0..{c - 1} (or {self.ignore_index} in the target)")
        self.confmat += torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)

    def compute(self):
        return self.confmat


def iou_per_class(confmat):
    """IoU of every class as a float64 array; ``nan`` where the class is absent from both the
    ground truth and the prediction (TP + FP + FN == 0)."""
    confmat = confmat.detach().cpu().numpy() if torch.is_tensor(confmat) else np.asarray(confmat)
    confmat = confmat.astype(np.float64)
    tp = np.diag(confmat)  # a last column beyond the classes (image_confusion's "no class") counts as missed
    union = confmat.sum(0)[:len(tp)] + confmat.sum(1) - tp
    iou = np.full(len(tp), np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def _mean(values):
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def scores_from_confusion(confmat):
    """Per-class IoU and the means of :data:`MEANS`, all in percent (``nan`` where undefined).

    ``miou16`` leaves out terrain, truck and train (the SYNTHIA protocol); ``miou13`` also wall,
    fence and pole (standard SYNTHIA-13); ``miou13_published`` instead fence, pole and traffic
    light, keeping wall, as the published code did (compare it with the paper's 13-class column).
    """
    per_class = [float(v) * 100.0 for v in iou_per_class(confmat)]
    scores = {"per_class": per_class}
    for key, _, _, excluded in MEANS:
        scores[key] = _mean(v for c, v in enumerate(per_class) if c not in excluded)
    return scores


def format_table(scores, title=None):
    """A plain-text table: one line per class with its IoU, then the means of :data:`MEANS`."""
    names = class_names(len(scores["per_class"]))
    width = max(len(n) for n in names + tuple(m[1] for m in MEANS))
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  IoU (%)")
    lines.append("-" * (width + 9))
    lines += [f"{name:<{width}}  {iou:7.2f}" for name, iou in zip(names, scores["per_class"])]
    lines.append("-" * (width + 9))
    for key, label, _, _ in MEANS:
        lines.append(f"{label:<{width}}  {scores[key]:7.2f}")
    return "\n".join(lines)


def format_condition_table(conditions):
    """The means of every condition (``{condition: scores}``), one line each, for the lines after
    :func:`format_table` of a target scored per condition."""
    width = max(len("condition"), *(len(c) for c in conditions))
    columns = [label for _, label, _, _ in MEANS[:3]]
    lines = ["per condition: " + ", ".join(f"{c} (%)" for c in columns),
             f"{'condition':<{width}}  " + "  ".join(f"{c:>7}" for c in columns)]
    for condition, scores in conditions.items():
        lines.append(f"{condition:<{width}}  " + "  ".join(f"{scores[key]:7.2f}" for key, _, _, _ in MEANS[:3]))
    return "\n".join(lines)


def condition_record_path(csv_path, condition):
    """The record of one condition beside ``csv_path``: ``miou_record.csv`` -> ``miou_record_fog.csv``."""
    stem, ext = os.path.splitext(csv_path)
    return f"{stem}_{condition}{ext}"


def record_header(num_classes=NUM_CLASSES):
    return ["step", "weights", *class_names(num_classes), *MEAN_COLUMNS]


def append_record(csv_path, scores, step, weights):
    """Append one evaluation to a CSV record: the weights it scored (``step`` of the run and
    ``weights``, the file or run folder that holds them), then the per-class IoUs and the means, in
    percent."""
    values = list(scores["per_class"]) + [scores[key] for key in MEAN_KEYS]
    append_csv_row(csv_path, record_header(len(scores["per_class"])), [step, weights, *(f"{v:.2f}" for v in values)])


def append_csv_row(csv_path, header, row):
    """Append ``row`` to a CSV file, writing ``header`` first into a new one; a file that starts with
    another header is refused (a record of another kind, or of another version)."""
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    new_file = not check_csv_header(csv_path, header)
    with open(csv_path, "a", newline="") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(header)
        writer.writerow(row)


def check_csv_header(csv_path, header):
    """Whether the CSV file exists with rows; one that starts with another header is refused (a
    record of another kind, or of another version)."""
    if not os.path.isfile(csv_path) or os.path.getsize(csv_path) == 0:
        return False
    with open(csv_path, newline="") as f:
        first = next(csv.reader(f), [])
    if first != header:
        raise UserError(f"{csv_path} has another header than this record's ({', '.join(header[:3])}, ...): "
                        "choose another record file or run folder")
    return True


def image_confusion(prediction, label, num_classes, ignore_index=IGNORE_INDEX):
    """The confusion matrix ``[ground truth, prediction]`` of one image (integer arrays, same shape),
    ``num_classes`` × ``num_classes + 1``: the last column counts the pixels predicted as no class
    (255 in a label map), each a miss of its true class (:func:`iou_per_class` takes such a matrix)."""
    prediction, label = np.asarray(prediction).ravel(), np.asarray(label).ravel()
    keep = label != ignore_index
    columns = num_classes + 1
    predicted = np.minimum(prediction[keep].astype(np.int64), num_classes)
    index = label[keep].astype(np.int64) * columns + predicted
    return np.bincount(index, minlength=num_classes * columns).reshape(num_classes, columns)


def bootstrap_difference(confusions_a, confusions_b, samples=1000, seed=0, level=0.95):
    """The ``level`` interval of mIoU(a) − mIoU(b) (percent) when the images are drawn again with
    replacement: ``confusions_a[i]`` and ``confusions_b[i]`` are image ``i``'s confusion matrices under
    models a and b, resampled together (a paired bootstrap, percentile interval). Returns
    ``(low, high)``."""
    a, b = np.asarray(confusions_a), np.asarray(confusions_b)
    if a.shape != b.shape or a.ndim != 3 or not len(a):
        raise ValueError("expected two stacks of per-image confusion matrices of the same shape")
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(samples):
        pick = rng.integers(0, len(a), len(a))
        differences.append(scores_from_confusion(a[pick].sum(0))["miou"] - scores_from_confusion(b[pick].sum(0))["miou"])
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(differences, [tail, 100 - tail])
    return float(low), float(high)
