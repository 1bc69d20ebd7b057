"""Every stage on each target layout the synthetic benchmark writes (``tools/synthetic.py --target``:
ACDC with fog and night, Dark Zurich with day, twilight and night, a folder of PNG and JPEG images),
through the entry points' real ``main`` and the flags ``target_args`` gives: pseudo-labels, hard
patches, baseline, smhm, test mode (ACDC scored per condition) and predict mode, every output
mirroring the images. Tiny: 64x32 images, a few of them, a tiny network, one or two steps."""
import math
import os

import pytest

import construct_hard_patch
import generate_pseudo_labels
import main as main_script
from tests.fixtures import tiny_weights
from tools.synthetic import generate_benchmark, target_args

COMMON = ["--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu",
          "--devices", "1"]
COUNTS = {"acdc": dict(num_train=4, num_val=2), "darkzurich": dict(num_train=3, num_val=2),
          "folder": dict(num_train=3, num_val=3)}
EXTENSIONS = (".png", ".jpg")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(str(tmp_path_factory.mktemp("weights") / "w.pth"))


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    roots = {}
    for target, counts in COUNTS.items():
        roots[target] = str(tmp_path_factory.mktemp(target))
        generate_benchmark(roots[target], seed=0, num_source=1, size=(64, 32), workers=0, progress=False,
                           target=target, **counts)
    return roots


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                  for d, _, files in os.walk(folder) for f in files)


def item_names(folder):
    """The images under ``folder`` as the targets name their items: the path without the extension."""
    return [os.path.splitext(p)[0] for p in files_under(folder) if p.endswith(EXTENSIONS)]


def split_images(root, target, split):
    """The item names of a split, read from the generated tree (not from the reader under test)."""
    if target == "acdc":
        images = os.path.join(root, "acdc", "rgb_anon")
        return sorted(f"{c}/{n}" for c in os.listdir(images) for n in item_names(os.path.join(images, c, split)))
    if target == "darkzurich":
        return item_names(os.path.join(root, "darkzurich", "rgb_anon", split))
    return item_names(os.path.join(root, "folder", "images", split))


def assert_scores(scores):
    assert math.isfinite(scores["miou"]) and 0 <= scores["miou"] <= 100
    assert len(scores["per_class"]) == 19
    assert all(math.isnan(v) or 0 <= v <= 100 for v in scores["per_class"])


@pytest.mark.parametrize("target", sorted(COUNTS))
def test_every_stage_on_the_generated_target(benchmarks, weights, tmp_path, target, capsys):
    root = benchmarks[target]
    data, images_only = target_args(root, target), target_args(root, target, labels=False)
    train, val = split_images(root, target, "train"), split_images(root, target, "val")
    assert len(train) == COUNTS[target]["num_train"] and len(val) == COUNTS[target]["num_val"]
    pseudo, patches, exp = tmp_path / "pseudo", tmp_path / "patches", tmp_path / "exp"

    assert generate_pseudo_labels.main([*data, *COMMON, "--restore-from", weights, "--save", str(pseudo),
                                        "--batch-size", "2"]) == 0
    assert files_under(pseudo / "label_ids" / "train") == [name + ".png" for name in train]
    # ACDC's and the folder's training images have ground truth to score the pseudo-labels against.
    assert ("pseudo-labels against" in capsys.readouterr().out) == (target != "darkzurich")

    assert construct_hard_patch.main([*images_only, *COMMON, "--pseudo-label-root", str(pseudo), "--save",
                                      str(patches), "--rare-classes", "auto", "--grid", "2x2"]) == 0
    assert os.listdir(patches / "patches") and len(os.listdir(patches / "labels")) == len(os.listdir(patches / "patches"))

    run_flags = [*data, *COMMON, "--log-tb-dir", str(exp), "--train-batch-size", "2", "--val-batch-size", "2"]
    baseline = main_script.main(["--module-name", "baseline", "--pseudo-label-root", str(pseudo), "--max-steps", "2",
                                 "--val-interval", "2", "--experiment-name", "baseline", *run_flags])
    assert os.path.isfile(baseline["best_checkpoint"]) and math.isfinite(baseline["best_score"])
    smhm = main_script.main(["--module-name", "smhm", "--restore-from", baseline["best_checkpoint"],
                             "--hard-patches-root", str(patches), "--max-steps", "2", "--val-interval", "2",
                             "--experiment-name", "smhm", *run_flags])
    assert os.path.isfile(smhm["best_checkpoint"])

    predictions = tmp_path / "predictions"
    scores = main_script.main(["--mode", "test", "--restore-from", smhm["best_checkpoint"],
                               "--save-predictions", str(predictions), *run_flags])
    assert_scores(scores)
    assert files_under(predictions / "train_ids") == [name + ".png" for name in val]
    if target == "acdc":  # fog and night, each scored from its own confusion matrix, each with its record
        assert sorted(scores["conditions"]) == ["fog", "night"]
        for condition in ("fog", "night"):
            assert_scores(scores["conditions"][condition])
        assert os.path.isfile(exp / "basic" / "none" / "miou_record_night.csv")
    else:
        assert "conditions" not in scores

    if target == "folder":  # predict mode: no labels, every val image, its folders and stem mirrored
        out = tmp_path / "predict"
        main_script.main(["--mode", "predict", *images_only, "--restore-from", smhm["best_checkpoint"],
                          "--save-predictions", str(out), *COMMON])
        for kind in ("train_ids", "color", "pictures"):
            assert files_under(out / kind) == [name + ".png" for name in val], kind
