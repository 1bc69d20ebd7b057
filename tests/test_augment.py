import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import utils.augment as augment
from utils.augment import (
    adjust_hue,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    gaussian_kernels,
    photometric_augment,
)


def _images(n=4, h=32, w=64, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_shape_dtype_and_range(dtype):
    images = _images().to(dtype)
    out = photometric_augment(images, torch.Generator().manual_seed(0), jitter_p=1.0, blur_p=1.0)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)


def test_zero_probabilities_are_the_identity():
    images = _images()
    assert torch.equal(photometric_augment(images, jitter_p=0.0, blur_p=0.0), images)


def test_deterministic_with_a_generator():
    images = _images()
    a = photometric_augment(images, torch.Generator().manual_seed(4))
    b = photometric_augment(images, torch.Generator().manual_seed(4))
    c = photometric_augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_factors_are_drawn_per_sample_within_their_range():
    n = 64
    # the same mid-grey picture for every sample: any difference comes from the factors
    images = torch.full((n, 3, 4, 4), 0.5)
    out = photometric_augment(images, torch.Generator().manual_seed(1), jitter_p=1.0, strength=(0.25, 0, 0, 0),
                              blur_p=0.0)
    brightness = out[:, 0, 0, 0] / 0.5
    assert torch.allclose(out, brightness[:, None, None, None] * 0.5)
    assert brightness.min() >= 0.75 - 1e-6 and brightness.max() <= 1.25 + 1e-6
    assert brightness.min() < 0.8 and brightness.max() > 1.2
    assert len(torch.unique(brightness)) == n


def test_jitter_is_applied_with_its_probability():
    n = 2000
    images = _images(n, 2, 2)
    out = photometric_augment(images, torch.Generator().manual_seed(2), jitter_p=0.8, blur_p=0.0)
    untouched = (out == images).flatten(1).all(1).double().mean().item()
    assert abs(untouched - 0.2) < 0.03


def test_blur_is_applied_with_its_probability():
    n = 400
    images = _images(n, 16, 32)
    out = photometric_augment(images, torch.Generator().manual_seed(3), jitter_p=0.0, blur_p=0.5)
    blurred = ~(out == images).flatten(1).all(1)
    assert abs(blurred.double().mean().item() - 0.5) < 0.08

    def roughness(x):
        return (x[..., 1:] - x[..., :-1]).abs().flatten(1).mean(1)

    # blurring smooths (sigma near 0.15 barely changes a picture, hence <= for single samples)
    assert (roughness(out) <= roughness(images) + 1e-6).all()
    assert roughness(out[blurred]).mean() < 0.8 * roughness(images[blurred]).mean()


def test_kernel_sizes_are_odd_and_about_a_tenth_of_the_side():
    assert [blur_kernel_size(s) for s in (1024, 512, 64, 32, 10, 1)] == [103, 51, 7, 3, 1, 1]
    for side in range(1, 2000, 37):
        k = blur_kernel_size(side)
        assert k % 2 == 1 and abs(k - 0.1 * side) <= 2


def test_gaussian_kernels_are_normalised_and_symmetric():
    sigma = torch.tensor([0.15, 0.6, 1.15])
    kernels = gaussian_kernels(sigma, 7)
    torch.testing.assert_close(kernels.sum(1), torch.ones(3))
    torch.testing.assert_close(kernels, kernels.flip(1))
    assert (kernels[:, 3] == kernels.max(1).values).all()
    # wider sigma, flatter kernel
    assert kernels[0, 3] > kernels[1, 3] > kernels[2, 3]


def test_batched_blur_equals_torchvision_per_sample():
    images = _images(3, 32, 64)
    sigma = torch.tensor([0.15, 0.7, 1.15])
    out = gaussian_blur(images, sigma)
    for i in range(3):
        expected = TF.gaussian_blur(images[i], kernel_size=[7, 3], sigma=[float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5)


def test_batched_jitter_equals_torchvision_per_sample():
    images = _images(4, 16, 24)
    brightness = torch.tensor([0.75, 1.0, 1.1, 1.25])
    contrast = torch.tensor([1.2, 0.8, 1.0, 0.75])
    saturation = torch.tensor([0.9, 1.25, 0.75, 1.0])
    hue = torch.tensor([-0.25, 0.1, 0.0, 0.2])
    out = color_jitter(images, brightness, contrast, saturation, hue)
    for i in range(4):
        expected = TF.adjust_brightness(images[i], float(brightness[i]))
        expected = TF.adjust_contrast(expected, float(contrast[i]))
        expected = TF.adjust_saturation(expected, float(saturation[i]))
        expected = TF.adjust_hue(expected, float(hue[i]))
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5)


def test_hue_fallback_matches_the_batched_path(monkeypatch):
    images = _images(3, 8, 8)
    hue = torch.tensor([-0.2, 0.05, 0.25])
    batched = adjust_hue(images, hue)
    monkeypatch.setattr(augment, "_rgb_to_hsv", None)
    torch.testing.assert_close(adjust_hue(images, hue), batched, rtol=0, atol=1e-6)


def test_argument_checks():
    with pytest.raises(ValueError, match="hue <= 0.5"):
        photometric_augment(_images(), strength=(0.25, 0.25, 0.25, 0.7))
    with pytest.raises(ValueError, match="N×3×H×W"):
        photometric_augment(torch.zeros(2, 1, 8, 8))
