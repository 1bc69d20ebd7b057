"""Provider files (models/provider_files.py, modules/providers.py, tools/export_provider.py): an ONNX
model exported from a weight file gives the weight file's pseudo-labels; probabilities instead of
logits; hard patches from a provider file; every provider file that is not what it claims (a
PyTorch exported program among them) is one line naming it, before anything is written; the
export tool's flags, errors and round trip.

Everything runs on a tiny DeepLabv2 and 64x32 images.
"""
import json
import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper

import construct_hard_patch
import generate_pseudo_labels
from datasets.pixels import network_input_to_rgb255, normalize_rgb01, rgb255_to_network_input
from models.deeplabv2 import get_deeplabv2
from models.provider_files import ProviderFileError, open_provider_file
from modules.providers import ProviderNetwork
from tests.fixtures import make_cityscapes
from tests.test_generate_pseudo_labels import make_weights, one_thread, tree  # noqa: F401
from tools import export_provider
from utils.cli import UserError, run
from utils.inference import entropy_map, predict_logits
from utils.io import read_label

INPUT = "64x32"
LABELS = os.path.join("label_ids", "train", "aachen")


def run_script(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    return exit_info.value.code


def export(weights, output, num_classes=19, extra=()):
    argv = ["--restore-from", weights, "--arch", "deeplabv2_tiny", "--num-classes", str(num_classes),
            "--input-size", INPUT, "--onnx", output, *extra]
    return run_script(export_provider.main, argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("providers")
    make_cityscapes(str(root / "cs"), train=6, val=0, size=(64, 32))
    paths = {"data": str(root / "cs"), "root": root, "weights": make_weights(str(root / "w.pth")),
             "weights7": make_weights(str(root / "w7.pth"), num_classes=7),
             "onnx": str(root / "p.onnx"), "onnx7": str(root / "p7.onnx")}
    assert export(paths["weights"], paths["onnx"]) == 0
    assert export(paths["weights7"], paths["onnx7"], num_classes=7) == 0
    # A provider giving the softmax of its logits. Its head is not sharpened: logit gaps stay below
    # the 87 at which float32 probabilities underflow to 0 (docs/providers.md).
    torch.manual_seed(0)
    paths["mild"], paths["onnx_mild"] = str(root / "mild.pth"), str(root / "mild.onnx")
    torch.save(get_deeplabv2(num_classes=19, arch="deeplabv2_tiny").state_dict(), paths["mild"])
    assert export(paths["mild"], paths["onnx_mild"]) == 0
    model = onnx.load(paths["onnx_mild"])
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
    model.graph.output[0].name = "probabilities"
    paths["onnx_probabilities"] = str(root / "probabilities.onnx")
    onnx.save(model, paths["onnx_probabilities"])
    return paths


def pseudo_args(world, save, provider, *extra):
    return ["--data-dir", world["data"], "--restore-from", provider, "--save", str(save), "--arch", "deeplabv2_tiny",
            "--input-size", INPUT, "--num-workers", "0", "--batch-size", "2", "--accelerator", "cpu",
            "--devices", "1", *extra]


def labels_of(save):
    folder = os.path.join(save, LABELS)
    return {name: read_label(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def entropies_of(save):
    rows = [line.split() for name in ("easy.txt", "hard.txt") for line in open(os.path.join(save, name))]
    return {name: float(value) for name, value in rows}


def agreement(a, b):
    assert a.keys() == b.keys() and a
    return sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)


# -- provider files give the weight file's pseudo-labels ---------------------------------------------------

@pytest.fixture(scope="module")
def from_weights(world):
    saves = {}
    for flip in (True, False):
        save = world["root"] / f"from_weights_{flip}"
        assert run_script(generate_pseudo_labels.main,
                          pseudo_args(world, save, world["weights"], *([] if flip else ["--no-flip"]))) == 0
        saves[flip] = save
    return saves


@pytest.mark.parametrize("flip", [True, False])
def test_provider_file_labels_equal_the_weight_files(world, from_weights, tmp_path, flip):
    kind = "onnx"
    save = tmp_path / "out"
    assert run_script(generate_pseudo_labels.main,
                      pseudo_args(world, save, world[kind], *([] if flip else ["--no-flip"]))) == 0
    share = agreement(labels_of(save), labels_of(from_weights[flip]))
    print(f"{kind}, flip {flip}: {100 * share:.3f}% of pixels equal")
    assert share >= 0.999
    expected, got = entropies_of(from_weights[flip]), entropies_of(save)
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) <= 2e-3 * expected[k] + 1e-7 for k in got)
    summary = json.loads((save / "summary.json").read_text())
    assert summary["restore_from"] == world[kind] and summary["images"] == 6


@pytest.mark.parametrize("said", [True, False])
def test_probabilities_give_the_labels_and_entropies_of_the_logits(world, from_weights, tmp_path, said):
    """With --provider-output probabilities, and without it (auto: found on the grey image)."""
    logits, probabilities = tmp_path / "logits", tmp_path / "probabilities"
    assert run_script(generate_pseudo_labels.main, pseudo_args(world, logits, world["onnx_mild"])) == 0
    assert run_script(generate_pseudo_labels.main, pseudo_args(world, probabilities, world["onnx_probabilities"],
                                                               *(["--provider-output", "probabilities"] if said
                                                                 else []))) == 0
    assert agreement(labels_of(probabilities), labels_of(logits)) >= 0.999
    expected, got = entropies_of(logits), entropies_of(probabilities)
    assert all(abs(got[k] - expected[k]) <= 2e-3 * expected[k] + 1e-7 for k in got)
    settings = json.loads((probabilities / ".state" / "train" / "settings.json").read_text())
    assert "probabilities" in json.dumps(settings)  # what the scores are taken as, said or found
    # Said or found is one setting: the folder resumes under the other; taken as logits it would not.
    assert run_script(generate_pseudo_labels.main, pseudo_args(world, probabilities, world["onnx_probabilities"],
                                                               *([] if said else ["--provider-output",
                                                                                  "probabilities"]))) == 0
    assert run_script(generate_pseudo_labels.main, pseudo_args(world, probabilities, world["onnx_probabilities"],
                                                               "--provider-output", "logits")) == 2
    summaries = [json.loads((folder / "summary.json").read_text())["provider_output"] for folder in (logits, probabilities)]
    assert summaries == ["logits", "probabilities"]


def test_auto_takes_a_probability_file_as_what_it_is_where_no_flag_says_it(world):
    """main.py's test and predict modes and adapt.py's report load a black box without --provider-output:
    its scores are the log-probabilities, which every softmax turns back into the file's probabilities."""
    size = tuple(int(v) for v in INPUT.split("x"))
    nets = {name: ProviderNetwork(open_provider_file(world[name]), 19).check(size)
            for name in ("onnx_mild", "onnx_probabilities")}
    assert (nets["onnx_mild"].output, nets["onnx_probabilities"].output) == ("logits", "probabilities")
    images = rgb255_to_network_input(torch.rand(2, 3, size[1], size[0]) * 255)
    with torch.no_grad():
        expected = F.softmax(nets["onnx_mild"](images), dim=1)
        got = F.softmax(nets["onnx_probabilities"](images), dim=1)
    assert torch.allclose(got, expected, atol=1e-4)


class _Scores(nn.Module):
    """A provider-file stand-in: a fixed random 1x1 convolution of the RGB image, as logits or softmax."""

    def __init__(self, probabilities):
        super().__init__()
        self.path, self.input_shape, self.probabilities = "fake.onnx", None, probabilities
        self.conv = nn.Conv2d(3, 5, 3, stride=4, padding=1)
        generator = torch.Generator().manual_seed(3)
        torch.nn.init.normal_(self.conv.weight, 0, 0.005, generator=generator)
        torch.nn.init.normal_(self.conv.bias, 0, 1, generator=generator)

    def accepts_size(self, height, width):
        return True

    def forward(self, rgb, time_limit=None):
        scores = self.conv(rgb)
        return scores.softmax(1) if self.probabilities else scores


@pytest.mark.parametrize("flip", [True, False])
def test_flip_sums_log_probabilities_which_equals_the_logits_path(flip):
    logits = ProviderNetwork(_Scores(False), 5)
    probabilities = ProviderNetwork(_Scores(True), 5, "probabilities")
    images = normalize_rgb01(torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        a = predict_logits(logits, images, size=(32, 64), flip=flip)
        b = predict_logits(probabilities, images, size=(32, 64), flip=flip)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert torch.allclose(a.softmax(1), b.softmax(1), atol=1e-5)
    assert torch.allclose(entropy_map(a), entropy_map(b), atol=1e-5)
    # the flip adds up log-probabilities (upsampled as logits are), it does not average probabilities
    fake = _Scores(True)
    with torch.no_grad():
        rgb = network_input_to_rgb255(images)
        direct = F.interpolate(fake(rgb).log(), size=(32, 64), mode="bilinear", align_corners=True)
        if flip:
            direct = direct + F.interpolate(fake(rgb.flip(-1)).log(), size=(32, 64), mode="bilinear",
                                            align_corners=True).flip(-1)
    assert torch.allclose(b, direct, atol=1e-4)


def test_hard_patches_from_a_provider_file_equal_those_from_the_weights(world, tmp_path):
    common = ["--data-dir", world["data"], "--input-size", INPUT, "--num-workers", "0", "--arch", "deeplabv2_tiny",
              "--batch-size", "2", "--accelerator", "cpu", "--devices", "1", "--rare-classes", "auto",
              "--num-rare", "3"]
    for name, provider in (("weights", world["weights"]), ("onnx", world["onnx"])):
        assert run_script(construct_hard_patch.main, [*common, "--save", str(tmp_path / name),
                                                      "--restore-from", provider]) == 0
    a, b = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("weights", "onnx"))
    assert a["patches"] > 0 and a["patches_per_rare_class"] == b["patches_per_rare_class"]
    assert sorted(os.listdir(tmp_path / "weights" / "patches")) == sorted(os.listdir(tmp_path / "onnx" / "patches"))


# -- provider files that are not what they claim ---------------------------------------------------------------

def _onnx_model(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "provider", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)
    return path


def _conv(channels_in, channels_out):
    weight = np.random.default_rng(0).normal(0, 0.1, (channels_out, channels_in, 1, 1)).astype(np.float32)
    return onnx.numpy_helper.from_array(weight, "weight")


def _image(name="images", channels=3, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, ["N", channels, "H", "W"])


def _scores(name="scores"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def bad_provider(case, world, tmp_path):
    """``(provider file, extra flags, text the one-line error must hold)`` of each bad case."""
    path = str(tmp_path / f"{case}.onnx")
    if case == "channels":
        conv = helper.make_node("Conv", ["images", "weight"], ["scores"])
        return _onnx_model(path, [conv], [_image(channels=1)], [_scores()], [_conv(1, 19)]), [], "1 channels"
    if case == "channels-last":
        transpose = helper.make_node("Transpose", ["images"], ["scores"], perm=[0, 3, 1, 2])
        nhwc = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", "H", "W", 3])
        return _onnx_model(path, [transpose], [nhwc], [_scores()]), [], "channels last; the provider contract takes"
    if case == "no-spatial-output":
        flatten = helper.make_node("Flatten", ["images"], ["scores"], axis=1)
        return _onnx_model(path, [flatten], [_image()], [_scores()]), [], "not class scores N×C×h×w"
    if case == "broken":
        with open(path, "wb") as f:
            f.write(b"\x08\x07garbage that is no protobuf" * 10)
        return path, [], "not a readable ONNX model"
    if case == "truncated":
        with open(world["onnx"], "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
        return path, [], "not a readable ONNX model"
    if case == "classes":
        return world["onnx7"], [], "7 classes, --num-classes is 19"
    if case == "two-inputs":
        add = helper.make_node("Add", ["images", "more"], ["scores"])
        return _onnx_model(path, [add], [_image(), _image("more")], [_scores()]), [], "takes 2 inputs"
    if case == "uint8-input":
        cast = helper.make_node("Cast", ["images"], ["scores"], to=TensorProto.FLOAT)
        return _onnx_model(path, [cast], [_image(dtype=TensorProto.UINT8)], [_scores()]), [], "tensor(uint8)"
    if case == "custom-operator":
        node = helper.make_node("RunShell", ["images"], ["scores"], domain="com.example.evil")
        graph = helper.make_graph([node], "provider", [_image()], [_scores()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                        helper.make_opsetid("com.example.evil", 1)])
        onnx.save(model, path)
        return path, [], "not a readable ONNX model"
    if case == "external-data-outside-its-folder":  # would read another file's bytes as weights
        weight = TensorProto(name="weight", data_type=TensorProto.FLOAT, dims=[1],
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "../../../../etc/hostname"), ("offset", "0"), ("length", "4")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        add = helper.make_node("Add", ["images", "weight"], ["scores"])
        return _onnx_model(path, [add], [_image()], [_scores()], [weight]), [], "not a readable ONNX model"
    if case == "logits-said-probabilities":
        return world["onnx"], ["--provider-output", "probabilities"], "not probabilities"
    if case == "probabilities-of-a-weight-file":
        return world["weights"], ["--provider-output", "probabilities"], "a DeepLabv2 weight file gives logits"
    if case == "fixed-size":
        fixed = str(tmp_path / "fixed.onnx")
        assert export(world["weights"], fixed, extra=["--fixed-size"]) == 0
        return fixed, ["--input-size", "32x16"], "takes only 64x32 images"
    if case in ("pt2", "PT2-not-a-zip"):  # an exported program is refused unread, whatever it holds
        path = str(tmp_path / f"{case}.{case[:3]}")
        with open(path, "wb") as f:
            f.write(b"not a zip")
        return path, [], "convert a trusted one to ONNX: torch.onnx.export(torch.export.load("
    raise AssertionError(case)


BAD_CASES = ["channels", "channels-last", "no-spatial-output", "broken", "truncated", "classes", "two-inputs", "uint8-input",
             "custom-operator", "external-data-outside-its-folder", "logits-said-probabilities", "probabilities-of-a-weight-file", "fixed-size",
             "pt2", "PT2-not-a-zip"]


@pytest.mark.parametrize("case, script", [(case, "generate") for case in BAD_CASES]
                         + [(case, "mine") for case in ("channels", "classes", "broken", "pt2")])
def test_a_bad_provider_file_is_one_line_naming_it_before_anything_is_written(world, tmp_path, capsys, case,
                                                                               script):
    provider, extra, expected = bad_provider(case, world, tmp_path)
    save = tmp_path / "out"
    argv = pseudo_args(world, save, provider, *extra)
    main = generate_pseudo_labels.main if script == "generate" else construct_hard_patch.main
    capsys.readouterr()
    assert run_script(main, argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert case == "probabilities-of-a-weight-file" or provider in lines[0], lines[0]
    assert not save.exists() or not any(save.iterdir()), sorted(os.listdir(save))


@pytest.mark.parametrize("batch", [1, 3])
def test_a_file_made_for_a_fixed_batch_size_gets_batches_of_that_size(tmp_path, batch):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, "H", "W"])
    conv = helper.make_node("Conv", ["images", "weight"], ["scores"])
    provider = open_provider_file(_onnx_model(str(tmp_path / "b.onnx"), [conv], [images], [_scores()], [_conv(3, 19)]))
    assert provider.input_shape == (batch, 3, None, None)
    rgb = torch.rand(5, 3, 8, 16, generator=torch.Generator().manual_seed(0)) * 255
    weight = torch.from_numpy(onnx.numpy_helper.to_array(_conv(3, 19)).copy())
    assert torch.allclose(provider(rgb), F.conv2d(rgb, weight), atol=1e-3)


# -- the export tool ------------------------------------------------------------------------------------------

def test_export_round_trip_reports_agreement_and_writes_atomically(world, tmp_path, capsys):
    onnx_path = str(tmp_path / "out" / "m.onnx")
    capsys.readouterr()
    assert export(world["weights"], onnx_path) == 0
    out = capsys.readouterr().out
    assert out.count("100.00% of pixels labelled as by") == 1, out
    assert sorted(os.listdir(tmp_path / "out")) == ["m.onnx"]  # no temporary file left
    net = get_deeplabv2(num_classes=19, arch="deeplabv2_tiny", restore_from=world["weights"]).eval()
    rgb = torch.rand(3, 3, 48, 80, generator=torch.Generator().manual_seed(1)) * 255  # another batch and size
    with torch.no_grad():
        expected = net(rgb255_to_network_input(rgb))
    provider = open_provider_file(onnx_path)
    assert provider.input_shape[1] == 3 and provider.input_shape[2:] == (None, None)  # a free size
    got = provider(rgb)
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-2)
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert meta["num_classes"] == "19" and "RGB" in meta["provider_input"]


@pytest.mark.parametrize("height, width, kind", [(64, 128, "noise"), (33, 65, "noise"), (20, 30, "noise"),
                                                 (31, 47, "noise"), (48, 40, "smooth"), (200, 31, "smooth")])
def test_the_resize_inside_a_file_is_the_stages_resize(height, width, kind):
    """``--resize-input`` resizes as the stages do with ``--resize-backend pil`` (PIL's bicubic on 8-bit
    images): the same values but for a rare 1 where a value falls half-way; where PIL does the height
    first (the last two shapes), 1 apart on a smooth image."""
    from datasets.pixels import resize_image

    if kind == "noise":
        image = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
    else:
        y, x = np.mgrid[0:height, 0:width]
        image = np.stack([127 + 120 * np.sin(x / 7 + c) * np.cos(y / 9) for c in range(3)], -1).astype(np.uint8)
    expected = resize_image(image, (64, 32), "pil").astype(np.float32)
    got = export_provider.resized_rgb(torch.from_numpy(image).permute(2, 0, 1)[None].float(), (64, 32))
    difference = np.abs(got[0].permute(1, 2, 0).numpy() - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < (0.01 if kind == "noise" else 0.2)


def test_a_file_that_resizes_inside_labels_as_predict_mode(world, tmp_path, capsys):
    onnx_path = str(tmp_path / "adapted.onnx")
    capsys.readouterr()
    assert export(world["weights"], onnx_path, extra=("--resize-input", "--full-resolution")) == 0
    out = capsys.readouterr().out
    share = float(out.split("% of pixels labelled as main.py --mode predict")[0].rsplit(" ", 1)[1])
    assert share >= 99.0, out
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert "resized to" in meta["provider_input"] and "H×W (the input's resolution)" in meta["provider_output"]
    with pytest.raises(SystemExit):  # one line: the resize would do nothing
        run(export_provider.main, ["--restore-from", world["weights"], "--arch", "deeplabv2_tiny", "--onnx",
                                   str(tmp_path / "fixed.onnx"), "--resize-input", "--fixed-size"])
    assert "--resize-input does nothing with --fixed-size" in capsys.readouterr().err
    assert not (tmp_path / "fixed.onnx").exists()


def test_export_help_explains_every_flag(capsys):
    assert run_script(export_provider.main, ["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--restore-from", "--onnx", "--fixed-size", "--arch", "--num-classes", "--head-branches",
                 "--input-size", "--resize-input", "--full-resolution"):
        assert flag in out


@pytest.mark.parametrize("case, expected", [
    ([], "--onnx"),
    (["--onnx", "OUT/m.txt"], "must be NAME.onnx"),
    (["--onnx", "OUT/m.pt2"], "must be NAME.onnx"),
    (["--onnx", "OUT/.onnx"], "must be NAME.onnx"),
    (["--restore-from", "OUT/missing.pth", "--onnx", "OUT/m.onnx"], "missing.pth"),
    (["--restore-from", "DIR", "--onnx", "OUT/m.onnx"], "--restore-from: is a folder, not a weight file"),
    (["--num-classes", "7", "--onnx", "OUT/m.onnx"], "7 classes"),
    (["--onnx", "WEIGHTS"], "must be NAME.onnx"),
    (["--input-size", "64x1", "--onnx", "OUT/m.onnx"], "--input-size 64x1: an image height of 1 would be fixed"),
    (["--onnx", "ONNX"], "exists: add --overwrite"),
])
def test_export_mistakes_are_one_line_and_write_nothing(world, tmp_path, capsys, case, expected):
    out = tmp_path / "out"
    argv = ["--restore-from", world["weights"], "--arch", "deeplabv2_tiny", "--input-size", INPUT]
    argv += [c.replace("OUT", str(out)).replace("WEIGHTS", world["weights"]).replace("ONNX", world["onnx"])
             .replace("DIR", str(tmp_path)) for c in case]
    capsys.readouterr()
    assert run_script(export_provider.main, argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], err
    assert not out.exists()


def test_an_export_that_fails_its_check_leaves_nothing_and_keeps_the_file_it_would_replace(world, tmp_path, capsys,
                                                                                         monkeypatch):
    def refused(*args):
        raise UserError(f"{args[0].path}: refused by the check")

    monkeypatch.setattr(export_provider, "check_file", refused)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the earlier file")
    argv = ["--restore-from", world["weights"], "--arch", "deeplabv2_tiny", "--input-size", INPUT, "--onnx",
            str(target), "--overwrite"]
    capsys.readouterr()
    assert run_script(export_provider.main, argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {target}: refused by the check"
    assert os.listdir(tmp_path) == ["m.onnx"] and target.read_bytes() == b"the earlier file"


def test_provider_files_are_told_by_their_ending(world, tmp_path):
    with pytest.raises(ProviderFileError, match="not found"):
        open_provider_file(str(tmp_path / "none.onnx"))
    with pytest.raises(ProviderFileError, match="not a provider file"):
        open_provider_file(world["weights"])
    copy = tmp_path / "P.ONNX"
    copy.write_bytes(open(world["onnx"], "rb").read())
    assert open_provider_file(str(copy)).input_shape[1] == 3
