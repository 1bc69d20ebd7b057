"""tools/rank_label_maps.py (modules/label_maps.py): the easy/hard split of label maps made elsewhere,
from the service's confidence maps. The ranking on crafted maps (8-bit, 16-bit, float TIFF), ignore
pixels left out, one line and nothing written for each mistake, and the folder still read as it is by
the stages after the lists were written."""
import os

import cv2
import numpy as np
import pytest

import construct_hard_patch
from datasets.base import TargetDataset
from datasets.cityscapes import Cityscapes
from modules.stage_output import check_pseudo_labels_finished
from tests.fixtures import make_cityscapes
from tools import rank_label_maps
from utils.cli import run

SUFFIX = "_gtFine_labelIds.png"
SIZE = (16, 8)  # width, height
# name -> confidence of the labelled pixels (the ignored band has confidence 0)
CONFIDENCE = {"aachen/b_sure": 0.9, "aachen/c_mid": 0.6, "bremen/a_masked": 1.0, "bremen/d_unsure": 0.3,
              "bremen/e_lost": 0.05}


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array)


def encode(confidence, kind):
    """A confidence map of ``kind`` (png8, png16, tif32) and what it stands for after quantisation."""
    if kind == "tif32":
        return confidence.astype(np.float32), confidence.astype(np.float32).astype(np.float64)
    full = 255 if kind == "png8" else 65535
    stored = np.round(confidence * full).astype(np.uint8 if kind == "png8" else np.uint16)
    return stored, stored / full


def make_service(root, kind="png8"):
    """Label maps (a band of ignore in every one but ``a_masked`` has 2 rows of it) and confidence
    maps; returns the label folder, the confidence folder and the expected mean uncertainties."""
    labels, confidences = os.path.join(root, "labels"), os.path.join(root, "confidence")
    ending = ".tif" if kind == "tif32" else ".png"
    expected = {}
    for name, value in CONFIDENCE.items():
        label = np.full(SIZE[::-1], 3, np.uint8)
        label[:, :4] = 13
        label[:2] = 255  # ignored: its confidence 0 must not count
        confidence = np.full(SIZE[::-1], value)
        confidence[:2] = 0.0
        stored, meant = encode(confidence, kind)
        _write(os.path.join(labels, name + SUFFIX), label)
        _write(os.path.join(confidences, name + SUFFIX[:-len(".png")] + ending), stored)
        expected[name] = 1.0 - meant[2:].mean()
    return labels, confidences, expected


def rank(argv):
    with pytest.raises(SystemExit) as exit_info:
        run(rank_label_maps.main, ["--num-workers", "0", *argv])
    return exit_info.value.code


def read_list(path):
    rows = [line.split(" ") for line in open(path).read().splitlines()]
    return [(name, float(value)) for name, value in rows]


@pytest.mark.parametrize("kind", ["png8", "png16", "tif32"])
def test_ranking_by_mean_uncertainty_over_labelled_pixels(tmp_path, capsys, kind):
    labels, confidences, expected = make_service(str(tmp_path), kind)
    assert rank(["--pseudo-label-root", labels, "--confidence-root", confidences]) == 0
    easy, hard = read_list(os.path.join(labels, "easy.txt")), read_list(os.path.join(labels, "hard.txt"))
    # a_masked is sure of every labelled pixel: first only because its ignored band is left out
    assert [name for name, _ in easy] == ["bremen/a_masked", "aachen/b_sure"]
    assert [name for name, _ in hard] == ["aachen/c_mid", "bremen/d_unsure", "bremen/e_lost"]
    assert easy[0][1] == 0.0
    for name, value in easy + hard:
        assert value == pytest.approx(expected[name], abs=1e-12)
    # the two lists and nothing else: no state, no summary of generate_pseudo_labels.py
    assert sorted(os.listdir(labels)) == ["aachen", "bremen", "easy.txt", "hard.txt"]
    out = capsys.readouterr().out
    assert "ranked 5 label maps" in out and "easy: 2, hard: 3" in out


def test_other_split_and_save_folder_and_skipped_files(tmp_path, capsys):
    labels, confidences, _ = make_service(str(tmp_path))
    run_folder = tmp_path / "run" / "label_ids" / "val"
    os.makedirs(run_folder.parent)
    os.rename(labels, run_folder)
    _write(str(run_folder / "aachen" / "b_sure_color.png"), np.zeros((8, 16, 3), np.uint8))  # not a label
    assert rank(["--pseudo-label-root", str(tmp_path / "run"), "--confidence-root", confidences, "--split", "val"]) == 0
    # where generate_pseudo_labels.py puts the lists of split val: the run folder, *_val.txt
    assert sorted(f for f in os.listdir(tmp_path / "run") if f.endswith(".txt")) == ["easy_val.txt", "hard_val.txt"]
    assert "left out 1 PNG files" in capsys.readouterr().out
    save = tmp_path / "lists"
    assert rank(["--pseudo-label-root", str(run_folder), "--confidence-root", confidences, "--split", "val",
                 "--save", str(save)]) == 0
    assert (save / "easy_val.txt").read_text() == (tmp_path / "run" / "easy_val.txt").read_text()


def _missing(labels, confidences):
    os.remove(os.path.join(confidences, "bremen", "d_unsure" + SUFFIX))


def _other_size(labels, confidences):
    _write(os.path.join(confidences, "bremen", "d_unsure" + SUFFIX), np.zeros((8, 15), np.uint8))


def _colour(labels, confidences):
    _write(os.path.join(confidences, "bremen", "d_unsure" + SUFFIX), np.zeros((8, 16, 3), np.uint8))


def _unreadable(labels, confidences):
    path = os.path.join(confidences, "bremen", "d_unsure" + SUFFIX)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def _not_an_image(labels, confidences):
    open(os.path.join(confidences, "bremen", "d_unsure" + SUFFIX), "wb").write(b"not a picture")


def _empty_label_folder(labels, confidences):
    for dirpath, _, files in os.walk(labels):
        for f in files:
            os.remove(os.path.join(dirpath, f))


def _generated_folder(labels, confidences):
    os.makedirs(os.path.join(labels, ".state", "train"))  # what generate_pseudo_labels.py leaves


def _confidence_inside_labels(labels, confidences):
    os.rename(confidences, os.path.join(labels, "confidence"))


@pytest.mark.parametrize("case, message", [
    (_missing, "confidence map not found"),
    (_other_size, "does not match its label"),
    (_colour, "not grey"),
    (_unreadable, "cannot read confidence map"),
    (_not_an_image, "cannot read confidence map"),
    (_empty_label_folder, "no pseudo-labels in"),
    (_generated_folder, "output of generate_pseudo_labels.py"),
    (_confidence_inside_labels, "must be apart"),
])
def test_mistakes_are_one_line_and_write_nothing(tmp_path, capfd, case, message):
    labels, confidences, _ = make_service(str(tmp_path))
    case(labels, confidences)
    if case is _confidence_inside_labels:
        confidences = os.path.join(labels, "confidence")
    before = sorted(os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files)
    assert rank(["--pseudo-label-root", labels, "--confidence-root", confidences]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], err
    assert sorted(os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files) == before


def test_every_flag_is_explained():
    parser = rank_label_maps.build_parser()
    assert all(action.help for action in parser._actions)


def test_stages_still_take_the_folder_after_the_lists_are_written(tmp_path, capsys):
    data = make_cityscapes(str(tmp_path / "cs"), train=3, val=1, size=(32, 16))
    labels = os.path.join(data["label_root"], "train")  # the ground truth stands for a service's labels
    confidences = str(tmp_path / "confidence")
    for city in os.listdir(labels):
        for file_name in os.listdir(os.path.join(labels, city)):
            _write(os.path.join(confidences, city, file_name), np.full((16, 32), 40000, np.uint16))
    assert rank(["--pseudo-label-root", labels, "--confidence-root", confidences]) == 0
    assert os.path.isfile(os.path.join(labels, "easy.txt"))
    check_pseudo_labels_finished(labels, "train")  # what baseline and mining ask first
    dataset = TargetDataset(Cityscapes(image_root=data["image_root"]), "train", input_size=(32, 16),
                            pseudo_label_root=labels)
    assert len(dataset) == 3 and dataset[0]["label"].shape == (16, 32)
    lists = tmp_path / "lists"  # none: the image folder is scanned
    lists.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run(construct_hard_patch.main, ["--image-root", data["image_root"], "--list-root", str(lists),
                                        "--pseudo-label-root", labels,
                                        "--input-size", "32x16", "--num-workers", "0", "--rare-classes", "auto",
                                        "--num-rare", "3", "--save", str(tmp_path / "patches")])
    assert exit_info.value.code == 0 and os.path.isfile(tmp_path / "patches" / "summary.json")
