"""DeepLabv2: the published architecture's facts, checkpoint compatibility with an independent
implementation of the published network, every accepted weight-file form and the errors."""
import argparse
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.deeplabv2 import (ARCHS, DeepLabV2, WeightFileError, get_deeplabv2, load_weights, read_weight_file)
from tests.published_deeplab import DeeplabMulti, randomize_weights
from utils.cli import UserError

torch.set_num_threads(1)


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return get_deeplabv2(arch="deeplabv2_tiny", **kwargs)


def image(n=1, h=65, w=65, seed=1):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 50


def lightning_checkpoint(student, teacher=None, **extra):
    state = {"net." + k: v for k, v in student.items()}
    if teacher is not None:
        state.update({"ema_net." + k: v for k, v in teacher.items()})
    return {"state_dict": state, "epoch": 0, "global_step": 3, "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"lr": 1e-4, "module_name": "smhm"}, **extra}


# -- architecture --------------------------------------------------------------------------------

def test_archs_and_block_counts():
    assert set(ARCHS) == {"deeplabv2_r101", "deeplabv2_r50", "deeplabv2_tiny"}
    assert ARCHS["deeplabv2_r101"]["blocks"] == (3, 4, 23, 3) and ARCHS["deeplabv2_r50"]["blocks"] == (3, 4, 6, 3)
    net = tiny()
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert net.num_classes == 19 and tiny(num_classes=7).num_classes == 7
    with pytest.raises(UserError, match="deeplabv2_r18"):
        get_deeplabv2(arch="deeplabv2_r18")


def test_strides_dilations_and_shortcuts():
    net = DeepLabV2(blocks=(2, 2, 2, 2), width=8)
    assert net.conv1.stride == (2, 2) and net.conv1.kernel_size == (7, 7) and net.conv1.bias is None
    assert net.maxpool.ceil_mode and net.maxpool.kernel_size == 3 and net.maxpool.stride == 2
    assert net.maxpool.padding == 1
    for i, (stride, dilation) in enumerate([(1, 1), (2, 1), (1, 2), (1, 4)], start=1):
        layer = getattr(net, f"layer{i}")
        first = layer[0]
        # The stride sits on the first 1x1 conv, never on the 3x3, and the shortcut strides with it.
        assert first.conv1.stride == (stride, stride) and first.conv2.stride == (1, 1)
        assert first.downsample[0].stride == (stride, stride)
        assert isinstance(first.downsample[1], nn.BatchNorm2d)
        for block in layer:
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation)
        assert all(block.downsample is None for block in layer[1:])


def test_head_branches():
    net = tiny()
    head = net.layer5.conv2d_list
    assert len(head) == 4 and all(c.bias is not None for c in head)
    assert [c.dilation[0] for c in head] == [6, 12, 18, 24] == [c.padding[0] for c in head]
    assert head[0].in_channels == 32 * ARCHS["deeplabv2_tiny"]["width"] and head[0].out_channels == 19

    features = {}
    net.layer5.register_forward_pre_hook(lambda module, args: features.setdefault("x", args[0]))
    x = image()
    with torch.no_grad():
        two = net.eval()(x)
        f = features["x"]
        assert torch.allclose(two, head[0](f) + head[1](f), atol=1e-6)
        net.layer5.branches = 4
        four = net(x)
        assert torch.allclose(four, sum(c(f) for c in head), atol=1e-6)
    assert not torch.allclose(two, four)
    assert tiny(head_branches=4).layer5.branches == 4
    with pytest.raises(UserError, match="head-branches"):
        tiny(head_branches=5)


@pytest.mark.parametrize("h, w, out", [(65, 65, (9, 9)), (321, 321, (41, 41)), (32, 64, (5, 9))])
def test_output_stride_8(h, w, out):
    with torch.no_grad():
        assert tiny().eval()(image(h=h, w=w)).shape == (1, 19, *out)


def test_size_upsamples_with_align_corners():
    net = tiny().eval()
    x = image(h=64, w=32)
    with torch.no_grad():
        low = net(x)
        high = net(x, size=x.shape[-2:])
    assert high.shape == (1, 19, 64, 32)
    assert torch.equal(high, F.interpolate(low, size=(64, 32), mode="bilinear", align_corners=True))
    assert torch.equal(high[..., 0, 0], low[..., 0, 0]) and torch.equal(high[..., -1, -1], low[..., -1, -1])


def test_batchnorm_affine_frozen_and_param_groups():
    net = tiny()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not m.weight.requires_grad and not m.bias.requires_grad
    # Head branches outside the sum get no gradient (under DDP they would never receive one).
    unused = {id(p) for c in net.layer5.conv2d_list[2:] for p in c.parameters()}
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            assert all(p.requires_grad != (id(p) in unused) for p in m.parameters())
    assert all(p.requires_grad for p in tiny(head_branches=4).layer5.parameters())
    backbone, head = net.param_groups(0.01)
    assert backbone["lr"] == 0.01 and head["lr"] == pytest.approx(0.1)
    assert {id(p) for p in head["params"]} == {id(p) for p in net.layer5.parameters() if p.requires_grad}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in backbone["params"]} | {id(p) for p in head["params"]} == trainable
    assert len(backbone["params"]) + len(head["params"]) == len(trainable)


def running_stats(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k}


def test_train_mode_updates_running_stats_unless_frozen():
    x = image(n=2, h=64, w=32)
    net = tiny().train()
    before = running_stats(net)
    net(x).sum().backward()
    assert any(not torch.equal(before[k], v) for k, v in running_stats(net).items())

    frozen = tiny(freeze_bn_stats=True)
    # Put in train mode through a parent, as a Lightning module does.
    parent = nn.ModuleDict({"net": frozen}).train()
    assert frozen.training and not any(m.training for m in frozen.modules() if isinstance(m, nn.BatchNorm2d))
    before = running_stats(frozen)
    frozen(x).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in running_stats(frozen).items())
    assert frozen.conv1.weight.grad is not None
    parent.eval()
    assert not frozen.training


def test_channels_last_matches_contiguous():
    net = tiny().eval()
    x = image(n=2, h=64, w=32)
    with torch.no_grad():
        reference = net(x, size=(64, 32))
        net = net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last), size=(64, 32))
    assert torch.allclose(reference, out, atol=1e-4)
    net.train()(x.contiguous(memory_format=torch.channels_last)).mean().backward()


def test_channels_last_network_returns_contiguous_logits():
    # The per-pixel work on the logits (losses, SpatialMix's gather, argmax) is several times
    # slower on channels-last tensors: the network hands back the usual layout.
    net = tiny().eval().to(memory_format=torch.channels_last)
    x = image(n=2, h=64, w=32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for size in (None, (64, 32)):
            out = net(x, size=size)
            assert out.is_contiguous()
            assert not out.is_contiguous(memory_format=torch.channels_last)


# -- compatibility with the published network -----------------------------------------------------

def test_r101_keys_shapes_and_outputs_match_published():
    torch.manual_seed(0)
    published = randomize_weights(DeeplabMulti(num_classes=19), seed=3).eval()
    ours = get_deeplabv2(arch="deeplabv2_r101").eval()
    theirs, mine = published.state_dict(), ours.state_dict()
    assert list(theirs) == list(mine)
    assert all(theirs[k].shape == mine[k].shape for k in theirs)
    frozen_in_ours = ("layer5.conv2d_list.2.", "layer5.conv2d_list.3.")  # outside the two-branch sum
    assert [n for n, p in published.named_parameters() if p.requires_grad and not n.startswith(frozen_in_ours)] \
        == [n for n, p in ours.named_parameters() if p.requires_grad]
    ours.load_state_dict(theirs, strict=True)
    x = image(h=65, w=65)
    with torch.no_grad():
        expected = published(x)
        got = ours(x)
    assert got.shape == expected.shape == (1, 19, 9, 9)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("layers", [(1, 1, 1, 1), (2, 1, 2, 2)])
def test_published_checkpoint_loads_strictly_and_reproduces(tmp_path, layers):
    published = randomize_weights(DeeplabMulti(num_classes=5, layers=layers), seed=4).eval()
    path = str(tmp_path / "published.pth")
    torch.save(published.state_dict(), path)
    ours = DeepLabV2(num_classes=5, blocks=layers, width=64)
    load_weights(ours, path)
    x = image(n=2, h=41, w=57)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), published(x), rtol=1e-5, atol=1e-5)


def test_our_checkpoint_loads_into_published(tmp_path):
    ours = randomize_weights(DeepLabV2(num_classes=5, blocks=(1, 2, 1, 1), width=64), seed=5).eval()
    published = DeeplabMulti(num_classes=5, layers=(1, 2, 1, 1))
    published.load_state_dict(ours.state_dict(), strict=True)
    x = image(h=49, w=33)
    with torch.no_grad():
        assert torch.allclose(published.eval()(x), ours(x), rtol=1e-5, atol=1e-5)


# -- weight files ----------------------------------------------------------------------------------

def outputs(net, x=None):
    with torch.no_grad():
        return net.eval()(image(h=64, w=32) if x is None else x)


def test_checkpoint_round_trip_bit_for_bit(tmp_path):
    net = tiny(seed=1)
    optimizer = torch.optim.SGD(net.param_groups(0.1), lr=0.1)
    net.train()(image(n=2, h=64, w=32)).mean().backward()  # moves weights and BN statistics
    optimizer.step()
    path = str(tmp_path / "w.pth")
    torch.save(net.state_dict(), path)
    restored = get_deeplabv2(arch="deeplabv2_tiny", restore_from=path)
    for k, v in net.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    assert torch.equal(outputs(restored), outputs(net))


def test_lightning_checkpoint_prefers_net_and_accepts_prefix(tmp_path):
    student, teacher = tiny(seed=1), tiny(seed=2)
    path = str(tmp_path / "last.ckpt")
    torch.save(lightning_checkpoint(student.state_dict(), teacher.state_dict()), path)
    assert torch.equal(outputs(get_deeplabv2(arch="deeplabv2_tiny", restore_from=path)), outputs(student))
    assert torch.equal(outputs(load_weights(tiny(), path, prefix="ema_net")), outputs(teacher))
    assert set(read_weight_file(path, prefix="ema_net.")) == set(teacher.state_dict())
    with pytest.raises(WeightFileError, match=r"no weights under 'teacher\.'.*ema_net, net"):
        read_weight_file(path, prefix="teacher")

    only_teacher = str(tmp_path / "teacher.ckpt")
    torch.save({"state_dict": {"ema_net." + k: v for k, v in teacher.state_dict().items()}}, only_teacher)
    assert torch.equal(outputs(load_weights(tiny(), only_teacher)), outputs(teacher))


def test_lightning_checkpoint_with_python_objects(tmp_path):
    net = tiny(seed=1)
    path = str(tmp_path / "hp.ckpt")
    torch.save(lightning_checkpoint(net.state_dict(), hyper_parameters=argparse.Namespace(lr=1e-4)), path)
    assert torch.equal(outputs(load_weights(tiny(), path)), outputs(net))
    # Anything else must be tensors only: no arbitrary unpickling of foreign files.
    other = str(tmp_path / "pickled.pth")
    torch.save({"args": argparse.Namespace(lr=1e-4), **net.state_dict()}, other)
    with pytest.raises(WeightFileError, match="pickled.pth.*state dict"):
        load_weights(tiny(), other)


def test_module_prefix_and_missing_num_batches_tracked(tmp_path):
    net = tiny(seed=1)
    path = str(tmp_path / "ddp.pth")
    torch.save({"module." + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")},
               path)
    assert torch.equal(outputs(load_weights(tiny(), path)), outputs(net))


def test_imagenet_init_keeps_fresh_head(tmp_path):
    source = tiny(seed=1, num_classes=21)
    state = {"Scale." + k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["Scale.fc1_voc12_c0.weight"] = torch.zeros(1000, 2048)
    path = str(tmp_path / "DeepLab_resnet_pretrained_init-f81d91e8.pth")
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the released file predates the zip format
    net = tiny(seed=7)
    fresh_head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("layer5.")}
    load_weights(net, path)
    for k, v in net.state_dict().items():
        if k.startswith("layer5."):
            assert torch.equal(v, fresh_head[k])
        elif not k.endswith("num_batches_tracked"):
            assert torch.equal(v, source.state_dict()[k]), k
    assert not any(k.startswith(("fc", "layer5")) for k in read_weight_file(path))


def test_second_head_is_ignored_with_a_warning(tmp_path):
    net = tiny(seed=1)
    state = dict(net.state_dict())
    state["layer6.conv2d_list.0.weight"] = torch.zeros(19, 256, 3, 3)
    path = str(tmp_path / "multi.pth")
    torch.save(state, path)
    with pytest.warns(UserWarning, match="layer6"):
        restored = load_weights(tiny(), path)
    assert torch.equal(outputs(restored), outputs(net))


# -- errors -------------------------------------------------------------------------------------------

def one_line_error(path, **kwargs):
    with pytest.raises(WeightFileError) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_weights(tiny(**kwargs), path)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message and path in message
    return message


def test_missing_and_unreadable_files(tmp_path):
    assert "not found" in one_line_error(str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("this is not a checkpoint\n")
    assert "not a PyTorch weight file" in one_line_error(str(garbage))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "not a PyTorch weight file" in one_line_error(str(empty))
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), str(tensor))
    assert "Tensor" in one_line_error(str(tensor))


def test_other_number_of_classes_names_the_head(tmp_path):
    path = str(tmp_path / "c21.pth")
    torch.save(tiny(num_classes=21).state_dict(), path)
    message = one_line_error(path)
    assert "layer5.conv2d_list.0.weight (file [21, 512, 3, 3], network [19, 512, 3, 3])" in message
    assert "mis-shaped (8)" in message and "head has 21 classes, the network 19" in message


def test_missing_unexpected_and_truncated_lists(tmp_path):
    state = dict(tiny().state_dict())
    del state["layer1.0.conv1.weight"]
    state["aux.weight"] = torch.zeros(1)
    path = str(tmp_path / "odd.pth")
    torch.save(state, path)
    message = one_line_error(path)
    assert "missing (1) layer1.0.conv1.weight" in message and "unexpected (1) aux.weight" in message

    deeper = str(tmp_path / "deeper.pth")
    torch.save(DeepLabV2(blocks=(1, 1, 3, 1), width=16).state_dict(), deeper)
    message = one_line_error(deeper)
    assert "unexpected (36) layer3.1.conv1.weight" in message and "and 26 more" in message
