"""The Lightning Trainer on the command line's hardware flags, with the command line's manners:
a flag Lightning rejects is a one-line error, and Ctrl-C ends the command as an interruption."""
import contextlib

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from utils.cli import UserError


def make_trainer(args, **kwargs):
    """``pl.Trainer`` on ``--accelerator``, ``--devices``, ``--num-nodes``, ``--strategy`` and
    ``--precision`` of ``args``, and ``kwargs``."""
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
