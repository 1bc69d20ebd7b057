"""Students from segmentation-models-pytorch: the forward contract, the input normalisation inside the
network, ImageNet encoder files in NVlabs / torchvision layout with precise key errors, every stage
(baseline, smhm, test mode, extraction) with segformer_b0, one step of deeplabv3plus_r50, and the
transformer recipe (AdamW, head x10, linear warm-up then poly)."""
import os
import types

import numpy as np
import pytest
import torch

from datasets.pixels import IMG_MEAN_BGR, to_network_input
from main import main, parse_args
from models.deeplabv2 import WeightFileError
from models.networks import ARCH_NAMES, family, get_network
from models.students import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, STUDENTS
from modules import runner
from modules.base import warmup_poly_factor
from tests.fixtures import make_cityscapes, make_patches, make_pseudo_labels


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return get_network("segformer_b0", 19)


def test_registry_names_every_student():
    assert {f"segformer_b{i}" for i in range(6)} | {"deeplabv3plus_r50", "deeplabv3plus_r101"} == set(STUDENTS)
    assert set(STUDENTS) < set(ARCH_NAMES) and "deeplabv2_r101" in ARCH_NAMES
    assert family("deeplabv2_tiny") == "deeplabv2" and family("segformer_b5") == "transformer"
    assert family("deeplabv3plus_r101") == "cnn"
    from utils.cli import UserError
    with pytest.raises(UserError, match="segformer_b0"):
        get_network("segformer_b9")


def test_students_are_built_without_downloading_anything(monkeypatch):
    import huggingface_hub
    import segmentation_models_pytorch.encoders as encoders
    import timm.models._builder as timm_builder

    def refuse(*args, **kwargs):
        raise AssertionError("a student tried to download weights")

    for module, name in ((encoders, "hf_hub_download"), (huggingface_hub, "hf_hub_download"),
                         (timm_builder, "load_pretrained")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert get_network("segformer_b0", 19) is not None


def test_forward_contract_and_normalisation_inside_the_network(b0):
    net = b0.eval()
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # BGR, as read by cv2
    x = to_network_input(image)[None]
    with torch.no_grad():
        assert net(x).shape == (1, 19, 16, 24)  # 1/4 of the input
        assert net(x, size=(64, 96)).shape == (1, 19, 64, 96)
        # sides that are no multiple of 32 (hard patches, 1920x1080 targets) are padded inside
        assert net(x[..., :40, :56]).shape == (1, 19, 10, 14)
        assert net(x[..., :40, :56], size=(40, 56)).shape == (1, 19, 40, 56)
    rgb = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float()[None] / 255
    expected = (rgb - torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    assert torch.allclose(net.normalize(x), expected, atol=1e-5)
    assert not any("input_" in k for k in net.state_dict())  # the constants are no weights
    assert CAFFE_MEAN_BGR == IMG_MEAN_BGR


def test_param_groups_head_times_ten_and_no_decay_on_norms(b0):
    groups = b0.param_groups(6e-5, weight_decay=0.01)
    encoder = {id(p) for p in b0.model.encoder.parameters()}
    for g in groups:
        assert all((id(p) in encoder) == (g["lr"] == 6e-5) for p in g["params"])
    assert sorted({g["lr"] for g in groups}) == pytest.approx([6e-5, 6e-4])
    assert sum(len(g["params"]) for g in groups) == len(list(b0.parameters()))
    norm = b0.model.encoder.norm1.weight
    assert [g["weight_decay"] for g in groups if any(p is norm for p in g["params"])] == [0.0]


def test_nvlabs_mit_file_loads_into_the_encoder(b0, tmp_path):
    # An NVlabs mit_b0.pth: the encoder's keys (patch_embed1.proj.weight, block1.0.attn.q.weight, ...)
    # and the ImageNet classifier head.*; saved wrapped in a "state_dict" as some copies are.
    torch.manual_seed(1)
    source = get_network("segformer_b0", 19)
    state = dict(source.model.encoder.state_dict())
    assert "patch_embed1.proj.weight" in state and "block1.0.attn.q.weight" in state
    assert "block1.0.attn.kv.weight" in state and "block1.0.mlp.dwconv.dwconv.weight" in state
    state.update({"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)})
    path = str(tmp_path / "mit_b0.pth")
    torch.save({"state_dict": state}, path)
    net = get_network("segformer_b0", 7, restore_from=path)
    loaded = net.model.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.model.encoder.state_dict().items())
    assert net.model.segmentation_head[0].out_channels == 7  # the head stays fresh, for our classes
    # a file that does not fit names its keys
    broken = {k: v for k, v in state.items() if k != "block1.0.attn.q.weight"}
    broken["patch_embed1.proj.weight"] = torch.zeros(32, 3, 3, 3)
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(WeightFileError) as err:
        get_network("segformer_b0", 19, restore_from=path)
    message = str(err.value)
    assert "mit_b0 encoder of segformer_b0" in message and path in message
    assert "mis-shaped (1) patch_embed1.proj.weight (file [32, 3, 3, 3], network [32, 3, 7, 7])" in message
    assert "missing (1) block1.0.attn.q.weight" in message and "unexpected (1) extra.weight" in message


def test_torchvision_resnet_file_and_whole_student_files(tmp_path):
    import torchvision

    torch.manual_seed(2)
    resnet = torchvision.models.resnet50(weights=None)  # torchvision's (and timm's) ResNet layout, fc included
    path = str(tmp_path / "resnet50.pth")
    torch.save(resnet.state_dict(), path)
    net = get_network("deeplabv3plus_r50", 19, restore_from=path)
    assert torch.equal(net.model.encoder.layer4[2].conv3.weight, resnet.layer4[2].conv3.weight)
    assert torch.equal(net.model.encoder.bn1.running_var, resnet.bn1.running_var)
    # a whole student (what extract_model_state_dict.py writes) loads strictly; another class count does not
    whole = str(tmp_path / "student.pth")
    torch.save(net.state_dict(), whole)
    with pytest.raises(WeightFileError, match=r"deeplabv3plus_r50 with 21 classes: mis-shaped \(2\) "
                                              r"model.segmentation_head.0.weight \(file \[19, 256, 1, 1\]"):
        get_network("deeplabv3plus_r50", 21, restore_from=whole)


# -- the stages ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    paths = make_cityscapes(str(root / "cs"), train=4, val=2, size=(64, 64))
    paths["pseudo"] = make_pseudo_labels(str(root / "pseudo"), paths["label_root"])
    paths["patches"] = make_patches(str(root / "patches"))  # 16x8 patches: padded inside the student
    paths["list_root"] = str(root / "lists")
    os.makedirs(paths["list_root"])
    torch.manual_seed(0)
    paths["mit_b0"] = str(root / "mit_b0.pth")  # stands in for NVlabs' ImageNet file
    torch.save(get_network("segformer_b0").model.encoder.state_dict(), paths["mit_b0"])
    return paths


def stage_args(tree, tmp_path, module, arch, *extra):
    return parse_args([
        "--module-name", module, "--image-root", tree["image_root"], "--label-root", tree["label_root"],
        "--list-root", tree["list_root"], "--arch", arch, "--input-size", "64x64",
        "--log-tb-dir", str(tmp_path / "exp"), "--num-workers", "0", "--accelerator", "cpu", "--devices", "1",
        "--train-batch-size", "2", "--max-steps", "2", "--val-interval", "2", "--log-interval", "1",
        "--visualize-interval", "0", "--experiment-name", "t", *extra])


def test_segformer_b0_through_every_stage(tree, tmp_path):
    """baseline from an NVlabs-layout ImageNet file with the transformer recipe, extraction, smhm
    (EMA teacher, SpatialMix, hard patches) from the extracted student, test mode."""
    from extract_model_state_dict import main as extract

    result = runner.train(stage_args(tree, tmp_path, "baseline", "segformer_b0", "--pseudo-label-root", tree["pseudo"],
                                     "--restore-from", tree["mit_b0"], "--optimizer", "adamw", "--lr", "6e-5",
                                     "--max-steps", "1", "--val-interval", "1"))
    assert np.isfinite(result["best_score"])
    state = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert state["global_step"] == 1
    # one step of one: the end of the poly decay, rate 0; the optimiser's groups are the recipe's
    groups = state["optimizer_states"][0]["param_groups"]
    assert sorted({g["initial_lr"] for g in groups}) == pytest.approx([6e-5, 6e-4])
    assert all(g["lr"] == pytest.approx(0.0) for g in groups)
    student = str(tmp_path / "basic.pth")
    assert extract(["--pl-weight-path", result["best_checkpoint"], "--model-weight-keyname", "net",
                    "--save-path", student]) == 0
    restored = get_network("segformer_b0", restore_from=student).eval()
    trained = state["state_dict"]
    assert all(torch.equal(v, trained["net." + k]) for k, v in restored.state_dict().items())

    result = runner.train(stage_args(tree, tmp_path, "smhm", "segformer_b0", "--restore-from", student,
                                     "--hard-patches-root", tree["patches"], "--confidence-threshold", "0",
                                     "--freeze-bn-stats"))
    state = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("ema_net.model.encoder.") for k in state)
    # the one BatchNorm of SegFormer (its head's fuse layer) kept its statistics under --freeze-bn-stats
    bn = "model.decoder.fuse_stage.1.running_mean"
    assert torch.equal(state["net." + bn], restored.state_dict()[bn])
    assert not torch.equal(state["net.model.encoder.block1.0.attn.q.weight"],
                           restored.state_dict()["model.encoder.block1.0.attn.q.weight"])

    scores = runner.test(stage_args(tree, tmp_path, "basic", "segformer_b0", "--mode", "test",
                                    "--restore-from", result["best_checkpoint"]))
    assert len(scores["per_class"]) == 19 and np.isfinite(scores["miou"])


def test_deeplabv3plus_r50_trains_one_step(tree, tmp_path):
    result = runner.train(stage_args(tree, tmp_path, "baseline", "deeplabv3plus_r50", "--pseudo-label-root",
                                     tree["pseudo"], "--max-steps", "1", "--val-interval", "1",
                                     "--optimizer", "sgd", "--lr", "1e-3"))
    state = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert state["global_step"] == 1 and any(k.startswith("net.model.decoder.aspp") for k in state["state_dict"])


def test_a_batch_of_one_is_refused_where_aspp_pooling_meets_batchnorm(tree, tmp_path):
    """DeepLabV3+'s pooled ASPP branch normalises one value per channel with a batch of one: refused in
    one line at parsing (PyTorch would fail mid-step), unless the BatchNorm statistics are frozen."""
    from utils.cli import UserError

    with pytest.raises(UserError, match="--train-batch-size 1 with --arch deeplabv3plus_r50"):
        stage_args(tree, tmp_path, "baseline", "deeplabv3plus_r50", "--pseudo-label-root", tree["pseudo"],
                   "--train-batch-size", "1")
    with pytest.raises(UserError, match="--hard-patch-batch-size 1"):
        stage_args(tree, tmp_path, "smhm", "deeplabv3plus_r101", "--restore-from", "x.pth",
                   "--hard-patches-root", tree["patches"], "--hard-patch-batch-size", "1")
    # Frozen statistics, another family, or test mode: accepted.
    stage_args(tree, tmp_path, "baseline", "deeplabv3plus_r50", "--pseudo-label-root", tree["pseudo"],
               "--train-batch-size", "1", "--freeze-bn-stats")
    stage_args(tree, tmp_path, "baseline", "segformer_b0", "--pseudo-label-root", tree["pseudo"],
               "--train-batch-size", "1")
    stage_args(tree, tmp_path, "basic", "deeplabv3plus_r50", "--mode", "test", "--train-batch-size", "1")


# -- the transformer recipe ------------------------------------------------------------------------------

def test_warmup_poly_values():
    # linear warm-up from 1e-6 of the rate (mmcv's warmup='linear', warmup_ratio=1e-6) over the poly rate
    assert warmup_poly_factor(0, 100, 10) == pytest.approx(1e-6)
    assert warmup_poly_factor(5, 100, 10) == pytest.approx((1 - 0.5 * (1 - 1e-6)) * 0.95)
    assert warmup_poly_factor(10, 100, 10) == pytest.approx(0.9)  # warm-up over: poly (power 1) alone
    assert warmup_poly_factor(55, 100, 10) == pytest.approx(0.45)
    assert warmup_poly_factor(100, 100, 10) == 0.0 and warmup_poly_factor(150, 100, 10) == 0.0
    assert warmup_poly_factor(0, 100, 0) == 1.0


def test_adamw_recipe_and_its_defaults(tree, tmp_path):
    args = stage_args(tree, tmp_path, "baseline", "segformer_b0", "--pseudo-label-root", tree["pseudo"],
                      "--optimizer", "adamw", "--lr", "6e-5", "--max-steps", "40000")
    assert args.optim.warmup_steps == 1500
    module = runner.MODULES["baseline"](args)
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=40000)  # what the Trainer would say
    assert module.schedule() == "warmup_poly"
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and config["lr_scheduler"]["interval"] == "step"
    assert sorted({g["initial_lr"] for g in optimizer.param_groups}) == pytest.approx([6e-5, 6e-4])
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}
    for _ in range(750):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(6e-5 * warmup_poly_factor(750, 40000, 1500))
    # SGD: the DeepLab recipe's weight decay on every trained parameter but the norm layers', the
    # head at 10x, for a library student and for DeepLabv2 alike
    for arch, decays in (("segformer_b0", {5e-4, 0.0}), ("deeplabv2_tiny", {5e-4})):
        args = stage_args(tree, tmp_path, "baseline", arch, "--pseudo-label-root", tree["pseudo"],
                          "--optimizer", "sgd", "--lr", "1e-3")
        module = runner.MODULES["baseline"](args)
        module._trainer = types.SimpleNamespace(estimated_stepping_batches=100)
        optimizer = module.configure_optimizers()["optimizer"]
        assert isinstance(optimizer, torch.optim.SGD)
        assert {g["weight_decay"] for g in optimizer.param_groups} == decays
        assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([1e-3, 1e-2])
    # DeepLabv2 keeps the published Adam (one rate for every parameter, cosine per epoch)
    published = runner.MODULES["basic"](stage_args(tree, tmp_path, "basic", "deeplabv2_tiny"))
    assert published.schedule() == "cosine"


def test_segformer_b0_rounds_of_spatial_mix_and_an_exact_resume(tree, tmp_path):
    """spatial_mix in two rounds from a student file, and a run resumed after its first step ending
    bit for bit as the uninterrupted one: the global random stream that SegFormer's drop-path draws
    from travels in the checkpoint, with the optimiser state and SpatialMix's own stream."""
    torch.manual_seed(0)
    student = str(tmp_path / "student.pth")
    torch.save(get_network("segformer_b0").state_dict(), student)
    # AdamW at a constant rate: a poly decay depends on --max-steps, which the split run changes.
    common = ["--restore-from", student, "--optimizer", "adamw", "--lr", "6e-5", "--lr-schedule", "constant"]

    rounds = main(["--module-name", "spatial_mix", "--image-root", tree["image_root"], "--label-root",
                   tree["label_root"], "--list-root", tree["list_root"], "--arch", "segformer_b0", "--input-size",
                   "64x64", "--log-tb-dir", str(tmp_path / "exp"), "--num-workers", "0", "--accelerator", "cpu",
                   "--devices", "1", "--train-batch-size", "2", "--max-steps", "1", "--val-interval", "1",
                   "--visualize-interval", "0", "--experiment-name", "r", "--rounds", "2", "--no-round-guard", *common])
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["restore_from"] == rounds[0]["student"]

    torch.manual_seed(0)  # as main() seeds every run
    whole = runner.train(stage_args(tree, tmp_path, "spatial_mix", "segformer_b0", *common, "--max-steps", "3",
                                    "--val-interval", "3", "--experiment-name", "whole"))
    torch.manual_seed(0)
    first = stage_args(tree, tmp_path, "spatial_mix", "segformer_b0", *common, "--max-steps", "1",
                       "--val-interval", "1", "--experiment-name", "split")
    runner.train(first)
    rest = runner.train(first.replace(optim__max_steps=3, resume="last"))
    a, b = (torch.load(r["last_checkpoint"], map_location="cpu", weights_only=True)["state_dict"] for r in (whole, rest))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
