"""The report of ``adapt.py``: the black box and the adapted model side by side on the same images.

Both are run on the report split's images: their label-free scores (``utils/label_free.py``) need
no label; where images have labels, each model's per-image confusion matrices give its mIoU and a
paired bootstrap 95 % interval of the difference (``utils.metrics.bootstrap_difference``). The
verdict rests on the labelled images where there are some (whether the interval of the difference
lies above 0, below 0, or spans it); without labels it says plainly that the label-free scores
cannot rank a model trained elsewhere (measured in docs/demo.md), and warns when the adapted model
predicts fewer classes than the black box. Written: ``report.json`` (by the caller), ``report.md``, ``report.png``.
"""
import glob
import os

import numpy as np
import torch

from datasets.base import TargetDataset, collate
from datasets.pixels import to_bgr_uint8
from modules.config import NetworkConfig, kept_checkpoint_score
from modules.label_map_box import label_map_paths, read_label_map
from models.networks import get_network, network_of
from modules.providers import load_provider
from utils.cli import progress
from utils.inference import upsampled_argmax
from utils.io import atomic_write_text, json_number, read_label, write_rgb_png
from utils.label_free import LabelFreeScores, label_free_logits
from utils.labels import CLASS_NAMES, NUM_CLASSES
from utils.metrics import bootstrap_difference, image_confusion, scores_from_confusion
from utils.visualize import labelled_picture

BATCH = 4
PICTURE_COUNT = 4  # images in report.png
MIN_LABELLED = 5  # fewer labelled images decide nothing: a bootstrap over one image is an interval of width 0


def black_box_network(pipeline):
    """The black box as a network (``None`` for a folder of label maps, which has no scores)."""
    a = pipeline.args
    if pipeline.black_box_kind == "labels":
        return None
    if pipeline.black_box_kind == "onnx":
        return load_provider(a.black_box, NetworkConfig(input_size=a.input_size))
    arch = a.black_box_arch or (network_of(a.black_box) or {}).get("arch", "deeplabv2_r101")
    return get_network(arch=arch, restore_from=a.black_box).eval()


def score(models, dataset, label_paths, label_maps=None):
    """Run every network of ``models`` (name -> network, or ``None`` for ``label_maps``: name -> path of
    the black box's label map) on ``dataset``; returns name -> ``{"label_free", "confusions"}`` and
    the first images with their predictions for the picture."""
    free = {name: LabelFreeScores(NUM_CLASSES) for name, net in models.items() if net is not None}
    confusions = {name: [] for name in models}
    shown = []
    for start in progress(range(0, len(dataset), BATCH), desc="report: scoring", unit="batch"):
        batch = collate([dataset[i] for i in range(start, min(start + BATCH, len(dataset)))])
        logits = {}
        with torch.no_grad():
            for name, net in models.items():
                if net is not None:
                    outputs = label_free_logits(net, batch["image"])
                    logits[name] = outputs[0]
                    free[name].update(*outputs)
        for i, item_name in enumerate(batch["name"]):
            label = read_label(label_paths[item_name]) if label_paths.get(item_name) else None
            size = label.shape if label is not None else batch["image"].shape[-2:]
            predictions = {name: (read_label_map(label_maps[item_name], size, NUM_CLASSES) if net is None else
                                  upsampled_argmax(logits[name][i], size).numpy()) for name, net in models.items()}
            if label is not None:
                for name, prediction in predictions.items():
                    confusions[name].append(image_confusion(prediction, label, NUM_CLASSES))
            if len(shown) < PICTURE_COUNT:
                shown.append((to_bgr_uint8(batch["image"][i])[:, :, ::-1], label, predictions))
    return {name: {"label_free": {k: float(v) for k, v in free[name].compute().items()} if name in free else None,
                   "confusions": np.array(confusions[name]) if confusions[name] else None}
            for name in models}, shown



def baseline_score(pipeline):
    """The ``--select-by`` score of the baseline's kept checkpoint, which round 1 starts from, read from
    its file name (``RunConfig.evaluation.monitor``: the rounds' criterion, on the same val split);
    ``None`` for ``last``, which has no score."""
    if pipeline.args.select_by == "last":
        return None
    names = glob.glob(os.path.join(glob.escape(os.path.join(pipeline.runs, "baseline", "baseline")), "checkpoint-*"))
    scores = [score for score in map(kept_checkpoint_score, map(os.path.basename, names)) if score is not None]
    return max(scores, default=None)


def summary(result):
    """What the report says of one model: label-free scores and, with labels, mIoU and per-class IoU."""
    entry = {"label_free": result["label_free"]}
    if result["confusions"] is not None:
        scores = scores_from_confusion(result["confusions"].sum(0))
        entry.update(miou=json_number(scores["miou"], 2), labelled_images=len(result["confusions"]),
                     per_class={n: json_number(v, 2) for n, v in zip(CLASS_NAMES, scores["per_class"])})
    return entry


def verdict(report):
    """Plain sentences: did adaptation help? Labelled images decide (the interval of the difference);
    without them the report says what the label-free scores can and cannot tell."""
    black, adapted = report["black_box"], report["adapted"]
    if "difference_ci95" in report:
        low, high = report["difference_ci95"]
        count = adapted["labelled_images"]
        numbers = (f"on {count} labelled images mIoU {adapted['miou']:.2f} % against the black box's "
                   f"{black['miou']:.2f} % (difference {report['difference']:+.2f} points, 95 % interval {low:+.2f} "
                   f"to {high:+.2f})")
        if count < MIN_LABELLED:
            return (f"TOO FEW LABELLED IMAGES TO TELL: {numbers}; {count} image(s) cannot show a difference to be "
                    f"more than chance: label at least {MIN_LABELLED}.")
        if low > 0:
            return f"ADAPTATION HELPED: {numbers}."
        if high < 0:
            return f"ADAPTATION DID NOT HELP: {numbers}; keep using the black box."
        return f"NO CLEAR DIFFERENCE: {numbers}; the interval spans 0: label more images to tell."
    said = ("WITHOUT LABELS THIS REPORT CANNOT SAY WHETHER THE ADAPTED MODEL BEATS THE BLACK BOX: the label-free "
            "scores choose well among the checkpoints of one adaptation, but rate a model trained elsewhere "
            "unreliably (docs/demo.md); label a handful of images and give them as --labels to know.")
    if black["label_free"] is not None and adapted["label_free"]["diversity"] < black["label_free"]["diversity"]:
        said += (f" Warning: the adapted model spreads its predictions over fewer classes than the black box "
                 f"(diversity {adapted['label_free']['diversity']:.3f} against {black['label_free']['diversity']:.3f}): "
                 "small classes may have been lost.")
    return said


def write_report(pipeline, student, rounds, onnx):
    """Score black box and adapted model, write ``report.md`` and ``report.png``; returns the report."""
    a = pipeline.args
    target = pipeline.make_target()
    split = pipeline.report_split
    dataset = TargetDataset(target, split, input_size=a.input_size, labels=False)
    label_paths = pipeline.label_paths(split)
    label_maps = None
    if pipeline.black_box_kind == "labels":
        label_maps = label_map_paths(a.black_box, dataset.names, split, target.pseudo_label_suffix, "--black-box")
    adapted = get_network(arch=a.student, restore_from=student).eval()
    results, shown = score({"black_box": black_box_network(pipeline), "adapted": adapted}, dataset, label_paths,
                           label_maps)
    report = {"black_box": summary(results["black_box"]), "adapted": summary(results["adapted"]),
              "selected_by": a.select_by, "split": split, "images": len(dataset),
              "baseline_score": baseline_score(pipeline), "round_guard": a.round_guard,
              "rounds": [{"round": r["round"], "score": r["best_score"], "kept": r["kept"]} for r in rounds],
              "files": {"student": student, "onnx": onnx}}
    if results["adapted"]["confusions"] is not None:
        adapted_c, black_c = results["adapted"]["confusions"], results["black_box"]["confusions"]
        report["difference"] = json_number(scores_from_confusion(adapted_c.sum(0))["miou"]
                                           - scores_from_confusion(black_c.sum(0))["miou"], 2)
        report["difference_ci95"] = list(bootstrap_difference(adapted_c, black_c))
    report["verdict"] = verdict(report)
    picture = os.path.join(pipeline.out, "report.png")
    labelled = all(label is not None for _, label, _ in shown)  # a ground-truth column only if every row has one
    rows = [(image, ([label] if labelled else []) + [p["black_box"], p["adapted"]]) for image, label, p in shown]
    titles = ["image"] + (["ground truth"] if labelled else []) + ["black box", "adapted"]
    write_rgb_png(picture, labelled_picture(rows, titles))
    atomic_write_text(os.path.join(pipeline.out, "report.md"), markdown(report, picture))
    return report


def markdown(report, picture):
    lines = ["# Adaptation report", "", report["verdict"], "",
             f"Scored on {report['images']} images of the {report['split']!r} split. Label-free scores need no "
             "label (higher is better): flip = agreement of a prediction with that of the mirrored image; "
             "mix = agreement on a mix of four images with the mix of their predictions; confidence and "
             "diversity of the predictions; im = diversity − uncertainty; flip_im and mix_im, means. "
             f"{report['selected_by']} kept the checkpoints here.", "",
             "| model | " + " | ".join(report["adapted"]["label_free"]) + " | mIoU (%) |",
             "|---|" + "---|" * (len(report["adapted"]["label_free"]) + 1)]
    for name in ("black_box", "adapted"):
        entry = report[name]
        free = entry["label_free"] or {}
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(
            f"{free[k]:.4f}" if k in free else "—" for k in report["adapted"]["label_free"])
            + (f" | {entry['miou']:.2f} |" if entry.get("miou") is not None else " | — |"))
    if "difference_ci95" in report:
        low, high = report["difference_ci95"]
        lines += ["", f"mIoU difference (adapted − black box), 95 % bootstrap interval over the labelled images: "
                      f"{low:+.2f} to {high:+.2f} points."]
    if report["selected_by"] == "last":
        rule = "Rounds, each kept at its last checkpoint (--select-by last has no score), every one kept:"
    else:
        rule = (f"Rounds, by their best {report['selected_by']} on the val split's images. " + (
            "The first round is kept whatever its score against the baseline's (trained on hard pseudo-labels, "
            "the baseline is rated unreliably against it); a later round not above the round before is not kept "
            "and ends them:" if report["round_guard"] else "Every round is kept (--no-round-guard):"))
    lines += ["", rule, "", "| stage | score | kept |", "|---|---|---|"]
    if report["baseline_score"] is not None:
        lines.append(f"| baseline (the start) | {report['baseline_score']:.4f} | — |")
    lines += [f"| round {r['round']} | {'—' if report['selected_by'] == 'last' else format(r['score'], '.4f')} | "
              f"{'yes' if r['kept'] else 'no'} |" for r in report["rounds"]]
    lines += ["", f"![image, black box, adapted]({os.path.basename(picture)})", "",
              f"Files: `{report['files']['student']}` (weights), `{report['files']['onnx']}` (ONNX: RGB 0..255 "
              "images of any size in, resized inside to the training size; logits at the image's own size out).", ""]
    return "\n".join(lines)
