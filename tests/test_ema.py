import copy

import pytest
import torch
from torch import nn

from utils.ema import ema_alpha, ema_update


def _net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    for p in net[1].parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        net[1].running_mean.uniform_()
        net[1].running_var.uniform_(0.5, 2)
        net[1].num_batches_tracked.fill_(seed + 1)
    return net


def test_alpha_schedule():
    assert ema_alpha(0, 0.99) == 0.0
    assert ema_alpha(1, 0.99) == 0.5
    assert ema_alpha(2, 0.99) == pytest.approx(2 / 3)
    assert ema_alpha(99, 0.99) == pytest.approx(0.99)
    assert ema_alpha(1000, 0.99) == 0.99
    assert ema_alpha(500, max_alpha=0.999) == pytest.approx(1 - 1 / 501)
    assert ema_alpha(5000, max_alpha=0.999) == 0.999
    values = [ema_alpha(s, 0.99) for s in range(300)]
    assert values == sorted(values) and max(values) == 0.99


def test_update_is_the_weighted_average_of_all_parameters():
    teacher, student = _net(0), _net(1)
    before = copy.deepcopy(teacher)
    alpha = ema_update(teacher, student, step=3, max_alpha=0.99)
    assert alpha == pytest.approx(0.75)
    for t, b, s in zip(teacher.parameters(), before.parameters(), student.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s, rtol=0, atol=1e-6)
    # buffers are left alone by default
    for t, b in zip(teacher.buffers(), before.buffers()):
        assert torch.equal(t, b)


def test_first_step_copies_the_student():
    teacher, student = _net(0), _net(1)
    ema_update(teacher, student, step=0, max_alpha=0.99)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)


def test_student_is_untouched_and_no_graph_is_built():
    teacher, student = _net(0), _net(1)
    reference = copy.deepcopy(student)
    ema_update(teacher, student, step=5, max_alpha=0.99)
    for s, r in zip(student.parameters(), reference.parameters()):
        assert torch.equal(s, r)
    assert all(t.grad_fn is None for t in teacher.parameters())


def test_different_architectures_are_an_error():
    with pytest.raises(ValueError, match="same architecture"):
        ema_update(nn.Linear(3, 4), nn.Linear(4, 3), step=1, max_alpha=0.99)
