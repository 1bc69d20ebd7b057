"""Every training stage trains a few steps on tiny data and leaves checkpoints and a record;
test mode, predictions, resume, extraction round trip."""
import csv
import glob
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from main import parse_args
from modules import runner
from modules.spatial_mix import consistency_target
from tests.fixtures import make_cityscapes, make_gta5, make_patches, make_pseudo_labels
from utils.cli import UserError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    paths = make_cityscapes(str(root / "cs"), train=4, val=3)
    paths["pseudo"] = make_pseudo_labels(str(root / "pseudo"), paths["label_root"])
    paths["patches"] = make_patches(str(root / "patches"))
    paths["gta5"] = make_gta5(str(root / "gta5"))
    paths["list_root"] = str(root / "lists")  # no <split>.txt in it: the image folders are scanned
    os.makedirs(paths["list_root"])
    weights = str(root / "init.pth")
    from models.deeplabv2 import get_deeplabv2
    torch.manual_seed(0)
    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), weights)
    paths["weights"] = weights
    return paths


def stage_args(tree, tmp_path, module, *extra):
    argv = ["--module-name", module, "--image-root", tree["image_root"], "--label-root", tree["label_root"],
            "--list-root", tree["list_root"], "--arch", "deeplabv2_tiny", "--input-size", "64x32",
            "--log-tb-dir", str(tmp_path / "exp"), "--num-workers", "0", "--accelerator", "cpu", "--devices", "1",
            "--train-batch-size", "2", "--max-steps", "2", "--val-interval", "2", "--log-interval", "1",
            "--visualize-interval", "1", "--experiment-name", "t", *extra]
    return parse_args(argv)


STAGE_FLAGS = {
    "basic": [],
    "source_only": ["--source-root", "GTA5"],
    "baseline": ["--pseudo-label-root", "PSEUDO", "--restore-from", "WEIGHTS"],
    "spatial_mix": ["--restore-from", "WEIGHTS"],
    "smhm": ["--restore-from", "WEIGHTS", "--hard-patches-root", "PATCHES"],
}


@pytest.mark.parametrize("module", list(STAGE_FLAGS))
def test_stage_trains_and_writes_outputs(tree, tmp_path, module):
    subs = {"GTA5": tree["gta5"], "PSEUDO": tree["pseudo"], "WEIGHTS": tree["weights"], "PATCHES": tree["patches"]}
    args = stage_args(tree, tmp_path, module, *[subs.get(f, f) for f in STAGE_FLAGS[module]])
    result = runner.train(args)
    folder = tmp_path / "exp" / module / "t"
    assert result["experiment_dir"] == str(folder)
    assert os.path.isfile(folder / "last.ckpt")
    best = glob.glob(str(folder / "checkpoint-step_2-score_*.ckpt"))  # kept by the label-free confidence
    assert best and result["best_checkpoint"] == best[0]
    assert np.isfinite(result["best_score"])
    with open(folder / "miou_record.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][-4:] == ["Mean", "Mean-16", "Mean-13", "Mean-13 (published code)"]
    assert rows[0][:3] == ["step", "weights", "road"] and len(rows) == 2 and len(rows[1]) == len(rows[0])
    assert rows[1][:2] == ["2", str(folder)]  # the run's network at step 2
    with open(folder / "label_free_record.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "weights", "flip_im", "mix_im", "flip", "mix", "im", "diversity", "confidence"]
    assert rows[1][0] == "2"
    assert float(rows[1][rows[0].index("confidence")]) == pytest.approx(result["best_score"], abs=1e-6)
    assert os.path.isfile(folder / "hparams.yaml")
    events = glob.glob(str(folder / "events.out.tfevents.*"))
    assert events
    # --visualize-interval 1: the input | target | prediction picture of both steps, and the losses.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Images("train/input_target_prediction")] == [0, 1]
    assert "train/loss" in accumulator.Tags()["scalars"]
    if module == "smhm":
        assert "train/hard_patch_loss" in accumulator.Tags()["scalars"]
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    keys = state["state_dict"].keys()
    assert any(k.startswith("net.") for k in keys)
    assert any(k.startswith("ema_net.") for k in keys) == (module in ("spatial_mix", "smhm"))


def test_resume_continues_step_count(tree, tmp_path, caplog):
    kept = runner.train(stage_args(tree, tmp_path, "basic"))["best_score"]
    args = stage_args(tree, tmp_path, "basic", "--resume", "last")
    args = args.replace(optim__max_steps=4)
    caplog.clear()
    with caplog.at_level("INFO"):
        runner.train(args)
    # The best so far, as the log line says it, counts the checkpoints kept before the resume.
    said = [float(m.group(1)) for m in re.finditer(r"\(best ([0-9.]+)\)", caplog.text)]
    assert said and all(best >= round(kept, 4) for best in said)
    state = torch.load(tmp_path / "exp" / "basic" / "t" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4


def test_resumed_self_distillation_ends_as_an_uninterrupted_run(tree, tmp_path):
    """Stopped after step 1 of a two-step epoch and resumed to step 3: the SpatialMix, flip and
    augmentation draws continue the saved random stream, the rest of the epoch brings the images
    and hard patches it had not yet brought, and the run ends bit for bit as one that was never
    interrupted."""
    flags = ["--restore-from", tree["weights"], "--hard-patches-root", tree["patches"], "--val-interval", "1",
             "--confidence-threshold", "0"]  # every pixel counts, so the consistency loss moves the weights
    whole = stage_args(tree, tmp_path, "smhm", *flags, "--experiment-name", "whole")
    whole = whole.replace(optim__max_steps=3)
    runner.train(whole)
    first = stage_args(tree, tmp_path, "smhm", *flags, "--experiment-name", "split")
    first = first.replace(optim__max_steps=1)
    runner.train(first)
    rest = stage_args(tree, tmp_path, "smhm", *flags, "--experiment-name", "split", "--resume", "last")
    rest = rest.replace(optim__max_steps=3)
    runner.train(rest)
    whole, split = (torch.load(tmp_path / "exp" / "smhm" / name / "last.ckpt", map_location="cpu",
                               weights_only=True) for name in ("whole", "split"))
    assert whole["global_step"] == split["global_step"] == 3
    whole, split = whole["state_dict"], split["state_dict"]
    init = torch.load(tree["weights"], map_location="cpu", weights_only=True)
    assert any(not torch.equal(whole["net." + k], v) for k, v in init.items() if k.endswith(".weight"))
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole), [k for k in whole if not torch.equal(whole[k], split[k])]


def test_last_checkpoint_follows_training_not_the_best_score(tree, tmp_path):
    """With weights and statistics frozen (lr 0, frozen BatchNorm statistics) every validation scores
    the same, so only the first is a best; last.ckpt must still hold the final step, or --resume
    last would go back to that first validation."""
    frozen = ["--pseudo-label-root", tree["pseudo"], "--restore-from", tree["weights"], "--freeze-bn-stats",
              "--val-interval", "1"]
    args = stage_args(tree, tmp_path, "baseline", *frozen)
    args = args.replace(optim__lr=0.0)  # the command line refuses a rate of 0 (it trains nothing): here that is the point
    args = args.replace(optim__max_steps=3)
    result = runner.train(args)
    with open(os.path.join(result["experiment_dir"], "miou_record.csv")) as f:
        means = [row[-3] for row in list(csv.reader(f))[1:]]
    assert len(means) == 3 and len(set(means)) == 1
    assert os.path.basename(result["best_checkpoint"]).startswith("checkpoint-step_1-")
    state = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert not glob.glob(os.path.join(result["experiment_dir"], "*.partial"))
    # a run killed after its last step resumes to nothing left to do, with the same best checkpoint
    args = stage_args(tree, tmp_path, "baseline", *frozen, "--resume", "last")
    args = args.replace(optim__max_steps=3)
    again = runner.train(args)
    assert again["best_checkpoint"] == result["best_checkpoint"] and again["best_score"] == result["best_score"]
    with open(os.path.join(result["experiment_dir"], "miou_record.csv")) as f:
        assert len(list(csv.reader(f))) == 4  # no step was trained or validated again


def test_resume_last_without_last_ckpt_continues_from_the_saved_checkpoint(tree, tmp_path):
    """A run stopped between the best checkpoint and last.ckpt of its first validation."""
    first = runner.train(stage_args(tree, tmp_path, "basic"))
    os.remove(first["last_checkpoint"])
    args = stage_args(tree, tmp_path, "basic", "--resume", "last")
    args = args.replace(optim__max_steps=4)
    runner.train(args)
    state = torch.load(first["last_checkpoint"], map_location="cpu", weights_only=True)
    assert state["global_step"] == 4


def test_second_run_refuses_to_overwrite(tree, tmp_path):
    from utils.cli import UserError

    runner.train(stage_args(tree, tmp_path, "basic"))
    with pytest.raises(UserError, match="--resume last"):
        runner.train(stage_args(tree, tmp_path, "basic"))


def test_test_mode_scores_and_saves_predictions(tree, tmp_path):
    out = tmp_path / "pred"
    args = stage_args(tree, tmp_path, "basic", "--mode", "test", "--restore-from", tree["weights"],
                      "--save-predictions", str(out), "--flip-when-test", "--test-batch-size", "2")
    scores = runner.test(args)
    assert len(scores["per_class"]) == 19 and np.isfinite(scores["miou"])
    names = sorted(os.listdir(out / "train_ids" / "frankfurt"))
    assert len(names) == 3 and sorted(os.listdir(out / "color" / "frankfurt")) == names
    import cv2
    prediction = cv2.imread(str(out / "train_ids" / "frankfurt" / names[0]), cv2.IMREAD_UNCHANGED)
    assert prediction.shape == (32, 64) and prediction.max() < 19
    for record in ("miou_record.csv", "label_free_record.csv"):  # each row names the weights it scored
        with open(tmp_path / "exp" / "basic" / "t" / record) as f:
            rows = list(csv.reader(f))
        assert len(rows) == 2 and rows[1][:2] == ["test", f"{tree['weights']} (flip)"]
    # Predictions of other settings are not mixed into the folder, unless told to replace them.
    other = stage_args(tree, tmp_path, "basic", "--mode", "test", "--restore-from", tree["weights"],
                       "--save-predictions", str(out), "--test-batch-size", "2")
    with pytest.raises(UserError, match=r"--save-predictions holds results made with other settings .*changed: flip"):
        runner.test(other)
    runner.test(other.replace(evaluation__overwrite=True))


def test_a_test_refused_part_way_leaves_no_folder(tree, tmp_path):
    """A label with a value outside the train ids is found only when the test reaches it."""
    labels = tmp_path / "labels"
    shutil.copytree(tree["label_root"], labels)
    bad = sorted((labels / "val").rglob("*.png"))[-1]
    cv2.imwrite(str(bad), np.full((32, 64), 50, np.uint8))
    out = tmp_path / "pred"
    args = stage_args(tree, tmp_path, "basic", "--mode", "test", "--restore-from", tree["weights"],
                      "--label-root", str(labels), "--save-predictions", str(out), "--experiment-name", "refused")
    with pytest.raises(UserError, match="label values outside 0..18 and 255"):
        runner.test(args)
    assert not out.exists() and not os.path.exists(args.experiment_dir)
    # A --label-dir typed wrong is a typo, not a split without labels.
    typo = stage_args(tree, tmp_path, "basic", "--mode", "test", "--restore-from", tree["weights"],
                      "--label-root", str(tmp_path / "none"), "--experiment-name", "typo")
    with pytest.raises(UserError, match="--label-dir .*none: "):
        runner.test(typo)
    assert not os.path.exists(typo.experiment_dir)


def test_evaluation_matches_an_independent_computation(tree, tmp_path):
    """Test mode's mIoU equals the metric computed by hand on the same predictions."""
    from datasets.cityscapes import CityscapesDataset
    from models.deeplabv2 import get_deeplabv2
    from utils.metrics import ConfusionMatrix, scores_from_confusion

    args = stage_args(tree, tmp_path, "basic", "--mode", "test", "--restore-from", tree["weights"])
    scores = runner.test(args)
    net = get_deeplabv2(arch="deeplabv2_tiny", restore_from=tree["weights"]).eval()
    data = CityscapesDataset(tree["image_root"], "val", input_size=(64, 32), label_root=tree["label_root"],
                             resize_label=False)
    confusion = ConfusionMatrix(19)
    with torch.no_grad():
        for item in data:
            logits = net(item["image"][None], size=item["label"].shape)
            confusion.update(logits.argmax(1)[0], item["label"])
    expected = scores_from_confusion(confusion.compute().numpy())
    assert scores["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert scores["miou13_published"] == pytest.approx(expected["miou13_published"], nan_ok=True)
    events = b"".join(f.read_bytes() for f in tmp_path.glob("exp/**/events.out.tfevents.*"))
    assert b"test/miou13" in events and b"test/miou13_published" in events  # the logged means


def test_test_mode_averages_the_scales_as_predict_mode_does(tree, tmp_path, monkeypatch):
    """``--scales`` in test mode: each scale's flip-augmented logits at the input size, averaged, then
    upsampled to the ground truth, computed here by hand: same predictions, same scores."""
    import cv2
    import torch.nn.functional as F

    from datasets.cityscapes import CityscapesDataset
    from models.deeplabv2 import get_deeplabv2
    from utils.metrics import ConfusionMatrix, scores_from_confusion

    import modules.base

    scales, out = (0.5, 1.0, 1.5), tmp_path / "pred"
    args = stage_args(tree, tmp_path, "basic", "--mode", "test", "--restore-from", tree["weights"], "--scales",
                      "0.5,1.0,1.5", "--flip-when-test", "--save-predictions", str(out), "--test-batch-size", "2")
    folded, fold = [], modules.base.fold_batchnorm

    def spy(net):
        folded.append(fold(net))
        return folded[-1]

    monkeypatch.setattr(modules.base, "fold_batchnorm", spy)
    scores = runner.test(args)
    assert len(folded) == 1  # test mode ran the student with its BatchNorm folded (tests/test_fold_bn.py)
    net = get_deeplabv2(arch="deeplabv2_tiny", restore_from=tree["weights"]).eval()
    data = CityscapesDataset(tree["image_root"], "val", input_size=(64, 32), label_root=tree["label_root"],
                             resize_label=False)

    def flipped(x):
        return net(x, size=(32, 64)) + net(x.flip(-1), size=(32, 64)).flip(-1)

    confusion, one_scale_differs = ConfusionMatrix(19), False
    with torch.no_grad():
        for item in data:
            image, label = item["image"][None], item["label"]
            resized = [image if s == 1.0 else F.interpolate(image, size=(round(32 * s), round(64 * s)), mode="bilinear",
                                                            align_corners=False) for s in scales]
            logits = sum(flipped(x) for x in resized) / len(scales)
            prediction = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=True).argmax(1)[0]
            confusion.update(prediction, label)
            saved = cv2.imread(str(out / "train_ids" / (item["name"] + ".png")), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(saved, prediction.numpy())
            one_scale = (net(image, size=label.shape) + net(image.flip(-1), size=label.shape).flip(-1)).argmax(1)[0]
            one_scale_differs |= not torch.equal(one_scale, prediction)
    assert one_scale_differs  # the scales change the predictions: the test can fail
    expected = scores_from_confusion(confusion.compute().numpy())
    assert scores["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    # Its record row names the weights and how they predicted.
    with open(os.path.join(args.experiment_dir, "miou_record.csv"), newline="") as f:
        row = list(csv.DictReader(f))[-1]
    assert row["weights"] == f"{tree['weights']} (flip, scales 0.5,1.0,1.5)"


def test_each_evaluation_runs_a_fresh_folded_copy_kept_out_of_checkpoints(tree, tmp_path):
    from modules.base import SegmentationModule

    def batchnorms(net):
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())

    config = stage_args(tree, tmp_path, "basic", "--restore-from", tree["weights"])
    module = SegmentationModule(config)
    keys = set(module.state_dict())
    module.start_evaluation(testing=False)
    (first,) = module.evaluation_nets
    assert first is not module.net and batchnorms(first) == 0 < batchnorms(module.net)
    assert set(module.state_dict()) == keys  # not a submodule: checkpoints hold the student alone
    module.start_evaluation(testing=False)  # the next validation: the student has trained since
    assert len(module.evaluation_nets) == 1 and module.evaluation_nets[0] is not first

    # The evaluation step predicts with that copy (here one that says class 7 everywhere).
    module.evaluation_nets[0] = lambda images, size=None: torch.eye(19)[7].view(1, 19, 1, 1).expand(len(images), 19, 4, 8)
    images, label = torch.zeros(2, 3, 32, 64), torch.zeros(2, 32, 64, dtype=torch.long)
    predictions = module._evaluate({"image": images, "label": label, "name": ["a/x", "a/y"]}, module.val_confusion,
                                  module.val_label_free)
    assert all((p == 7).all() for p in predictions)

    for flags in (["--no-fold-bn"], ["--compile"]):  # compiled: validation runs the compiled student itself
        module = SegmentationModule(stage_args(tree, tmp_path, "basic", "--restore-from", tree["weights"], *flags))
        module.start_evaluation(testing=False)
        assert module.evaluation_nets == []


def test_consistency_weight_softmax_vs_logits():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = torch.tensor([[10.0, 0.5], [0.9, 2.0]])
    target, weight = consistency_target(logits, threshold=0.968, source="softmax")
    assert target.tolist() == [[[0, 0], [0, 0]]]
    # softmax confidences: 10 -> ~0.9999; 0.5, 0.9, 2.0 -> below 0.968
    assert weight.item() == pytest.approx(0.25)
    _, weight = consistency_target(logits, threshold=0.968, source="logits")
    assert weight.item() == pytest.approx(0.5)  # raw logits 10 and 2.0 pass the threshold


def test_rounds_chain_students_and_resume(tree, tmp_path):
    from modules.rounds import train_rounds

    args = stage_args(tree, tmp_path, "smhm", "--restore-from", tree["weights"], "--hard-patches-root",
                      tree["patches"], "--rounds", "2", "--no-round-guard")  # every round, as published
    results = train_rounds(args, 2)
    base = tmp_path / "exp" / "smhm"
    assert [r["round"] for r in results] == [1, 2]
    assert results[0]["restore_from"] == tree["weights"]
    assert results[1]["restore_from"] == str(base / "t_round_1" / "student.pth")
    student = torch.load(results[1]["student"], map_location="cpu", weights_only=True)
    best = torch.load(results[1]["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, best["net." + k]) for k, v in student.items())
    with open(base / "t_rounds.csv") as f:
        assert [row[0] for row in csv.reader(f)] == ["round", "1", "2"]
    # Rerunning finds both rounds finished and trains nothing.
    again = train_rounds(stage_args(tree, tmp_path, "smhm", "--restore-from", tree["weights"],
                                    "--hard-patches-root", tree["patches"], "--no-round-guard"), 2)
    assert again == results
    # A third round asked for with --resume last (the advice a refused rerun gives) starts fresh.
    resumed = stage_args(tree, tmp_path, "smhm", "--restore-from", tree["weights"], "--hard-patches-root",
                         tree["patches"], "--resume", "last", "--no-round-guard")
    more = train_rounds(resumed, 3)
    assert more[:2] == results and more[2]["restore_from"] == results[1]["student"]
    with pytest.raises(UserError, match="--resume PATH"):
        train_rounds(stage_args(tree, tmp_path, "smhm", "--restore-from", tree["weights"], "--hard-patches-root",
                                tree["patches"], "--resume", results[0]["best_checkpoint"]), 3)


@pytest.mark.parametrize("module", ["baseline", "smhm"])
def test_frozen_bn_statistics_survive_a_lightning_run(tree, tmp_path, module):
    """Lightning never calls train(): it restores recorded modes after validation, so the freeze
    must hold from construction on (it once did not, and statistics drifted in every stage)."""
    flags = {"baseline": ["--pseudo-label-root", tree["pseudo"]],
             "smhm": ["--hard-patches-root", tree["patches"]]}[module]
    args = stage_args(tree, tmp_path, module, "--restore-from", tree["weights"], "--freeze-bn-stats",
                      "--val-interval", "1", *flags)
    result = runner.train(args)
    init = torch.load(tree["weights"], map_location="cpu", weights_only=True)
    state = torch.load(result["experiment_dir"] + "/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    stats = [k for k in init if k.endswith(("running_mean", "running_var"))]
    assert stats
    for prefix in ["net."] + (["ema_net."] if module == "smhm" else []):
        for k in stats:
            assert torch.equal(state[prefix + k], init[k]), prefix + k
    # without the flag the same run does update them: the check above can fail
    args = stage_args(tree, tmp_path, module, "--restore-from", tree["weights"], "--experiment-name", "u", *flags)
    result = runner.train(args)
    state = torch.load(result["experiment_dir"] + "/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(not torch.equal(state["net." + k], init[k]) for k in stats)


def test_main_rounds_1_uses_the_round_layout_and_no_flag_a_single_run(tree, tmp_path):
    from main import main

    common = ["--module-name", "smhm", "--image-root", tree["image_root"], "--label-root", tree["label_root"],
              "--list-root", tree["list_root"], "--arch", "deeplabv2_tiny", "--input-size", "64x32",
              "--log-tb-dir", str(tmp_path / "exp"), "--num-workers", "0", "--accelerator", "cpu",
              "--train-batch-size", "2", "--max-steps", "1", "--val-interval", "1", "--restore-from", tree["weights"],
              "--hard-patches-root", tree["patches"]]
    rounds = main(common + ["--experiment-name", "one", "--rounds", "1", "--no-round-guard"])  # returns what it did
    base = tmp_path / "exp" / "smhm"
    assert [r["student"] for r in rounds] == [str(base / "one_round_1" / "student.pth")]
    assert os.path.isfile(base / "one_round_1" / "student.pth") and os.path.isfile(base / "one_rounds.csv")
    assert not os.path.exists(base / "one")
    single = main(common + ["--experiment-name", "plain"])
    assert single["last_checkpoint"] == str(base / "plain" / "last.ckpt") and single["best_checkpoint"]
    assert os.path.isfile(base / "plain" / "last.ckpt") and not os.path.exists(base / "plain_round_1")


# -- the published learning-rate schedule and synchronised BatchNorm ---------------------------------

def published_cosine(base, epoch):
    return base * (1 + np.cos(np.pi * epoch / 10)) / 2


def test_auto_schedule_is_the_published_periodic_cosine_per_epoch(tree, tmp_path):
    args = stage_args(tree, tmp_path, "baseline", "--pseudo-label-root", tree["pseudo"], "--restore-from",
                      tree["weights"], "--lr", "1e-3")
    module = runner.MODULES["baseline"](args)
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch"
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for epoch in range(0, 46):
        expected = published_cosine(1e-3, epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), epoch
        optimizer.step()
        scheduler.step()
    assert published_cosine(1e-3, 10) == pytest.approx(0, abs=1e-18)  # to 0 at epoch 10, back by 20
    assert published_cosine(1e-3, 20) == pytest.approx(1e-3)
    constant = stage_args(tree, tmp_path, "basic", "--lr-schedule", "constant")
    assert isinstance(runner.MODULES["basic"](constant).configure_optimizers(), torch.optim.Adam)


def test_cosine_is_stepped_once_an_epoch_in_training(tree, tmp_path):
    # 4 training images at batch 2: 2 steps an epoch, so 6 steps are 3 epochs.
    args = stage_args(tree, tmp_path, "basic", "--lr", "1e-3", "--max-steps", "6", "--val-interval", "6")
    result = runner.train(args)
    state = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    scheduler = state["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 3
    assert scheduler["_last_lr"][0] == pytest.approx(published_cosine(1e-3, 3), rel=1e-9)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(published_cosine(1e-3, 3), rel=1e-9)


def test_sync_batchnorm_flag_and_default(tree, tmp_path, monkeypatch):
    def args(*extra):
        return stage_args(tree, tmp_path, "basic", *extra)

    assert args().hardware.sync_batchnorm is None
    assert args("--sync-batchnorm").hardware.sync_batchnorm is True and args("--no-sync-batchnorm").hardware.sync_batchnorm is False
    assert runner.sync_batchnorm(args()) is False  # no GPU here
    with pytest.raises(UserError, match="--sync-batchnorm needs GPUs"):
        runner.sync_batchnorm(args("--sync-batchnorm"))  # the stage flags say --accelerator cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = args("--accelerator", "gpu")
    assert runner.sync_batchnorm(gpu) is True  # as published, for training on GPUs
    assert runner.sync_batchnorm(args("--accelerator", "gpu", "--no-sync-batchnorm")) is False
    gpu = gpu.replace(mode="test")
    assert runner.sync_batchnorm(gpu) is False


def test_sync_batchnorm_converts_student_and_teacher_alike(tree, tmp_path):
    from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm

    from utils.ema import ema_update

    args = stage_args(tree, tmp_path, "smhm", "--restore-from", tree["weights"], "--hard-patches-root",
                      tree["patches"], "--freeze-bn-stats")
    plain = runner.MODULES["smhm"](args)
    converted = TorchSyncBatchNorm().apply(runner.MODULES["smhm"](args))  # what Lightning does under DDP
    for net in (converted.net, converted.ema_net):
        norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert {k: v.shape for k, v in converted.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    converted.train()  # --freeze-bn-stats still holds for the synchronised layers
    assert not any(m.training for m in converted.net.modules() if isinstance(m, torch.nn.SyncBatchNorm))
    # The teacher follows the student by EMA through the converted layers as through the plain ones.
    with torch.no_grad():
        for module in (plain, converted):
            for p in module.net.parameters():
                p.add_(0.5)
            ema_update(module.ema_net, module.net, 3, max_alpha=0.99)
    for (name, a), b in zip(plain.ema_net.state_dict().items(), converted.ema_net.state_dict().values()):
        assert torch.equal(a, b), name
    cpu = stage_args(tree, tmp_path, "basic", "--accelerator", "cpu")
    assert runner.build_trainer(cpu)._accelerator_connector._layer_sync is None  # CPU: off by default
