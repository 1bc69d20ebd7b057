"""Tests for utils/inference.py: flip test-time augmentation and the softmax entropy."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.inference import entropy_map, multiscale_logits, predict_logits, upsampled_argmax


class SkewNet(nn.Module):
    """A tiny stand-in with the network's forward contract that is *not* flip-equivariant: an
    asymmetric strided kernel plus a left-to-right ramp (``symmetric=True``: a mirror-symmetric
    kernel at stride 1 and no ramp, which is flip-equivariant)."""

    def __init__(self, num_classes=5, symmetric=False):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, stride=1 if symmetric else 2, padding=1)
        if symmetric:
            with torch.no_grad():
                self.conv.weight.copy_(self.conv.weight + self.conv.weight.flip(-1))
        self.ramp = nn.Parameter(torch.zeros(num_classes, 1, 1) if symmetric else torch.randn(num_classes, 1, 1))
        self.sizes = []

    def forward(self, x, size=None):
        self.sizes.append(size)
        out = self.conv(x)
        out = out + self.ramp * torch.linspace(-1, 1, out.shape[-1])
        if size is not None:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return out


def _images(n=2, h=12, w=20):
    return torch.randn(n, 3, h, w) * 50


def test_without_flip_it_is_the_network_output_at_the_requested_size():
    net, x = SkewNet(), _images()
    logits = predict_logits(net, x, size=(24, 40))
    assert logits.shape == (2, 5, 24, 40)
    assert torch.equal(logits, net(x, size=(24, 40)))
    assert net.sizes[0] == (24, 40)
    assert predict_logits(net, x).shape == (2, 5, 6, 10)  # network resolution when no size


@pytest.mark.parametrize("size", [None, (12, 20), (17, 31)])
def test_flip_equals_an_independent_computation(size):
    net, x = SkewNet(), _images()
    reverse_in = torch.arange(x.shape[-1] - 1, -1, -1)
    plain = net(x, size=size)
    mirrored = net(x.index_select(3, reverse_in), size=size)
    expected = plain + mirrored.index_select(3, torch.arange(mirrored.shape[-1] - 1, -1, -1))
    assert torch.equal(predict_logits(net, x, size=size, flip=True), expected)
    assert not torch.allclose(plain, mirrored.flip(-1), atol=1e-3)  # the test net is not symmetric


def test_flip_augmented_prediction_is_exactly_flip_equivariant():
    net, x = SkewNet(), _images()
    out = predict_logits(net, x, size=(12, 20), flip=True)
    out_of_mirror = predict_logits(net, x.flip(-1), size=(12, 20), flip=True)
    assert torch.equal(out_of_mirror, out.flip(-1))
    assert not torch.allclose(net(x.flip(-1)), net(x).flip(-1), atol=1e-3)


def test_flip_sums_rather_than_averages():
    net, x = SkewNet(symmetric=True), _images()
    plain = predict_logits(net, x, size=(12, 20))
    torch.testing.assert_close(predict_logits(net, x, size=(12, 20), flip=True), 2 * plain, rtol=1e-5, atol=1e-4)


def test_grad_mode_is_left_to_the_caller():
    net, x = SkewNet(), _images()
    with torch.no_grad():
        out = predict_logits(net, x, size=(12, 20), flip=True)
    assert not out.requires_grad and out.grad_fn is None
    with torch.inference_mode():
        assert predict_logits(net, x, flip=True).is_inference()
    predict_logits(net, x, size=(12, 20), flip=True).sum().backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.abs().sum() > 0


def test_with_the_tiny_deeplabv2():
    deeplabv2 = pytest.importorskip("models.deeplabv2")
    net = deeplabv2.get_deeplabv2(arch="deeplabv2_tiny", num_classes=19).eval()
    x = _images(n=1, h=32, w=48)
    with torch.no_grad():
        out = predict_logits(net, x, size=(32, 48), flip=True)
        assert out.shape == (1, 19, 32, 48)
        assert torch.equal(predict_logits(net, x.flip(-1), size=(32, 48), flip=True), out.flip(-1))
        torch.testing.assert_close(out, net(x, size=(32, 48)) + net(x.flip(-1), size=(32, 48)).flip(-1))


def test_scales_are_averaged_at_the_input_size():
    net, x = SkewNet(), _images()
    # One scale 1.0: the network's output as it is (upsampled once by the caller), or at ``size``.
    assert torch.equal(multiscale_logits(net, x, (1.0,), flip=True), predict_logits(net, x, flip=True))
    assert torch.equal(multiscale_logits(net, x, (1.0,), size=(12, 20)), net(x, size=(12, 20)))
    half = F.interpolate(x, size=(6, 10), mode="bilinear", align_corners=False)
    expected = (predict_logits(net, half, size=(12, 20), flip=True) + predict_logits(net, x, size=(12, 20), flip=True)) / 2
    torch.testing.assert_close(multiscale_logits(net, x, (0.5, 1.0), flip=True), expected)
    assert multiscale_logits(net, x, (0.5, 1.0), size=(24, 40)).shape == (2, 5, 24, 40)


def test_upsampled_argmax_of_one_image():
    logits = torch.randn(5, 6, 10, generator=torch.Generator().manual_seed(0)).half()
    # Upsampled in float32, whatever the logits' precision.
    expected = F.interpolate(logits[None].float(), size=(12, 20), mode="bilinear", align_corners=True).argmax(1)[0]
    assert torch.equal(upsampled_argmax(logits, torch.Size([12, 20])), expected)


def test_entropy_matches_numpy_and_its_bounds():
    logits = torch.randn(2, 19, 4, 6) * 3
    p = np.exp(logits.double().numpy())
    p /= p.sum(axis=1, keepdims=True)
    expected = -(p * np.log(p)).sum(axis=1)
    ent = entropy_map(logits)
    assert ent.shape == (2, 4, 6)
    np.testing.assert_allclose(ent.numpy(), expected, rtol=1e-5, atol=1e-6)

    uniform = torch.zeros(1, 19, 2, 2)
    torch.testing.assert_close(entropy_map(uniform), torch.full((1, 2, 2), math.log(19)))
    peaked = torch.zeros(1, 19, 2, 2)
    peaked[:, 3] = 1e4  # extreme logits: no nan, entropy zero
    assert torch.equal(entropy_map(peaked), torch.zeros(1, 2, 2))
    shifted = entropy_map(logits + torch.randn(2, 1, 4, 6) * 100)  # softmax ignores a per-pixel shift
    torch.testing.assert_close(shifted, ent, rtol=1e-4, atol=1e-4)
    assert entropy_map(logits.half()).dtype == torch.float32
