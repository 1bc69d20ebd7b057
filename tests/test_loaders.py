"""utils/loaders.py: the default worker count from the cores (a typed value wins, in every entry point)
and the DataLoader settings the training data module and the data stages share."""
import os
from types import SimpleNamespace

import pytest
import torch

import construct_hard_patch
import generate_pseudo_labels
from main import parse_args
from modules.config import build_parser
from modules.data import SegmentationDataModule
from modules.prediction import PredictionData
from tests.fixtures import make_cityscapes
from utils.loaders import MAX_WORKERS, default_num_workers, loader_kwargs


@pytest.fixture
def cores(monkeypatch):
    """Pretend this process may run on ``n`` cores."""
    def set_cores(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return set_cores


@pytest.mark.parametrize("count, processes, expected", [
    (16, 1, 8), (6, 1, 6), (16, 2, 8), (16, 4, 4), (12, 8, 1), (4, 8, 1), (1, 1, 1), (64, 1, MAX_WORKERS)])
def test_default_workers_share_the_cores_among_the_devices(cores, count, processes, expected):
    cores(count)
    assert default_num_workers(processes) == expected
    assert default_num_workers(processes, cores=count) == expected


def fake_trainer(devices, device_type):
    return SimpleNamespace(num_devices=devices, strategy=SimpleNamespace(root_device=torch.device(device_type)))


def test_loader_settings(cores):
    cores(6)
    cpu = loader_kwargs(None, fake_trainer(2, "cpu"), repeated=True)
    assert cpu == {"num_workers": 3, "pin_memory": False, "persistent_workers": True, "prefetch_factor": 2}
    cuda = loader_kwargs(None, fake_trainer(1, "cuda"))
    assert cuda["num_workers"] == 6 and cuda["pin_memory"] and not cuda["persistent_workers"]
    # A typed value wins; with 0 workers there is nothing to keep alive or prefetch.
    assert loader_kwargs(0, fake_trainer(1, "cpu"), repeated=True) == {"num_workers": 0, "pin_memory": False}
    # At least four batches queued in all: a single worker prefetches four.
    assert loader_kwargs(1)["prefetch_factor"] == 4 and loader_kwargs(2)["prefetch_factor"] == 2
    assert loader_kwargs(None)["pin_memory"] == torch.cuda.is_available()  # outside a run


def test_every_entry_point_leaves_the_count_to_the_cores_unless_typed(cores, tmp_path):
    cores(5)
    assert parse_args(["--module-name", "basic"]).data.num_workers is None
    assert parse_args(["--module-name", "basic", "--num-workers", "0"]).data.num_workers == 0
    for script in (generate_pseudo_labels, construct_hard_patch):
        parser = script.build_parser()
        assert parser.parse_args([]).num_workers is None
        assert parser.parse_args(["--num-workers", "2"]).num_workers == 2
        assert "5 here with one device" in " ".join(parser.format_help().split())


def test_the_loaders_of_a_run(cores, tmp_path):
    cores(4)
    tree = make_cityscapes(str(tmp_path / "cs"), train=2, val=2, size=(64, 32))
    argv = ["--module-name", "basic", "--image-root", tree["image_root"], "--label-root", tree["label_root"],
            "--input-size", "32x16", "--train-batch-size", "2", "--log-tb-dir", str(tmp_path / "exp")]
    data = SegmentationDataModule(parse_args(argv), "labels")
    data.check("fit")
    val = data.val_dataloader()
    assert val.num_workers == 4 and val.persistent_workers and not val.pin_memory and val.prefetch_factor == 2
    train = data.train_dataloader()["target"]
    assert train.num_workers == 4 and train.persistent_workers
    typed = SegmentationDataModule(parse_args([*argv, "--num-workers", "0"]), "labels")
    typed.check("fit")
    assert typed.val_dataloader().num_workers == 0
    dataset = data._dataset("eval")
    once = PredictionData(dataset, dataset.names, batch_size=1, num_workers=None).predict_dataloader()
    assert once.num_workers == 4 and not once.persistent_workers  # one pass


def test_main_help_states_how_the_default_resolves(cores):
    cores(3)
    text = " ".join(build_parser("basic").format_help().split())
    assert f"at most {MAX_WORKERS}, at least 1: 3 here with one device" in text
