"""Label maps made elsewhere (a web service's output) are a first-class input: from a folder of label
PNGs alone, with neither the state nor the summary of generate_pseudo_labels.py and no provider
weights anywhere, baseline trains, hard patches are mined and smhm trains on them (README, "The
provider as a file you only run, or only its label maps"), also after the easy/hard lists were
written into it from the service's confidence maps (tools/rank_label_maps.py).
"""
import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import construct_hard_patch
import extract_model_state_dict
import main
from datasets.pixels import resize_label
from tests.fixtures import make_cityscapes
from tools import rank_label_maps
from utils.cli import run
from utils.labels import colorize

SUFFIX = "_gtFine_labelIds.png"


def run_script(entry, argv):
    with pytest.raises(SystemExit) as exit_info:
        run(entry, argv)
    return exit_info.value.code


def service_labels(label_root, folder):
    """What a segmentation service might return: ``<city>/<stem>_gtFine_labelIds.png`` as palette PNGs
    (train ids as indices, the Cityscapes colours as palette) at the image's size (128x64, twice the
    input size), with an ignored band."""
    written = {}
    for path in sorted(glob.glob(os.path.join(label_root, "train", "*", "*" + SUFFIX))):
        label = np.array(Image.open(path))
        label[:2] = 255
        image = Image.fromarray(label, mode="P")
        palette = np.zeros((256, 3), np.uint8)
        palette[:19] = colorize(np.arange(19, dtype=np.uint8)[None])[0]
        image.putpalette(palette.ravel().tolist())
        rel = os.path.relpath(path, os.path.join(label_root, "train"))
        os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
        image.save(os.path.join(folder, rel))
        written[rel[:-len(SUFFIX)]] = label
    return written


def test_baseline_mining_and_smhm_run_from_label_pngs_alone(tmp_path, capsys):
    data = make_cityscapes(str(tmp_path / "cs"), train=4, val=2, size=(128, 64))
    service = str(tmp_path / "service")
    labels = service_labels(data["label_root"], service)
    assert not os.path.exists(os.path.join(service, ".state")) and not os.path.exists(os.path.join(service,
                                                                                                    "summary.json"))
    # 2'. the easy/hard split from the service's confidence maps (16-bit grey PNGs, same relative
    # paths): the two lists are written into the folder, which every stage below still takes as it is
    confidence = tmp_path / "confidence"
    for k, name in enumerate(sorted(labels)):
        os.makedirs(confidence / os.path.dirname(name), exist_ok=True)
        Image.fromarray(np.full((64, 128), 60000 - 10000 * k, np.uint16)).save(confidence / (name + SUFFIX))
    assert run_script(rank_label_maps.main, ["--pseudo-label-root", service, "--confidence-root", str(confidence),
                                             "--num-workers", "0"]) == 0
    easy = [line.split()[0] for line in open(os.path.join(service, "easy.txt"))]
    assert easy == sorted(labels)[:2] and not os.path.exists(os.path.join(service, "summary.json"))
    init = str(tmp_path / "init.pth")
    torch.manual_seed(0)
    from models.deeplabv2 import get_deeplabv2

    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), init)  # stands in for the ImageNet init
    lists = tmp_path / "lists"
    lists.mkdir()
    common = ["--image-root", data["image_root"], "--label-root", data["label_root"], "--list-root", str(lists),
              "--arch", "deeplabv2_tiny", "--input-size", "64x32", "--log-tb-dir", str(tmp_path / "exp"),
              "--num-workers", "0", "--accelerator", "cpu", "--devices", "1", "--train-batch-size", "2",
              "--max-steps", "2", "--val-interval", "2", "--log-interval", "1", "--experiment-name", "service"]

    # 3. baseline, distilled from the service's label maps
    baseline = main.main([*common, "--module-name", "baseline", "--mode", "train", "--restore-from", init,
                          "--pseudo-label-root", service])
    assert os.path.isfile(baseline["best_checkpoint"])
    student = str(tmp_path / "basic.pth")
    assert run_script(extract_model_state_dict.main, ["--pl-weight-path", baseline["best_checkpoint"],
                                                      "--save-path", student]) == 0

    # 5. hard patches mined from the label maps alone: the patch labels are the service's labels
    patches = tmp_path / "patches"
    assert run_script(construct_hard_patch.main, [
        "--image-root", data["image_root"], "--list-root", str(lists), "--pseudo-label-root", service,
        "--input-size", "64x32", "--num-workers", "0", "--rare-classes", "auto", "--num-rare", "3",
        "--save", str(patches)]) == 0
    summary = json.loads((patches / "summary.json").read_text())
    assert summary["patches"] > 0 and summary["labels"]["pseudo_label_root"] == os.path.abspath(service)
    rare = set(summary["rare_classes"]["train_ids"])
    for name in sorted(os.listdir(patches / "labels")):
        stem, k = name[:-len(".png")].rsplit("_", 1)
        (label,) = [v for c, v in labels.items() if c.endswith("/" + stem)]
        k = int(k) - 1
        at_input_size = resize_label(label, (64, 32))
        cell = at_input_size[8 * (k // 4):8 * (k // 4 + 1), 16 * (k % 4):16 * (k % 4 + 1)]  # 4x4 grid at 64x32
        mined = np.array(Image.open(patches / "labels" / name))
        assert np.array_equal(mined, cell) and rare & set(np.unique(mined).tolist())

    # 6. self-distillation with those patches, from the baseline student
    smhm = main.main([*common, "--module-name", "smhm", "--mode", "train", "--restore-from", student,
                      "--hard-patches-root", str(patches)])
    assert os.path.isfile(smhm["best_checkpoint"]) and np.isfinite(smhm["best_miou"])
