"""``torch.compile`` for training (``main.py --compile``): the levels, the compiled-code cache.

Levels (``--compile``):

- ``off`` (the default): eager, as published.
- ``network``: the networks (the student, and the EMA teacher of self-distillation) compiled in
  place (``nn.Module.compile``), so state dicts, checkpoints and weight files keep their keys.
- ``step``: the networks and the tensor work of a training step around them, as compiled
  functions of static shapes: the losses, SpatialMix's gathers and the batch flip, the consistency
  target, the photometric augmentation and the EMA update of the teacher. They are compiled with
  ``fullgraph=True``, so nothing in them can read a value back to the host (a graph break would be
  an error). Their random numbers are drawn eagerly on the device first, in the eager step's order,
  and passed in (a compiled function takes no ``torch.Generator``), so a compiled run draws what an
  eager one draws.

``--compile-mode`` is ``torch.compile``'s mode: ``default``; ``reduce-overhead`` (CUDA graphs for
the compiled parts whose shapes are static: fewer kernel launches from the host);
``max-autotune`` (also tries kernel configurations, minutes more to compile);
``max-autotune-no-cudagraphs``.

Compiled code is kept across runs: the inductor cache (``TORCHINDUCTOR_CACHE_DIR``) goes to
``<--log-tb-dir>/inductor_cache`` unless the user set it, so a second run of the same networks and
shapes loads its kernels instead of compiling them again.

Not yet proven on a GPU (docs/benchmarks.md, "The GPU check"), hence off by default; on
CPU a compiled step gives the eager step's losses and weights within float rounding
(tests/test_compile.py).
"""
import os

import torch

# The levels and modes are the flags' choices (modules/config.py); these modes capture CUDA graphs.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
CACHE_FOLDER = "inductor_cache"  # under the experiment root (--log-tb-dir)
# The compiler behind torch.compile. Tests set "aot_eager" (the same graph capture and autograd, no
# code generation: seconds instead of minutes on a small CPU).
BACKEND = "inductor"
RECOMPILE_LIMIT = 32

_cache_dirs_set = set()  # the values of CACHE_ENV this process set itself


def _options(mode):
    if BACKEND != "inductor":  # modes are the inductor's
        return {"backend": BACKEND}
    return {"backend": BACKEND, "mode": None if mode == "default" else mode}


def compile_network(net, mode="default"):
    """Compile ``net`` in place (its ``forward`` runs compiled; parameters and keys stay its own), for
    static shapes: each input shape (images, hard patches, a last smaller validation batch) gets a
    graph of its own. A training run has a few; static shapes suit CUDA graphs and give the best
    kernels, and symbolic ones fail to compile for SegFormer in torch 2.14."""
    # One forward serves several graphs: teacher (no gradients), student, hard patches, evaluation,
    # several networks of one class; past torch's default of 8 the rest would run eagerly unnoticed.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    net.compile(dynamic=False, **_options(mode))
    return net


def compile_function(fn, mode="default", dynamic=False):
    """``fn`` compiled in one graph (a host read inside it is an error), for static shapes unless
    ``dynamic`` says otherwise (torch.compile's ``dynamic``: True for symbolic shapes, None for
    automatic ones)."""
    return torch.compile(fn, dynamic=dynamic, fullgraph=True, **_options(mode))


class StepFunctions:
    """The tensor functions of a training step, compiled at ``--compile step`` and plain otherwise:
    ``step_functions(fn)`` is the callable to use, each function compiled once."""

    def __init__(self, level="off", mode="default"):
        self.level, self.mode = level, mode
        self._compiled = {}

    @property
    def compiles(self):
        return self.level == "step"

    def __call__(self, fn):
        if not self.compiles:
            return fn
        if fn not in self._compiled:
            self._compiled[fn] = compile_function(fn, self.mode)
        return self._compiled[fn]


def _torch_default_cache_dir():
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # pragma: no cover - depends on the torch version
        return None
    return os.path.abspath(default_cache_dir())


def use_cache_dir(root):
    """Keep compiled code in ``<root>/inductor_cache`` unless ``TORCHINDUCTOR_CACHE_DIR`` names
    another folder the user chose; returns the folder in use. (torch fills the variable in with its
    own default, a folder under /tmp, at its first compilation: that one is replaced.)"""
    current = os.environ.get(CACHE_ENV)
    if current is None or current in _cache_dirs_set or os.path.abspath(current) == _torch_default_cache_dir():
        current = os.path.abspath(os.path.join(root, CACHE_FOLDER))
        os.environ[CACHE_ENV] = current
        _cache_dirs_set.add(current)
    return current
