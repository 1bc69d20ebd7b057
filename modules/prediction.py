"""Lightning prediction machinery of the data stages (stage 2 pseudo-labels, stage 5 hard patches).

Both stages run the provider's network over every target training image and write files per
image. What they share lives here:

- :class:`PredictionModule`: the network wrapped for ``Trainer.predict`` (a torch network with its
  BatchNorm folded into its convolutions, ``models/fold_bn.py``); a step returns the argmax labels
  and the mean per-pixel entropy of the (flip- and scale-augmented) logits.
- :class:`PredictionData`: a data module that gives each image to exactly one process (no padded
  duplicates: every file is written once) and leaves out the batches an earlier run finished.
- :class:`FileWriter`: a ``BasePredictionWriter`` base that writes each batch's files on the
  process that predicted it, on writer threads (``utils/writers.py``) while the next batches are
  predicted; :class:`RecordWriter` then appends one line per image to that process's record file
  (flushed and synced), so that an interrupted run resumes where it stopped.
- :func:`run_predict`: the ``Trainer`` (devices, nodes, precision, progress bar) around them.
"""
import glob
import os

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Sampler

from datasets.base import collate
from datasets.samplers import ShardSampler
from models.fold_bn import fold_batchnorm
from modules.providers import ProviderNetwork, check_finite
from utils.cli import UserError
from utils.inference import entropy_map, multiscale_logits
from utils.lightning import interruptible, make_trainer
from utils.loaders import loader_kwargs
from utils.writers import BackgroundWriter


class PredictionModule(pl.LightningModule):
    """The provider's network for ``Trainer.predict``.

    Logits are ``net(x) + flip(net(flip(x)))`` at the input size (``flip=True``, the published
    pseudo-label computation); with several ``scales`` the input is also resized by each factor
    (bilinear), the flip-augmented logits of each scale are resized back to the input size and
    averaged (``utils.inference.multiscale_logits``). A step returns ``name`` (list), ``label``
    (uint8 N×H×W train ids, CPU) and ``entropy`` (float64 N, CPU: mean per-pixel entropy of the
    softmax of those logits; with ``confidence_scale`` also ``confidence``, int32 N×H×W: the largest
    softmax probability times that scale, rounded; with ``complementary_below`` also ``complementary``,
    int32 N×H×W: bit ``c`` set where class ``c``'s softmax probability is below it, the label's class never). Logits that are not finite stop the run with one line naming the
    image and ``source``, the network's file (``modules/providers.py``'s ``check_finite``).

    With ``fold_bn`` (``--fold-bn``, the default) a torch network runs as a copy with its BatchNorm
    folded into its convolutions (``models/fold_bn.py``: the same logits up to float rounding); a
    provider file (``modules/providers.py``) runs as it is.
    """

    def __init__(self, net, flip=True, scales=(1.0,), fold_bn=True, source="the network", confidence_scale=None,
                 complementary_below=None):
        super().__init__()
        self.confidence_scale, self.complementary_below = confidence_scale, complementary_below
        self.net = fold_batchnorm(net) if fold_bn and not isinstance(net, ProviderNetwork) else net
        self.source = source
        self.flip = flip
        self.scales = tuple(scales)
        # A process may have nothing left to predict (a resumed run, more processes than batches).
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def logits(self, images):
        """The flip- and scale-augmented logits at the input size, float32."""
        return multiscale_logits(self.net, images, self.scales, self.flip, size=tuple(images.shape[-2:])).float()

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        logits = self.logits(batch["image"])
        check_finite(logits, batch["name"], self.source)
        label = logits.argmax(dim=1, keepdim=True)
        out = {"name": list(batch["name"]),
               "label": label[:, 0].to(torch.uint8).cpu(),
               # Averaged in double: the value is written out in full and decides the easy/hard split.
               "entropy": entropy_map(logits).double().mean(dim=(1, 2)).cpu()}
        if self.confidence_scale or self.complementary_below:
            probabilities = logits.softmax(dim=1)
        if self.confidence_scale:
            out["confidence"] = (probabilities.amax(dim=1) * self.confidence_scale).round().int().cpu()
        if self.complementary_below:
            bit = 2 ** torch.arange(probabilities.shape[1], device=logits.device, dtype=torch.int32)
            below = (probabilities < self.complementary_below).int()
            below.scatter_(1, label, 0)  # never the pixel's own label (P >= 1/C)
            out["complementary"] = (below * bit[None, :, None, None]).sum(dim=1, dtype=torch.int32).cpu()
        return out


def shard_batches(names, batch_size, rank=0, world_size=1, done=frozenset()):
    """Index batches of this process, without the batches whose images are all in ``done``.

    The image list is cut into consecutive batches and the batches are dealt out to the processes
    (``rank::world_size``, no padding), so every image is predicted once and always in the same batch
    company, whatever the number of processes and however often the run was resumed (a batch with
    one unfinished image is predicted whole). Kernels may depend on the batch, so this is what makes
    the results bit-identical across those runs.
    """
    batches = [list(range(i, min(i + batch_size, len(names)))) for i in range(0, len(names), batch_size)]
    mine = [batches[b] for b in ShardSampler(len(batches), rank, world_size)]
    return [batch for batch in mine if not all(names[i] in done for i in batch)]


class _Indices(Sampler):
    def __init__(self, indices):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class PredictionData(pl.LightningDataModule):
    """One loader over ``dataset`` (items are dicts with ``name``), sharded per process."""

    def __init__(self, dataset, names, batch_size=1, num_workers=None, done=frozenset()):
        super().__init__()
        self.dataset, self.names = dataset, list(names)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.done = frozenset(done)

    def predict_dataloader(self):
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batches = shard_batches(self.names, self.batch_size, rank, world, self.done)
        # Only the last batch of the list can be short, and it comes last in its process, so batching
        # the concatenation again gives back exactly these batches.
        indices = _Indices(i for batch in batches for i in batch)
        # One pass: no persistent workers (utils/loaders.py).
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, collate_fn=collate,
                          **loader_kwargs(self.num_workers, trainer))


# -- per-image records -------------------------------------------------------------------------------
# A record is one tab-separated line ``name<TAB>field...``. Each process appends to its own file, so
# no two processes ever write the same file. Only newline-terminated lines count: a run killed in
# the middle of a write leaves at most a torn last line, which readers ignore and writers cut off.

def _cut_torn_tail(path):
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class RecordFile:
    """Append-only record file of one process."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            _cut_torn_tail(path)
        self.path = path
        # surrogateescape: a file name that is not UTF-8 is recorded as its bytes
        self.file = open(path, "a", encoding="utf-8", errors="surrogateescape")

    def append(self, rows):
        """Append rows (``(name, field, ...)`` tuples of strings) and make them durable."""
        if not rows:
            return
        try:
            self.file.write("".join("\t".join(row) + "\n" for row in rows))
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as err:  # a full disk names no file: name it
            raise OSError(err.errno, err.strerror, self.path) from None

    def close(self):
        if not self.file.closed:
            self.file.close()


def read_records(folder):
    """All records under ``folder/*.tsv`` as ``{name: [field, ...]}`` (one entry per name)."""
    records = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.tsv"))):
        with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                row = line.rstrip("\n").split("\t")
                if len(row) >= 2 and row[0]:
                    records[row[0]] = row[1:]
    return records


class FileWriter(BasePredictionWriter):
    """Writes the files of each predicted batch on writer threads (``utils/writers.py``) while the
    next batches are predicted.

    Subclasses implement :meth:`write_batch` (the files of one batch; it runs on a writer thread)
    and may implement :meth:`written` (runs on the record thread with what ``write_batch`` returned,
    in batch order, once the batch's files exist). Every write is finished, or its error raised,
    before the prediction ends: before the stage reads what was written and reports.
    """

    def __init__(self):
        super().__init__(write_interval="batch")
        self.writer = None

    def write_batch(self, prediction, batch):
        raise NotImplementedError

    def written(self, result):
        pass

    def setup(self, trainer, pl_module, stage):
        self.writer = BackgroundWriter()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        # The batch is not handed on: only ``prediction`` (on the CPU) is needed, and the images would
        # stay in memory as long as the job waits.
        self.writer.submit(self.write_batch, prediction, None, then=self.written)

    def on_predict_end(self, trainer, pl_module):
        self.writer.finish()

    def on_exception(self, trainer, pl_module, exception):
        # Batches predicted before the error (a damaged image, Ctrl-C) are still written (and recorded).
        if self.writer is not None:
            self.writer.settle()

    def teardown(self, trainer, pl_module, stage):
        if self.writer is not None:
            self.writer.close()


class RecordWriter(FileWriter):
    """Writes the files of each predicted batch, then records its images in ``record_dir/<rank>.tsv``.

    Subclasses implement :meth:`write_batch` (files of one batch, returning one record row per
    image; on a writer thread, :class:`FileWriter`). A batch's rows are appended (on the record
    thread, in batch order) only after its files exist, so "recorded" means "done".
    """

    def __init__(self, record_dir):
        super().__init__()
        self.record_dir = record_dir
        self.records = None

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        self.records = RecordFile(os.path.join(self.record_dir, f"{trainer.global_rank}.tsv"))

    def written(self, rows):
        self.records.append(rows)

    def on_predict_end(self, trainer, pl_module):
        super().on_predict_end(trainer, pl_module)
        self.records.close()

    def on_exception(self, trainer, pl_module, exception):
        super().on_exception(trainer, pl_module, exception)
        if self.records is not None:
            self.records.close()

    def teardown(self, trainer, pl_module, stage):
        super().teardown(trainer, pl_module, stage)
        if self.records is not None:
            self.records.close()


def run_predict(module, data, writer, hardware):
    """Predict ``data`` with ``module`` on the devices of ``hardware`` (``utils.lightning.HardwareConfig``),
    ``writer`` writing the files. Returns ``True`` in the first process (the one that should report),
    ``False`` in the others."""
    trainer = make_trainer(hardware, callbacks=[writer], logger=False, enable_checkpointing=False,
                           enable_model_summary=False, enable_progress_bar=True, use_distributed_sampler=False)
    with interruptible(trainer, "finished files are kept; rerun the same command to resume"):
        trainer.predict(module, datamodule=data, return_predictions=False)
    # Every process waits here until all have written their files and records, so that the first
    # one can read them all. (Not in a predict hook: a process with nothing to predict skips those.)
    try:
        trainer.strategy.barrier("records-written")
    except RuntimeError as err:
        raise UserError(f"another process of this run stopped early ({err.__class__.__name__}; its message is above); "
                        "finished images are kept: rerun the command to complete them") from None
    return trainer.is_global_zero
