"""What a run writes besides checkpoints, kept out of the stage modules: the score table and the
``miou_record.csv`` row after every evaluation (and, for a target scored per condition, a line per
condition after the table and a row in ``miou_record_<condition>.csv``), the training pictures in
TensorBoard, and the predicted PNGs of ``--save-predictions``. The stage modules compute and log numbers and return
what these callbacks turn into files; the runner attaches them."""
import os

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from datasets.pixels import to_bgr_uint8
from utils.io import write_png, write_rgb_png
from utils.labels import colorize
from utils.metrics import append_record, condition_record_path, format_condition_table, format_table
from utils.visualize import labelled_picture


class ScoreRecord(Callback):
    """Print the per-class table and append a row to the record after each validation and test
    (first process only; every process holds the same scores, summed over all of them). Scores per
    condition (ACDC) add their means after the table and a row to each condition's own record,
    ``<record>_<condition>.csv``, in the format of the main one, which stays as it is."""

    def __init__(self, record_path, test_title):
        self.record_path = record_path
        self.test_title = test_title

    def _write(self, trainer, scores, title):
        if trainer.is_global_zero and scores is not None:
            conditions = scores.get("conditions") or {}
            table = format_table(scores, title=title)
            rank_zero_info(table + ("\n" + format_condition_table(conditions) if conditions else ""))
            append_record(self.record_path, scores)
            for condition, condition_scores in conditions.items():
                append_record(condition_record_path(self.record_path, condition), condition_scores)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write(trainer, pl_module.last_scores, f"validation at step {trainer.global_step}")

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, pl_module.last_scores, self.test_title)


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
        for name, prediction in zip(batch["name"], outputs["predictions"]):
            train_ids = prediction.to(torch.uint8).cpu().numpy()
            write_png(os.path.join(self.save_dir, "train_ids", name + ".png"), train_ids)
            write_rgb_png(os.path.join(self.save_dir, "color", name + ".png"), colorize(train_ids))
