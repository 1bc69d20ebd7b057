"""Hostile files given to the stages that read images and run providers, each through an entry
point's real ``main``: one line (``error: ...``), exit code 2, nothing left under the output folder,
or, for names that are merely unusual, a run that works.

1. File names that are not UTF-8 (a byte 0xff in a file or folder name): every stage that reads
   images, labels or pseudo-labels reads them (no path is handed to OpenCV, which crashes on them),
   and writes its outputs and records under the same bytes.
2. Provider scores that are NaN or infinite on some pixels of real images (finite on the grey check
   image): the run stops naming the image, also when it is not the first batch, and a fresh run
   leaves nothing; a weight file with NaN weights in predict mode too.
3. Tab, newline or carriage return in an image's name: refused at the start by both data stages.
4. ``--save`` inside the image folder, directly or through a symbolic link: refused.
5. Provider files that would exhaust the machine: constants declaring more than 1 GiB (a
   ``ConstantOfShape`` of 2 GiB, in the main graph or a subgraph; a huge sparse constant; a huge
   initializer) are refused unread; a ``Loop`` of 10^15 iterations is stopped by the time limit of
   the first run. A ``.pt2`` file is refused (tests/test_providers.py).
6. Images and labels whose headers declare 20000x20000 or 100000x100000 pixels, and label files
   that hold float32 or int32 values (a TIFF renamed ``.png``): one line, before anything is written
   where the header tells, and a fresh mining run that meets one leaves nothing.
"""
import io
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

import construct_hard_patch
import generate_pseudo_labels
import main as main_script
from datasets.base import TargetDataset
from datasets.targets import make_target
from tests.fixtures import _scene, assert_one_line_refusal, run_refused, tiny_weights
from utils.cli import UserError, run
from utils.io import read_image_bgr, read_label

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (64, 32)
COMMON = ["--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu",
          "--devices", "1"]


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_image(path, array, ext=".png"):
    ok, buffer = cv2.imencode(ext, array)
    assert ok
    write_bytes(path, buffer.tobytes())


def scene(seed=0):
    return _scene(np.random.default_rng(seed), *SIZE)


def folder_of(root, names, seed=0):
    """Images named ``names`` (str, surrogates allowed) under ``root``; returns ``root``."""
    for i, name in enumerate(names):
        write_image(os.path.join(root, name), scene(seed + i)[1], os.path.splitext(name)[1])
    return str(root)


def run_code(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        run(main, [str(a) for a in argv])
    return exit_info.value.code


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(str(tmp_path_factory.mktemp("weights") / "w.pth"))


def stage_argv(data, save, provider, *extra):
    return ["--target-dataset", "folder", "--data-dir", data, "--save", save, "--restore-from", provider,
            "--batch-size", "1", *COMMON, *extra]


def predict_argv(data, weights, out):
    return ["--mode", "predict", "--restore-from", weights, "--target-dataset", "folder", "--data-dir", data,
            "--save-predictions", out, "--log-tb-dir", os.path.join(os.path.dirname(out), "runs"),
            "--test-batch-size", "1", *COMMON]


# -- 1. names that are not UTF-8 -------------------------------------------------------------------------------

BAD = os.fsdecode(b"img\xff")  # a surrogate escape, as os.listdir gives such a name


def test_names_that_are_not_utf8_pass_through_every_stage(weights, tmp_path):
    names = [BAD + ".png", os.fsdecode(b"sub\xfe") + "/b.jpg", "c" + os.fsdecode(b"\xff") + "d.png"]
    data = folder_of(tmp_path / "data", names)
    labels = str(tmp_path / "labels")
    assert run_code(generate_pseudo_labels.main, stage_argv(data, labels, weights)) == 0
    for name in names:
        assert os.path.isfile(os.path.join(labels, "label_ids", "train", os.path.splitext(name)[0] + ".png"))
    ranked = open(os.path.join(labels, "easy.txt"), "rb").read() + open(os.path.join(labels, "hard.txt"), "rb").read()
    assert b"img\xff" in ranked and b"sub\xfe/b" in ranked
    # the pseudo-labels read back by mining, and mining from the provider itself
    patches = str(tmp_path / "patches")
    argv = ["--target-dataset", "folder", "--data-dir", data, "--pseudo-label-root", labels, "--save", patches,
            "--rare-classes", "auto", *COMMON]
    assert run_code(construct_hard_patch.main, argv) == 0
    assert run_code(construct_hard_patch.main, stage_argv(data, str(tmp_path / "mined"), weights,
                                                          "--rare-classes", "auto")) == 0
    out = str(tmp_path / "predictions")
    assert main_script.main(predict_argv(data, weights, out))["images"] == 3
    assert os.path.isfile(os.path.join(out, "pictures", BAD + ".png"))
    # the one reader, directly
    assert read_image_bgr(os.path.join(data, BAD + ".png")).shape == (SIZE[1], SIZE[0], 3)
    assert read_label(os.path.join(labels, "label_ids", "train", BAD + ".png")).shape == (SIZE[1], SIZE[0])


def test_a_damaged_file_with_such_a_name_is_one_line(weights, tmp_path):
    data = folder_of(tmp_path / "data", ["a.png"])
    write_bytes(os.path.join(data, BAD + ".png"), b"\x89PNG\r\n\x1a\n" + b"\xff" * 40)
    save = str(tmp_path / "out")
    # In a process of its own: the line names the file, whose name the terminal gets escaped.
    done = subprocess.run([sys.executable, "generate_pseudo_labels.py", *stage_argv(data, save, weights)], cwd=ROOT,
                          capture_output=True, text=True, errors="replace", timeout=300)
    assert_one_line_refusal(done.returncode, done.stderr, "not an image file", save)
    assert "img\\udcff.png" in done.stderr  # the surrogate, escaped
    with pytest.raises(UserError, match="not an image file"):
        read_image_bgr(os.path.join(data, BAD + ".png"))


@pytest.mark.parametrize("script", ["generate", "predict"])
def test_a_truncated_image_read_in_a_loader_process_is_one_line(weights, tmp_path, capsys, script):
    """The header is whole (the checks at the start pass), the pixels are cut short: the error is
    raised inside a DataLoader worker and still reaches the user as one line naming the file."""
    data = folder_of(tmp_path / "data", ["a.png", "b.png"])
    ok, buffer = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (SIZE[1], SIZE[0], 3), np.uint8))
    write_bytes(os.path.join(data, "b.png"), buffer.tobytes()[:len(buffer) // 2])
    out = str(tmp_path / "out")
    workers = ["--num-workers", "1"]
    if script == "generate":
        code, err = run_refused(capsys, generate_pseudo_labels.main, stage_argv(data, out, weights, *workers))
    else:
        code, err = run_refused(capsys, main_script.main, predict_argv(data, weights, out) + workers)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "b.png" in err, err
    assert "Traceback" not in err and "DataLoader worker" not in err  # finished images are kept to resume


# -- 2. non-finite scores ---------------------------------------------------------------------------------------

def onnx_provider(path, unary, num_classes=19):
    """Scores = 1x1 convolution (positive weights) of ``unary(images)``: for ``Log``, black pixels give
    -inf; for ``Sqrt`` of ``200 - images``, bright pixels give NaN; the grey check image gives finite."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    weight = onnx.numpy_helper.from_array(np.full((num_classes, 3, 1, 1), 0.1, np.float32) *
                                          np.arange(1, num_classes + 1, dtype=np.float32)[:, None, None, None],
                                          "weight")
    c200 = onnx.numpy_helper.from_array(np.array(200, np.float32), "c200")
    if unary == "Log":
        nodes = [helper.make_node("Log", ["images"], ["x"])]
    else:
        nodes = [helper.make_node("Sub", ["c200", "images"], ["d"]), helper.make_node("Sqrt", ["d"], ["x"])]
    nodes.append(helper.make_node("Conv", ["x", "weight"], ["scores"]))
    graph = helper.make_graph(nodes, "provider", [images], [scores], [weight, c200])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize("unary, pixel", [("Log", 0), ("Sqrt", 255)])
@pytest.mark.parametrize("script", ["generate", "mine"])
def test_non_finite_scores_on_a_real_image_name_it_and_leave_nothing(tmp_path, capsys, unary, pixel, script):
    data = str(tmp_path / "data")
    good = np.linspace(20, 180, SIZE[0] * SIZE[1] * 3).reshape(SIZE[1], SIZE[0], 3).astype(np.uint8)
    bad = good.copy()
    bad[3:9, 5:20] = pixel
    write_image(os.path.join(data, "a.png"), bad)  # the first batch
    write_image(os.path.join(data, "b.png"), good)  # finite scores
    provider = onnx_provider(str(tmp_path / "p.onnx"), unary)
    save = str(tmp_path / "out")
    main = generate_pseudo_labels.main if script == "generate" else construct_hard_patch.main
    code, err = run_refused(capsys, main, stage_argv(data, save, provider, "--no-flip"))
    assert_one_line_refusal(code, err, "its scores for a hold NaN or infinite values", save)
    assert provider in err


def test_non_finite_scores_on_a_later_batch_keep_the_finished_files_and_write_no_nan(tmp_path, capsys):
    data = str(tmp_path / "data")
    good = np.linspace(20, 180, SIZE[0] * SIZE[1] * 3).reshape(SIZE[1], SIZE[0], 3).astype(np.uint8)
    bad = good.copy()
    bad[0, 0] = 0
    write_image(os.path.join(data, "a.png"), good)
    write_image(os.path.join(data, "b.png"), bad)  # the second batch: the first one is written by then
    provider = onnx_provider(str(tmp_path / "p.onnx"), "Log")
    save = tmp_path / "out"
    code, err = run_refused(capsys, generate_pseudo_labels.main, stage_argv(data, str(save), provider))
    assert code == 2 and err.count("\n") == 1 and "its scores for b hold NaN" in err, err
    assert sorted(os.listdir(save / "label_ids" / "train")) == ["a.png"]  # finished, kept to resume
    assert not (save / "summary.json").exists()
    records = b"".join(p.read_bytes() for p in (save / ".state" / "train").glob("*.tsv"))
    assert records.startswith(b"a\t") and b"nan" not in records.lower() and b"\nb\t" not in records


def test_a_provider_non_finite_on_grey_is_refused_before_anything(tmp_path, capsys):
    data = folder_of(tmp_path / "data", ["a.png"])
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    weight = onnx.numpy_helper.from_array(np.ones((19, 3, 1, 1), np.float32), "weight")
    nodes = [helper.make_node("Neg", ["images"], ["n"]), helper.make_node("Log", ["n"], ["x"]),
             helper.make_node("Conv", ["x", "weight"], ["scores"])]
    provider = str(tmp_path / "nan.onnx")
    onnx.save(helper.make_model(helper.make_graph(nodes, "p", [images], [scores], [weight]),
                                opset_imports=[helper.make_opsetid("", 18)]), provider)
    save = str(tmp_path / "out")
    code, err = run_refused(capsys, generate_pseudo_labels.main, stage_argv(data, save, provider))
    assert_one_line_refusal(code, err, "its scores for a grey image hold NaN", save)


def test_nan_weights_in_predict_mode_name_the_image(tmp_path, capsys):
    from models.deeplabv2 import get_deeplabv2

    net = get_deeplabv2(arch="deeplabv2_tiny")
    with torch.no_grad():
        net.layer5.conv2d_list[0].bias.fill_(float("nan"))
    weights = str(tmp_path / "nan.pth")
    torch.save(net.state_dict(), weights)
    data = folder_of(tmp_path / "data", ["only.png"])
    out = str(tmp_path / "predictions")
    code, err = run_refused(capsys, main_script.main, predict_argv(data, weights, out))
    assert code == 2 and err.count("\n") == 1 and "its scores for only hold NaN" in err, err
    assert not os.path.exists(os.path.join(out, "pictures", "only.png"))


# -- 3. tab, newline, carriage return in a name ------------------------------------------------------------

@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
@pytest.mark.parametrize("script", ["generate", "mine"])
def test_a_tab_or_line_break_in_a_name_is_refused_at_the_start(weights, tmp_path, capsys, char, script):
    data = folder_of(tmp_path / "data", ["a.png", f"sub/b{char}c.png"])
    save = str(tmp_path / "out")
    main = generate_pseudo_labels.main if script == "generate" else construct_hard_patch.main
    code, err = run_refused(capsys, main, stage_argv(data, save, weights))
    assert_one_line_refusal(code, err, repr(f"sub/b{char}c"), save)


# -- 4. --save inside the image folder ---------------------------------------------------------------------

@pytest.mark.parametrize("through_link", [False, True])
@pytest.mark.parametrize("script", ["generate", "mine"])
def test_save_inside_the_image_folder_is_refused(weights, tmp_path, capsys, through_link, script):
    data = folder_of(tmp_path / "data", ["a.png", "b.png"])
    if through_link:
        os.symlink(data, tmp_path / "link")
        save = str(tmp_path / "link" / "out")
    else:
        save = os.path.join(data, "out")
    main = generate_pseudo_labels.main if script == "generate" else construct_hard_patch.main
    code, err = run_refused(capsys, main, stage_argv(data, save, weights))
    assert_one_line_refusal(code, err, "is inside the image folder", save)


# -- 5. provider files that would exhaust the machine ------------------------------------------------------

def _model(path, nodes, initializers=(), sparse=()):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "p", [images], [scores], list(initializers), sparse_initializer=list(sparse))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _int64(name, values):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64,
                                                                              [len(values)], values))


def _loop(count, body_nodes, body_init=()):
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None)], list(body_init))
    return [helper.make_node("Constant", [], ["M"], value=helper.make_tensor("M", TensorProto.INT64, [], [count])),
            helper.make_node("Constant", [], ["T"], value=helper.make_tensor("T", TensorProto.BOOL, [], [True])),
            helper.make_node("Loop", ["M", "T", "images"], ["scores"], body=body)]


def exhausting(case, path):
    giant = 1 << 29  # float32 elements: 2 GiB
    if case == "constant-of-shape-2GiB":
        return _model(path, [_int64("shape", [giant]),
                             helper.make_node("ConstantOfShape", ["shape"], ["big"]),
                             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
                             helper.make_node("Add", ["images", "total"], ["scores"])])
    if case == "constant-of-shape-in-a-loop-body":
        body = [helper.make_node("Identity", ["cond_in"], ["cond_out"]), _int64("shape", [1 << 16, 1 << 15]),
                helper.make_node("ConstantOfShape", ["shape"], ["big"],
                                 value=helper.make_tensor("v", TensorProto.DOUBLE, [1], [1.0])),
                helper.make_node("Identity", ["x_in"], ["x_out"])]
        return _model(path, _loop(1, body))
    if case == "sparse-constant":
        values = helper.make_tensor("values", TensorProto.FLOAT, [1], [1.0])
        indices = helper.make_tensor("indices", TensorProto.INT64, [1], [0])
        sparse = helper.make_sparse_tensor(values, indices, [giant])
        return _model(path, [helper.make_node("Constant", [], ["big"], sparse_value=sparse),
                             helper.make_node("Identity", ["images"], ["scores"])])
    if case == "declared-initializer":
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[giant])
        return _model(path, [helper.make_node("Add", ["images", "w"], ["scores"])], [weight])
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["constant-of-shape-2GiB", "constant-of-shape-in-a-loop-body", "sparse-constant",
                                  "declared-initializer"])
def test_a_provider_declaring_gigabytes_is_refused_unread(tmp_path, capsys, case):
    provider = exhausting(case, str(tmp_path / f"{case}.onnx"))
    assert os.path.getsize(provider) < 4096
    data = folder_of(tmp_path / "data", ["a.png"])
    save = str(tmp_path / "out")
    code, err = run_refused(capsys, generate_pseudo_labels.main, stage_argv(data, save, provider))
    assert_one_line_refusal(code, err, "GiB a provider file may hold", save)
    assert provider in err


def test_a_provider_that_never_ends_is_stopped_by_the_time_limit(tmp_path, capsys, monkeypatch):
    import time

    import modules.providers

    monkeypatch.setattr(modules.providers, "RUN_SECONDS", 1.0)
    body = [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])]
    provider = _model(str(tmp_path / "loop.onnx"), _loop(10 ** 15, body))
    data = folder_of(tmp_path / "data", ["a.png"])
    save = str(tmp_path / "out")
    start = time.monotonic()
    code, err = run_refused(capsys, generate_pseudo_labels.main, stage_argv(data, save, provider))
    assert time.monotonic() - start < 30
    assert_one_line_refusal(code, err, "took longer than 1 s", save)


def test_ctrl_c_stops_a_provider_run_at_once(tmp_path):
    """onnxruntime does not hear Ctrl-C inside a run: the run is on a thread of its own and stopped."""
    import signal
    import threading
    import time

    from models.provider_files import open_provider_file

    body = [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])]
    provider = open_provider_file(_model(str(tmp_path / "loop.onnx"), _loop(10 ** 15, body)))
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        provider.run(torch.zeros(1, 3, 8, 8), time_limit=120)
    assert time.monotonic() - start < 30


def test_a_provider_slow_only_on_real_images_is_stopped_at_its_first_batch(tmp_path, capsys, monkeypatch):
    """Fast on the grey image of the first run, endless on any image brighter than it: every batch is
    bounded, not only the first run."""
    import modules.providers

    monkeypatch.setattr(modules.providers, "RUN_SECONDS", 2.0)
    weight = onnx.numpy_helper.from_array(np.full((19, 3, 1, 1), 0.01, np.float32), "weight")
    bright = onnx.numpy_helper.from_array(np.array(130, np.float32), "bright")  # the grey is at most 123
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["x_in"], ["x_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None)])
    endless = helper.make_graph(
        [helper.make_node("Constant", [], ["M"], value=helper.make_tensor("M", TensorProto.INT64, [], [10 ** 15])),
         helper.make_node("Constant", [], ["T"], value=helper.make_tensor("T", TensorProto.BOOL, [], [True])),
         helper.make_node("Loop", ["M", "T", "conv"], ["slow"], body=body)],
        "endless", [], [helper.make_tensor_value_info("slow", TensorProto.FLOAT, None)])
    at_once = helper.make_graph([helper.make_node("Identity", ["conv"], ["fast"])], "at_once", [],
                                [helper.make_tensor_value_info("fast", TensorProto.FLOAT, None)])
    provider = _model(str(tmp_path / "slow_on_images.onnx"), [
        helper.make_node("Conv", ["images", "weight"], ["conv"]),
        helper.make_node("ReduceMax", ["images"], ["max"], keepdims=0),
        helper.make_node("Greater", ["max", "bright"], ["is_bright"]),
        helper.make_node("If", ["is_bright"], ["scores"], then_branch=endless, else_branch=at_once)], [weight, bright])
    data = folder_of(tmp_path / "data", ["a.png"])
    save = str(tmp_path / "out")
    code, err = run_refused(capsys, generate_pseudo_labels.main, stage_argv(data, save, provider))
    assert_one_line_refusal(code, err, "a run on a 1×3×32×64 batch took longer than 2 s", save)


# -- 6. images and labels that declare too many pixels, labels of the wrong type ---------------------------

def png_header_only(width, height):
    """A PNG whose header declares ``width`` x ``height`` grey pixels, with a few bytes of data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(20000, 20000), (100000, 100000), (16385, 4)])
def test_an_image_declaring_too_many_pixels_is_one_line_before_anything(weights, tmp_path, capsys, width, height):
    data = folder_of(tmp_path / "data", ["a.png"])
    write_bytes(os.path.join(data, "z.png"), png_header_only(width, height))
    for main, argv, save in (
            (generate_pseudo_labels.main, stage_argv(data, str(tmp_path / "g"), weights), str(tmp_path / "g")),
            (construct_hard_patch.main, stage_argv(data, str(tmp_path / "m"), weights), str(tmp_path / "m")),
            (main_script.main, predict_argv(data, weights, str(tmp_path / "p")), str(tmp_path / "p"))):
        code, err = run_refused(capsys, main, argv)
        assert_one_line_refusal(code, err, "image too large", save)
    for read in (read_image_bgr, read_label):
        with pytest.raises(UserError, match="too large"):
            read(os.path.join(data, "z.png"))


def float_tiff(dtype):
    buffer = io.BytesIO()
    Image.fromarray((scene()[0] % 19).astype(dtype)).save(buffer, format="TIFF")
    return buffer.getvalue()


def hand_made_labels(tmp_path, data, bad):
    """Pseudo-labels made by hand for the images of ``data``: the first one replaced by ``bad`` bytes."""
    labels = tmp_path / "labels"
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(data))
    for name in names[1:]:
        write_image(str(labels / f"{name}.png"), scene()[0])
    write_bytes(str(labels / f"{names[0]}.png"), bad)
    return str(labels), names[0]


@pytest.mark.parametrize("bad", ["float32", "int32", "huge"])
def test_pseudo_labels_of_the_wrong_kind_are_one_line_in_mining_and_training(tmp_path, capsys, bad):
    data = folder_of(tmp_path / "data", ["a.png", "b.png", "c.png"])
    content = png_header_only(20000, 20000) if bad == "huge" else float_tiff(bad)
    labels, name = hand_made_labels(tmp_path, data, content)
    expected = "too large" if bad == "huge" else f"holds {bad} values"
    save = str(tmp_path / "out")
    for rare in ("gta5", "auto"):  # mining straight away, or counting class pixels first
        argv = ["--target-dataset", "folder", "--data-dir", data, "--pseudo-label-root", labels, "--save", save,
                "--rare-classes", rare, *COMMON]
        code, err = run_refused(capsys, construct_hard_patch.main, argv)
        assert_one_line_refusal(code, err, expected, save)
    if bad != "huge":  # what training reads: the pseudo-label dataset
        dataset = TargetDataset(make_target("folder", data), "train", input_size=SIZE, pseudo_label_root=labels)
        with pytest.raises(UserError, match=expected) as info:
            dataset[dataset.names.index(name)]
        assert name in str(info.value) and "\n" not in str(info.value)
