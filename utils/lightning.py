"""The Lightning Trainer on the command line's hardware flags, with the command line's manners:
a flag Lightning rejects is a one-line error, Ctrl-C ends the command as an interruption, and the
progress is a bar on a terminal and one plain line now and then in a log file."""
import contextlib
import logging
import warnings

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from utils.cli import PlainLines, UserError, interactive


class _Quieter(logging.Filter):
    """Drops Lightning's lines that say nothing about the run: tips advertising other products, the
    TPU count, and how an integer ``val_check_interval`` is read."""
    NOISE = ("Tip:", "TPU available", "`Trainer(val_check_interval")

    def filter(self, record):
        return not any(noise in str(record.msg) for noise in self.NOISE)


for _name in ("lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_Quieter())
# A deprecation inside Lightning itself (nothing a user can act on), and the note that a run shorter
# than --log-interval logs no training curve.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")


class Bar(TQDMProgressBar):
    """Lightning's bar without ``v_num`` (a TensorBoard version number that means nothing to a reader)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class PlainProgress(Callback):
    """Progress for a log file (:class:`utils.cli.PlainLines`): training steps with the logged losses
    and images/s, prediction batches with images/s, each with the time left."""

    def on_train_start(self, trainer, pl_module):
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self.lines = PlainLines(total=int(total) if total != float("inf") else None, desc="step")
        self.lines.done = trainer.global_step  # a resumed run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        losses = "".join(f", {key.split('/', 1)[-1]} {float(value):.4f}" for key, value in trainer.callback_metrics.items()
                         if key.startswith("train/") and key.endswith("loss"))
        self.lines.update(trainer.global_step - self.lines.done, _images(batch), losses)

    def on_predict_start(self, trainer, pl_module):
        self.lines = PlainLines(total=sum(trainer.num_predict_batches), desc="batch")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.lines.update(1, _images(batch))


def _images(batch):
    """The target images of a batch (training batches hold them under ``target``)."""
    if isinstance(batch, dict):
        batch = batch.get("target", batch)
        if "image" in batch:
            return len(batch["image"])
    return 0


def make_trainer(args, callbacks=(), enable_progress_bar=True, **kwargs):
    """``pl.Trainer`` on ``--accelerator``, ``--devices``, ``--num-nodes``, ``--strategy`` and
    ``--precision`` of ``args`` (a ``modules.config.HardwareConfig`` or parsed flags), and ``kwargs``. Progress
    (unless ``enable_progress_bar=False``) is a bar on a terminal, :class:`PlainProgress` otherwise."""
    callbacks = list(callbacks)
    if enable_progress_bar:
        callbacks.append(Bar() if interactive() else PlainProgress())
    try:
        return pl.Trainer(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
                          strategy=args.strategy, precision=args.precision, callbacks=callbacks,
                          enable_progress_bar=enable_progress_bar and interactive(), **kwargs)
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
