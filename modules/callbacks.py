"""What a run writes besides checkpoints, kept out of the stage modules: the score table and the
``miou_record.csv`` row after every evaluation (and, for a target scored per condition, a line per
condition after the table and a row in ``miou_record_<condition>.csv``), the training pictures in
TensorBoard, the predicted PNGs of ``--save-predictions``, and with ``--compile`` the compile time apart from
the step time. The stage modules compute and log numbers and return what these callbacks turn into files;
the runner attaches them."""
import os
import time

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from datasets.pixels import to_bgr_uint8
from utils.cli import UserError
from utils.io import write_png, write_rgb_png
from utils.label_free import CRITERIA
from utils.labels import colorize
from utils.metrics import (append_csv_row, append_record, check_csv_header, condition_record_path,
                           format_condition_table, format_table, record_header)
from utils.visualize import labelled_picture


class ScoreRecord(Callback):
    """After each validation and test (first process only; every process holds the same scores,
    summed over all of them): print a line per validation, the per-class table after a test, and
    append a row to the records: the label-free scores to ``label_free_record.csv`` beside the mIoU
    record, where labels were scored, the IoUs to the mIoU record. Each row names what it scored: a
    validation the run's network at that step (``weights`` the run folder), a test the file of
    ``--restore-from``. Scores per condition (ACDC) add
    their means and a row to each condition's own record, ``<record>_<condition>.csv``, in the format
    of the main one, which stays as it is."""

    def __init__(self, record_path, test_title, select_by, run_folder, test_weights, num_classes):
        check_records(record_path, num_classes)  # before any work, not after the first validation
        self.record_path = record_path
        self.run_folder, self.test_weights = run_folder, test_weights
        self.test_title, self.select_by = test_title, select_by
        self.best = None

    def _write(self, trainer, scores, title=None):
        if not trainer.is_global_zero or scores is None:
            return
        if title is None:  # a validation: one line, the table is in the record
            conditions = scores.get("conditions") or {}
            chosen = {"val-miou": scores.get("miou"), "last": trainer.global_step}.get(
                self.select_by, scores["label_free"].get(self.select_by))
            if chosen is not None:
                self.best = chosen if self.best is None else max(self.best, chosen)
            miou = f", val mIoU {scores['miou']:.2f}" if "miou" in scores and self.select_by != "val-miou" else ""
            by_condition = "".join(f", {name} {c['miou']:.2f}" for name, c in conditions.items())
            name = "val mIoU" if self.select_by == "val-miou" else self.select_by
            rank_zero_info(f"validation at step {trainer.global_step}: {name} {chosen:.4f} (best "
                           f"{self.best:.4f}){miou}{by_condition}")
            record_scores(self.record_path, scores, trainer.global_step, self.run_folder)
        else:
            report_test(self.record_path, scores, title, self.test_weights)

    def on_train_start(self, trainer, pl_module):
        kept = getattr(trainer.checkpoint_callback, "best_model_score", None)  # restored by --resume
        if kept is not None and self.best is None:
            self.best = float(kept)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write(trainer, pl_module.last_scores)

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, pl_module.last_scores, self.test_title)


def report_test(record_path, scores, title, weights):
    """Print a test's table (and its label-free scores) and append its rows to the records."""
    conditions = scores.get("conditions") or {}
    if "miou" in scores:
        rank_zero_info(format_table(scores, title=title) + ("\n" + format_condition_table(conditions) if conditions else ""))
    if scores.get("label_free"):
        rank_zero_info(f"{title}: label-free " + ", ".join(f"{k} {v:.4f}" for k, v in scores["label_free"].items()))
    record_scores(record_path, scores, "test", weights)


LABEL_FREE_RECORD, LABEL_FREE_HEADER = "label_free_record.csv", ["step", "weights", *CRITERIA]


def check_records(record_path, num_classes):
    """Refuse a record beside ``record_path`` (the mIoU record, a condition's, the label-free one)
    written in another format: one line, before anything is run."""
    folder, (stem, ext) = os.path.dirname(record_path), os.path.splitext(os.path.basename(record_path))
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name == LABEL_FREE_RECORD:
            check_csv_header(os.path.join(folder, name), LABEL_FREE_HEADER)
        elif name.startswith(stem) and name.endswith(ext):
            check_csv_header(os.path.join(folder, name), record_header(num_classes))


def record_scores(record_path, scores, step, weights):
    """Append one evaluation to ``label_free_record.csv`` beside ``record_path`` (where label-free
    scores were computed), to the mIoU record and to each condition's (where labels were scored)."""
    if scores.get("label_free"):
        append_csv_row(os.path.join(os.path.dirname(record_path), LABEL_FREE_RECORD), LABEL_FREE_HEADER,
                       [step, weights, *(f"{scores['label_free'][c]:.6f}" for c in CRITERIA)])
    if "miou" in scores:
        append_record(record_path, scores, step, weights)
        for condition, condition_scores in (scores.get("conditions") or {}).items():
            append_record(condition_record_path(record_path, condition), condition_scores, step, weights)


class TrainingPictures(Callback):
    """``input | target | prediction`` of the first image of a training batch in TensorBoard, every
    ``interval`` steps, under column titles and with a legend of the classes shown; the step returns
    them as ``picture`` (images, targets, logits)."""

    def __init__(self, interval):
        self.interval = interval

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1  # the step just taken, as the module counted it
        if step % self.interval or not trainer.is_global_zero or not isinstance(trainer.logger, TensorBoardLogger):
            return
        if not isinstance(outputs, dict) or "picture" not in outputs:
            return
        images, targets, logits = outputs["picture"]
        image = to_bgr_uint8(images[0].detach().float().cpu())[:, :, ::-1]
        target = targets[0].detach().cpu().numpy()
        prediction = logits[0].detach().argmax(0).cpu().numpy()
        panel = labelled_picture([(np.ascontiguousarray(image), [target, prediction])],
                                 ["input", "target", "prediction"], num_classes=logits.shape[1])
        trainer.logger.experiment.add_image("train/input_target_prediction", panel, step, dataformats="HWC")


class PredictionPNGs(Callback):
    """Test mode's ``--save-predictions``: each prediction at ground-truth resolution as a train-id
    PNG (``train_ids/``) and a colour PNG (``color/``), mirroring the item names (``<city>/<stem>``;
    the image's path inside its split for the other targets)."""

    def __init__(self, save_dir):
        self.save_dir = save_dir

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if outputs["predictions"] is None:
            raise UserError("--save-predictions in test mode writes predictions at the labels' resolution, and "
                            "this split has no labels: use --mode predict for images without labels")
        for name, prediction in zip(batch["name"], outputs["predictions"]):
            train_ids = prediction.to(torch.uint8).cpu().numpy()
            write_png(os.path.join(self.save_dir, "train_ids", name + ".png"), train_ids)
            write_rgb_png(os.path.join(self.save_dir, "color", name + ".png"), colorize(train_ids))


class CompileTime(Callback):
    """``--compile``: the first training step, which compiles, timed apart from the steps after it.
    After ``steps`` more steps (or at the end of a shorter run) it prints one line and logs
    ``time/first_step_s``, ``time/compile_s`` (the first step less a steady one) and ``time/step_s``.
    A step is timed from its batch's start to the next one's, so the hooks after it (the EMA update)
    count; validations (they compile the evaluation network) are left out. The device is
    synchronised at these few points only, never in the steps between them."""

    def __init__(self, cache_dir=None, steps=10):
        self.cache_dir, self.steps = cache_dir, steps
        self.batches, self.start, self.first, self.steady_start = 0, None, None, None
        self.excluded, self.validation_start = 0.0, None
        self.figures = None

    @staticmethod
    def _now(pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.figures is not None:
            return
        self.batches += 1
        if self.batches == 1:
            self.start = self._now(pl_module)
        elif self.batches == 2:
            self.steady_start = self._now(pl_module)
            self.first, self.excluded = self.steady_start - self.start - self.excluded, 0.0
        elif self.batches == 2 + self.steps:
            self.report(trainer, pl_module, self.steps)

    def on_validation_start(self, trainer, pl_module):
        if self.start is not None and self.figures is None:
            self.validation_start = self._now(pl_module)

    def on_validation_end(self, trainer, pl_module):
        if self.validation_start is not None:
            self.excluded += self._now(pl_module) - self.validation_start
            self.validation_start = None

    def on_train_end(self, trainer, pl_module):
        if self.figures is not None or self.start is None:
            return
        if self.first is None:  # a run of one step
            self.first, self.excluded = self._now(pl_module) - self.start - self.excluded, 0.0
            self.report(trainer, pl_module, 0)
        else:
            self.report(trainer, pl_module, self.batches - 1)

    def report(self, trainer, pl_module, steps):
        steady = (self._now(pl_module) - self.steady_start - self.excluded) / steps if steps else None
        self.figures = {"time/first_step_s": self.first, "time/compile_s": max(0.0, self.first - (steady or 0.0))}
        if steady is not None:
            self.figures["time/step_s"] = steady
        later = f"; later steps {steady * 1000:.1f} ms each (over {steps})" if steady is not None else ""
        cache = f"; compiled code cached in {self.cache_dir}" if self.cache_dir else ""
        rank_zero_info(f"compile: the first training step took {self.first:.1f} s, about "
                       f"{self.figures['time/compile_s']:.1f} s of it compiling{later}{cache}")
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(self.figures, step=trainer.global_step)
