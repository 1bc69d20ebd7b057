"""Hostile inputs, security: a weight, checkpoint or cache file is data and never runs code.

Every entry point that reads a file the user names is given crafted pickles that would run code
on a full unpickler (also ones carrying Lightning's checkpoint marker, which once opened a fall-back
to the full unpickler). Nothing may run: the sentinel folder the payload would create must not
appear, and the command ends with one line naming the file and exit code 2.
"""
import argparse
import io
import os
import pickle
import zipfile

import pytest
import torch

import construct_hard_patch
import extract_model_state_dict
import generate_pseudo_labels
import main as main_script
from models.deeplabv2 import extract_state_dict, get_deeplabv2, load_weights, read_weight_file
from tests.fixtures import make_cityscapes, make_pseudo_labels
from utils.cli import run
from utils.torch_files import HyperParameters, TorchFileError, load_torch_file


class Payload:
    """Creates ``sentinel`` when unpickled by a full unpickler: proof that the file ran code."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.makedirs, (self.sentinel,)


def tiny_state():
    torch.manual_seed(0)
    return get_deeplabv2(num_classes=19, arch="deeplabv2_tiny").state_dict()


def crafted_files(folder):
    """``{name: (path, sentinel)}``: files whose unpickling with the full unpickler runs code."""
    state = tiny_state()
    files = {}

    def add(name, obj, **save_kwargs):
        path, sentinel = os.path.join(folder, name), os.path.join(folder, name + ".ran")
        if callable(obj):
            obj = obj(Payload(sentinel))
        if save_kwargs.get("raw"):
            with open(path, "wb") as f:
                f.write(pickle.dumps(obj, protocol=2))
        else:
            torch.save(obj, path, **save_kwargs)
        files[name] = (path, sentinel)

    # A Lightning-looking checkpoint: marker, state dict and a payload beside them.
    add("lightning.ckpt", lambda p: {"pytorch-lightning_version": "2.6.0", "state_dict": dict(state),
                                     "loops": {}, "evil": p})
    # The payload hidden inside the hyper-parameters older checkpoints keep as a Namespace.
    add("namespace.ckpt", lambda p: {"pytorch-lightning_version": "1.9.0", "state_dict": dict(state),
                                     "hyper_parameters": argparse.Namespace(lr=1e-4, callback=p)})
    # A plain state dict with the payload as one of its values.
    add("state.pth", lambda p: {**state, "layer1.0.conv1.weight": p})
    # The payload alone, in the legacy (pre-zip) torch format and as a bare pickle.
    add("legacy.pth", lambda p: p, _use_new_zipfile_serialization=False)
    add("bare.pkl", lambda p: p, raw=True)
    return files


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    return crafted_files(str(tmp_path_factory.mktemp("crafted")))


def test_crafted_files_would_run_code_on_a_full_unpickler(tmp_path):
    # The control: without the restricted reader, each crafted file does run its payload.
    for name, (path, sentinel) in crafted_files(str(tmp_path)).items():
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            pass
        assert os.path.isdir(sentinel), name


@pytest.mark.parametrize("name", ["lightning.ckpt", "namespace.ckpt", "state.pth", "legacy.pth", "bare.pkl"])
def test_reader_refuses_code_and_names_the_file(crafted, name):
    path, sentinel = crafted[name]
    for read in (lambda: load_torch_file(path), lambda: load_torch_file(path, mmap=True),
                 lambda: read_weight_file(path), lambda: extract_state_dict(path),
                 lambda: load_weights(get_deeplabv2(num_classes=19, arch="deeplabv2_tiny"), path)):
        with pytest.raises(TorchFileError) as info:
            read()
        assert path in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(sentinel)


def test_refusal_names_the_type_the_file_wanted(crafted):
    path, _ = crafted["lightning.ckpt"]
    with pytest.raises(TorchFileError, match=r"asks for Python code .*\(os\.makedirs\); refused without running anything"):
        load_torch_file(path)


def test_hyper_parameter_containers_are_read_as_plain_data(tmp_path):
    state = tiny_state()
    path = str(tmp_path / "old.ckpt")
    torch.save({"state_dict": {"net." + k: v for k, v in state.items()},
                "hyper_parameters": argparse.Namespace(lr=1e-4, input_size=(1024, 512))}, path)
    loaded = load_torch_file(path)
    hparams = loaded["hyper_parameters"]
    assert type(hparams) is HyperParameters and hparams == {"lr": 1e-4, "input_size": (1024, 512)}
    assert set(read_weight_file(path)) == set(state)


def test_broken_files_are_one_line(tmp_path):
    state_path = str(tmp_path / "good.pth")
    torch.save(tiny_state(), state_path)
    data = open(state_path, "rb").read()
    cases = {"truncated.pth": data[: len(data) // 2], "text.pth": b"not a checkpoint\n", "empty.pth": b"",
             "zip.pth": _zip_without_pickle()}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(TorchFileError, match=f"not a PyTorch weight file.*{name}$"):
            load_torch_file(str(path))
    with pytest.raises(TorchFileError, match="weight file not found"):
        load_torch_file(str(tmp_path / "absent.pth"))


def _zip_without_pickle():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/readme.txt", "hello")
    return buffer.getvalue()


# -- through every entry point that reads a file ------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    tree = make_cityscapes(str(root / "cs"), train=2, val=1, size=(64, 32))
    tree["data"] = str(root / "cs")
    tree["pseudo"] = make_pseudo_labels(str(root / "pseudo"), tree["label_root"])
    tree["lists"] = str(root / "lists")  # no <split>.txt in it: the image folders are scanned
    os.makedirs(tree["lists"])
    return tree


def run_entry(capsys, main, argv):
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    return exit_info.value.code, capsys.readouterr().err


def entry_points(world, path, out):
    tiny = ["--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu",
            "--devices", "1"]
    data = ["--image-root", world["image_root"], "--label-root", world["label_root"],
            "--list-root", world["lists"]]
    return {
        "main.py --restore-from": (main_script.main, ["--module-name", "basic", "--restore-from", path,
                                                      "--log-tb-dir", out, *tiny, *data]),
        "main.py --mode test --restore-from": (main_script.main, ["--mode", "test", "--restore-from", path,
                                                                  "--log-tb-dir", out, *tiny, *data]),
        "main.py --resume": (main_script.main, ["--module-name", "basic", "--resume", path, "--log-tb-dir", out,
                                                *tiny, *data]),
        "generate_pseudo_labels.py --restore-from": (generate_pseudo_labels.main, [
            "--data-dir", world["data"], "--restore-from", path, "--save", os.path.join(out, "pl"), *tiny]),
        "construct_hard_patch.py --restore-from": (construct_hard_patch.main, [
            "--data-dir", world["data"], "--restore-from", path, "--save", os.path.join(out, "hp"),
            "--rare-classes", "6,7", *tiny]),
        "extract_model_state_dict.py --pl-weight-path": (extract_model_state_dict.main, [
            "--pl-weight-path", path, "--save-path", os.path.join(out, "x.pth")]),
    }


@pytest.mark.parametrize("name", ["lightning.ckpt", "namespace.ckpt", "legacy.pth"])
def test_no_entry_point_runs_a_crafted_file(world, crafted, name, tmp_path, capsys):
    path, sentinel = crafted[name]
    for entry, (main, argv) in entry_points(world, path, str(tmp_path / "out")).items():
        code, err = run_entry(capsys, main, argv)
        assert code == 2, (entry, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and path in err, (entry, err)
        assert not os.path.exists(sentinel), entry
    assert not os.path.exists(tmp_path / "out" / "x.pth")


def test_image_cache_entry_holding_a_pickle_runs_nothing(tmp_path):
    # A cache entry is an .npz the cache reads with numpy's pickle-free reader: one holding a pickled
    # object is treated as damaged and the image is read again from its PNG.
    import cv2
    import numpy as np

    from utils.image_cache import ResizedImageCache

    image_path = str(tmp_path / "a.png")
    cv2.imwrite(image_path, np.full((8, 16, 3), 7, np.uint8))
    cache = ResizedImageCache(str(tmp_path / "cache"))
    entry = cache.entry_path(image_path, (16, 8), "pil")
    os.makedirs(os.path.dirname(entry))
    sentinel = str(tmp_path / "cache.ran")
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(sentinel)
    np.savez(entry, image=payload, shape=np.asarray([8, 16]))
    with pytest.raises(ValueError):
        np.load(entry)["image"]  # the control: numpy refuses the pickle by default
    reads = []

    def read(path):
        reads.append(path)
        return np.full((8, 16, 3), 7, np.uint8), (8, 16)

    image, shape = cache.load(image_path, (16, 8), "pil", read)
    assert reads == [image_path] and shape == (8, 16) and int(image[0, 0, 0]) == 7
    assert not os.path.exists(sentinel)
