"""Two CPU processes (gloo): every val image counted once with the single-process mIoU, hard
patches differ across ranks, and the EMA teacher stays identical on every rank."""
import csv
import json
import os

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from main import parse_args
from modules import runner
from tests.fixtures import make_cityscapes, make_patches


class RecordPerRank(Callback):
    """Writes, per rank, the evaluated image names, the patch names of each step and a teacher digest."""

    def __init__(self, folder):
        self.folder = folder
        self.seen = {"test": [], "patches": []}

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen["test"] += batch["name"]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen["patches"].append(batch["patches"]["name"])

    def _dump(self, trainer, module):
        if hasattr(module, "ema_net"):
            self.seen["teacher"] = [float(p.double().sum()) for p in module.ema_net.parameters()]
        with open(os.path.join(self.folder, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.seen, f)

    on_train_end = _dump
    on_test_end = _dump


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    paths = make_cityscapes(str(root / "cs"), train=4, val=3)  # 3 val images: padding would repeat one
    paths["patches"] = make_patches(str(root / "patches"), count=8)
    from models.deeplabv2 import get_deeplabv2
    paths["weights"] = str(root / "w.pth")
    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), paths["weights"])
    return paths


def run(tree, folder, module, mode, devices):
    os.makedirs(folder, exist_ok=True)
    args = parse_args([
        "--module-name", module, "--mode", mode, "--restore-from", tree["weights"],
        "--image-root", tree["image_root"], "--label-root", tree["label_root"], "--list-root", str(folder),
        *(["--hard-patches-root", tree["patches"]] if module == "smhm" else []), "--arch", "deeplabv2_tiny", "--input-size", "64x32",
        "--log-tb-dir", str(folder), "--num-workers", "0", "--accelerator", "cpu", "--devices", str(devices),
        "--strategy", "ddp_spawn" if devices > 1 else "auto", "--train-batch-size", "2", "--max-steps", "2",
        "--val-interval", "2", "--test-batch-size", "2", "--visualize-interval", "0"])
    module_, data, _ = runner.build(args)
    trainer = runner.build_trainer(args)
    trainer.callbacks.append(RecordPerRank(str(folder)))
    if mode == "test":
        trainer.test(module_, datamodule=data, verbose=False)
    else:
        trainer.fit(module_, datamodule=data)
    ranks = [json.load(open(os.path.join(folder, f"rank{r}.json"))) for r in range(devices)]
    with open(os.path.join(args.experiment_dir, "miou_record.csv")) as f:
        return ranks, list(csv.reader(f))[1:]


@pytest.mark.slow
def test_two_process_evaluation_counts_each_image_once(tree, tmp_path):
    ranks, record2 = run(tree, tmp_path / "two", "basic", "test", 2)
    _, record1 = run(tree, tmp_path / "one", "basic", "test", 1)
    names = ranks[0]["test"] + ranks[1]["test"]
    assert sorted(names) == sorted(set(names)) and len(names) == 3
    assert record2 == record1


@pytest.mark.slow
def test_two_process_smhm_patches_differ_and_teacher_identical(tree, tmp_path):
    ranks, record = run(tree, tmp_path / "smhm", "smhm", "train", 2)
    assert len(record) == 1
    for step0, step1 in zip(ranks[0]["patches"], ranks[1]["patches"]):
        assert not set(step0) & set(step1)
    assert len(ranks[0]["patches"]) == 2
    assert ranks[0]["teacher"] == ranks[1]["teacher"]
