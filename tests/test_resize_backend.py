"""--resize-backend reaches every place that resizes for the network: the training, evaluation and source
datasets of main.py, the target images and labels of the data-stage scripts (and their resume settings);
a bad value is a one-line error. The pixel-level comparisons with PIL and OpenCV are in test_transforms.py."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

import construct_hard_patch
import generate_pseudo_labels
import main
from datasets.source import GTA5Dataset
from datasets.pixels import to_network_input
from main import parse_args
from modules.data import SegmentationDataModule
from tests.fixtures import make_cityscapes, make_gta5, make_pseudo_labels, pil_resized_bgr, pil_resized_label
from utils.cli import run
from modules.hard_patches import MiningRun, class_pixel_counts
from modules.pseudo_labels import PseudoLabelRun, settings_of, target_dataset
from utils.config import build

INPUT = (32, 16)  # from 64x32 files


def expected_image(path, backend):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if backend == "pil":
        return pil_resized_bgr(image, INPUT)
    return cv2.resize(image, INPUT, interpolation=cv2.INTER_CUBIC)


def expected_label(label, backend):
    if backend == "pil":
        return pil_resized_label(label, INPUT)
    return cv2.resize(label, INPUT, interpolation=cv2.INTER_NEAREST)


def assert_images_resized(dataset, backend):
    for index in range(len(dataset)):
        expected = to_network_input(expected_image(dataset.samples[index][0], backend))
        assert torch.equal(dataset[index]["image"], expected)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resize")
    cityscapes = make_cityscapes(str(root / "cs"), train=2, val=2, size=(64, 32))
    path = os.path.join(cityscapes["image_root"], "train", "aachen", "aachen_000000_000019_leftImg8bit.png")
    assert not np.array_equal(expected_image(path, "pil"), expected_image(path, "cv2"))  # they can be told apart
    return {**cityscapes, "root": str(root / "cs"), "gta5": make_gta5(str(root / "gta5"), count=2),
            "pseudo": make_pseudo_labels(str(root / "pseudo"), cityscapes["label_root"])}


def flag(backend):
    """No flag stands for the default, which must be PIL."""
    return ([], "pil") if backend is None else (["--resize-backend", backend], backend)


@pytest.mark.parametrize("backend", [None, "pil", "cv2"])
def test_main_training_and_evaluation_datasets_resize_with_the_flag(data, backend):
    argv, backend = flag(backend)
    args = parse_args(["--module-name", "basic", "--image-root", data["image_root"], "--label-root", data["label_root"],
                       "--input-size", "x".join(map(str, INPUT)), *argv])
    module = SegmentationDataModule(args, "labels")
    train, evaluation = module._dataset("train"), module._dataset("eval")
    for dataset in (train, evaluation):
        assert dataset.resize_backend == backend
        assert_images_resized(dataset, backend)
    label = cv2.imread(train.samples[0][1], cv2.IMREAD_UNCHANGED)
    assert torch.equal(train[0]["label"], torch.from_numpy(expected_label(label, backend)).long())
    assert torch.equal(evaluation[0]["label"], torch.from_numpy(cv2.imread(evaluation.samples[0][1],
                                                                           cv2.IMREAD_UNCHANGED)).long())


@pytest.mark.parametrize("backend", [None, "cv2"])
def test_main_source_dataset_resizes_with_the_flag(data, backend):
    argv, backend = flag(backend)
    args = parse_args(["--module-name", "source_only", "--source-dataset", "gta5", "--source-root", data["gta5"],
                       "--input-size", "x".join(map(str, INPUT)), *argv])
    dataset = SegmentationDataModule(args, "source")._dataset("train")
    assert isinstance(dataset, GTA5Dataset) and dataset.resize_backend == backend
    image_path, label_path, _ = dataset.samples[1]
    item = dataset[1]
    assert torch.equal(item["image"], to_network_input(expected_image(image_path, backend)))
    train_ids = dataset.read_train_ids(label_path)
    assert torch.equal(item["label"], torch.from_numpy(expected_label(train_ids, backend)).long())


@pytest.mark.parametrize("script", [generate_pseudo_labels, construct_hard_patch])
@pytest.mark.parametrize("backend", [None, "cv2"])
def test_data_scripts_resize_target_images_and_labels_with_the_flag(data, script, backend):
    argv, backend = flag(backend)
    run_config = {generate_pseudo_labels: PseudoLabelRun, construct_hard_patch: MiningRun}[script]
    args = build(run_config, script.build_parser().parse_args(["--data-dir", data["root"], "--input-size",
                                                               "x".join(map(str, INPUT)), "--restore-from", "w.pth",
                                                               *argv]))
    assert settings_of(args)["resize_backend"] == backend  # a resumed run must use the same backend
    dataset = target_dataset(args)
    assert dataset.resize_backend == backend
    assert_images_resized(dataset, backend)
    # the class pixel counts behind --rare-classes auto come from labels at the input size
    folder = os.path.join(data["label_root"], "train", "aachen")
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    expected = sum(np.bincount(expected_label(cv2.imread(p, cv2.IMREAD_UNCHANGED), backend).ravel(), minlength=19)
                   for p in paths)
    assert np.array_equal(class_pixel_counts(paths, INPUT, 19, resize_backend=backend), expected)


def test_hard_patches_are_cut_from_images_resized_with_the_flag(data, tmp_path, capsys):
    # Road (0) is in every bottom cell, so every image gives patches; the pseudo-labels are full size.
    base = ["--data-dir", data["root"], "--pseudo-label-root", data["pseudo"], "--rare-classes", "0",
            "--input-size", "x".join(map(str, INPUT)), "--num-workers", "0", "--save", str(tmp_path / "patches")]
    for backend in ("pil", "cv2"):
        argv = base + ["--resize-backend", backend] + (["--overwrite"] if backend == "cv2" else [])
        with pytest.raises(SystemExit) as exit_info:
            run(construct_hard_patch.main, argv)
        assert exit_info.value.code == 0
        with open(tmp_path / "patches" / ".state" / "settings.json") as f:
            assert json.load(f)["resize_backend"] == backend
        names = sorted(os.listdir(tmp_path / "patches" / "patches"))
        assert names
        for name in names:
            stem, k = name[:-len(".png")].rsplit("_", 1)
            row, col = divmod(int(k) - 1, 4)
            path = os.path.join(data["image_root"], "train", "aachen", stem + "_leftImg8bit.png")
            image = expected_image(path, backend)
            patch = cv2.imread(str(tmp_path / "patches" / "patches" / name), cv2.IMREAD_COLOR)
            assert np.array_equal(patch, image[4 * row:4 * (row + 1), 8 * col:8 * (col + 1)])
    # results made with one backend are not resumed with the other
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(construct_hard_patch.main, base + ["--resize-backend", "pil"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [main.main, generate_pseudo_labels.main, construct_hard_patch.main])
def test_a_bad_value_is_a_one_line_error(entry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(entry, ["--resize-backend", "bicubic"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: ") and "--resize-backend" in lines[0] and "bicubic" in lines[0]
    assert "pil" in lines[0] and "cv2" in lines[0]
