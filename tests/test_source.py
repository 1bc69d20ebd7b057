"""Source datasets: GTA5 label ids and SYNTHIA's 16-bit red channel become train ids on the fly."""
import os

import cv2
import numpy as np
import pytest
import torch

from datasets.source import GTA5Dataset, SynthiaDataset
from utils.cli import UserError
from utils.labels import SYNTHIA_TO_TRAIN_ID
from utils.labels import read_synthia_label_ids

SIZE = (64, 32)


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _gta5(root, count=3):
    rng = np.random.default_rng(0)
    for k in range(count):
        _write(f"{root}/images/{k:05d}.png", rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
        label_ids = np.zeros((SIZE[1], SIZE[0]), np.uint8)
        label_ids[:, :16], label_ids[:, 16:32], label_ids[:, 32:48], label_ids[:, 48:] = 7, 26, 33, 3
        _write(f"{root}/labels/{k:05d}.png", label_ids)


def test_gta5_label_ids_become_train_ids(tmp_path):
    _gta5(tmp_path)
    ds = GTA5Dataset(str(tmp_path), input_size=(32, 16))
    assert ds.names == ["00000", "00001", "00002"]
    item = ds[0]
    assert item["image"].shape == (3, 16, 32) and item["label"].shape == (16, 32)
    # road 7 -> 0, car 26 -> 13, bicycle 33 -> 18, out of roi 3 -> ignore
    assert item["label"][0, ::4].tolist() == [0, 0, 13, 13, 18, 18, 255, 255]


def _as_palette_png(path):
    """Rewrite a label-id PNG as GTA5 ships its labels: palette indices, coloured like Cityscapes."""
    from PIL import Image

    image = Image.fromarray(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), mode="P")
    image.putpalette([(37 * i + 11) % 256 for i in range(768)])  # colours unlike the indices
    image.save(path)


def test_gta5_palette_labels_give_their_ids_not_their_colours(tmp_path):
    from utils.transfer_trainid import main as transfer

    _gta5(tmp_path)
    for name in os.listdir(tmp_path / "labels"):
        _as_palette_png(tmp_path / "labels" / name)
    item = GTA5Dataset(str(tmp_path), input_size=(32, 16))[0]
    assert item["label"][0, ::4].tolist() == [0, 0, 13, 13, 18, 18, 255, 255]
    assert transfer(["--dataset", "gta5", "--ori-label-root", str(tmp_path / "labels"),
                     "--dst-label-root", str(tmp_path / "train_ids")]) == 0
    train_ids = cv2.imread(str(tmp_path / "train_ids" / "00000.png"), cv2.IMREAD_UNCHANGED)
    assert train_ids[0, ::8].tolist() == [0, 0, 13, 13, 18, 18, 255, 255]


def test_a_colour_picture_of_the_classes_is_not_a_label_map(tmp_path):
    _gta5(tmp_path, count=1)
    colours = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    colours[:, :32] = (128, 64, 128)
    _write(tmp_path / "labels" / "00000.png", colours)
    with pytest.raises(UserError, match="00000.png is a colour image, not a map of label ids"):
        GTA5Dataset(str(tmp_path), input_size=(32, 16))[0]
    grey = np.repeat(np.full((SIZE[1], SIZE[0], 1), 7, np.uint8), 3, axis=2)  # grey saved as three channels
    _write(tmp_path / "labels" / "00000.png", grey)
    assert GTA5Dataset(str(tmp_path), input_size=(32, 16))[0]["label"].unique().tolist() == [0]


def test_gta5_list_and_errors(tmp_path):
    _gta5(tmp_path)
    (tmp_path / "list.txt").write_text("00002.png\n\n00000.png\n")
    assert GTA5Dataset(str(tmp_path), list_path=str(tmp_path / "list.txt")).names == ["00002", "00000"]
    with pytest.raises(UserError, match="image list not found: .*nolist"):
        GTA5Dataset(str(tmp_path), list_path=str(tmp_path / "nolist.txt"))
    with pytest.raises(UserError, match="source dataset folder not found: .*nowhere"):
        GTA5Dataset(str(tmp_path / "nowhere"))
    os.remove(tmp_path / "labels" / "00001.png")
    with pytest.raises(UserError, match=r"label not found: .*labels/00001\.png"):
        GTA5Dataset(str(tmp_path))
    _write(tmp_path / "labels" / "00001.png", np.zeros((20, 64), np.uint8))
    with pytest.raises(UserError, match=r"label size 64x20 does not match its image \(64x32\): .*00001\.png"):
        GTA5Dataset(str(tmp_path), input_size=(32, 16))[1]


def _synthia_label(ids):
    """A 16-bit BGR PNG as SYNTHIA ships it: class id in red, instance-like junk in green and blue."""
    bgr = np.zeros(ids.shape + (3,), np.uint16)
    bgr[..., 2] = ids
    bgr[..., 1] = 1000
    bgr[..., 0] = np.arange(ids.size, dtype=np.uint16).reshape(ids.shape)
    return bgr


def test_synthia_reads_the_red_channel_of_a_16bit_png(tmp_path):
    ids = np.zeros((SIZE[1], SIZE[0]), np.uint16)
    ids[:, :16], ids[:, 16:32], ids[:, 32:48], ids[:, 48:] = 3, 8, 11, 0  # road, car, bicycle, void
    _write(tmp_path / "RGB" / "0000000.png", np.full((SIZE[1], SIZE[0], 3), 90, np.uint8))
    _write(tmp_path / "GT" / "LABELS" / "0000000.png", _synthia_label(ids))
    assert cv2.imread(str(tmp_path / "GT" / "LABELS" / "0000000.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert np.array_equal(read_synthia_label_ids(str(tmp_path / "GT" / "LABELS" / "0000000.png")), ids)
    item = SynthiaDataset(str(tmp_path), input_size=SIZE)[0]
    expected = np.vectorize(lambda i: SYNTHIA_TO_TRAIN_ID.get(int(i), 255))(ids)
    assert torch.equal(item["label"], torch.from_numpy(expected).long())
    assert item["label"][0, ::16].tolist() == [0, 13, 18, 255]


def test_synthia_ids_out_of_table_are_an_error(tmp_path):
    _write(tmp_path / "RGB" / "a.png", np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
    _write(tmp_path / "GT" / "LABELS" / "a.png", _synthia_label(np.full((SIZE[1], SIZE[0]), 300, np.uint16)))
    with pytest.raises(UserError, match=r"a\.png holds the value 300, not a synthia label id \(0\.\.22\)"):
        SynthiaDataset(str(tmp_path), input_size=SIZE)[0]
    with pytest.raises(UserError, match=r"folder not found: .*GT/LABELS"):
        os.rename(tmp_path / "GT", tmp_path / "gt")
        SynthiaDataset(str(tmp_path))
