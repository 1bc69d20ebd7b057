"""construct_hard_patch.py (stage 5): exact patch selection on crafted label maps, the rare-class
choices, model and pseudo-label sources giving the same bytes, resuming after a real kill, bad input.
"""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import construct_hard_patch
import generate_pseudo_labels
from tests.fixtures import make_cityscapes
from tests.test_generate_pseudo_labels import make_weights, one_thread, single_thread_env, tree  # noqa: F401
from utils.cli import UserError, run
from utils.labels import colorize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = "_gtFine_labelIds.png"
# 64x32 images cut 4x4: patches of 16x8, k = row * 4 + col + 1.


def stem(k):
    return f"aachen_{k:06d}_000019"


def crafted_labels():
    """Label maps (32x64, train ids) with rare classes placed in known cells."""
    labels = [np.zeros((32, 64), np.uint8) for _ in range(4)]
    labels[0][0:2, 0:3] = 6            # traffic light: cell 1 (3x2 px: 6 pixels)
    labels[0][10, 20] = 12             # rider: row 1, col 1 -> cell 6
    labels[1][31, 63] = 18             # bicycle on the last pixel: cell 16
    labels[1][8, 0] = 13               # car: not rare
    labels[2][:, :] = 11               # person everywhere: no rare class, no patch
    labels[2][5:9, 40:44] = 255        # ignore, across cells 3 and 7: not a class
    labels[3][16, 0] = 16              # train: cell 9 (rare for gta5, not for synthia)
    return labels


@pytest.fixture
def crafted(tmp_path):
    data = tmp_path / "cs"
    make_cityscapes(str(data), train=4, val=0, size=(64, 32))
    labels = crafted_labels()
    for k, label in enumerate(labels):
        path = tmp_path / "pseudo" / "label_ids" / "train" / "aachen" / (stem(k) + SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), label)
    return {"data": str(data), "pseudo": str(tmp_path / "pseudo"), "labels": labels}


def mine_args(data, save, *extra):
    return ["--data-dir", data, "--save", str(save), "--input-size", "64x32", "--num-workers", "0", *extra]


def run_script(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    return exit_info.value.code


def kept_patches(save):
    return sorted(os.listdir(save / "patches")) if (save / "patches").is_dir() else []


def expected_patches(labels, rare):
    kept = []
    for k, label in enumerate(labels):
        for r in range(4):
            for c in range(4):
                cell = label[8 * r:8 * (r + 1), 16 * c:16 * (c + 1)]
                if np.isin(cell, list(rare)).any():
                    kept.append(f"{stem(k)}_{4 * r + c + 1}.png")
    return sorted(kept)


def test_patch_selection_is_exact(crafted, tmp_path):
    save = tmp_path / "gta5"
    assert run_script(construct_hard_patch.main, mine_args(crafted["data"], save, "--pseudo-label-root",
                                                           crafted["pseudo"])) == 0
    names = kept_patches(save)
    assert names == expected_patches(crafted["labels"], (6, 7, 12, 16, 17, 18))
    assert names == sorted([f"{stem(0)}_1.png", f"{stem(0)}_6.png", f"{stem(1)}_16.png", f"{stem(3)}_9.png"])
    assert sorted(os.listdir(save / "labels")) == names == sorted(os.listdir(save / "color_labels"))

    image_dir = os.path.join(crafted["data"], "leftImg8bit", "train", "aachen")
    for name in names:
        k, cell = int(name.split("_")[1]), int(name[:-4].split("_")[-1])
        r, c = divmod(cell - 1, 4)
        window = (slice(8 * r, 8 * (r + 1)), slice(16 * c, 16 * (c + 1)))
        image = cv2.imread(os.path.join(image_dir, stem(k) + "_leftImg8bit.png"), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(cv2.imread(str(save / "patches" / name), cv2.IMREAD_COLOR), image[window])
        label = crafted["labels"][k][window]
        np.testing.assert_array_equal(cv2.imread(str(save / "labels" / name), cv2.IMREAD_UNCHANGED), label)
        np.testing.assert_array_equal(cv2.imread(str(save / "color_labels" / name), cv2.IMREAD_COLOR)[:, :, ::-1],
                                      colorize(label))

    summary = json.loads((save / "summary.json").read_text())
    assert summary["rare_classes"]["train_ids"] == [6, 7, 12, 16, 17, 18]
    assert summary["patches_per_rare_class"] == {"traffic light": 1, "traffic sign": 0, "rider": 1, "train": 1,
                                                 "motorcycle": 0, "bicycle": 1}
    assert (summary["images"], summary["images_with_patches"], summary["patches"]) == (4, 3, 4)


def test_rare_class_choices(crafted, tmp_path, capsys):
    save = tmp_path / "synthia"
    base = ["--pseudo-label-root", os.path.join(crafted["pseudo"], "label_ids", "train")]
    assert run_script(construct_hard_patch.main, mine_args(crafted["data"], save, *base, "--rare-classes",
                                                           "synthia")) == 0
    assert kept_patches(save) == expected_patches(crafted["labels"], (6, 7, 12, 17, 18))
    assert f"{stem(3)}_9.png" not in kept_patches(save)  # train is not a SYNTHIA rare class

    save = tmp_path / "ids"
    assert run_script(construct_hard_patch.main, mine_args(crafted["data"], save, *base, "--rare-classes",
                                                           "13,18")) == 0
    assert kept_patches(save) == expected_patches(crafted["labels"], (13, 18))

    # Pixel counts: road most, person 2048, car 1, bicycle 1, rider 1, train 1, traffic light 6;
    # auto picks the two smallest nonzero (ties by train id) and reports the absent classes.
    save = tmp_path / "auto"
    capsys.readouterr()
    assert run_script(construct_hard_patch.main, mine_args(crafted["data"], save, *base, "--rare-classes", "auto",
                                                           "--num-rare", "2")) == 0
    summary = json.loads((save / "summary.json").read_text())
    assert summary["rare_classes"]["train_ids"] == [12, 13]
    assert "traffic sign" in summary["rare_classes"]["absent"] and "road" not in summary["rare_classes"]["absent"]
    # Shares are of the labelled pixels: the 16 ignored ones do not count.
    assert summary["rare_classes"]["pixel_share"]["rider"] == pytest.approx(1 / (4 * 64 * 32 - 16), abs=1e-8)
    assert kept_patches(save) == expected_patches(crafted["labels"], (12, 13))
    out = capsys.readouterr().out
    assert "auto" in out and "12 rider" in out and "13 car" in out and "absent" in out


def test_no_patch_at_all_is_an_error_naming_the_classes(crafted, tmp_path, capsys):
    save = tmp_path / "none"
    assert run_script(construct_hard_patch.main, mine_args(crafted["data"], save, "--pseudo-label-root",
                                                           crafted["pseudo"], "--rare-classes", "3,4")) == 2
    err = capsys.readouterr().err
    assert "no patch holds a rare class (wall, fence)" in err and "--rare-classes" in err
    assert kept_patches(save) == [] and not (save / "summary.json").exists()  # smhm must not take it as finished


@pytest.mark.parametrize("extra, said", [
    (["--no-flip", "--multiscale"], "--multiscale, --no-flip tell(s) how the provider runs"),
    (["--num-rare", "3"], "--num-rare is how many classes --rare-classes auto picks"),
    (["--scales", "0.5,1"], "--scales are the scales of --multiscale")])
def test_flags_that_would_do_nothing_are_one_line(crafted, tmp_path, capsys, extra, said):
    save = tmp_path / "ignored"
    assert run_script(construct_hard_patch.main, mine_args(crafted["data"], save, "--pseudo-label-root",
                                                           crafted["pseudo"], *extra)) == 2
    assert said in capsys.readouterr().err and not save.exists()


def test_model_and_pseudo_label_sources_give_identical_patches(tmp_path):
    data = tmp_path / "cs"
    make_cityscapes(str(data), train=3, val=0, size=(128, 64))
    weights = make_weights(str(tmp_path / "w.pth"))
    model = ["--arch", "deeplabv2_tiny", "--batch-size", "2", "--accelerator", "cpu", "--devices", "1"]
    generated = tmp_path / "pseudo"
    assert run_script(generate_pseudo_labels.main, mine_args(str(data), generated, "--restore-from", weights,
                                                             *model)) == 0
    rare = ["--rare-classes", "auto", "--num-rare", "2"]
    from_labels, from_model = tmp_path / "from_labels", tmp_path / "from_model"
    assert run_script(construct_hard_patch.main, mine_args(str(data), from_labels, "--pseudo-label-root",
                                                           str(generated), *rare)) == 0
    assert run_script(construct_hard_patch.main, mine_args(str(data), from_model, "--restore-from", weights,
                                                           *model, *rare)) == 0
    patches = {k: v for k, v in tree(from_labels).items() if k.split(os.sep)[0] in ("patches", "labels", "color_labels")}
    assert 0 < len(patches) < 3 * 3 * 16
    assert {k: v for k, v in tree(from_model).items() if k in patches or k.split(os.sep)[0] in
            ("patches", "labels", "color_labels")} == patches
    a, b = (json.loads((s / "summary.json").read_text()) for s in (from_labels, from_model))
    assert a["rare_classes"] == b["rare_classes"] and a["patches_per_rare_class"] == b["patches_per_rare_class"]
    # A --save holding the user's own patches is refused before the model labels anything into it.
    mine = tmp_path / "mine"
    (mine / "patches").mkdir(parents=True)
    (mine / "patches" / "keep.png").write_bytes(b"mine")
    with pytest.raises(UserError, match=r"--save: .*patches is there, but no earlier run of this command wrote it"):
        construct_hard_patch.main(mine_args(str(data), mine, "--restore-from", weights, *model, *rare))
    assert sorted(os.listdir(mine)) == ["patches"] and (mine / "patches" / "keep.png").read_bytes() == b"mine"


def test_labels_made_again_in_place_are_not_mistaken_for_the_mined_ones(tmp_path, capsys):
    data = tmp_path / "cs"
    make_cityscapes(str(data), train=3, val=0, size=(128, 64))
    model = ["--arch", "deeplabv2_tiny", "--batch-size", "2", "--accelerator", "cpu", "--devices", "1"]
    generated, mined = tmp_path / "pseudo", tmp_path / "mined"
    every_class = ",".join(map(str, range(19)))  # the same rare classes for both label sets
    mine = mine_args(str(data), mined, "--pseudo-label-root", str(generated), "--rare-classes", every_class)
    for seed in (0, 1):  # the provider's labels, then a retrained provider's, written over them
        weights = make_weights(str(tmp_path / f"w{seed}.pth"), seed=seed)
        assert run_script(generate_pseudo_labels.main, mine_args(str(data), generated, "--restore-from", weights,
                                                                 "--overwrite", *model)) == 0
        code = run_script(construct_hard_patch.main, mine)
        if seed == 0:
            assert code == 0
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert run_script(construct_hard_patch.main, mine + ["--overwrite"]) == 0


SLOW_MINER = """
import runpy, sys, time
import modules.hard_patches as hard_patches
select_patches = hard_patches.select_patches
def slow_select_patches(*args):
    time.sleep(0.3)
    return select_patches(*args)
hard_patches.select_patches = slow_select_patches
sys.argv = ["construct_hard_patch.py"] + sys.argv[1:]
runpy.run_path("construct_hard_patch.py", run_name="__main__")
"""


def test_killed_run_resumes_to_identical_output(tmp_path, capsys):
    data = tmp_path / "cs"
    make_cityscapes(str(data), train=6, val=0, size=(64, 32))
    rng = np.random.default_rng(0)
    for k in range(6):
        label = rng.choice([0, 1, 6, 7, 12], p=[0.9, 0.07, 0.01, 0.01, 0.01], size=(32, 64)).astype(np.uint8)
        path = tmp_path / "pseudo" / "aachen" / (stem(k) + SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), label)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    argv = ["--pseudo-label-root", str(tmp_path / "pseudo")]
    assert run_script(construct_hard_patch.main, mine_args(str(data), reference, *argv)) == 0
    total = len(kept_patches(reference))

    process = subprocess.Popen([sys.executable, "-c", SLOW_MINER, *mine_args(str(data), resumed, *argv)], cwd=ROOT,
                               env=single_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if len(kept_patches(resumed)) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 3 <= len(kept_patches(resumed)) < total, "the run was not killed part-way"

    capsys.readouterr()
    assert run_script(construct_hard_patch.main, mine_args(str(data), resumed, *argv)) == 0
    assert "already done" in capsys.readouterr().out
    assert tree(resumed) == tree(reference)


@pytest.mark.parametrize("case", ["data-dir", "pseudo-root", "not-an-image", "classes", "preset", "no-source",
                                  "two-sources"])
def test_bad_input_one_line_exit_2_nothing_written(crafted, tmp_path, capsys, case):
    save = tmp_path / "out"
    data, source = crafted["data"], ["--pseudo-label-root", crafted["pseudo"]]
    extra = []
    if case == "data-dir":
        data = str(tmp_path / "nowhere")
    elif case == "pseudo-root":
        source = ["--pseudo-label-root", str(tmp_path / "no_labels")]
    elif case == "not-an-image":
        bad = os.path.join(data, "leftImg8bit", "train", "aachen", stem(2) + "_leftImg8bit.png")
        with open(bad, "wb") as f:
            f.write(b"not an image")
    elif case == "classes":
        source = ["--restore-from", make_weights(str(tmp_path / "w7.pth"), num_classes=7),
                  "--arch", "deeplabv2_tiny", "--accelerator", "cpu"]
    elif case == "preset":
        extra = ["--rare-classes", "cityscapes"]
    elif case == "no-source":
        source = []
    else:
        source += ["--restore-from", "w.pth"]
    capsys.readouterr()
    assert run_script(construct_hard_patch.main, mine_args(data, save, *source, *extra)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    expected = {"data-dir": "nowhere", "pseudo-root": "no_labels", "not-an-image": stem(2), "classes": "7 classes",
                "preset": "cityscapes", "no-source": "exactly one", "two-sources": "exactly one"}[case]
    assert expected in lines[0]
    assert not save.exists()


def test_damaged_image_stops_with_one_line(crafted, tmp_path, capsys):
    bad = os.path.join(crafted["data"], "leftImg8bit", "train", "aachen", stem(2) + "_leftImg8bit.png")
    with open(bad, "r+b") as f:
        f.truncate(60)  # a PNG signature without image data: found only when the image is read
    save = tmp_path / "out"
    capsys.readouterr()
    assert run_script(construct_hard_patch.main, mine_args(crafted["data"], save, "--pseudo-label-root",
                                                           crafted["pseudo"])) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stem(2) in errors[0] and "Traceback" not in err
    # Images before the damaged one are complete; nothing of it or after it exists.
    assert kept_patches(save) == [f"{stem(0)}_1.png", f"{stem(0)}_6.png", f"{stem(1)}_16.png"]
