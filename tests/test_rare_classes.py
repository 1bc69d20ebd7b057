"""The rare-class options (docs/method.md, "Rare classes"): each on a constructed case where its
meaning can be checked exactly, and each stage option in a short training run on tiny data."""
import os

import numpy as np
import pytest
import torch

from main import parse_args
from modules import runner
from tests.fixtures import make_cityscapes, make_patches, make_pseudo_labels
from utils.cli import UserError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    paths = make_cityscapes(str(root / "cs"), train=4, val=2)
    paths["pseudo"] = make_pseudo_labels(str(root / "pseudo"), paths["label_root"])
    paths["patches"] = make_patches(str(root / "patches"))
    paths["list_root"] = str(root / "lists")  # empty: the image folders are scanned
    os.makedirs(paths["list_root"])
    from tests.fixtures import tiny_weights
    paths["weights"] = tiny_weights(str(root / "init.pth"))
    return paths


def stage_args(tree, tmp_path, module, *extra):
    return parse_args(["--module-name", module, "--image-root", tree["image_root"], "--label-root", tree["label_root"],
                       "--list-root", tree["list_root"], "--arch", "deeplabv2_tiny", "--input-size", "64x32",
                       "--log-tb-dir", str(tmp_path / "exp"), "--num-workers", "0", "--accelerator", "cpu",
                       "--devices", "1", "--train-batch-size", "2", "--max-steps", "2", "--val-interval", "2",
                       "--visualize-interval", "0", "--experiment-name", "t", "--restore-from", tree["weights"],
                       *map(str, extra)])


# -- a teacher without dropout --------------------------------------------------------------------------

def test_teacher_passes_agree_without_dropout_and_batchnorm_keeps_batch_statistics(tree, tmp_path):
    from models.networks import get_network
    from modules.spatial_mix import SpatialMixModule

    weights = str(tmp_path / "segformer.pth")
    torch.manual_seed(0)
    torch.save(get_network("segformer_b0", 19).state_dict(), weights)
    images = torch.randn(2, 3, 32, 64) * 50
    passes = {}
    for flags in ([], ["--teacher-dropout"]):
        config = stage_args(tree, tmp_path, "spatial_mix", "--arch", "segformer_b0", "--restore-from", weights, *flags)
        module = SpatialMixModule(config).train()  # as Lightning leaves it after a validation
        with torch.no_grad():
            passes[bool(flags)] = module.teacher_logits(images), module.teacher_logits(images)
        norms = [m for m in module.ema_net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(m.training for m in norms)  # batch statistics, as published
    assert torch.equal(*passes[False])
    assert not torch.equal(*passes[True])  # the published module mode: drop-path draws anew each pass
