"""The rare-class options (docs/method.md, "Rare classes"): each on a constructed case where its
meaning can be checked exactly, and each stage option in a short training run on tiny data."""
import json
import os

import numpy as np
import pytest
import torch

from main import parse_args
from modules import runner
from tests.fixtures import make_cityscapes, make_patches, make_pseudo_labels
from utils.cli import UserError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    paths = make_cityscapes(str(root / "cs"), train=4, val=2)
    paths["pseudo"] = make_pseudo_labels(str(root / "pseudo"), paths["label_root"])
    paths["patches"] = make_patches(str(root / "patches"))
    paths["list_root"] = str(root / "lists")  # empty: the image folders are scanned
    os.makedirs(paths["list_root"])
    from tests.fixtures import tiny_weights
    paths["weights"] = tiny_weights(str(root / "init.pth"))
    return paths


def stage_args(tree, tmp_path, module, *extra):
    return parse_args(["--module-name", module, "--image-root", tree["image_root"], "--label-root", tree["label_root"],
                       "--list-root", tree["list_root"], "--arch", "deeplabv2_tiny", "--input-size", "64x32",
                       "--log-tb-dir", str(tmp_path / "exp"), "--num-workers", "0", "--accelerator", "cpu",
                       "--devices", "1", "--train-batch-size", "2", "--max-steps", "2", "--val-interval", "2",
                       "--visualize-interval", "0", "--experiment-name", "t", "--restore-from", tree["weights"],
                       *map(str, extra)])


# -- a teacher without dropout --------------------------------------------------------------------------

def test_teacher_passes_agree_without_dropout_and_batchnorm_keeps_batch_statistics(tree, tmp_path):
    from models.networks import get_network
    from modules.spatial_mix import SpatialMixModule

    weights = str(tmp_path / "segformer.pth")
    torch.manual_seed(0)
    torch.save(get_network("segformer_b0", 19).state_dict(), weights)
    images = torch.randn(2, 3, 32, 64) * 50
    passes = {}
    for flags in ([], ["--teacher-dropout"]):
        config = stage_args(tree, tmp_path, "spatial_mix", "--arch", "segformer_b0", "--restore-from", weights, *flags)
        module = SpatialMixModule(config).train()  # as Lightning leaves it after a validation
        with torch.no_grad():
            passes[bool(flags)] = module.teacher_logits(images), module.teacher_logits(images)
        norms = [m for m in module.ema_net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(m.training for m in norms)  # batch statistics, as published
    assert torch.equal(*passes[False])
    assert not torch.equal(*passes[True])  # the published module mode: drop-path draws anew each pass


# -- rare-class sampling -----------------------------------------------------------------------------------

def test_rare_class_sampling_draws_images_at_the_expected_rates():
    """Class shares 0.8 / 0.15 / 0.05: with T = 0.05 the classes are drawn in proportions
    exp((1 - f_c) / T), then an image containing the class uniformly; the image alone holding the
    rarest class comes most often, and the empirical rates match within a few standard errors."""
    from datasets.samplers import RareClassSampler

    counts = np.array([[80, 0, 0], [0, 10, 0], [0, 5, 5], [0, 0, 0]])  # the last image: no class at all
    pixels = counts.sum(axis=0)
    share = pixels / pixels.sum()
    temperature = 0.05
    p_class = np.exp((1 - share) / temperature)
    p_class /= p_class.sum()
    expected = np.array([p_class[0], p_class[1] / 2, p_class[1] / 2 + p_class[2], 0.0])
    sampler = RareClassSampler(counts, pixels, 20000, temperature, seed=3)
    np.testing.assert_allclose(sampler.item_probability().numpy(), expected, atol=1e-12)
    drawn = np.bincount(list(sampler), minlength=4) / len(sampler)
    assert np.all(np.abs(drawn - expected) <= 4 * np.sqrt(expected * (1 - expected) / len(sampler)) + 1e-9), drawn
    assert drawn[2] > drawn[1] > drawn[0] and drawn[3] == 0


def test_rare_class_sampling_is_deterministic_per_seed_and_epoch_and_resumes():
    from datasets.samplers import RareClassSampler, SkipSampler

    counts = np.random.default_rng(0).integers(0, 3, size=(9, 5))

    def epoch_of(epoch, seed=1, rank=0, world=1):
        sampler = RareClassSampler(counts, counts.sum(axis=0), 6, 0.1, rank, world, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_of(0) == epoch_of(0) and epoch_of(0) != epoch_of(1) and epoch_of(0) != epoch_of(0, seed=2)
    ranks = [epoch_of(0, rank=r, world=2) for r in range(2)]
    whole = RareClassSampler(counts, counts.sum(axis=0), 12, 0.1, seed=1)
    assert [i for pair in zip(*ranks) for i in pair] == list(whole)  # the ranks share one sequence
    resumed = SkipSampler(RareClassSampler(counts, counts.sum(axis=0), 6, 0.1, seed=1))
    resumed.set_epoch(1)
    resumed.skip = 4
    assert list(resumed) == epoch_of(1)[4:]


@pytest.mark.parametrize("module", ["baseline", "smhm"])
def test_stages_train_with_rare_class_sampling(tree, tmp_path, module):
    flags = ["--pseudo-label-root", tree["pseudo"], "--rare-class-sampling", "0.01"]
    if module == "smhm":
        flags += ["--hard-patches-root", tree["patches"]]
    from datasets.samplers import RareClassSampler
    from modules.data import SegmentationDataModule

    config = stage_args(tree, tmp_path, module, *flags)
    stage = runner.MODULES[module]
    loaders = SegmentationDataModule(config, stage.train_source, stage.use_patches).train_dataloader()
    assert {name: type(loader.sampler.sampler) for name, loader in loaders.items()} == \
        {name: RareClassSampler for name in (["target", "patches"] if module == "smhm" else ["target"])}
    if module == "smhm":  # independent draws: the patches do not repeat the images' classes
        assert loaders["patches"].sampler.sampler.seed != loaders["target"].sampler.sampler.seed
    result = runner.train(config)
    state = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert state["global_step"] == 2


def test_rare_class_sampling_needs_the_pseudo_labels(tree, tmp_path):
    with pytest.raises(UserError, match="--pseudo-label-root"):
        runner.train(stage_args(tree, tmp_path, "spatial_mix", "--rare-class-sampling", "0.01"))
    assert not os.path.exists(tmp_path / "exp" / "spatial_mix" / "t")


def _relabelled(source, target, change):
    """A copy of the label folder ``source`` with every label PNG replaced by ``change(label)``."""
    import shutil

    import cv2

    shutil.copytree(source, target)
    for path in target.rglob("*.png"):
        if path.parent.name != "patches":
            cv2.imwrite(str(path), change(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).astype(np.uint8))
    return str(target)


def test_rare_class_options_refuse_labels_they_cannot_use_before_writing(tree, tmp_path):
    ignored = _relabelled(tree["pseudo"], tmp_path / "ignored", lambda label: np.full_like(label, 255))
    label_ids = _relabelled(tree["pseudo"], tmp_path / "ids", lambda label: np.where(label == 255, 255, 30))
    no_class = _relabelled(tree["patches"], tmp_path / "patches", lambda label: np.full_like(label, 255))
    for module, flags, message in (
            ("spatial_mix", ["--pseudo-label-root", ignored, "--rare-class-sampling", "0.01"], "no pixel of any class"),
            ("spatial_mix", ["--pseudo-label-root", ignored, "--distribution-alignment"], "no pixel of any class"),
            ("spatial_mix", ["--pseudo-label-root", label_ids, "--distribution-alignment"], "label values outside 0..18"),
            ("smhm", ["--pseudo-label-root", tree["pseudo"], "--rare-class-sampling", "0.01", "--hard-patches-root",
                      no_class], "no hard patch holds a class of the pseudo-labels")):
        with pytest.raises(UserError, match=message):
            runner.train(stage_args(tree, tmp_path, module, *flags))
        assert not os.path.exists(tmp_path / "exp" / module / "t")
    with pytest.raises(UserError, match="only for the class shares of --rare-class-sampling and --distribution-align"):
        stage_args(tree, tmp_path, "spatial_mix", "--pseudo-label-root", tree["pseudo"])


def test_a_tiny_temperature_draws_the_rarest_class():
    from datasets.samplers import RareClassSampler

    counts = np.array([[5, 0, 1], [0, 3, 0], [2, 2, 0]])
    sampler = RareClassSampler(counts, counts.sum(axis=0), 6, 1e-320)
    assert sampler.class_probability.tolist() == [0.0, 0.0, 1.0] and list(sampler) == [0] * 6


# -- distribution alignment ------------------------------------------------------------------------------

def test_distribution_alignment_moves_the_targets_toward_the_target_share():
    """The teacher says class 0 for 80 % of the pixels, the pseudo-labels have the two classes half and
    half: with the running marginal at (0.8, 0.2) the probabilities are scaled by (0.625, 2.5), so class
    0 keeps only the pixels where p_0 > 0.8, and the targets' share of class 0 moves from 0.8 to 0.4."""
    from modules.spatial_mix import consistency_target

    p0 = torch.tensor([0.9] * 4 + [0.6] * 4 + [0.2] * 2).view(1, 1, 2, 5)
    logits = torch.cat([p0, 1 - p0], dim=1).log()
    share, marginal = torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.2])
    plain, _ = consistency_target(logits, 0.9)
    aligned, weight = consistency_target(logits, 0.9, prior=(share, marginal))
    assert (plain == 0).float().mean().item() == pytest.approx(0.8)
    assert (aligned == 0).float().mean().item() == pytest.approx(0.4)
    assert aligned.flatten().tolist() == [0] * 4 + [1] * 6
    # confident after alignment (>= 0.9): only the p_0 = 0.2 pixels, 0.8 * 2.5 / (0.8 * 2.5 + 0.2 * 0.625) = 0.94
    assert weight.item() == pytest.approx(0.2)
    assert torch.equal(consistency_target(logits, 0.9, prior=(share, share))[0], plain)  # aligned already: unchanged


def test_distribution_alignment_refusals_and_training_run(tree, tmp_path):
    with pytest.raises(UserError, match="--pseudo-label-root"):
        stage_args(tree, tmp_path, "spatial_mix", "--distribution-alignment")
    with pytest.raises(UserError, match="--confidence-source softmax"):
        stage_args(tree, tmp_path, "spatial_mix", "--distribution-alignment", "--pseudo-label-root", tree["pseudo"],
                   "--confidence-source", "logits")
    config = stage_args(tree, tmp_path, "smhm", "--distribution-alignment", "--pseudo-label-root", tree["pseudo"],
                        "--hard-patches-root", tree["patches"], "--confidence-threshold", "0")
    result = runner.train(config)
    state = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    marginal = state["teacher_marginal"]  # the teacher's running class marginal, kept for a resume
    assert marginal.sum().item() == pytest.approx(1, abs=1e-5) and not torch.allclose(marginal, torch.full((19,), 1 / 19))


def test_distribution_alignment_aligns_to_the_shares_training_draws(tree, tmp_path):
    """With rare-class sampling the teacher's marginal is measured on images drawn for their rare
    classes: the target share is the expected share of those draws, not of the whole split."""
    from datasets.samplers import RareClassSampler
    from modules.data import SegmentationDataModule

    import cv2

    pseudo = _relabelled(tree["pseudo"], tmp_path / "pseudo", lambda label: label)
    first = sorted((tmp_path / "pseudo").rglob("*.png"))[0]
    label = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    label[:4, :4] = 11  # a person in one image alone: rare-class sampling draws that image most
    cv2.imwrite(str(first), label)
    stage = runner.MODULES["spatial_mix"]
    shares = {}
    for flags in ([], ["--rare-class-sampling", "0.01"]):
        config = stage_args(tree, tmp_path, "spatial_mix", "--pseudo-label-root", pseudo,
                            "--distribution-alignment", *flags)
        data = SegmentationDataModule(config, stage.train_source, stage.use_patches)
        shares[bool(flags)], counts = data.drawn_class_share(), data.class_counts("train")
    np.testing.assert_allclose(shares[False], counts.sum(axis=0) / counts.sum())
    drawn = counts[list(RareClassSampler(counts, counts.sum(axis=0), 20000, 0.01, seed=1))].sum(axis=0)
    np.testing.assert_allclose(shares[True], drawn / drawn.sum(), atol=0.01)
    assert shares[True][11] > 1.5 * shares[False][11] > 0


def test_a_resume_that_changes_distribution_alignment_says_so(tree, tmp_path):
    flags = ["--pseudo-label-root", tree["pseudo"], "--rare-class-sampling", "0.01"]
    runner.train(stage_args(tree, tmp_path, "spatial_mix", *flags))
    with pytest.raises(UserError, match="was trained without --distribution-alignment: resume it without the flag"):
        runner.train(stage_args(tree, tmp_path, "spatial_mix", *flags, "--distribution-alignment", "--resume", "last"))


# -- class-balanced thresholds (CBST) --------------------------------------------------------------------

def test_class_thresholds_keep_the_most_confident_share_of_each_class():
    from modules.pseudo_labels import class_thresholds

    histogram = np.zeros((3, 16), dtype=np.int64)
    histogram[0, 1:11] = 1  # ten pixels at confidences 1..10: the top 8 are those at 3..10
    histogram[1, 4], histogram[1, 9] = 2, 1  # three pixels: ceil(0.8 * 3) = 3, all of them
    assert class_thresholds(histogram, 0.8).tolist() == [3, 4, 0]  # a class without pixels: none to keep
    assert class_thresholds(histogram, 1.0).tolist() == [1, 4, 0]
    assert class_thresholds(histogram, 0.05).tolist() == [10, 9, 0]  # at least the most confident pixel
    histogram[2, 15], histogram[2, 14] = 7, 93  # ceil(0.07 * 100) is 7 exactly, though 0.07 * 100 > 7 in floats
    assert class_thresholds(histogram, 0.07)[2] == 15


def run_script(main, argv):
    from utils.cli import run

    with pytest.raises(SystemExit) as exit_info:
        run(main, [str(a) for a in argv])
    return exit_info.value.code


def test_class_balanced_pseudo_labels_from_an_onnx_provider(tmp_path, capsys):
    """In each class the labels keep exactly the pixels at or above its threshold, the confidence of
    the class's ceil(P n_c)-th most confident pixel; the rest become 255; the summary reports the
    kept shares and the thresholds, and a rerun changes nothing. Label maps alone cannot be balanced."""
    import construct_hard_patch
    import generate_pseudo_labels
    from tests.fixtures import assert_one_line_refusal, run_refused, tiny_weights
    from tools import export_provider
    from utils.io import read_label

    make_cityscapes(str(tmp_path / "cs"), train=4, val=0, size=(64, 32))
    onnx_file = str(tmp_path / "p.onnx")
    assert run_script(export_provider.main, ["--restore-from", tiny_weights(str(tmp_path / "w.pth")), "--arch",
                                             "deeplabv2_tiny", "--input-size", "64x32", "--onnx", onnx_file]) == 0
    common = ["--data-dir", tmp_path / "cs", "--restore-from", onnx_file, "--input-size", "64x32", "--num-workers", "0",
              "--accelerator", "cpu", "--devices", "1"]
    share = 0.5
    assert run_script(generate_pseudo_labels.main, common + ["--save", tmp_path / "plain"]) == 0
    save = tmp_path / "balanced"
    assert run_script(generate_pseudo_labels.main, common + ["--save", save, "--class-balanced-share", share]) == 0
    folder = os.path.join("train", "aachen")
    names = sorted(os.listdir(tmp_path / "plain" / "label_ids" / folder))
    plain = np.stack([read_label(str(tmp_path / "plain" / "label_ids" / folder / n)) for n in names])
    kept = np.stack([read_label(str(save / "label_ids" / folder / n)) for n in names])
    confidence = np.stack([read_label(str(save / "confidence" / folder / n)) for n in names]).astype(np.int64)
    assert confidence.dtype == np.int64 and confidence.max() <= 65535 and len(np.unique(confidence)) > 100
    summary = json.loads((save / "summary.json").read_text())
    assert summary["class_balanced_share"] == share
    classes = np.unique(plain)
    assert len(classes) > 1
    for c in classes:
        mine = confidence[plain == c]
        k = int(np.ceil(share * mine.size))
        threshold = np.sort(mine)[::-1][k - 1]
        assert np.array_equal(kept == c, (plain == c) & (confidence >= threshold)), c
        assert (mine >= threshold).sum() >= k > (mine > threshold).sum()
        name = list(summary["class_thresholds"])[c]
        assert summary["class_thresholds"][name] == pytest.approx(threshold / 65535, abs=1e-6)
    assert np.array_equal(kept[kept != 255], plain[kept != 255]) and (kept == 255).mean() == pytest.approx(0.5, abs=0.1)
    shares = np.bincount(kept[kept != 255], minlength=19) / (kept != 255).sum()  # of the kept pixels
    assert list(summary["class_pixel_share"].values()) == pytest.approx(shares, abs=1e-6)

    def files(folder):
        return {p: open(os.path.join(dirpath, p), "rb").read() for dirpath, _, ps in os.walk(folder) for p in ps
                if ".state" not in dirpath}

    before = files(save)
    assert run_script(generate_pseudo_labels.main, common + ["--save", save, "--class-balanced-share", share]) == 0
    assert files(save) == before

    code, err = run_refused(capsys, construct_hard_patch.main,
                            ["--data-dir", tmp_path / "cs", "--pseudo-label-root", tmp_path / "plain", "--input-size",
                             "64x32", "--save", tmp_path / "patches", "--class-balanced-share", "0.5"])
    assert_one_line_refusal(code, err, "--class-balanced-share", str(tmp_path / "patches"))


# -- complementary labels (ATP) ---------------------------------------------------------------------------

def test_complementary_loss_on_a_known_case():
    from modules.baseline import complementary_loss

    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))[None, :, None, None].expand(1, 3, 1, 2)
    sets = torch.tensor([[[0b110, 0]]])  # pixel 1: not classes 1 and 2; pixel 2: no complementary class
    expected = -(np.log(0.7) + np.log(0.8)) / 2  # the mean over the classes, over the one pixel that has some
    assert complementary_loss(logits, sets).item() == pytest.approx(expected, rel=1e-5)
    assert complementary_loss(logits, torch.zeros(1, 1, 2, dtype=torch.int64)).item() == 0
    sure = torch.tensor([20.0, 0.0, 0.0, 20.0])[None, :, None, None].requires_grad_()  # two top classes tied
    loss = complementary_loss(sure, torch.tensor([[[0b1001]]]))  # ... and both ruled out
    loss.backward()
    assert loss.item() == pytest.approx(-np.log((1 + 2 * np.exp(-20)) / (2 + 2 * np.exp(-20))), rel=1e-5)
    assert (sure.grad.flatten()[[0, 3]] > 0).all()  # a sure student is still pushed away from them


def test_complementary_labels_from_the_provider_train_the_baseline(tmp_path, capsys):
    """The written sets are exactly the classes of softmax probability below P (of the flip-summed
    logits, recomputed here from the weights), never the label's class; the baseline trains on them,
    and refuses pseudo-labels made without them (an --overwrite without P removes the old sets); hard
    patches and label maps refuse the option."""
    import adapt
    import construct_hard_patch
    import generate_pseudo_labels
    from datasets.base import TargetDataset, collate
    from datasets.targets import make_target
    from models.networks import get_network
    from tests.fixtures import assert_one_line_refusal, run_refused, tiny_weights
    from utils.inference import predict_logits
    from utils.io import read_class_sets

    paths = make_cityscapes(str(tmp_path / "cs"), train=4, val=2, size=(64, 32))
    weights = tiny_weights(str(tmp_path / "w.pth"))
    common = ["--data-dir", tmp_path / "cs", "--restore-from", weights, "--input-size", "64x32", "--num-workers", "0",
              "--accelerator", "cpu", "--devices", "1", "--arch", "deeplabv2_tiny"]
    below = 0.995  # above many pixels' top probability (0.7 to 0.999 here): their label is excluded by rule
    assert run_script(generate_pseudo_labels.main, common + ["--save", tmp_path / "pl", "--complementary-below", below,
                                                             "--no-fold-bn"]) == 0
    dataset = TargetDataset(make_target("cityscapes", str(tmp_path / "cs")), "train", input_size=(64, 32),
                            pseudo_label_root=str(tmp_path / "pl"),
                            complementary=str(tmp_path / "pl" / "complementary" / "train"))
    batch = collate([dataset[i] for i in range(len(dataset))])
    net = get_network("deeplabv2_tiny", 19, restore_from=weights).eval()
    with torch.no_grad():
        p = predict_logits(net, batch["image"], size=(32, 64), flip=True).softmax(dim=1)
    sets = batch["complementary"]
    written = ((sets[:, None] >> torch.arange(19)[None, :, None, None]) & 1).bool()
    clear = (p - below).abs() > 1e-4  # float rounding decides nothing closer than this
    assert clear.float().mean() > 0.9
    label = p.argmax(dim=1, keepdim=True)
    assert torch.equal(written[clear], (p < below).scatter(1, label, False)[clear])
    assert (p.gather(1, label) < below).any()  # some pixels' label is itself below P ...
    assert not written.gather(1, batch["label"][:, None]).any()  # ... and never a class the pixel is not
    name = dataset.names[0]
    assert read_class_sets(os.path.join(tmp_path, "pl", "complementary", "train", name + "_gtFine_labelIds.png")
                           ).dtype == np.uint8

    os.makedirs(tmp_path / "lists")  # empty: the image folders are scanned
    tree = {**paths, "list_root": str(tmp_path / "lists"), "weights": weights}
    config = stage_args(tree, tmp_path, "baseline", "--pseudo-label-root", tmp_path / "pl", "--complementary-weight", "1")
    result = runner.train(config)
    assert torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)["global_step"] == 2
    # A set map replaced by a grey picture: refused from its header, before the run writes anything.
    import cv2

    grey = os.path.join(tmp_path, "pl", "complementary", "train", name + "_gtFine_labelIds.png")
    original = read_class_sets(grey)
    cv2.imwrite(grey, np.zeros((32, 64), np.uint8))
    with pytest.raises(UserError, match="is not a map of class sets"):
        runner.train(stage_args(tree, tmp_path, "baseline", "--pseudo-label-root", tmp_path / "pl",
                                "--complementary-weight", "1", "--experiment-name", "grey"))
    assert not os.path.exists(tmp_path / "exp" / "baseline" / "grey")
    cv2.imwrite(grey, original)

    # Labelled again without P: the earlier sets go with the earlier labels, and the baseline refuses.
    assert run_script(generate_pseudo_labels.main, common + ["--save", tmp_path / "pl", "--overwrite"]) == 0
    assert not os.path.exists(tmp_path / "pl" / "complementary")
    with pytest.raises(UserError, match="--complementary-below"):
        runner.train(stage_args(tree, tmp_path, "baseline", "--pseudo-label-root", tmp_path / "pl",
                                "--complementary-weight", "1", "--experiment-name", "refused"))
    assert not os.path.exists(tmp_path / "exp" / "baseline" / "refused")

    code, err = run_refused(capsys, construct_hard_patch.main,
                            ["--data-dir", tmp_path / "cs", "--restore-from", weights, "--input-size", "64x32",
                             "--save", tmp_path / "patches", "--complementary-below", "0.05"])
    assert_one_line_refusal(code, err, "--complementary-below", str(tmp_path / "patches"))
    code, err = run_refused(capsys, adapt.main, ["--black-box", tmp_path / "pl", "--images", paths["image_root"],
                                                 "--out", tmp_path / "adapt", "--complementary-below", "0.05"])
    assert_one_line_refusal(code, err, "--complementary-below", str(tmp_path / "adapt"))
