"""Hard patch dataset: patches paired with train-id labels by file name, at their stored size."""
import os

import cv2
import numpy as np
import pytest
import torch

from datasets.patches import HardPatchDataset
from datasets.pixels import to_network_input
from utils.cli import UserError


def _patches(root, names=("b_2", "a_1", "a_16")):
    rng = np.random.default_rng(0)
    os.makedirs(f"{root}/patches"), os.makedirs(f"{root}/labels")
    data = {}
    for name in names:
        image = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
        label = rng.choice([0, 6, 7, 255], size=(8, 16)).astype(np.uint8)
        cv2.imwrite(f"{root}/patches/{name}.png", image)
        cv2.imwrite(f"{root}/labels/{name}.png", label)
        data[name] = (image, label)
    return data


def test_items_are_sorted_and_unresized(tmp_path):
    data = _patches(tmp_path)
    ds = HardPatchDataset(str(tmp_path))
    assert ds.names == sorted(data) and len(ds) == 3
    item = ds[2]
    image, label = data[item["name"]]
    assert item["name"] == "b_2" and item["index"] == 2
    assert torch.equal(item["image"], to_network_input(image))
    assert torch.equal(item["label"], torch.from_numpy(label).long())


def test_errors_name_folder_or_file(tmp_path):
    with pytest.raises(UserError, match="hard patch folder not found: .*patches"):
        HardPatchDataset(str(tmp_path))
    (tmp_path / "patches").mkdir()
    with pytest.raises(UserError, match=r"no hard patches \(\*\.png\) in .*patches"):
        HardPatchDataset(str(tmp_path))
    cv2.imwrite(str(tmp_path / "patches" / "x_1.png"), np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(UserError, match="hard patch label folder not found: .*labels"):
        HardPatchDataset(str(tmp_path))
    (tmp_path / "labels").mkdir()
    with pytest.raises(UserError, match=r"hard patch label not found: .*labels/x_1\.png"):
        HardPatchDataset(str(tmp_path))
    cv2.imwrite(str(tmp_path / "labels" / "x_1.png"), np.full((8, 16), 19, np.uint8))
    with pytest.raises(UserError, match=r"outside 0\.\.18 and 255 in .*x_1\.png: 19"):
        HardPatchDataset(str(tmp_path))[0]
    assert HardPatchDataset(str(tmp_path), num_classes=20)[0]["label"].max() == 19
