"""Tests for utils/metrics.py: agreement with the official Cityscapes evaluator, the ignore label,
accumulation, the 16/13-class means (standard and the published code's), the CSV record and the sum across processes."""
import copy
import csv
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.cli import UserError
from utils.io import write_png
from utils.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from utils.metrics import ConfusionMatrix, append_record, format_table, iou_per_class, scores_from_confusion


def _official_tables():
    """Train id -> label id, and the label ids the official evaluator ignores."""
    from cityscapesscripts.helpers.labels import labels
    train_to_label = np.zeros(256, np.uint8)
    for label in labels:
        if 0 <= label.trainId < NUM_CLASSES:
            train_to_label[label.trainId] = label.id
    void_ids = [l.id for l in labels if l.ignoreInEval and l.id >= 0]
    return train_to_label, np.array(void_ids, np.uint8)


def _random_pairs(rng, count=3, size=(16, 24)):
    """Predictions and ground truths (train ids) where classes 9 and 16 appear nowhere, class 14
    only in the ground truth, class 15 only in the prediction, with some ignored pixels."""
    preds, targets = [], []
    present = [c for c in range(NUM_CLASSES) if c not in (9, 14, 15, 16)]
    for _ in range(count):
        target = rng.choice(present, size=size).astype(np.uint8)
        pred = np.where(rng.random(size) < 0.6, target, rng.choice(present, size=size)).astype(np.uint8)
        target[rng.random(size) < 0.05] = 14
        pred[rng.random(size) < 0.05] = 15
        target[rng.random(size) < 0.15] = IGNORE_INDEX
        preds.append(pred)
        targets.append(target)
    return preds, targets


def _confmat(preds, targets, **kwargs):
    metric = ConfusionMatrix(**kwargs)
    for pred, target in zip(preds, targets):
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    return metric.compute()


def test_scores_match_official_cityscapes_evaluator(tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    rng = np.random.default_rng(0)
    preds, targets = _random_pairs(rng)
    train_to_label, void_ids = _official_tables()
    pred_files, gt_files = [], []
    for k, (pred, target) in enumerate(zip(preds, targets)):
        gt_label_ids = train_to_label[target]
        void = target == IGNORE_INDEX
        gt_label_ids[void] = rng.choice(void_ids, size=int(void.sum()))  # every kind of void pixel
        pred_files.append(str(tmp_path / f"pred_{k}.png"))
        gt_files.append(str(tmp_path / f"gt_{k}_gtFine_labelIds.png"))
        write_png(pred_files[-1], train_to_label[pred])
        write_png(gt_files[-1], gt_label_ids)

    args = copy.copy(official.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = False
    args.exportFile = str(tmp_path / "official.json")
    result = official.evaluateImgLists(pred_files, gt_files, args)

    scores = scores_from_confusion(_confmat(preds, targets))
    expected = [result["classScores"][name] for name in CLASS_NAMES]
    ours = [v / 100 for v in scores["per_class"]]
    for name, a, b in zip(CLASS_NAMES, ours, expected):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-6, name
    assert [math.isnan(v) for v in ours] == [c in (9, 16) for c in range(NUM_CLASSES)]
    assert ours[14] == 0 and ours[15] == 0  # present on one side only: defined, zero
    assert abs(scores["miou"] / 100 - result["averageScoreClasses"]) < 1e-6


def test_matrix_counts_pixels_like_an_explicit_loop():
    rng = np.random.default_rng(1)
    preds, targets = _random_pairs(rng, count=2, size=(5, 7))
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for pred, target in zip(preds, targets):
        for p, t in zip(pred.ravel(), target.ravel()):
            if t != IGNORE_INDEX:
                expected[t, p] += 1
    confmat = _confmat(preds, targets)
    assert confmat.dtype == torch.int64
    np.testing.assert_array_equal(confmat.numpy(), expected)


def test_ignored_pixels_are_skipped_whatever_the_prediction():
    target = torch.tensor([[0, 1, 255], [255, 255, 2]])
    pred = torch.tensor([[0, 2, 5], [18, 0, 2]])
    confmat = _confmat([pred.numpy()], [target.numpy()], num_classes=19)
    assert confmat.sum() == 3
    assert confmat[0, 0] == 1 and confmat[1, 2] == 1 and confmat[2, 2] == 1
    # A custom ignore value, and batched (N, H, W) input of another integer type.
    metric = ConfusionMatrix(num_classes=3, ignore_index=2)
    metric.update(torch.tensor([[[0, 1], [1, 1]]], dtype=torch.uint8), torch.tensor([[[0, 2], [1, 2]]], dtype=torch.int32))
    assert metric.compute().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_bad_input_raises():
    metric = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="0..2"):
        metric.update(torch.tensor([3]), torch.tensor([0]))  # would alias into row 1 otherwise
    with pytest.raises(ValueError, match="0..2"):
        metric.update(torch.tensor([0]), torch.tensor([7]))


def test_accumulation_equals_one_shot_and_reset_clears():
    rng = np.random.default_rng(2)
    preds, targets = _random_pairs(rng, count=4)
    several = _confmat(preds, targets)
    once = _confmat([np.stack(preds)], [np.stack(targets)])
    assert torch.equal(several, once)
    metric = ConfusionMatrix()
    batch = metric(torch.from_numpy(preds[0]), torch.from_numpy(targets[0]))  # forward: this batch only
    metric(torch.from_numpy(preds[1]), torch.from_numpy(targets[1]))
    assert torch.equal(batch, _confmat(preds[:1], targets[:1]))
    assert torch.equal(metric.compute(), _confmat(preds[:2], targets[:2]))
    metric.reset()
    assert metric.confmat.sum() == 0


def test_iou_and_means_by_hand():
    # Class k: 10 correct pixels and k pixels mistaken for class (k + 1) % 19, except class 18,
    # which never appears (its IoU is then 0 because class 17 leaks into it).
    confmat = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for k in range(NUM_CLASSES - 1):
        confmat[k, k] = 10
        confmat[k, (k + 1) % NUM_CLASSES] = k
    iou = iou_per_class(torch.from_numpy(confmat))
    expected = [10 / (10 + k + (k - 1 if k > 0 else 0)) for k in range(NUM_CLASSES - 1)] + [0.0]
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(iou_per_class(confmat), iou, rtol=0, atol=0)  # numpy input too

    scores = scores_from_confusion(confmat)
    by_name = dict(zip(CLASS_NAMES, np.array(expected) * 100))
    sixteen = [v for n, v in by_name.items() if n not in ("terrain", "truck", "train")]
    thirteen = [v for n, v in by_name.items() if n not in ("terrain", "truck", "train", "wall", "fence", "pole")]
    published = [v for n, v in by_name.items()
                 if n not in ("terrain", "truck", "train", "fence", "pole", "traffic light")]
    assert len(sixteen) == 16 and len(thirteen) == 13 and len(published) == 13
    assert scores["miou"] == pytest.approx(np.mean(expected) * 100, abs=1e-9)
    assert scores["miou16"] == pytest.approx(np.mean(sixteen), abs=1e-9)
    assert scores["miou13"] == pytest.approx(np.mean(thirteen), abs=1e-9)
    assert scores["miou13_published"] == pytest.approx(np.mean(published), abs=1e-9)


def _two_thirteens_confusion():
    """Every class 10 correct pixels, except: wall's 10 pixels all predicted road (wall IoU 0,
    road 10/20) and traffic light's 10 extra pixels predicted traffic sign (both 10/20).

    IoU (%): road 50, wall 0, traffic light 50, traffic sign 50, the other 15 classes 100.
    By hand: mIoU-19 = (1900 - 250) / 19; mIoU-16 leaves out terrain, truck, train (all 100):
    1350 / 16 = 84.375; standard mIoU-13 also wall 0, fence 100, pole 100: 1150 / 13 = 88.4615...;
    the published code's mIoU-13 instead fence 100, pole 100, traffic light 50: 1100 / 13 = 84.6153...
    """
    confmat = np.eye(NUM_CLASSES, dtype=np.int64) * 10
    confmat[3, 3], confmat[3, 0] = 0, 10
    confmat[6, 7] = 10
    return confmat


def test_standard_and_published_thirteen_class_means_by_hand():
    scores = scores_from_confusion(_two_thirteens_confusion())
    assert [round(v, 9) for v in scores["per_class"][:8]] == [50, 100, 100, 0, 100, 100, 50, 50]
    assert scores["miou"] == pytest.approx(1650 / 19, abs=1e-9)
    assert scores["miou16"] == pytest.approx(84.375, abs=1e-9)
    assert scores["miou13"] == pytest.approx(88.46153846153847, abs=1e-9)
    assert scores["miou13_published"] == pytest.approx(84.61538461538461, abs=1e-9)


def test_published_thirteen_is_the_sixteen_without_fence_pole_traffic_light():
    from utils.labels import MIOU13_EXCLUDED, MIOU13_PUBLISHED_EXCLUDED, MIOU16_EXCLUDED
    assert set(MIOU16_EXCLUDED) == {CLASS_NAMES.index(n) for n in ("terrain", "truck", "train")}
    assert set(MIOU13_EXCLUDED) == set(MIOU16_EXCLUDED) | {CLASS_NAMES.index(n) for n in ("wall", "fence", "pole")}
    assert set(MIOU13_PUBLISHED_EXCLUDED) == set(MIOU16_EXCLUDED) | {4, 5, 6}
    assert [CLASS_NAMES[c] for c in (4, 5, 6)] == ["fence", "pole", "traffic light"]


def test_undefined_classes_leave_the_means_and_empty_matrix_gives_nan_quietly():
    confmat = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    confmat[0, 0] = 5
    confmat[9, 9] = 5
    confmat[9, 0] = 5  # terrain: IoU 1/2; road: 5/10 = 1/2 as well
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = scores_from_confusion(confmat)
        assert scores["miou"] == pytest.approx(50.0)
        assert scores["miou16"] == pytest.approx(50.0)  # only road counts
        assert sum(not math.isnan(v) for v in scores["per_class"]) == 2
        empty = scores_from_confusion(np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    assert all(math.isnan(v) for v in empty["per_class"])
    assert math.isnan(empty["miou"]) and math.isnan(empty["miou16"]) and math.isnan(empty["miou13"])
    assert math.isnan(empty["miou13_published"])


def test_format_table_lists_every_class_and_the_means():
    confmat = np.eye(NUM_CLASSES, dtype=np.int64)
    confmat[3, 3] = 0
    table = format_table(scores_from_confusion(confmat), title="val")
    lines = table.splitlines()
    assert lines[0] == "val"
    for name in CLASS_NAMES:
        assert any(line.split("  ")[0].strip() == name for line in lines), name
    assert "traffic light" in table and "100.00" in table and "nan" in table
    assert any(line.startswith("mIoU ") and line.endswith("100.00") for line in lines)
    assert any(line.startswith("mIoU-16") for line in lines) and any(line.startswith("mIoU-13") for line in lines)


def test_format_table_shows_both_thirteen_class_means():
    lines = format_table(scores_from_confusion(_two_thirteens_confusion())).splitlines()
    means = {line[:-7].strip(): line[-7:].strip() for line in lines[-4:]}
    assert means == {"mIoU": "86.84", "mIoU-16": "84.38", "mIoU-13": "88.46", "mIoU-13 (published code)": "84.62"}


def test_csv_record_header_and_rows(tmp_path):
    path = tmp_path / "deep" / "er" / "miou.csv"
    first = scores_from_confusion(np.eye(NUM_CLASSES, dtype=np.int64))
    confmat = np.eye(NUM_CLASSES, dtype=np.int64) * 2
    confmat[0, 1] = 1
    confmat[5, 5] = 0
    second = scores_from_confusion(confmat)
    append_record(str(path), first, 10, "runs/basic/t")
    append_record(str(path), second, "test", "student.pth")
    with open(path, newline="") as f:
        rows = [r[2:] for r in csv.reader(f)]
    with open(path, newline="") as f:
        assert [r[:2] for r in csv.reader(f)] == [["step", "weights"], ["10", "runs/basic/t"], ["test", "student.pth"]]
    assert rows[0] == list(CLASS_NAMES) + ["Mean", "Mean-16", "Mean-13", "Mean-13 (published code)"]
    assert len(rows) == 3 and all(len(r) == NUM_CLASSES + 4 for r in rows)
    assert rows[1] == ["100.00"] * (NUM_CLASSES + 4)
    assert rows[2][0] == "66.67" and rows[2][1] == "66.67" and rows[2][5] == "nan"
    assert rows[2][NUM_CLASSES] == f"{second['miou']:.2f}"
    assert rows[2][NUM_CLASSES + 2] == f"{second['miou13']:.2f}"


def test_csv_record_has_the_published_thirteen_right_after_mean_13(tmp_path):
    path = tmp_path / "miou.csv"
    append_record(str(path), scores_from_confusion(_two_thirteens_confusion()), "test", "a.pth")
    with open(path, newline="") as f:
        header, row = list(csv.reader(f))
    at = header.index("Mean-13")
    assert header[at + 1] == "Mean-13 (published code)" and len(header) == at + 2 == len(row)
    assert dict(zip(header, row)) == {"step": "test", "weights": "a.pth", **{n: "100.00" for n in CLASS_NAMES}, "road": "50.00", "wall": "0.00",
                                      "traffic light": "50.00", "traffic sign": "50.00", "Mean": "86.84",
                                      "Mean-16": "84.38", "Mean-13": "88.46", "Mean-13 (published code)": "84.62"}


def test_csv_record_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="other.csv"):
        append_record(str(path), scores_from_confusion(np.eye(NUM_CLASSES, dtype=np.int64)), 1, "x")


def _distributed_worker(rank, init_file, out_dir, preds, targets):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metric = ConfusionMatrix()
        for pred, target in zip(preds[rank::2], targets[rank::2]):  # uneven shards: 2 and 1 batches
            metric.update(torch.from_numpy(pred), torch.from_numpy(target))
        torch.save({"synced": metric.compute().clone(), "local": metric.confmat.clone()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_confusion_matrix_is_summed_across_processes(tmp_path):
    rng = np.random.default_rng(3)
    preds, targets = _random_pairs(rng, count=3)
    # fork: the workers inherit the imported modules instead of importing torch again (seconds each)
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_distributed_worker, args=(str(tmp_path / "store"), str(tmp_path), preds, targets),
                       nprocs=2, start_method=start_method)
    full = _confmat(preds, targets)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in results:
        assert torch.equal(result["synced"], full)
    assert not torch.equal(results[0]["local"], full)  # each rank really saw only its shard
    assert torch.equal(results[0]["local"] + results[1]["local"], full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_confusion_matrix_on_gpu_matches_cpu():
    rng = np.random.default_rng(4)
    preds, targets = _random_pairs(rng, count=2)
    metric = ConfusionMatrix().to("cuda")
    for pred, target in zip(preds, targets):
        metric.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda())
    result = metric.compute()
    assert result.device.type == "cuda"
    assert torch.equal(result.cpu(), _confmat(preds, targets))
