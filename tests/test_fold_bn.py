"""models/fold_bn.py: BatchNorm folded into the convolutions gives the logits of the network as it
is, up to float rounding, for every architecture; the original network is left as it was; only the
pairs whose folding is exact are folded."""
import pytest
import torch
import torch.nn as nn

from models.fold_bn import fold_batchnorm
from models.networks import get_network

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorms(net):
    return sum(isinstance(m, BatchNorm) for m in net.modules())


def trained_statistics(net, seed=0):
    """Running statistics and affine parameters as a trained network has them, not 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return net


# arch, input (H, W), BatchNorm layers left after folding: SMP's ASPP pooling branch runs its
# Sequential through a forward of its own, so its BatchNorm stays (and still computes the same).
ARCHS = [("deeplabv2_tiny", (32, 48), 0), ("deeplabv2_r101", (24, 24), 0), ("segformer_b0", (32, 32), 0),
         ("deeplabv3plus_r50", (32, 32), 1)]


@pytest.mark.parametrize("arch, size, left", ARCHS)
def test_folded_logits_equal_the_network_as_it_is(arch, size, left):
    torch.manual_seed(0)
    net = trained_statistics(get_network(arch, num_classes=19)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)

    # The original is untouched: same weights and statistics, its BatchNorm layers, its mode.
    assert net.training and batchnorms(net) > 0
    state = net.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], v) for k, v in before.items())
    assert batchnorms(folded) == left < batchnorms(net)  # layers removed: the comparison below means something
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())

    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1)) * 60
    with torch.no_grad():
        expected, got = net.eval()(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_inside_inference_mode_channels_last_and_compiled():
    """As Lightning's evaluation hooks call it: under inference mode, on a channels-last network
    (memory format kept), and on a compiled one (the copy runs its own, folded weights)."""
    torch.manual_seed(0)
    net = trained_statistics(get_network("deeplabv2_tiny", num_classes=5)).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 40) * 60
    with torch.inference_mode():
        folded = fold_batchnorm(net)
        expected = net(x)
    assert folded.conv1.weight.is_contiguous(memory_format=torch.channels_last) and not folded.conv1.weight.is_inference()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())

    net._compiled_call_impl = net._call_impl  # what nn.Module.compile leaves, without compiling here
    copy = fold_batchnorm(net)
    assert copy._compiled_call_impl is None and batchnorms(copy) == 0


class OwnForward(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


def test_only_exact_pairs_fold():
    """Folded: a biased and a depthwise convolution, a BatchNorm without affine parameters, a
    separable convolution (a Sequential ending in a convolution). Left: a BatchNorm without running
    statistics, one after another layer, a convolution shared by two places, a Sequential with a
    forward of its own."""
    torch.manual_seed(0)
    shared = nn.Conv2d(4, 4, 1)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4), nn.ReLU(),                 # folds
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4, affine=False),   # folds
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 1)), nn.BatchNorm2d(6),  # folds
        nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4, track_running_stats=False),                      # batch statistics
        nn.ReLU(), nn.BatchNorm2d(4),                                                             # after a ReLU
        shared, nn.BatchNorm2d(4), nn.Sequential(shared),                                         # shared
        OwnForward(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)),                                        # own forward
    )
    trained_statistics(net)
    folded = fold_batchnorm(net)
    assert all(isinstance(folded[i], nn.Identity) for i in (1, 4, 6))
    assert batchnorms(folded) == batchnorms(net) - 3 == 4
    x = torch.randn(2, 3, 8, 8) * 10
    with torch.no_grad():
        expected = net.eval()(x)
        torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
