"""Checkpoint extraction: a Lightning-style checkpoint in, a plain state dict out that loads strictly
into our network and into the published-style definition, bit for bit."""
import os
import subprocess
import sys

import pytest
import torch

from extract_model_state_dict import main
from models.deeplabv2 import DeepLabV2, WeightFileError, get_deeplabv2
from tests.published_deeplab import DeeplabMulti, randomize_weights
from utils.cli import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    student, teacher = get_deeplabv2(arch="deeplabv2_tiny"), get_deeplabv2(arch="deeplabv2_tiny")
    state = {"net." + k: v for k, v in student.state_dict().items()}
    state.update({"ema_net." + k: v for k, v in teacher.state_dict().items()})
    path = tmp_path / "checkpoint-step_3-miou_1.00.ckpt"
    torch.save({"state_dict": state, "epoch": 0, "global_step": 3, "pytorch-lightning_version": "2.6.0",
                "hyper_parameters": {"lr": 1e-4, "module_name": "smhm", "input_size": (64, 32)}}, path)
    return str(path), student, teacher


def assert_same_weights(state, net):
    expected = net.state_dict()
    assert list(state) == list(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("keyname", ["net", "ema_net"])
def test_extracts_either_network_bit_for_bit(checkpoint, tmp_path, capsys, keyname):
    path, student, teacher = checkpoint
    out = str(tmp_path / "pretrained" / "basic.pth")
    assert main(["--pl-weight-path", path, "--model-weight-keyname", keyname, "--save-path", out]) == 0
    assert f"wrote {len(student.state_dict())} tensors" in capsys.readouterr().out
    assert_same_weights(torch.load(out, weights_only=True), student if keyname == "net" else teacher)
    assert os.listdir(os.path.dirname(out)) == ["basic.pth"]  # no temporary file left behind

    restored = get_deeplabv2(arch="deeplabv2_tiny", restore_from=out).eval()
    x = torch.randn(1, 3, 32, 64) * 50
    with torch.no_grad():
        assert torch.equal(restored(x), (student if keyname == "net" else teacher).eval()(x))


def test_default_save_path_is_next_to_the_checkpoint(checkpoint):
    path, student, _ = checkpoint
    main(["--pl-weight-path", path])
    assert_same_weights(torch.load(path[:-len(".ckpt")] + "_net.pth", weights_only=True), student)


def test_output_loads_into_the_published_definition(tmp_path):
    published = randomize_weights(DeeplabMulti(num_classes=19, layers=(1, 1, 1, 1)), seed=2)
    ckpt = str(tmp_path / "published.ckpt")
    torch.save({"state_dict": {"net." + k: v for k, v in published.state_dict().items()}}, ckpt)
    out = str(tmp_path / "plain.pth")
    main(["--pl-weight-path", ckpt, "--save-path", out])
    other = DeeplabMulti(num_classes=19, layers=(1, 1, 1, 1))
    other.load_state_dict(torch.load(out, weights_only=True), strict=True)
    ours = DeepLabV2(blocks=(1, 1, 1, 1), width=64)
    ours.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert_same_weights(torch.load(out, weights_only=True), published)


def test_errors(checkpoint, tmp_path):
    path, student, _ = checkpoint
    with pytest.raises(UserError, match="not found: .*missing.ckpt"):
        main(["--pl-weight-path", str(tmp_path / "missing.ckpt")])
    plain = str(tmp_path / "plain.pth")
    torch.save(student.state_dict(), plain)
    with pytest.raises(WeightFileError, match="not a Lightning checkpoint.*plain.pth.*--restore-from"):
        main(["--pl-weight-path", plain])
    only_student = str(tmp_path / "baseline.ckpt")
    torch.save({"state_dict": {"net." + k: v for k, v in student.state_dict().items()}}, only_student)
    with pytest.raises(WeightFileError, match=r"baseline.ckpt has no weights under 'ema_net\.' \(prefixes present: net\)"):
        main(["--pl-weight-path", only_student, "--model-weight-keyname", "ema_net"])
    numbers = str(tmp_path / "numbers.ckpt")
    torch.save({"state_dict": {"net.a": 1, "net.b": torch.zeros(1)}}, numbers)
    with pytest.raises(UserError, match=r"numbers.ckpt is not a state dict: entries that are not tensors: \(1\) a$"):
        main(["--pl-weight-path", numbers, "--save-path", str(tmp_path / "numbers.pth")])
    assert not (tmp_path / "numbers.pth").exists()
    with pytest.raises(UserError, match="overwrite"):
        main(["--pl-weight-path", path, "--save-path", path])
    # Another file already at --save-path is replaced only when told; an exported program is refused unread.
    other = tmp_path / "other.pth"
    other.write_bytes(b"not mine")
    with pytest.raises(UserError, match="other.pth exists: add --overwrite"):
        main(["--pl-weight-path", path, "--save-path", str(other)])
    assert other.read_bytes() == b"not mine"
    assert main(["--pl-weight-path", path, "--save-path", str(other), "--overwrite"]) == 0
    (tmp_path / "m.pt2").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"exported programs are not run.*torch\.onnx\.export"):
        main(["--pl-weight-path", str(tmp_path / "m.pt2")])


def test_command_line_error_is_one_line(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    result = subprocess.run([sys.executable, "extract_model_state_dict.py", "--pl-weight-path", str(garbage)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and str(garbage) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not os.path.exists(str(garbage)[:-len(".ckpt")] + "_net.pth")


def test_save_path_that_is_a_folder_or_under_a_file_is_one_line(checkpoint, tmp_path, capsys):
    from utils.cli import run

    folder, file = tmp_path / "taken", tmp_path / "file"
    folder.mkdir()
    file.write_text("x")
    for save, named in ((folder, folder), (file / "w.pth", file)):
        with pytest.raises(SystemExit) as exit_info:
            run(main, ["--pl-weight-path", checkpoint[0], "--save-path", str(save)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert err.startswith("error: ") and f"{named} is a f" in err
        assert err.count("\n") == 1 and "Traceback" not in err


# -- files that say what they are ------------------------------------------------------------------------

@pytest.fixture
def described(tmp_path, capsys):
    """A checkpoint as main.py writes it (its hyper-parameters name the network) and its extraction."""
    torch.manual_seed(0)
    student = get_deeplabv2(arch="deeplabv2_tiny")
    path = tmp_path / "checkpoint-step_3-score_0.5.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in student.state_dict().items()},
                "hyper_parameters": {"arch": "deeplabv2_tiny", "num_classes": 19, "input_size": (96, 48)}}, path)
    out = str(tmp_path / "student.pth")
    assert main(["--pl-weight-path", str(path), "--save-path", out]) == 0
    assert "(deeplabv2_tiny, 19 classes, trained at 96x48)" in capsys.readouterr().out
    return out, student


def test_an_extracted_student_says_what_it_is_and_still_loads_strictly(described):
    from models.networks import network_of

    out, student = described
    info = network_of(out)
    assert (info["arch"], info["num_classes"], info["input_size"]) == ("deeplabv2_tiny", 19, [96, 48])
    # The record lives in the state dict's metadata: a plain strict load (as the published code does) ignores it.
    net = get_deeplabv2(arch="deeplabv2_tiny")
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert_same_weights(net.state_dict(), student)


def test_commands_read_the_file_and_refuse_a_contradiction(described):
    from models.networks import network_flags_from_file
    from modules.config import parse_args

    out, _ = described
    config = parse_args(["--mode", "test", "--restore-from", out])  # no --arch, --num-classes, --input-size
    assert (config.network.arch, config.network.num_classes, config.network.input_size) == ("deeplabv2_tiny", 19,
                                                                                            (96, 48))
    # The checkpoint it was extracted from says the same, from its hyper-parameters.
    checkpoint = os.path.join(os.path.dirname(out), "checkpoint-step_3-score_0.5.ckpt")
    config = parse_args(["--mode", "test", "--restore-from", checkpoint])
    assert (config.network.arch, config.network.input_size) == ("deeplabv2_tiny", (96, 48))
    config = parse_args(["--mode", "test", "--restore-from", out, "--input-size", "64x32"])  # a size overrides
    assert config.network.input_size == (64, 32) and config.network.arch == "deeplabv2_tiny"
    for flags, named in ((["--arch", "deeplabv2_r50"], "--arch deeplabv2_r50"),
                         (["--num-classes", "16"], "--num-classes 16")):
        with pytest.raises(UserError, match=f"{named}, but --restore-from .* is a deeplabv2_tiny network with 19"):
            parse_args(["--mode", "test", "--restore-from", out, *flags])
    # The data stages and the exporter read it the same way.
    import argparse

    args = argparse.Namespace(restore_from=out, arch="deeplabv2_r101", num_classes=19, input_size=(1024, 512))
    assert network_flags_from_file(args, [])["arch"] == "deeplabv2_tiny" and args.arch == "deeplabv2_tiny"


def test_a_file_without_a_record_and_a_wrong_arch_is_one_line_naming_the_right_one(tmp_path):
    from models.networks import get_network

    path = str(tmp_path / "plain.pth")
    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), path)  # no record: an older or foreign file
    with pytest.raises(UserError) as refused:
        get_network(arch="deeplabv2_r50", restore_from=path)
    message = str(refused.value)
    assert message == f"{path} holds a deeplabv2_tiny network, not a deeplabv2_r50: add --arch deeplabv2_tiny"
    with pytest.raises(UserError, match="do not fit"):  # weights of no known network: the full listing
        torch.save({"x": torch.zeros(2)}, path)
        get_network(arch="deeplabv2_tiny", restore_from=path)
