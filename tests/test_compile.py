"""``--compile`` (utils/compile.py): the levels and their refusals, the compiled-code cache under the
experiment root, a compiled training step that ends where the eager one does, and the step's tensor
functions through the real compiler.

Compiling is slow on a small CPU: the training runs use torch.compile's ``aot_eager`` backend (the
same graph capture, functionalisation and autograd as inductor, no code generation), and only the
step functions (no network) go through inductor itself."""
import glob
import json
import os

import pytest
import torch

from main import main as main_entry
from main import parse_args
from modules import runner
from tests.fixtures import assert_one_line_refusal, make_cityscapes, make_patches, run_refused, tiny_weights
from utils import compile as compile_utils
from utils.cli import UserError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    paths = make_cityscapes(str(root / "cs"), train=4, val=2, size=(32, 16))
    paths["patches"] = make_patches(str(root / "patches"), size=(16, 8))
    paths["weights"] = tiny_weights(str(root / "init.pth"))
    paths["lists"] = str(root / "lists")  # no <split>.txt in it: the image folders are scanned
    os.makedirs(paths["lists"])
    return paths


def smhm_argv(tree, out, name, *extra):
    return ["--module-name", "smhm", "--image-root", tree["image_root"], "--label-root", tree["label_root"],
            "--list-root", tree["lists"], "--arch", "deeplabv2_tiny", "--input-size", "32x16",
            "--log-tb-dir", str(out), "--num-workers", "0", "--accelerator", "cpu", "--devices", "1",
            "--train-batch-size", "2", "--max-steps", "2", "--val-interval", "2", "--log-interval", "1",
            "--visualize-interval", "0", "--experiment-name", name, "--restore-from", tree["weights"],
            "--hard-patches-root", tree["patches"], "--confidence-threshold", "0", *extra]


def test_levels(tree, tmp_path):
    def hardware(*extra):
        return parse_args(smhm_argv(tree, tmp_path, "t", *extra)).hardware

    assert (hardware().compile, hardware().compile_mode) == ("off", "default")
    assert hardware("--compile").compile == "network"  # the flag alone
    assert hardware("--compile", "step", "--compile-mode", "max-autotune").compile_mode == "max-autotune"
    assert hardware("--compile", "off").compile == "off"


@pytest.mark.parametrize("extra, names", [
    (["--compile", "fast"], "--compile"),
    (["--compile-mode", "reduce-overhead"], "--compile-mode reduce-overhead needs --compile"),
    (["--compile", "step", "--compile-mode", "reduce-overhead"], "CUDA graphs"),  # --accelerator cpu
])
def test_compile_is_refused_where_it_cannot_work(tree, tmp_path, capsys, extra, names):
    out = tmp_path / "exp"
    code, err = run_refused(capsys, main_entry, smhm_argv(tree, out, "t", *extra))
    assert_one_line_refusal(code, err, names, str(out))


def test_the_cache_goes_under_the_experiment_root_unless_the_user_chose_one(tree, tmp_path, monkeypatch):
    monkeypatch.delenv(compile_utils.CACHE_ENV, raising=False)
    config = parse_args(smhm_argv(tree, tmp_path / "exp", "t", "--compile"))
    trainer = runner.build_trainer(config)
    expected = str(tmp_path / "exp" / "inductor_cache")
    assert os.environ[compile_utils.CACHE_ENV] == expected
    assert any(getattr(c, "cache_dir", None) == expected for c in trainer.callbacks)
    # A second run elsewhere moves it along; a folder the user set stays.
    runner.build_trainer(parse_args(smhm_argv(tree, tmp_path / "other", "t", "--compile")))
    assert os.environ[compile_utils.CACHE_ENV] == str(tmp_path / "other" / "inductor_cache")
    monkeypatch.setenv(compile_utils.CACHE_ENV, str(tmp_path / "mine"))
    runner.build_trainer(config)
    assert os.environ[compile_utils.CACHE_ENV] == str(tmp_path / "mine")
    # Without --compile nothing is set.
    monkeypatch.delenv(compile_utils.CACHE_ENV)
    runner.build_trainer(parse_args(smhm_argv(tree, tmp_path / "exp", "t")))
    assert compile_utils.CACHE_ENV not in os.environ


@pytest.mark.slow
def test_a_compiled_smhm_run_ends_as_the_eager_one(tree, tmp_path, monkeypatch, caplog):
    """Two smhm steps (consistency and hard patch losses, SpatialMix, flip, augmentation, EMA update)
    and a validation, eager and with --compile step: the same losses and weights within float rounding."""
    monkeypatch.setattr(compile_utils, "BACKEND", "aot_eager")
    monkeypatch.delenv(compile_utils.CACHE_ENV, raising=False)
    out = tmp_path / "exp"
    runner.train(parse_args(smhm_argv(tree, out, "eager")))
    compiled = parse_args(smhm_argv(tree, out, "step", "--compile", "step"))
    caplog.set_level("INFO", logger="pytorch_lightning")  # the benchmark's tests quieten it to warnings
    result = runner.train(compiled)
    eager, step = (torch.load(out / "smhm" / name / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
                   for name in ("eager", "step"))
    assert eager.keys() == step.keys()  # compiled in place: the checkpoint keeps the networks' keys
    init = torch.load(tree["weights"], map_location="cpu", weights_only=True)
    assert any(not torch.equal(eager["net." + k], v) for k, v in init.items() if k.endswith(".weight"))
    for key in eager:
        torch.testing.assert_close(step[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)
    assert result["best_score"] is not None
    # The compile time, apart from the step time, printed and in TensorBoard.
    assert "compile: the first training step took" in caplog.text  # Lightning's logger prints it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "smhm" / "step"))
    events.Reload()
    assert {"time/compile_s", "time/first_step_s", "time/step_s"} <= set(events.Tags()["scalars"])
    assert os.environ[compile_utils.CACHE_ENV] == str(out / "inductor_cache")


@pytest.mark.slow
def test_inductor_compiles_the_step_functions_to_the_eager_results(tmp_path, monkeypatch):
    """The tensor work around the networks through inductor itself (C++ on a CPU), at tiny sizes:
    mixing, flip, target, augmentation; the loss; the EMA update in place. Compiled code lands in
    the cache folder."""
    from modules.base import cross_entropy
    from modules.spatial_mix import StepDraws, student_batch
    from utils.augment import augment_draws
    from utils.ema import ema_lerp
    from utils.mixing import draw_spatial_mix, flip_coin

    monkeypatch.delenv(compile_utils.CACHE_ENV, raising=False)
    cache = compile_utils.use_cache_dir(str(tmp_path))
    functions = compile_utils.StepFunctions("step")
    generator = torch.Generator().manual_seed(0)
    images, logits = torch.rand(2, 3, 16, 32) * 255 - 120, torch.randn(2, 19, 16, 32) * 3
    draws = StepDraws(*draw_spatial_mix(2, 16, 32, 0.25, generator), flip_coin(1.0, generator), augment_draws(2, generator))
    for got, want in zip(functions(student_batch)(images, logits, draws, 0.5, "softmax"),
                         student_batch(images, logits, draws, 0.5, "softmax")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)  # images are in 0-255 units
    labels = torch.randint(0, 19, (2, 16, 32))
    torch.testing.assert_close(functions(cross_entropy)(logits, labels), cross_entropy(logits, labels))
    teacher, student = [torch.randn(5, 3), torch.randn(7)], [torch.randn(5, 3), torch.randn(7)]
    expected = [t + 0.25 * (s - t) for t, s in zip(teacher, student)]
    functions(ema_lerp)(teacher, student, torch.tensor(0.25))
    for got, want in zip(teacher, expected):
        torch.testing.assert_close(got, want)
    assert cache == str(tmp_path / "inductor_cache") and glob.glob(os.path.join(cache, "**", "*"), recursive=True)


def test_step_functions_are_the_plain_ones_unless_the_step_compiles():
    def f(x):
        return x

    assert compile_utils.StepFunctions("off")(f) is f and compile_utils.StepFunctions("network")(f) is f
    compiled = compile_utils.StepFunctions("step")
    assert compiled(f) is not f and compiled(f) is compiled(f)  # compiled once
    with pytest.raises(Exception):
        compile_utils.compile_level("fast")
    with pytest.raises(UserError, match="--compile"):
        parse_args(["--compile", "fast"])


@pytest.mark.slow
def test_a_student_compiles_too(tmp_path):
    """SegFormer's smhm step compiled (graphs captured and differentiated, ``aot_eager``): images and
    hard patches of two sizes. With symbolic shapes torch 2.14 failed on it; networks compile for
    static shapes. (DeepLabV3+ was checked by hand the same way.)"""
    from tools import benchmark

    out = tmp_path / "student.json"
    assert benchmark.main(["--accelerator", "cpu", "--arch", "segformer_b0", "--input-size", "64x64", "--batch-size", "2",
                           "--steps", "1", "--warmup", "1", "--num-workers", "0", "--threads", "1", "--stages", "smhm",
                           "--configs", "compile_step", "--compile-backend", "aot_eager", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["smhm"]["compile_step"]
    assert figures["images_per_s"] > 0 and figures["first_step_ms"] > figures["step_ms"]
