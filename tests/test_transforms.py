"""Pixel conventions: BGR minus the Caffe mean, exact inverses, bicubic images, nearest labels."""
import cv2
import numpy as np
import pytest
import torch

from datasets.transforms import (IMG_MEAN_BGR, LabelledImages, check_label_values, denormalize_to_rgb01,
                                 normalize_rgb01, resize_image, resize_label, to_bgr_uint8, to_network_input)
from utils.cli import UserError


def _image(h=32, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_network_input_is_bgr_minus_mean_without_std():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 200, 255  # B, G, R
    x = to_network_input(image)
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3)
    expected = np.array([10, 200, 255], np.float64) - np.array(IMG_MEAN_BGR)
    assert torch.allclose(x[:, 0, 0].double(), torch.tensor(expected), atol=1e-4)
    assert IMG_MEAN_BGR == (104.00698793, 116.66876762, 122.67891434)


def test_to_bgr_uint8_inverts_and_clips():
    image = _image()
    x = to_network_input(image)
    assert np.array_equal(to_bgr_uint8(x), image)
    assert np.array_equal(to_bgr_uint8(x.numpy()), image)
    extreme = torch.stack([torch.full((2, 2), -1000.0), torch.full((2, 2), 1000.0), torch.zeros(2, 2)])
    out = to_bgr_uint8(extreme)
    assert out.dtype == np.uint8 and (out[..., 0] == 0).all() and (out[..., 1] == 255).all()
    assert (out[..., 2] == 123).all()  # round(122.68)


def test_rgb01_round_trip_and_channel_order():
    image = _image(seed=1)
    batch = torch.stack([to_network_input(image), to_network_input(image[::-1].copy())])
    rgb = denormalize_to_rgb01(batch)
    assert rgb.shape == batch.shape and rgb.min() >= 0 and rgb.max() <= 1
    # channel 0 of the RGB tensor is the red channel (index 2 of the BGR image)
    assert torch.allclose(rgb[0, 0], torch.from_numpy(image[..., 2]).float() / 255, atol=1e-6)
    assert torch.allclose(rgb[0, 2], torch.from_numpy(image[..., 0]).float() / 255, atol=1e-6)
    back = normalize_rgb01(rgb)
    assert torch.allclose(back, batch, atol=1e-3)
    assert normalize_rgb01(torch.zeros(1, 3, 1, 1)).flatten().tolist() == pytest.approx([-m for m in IMG_MEAN_BGR])


def test_resize_image_is_bicubic_and_skips_same_size():
    image = _image()
    assert resize_image(image, (64, 32)) is image
    out = resize_image(image, (32, 16))
    assert out.shape == (16, 32, 3)
    assert np.array_equal(out, cv2.resize(image, (32, 16), interpolation=cv2.INTER_CUBIC))
    assert not np.array_equal(out, cv2.resize(image, (32, 16), interpolation=cv2.INTER_NEAREST))


def test_resize_label_is_nearest():
    label = np.random.default_rng(2).choice([0, 5, 18, 255], size=(32, 64)).astype(np.uint8)
    out = resize_label(label, (100, 50))
    assert out.shape == (50, 100) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 5, 18, 255}
    assert np.array_equal(out, cv2.resize(label, (100, 50), interpolation=cv2.INTER_NEAREST))
    assert resize_label(label, (64, 32)) is label


def test_check_label_values_names_file_and_values():
    check_label_values(np.array([[0, 18, 255]], np.uint8), 19, "x.png")
    with pytest.raises(UserError, match=r"x\.png: 19, 33"):
        check_label_values(np.array([[0, 19, 33, 255]], np.uint8), 19, "x.png")
    with pytest.raises(UserError, match="300"):
        check_label_values(np.array([[0, 300]], np.uint16), 19, "x.png")


def test_labelled_images_without_labels_reads_no_label(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "a.png"), _image())
    data = LabelledImages([(str(tmp_path / "a.png"), None, "a")], input_size=(32, 16))
    monkeypatch.setattr(LabelledImages, "read_train_ids", lambda self, path: pytest.fail("label read"))
    item = data[0]
    assert set(item) == {"image", "name", "index"} and item["image"].shape == (3, 16, 32)
