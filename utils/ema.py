"""Exponential moving average of the student's weights into the teacher (stage 6, self-distillation).

``theta_teacher <- alpha * theta_teacher + (1 - alpha) * theta_student`` with
``alpha = min(1 - 1 / (step + 1), max_alpha)``: at step 0 the teacher becomes a copy of the
student, then it averages over a growing window capped at ``1 / (1 - max_alpha)`` steps.

Only parameters are averaged by default (``buffers="keep"``), as in the published method: the
teacher's BatchNorm running statistics come from its own forward passes in training mode.
``buffers="copy"`` takes the student's buffers instead, ``buffers="ema"`` averages floating-point
buffers like parameters (integer buffers such as ``num_batches_tracked`` are then copied).

``--compile step`` averages with :func:`ema_lerp` compiled: the weight ``1 - alpha`` is a 0-dim
tensor there, so the compiled code serves every alpha (a Python number would be compiled in).
"""
import torch

BUFFER_MODES = ("keep", "copy", "ema")


def ema_alpha(step, max_alpha=0.99):
    """Teacher weight of the EMA at optimiser step ``step`` (0-based)."""
    return min(1.0 - 1.0 / (step + 1), max_alpha)


def _pairs(teacher_tensors, student_tensors, kind):
    teacher_tensors, student_tensors = list(teacher_tensors), list(student_tensors)
    if len(teacher_tensors) != len(student_tensors) or any(
        t.shape != s.shape for t, s in zip(teacher_tensors, student_tensors)
    ):
        raise ValueError(
            f"EMA teacher and student {kind} do not match: the two networks must have the same architecture"
        )
    return teacher_tensors, student_tensors


def ema_lerp(teacher_tensors, student_tensors, weight):
    """``t <- t + weight * (s - t)`` for each pair, ``weight`` a 0-dim tensor: the EMA step in the
    form ``torch.compile`` fuses (one pass over the weights, whatever the weight)."""
    for t, s in zip(teacher_tensors, student_tensors):
        t.lerp_(s.to(t.dtype), weight)


def _average(teacher_tensors, student_tensors, alpha, lerp=None):
    floats = [(t, s) for t, s in zip(teacher_tensors, student_tensors) if t.is_floating_point()]
    if floats:
        teacher_floats, student_floats = zip(*floats)
        # lerp(t, s, w) = t + w * (s - t) = alpha * t + (1 - alpha) * s for w = 1 - alpha
        if lerp is None:
            torch._foreach_lerp_(list(teacher_floats), [s.to(t.dtype) for t, s in floats], 1.0 - alpha)
        else:  # a fill on the device: no copy from the host
            lerp(list(teacher_floats), list(student_floats),
                 torch.full((), 1.0 - alpha, dtype=torch.float32, device=teacher_floats[0].device))
    for t, s in zip(teacher_tensors, student_tensors):
        if not t.is_floating_point():
            t.copy_(s)


@torch.no_grad()
def ema_update(teacher, student, step, max_alpha=0.99, buffers="keep", lerp=None):
    """Move ``teacher``'s parameters towards ``student``'s; returns the alpha used.

    All parameters take part, frozen ones included (for the frozen BatchNorm affine parameters
    teacher and student are identical anyway). Call it after the optimiser step. ``lerp``: the
    function that averages the floating-point tensors, :func:`ema_lerp` or its compiled form
    (default: one ``torch._foreach_lerp_``).
    """
    if buffers not in BUFFER_MODES:
        raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
    alpha = ema_alpha(step, max_alpha)
    _average(*_pairs(teacher.parameters(), student.parameters(), "parameters"), alpha, lerp)
    if buffers != "keep":
        teacher_buffers, student_buffers = _pairs(teacher.buffers(), student.buffers(), "buffers")
        if buffers == "ema":
            _average(teacher_buffers, student_buffers, alpha, lerp)
        else:
            for t, s in zip(teacher_buffers, student_buffers):
                t.copy_(s)
    return alpha
