"""``adapt.py``: a black box you can only run and a folder of images without a single label, through
every stage to a deployable file and a report; the guard of the rounds; the report's interval."""
import json
import os
import shutil

import cv2
import numpy as np
import onnxruntime
import pytest
import torch

import adapt
from models.networks import get_network
from modules import rounds as rounds_module
from tests.fixtures import make_image_folder, tiny_weights
from tools.export_provider import main as export
from utils.cli import UserError
from utils.metrics import bootstrap_difference, image_confusion, scores_from_confusion

TINY = ["--student", "deeplabv2_tiny", "--input-size", "64x32", "--rounds", "2", "--max-steps", "2",
        "--batch-size", "2", "--accelerator", "cpu", "--num-workers", "0"]


@pytest.fixture(scope="module")
def black_box(tmp_path_factory):
    folder = tmp_path_factory.mktemp("black_box")
    weights = tiny_weights(str(folder / "w.pth"))
    assert export(["--restore-from", weights, "--arch", "deeplabv2_tiny", "--input-size", "64x32",
                   "--onnx", str(folder / "model.onnx")]) == 0
    return str(folder / "model.onnx")


@pytest.mark.slow
def test_images_without_any_label_become_an_adapted_onnx_file_and_a_report(black_box, tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    make_image_folder(str(images), str(labels))
    shutil.rmtree(labels)  # not one label anywhere
    (images / "street" / "0009.webp").write_bytes(b"RIFF")  # a format the readers leave out: said, not read
    out = tmp_path / "out"
    report = adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(out), *TINY])
    assert "note: 1 image(s) such as " in capsys.readouterr().out
    saved = json.loads((out / "report.json").read_text())
    assert saved["verdict"] == report["verdict"] and saved["selected_by"] == "confidence"
    for model in ("black_box", "adapted"):
        assert set(saved[model]["label_free"]) == {"flip_im", "mix_im", "flip", "mix", "im", "diversity", "confidence"}
        assert "miou" not in saved[model]
    assert "difference_ci95" not in saved and saved["images"] == 4
    assert saved["rounds"][0]["round"] == 1 and saved["rounds"][0]["kept"] and 1 <= len(saved["rounds"]) <= 2
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# Adaptation report")
    # The score round 1 started from is shown beside the rounds': the baseline's kept checkpoint's
    # confidence on val, which its record holds too.
    record = (out / "runs" / "baseline" / "baseline" / "label_free_record.csv").read_text().splitlines()
    column = record[0].split(",").index("confidence")
    assert round(max(float(line.split(",")[column]) for line in record[1:]), 4) == saved["baseline_score"]
    assert f"| baseline (the start) | {saved['baseline_score']:.4f} | — |" in markdown
    assert f"| round 1 | {saved['rounds'][0]['score']:.4f} | yes |" in markdown
    assert (out / "report.png").is_file()
    # Every stage kept a checkpoint without labels; the baseline's was chosen by the label-free score.
    assert not list(out.glob("runs/*/*/miou_record.csv"))
    assert list(out.glob("runs/baseline/baseline/checkpoint-step_*-score_*.ckpt"))

    # The deployable file: RGB 0..255 of any size in, resized to the input size inside; logits at the
    # input's own resolution out, as the network gives them.
    net = get_network(arch="deeplabv2_tiny", restore_from=str(out / "student.pth")).eval()
    session = onnxruntime.InferenceSession(str(out / "adapted.onnx"))
    from datasets.pixels import rgb255_to_network_input
    from tools.export_provider import resized_rgb

    for height, width in ((32, 64), (45, 70), (64, 128)):
        rgb = np.random.default_rng(height).uniform(0, 255, (2, 3, height, width)).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: rgb})[0]
        with torch.no_grad():
            seen = resized_rgb(torch.from_numpy(rgb), (64, 32))
            expected = net(rgb255_to_network_input(seen), size=(height, width)).numpy()
        assert got.shape == (2, 19, height, width)
        assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    # ... and labels every image as predict mode does, whatever its size (two of them are 96x48).
    import main as main_script
    from utils.io import read_image_bgr, read_label

    predictions = tmp_path / "predictions"
    main_script.main(["--mode", "predict", "--restore-from", str(out / "student.pth"), "--target-dataset", "folder",
                      "--data-dir", str(images), "--save-predictions", str(predictions), "--accelerator", "cpu",
                      "--num-workers", "0", "--log-tb-dir", str(tmp_path / "runs")])
    for rel in ("street/0001.jpg", "park/0001.png"):
        rgb = read_image_bgr(str(images / rel))[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
        labels_of_file = session.run(None, {session.get_inputs()[0].name: rgb})[0].argmax(1)[0]
        predicted = read_label(str(predictions / "train_ids" / (os.path.splitext(rel)[0] + ".png")))
        assert labels_of_file.shape == predicted.shape
        assert (labels_of_file == predicted).mean() > 0.99, rel

    # Rerunning the same command finds every stage done; other settings are refused, naming them.
    again = adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(out), *TINY])
    assert again["adapted"] == report["adapted"]
    assert again["seconds"] >= report["seconds"]  # the time of every invocation, not the last one's
    with pytest.raises(UserError, match=r"--out holds results made with other settings .*changed: max_steps, seed"):
        adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(out), *TINY, "--seed", "1",
                    "--max-steps", "3"])
    redone = adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(out), *TINY, "--seed", "1",
                         "--max-steps", "3", "--overwrite"])
    assert redone["adapted"] != report["adapted"]
    assert json.loads((out / ".state" / "settings.json").read_text())["seed"] == 1
    # More rounds continue the ones made.
    more = adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(out), *TINY, "--seed", "1",
                       "--max-steps", "3", "--rounds", "3"])
    assert more["rounds"][:len(redone["rounds"])] == redone["rounds"]
    # Fewer would replace the delivered model without --overwrite: refused, nothing changed.
    delivered = (out / "student.pth").read_bytes()
    with pytest.raises(UserError, match="--rounds 1: --out holds round 2 of an earlier run"):
        adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(out), *TINY, "--seed", "1",
                    "--max-steps", "3", "--rounds", "1"])
    assert (out / "student.pth").read_bytes() == delivered


def test_bad_inputs_are_one_line(black_box, tmp_path):
    images = tmp_path / "images"
    make_image_folder(str(images), str(tmp_path / "labels"))
    for argv, words in (
            (["--black-box", str(tmp_path / "none.onnx"), "--images", str(images)], "--black-box: not found"),
            (["--black-box", black_box], "--images DIR"),
            (["--black-box", black_box, "--images", str(images), "--init", str(tmp_path / "x.pth")], "--init"),
            (["--black-box", black_box, "--images", str(images), "--data-dir", str(images)], "not both")):
        with pytest.raises(UserError, match=words):
            adapt.main([*argv, "--out", str(tmp_path / "out"), *TINY])
    with pytest.raises(UserError, match="inside the image folder"):
        adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(images / "out"), *TINY])
    # What a stage would refuse only after the black box has labelled every image is refused before
    # anything runs, and leaves no --out behind.
    labels = tmp_path / "labels"
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "random.pth").write_bytes(os.urandom(256))
    bad_value, wrong_size = tmp_path / "bad_value", tmp_path / "wrong_size"
    shutil.copytree(labels, bad_value)
    cv2.imwrite(str(bad_value / "street" / "0002.png"), np.full((32, 64), 50, np.uint8))
    shutil.copytree(labels, wrong_size)
    cv2.imwrite(str(wrong_size / "street" / "0002.png"), np.zeros((30, 20), np.uint8))
    partial = tmp_path / "partial"
    shutil.copytree(labels, partial)
    os.remove(partial / "street" / "0002.png")
    ignored = tmp_path / "ignored"
    shutil.copytree(labels, ignored)
    for path in ignored.rglob("*.png"):
        cv2.imwrite(str(path), np.full((32, 64), 255, np.uint8))
    out = tmp_path / "bad"
    for extra, words in (
            (["--lr", "-1"], "--lr"), (["--round-lr", "2"], "--round-lr"), (["--lr-schedule", "bogus"], "--lr-schedule"),
            (["--rare-class-sampling", "0"], "--rare-class-sampling"), (["--accelerator", "tpu"], "--accelerator"),
            (["--labels", str(tmp_path / "none")], "--labels: folder not found"),
            (["--labels", str(tmp_path / "empty")], "no label for any image"),
            (["--labels", str(bad_value)], "label values outside 0..18 and 255 in .*0002.png: 50"),
            (["--labels", str(wrong_size)], r"label size 20x30 does not match its image \(64x32\): .*0002.png"),
            (["--labels", str(partial), "--select-by", "val-miou"], "3 of them have one"),
            (["--val-split", "nosuch"], "no sub-folder nosuch/"),
            (["--init", str(tmp_path / "random.pth")], "--init: .*random.pth")):
        with pytest.raises(UserError, match=words):
            adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(out), *TINY, *extra])
        assert not out.exists(), extra
    with pytest.raises(UserError, match="--images: folder not found"):
        adapt.main(["--black-box", black_box, "--images", str(tmp_path / "none"), "--out", str(out), *TINY])
    with pytest.raises(UserError, match="is a file"):
        adapt.main(["--black-box", black_box, "--images", str(images), "--out", str(tmp_path / "a_file"), *TINY])
    with pytest.raises(UserError, match="--images .*a_file is a file; give the folder"):
        adapt.main(["--black-box", black_box, "--images", str(tmp_path / "a_file"), "--out", str(out), *TINY])
    # A black box's label maps are checked before training reads them: all there, all train ids, each
    # of its image's size or --input-size.
    for box, words in ((bad_value, "label values outside 0..18 and 255 in .*0002.png: 50"),
                       (partial, r"--black-box .*partial: label map not found: .*partial/street/0002.png"),
                       (ignored, r"--black-box .*ignored: every pixel of every label map is 255"),
                       (wrong_size, r"label size 20x30 does not match its image \(64x32\): .*0002.png")):
        with pytest.raises(UserError, match=words):
            adapt.main(["--black-box", str(box), "--images", str(images), "--out", str(out), *TINY])
        assert not out.exists(), box
    # A black box of another label set: adapt.py's words, not a flag it does not have.
    torch.manual_seed(0)
    torch.save(get_network(arch="deeplabv2_tiny", num_classes=7).state_dict(), tmp_path / "seven.pth")
    seven = str(tmp_path / "seven.onnx")
    assert export(["--restore-from", str(tmp_path / "seven.pth"), "--arch", "deeplabv2_tiny", "--num-classes", "7",
                   "--input-size", "64x32", "--onnx", seven]) == 0
    for box, extra in ((seven, []), (str(tmp_path / "seven.pth"), ["--black-box-arch", "deeplabv2_tiny"])):
        with pytest.raises(UserError, match="adapt.py adapts black boxes of the 19 Cityscapes train-id"):
            adapt.main(["--black-box", box, "--images", str(images), "--out", str(out), *TINY, *extra])
        assert not out.exists()
    # --overwrite removes what an earlier run of adapt.py wrote, nothing else: the user's own files in
    # --out, or the black box among the outputs, are refused before anything is removed.
    mine = tmp_path / "mine"
    (mine / "weights").mkdir(parents=True)
    (mine / "weights" / "model.pth").write_text("precious")
    shutil.copy(black_box, mine / "adapted.onnx")
    for box, words in ((black_box, r"--out: .*weights is there, but no earlier run of this command wrote it"),
                       (str(mine / "adapted.onnx"), r"--black-box .*adapted.onnx lies in .*adapted.onnx, which this run")):
        with pytest.raises(UserError, match=words):
            adapt.main(["--black-box", box, "--images", str(images), "--out", str(mine), *TINY, "--overwrite"])
        assert (mine / "weights" / "model.pth").read_text() == "precious" and (mine / "adapted.onnx").is_file()
    # A stage's refusal names adapt.py's flags: a weight file that does not say its network.
    with pytest.raises(UserError, match="add --black-box-arch deeplabv2_tiny"):
        adapt.main(["--black-box", tiny_weights(str(tmp_path / "w.pth")), "--images", str(images), "--out", str(out),
                    *TINY])
    assert not out.exists()


def test_a_round_that_does_not_raise_the_score_is_not_kept_and_ends_the_rounds(tmp_path, monkeypatch):
    """The guard, on a constructed case: round 2 scores below round 1 (which is always kept); round 2
    is trained, not kept, round 3 never starts, and the rounds' result is round 1's student."""
    scores = {1: 0.60, 2: 0.55, 3: 0.90}
    trained = []

    def fake_train(config):
        k = int(config.experiment_name.rsplit("_", 1)[1])
        trained.append((k, config.restore_from))
        os.makedirs(config.experiment_dir, exist_ok=True)
        checkpoint = os.path.join(config.experiment_dir, "best.ckpt")
        torch.save({"state_dict": {"net.w": torch.zeros(1)}}, checkpoint)
        return {"best_checkpoint": checkpoint, "best_score": scores[k], "selected_by": "flip_im"}

    monkeypatch.setattr(rounds_module.runner, "train", fake_train)

    class Config:
        log_tb_dir, module_name, experiment_name, restore_from, resume = str(tmp_path), "smhm", "r", "start.pth", None
        round_guard = True
        evaluation = type("E", (), {"select_by": "flip_im"})()
        network = type("N", (), {"arch": "deeplabv2_tiny", "num_classes": 19, "input_size": (64, 32)})()

        def replace(self, **changes):
            copy = Config()
            copy.__dict__.update(changes)
            return copy

        @property
        def experiment_dir(self):
            return os.path.join(self.log_tb_dir, self.module_name, self.experiment_name)

    results = rounds_module.train_rounds(Config(), 3)
    assert [(r["round"], r["kept"]) for r in results] == [(1, True), (2, False)]
    assert trained == [(1, "start.pth"), (2, results[0]["student"])]  # round 2 from round 1; round 3 never ran
    assert rounds_module.final_student(results) == results[0]["student"]
    # Rerun: the finished rounds are read back, and the guard ends them at the same place.
    again = rounds_module.train_rounds(Config(), 3)
    assert [(r["round"], r["kept"]) for r in again] == [(1, True), (2, False)] and len(trained) == 2
    # Round 1 scoring below anything is kept all the same: it is compared with nothing.
    scores[1], trained[:] = 0.01, []
    Config.experiment_name = "s"
    assert [(r["round"], r["kept"]) for r in rounds_module.train_rounds(Config(), 1)] == [(1, True)]


def test_the_interval_of_a_constructed_difference():
    """Every image: model a right on all 10 pixels, model b on half of them (classes 0 and 1). The
    difference is the same on every resample: the interval is that one number."""
    label = np.array([0] * 5 + [1] * 5)
    right = [image_confusion(label, label, 19) for _ in range(6)]
    half = [image_confusion(np.zeros(10, int), label, 19) for _ in range(6)]
    difference = scores_from_confusion(sum(right))["miou"] - scores_from_confusion(sum(half))["miou"]
    assert difference == pytest.approx(100 - 25)  # a: 100 on both classes; b: 50 on road, 0 on sidewalk
    low, high = bootstrap_difference(right, half)
    assert low == pytest.approx(difference) and high == pytest.approx(difference)
    # One image where b is the better: the interval now spans both signs' worth of resamples.
    mixed_a, mixed_b = right[:5] + [half[0]], half[:5] + [right[0]]
    low, high = bootstrap_difference(mixed_a, mixed_b, samples=2000)
    assert low < high and low < difference and high <= difference + 1e-9
    assert bootstrap_difference(right, right) == (0.0, 0.0)


def test_label_free_scores_on_constructed_predictions():
    """Known answers: a network that labels every pixel by its column agrees with itself under a mix
    (the quadrants keep their positions) but not under a flip; one that labels the whole image by its
    mean brightness agrees under a flip, and under a mix nowhere (every mix has another mean)."""
    from utils.label_free import LabelFreeScores, label_free_logits, quadrant_mix

    def by_column(images, size=None):
        logits = torch.zeros(len(images), 19, 4, 8)
        logits.scatter_(1, torch.arange(8).view(1, 1, 1, 8).expand(len(images), 1, 4, 8), 100.0)
        return logits

    def by_brightness(images, size=None):  # one class per image: its mean brightness, rounded
        classes = images.mean(dim=(1, 2, 3)).round().long().view(-1, 1, 1).expand(len(images), 4, 8)
        return torch.nn.functional.one_hot(classes, 19).permute(0, 3, 1, 2).float() * 100

    images = torch.stack([torch.full((3, 32, 64), float(v)) for v in (1, 1, 3, 5)])
    scores = LabelFreeScores(19)
    scores.update(*label_free_logits(by_column, images))
    result = scores.compute()
    assert result["mix"] == 1.0 and result["flip"] == 0.0
    assert result["diversity"] == pytest.approx(np.log(8) / np.log(19), abs=1e-3)  # 8 classes, equally often
    scores = LabelFreeScores(19)
    scores.update(*label_free_logits(by_brightness, images))
    result = scores.compute()
    # Every mix holds a quadrant of each of the 4 images: mean (1 + 1 + 3 + 5) / 4 = 2.5, rounded to class 2,
    # which no image has.
    assert result["flip"] == 1.0 and result["mix"] == 0.0
    assert torch.equal(quadrant_mix(images[:1]), images[:1])  # one image mixes with itself: no change


def test_the_verdict_rests_on_labels_and_says_what_label_free_scores_cannot_tell():
    from modules.report import verdict

    free = {"flip_im": 0.7, "diversity": 0.5}
    labelled = {"label_free": free, "miou": 30.0, "labelled_images": 20}
    for interval, opening in (([1.0, 5.0], "ADAPTATION HELPED"), ([-5.0, -1.0], "ADAPTATION DID NOT HELP"),
                              ([-1.0, 2.0], "NO CLEAR DIFFERENCE")):
        said = verdict({"black_box": {**labelled, "miou": 28.0}, "adapted": labelled, "difference_ci95": interval,
                        "difference": 2.0})
        assert said.startswith(opening) and "+2.00 points" in said and "mIoU 30.00 % against" in said
    # One labelled image: its bootstrap interval has width 0, and says nothing.
    one = verdict({"black_box": {**labelled, "miou": 28.0}, "adapted": {**labelled, "labelled_images": 1},
                   "difference_ci95": [2.0, 2.0], "difference": 2.0})
    assert one.startswith("TOO FEW LABELLED IMAGES") and "label at least 5" in one
    unlabelled = verdict({"black_box": {"label_free": {**free, "diversity": 0.6}}, "adapted": {"label_free": free}})
    assert unlabelled.startswith("WITHOUT LABELS") and "fewer classes" in unlabelled
    assert "fewer classes" not in verdict({"black_box": {"label_free": free}, "adapted": {"label_free": free}})


@pytest.mark.slow
def test_a_folder_of_label_maps_is_a_black_box(tmp_path):
    """The black box as a prediction service gives it: label maps, here the labels themselves."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    make_image_folder(str(images), str(labels))
    rounds = TINY.index("--rounds") + 1
    report = adapt.main(["--black-box", str(labels), "--images", str(images), "--labels", str(labels),
                         "--out", str(tmp_path / "out"), *TINY[:rounds], "1", *TINY[rounds + 1:]])
    assert report["black_box"]["miou"] == 100.0 and report["black_box"]["label_free"] is None
    assert report["adapted"]["miou"] < 100.0 and report["difference_ci95"][1] < 0
    assert report["verdict"].startswith("TOO FEW LABELLED IMAGES")  # 4 labelled images
