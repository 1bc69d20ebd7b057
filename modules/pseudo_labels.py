"""Stage 2 of the method: the provider's pseudo-labels for the target images.

The provider network predicts every image of a split with horizontal-flip test-time augmentation
(logits(x) + flip(logits(flip(x))), optionally averaged over several input scales), at the input
size. For each image ``<city>/<stem>`` the run writes, under ``--save``:

- ``label_ids/<split>/<city>/<stem>_gtFine_labelIds.png``: the argmax, uint8 train ids;
- ``label_color/<split>/<city>/<stem>_gtFine_labelIds.png``: the same in the Cityscapes colours;

(for the other targets of ``--target-dataset``, ``<name>.png`` with ``<name>`` the image's path
inside its split without the extension, e.g. ``fog/<sequence>/<sequence>_frame_<n>_rgb_anon.png``),

and at the end ``easy.txt`` / ``hard.txt``: the images ranked by the mean per-pixel entropy of the
softmax of those logits, lines ``<city>/<stem> <entropy>`` in ascending entropy; the lower half
(``n // 2`` images) is easy, the rest hard. ``summary.json`` holds the pixel share of every class
and, where ground truth exists, the pseudo-labels' IoU against it. For a split other than
``train`` these three files are named ``easy_<split>.txt``, ``hard_<split>.txt``,
``summary_<split>.json``.

With ``--class-balanced-share P`` (CBST's class-balanced thresholds) each image's confidence, the
largest softmax probability of those logits, is also written as a 16-bit PNG
(``confidence/<split>/<name>``, value round(65535 p)); once every image is labelled, the threshold of
each class is the confidence of its ``ceil(P n_c)``-th most confident pixel over the split (``n_c`` its
pixels), saved in ``.state/<split>/class_thresholds.json``, and every label keeps the pixels at or
above their class's threshold, the others becoming 255. Rewriting a label again with the same
thresholds changes nothing, so an interrupted rewrite resumes like the rest.

With ``--complementary-below P`` (ATP's complementary labels) each pixel's set of classes whose
softmax probability is below P, the classes the provider says the pixel is *not*, is also written
(``complementary/<split>/<name>``, an 8-bit three-channel PNG, bit ``c`` for class ``c``, at most
24 classes): the baseline's ``--complementary-weight`` learns from them.

A run can be interrupted at any point and resumed by rerunning the same command: each finished
image is recorded (its entropy in full precision and its class pixel counts) in
``.state/<split>/<rank>.tsv`` after its files were written atomically, so the resumed run
predicts only what is missing and its result is identical, byte for byte, to an uninterrupted run.
"""
import contextlib
import dataclasses
import json
import math
import os
from fractions import Fraction
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.base import TargetDataset, check_size_on_disk
from datasets.cityscapes import LABEL_SUFFIX
from datasets.targets import TARGETS, make_target
from datasets.pixels import resize_label
from modules.config import ProviderRun
from modules.prediction import PredictionData, PredictionModule, RecordWriter, read_records, run_predict
from modules.providers import load_provider
from utils.cli import UserError, progress
from utils.fingerprint import fingerprint
from utils.io import (atomic_write_text, json_number, read_label, stored_shape, write_class_sets, write_png,
                      write_rgb_png)
from utils.labels import IGNORE_INDEX, class_names, colorize
from utils.loaders import num_workers_or_default
from utils.metrics import MEAN_KEYS, ConfusionMatrix, scores_from_confusion
from utils.run_folder import check_outside_images, claim_folder, remove_claim


def scales_of(labelling):
    """The input scales the provider predicts at: ``--scales`` with ``--multiscale``, else one."""
    return list(labelling.scales) if labelling.multiscale else [1.0]


@dataclasses.dataclass(frozen=True)
class PseudoLabelRun(ProviderRun):
    """Everything ``generate_pseudo_labels.py`` is told, built once from its flags."""
    label_root: Optional[str] = None


# -- inputs ---------------------------------------------------------------------------------------------

def layout_of(target, label_root=None):
    """The ``datasets.base.Target`` of the flags (``--label-root``: the ground truth, if any)."""
    return make_target(target.target_dataset, target.data_dir, target.image_root, label_root, target.conditions)


def image_root_of(target):
    """``--image-root``, or the target's image folder under ``--data-dir``, checked to hold the split."""
    layout = layout_of(target)
    flag = "--image-root" if target.image_root else "--data-dir"
    if not target.image_root and not os.path.isdir(layout.data_dir):
        raise UserError(f"--data-dir: folder not found: {layout.data_dir}")
    try:
        layout.check_images(target.split)
    except UserError as err:
        raise UserError(f"{flag}: {err}") from None
    return layout.images


def list_root_of(target):
    """The folder holding ``<split>.txt`` for the dataset classes, from ``--data-list`` or ``--list-root``."""
    if target.data_list is not None and target.list_root is not None:
        raise UserError("--data-list and --list-root both name the image list: give one of them")
    if target.list_root is not None:
        if not os.path.isdir(target.list_root):
            raise UserError(f"--list-root: folder not found: {target.list_root} (leave the flag out to scan the "
                            "image folder)")
        return target.list_root
    if target.data_list is None:
        return TARGETS[target.target_dataset].default_list_root
    if not os.path.isfile(target.data_list):
        raise UserError(f"--data-list: file not found: {target.data_list}")
    if os.path.basename(target.data_list) != f"{target.split}.txt":
        raise UserError(f"--data-list: the list of split {target.split!r} must be named {target.split}.txt, "
                        f"got {target.data_list}")
    return os.path.dirname(target.data_list) or "."


def target_dataset(config, pseudo_label_root=None):
    """The split's images at the input size (and the pseudo-labels of ``pseudo_label_root``), checked
    from their names and headers; ``--save`` must lie outside the image folder."""
    check_outside_images(config.save, "--save", image_root_of(config.target))
    dataset = TargetDataset(layout_of(config.target), config.target.split, input_size=config.network.input_size,
                            list_root=list_root_of(config.target),
                            pseudo_label_root=pseudo_label_root, num_classes=config.network.num_classes,
                            resize_backend=config.target.resize_backend)
    # The records (modules/prediction.py) are lines of tab-separated fields, the name first.
    for name in dataset.names:
        if any(c in name for c in "\t\n\r"):
            raise UserError(f"image name {name!r} holds a tab or a line break, which the run's records cannot "
                            "hold: rename the file")
    # Only the headers are read here (cheap): a file that is no image at all, or one too large, fails
    # before anything is written; a damaged image stops the run when it is reached.
    for image_path, label_path, _ in dataset.samples:
        if stored_shape(image_path) is None:
            raise UserError(f"cannot read image (not an image file): {image_path}")
        if label_path is not None:
            stored_shape(label_path, "label")
    return dataset


def load_network(config):
    """The provider of ``--restore-from``: DeepLabv2 weights, or a provider file (``.onnx``)
    checked on one image (``modules/providers.py``); errors name the file and what is wrong."""
    if not config.restore_from:
        raise UserError("--restore-from: the provider's weight file is needed")
    if not os.path.isfile(config.restore_from):
        raise UserError(f"--restore-from: weight file not found: {config.restore_from}")
    return load_provider(config.restore_from, config.network, config.labelling.provider_output,
                         scales_of(config.labelling))


# -- outputs --------------------------------------------------------------------------------------------

def label_path(save, kind, split, name, suffix=LABEL_SUFFIX):
    """``<save>/<kind>/<split>/<city>/<stem>_gtFine_labelIds.png`` (kind: label_ids or label_color);
    ``<name><suffix>`` for a target whose ``pseudo_label_suffix`` is another."""
    return os.path.join(save, kind, split, name + suffix)


def report_names(save, split):
    suffix = "" if split == "train" else f"_{split}"
    return {key: os.path.join(save, f"{key}{suffix}.{ext}")
            for key, ext in (("easy", "txt"), ("hard", "txt"), ("summary", "json"))}


def state_dir(save, split):
    return os.path.join(save, ".state", split)


def settings_of(config, provider_output="logits"):
    """How the labels are computed: a rerun into the same folder must use the same (and the same
    inputs, :func:`inputs_of`); ``provider_output``: how the provider's scores are taken (``auto``
    resolved, ``modules/providers.py``)."""
    return {"arch": config.network.arch, "num_classes": config.network.num_classes,
            "head_branches": config.network.head_branches, "input_size": list(config.network.input_size),
            "resize_backend": config.target.resize_backend, "flip": config.labelling.flip,
            "scales": scales_of(config.labelling), "precision": config.hardware.precision,
            # only when given, so that the folders of earlier runs resume as they are
            **({"provider_output": provider_output} if provider_output == "probabilities" else {}),
            **({"class_balanced_share": config.labelling.class_balanced_share}
               if config.labelling.class_balanced_share is not None else {}),
            **({"complementary_below": config.labelling.complementary_below}
               if config.labelling.complementary_below is not None else {}),
            **({} if config.hardware.fold_bn else {"fold_bn": False})}


IMAGE_SAMPLE_BYTES = 1 << 16  # per end of each image: a few hundred MB over Cityscapes train, not all 6 GB


def inputs_of(config, dataset):
    """What the labels are computed from, identified by content (``utils/fingerprint.py``), not by
    path: the weight file (moved or renamed, it is the same) and the images in list order (under
    their names, wherever the data folder lies)."""
    images = [image_path for image_path, _, _ in dataset.samples]
    return {"weights": fingerprint([config.restore_from], names=[""]),
            "images": fingerprint(images, dataset.names, sample=IMAGE_SAMPLE_BYTES)}


CONFIDENCE_SCALE = 65535  # a confidence p is stored as round(p * 65535) in a 16-bit PNG


class PseudoLabelWriter(RecordWriter):
    """Writes label_ids (and label_color, and with confidences the confidence) PNGs; records ``name,
    entropy, class pixel counts``."""

    def __init__(self, save, split, num_classes, write_color=True, suffix=LABEL_SUFFIX):
        super().__init__(state_dir(save, split))
        self.save, self.split, self.num_classes, self.write_color = save, split, num_classes, write_color
        self.suffix = suffix

    def write_batch(self, prediction, batch):
        rows = []
        for i, (name, label, entropy) in enumerate(zip(prediction["name"], prediction["label"], prediction["entropy"])):
            label = label.numpy()
            if "confidence" in prediction:
                write_png(label_path(self.save, "confidence", self.split, name, self.suffix),
                          prediction["confidence"][i].numpy().astype(np.uint16))
            if "complementary" in prediction:
                write_class_sets(label_path(self.save, "complementary", self.split, name, self.suffix),
                                 prediction["complementary"][i].numpy())
            write_png(label_path(self.save, "label_ids", self.split, name, self.suffix), label)
            if self.write_color:
                write_rgb_png(label_path(self.save, "label_color", self.split, name, self.suffix), colorize(label))
            counts = np.bincount(label.ravel(), minlength=self.num_classes)[:self.num_classes]
            # repr keeps every digit: the ranking read back after a resume is the same ranking.
            rows.append((name, repr(float(entropy)), ",".join(str(int(c)) for c in counts)))
        return rows


def finished(save, split, names, write_color=True, suffix=LABEL_SUFFIX, extra=()):
    """Images whose files exist (``extra``: kinds besides the labels) and whose record is complete."""
    records = read_records(state_dir(save, split))
    kinds = ["label_ids"] + (["label_color"] if write_color else []) + list(extra)
    return {name for name in names
            if name in records and all(os.path.isfile(label_path(save, kind, split, name, suffix)) for kind in kinds)}


def check_truth_sizes(dataset, truth):
    """The ground truth the report will score against (``truth``, a ``datasets.base.Target``), where
    it exists, must have its images' sizes: checked from the headers before anything is written."""
    if truth is None or truth.missing_label_dir(dataset.split):
        return
    for image_path, _, name in dataset.samples:
        label = truth.label_path(dataset.split, name)
        if os.path.isfile(label):
            check_size_on_disk(image_path, label)


def generate(config, save, write_color=True, truth=None):
    """Label every image of ``config.target.split`` into ``save`` (resuming a previous run).

    Inputs are checked first (with the sizes of the ground truth ``truth``, a
    ``datasets.base.Target``, where it exists); nothing is written when they are wrong. Returns ``None`` in every
    process but the first, which gets ``{"names", "records", "skipped"}``: the listed images, their
    records (``[entropy, counts]`` as strings) and how many were already done before this run.
    """
    share = config.labelling.class_balanced_share
    if share == 0:
        raise UserError("--class-balanced-share 0 would keep no pixel: give a share in (0, 1]")
    below = config.labelling.complementary_below
    if below is not None and not (0 < below < 1 and config.network.num_classes <= 24):
        raise UserError(f"--complementary-below {below}: give a probability in (0, 1), for at most 24 classes "
                        f"(these are {config.network.num_classes})")
    dataset = target_dataset(config)
    names, suffix = dataset.names, dataset.target.pseudo_label_suffix
    check_truth_sizes(dataset, truth)
    net = load_network(config)
    state = state_dir(save, config.target.split)
    extra = (("confidence",) if share else ()) + (("complementary",) if below else ())
    # --overwrite removes the optional kinds too: an earlier run's must not outlive their labels.
    kinds = ("label_ids", "label_color", "confidence", "complementary")
    outputs = ([os.path.join(save, kind, config.target.split) for kind in kinds]
               + list(report_names(save, config.target.split).values()))
    output = getattr(net, "output", "logits")  # a provider file's, as --provider-output auto found it
    claim_folder(state, {**settings_of(config, output), **inputs_of(config, dataset)}, config.overwrite, outputs,
                 inputs=[("--restore-from", config.restore_from)])
    # With --overwrite nothing counts as done, even where the first process has not yet removed it.
    done = frozenset() if config.overwrite else finished(save, config.target.split, names, write_color, suffix, extra)
    first = True
    if len(done) < len(names):
        module = PredictionModule(net, flip=config.labelling.flip, scales=scales_of(config.labelling),
                                  fold_bn=config.hardware.fold_bn, source=config.restore_from,
                                  confidence_scale=CONFIDENCE_SCALE if share else None, complementary_below=below)
        data = PredictionData(dataset, names, config.prediction.batch_size, config.prediction.num_workers, done)
        writer = PseudoLabelWriter(save, config.target.split, config.network.num_classes, write_color, suffix)
        try:
            first = run_predict(module, data, writer, config.hardware)
        except UserError:  # a damaged image, non-finite scores, a full disk: finished files are kept, else nothing
            remove_claim(state, outputs, unless_finished=True)
            with contextlib.suppress(OSError):  # construct_hard_patch.py's .pseudo_labels, left empty
                os.rmdir(save)
            raise
    if not first:
        return None
    records = read_records(state_dir(save, config.target.split))
    missing = [name for name in names if name not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no pseudo-label (first: {missing[0]}); rerun to complete them")
    result = {"names": names, "records": {name: records[name] for name in names}, "skipped": len(done),
              "provider_output": output}
    if share:
        result["class_balanced"] = balance_classes(save, config.target.split, names, suffix, share,
                                                   config.network.num_classes, write_color)
    return result


# -- class-balanced thresholds (CBST) ---------------------------------------------------------------------

def class_thresholds(histogram, share):
    """Per class, the confidence of its ``ceil(share * n_c)``-th most confident pixel (``n_c`` its
    pixels); ``histogram``: C x V pixel counts per confidence value. A class without pixels gets 0."""
    from_top = np.cumsum(histogram[:, ::-1], axis=1)  # pixels at or above each value, highest value first
    exact = Fraction(repr(float(share)))  # 0.07, not 0.07000000000000000666: ceil(0.07 * 100) is 7
    keep = np.array([math.ceil(exact * int(n)) for n in from_top[:, -1]], dtype=np.int64)
    reached = np.argmax(from_top >= np.maximum(keep, 1)[:, None], axis=1)
    return np.where(from_top[:, -1] > 0, histogram.shape[1] - 1 - reached, 0)


def balance_classes(save, split, names, suffix, share, num_classes, write_color=True):
    """Threshold the split's pseudo-labels class by class (:func:`class_thresholds`), in place; the
    thresholds come from the unthresholded labels once, and are kept in ``.state/<split>``.
    Returns ``{"thresholds": [...], "class_pixels": [...]}`` (confidences in [0, 1], kept pixels)."""
    def read(name):
        return (read_label(label_path(save, "label_ids", split, name, suffix)),
                read_label(label_path(save, "confidence", split, name, suffix)).astype(np.int64))

    path = os.path.join(state_dir(save, split), "class_thresholds.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            thresholds = np.array(json.load(f)["thresholds"], dtype=np.int64)
    else:  # no label rewritten yet: the thresholds are written before the first one is
        histogram = np.zeros(num_classes * (CONFIDENCE_SCALE + 1), dtype=np.int64)
        for name in progress(names, desc="class-balanced thresholds", leave=False):
            label, confidence = read(name)
            valid = label < num_classes
            histogram += np.bincount(label[valid].astype(np.int64) * (CONFIDENCE_SCALE + 1) + confidence[valid],
                                     minlength=histogram.size)
        thresholds = class_thresholds(histogram.reshape(num_classes, -1), share)
        atomic_write_text(path, json.dumps({"share": share, "thresholds": thresholds.tolist()}) + "\n")
    bar = np.zeros(256, dtype=np.int64)  # 255 (and any id past the classes) stays as it is
    bar[:num_classes] = thresholds
    counts = np.zeros(num_classes, dtype=np.int64)
    for name in progress(names, desc="class-balanced labels", leave=False):
        label, confidence = read(name)
        kept = np.where(confidence >= bar[label], label, IGNORE_INDEX).astype(np.uint8)
        if not np.array_equal(kept, label):  # the colour first: a run killed between the two redoes both
            if write_color:
                write_rgb_png(label_path(save, "label_color", split, name, suffix), colorize(kept))
            write_png(label_path(save, "label_ids", split, name, suffix), kept)
        counts += np.bincount(kept.ravel(), minlength=256)[:num_classes]
    return {"thresholds": (thresholds / CONFIDENCE_SCALE).tolist(), "class_pixels": counts.tolist()}


# -- report ---------------------------------------------------------------------------------------------

def rank_by_entropy(records):
    """``(easy, hard)``: lists of ``(name, entropy text)`` in ascending entropy (ties by name); the
    lower ``n // 2`` are easy."""
    ranking = sorted(((name, fields[0]) for name, fields in records.items()), key=lambda r: (float(r[1]), r[0]))
    half = len(ranking) // 2
    return ranking[:half], ranking[half:]


def class_pixels(records, num_classes):
    counts = np.zeros(num_classes, dtype=np.int64)
    for fields in records.values():
        counts += np.array([int(c) for c in fields[1].split(",")], dtype=np.int64)
    return counts


class _LabelPairs(Dataset):
    def __init__(self, pairs, resize_backend):
        self.pairs, self.resize_backend = pairs, resize_backend

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        prediction_path, truth_path = self.pairs[index]
        truth = read_label(truth_path)
        # Nearest upsampling to the ground truth's own resolution, as evaluation compares there.
        prediction = resize_label(read_label(prediction_path), (truth.shape[1], truth.shape[0]), self.resize_backend)
        truth = np.where(prediction == IGNORE_INDEX, IGNORE_INDEX, truth)  # pixels a pseudo-label leaves out
        return torch.from_numpy(prediction), torch.from_numpy(truth)


def ground_truth_scores(save, split, names, layout, num_classes, num_workers=0, resize_backend="pil"):
    """IoU of the pseudo-labels against the ground-truth train ids of ``layout`` (a
    ``datasets.base.Target``); ``None`` when that ground truth is absent or incomplete (the second
    value says why). ``num_workers``: loader processes, ``None`` for the default."""
    absent_folder = layout.missing_label_dir(split)
    if absent_folder:
        return None, absent_folder
    folders = [folder for folder, _ in layout.label_dirs(split)]
    truth_dir = folders[0] if len(folders) == 1 else layout.labels
    pairs = [(label_path(save, "label_ids", split, name, layout.pseudo_label_suffix), layout.label_path(split, name))
             for name in names]
    absent = [truth for _, truth in pairs if not os.path.isfile(truth)]
    if absent:
        return None, f"ground truth incomplete: {len(absent)} of {len(pairs)} files missing (first: {absent[0]})"
    # Only the first process reports, so the matrix must not wait for the others to sum it.
    confusion = ConfusionMatrix(num_classes, IGNORE_INDEX, sync_on_compute=False)
    loader = DataLoader(_LabelPairs(pairs, resize_backend), batch_size=None,
                        num_workers=num_workers_or_default(num_workers))
    for prediction, truth in loader:
        confusion.update(prediction, truth)
    return scores_from_confusion(confusion.compute()), truth_dir


def write_report(save, split, result, config, layout):
    """easy/hard lists and the summary; returns the summary (a dict) and the ground-truth scores."""
    records, names = result["records"], result["names"]
    files = report_names(save, split)
    easy, hard = rank_by_entropy(records)
    for key, rows in (("easy", easy), ("hard", hard)):
        atomic_write_text(files[key], "".join(f"{name} {value}\n" for name, value in rows))

    balanced = result.get("class_balanced")
    counts = np.array(balanced["class_pixels"]) if balanced else class_pixels(records, config.network.num_classes)
    names_of_classes = class_names(config.network.num_classes)
    share = counts / max(1, counts.sum())
    scores, truth_note = ground_truth_scores(save, split, names, layout, config.network.num_classes,
                                             config.prediction.num_workers,
                                             config.target.resize_backend)
    summary = {
        "split": split, "images": len(names), "input_size": "x".join(map(str, config.network.input_size)),
        "resize_backend": config.target.resize_backend,
        "restore_from": config.restore_from, "provider_output": result["provider_output"],
        "flip": config.labelling.flip, "scales": scales_of(config.labelling),
        "complementary_below": config.labelling.complementary_below,
        "easy": len(easy), "hard": len(hard),
        "median_entropy": float(hard[0][1]) if hard else None,
        "class_pixel_share": {n: round(float(s), 6) for n, s in zip(names_of_classes, share)},
        **({"class_balanced_share": config.labelling.class_balanced_share,
            "class_thresholds": {n: round(t, 6) for n, t in zip(names_of_classes, balanced["thresholds"])}}
           if balanced else {}),
        "ground_truth": None,
    }
    if scores is not None:
        summary["ground_truth"] = {
            "label_root": truth_note, "compared_at": "ground-truth resolution (pseudo-labels upsampled, nearest)",
            "iou": {n: json_number(v, 4) for n, v in zip(names_of_classes, scores["per_class"])},
            **{key: json_number(scores[key], 4) for key in MEAN_KEYS},  # miou, miou16, miou13, miou13_published
        }
    atomic_write_text(files["summary"], json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary, scores, truth_note
