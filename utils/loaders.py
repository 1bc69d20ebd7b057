"""How every data loader is set up: how many worker processes, and the ``DataLoader`` settings the
training data module (``modules/data.py``) and the data stages (``modules/prediction.py``) share.

- **Workers** (``--num-workers``, per device): unless typed, the cores this process may run on (its
  affinity mask, a job scheduler's share rather than the machine's) divided among the run's
  processes on this machine (``--devices`` per node), at most :data:`MAX_WORKERS`, at least 1:
  decoding limits the data stages, and more workers per device would leave the main process, the
  PNG writers and the other devices' workers too little (measured: docs/benchmarks.md).
- **Pinned memory** when the run's accelerator is CUDA (page-locked batches copy to the device
  asynchronously); never on CPU, where it only costs.
- **Persistent workers** for loaders that are iterated again (training epochs, every validation),
  so that their worker processes are started once; not for one-pass loaders (the data stages).
- **Prefetch**: PyTorch's 2 batches per worker, raised so that at least :data:`MIN_QUEUED_BATCHES`
  batches are queued in all (with 1 worker, 4): the step never waits for one slow image while the
  queue holds a few steps' worth; more would only hold memory (``workers × prefetch`` batches, pinned
  on CUDA), since the worker count, not the queue, sets the throughput.
"""
import os

from utils.cli import at_least

MAX_WORKERS = 8
MIN_QUEUED_BATCHES = 4


def available_cores():
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def default_num_workers(processes=1, cores=None):
    """Loader processes per device when ``--num-workers`` is not typed: ``cores`` (default: this
    process's, :func:`available_cores`) shared by ``processes`` processes, at most :data:`MAX_WORKERS`,
    at least 1."""
    cores = available_cores() if cores is None else cores
    return max(1, min(MAX_WORKERS, cores // max(1, processes)))


def num_workers_or_default(num_workers, processes=1):
    """``num_workers`` as typed, or :func:`default_num_workers` for ``None`` (the flag left out)."""
    return default_num_workers(processes) if num_workers is None else num_workers


def add_num_workers_arg(group):
    """``--num-workers``: ``None`` when left out (resolved per run by :func:`loader_kwargs`)."""
    group.add_argument("--num-workers", type=at_least(0), default=None, metavar="N",
                       help=f"data loader processes per device; 0 loads in the main process (default: the CPU "
                            f"cores this process may use divided by the devices per node, at most {MAX_WORKERS}, at "
                            f"least 1: {default_num_workers()} here with one device)")
    return group


def loader_kwargs(num_workers=None, trainer=None, repeated=False):
    """``DataLoader`` keyword arguments: ``num_workers`` (``None``: the default for the devices of
    ``trainer``), pinned memory on CUDA, persistent workers when the loader is ``repeated``, and the
    prefetch depth (module docstring). Without a ``trainer`` (a loader used outside a run): one
    process, pinned when CUDA is available."""
    if trainer is not None:
        processes, cuda = trainer.num_devices, trainer.strategy.root_device.type == "cuda"
    else:
        import torch

        processes, cuda = 1, torch.cuda.is_available()
    workers = num_workers_or_default(num_workers, processes)
    kwargs = {"num_workers": workers, "pin_memory": cuda}
    if workers > 0:
        kwargs["persistent_workers"] = repeated
        kwargs["prefetch_factor"] = max(2, -(-MIN_QUEUED_BATCHES // workers))
    return kwargs
