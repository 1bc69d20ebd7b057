"""The Lightning Trainer on the command line's hardware flags, with the command line's manners:
a flag Lightning rejects is a one-line error, and Ctrl-C ends the command as an interruption."""
import argparse
import contextlib
import dataclasses

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from utils.cli import UserError, at_least, devices


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """The values of :func:`add_hardware_args`."""
    accelerator: str = "auto"
    devices: object = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    fold_bn: bool = True


def add_hardware_args(parser):
    """The flags :func:`make_trainer` reads and ``--fold-bn`` (how inference runs the network), the same
    for training and the data stages; returns their group."""
    group = parser.add_argument_group("hardware")
    group.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: %(default)s)")
    group.add_argument("--devices", type=devices, default="auto",
                       help="number of devices per node, a list such as 0,1, or auto (default: %(default)s)")
    group.add_argument("--num-nodes", type=at_least(1), default=1, help="number of machines (default: %(default)s)")
    group.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default: %(default)s)")
    group.add_argument("--precision", default="32-true",
                       help="32-true as published, or bf16-mixed for speed on recent GPUs (default: %(default)s)")
    group.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                       help="for inference (pseudo-labels, hard patches, validation, test, predict mode), run a copy "
                            "of the network with each BatchNorm folded into the convolution before it: the same "
                            "results up to float rounding, faster; --no-fold-bn runs the network as it is, for "
                            "debugging (default: on)")
    return group


def make_trainer(args, **kwargs):
    """``pl.Trainer`` on ``--accelerator``, ``--devices``, ``--num-nodes``, ``--strategy`` and
    ``--precision`` of ``args`` (a :class:`HardwareConfig` or parsed flags), and ``kwargs``."""
    try:
        return pl.Trainer(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
                          strategy=args.strategy, precision=args.precision, **kwargs)
    except (MisconfigurationException, ValueError) as err:
        raise UserError(f"{' '.join(str(err).split())} (--accelerator {args.accelerator}, --devices {args.devices}, "
                        f"--strategy {args.strategy}, --precision {args.precision})") from None


@contextlib.contextmanager
def interruptible(trainer, message):
    """Lightning answers Ctrl-C by shutting down and calling ``sys.exit(1)``; raise it again as
    ``KeyboardInterrupt(message)``, which the command reports (what is kept, how to go on) with
    exit code 130."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt(message) from None
        raise
