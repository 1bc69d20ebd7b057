"""main.py: the published commands, flags, and one-line errors before training starts."""
import glob
import os
import subprocess
import sys

import pytest
import torch

from main import main, parse_args
from utils.cli import run
from tests.fixtures import make_cityscapes, make_patches, make_pseudo_labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PUBLISHED_BASELINE = ("--module-name baseline --mode train --restore-from ./pretrained/gta5_only.pth "
                      "--experiment-name none --train-batch-size 4 --lr 1.0e-4 --val-interval 1.0 "
                      "--pseudo-label-root ./experiments/gta5_pseudo_label/").split()
PUBLISHED_SMHM = ("--module-name smhm --mode train --restore-from ./pretrained/basic.pth --experiment-name none "
                  "--train-batch-size 4 --lr 1.0e-5 --val-interval 1.0 --position-beta 0.25 "
                  "--hard-patches-root ./experiments/hard_patch_from_gta5_model/").split()


def test_published_commands_parse_with_published_defaults():
    args = parse_args(PUBLISHED_BASELINE)
    assert (args.module_name, args.data.train_batch_size, args.optim.lr, args.evaluation.val_interval) == ("baseline", 4, 1e-4, 1.0)
    assert args.stage.pseudo_label_root == "./experiments/gta5_pseudo_label/"
    assert args.data.images == "./data/Cityscapes/leftImg8bit" and args.data.labels == "./data/Cityscapes/gtFine2"
    assert args.data.list_root is None and args.data.lists == "./datasets/list/cityscapes"
    assert args.network.input_size == (1024, 512)
    assert args.network.arch == "deeplabv2_r101" and args.optim.max_steps > 0
    args = parse_args(PUBLISHED_SMHM)
    assert (args.module_name, args.stage.position_beta, args.stage.hard_patch_weight, args.optim.lr) == ("smhm", 0.25, 0.1, 1e-5)


def test_stage_defaults_and_intervals():
    assert parse_args(["--module-name", "spatial_mix"]).stage.position_beta == 0.5
    assert parse_args(["--module-name", "smhm"]).stage.position_beta == 0.25
    assert parse_args(["--val-interval", "500"]).evaluation.val_interval == 500
    assert parse_args(["--val-interval", "0.25"]).evaluation.val_interval == 0.25
    assert parse_args(["--input-size", "256x128"]).network.input_size == (256, 128)


def run_main(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def run_in_process(capsys, *argv):
    """``main.py`` as the shell runs it, without paying a fresh interpreter per case."""
    with pytest.raises(SystemExit) as exit_info:
        run(main, list(argv))
    return exit_info.value.code, capsys.readouterr().err


def test_help_lists_stage_flags():
    out = run_main("--module-name", "smhm", "--help")
    assert out.returncode == 0
    for flag in ("--hard-patches-root", "--position-beta", "--confidence-source", "--input-size", "--resume"):
        assert flag in out.stdout


@pytest.mark.parametrize("module,lr", [("basic", 1e-4), ("source_only", 1e-4), ("baseline", 1e-4),
                                       ("spatial_mix", 1e-5), ("smhm", 1e-5)])
def test_learning_rate_defaults_to_the_published_one_of_the_stage(module, lr):
    from main import parse_args

    assert parse_args(["--module-name", module]).optim.lr == lr
    assert parse_args(["--module-name", module, "--lr", "3e-3"]).optim.lr == 3e-3


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs")
    paths = make_cityscapes(str(root / "cs"))
    paths["pseudo"] = make_pseudo_labels(str(root / "pseudo"), paths["label_root"])
    paths["patches"] = make_patches(str(root / "patches"))
    paths["empty"] = str(root / "empty")
    os.makedirs(paths["empty"])
    return paths


def common(tree, tmp_path):
    return ["--image-root", tree["image_root"], "--label-root", tree["label_root"], "--list-root", str(tmp_path),
            "--arch", "deeplabv2_tiny", "--input-size", "64x32", "--log-tb-dir", str(tmp_path / "exp"),
            "--num-workers", "0", "--accelerator", "cpu"]


@pytest.mark.parametrize("case, expected", [
    (["--module-name", "nope"], "invalid choice: 'nope'"),
    (["--input-size", "1024*512"], "WIDTHxHEIGHT"),
    (["--module-name", "basic", "--restore-from", "missing.pth"], "missing.pth"),
    (["--module-name", "baseline", "--pseudo-label-root", "no/such/folder"], "no/such/folder"),
    (["--module-name", "smhm", "--restore-from", "WEIGHTS", "--hard-patches-root", "EMPTY"], "EMPTY"),
    (["--module-name", "spatial_mix", "--restore-from", "WEIGHTS", "--train-batch-size", "1"], "--train-batch-size"),
    (["--module-name", "basic", "--restore-from", "WEIGHTS21"], "layer5"),
    (["--module-name", "basic", "--mode", "test"], "--restore-from"),
    (["--module-name", "smhm", "--restore-from", "WEIGHTS", "--rounds", "0"], "--rounds"),
    (["--val-interval", "0"], "--val-interval"),
    (["--val-interval", "30", "--max-steps", "20"], "never validate"),
    (["--train-batch-size", "0"], "--train-batch-size"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--max-steps", "ten"], "--max-steps"),
    (["--precision", "17"], "--precision 17"),
    (["--strategy", "foo"], "--strategy foo"),
    pytest.param(["--accelerator", "gpu"], "--accelerator gpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
])
def test_bad_input_is_one_line_before_training(tree, tmp_path, capsys, case, expected):
    import torch

    from models.deeplabv2 import get_deeplabv2

    weights, weights21 = str(tmp_path / "w.pth"), str(tmp_path / "w21.pth")
    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), weights)
    torch.save(get_deeplabv2(num_classes=21, arch="deeplabv2_tiny").state_dict(), weights21)
    subs = {"WEIGHTS": weights, "WEIGHTS21": weights21, "EMPTY": tree["empty"]}
    case = [subs.get(c, c) for c in case]
    expected = subs.get(expected, expected)
    code, err = run_in_process(capsys, *common(tree, tmp_path), *case)
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.path.exists(tmp_path / "exp" / "basic" / "none" / "last.ckpt")


def test_bad_image_read_by_a_loader_process_is_one_line(tmp_path, capsys):
    """A user error raised in a DataLoader worker comes back wrapped in the worker's traceback."""
    from models.deeplabv2 import get_deeplabv2

    paths = make_cityscapes(str(tmp_path / "cs"))
    val = sorted(glob.glob(os.path.join(paths["image_root"], "val", "*", "*.png")))[0]
    with open(val, "r+b") as f:
        f.truncate(100)
    weights = str(tmp_path / "w.pth")
    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), weights)
    argv = common(paths, tmp_path)
    argv[argv.index("--num-workers") + 1] = "1"
    code, err = run_in_process(capsys, *argv, "--mode", "test", "--restore-from", weights)
    assert code == 2, err
    assert os.path.basename(val) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_ctrl_c_during_training_says_how_to_continue(tree, tmp_path, capsys, monkeypatch):
    """Lightning turns Ctrl-C into exit code 1; the command reports an interruption (130) instead."""
    import signal

    from modules.base import SegmentationModule

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(SegmentationModule, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        code, err = run_in_process(capsys, *common(tree, tmp_path), "--module-name", "basic", "--max-steps", "2")
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C once it has one
    assert code == 130, err
    assert "interrupted:" in err and "--resume last" in err and "Traceback" not in err


def test_missing_pseudo_label_for_a_listed_image(tree, tmp_path):
    """Run as a real process once: exit code 2, one line on stderr, no traceback."""
    pseudo = tmp_path / "partial"
    make_pseudo_labels(str(pseudo), tree["label_root"])
    victim = sorted((pseudo / "label_ids" / "train" / "aachen").iterdir())[0]
    victim.unlink()
    out = run_main(*common(tree, tmp_path), "--module-name", "baseline", "--pseudo-label-root", str(pseudo))
    assert out.returncode == 2 and victim.name in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx"])
def test_a_provider_file_cannot_be_trained(tmp_path, capsys, name):
    """A .pt2 is refused with the conversion to ONNX; an ONNX file is only run: one line each."""
    path = tmp_path / name
    path.write_bytes(b"not read")
    code, err = run_in_process(capsys, "--module-name", "basic", "--restore-from", str(path), "--arch",
                               "deeplabv2_tiny", "--data-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert ("torch.onnx.export" in err) if name.endswith(".pt2") else ("only run" in err)
