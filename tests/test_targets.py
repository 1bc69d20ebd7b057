"""Targets beyond Cityscapes (``--target-dataset acdc|darkzurich|folder``): every stage end to end
through the entry points' real ``main``, outputs mirroring the images, ACDC scored per condition
(a value checked by hand), and the bad inputs: one line naming the path or flag, nothing written."""
import csv
import logging
import os

import cv2
import numpy as np
import pytest
import torch

import construct_hard_patch
import generate_pseudo_labels
import main as main_script
from models.deeplabv2 import get_deeplabv2
from utils.cli import UserError
from tests.fixtures import assert_one_line_refusal, make_acdc, make_darkzurich, make_image_folder, run_refused, tiny_weights

COMMON = ["--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu",
          "--devices", "1"]
ENTRY_POINTS = {"main.py": main_script.main, "generate_pseudo_labels.py": generate_pseudo_labels.main,
                "construct_hard_patch.py": construct_hard_patch.main}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(str(tmp_path_factory.mktemp("weights") / "w.pth"))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    make_acdc(str(root / "acdc"))
    make_darkzurich(str(root / "dz"))
    make_image_folder(str(root / "mine"), str(root / "mine_labels"))
    return {
        "acdc": ["--target-dataset", "acdc", "--data-dir", str(root / "acdc")],
        "darkzurich": ["--target-dataset", "darkzurich", "--data-dir", str(root / "dz")],
        "folder": ["--target-dataset", "folder", "--data-dir", str(root / "mine")],
        "folder_labels": ["--label-dir", str(root / "mine_labels")],
    }


def refused(capsys, entry, argv):
    return run_refused(capsys, ENTRY_POINTS[entry], argv)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                  for d, _, files in os.walk(folder) for f in files)


# The pseudo-labels (and predictions) of each target mirror its images' paths inside the split.
EXPECTED_TRAIN = {
    "acdc": [f"{c}/GOPR{i:02d}0{i}/GOPR{i:02d}0{i}_frame_000000_rgb_anon.png"
             for i, c in enumerate(("fog", "night", "rain", "snow"))],
    "darkzurich": [f"{t}/GOPR03{i}0/GOPR03{i}0_frame_000000_rgb_anon.png"
                   for i, t in sorted(enumerate(("day", "twilight", "night")), key=lambda p: p[1])],
    "folder": ["park/0001.png", "park/deep/0003.png", "street/0001.png", "street/0002.png"],
}
EXPECTED_VAL = {
    "acdc": [f"{c}/GOPR{i:02d}5{i}/GOPR{i:02d}5{i}_frame_00000{0}_rgb_anon.png"
             for i, c in enumerate(("fog", "night", "rain", "snow"))],
    "darkzurich": [f"night/GOPR0305/GOPR0305_frame_00000{k}_rgb_anon.png" for k in range(2)],
    "folder": EXPECTED_TRAIN["folder"],
}


@pytest.mark.parametrize("target", ["acdc", "darkzurich", "folder"])
def test_every_stage_on_the_target(worlds, weights, tmp_path, target, capsys):
    data = worlds[target]
    labels = worlds["folder_labels"] if target == "folder" else []
    pseudo, patches, exp = tmp_path / "pseudo", tmp_path / "patches", tmp_path / "exp"

    assert generate_pseudo_labels.main([*data, *labels, *COMMON, "--restore-from", weights, "--save", str(pseudo),
                                        "--batch-size", "2"]) == 0
    assert files_under(pseudo / "label_ids" / "train") == EXPECTED_TRAIN[target]
    scored = capsys.readouterr().out
    # Ground truth of the training images exists for ACDC and for the folder's labels, not for Dark Zurich's.
    assert ("pseudo-labels against" in scored) == (target != "darkzurich"), scored

    assert construct_hard_patch.main([*data, *COMMON, "--pseudo-label-root", str(pseudo), "--save", str(patches),
                                      "--rare-classes", "auto", "--grid", "2x2"]) == 0
    patch_files = os.listdir(patches / "patches")
    assert patch_files and len(set(patch_files)) == len(patch_files)
    if target == "folder":  # two images share the stem 0001: every patch keeps its folders in its name
        assert all("__" in name for name in patch_files), patch_files

    run_flags = [*data, *labels, *COMMON, "--log-tb-dir", str(exp), "--train-batch-size", "2", "--val-batch-size", "2"]
    result = main_script.main(["--module-name", "baseline", "--pseudo-label-root", str(pseudo), "--max-steps", "2",
                               "--val-interval", "2", *run_flags])
    assert result["best_checkpoint"] and os.path.isfile(result["best_checkpoint"])

    predictions = tmp_path / "predictions"
    scores = main_script.main(["--mode", "test", "--restore-from", result["best_checkpoint"],
                               "--save-predictions", str(predictions), *run_flags])
    assert 0 <= scores["miou"] <= 100 and len(scores["per_class"]) == 19
    assert files_under(predictions / "train_ids") == EXPECTED_VAL[target]
    assert ("conditions" in scores) == (target == "acdc")
    if target == "acdc":
        assert sorted(scores["conditions"]) == ["fog", "night", "rain", "snow"]
        assert os.path.isfile(exp / "basic" / "none" / "miou_record_fog.csv")
    if target == "folder":  # evaluated at each label's own resolution, also the 96x48 one
        park = cv2.imread(str(predictions / "train_ids" / "park" / "0001.png"), cv2.IMREAD_UNCHANGED)
        assert park.shape == (48, 96)

    if target == "acdc":  # self-distillation with the hard patches, one step
        main_script.main(["--module-name", "smhm", "--restore-from", weights, "--hard-patches-root", str(patches),
                          "--max-steps", "1", "--val-interval", "1", "--experiment-name", "smhm", *run_flags])


def constant_road_weights(path):
    """A network that predicts road (train id 0) at every pixel: head weights 0, road's bias high."""
    net = get_deeplabv2(arch="deeplabv2_tiny")
    with torch.no_grad():
        for conv in net.layer5.conv2d_list:
            conv.weight.zero_()
            conv.bias.zero_()
        net.layer5.conv2d_list[0].bias[0] = 10.0
    torch.save(net.state_dict(), path)
    return path


def test_acdc_is_scored_per_condition(tmp_path, caplog):
    """Road everywhere against: fog at 128x64, half road and half sky -> road IoU 1/2, sky 0, mIoU 25;
    night at 64x32, road but an ignored first row -> mIoU 100; the whole split (one matrix):
    road (4096 + 1984) / (8192 + 1984), sky 0 -> mIoU 29.87."""
    root = tmp_path / "acdc"
    val = make_acdc(str(root), conditions=("fog", "night"), train=0, val=1)
    fog, night = sorted(val.items())
    fog_label = np.zeros((64, 128), np.uint8)
    fog_label[:, 64:] = 10
    night_label = np.zeros((32, 64), np.uint8)
    night_label[0] = 255
    cv2.imwrite(fog[1], fog_label)
    cv2.imwrite(night[1], night_label)
    fog_image = fog[1].replace("/gt/", "/rgb_anon/").replace("_gt_labelTrainIds.png", "_rgb_anon.png")
    cv2.imwrite(fog_image, np.full((64, 128, 3), 100, np.uint8))
    weights = constant_road_weights(str(tmp_path / "road.pth"))
    exp = tmp_path / "exp"
    caplog.set_level(logging.INFO, logger="pytorch_lightning")  # the table is logged (another test may quiet it)

    scores = main_script.main(["--mode", "test", "--target-dataset", "acdc", "--data-dir", str(root),
                               "--conditions", "fog,night", "--restore-from", weights, "--log-tb-dir", str(exp),
                               "--test-batch-size", "2", *COMMON])
    road = 100 * (4096 + 1984) / (8192 + 1984)
    assert scores["per_class"][0] == pytest.approx(road) and scores["per_class"][10] == 0
    assert scores["miou"] == pytest.approx(road / 2)
    assert scores["conditions"]["fog"]["miou"] == pytest.approx(25.0)
    assert scores["conditions"]["fog"]["per_class"][0] == pytest.approx(50.0)
    assert scores["conditions"]["night"]["miou"] == pytest.approx(100.0)
    assert "per condition" in caplog.text and "fog          25.00" in caplog.text  # after the table

    folder = exp / "basic" / "none"
    records = {}
    for name in ("miou_record.csv", "miou_record_fog.csv", "miou_record_night.csv"):
        with open(folder / name, newline="") as f:
            rows = list(csv.reader(f))
        records[name] = dict(zip(rows[0], rows[1]))
    assert records["miou_record.csv"]["Mean"] == f"{road / 2:.2f}" == "29.87"
    assert records["miou_record_fog.csv"]["Mean"] == "25.00" and records["miou_record_fog.csv"]["road"] == "50.00"
    assert records["miou_record_night.csv"]["Mean"] == "100.00"
    assert list(records["miou_record_fog.csv"]) == list(records["miou_record.csv"])  # one record format


# -- bad input: one line naming the path or flag, exit 2, nothing written ------------------------------------

@pytest.fixture
def acdc(tmp_path):
    root = tmp_path / "acdc"
    return root, make_acdc(str(root), conditions=("fog", "night"), train=2, val=1)


def main_test(root, weights, out, *extra):
    return ["--mode", "test", "--target-dataset", "acdc", "--data-dir", root, "--restore-from", weights,
            "--log-tb-dir", out, *COMMON, *extra]


def test_a_missing_condition_folder(acdc, weights, tmp_path, capsys):
    root, _ = acdc
    out = str(tmp_path / "out")
    # The default is every condition; this download lacks rain and snow.
    code, err = refused(capsys, "main.py", main_test(root, weights, out))
    assert_one_line_refusal(code, err, str(root / "rgb_anon" / "rain"), out)
    assert "this root has fog,night: pass --conditions fog,night" in err  # what to type instead
    save = str(tmp_path / "save")
    code, err = refused(capsys, "generate_pseudo_labels.py", ["--target-dataset", "acdc", "--data-dir", root,
                                                              "--restore-from", weights, "--save", save, *COMMON])
    assert_one_line_refusal(code, err, str(root / "rgb_anon" / "rain"), save)
    code, err = refused(capsys, "construct_hard_patch.py", ["--target-dataset", "acdc", "--data-dir", root,
                                                            "--conditions", "fog,snow", "--restore-from", weights,
                                                            "--save", save, *COMMON])
    assert_one_line_refusal(code, err, str(root / "rgb_anon" / "snow"), save)


def test_an_image_without_its_label(acdc, weights, tmp_path, capsys):
    root, val = acdc
    victim = val["night/GOPR0151/GOPR0151_frame_000000_rgb_anon"]
    os.remove(victim)
    out = str(tmp_path / "out")
    code, err = refused(capsys, "main.py", main_test(root, weights, out, "--conditions", "fog,night"))
    assert_one_line_refusal(code, err, victim, out)


def test_a_label_of_another_size(acdc, weights, tmp_path, capsys):
    root, val = acdc
    victim = val["fog/GOPR0050/GOPR0050_frame_000000_rgb_anon"]
    cv2.imwrite(victim, np.zeros((30, 60), np.uint8))
    out, predictions = str(tmp_path / "out"), str(tmp_path / "predictions")
    code, err = refused(capsys, "main.py", main_test(root, weights, out, "--conditions", "fog,night",
                                                     "--save-predictions", predictions))
    assert_one_line_refusal(code, err, victim, out)
    assert "60x30" in err and not os.path.exists(predictions)
    # The pseudo-labels' quality report scores against the training labels: checked before labelling.
    train_label = str(root / "gt" / "fog" / "train" / "GOPR0000" / "GOPR0000_frame_000001_gt_labelTrainIds.png")
    assert os.path.isfile(train_label)
    cv2.imwrite(train_label, np.zeros((30, 60), np.uint8))
    save = str(tmp_path / "save")
    code, err = refused(capsys, "generate_pseudo_labels.py", ["--target-dataset", "acdc", "--data-dir", root,
                                                              "--conditions", "fog,night", "--restore-from", weights,
                                                              "--save", save, *COMMON])
    assert_one_line_refusal(code, err, train_label, save)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_an_unknown_dataset_name(weights, tmp_path, capsys, entry):
    out = str(tmp_path / "out")
    argv = ["--target-dataset", "kitti", "--restore-from", weights, *COMMON]
    argv += ["--log-tb-dir", out] if entry == "main.py" else ["--save", out]
    code, err = refused(capsys, entry, argv)
    assert_one_line_refusal(code, err, "--target-dataset", out)
    assert "'kitti'" in err


@pytest.mark.parametrize("flags, names", [
    (["--target-dataset", "acdc", "--conditions", "sun"], "--conditions: 'sun'"),
    (["--target-dataset", "cityscapes", "--conditions", "fog"], "--conditions"),
    (["--target-dataset", "acdc", "--conditions", "fog,fog"], "--conditions"),
    (["--target-dataset", "folder"], "--data-dir"),
])
def test_target_flags_that_do_not_fit(weights, tmp_path, capsys, flags, names):
    out = str(tmp_path / "out")
    for entry in ("main.py", "generate_pseudo_labels.py"):
        argv = [*flags, "--restore-from", weights, *COMMON]
        argv += ["--log-tb-dir", out] if entry == "main.py" else ["--save", out]
        code, err = refused(capsys, entry, argv)
        assert_one_line_refusal(code, err, names, out)


def test_a_folder_target_without_labels_is_scored_label_free(worlds, weights, tmp_path):
    """No labels, no refusal: test mode scores the images by the label-free scores alone, and writes
    no mIoU record (there is nothing to compare with)."""
    out = tmp_path / "out"
    scores = main_script.main([*worlds["folder"], "--mode", "test", "--restore-from", weights, "--log-tb-dir",
                               str(out), "--experiment-name", "x", *COMMON])
    assert "miou" not in scores and set(scores["label_free"]) == {"flip_im", "mix_im", "flip", "mix", "im", "diversity", "confidence"}
    assert all(-1 <= v <= 1 for v in scores["label_free"].values())
    folder = out / "basic" / "x"
    assert (folder / "label_free_record.csv").is_file() and not (folder / "miou_record.csv").exists()
    # Asked to select with labels it does not have, a training run is refused in one line.
    with pytest.raises(UserError, match="--select-by val-miou needs labels"):
        main_script.main([*worlds["folder"], "--module-name", "basic", "--select-by", "val-miou", "--log-tb-dir",
                          str(out), *COMMON])
