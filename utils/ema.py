"""Exponential moving average of the student's weights into the teacher (stage 6, self-distillation).

``theta_teacher <- alpha * theta_teacher + (1 - alpha) * theta_student`` with
``alpha = min(1 - 1 / (step + 1), max_alpha)``: at step 0 the teacher becomes a copy of the
student, then it averages over a growing window capped at ``1 / (1 - max_alpha)`` steps.

Only parameters are averaged, as in the published method: the teacher's BatchNorm running
statistics come from its own forward passes in training mode. Its stochastic layers (dropout,
drop-path: the library students have them, DeepLabv2 has none) are switched off
(:func:`stochastic_layers_off`), so that the teacher's target does not change from one pass to the next.

``--compile step`` averages with :func:`ema_lerp` compiled: the weight ``1 - alpha`` is a 0-dim
tensor there, so the compiled code serves every alpha (a Python number would be compiled in).
"""
import torch


def stochastic_layers_off(net):
    """Put ``net``'s dropout and drop-path layers in eval mode, leaving every other layer's mode
    (BatchNorm's batch statistics) as it is. Called before each teacher pass: Lightning puts the
    whole module back into training mode after every validation."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath":
            m.eval()


def ema_alpha(step, max_alpha):
    """Teacher weight of the EMA at optimiser step ``step`` (0-based)."""
    return min(1.0 - 1.0 / (step + 1), max_alpha)


def ema_lerp(teacher_tensors, student_tensors, weight):
    """``t <- t + weight * (s - t)`` for each pair, ``weight`` a 0-dim tensor: the EMA step in the
    form ``torch.compile`` fuses (one pass over the weights, whatever the weight)."""
    for t, s in zip(teacher_tensors, student_tensors):
        t.lerp_(s.to(t.dtype), weight)


@torch.no_grad()
def ema_update(teacher, student, step, max_alpha, lerp=None):
    """Move ``teacher``'s parameters towards ``student``'s; returns the alpha used.

    All parameters take part, frozen ones included (for the frozen BatchNorm affine parameters
    teacher and student are identical anyway). Call it after the optimiser step. ``lerp``: the
    function that averages them, :func:`ema_lerp` or its compiled form (default: one
    ``torch._foreach_lerp_``).
    """
    alpha = ema_alpha(step, max_alpha)
    teachers, students = list(teacher.parameters()), list(student.parameters())
    if len(teachers) != len(students) or any(t.shape != s.shape for t, s in zip(teachers, students)):
        raise ValueError("EMA teacher and student parameters do not match: the two networks must have the same "
                         "architecture")
    # lerp(t, s, w) = t + w * (s - t) = alpha * t + (1 - alpha) * s for w = 1 - alpha
    if lerp is None:
        torch._foreach_lerp_(teachers, [s.to(t.dtype) for t, s in zip(teachers, students)], 1.0 - alpha)
    else:  # a fill on the device: no copy from the host
        lerp(teachers, students, torch.full((), 1.0 - alpha, dtype=torch.float32, device=teachers[0].device))
    return alpha
