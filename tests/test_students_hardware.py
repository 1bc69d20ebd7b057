"""The students (segformer_b0, deeplabv3plus_r50) on the hardware settings.

- Two CPU processes (gloo) under ``--strategy ddp``, through main.py's ``main`` (``tests/ddp_run.py``):
  an smhm run of two steps (EMA teacher, SpatialMix, hard patches) whose student and teacher end
  identical on both ranks, every parameter moved, different hard patches per rank, BatchNorm
  statistics kept under ``--freeze-bn-stats`` while its affine parameters train; then test mode,
  scoring as one process does. One launch runs both students, train and test (a launch costs two
  interpreters importing everything).
- The SyncBatchNorm conversion Lightning applies under ``--sync-batchnorm`` (GPUs only): the students'
  BatchNorms (DeepLabV3+ everywhere, SegFormer's fuse layer) become SyncBatchNorm, the MiT encoder's
  LayerNorms stay, the state dict keeps its keys.
- ``--precision bf16-mixed`` on CPU: smhm steps run the networks in bf16 with finite losses, the
  weights (student and EMA teacher) stay fp32 and move; test mode scores as fp32 does, within bf16's
  rounding.
"""
import csv
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import Callback

from main import parse_args
from models.networks import get_network
from modules import runner
from tests.ddp_run import digests
from tests.fixtures import make_cityscapes, make_patches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("segformer_b0", "deeplabv3plus_r50")
# Each student with its own recipe. Two warm-up steps would move no LayerNorm weight (the rate starts
# at 1e-6 of --lr), so SegFormer trains at a constant rate; DeepLabV3+ freezes its BatchNorm statistics.
RECIPES = {
    "segformer_b0": ["--optimizer", "adamw", "--lr", "6e-5", "--lr-schedule", "constant"],
    "deeplabv3plus_r50": ["--optimizer", "sgd", "--lr", "1e-3", "--freeze-bn-stats"],
}
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("student_hardware")
    paths = make_cityscapes(str(root / "cs"), train=4, val=3)  # 64x32; 3 val images: shards of 2 and 1
    paths["patches"] = make_patches(str(root / "patches"), count=8)  # 16x8: padded inside the students
    paths["list_root"] = str(root / "lists")
    os.makedirs(paths["list_root"])
    for arch in ARCHS:
        torch.manual_seed(0)
        paths[arch] = str(root / f"{arch}.pth")
        torch.save(get_network(arch).state_dict(), paths[arch])
    return paths


def argv(tree, out, arch, *extra):
    return ["--arch", arch, "--image-root", tree["image_root"], "--label-root", tree["label_root"],
            "--list-root", tree["list_root"], "--input-size", "64x32", "--log-tb-dir", str(out), "--num-workers", "0",
            "--accelerator", "cpu", "--train-batch-size", "2", "--test-batch-size", "2", "--log-interval", "1",
            "--visualize-interval", "0", *extra]


def smhm_argv(tree, out, arch, *extra):
    return argv(tree, out, arch, "--module-name", "smhm", "--restore-from", tree[arch], "--hard-patches-root",
                tree["patches"], "--confidence-threshold", "0", "--max-steps", "2", "--val-interval", "2",
                "--experiment-name", arch, *RECIPES[arch], *extra)


def eval_argv(tree, out, arch, restore_from, *extra):
    return argv(tree, out, arch, "--module-name", "basic", "--mode", "test", "--restore-from", restore_from,
                "--experiment-name", f"test_{arch}", *extra)


# -- two processes -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp(tree, tmp_path_factory):
    """One ``--strategy ddp`` launch on two CPU processes: per student an smhm run, then test mode on its
    last checkpoint. Returns ``{arch: (train entries, test entries)}``, each a list of the two ranks'."""
    out = tmp_path_factory.mktemp("ddp")
    runs = []
    for arch in ARCHS:
        runs.append(smhm_argv(tree, out, arch, "--devices", "2", "--strategy", "ddp"))
        last = os.path.join(str(out), "smhm", arch, "last.ckpt")
        runs.append(eval_argv(tree, out, arch, last, "--devices", "2", "--strategy", "ddp"))
    with open(out / "runs.json", "w") as f:
        json.dump(runs, f)
    # Lightning launches the second process itself, as on a workstation: no rank or cluster settings inherited.
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT") and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "ddp_run.py"), str(out / "runs.json"), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.load(open(out / f"rank{r}.json")) for r in range(2)]
    assert [entry["rank"] for entry in ranks[0]] == [0] * len(runs) and [e["rank"] for e in ranks[1]] == [1] * len(runs)
    assert all(entry["world_size"] == 2 for rank in ranks for entry in rank)
    return {arch: ([rank[2 * k] for rank in ranks], [rank[2 * k + 1] for rank in ranks]) for k, arch in enumerate(ARCHS)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_two_process_smhm(ddp, tree, arch):
    ranks, _ = ddp[arch]
    result = ranks[0]["result"]
    assert os.path.isfile(result["best_checkpoint"]) and np.isfinite(result["best_score"])
    assert ranks[1]["result"]["best_score"] == result["best_score"]  # the confusion matrices are summed
    checkpoint = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    with open(os.path.join(result["experiment_dir"], "miou_record.csv")) as f:
        assert len(list(csv.reader(f))) == 2  # the header and the one validation, written once

    # No SyncBatchNorm on CPU (PyTorch's runs on GPUs only): the norm layers are the networks' own.
    expected = {"LayerNorm", "BatchNorm2d"} if arch.startswith("segformer") else {"BatchNorm2d"}
    for rank in ranks:
        assert {net: set(norms) for net, norms in rank["norms"].items()} == {"net": expected, "ema_net": expected}
    if arch.startswith("segformer"):
        assert ranks[0]["norms"]["net"]["BatchNorm2d"] == 1  # the fuse layer of the head

    # Both ranks start from the file, student and teacher alike, and end identical: parameters by the
    # averaged gradients, buffers (BatchNorm statistics) by DDP's broadcast from rank 0.
    start = digests(get_network(arch, restore_from=tree[arch]))
    for rank in ranks:
        assert rank["start"] == {"net": start, "ema_net": start}
    assert ranks[0]["end"] == ranks[1]["end"]
    end, teacher = ranks[0]["end"]["net"], ranks[0]["end"]["ema_net"]
    net = get_network(arch)
    parameters = [name for name, _ in net.named_parameters()]
    statistics = [name for name, _ in net.named_buffers() if name.endswith(BN_STATISTICS)]
    assert statistics  # both students have BatchNorm
    assert [name for name in parameters if end[name] == start[name]] == []  # every parameter trained
    assert [name for name in parameters if teacher[name] == start[name]] == []  # the teacher followed
    assert sum(teacher[name] == end[name] for name in parameters) == 0  # ...by EMA: no copy at step 2
    if "--freeze-bn-stats" in RECIPES[arch]:
        assert [name for name in statistics if end[name] != start[name]] == []
        affine = [name for name in parameters if f"{name.rsplit('.', 1)[0]}.running_mean" in statistics]
        assert affine and all(end[name] != start[name] for name in affine)  # while the affine parameters train
    else:
        assert [name for name in statistics if end[name] == start[name]] == []

    # Different hard patches on the two ranks at every step.
    assert len(ranks[0]["patches"]) == 2
    for step0, step1 in zip(ranks[0]["patches"], ranks[1]["patches"]):
        assert len(step0) == 2 and not set(step0) & set(step1)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_two_process_test_mode_scores_as_one(ddp, tree, tmp_path, arch):
    train, ranks = ddp[arch]
    one = runner.test(parse_args(eval_argv(tree, tmp_path, arch, train[0]["result"]["last_checkpoint"], "--devices", "1")))
    assert np.isfinite(one["miou"])
    for rank in ranks:  # every rank reports the scores of all three images
        assert rank["result"]["per_class"] == pytest.approx(one["per_class"], nan_ok=True, abs=1e-9)
        assert rank["result"]["miou"] == pytest.approx(one["miou"], abs=1e-9)


# -- SyncBatchNorm -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_sync_batchnorm_converts_only_the_batchnorms(tree, tmp_path, arch):
    from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm

    module = runner.MODULES["smhm"](parse_args(smhm_argv(tree, tmp_path, arch, "--freeze-bn-stats")))
    before = {net: [(name, type(m)) for name, m in getattr(module, net).named_modules()] for net in ("net", "ema_net")}
    shapes = {k: v.shape for k, v in module.state_dict().items()}
    module = TorchSyncBatchNorm().apply(module)  # what Lightning does under DDP with --sync-batchnorm
    for net, layers in before.items():
        after = dict(getattr(module, net).named_modules())
        bns = [name for name, kind in layers if issubclass(kind, torch.nn.modules.batchnorm._BatchNorm)]
        assert bns and all(type(after[name]) is torch.nn.SyncBatchNorm for name in bns)
        assert all(type(after[name]) is kind for name, kind in layers if name not in bns)
        if arch.startswith("segformer"):  # LayerNorm (SMP's subclass) in the encoder, one BatchNorm in the head
            assert bns == ["model.decoder.fuse_stage.1"]
            assert sum(issubclass(kind, torch.nn.LayerNorm) for _, kind in layers) == 30
    assert {k: v.shape for k, v in module.state_dict().items()} == shapes
    module.train()  # --freeze-bn-stats holds for the synchronised layers
    assert not any(m.training for m in module.net.modules() if isinstance(m, torch.nn.SyncBatchNorm))
    assert module.net.model.encoder.training


# -- bf16 ------------------------------------------------------------------------------------------------

class RecordSteps(Callback):
    def __init__(self):
        self.losses, self.logit_dtypes = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.logit_dtypes.append(outputs["picture"][2].dtype)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_mixed_smhm_steps(tree, tmp_path, arch):
    args = parse_args(smhm_argv(tree, tmp_path, arch, "--devices", "1", "--precision", "bf16-mixed"))
    with runner.holding_outputs(args):
        module, data, _ = runner.build(args)
        trainer = runner.build_trainer(args)
        steps = RecordSteps()
        trainer.callbacks.append(steps)
        trainer.fit(module, datamodule=data)
    assert steps.logit_dtypes == [torch.bfloat16] * 2  # the student ran under bf16 autocast
    assert len(steps.losses) == 2 and all(np.isfinite(steps.losses)) and steps.losses[0] > 0
    assert np.isfinite(trainer.checkpoint_callback.best_model_score.item())

    # The weights stay fp32, student and EMA teacher, in memory and in the checkpoint, and all moved.
    start = get_network(arch, restore_from=tree[arch]).state_dict()
    for net in (module.net, module.ema_net):
        state = net.state_dict()
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
        assert [k for k, _ in net.named_parameters() if torch.equal(state[k], start[k])] == []
    saved = torch.load(os.path.join(args.experiment_dir, "last.ckpt"), map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and any(k.startswith("ema_net.") for k in saved["state_dict"])
    assert {v.dtype for v in saved["state_dict"].values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_mixed_test_mode_predicts_as_fp32(tree, tmp_path, arch):
    predictions, scores = {}, {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        scores[precision] = runner.test(parse_args(eval_argv(tree, out, arch, tree[arch], "--devices", "1", "--precision",
                                                             precision, "--save-predictions", str(out / "png"))))
        files = sorted(glob.glob(str(out / "png" / "train_ids" / "**" / "*.png"), recursive=True))
        predictions[precision] = {os.path.relpath(f, out): cv2.imread(f, cv2.IMREAD_UNCHANGED) for f in files}
    fp32, bf16 = predictions["32-true"], predictions["bf16-mixed"]
    assert len(fp32) == 3 and fp32.keys() == bf16.keys()
    for name in fp32:  # bf16 rounding flips the argmax of a few near-tied pixels at most
        assert fp32[name].shape == (32, 64) and (fp32[name] == bf16[name]).mean() >= 0.98, name
    assert np.isfinite(scores["bf16-mixed"]["miou"])
    assert scores["bf16-mixed"]["miou"] == pytest.approx(scores["32-true"]["miou"], abs=1.0)
