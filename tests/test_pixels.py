"""Pixel conventions: BGR minus the Caffe mean, exact inverses, bicubic images and nearest labels equal to
PIL's (the published loaders') by default and to OpenCV's with the cv2 backend."""
import cv2
import numpy as np
import pytest
import torch

from datasets.base import LabelledImages, check_label_values
from datasets.pixels import (IMG_MEAN_BGR, denormalize_to_rgb01, normalize_rgb01, resize_image, resize_label,
                             to_bgr_uint8, to_network_input)
from tests.fixtures import pil_resized_bgr, pil_resized_label
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


def _sharp(h, w, seed=0):
    """Saturated blocks and one-pixel lines: where bicubic kernels (and their rounding) differ most."""
    rng = np.random.default_rng(seed)
    image = (rng.integers(0, 2, (h // 3 + 1, w // 3 + 1, 3)) * 255).astype(np.uint8).repeat(3, 0).repeat(3, 1)[:h, :w]
    image[:, ::7] = 255 - image[:, ::7]
    image[::5] = 0
    return np.ascontiguousarray(image)


# (image H, W) -> (W, H): down and up, odd sizes, ratios that are not integers, one axis kept.
RESIZES = [((32, 64), (32, 16)), ((1024, 2048), (1024, 512)), ((37, 53), (20, 91)), ((31, 17), (40, 63)),
           ((50, 50), (33, 33)), ((7, 5), (29, 13)), ((45, 80), (80, 31)), ((1052, 1914), (1024, 512))]


@pytest.mark.parametrize("shape, size", RESIZES)
def test_resize_image_defaults_to_pil_bicubic_of_the_rgb_image(shape, size):
    for image in (_image(*shape, seed=3), _sharp(*shape)):
        out = resize_image(image, size)
        assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8 and out.flags.writeable
        assert np.array_equal(out, pil_resized_bgr(image, size))
        assert np.array_equal(resize_image(image, size, "pil"), out)
    # the comparison can fail: OpenCV's bicubic gives other pixels on sharp content
    assert not np.array_equal(out, cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))
    # a view (a crop, not contiguous) is resized like its copy
    view = image[1:, 1:]
    assert np.array_equal(resize_image(view, size), pil_resized_bgr(np.ascontiguousarray(view), size))


@pytest.mark.parametrize("shape, size", RESIZES[:4])
def test_resize_image_cv2_backend_is_opencv_bicubic(shape, size):
    for image in (_image(*shape, seed=4), _sharp(*shape, seed=1)):
        assert np.array_equal(resize_image(image, size, "cv2"), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))


def test_resize_skips_same_size_and_refuses_unknown_backends():
    image, label = _image(), np.zeros((32, 64), np.uint8)
    for backend in ("pil", "cv2"):
        assert resize_image(image, (64, 32), backend) is image
        assert resize_label(label, (64, 32), backend) is label
    with pytest.raises(ValueError, match="pil, cv2"):
        resize_image(image, (32, 16), "bicubic")
    with pytest.raises(ValueError, match="pil, cv2"):
        resize_label(label, (32, 16), "PIL")


@pytest.mark.parametrize("shape, size", RESIZES)
def test_resize_label_defaults_to_pil_nearest(shape, size):
    rng = np.random.default_rng(2)
    label = rng.choice([0, 5, 18, 255], size=shape).astype(np.uint8)
    out = resize_label(label, size)
    assert out.shape == (size[1], size[0]) and out.dtype == np.uint8 and out.flags.writeable
    assert set(np.unique(out)) <= {0, 5, 18, 255}
    assert np.array_equal(out, pil_resized_label(label, size))
    # OpenCV's INTER_NEAREST picks other source pixels (the corner's, not the centre's)
    assert not np.array_equal(out, cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(resize_label(label, size, "cv2"), cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))
    wide = rng.integers(0, 1000, size=shape).astype(np.uint16)  # 16-bit label ids keep their depth
    assert np.array_equal(resize_label(wide, size), pil_resized_label(wide, size))


def test_pil_nearest_takes_the_source_pixel_under_each_output_centre():
    """PIL's pick is floor((x + 0.5) * in / out), the source pixel under the output pixel's centre."""
    label = np.arange(48 * 40).reshape(40, 48).astype(np.int32)
    for size in ((16, 10), (96, 80), (24, 120)):
        rows = np.floor((np.arange(size[1]) + 0.5) * 40 / size[1]).astype(int)
        cols = np.floor((np.arange(size[0]) + 0.5) * 48 / size[0]).astype(int)
        assert np.array_equal(resize_label(label, size), label[np.ix_(rows, cols)])


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
