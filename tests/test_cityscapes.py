"""Cityscapes loader: file layout, resizing, list files, pseudo-label roots and every user error."""
import os

import cv2
import numpy as np
import pytest
import torch

from datasets.cityscapes import CityscapesDataset, list_images, resolve_pseudo_label_root
from datasets.pixels import to_network_input
from tests.fixtures import pil_resized_bgr, pil_resized_label
from utils.cli import UserError

SIZE = (64, 32)  # W, H of the files on disk
INPUT = (32, 16)


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _tree(root, cities=(("aachen", 2), ("bochum", 1)), split="train"):
    """Images and train-id labels; returns {name: (image, label)}."""
    rng = np.random.default_rng(0)
    data = {}
    for city, count in cities:
        for k in range(count):
            name = f"{city}/{city}_{k:06d}_000019"
            image = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
            label = rng.choice([0, 1, 10, 18, 255], size=(SIZE[1], SIZE[0])).astype(np.uint8)
            _write(f"{root}/img/{split}/{name}_leftImg8bit.png", image)
            _write(f"{root}/gt/{split}/{name}_gtFine_labelIds.png", label)
            data[name] = (image, label)
    return data


@pytest.fixture
def tree(tmp_path):
    return tmp_path, _tree(tmp_path)


def _resized(image, label, backend):
    if backend == "cv2":
        return (cv2.resize(image, INPUT, interpolation=cv2.INTER_CUBIC),
                cv2.resize(label, INPUT, interpolation=cv2.INTER_NEAREST))
    return pil_resized_bgr(image, INPUT), pil_resized_label(label, INPUT)


@pytest.mark.parametrize("backend", [None, "pil", "cv2"])
def test_training_item_resizes_image_bicubic_and_label_nearest(tree, backend):
    root, data = tree
    kwargs = {} if backend is None else {"resize_backend": backend}
    ds = CityscapesDataset(f"{root}/img", "train", input_size=INPUT, label_root=f"{root}/gt", **kwargs)
    assert len(ds) == 3 and ds.names == sorted(data)
    item = ds[1]
    image, label = data[item["name"]]
    assert item["index"] == 1 and item["name"] == "aachen/aachen_000001_000019"
    expected_image, expected_label = _resized(image, label, backend or "pil")  # PIL, as published, by default
    other_image, other_label = _resized(image, label, "pil" if backend == "cv2" else "cv2")
    assert torch.equal(item["image"], to_network_input(expected_image))
    assert not torch.equal(item["image"], to_network_input(other_image))
    assert item["label"].dtype == torch.int64 and torch.equal(item["label"], torch.from_numpy(expected_label).long())
    assert not np.array_equal(expected_label, other_label)


def test_evaluation_labels_stay_full_resolution(tree):
    root, data = tree
    ds = CityscapesDataset(f"{root}/img", "train", input_size=INPUT, label_root=f"{root}/gt", resize_label=False)
    item = ds[0]
    assert item["image"].shape == (3, INPUT[1], INPUT[0])
    assert torch.equal(item["label"], torch.from_numpy(data[item["name"]][1]).long())


def test_no_labels_gives_images_only(tree):
    root, _ = tree
    item = CityscapesDataset(f"{root}/img", "train", input_size=SIZE)[0]
    assert "label" not in item and item["image"].shape == (3, SIZE[1], SIZE[0])


def test_list_file_wins_over_scan(tree, tmp_path):
    root, data = tree
    names = sorted(data)
    assert list_images(f"{root}/img", "train") == [n + "_leftImg8bit.png" for n in names]
    assert list_images(f"{root}/img", "train", list_root=str(tmp_path / "nolists")) == list_images(f"{root}/img", "train")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text(f"\n{names[2]}_leftImg8bit.png\n\n{names[0]}_leftImg8bit.png\n")
    assert list_images(f"{root}/img", "train", str(lists)) == [names[2] + "_leftImg8bit.png", names[0] + "_leftImg8bit.png"]
    ds = CityscapesDataset(f"{root}/img", "train", input_size=INPUT, list_root=str(lists))
    assert ds.names == [names[2], names[0]] and ds.images[0] == names[2] + "_leftImg8bit.png"


def _pseudo(root, data, folder, size=INPUT):
    for name, (_, label) in data.items():
        _write(f"{folder}/{name}_gtFine_labelIds.png", cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("form", ["save", "label_ids", "split"])
def test_pseudo_label_root_forms(tree, form):
    root, data = tree
    _pseudo(root, data, f"{root}/save/label_ids/train")
    given = {"save": f"{root}/save", "label_ids": f"{root}/save/label_ids", "split": f"{root}/save/label_ids/train"}[form]
    assert os.path.samefile(resolve_pseudo_label_root(given, "train"), f"{root}/save/label_ids/train")
    ds = CityscapesDataset(f"{root}/img", "train", input_size=INPUT, pseudo_label_root=given)
    item = ds[0]
    assert item["label"].shape == (INPUT[1], INPUT[0])


def test_pseudo_labels_at_original_size_accepted_other_sizes_not(tree):
    root, data = tree
    _pseudo(root, data, f"{root}/full", size=SIZE)
    ds = CityscapesDataset(f"{root}/img", "train", input_size=INPUT, pseudo_label_root=f"{root}/full")
    assert ds[0]["label"].shape == (INPUT[1], INPUT[0])
    _pseudo(root, data, f"{root}/odd", size=(40, 20))
    ds = CityscapesDataset(f"{root}/img", "train", input_size=INPUT, pseudo_label_root=f"{root}/odd")
    with pytest.raises(UserError, match=r"40x20 .*64x32 or 32x16.*aachen_000000_000019_gtFine_labelIds\.png"):
        ds[0]


def test_pseudo_label_root_errors(tmp_path):
    with pytest.raises(UserError, match="pseudo-label folder not found: .*missing"):
        resolve_pseudo_label_root(str(tmp_path / "missing"))
    (tmp_path / "empty" / "label_ids" / "val").mkdir(parents=True)
    with pytest.raises(UserError, match="no pseudo-labels in .*empty"):
        resolve_pseudo_label_root(str(tmp_path / "empty"), "train")


def test_construction_errors_name_the_path(tree, tmp_path):
    root, data = tree
    with pytest.raises(UserError, match="image folder not found: .*nowhere"):
        CityscapesDataset(str(tmp_path / "nowhere"), "train")
    with pytest.raises(UserError, match=r"split 'val'.*img/val"):
        CityscapesDataset(f"{root}/img", "val")
    (root / "img" / "test" / "berlin").mkdir(parents=True)
    with pytest.raises(UserError, match="no images of split 'test'"):
        CityscapesDataset(f"{root}/img", "test")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("\n\n")
    with pytest.raises(UserError, match=r"the image list .*lists/train\.txt is empty"):
        CityscapesDataset(f"{root}/img", "train", list_root=str(lists))
    (lists / "train.txt").write_text("aachen/nope_leftImg8bit.png\naachen/gone_leftImg8bit.png\n")
    with pytest.raises(UserError, match=r"listed image not found: .*aachen/nope_leftImg8bit\.png \(2 of 2 missing\)"):
        CityscapesDataset(f"{root}/img", "train", list_root=str(lists))
    with pytest.raises(UserError, match="label folder not found: .*nogt/train"):
        CityscapesDataset(f"{root}/img", "train", label_root=str(tmp_path / "nogt"))
    os.remove(f"{root}/gt/train/bochum/bochum_000000_000019_gtFine_labelIds.png")
    with pytest.raises(UserError, match=r"label not found: .*bochum_000000_000019_gtFine_labelIds\.png$"):
        CityscapesDataset(f"{root}/img", "train", label_root=f"{root}/gt")
    _pseudo(root, {n: v for n, v in data.items() if n.startswith("aachen/aachen_000000")}, f"{root}/pl")
    with pytest.raises(UserError, match=r"pseudo-label not found: .*aachen_000001_000019_gtFine_labelIds\.png "
                                        r"\(2 of 3 missing\)"):
        CityscapesDataset(f"{root}/img", "train", pseudo_label_root=f"{root}/pl")


def test_load_errors_name_the_file(tree):
    root, data = tree
    names = sorted(data)
    ds = CityscapesDataset(f"{root}/img", "train", input_size=INPUT, label_root=f"{root}/gt")
    image_path = f"{root}/img/train/{names[0]}_leftImg8bit.png"
    with open(image_path, "rb") as f:
        head = f.read(60)
    with open(image_path, "wb") as f:
        f.write(head)  # truncated
    with pytest.raises(UserError, match=r"cannot read image.*aachen_000000_000019_leftImg8bit\.png"):
        ds[0]
    _write(f"{root}/gt/train/{names[1]}_gtFine_labelIds.png", np.zeros((16, 32), np.uint8))
    with pytest.raises(UserError, match=r"label size 32x16 does not match its image \(64x32\): .*aachen_000001"):
        ds[1]
    bad = data[names[2]][1].copy()
    bad[0, :3] = [19, 33, 200]
    _write(f"{root}/gt/train/{names[2]}_gtFine_labelIds.png", bad)
    with pytest.raises(UserError, match=r"outside 0\.\.18 and 255 in .*bochum_000000_000019_gtFine_labelIds\.png: "
                                        r"19, 33, 200"):
        ds[2]
