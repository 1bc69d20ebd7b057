"""The shared training-stage module: network, loss, optimiser and schedule, evaluation scores.

Every stage of the method (oracle, source-only provider, cross-domain distillation and the two
self-distillation variants) is a subclass that says what it trains on (``train_source``) and,
where it differs from pixel-wise cross-entropy on labelled images, how one training step goes.
Validation and testing are identical for all stages: predict the target val split at the input
size and score it without labels (``utils/label_free.py``: agreement under a flip, confident and
diverse predictions), by which each stage keeps its checkpoint unless ``--select-by val-miou``.
Where the split has labels, the logits (test mode: averaged over ``--scales``, as ``--mode
predict``) are also upsampled to the ground-truth resolution into one confusion matrix
(synchronised across processes) for per-class IoU and the means (utils/metrics.py); a target
scored per condition (ACDC) also gets one matrix per condition, its scores under
``scores["conditions"]``. Evaluation runs a copy of
the student with its BatchNorm folded into its convolutions (``models/fold_bn.py``, ``--fold-bn``).
The module computes and logs numbers; what is written from them (table, record, pictures, PNGs)
is the job of ``modules/callbacks.py``.
"""
import warnings

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from models.fold_bn import fold_batchnorm
from models.provider_files import is_provider_file
from models.networks import get_network
from modules.providers import ProviderNetwork, check_finite, load_provider
from utils.cli import UserError
from utils.compile import CUDA_GRAPH_MODES, StepFunctions, compile_network
from utils.config import flat
from utils.inference import multiscale_logits, upsampled_argmax
from utils.label_free import LabelFreeScores, label_free_logits
from utils.labels import IGNORE_INDEX
from utils.metrics import MEAN_KEYS, ConfusionMatrix, scores_from_confusion

RNG_STATE_KEY = "torch_rng_state"  # in the checkpoint: torch's global random stream
COSINE_PERIOD_EPOCHS = 10  # T_max of the published cosine schedule: half a period, in epochs
ADAMW_WEIGHT_DECAY = 0.01  # the SegFormer / DAFormer recipe (none on norm layers: the network's param_groups)
SGD_WEIGHT_DECAY = 5e-4  # the DeepLab recipe
WARMUP_RATIO = 1e-6  # warm-up starts at this fraction of the rate (mmcv's linear warm-up, as DAFormer)


def warmup_poly_factor(step, total, warmup, power=1.0, warmup_ratio=WARMUP_RATIO):
    """Factor of the rate at optimiser step ``step`` (0-based) of ``total`` under ``warmup_poly``: the
    poly decay ``(1 - step / total) ** power``, during the first ``warmup`` steps scaled by a linear ramp
    from ``warmup_ratio`` to 1 (mmcv's ``warmup='linear'``, as SegFormer and DAFormer train)."""
    poly = max(0.0, 1.0 - step / max(1, total)) ** power
    if step < warmup:
        return poly * (1.0 - (1.0 - step / warmup) * (1.0 - warmup_ratio))
    return poly


def cross_entropy(logits, labels):
    """The pixel-wise cross-entropy of every stage, pixels labelled ``IGNORE_INDEX`` left out."""
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


class SegmentationModule(pl.LightningModule):
    """Supervised cross-entropy on ``batch["target"]["label"]``; subclasses change the step."""

    train_source = "labels"  # what the data module feeds the training step
    use_patches = False

    def __init__(self, config):
        """``config``: the run's ``modules.config.RunConfig``; the module keeps the sections it uses."""
        super().__init__()
        self.save_hyperparameters(flat(config))
        self.network, self.optim, self.evaluation = config.network, config.optim, config.evaluation
        self.hardware, self.options = config.hardware, config.stage
        # The losses and the rest of a step's tensor work, compiled at --compile step (utils/compile.py).
        self.step_functions = StepFunctions(config.hardware.compile, config.hardware.compile_mode)
        n = config.network
        if config.restore_from and is_provider_file(config.restore_from):  # (a .pt2 is refused there)
            if config.mode == "train":
                raise UserError(f"--restore-from {config.restore_from}: an ONNX file is only run, its weights cannot "
                                "be trained; give it as the black box (adapt.py --black-box, "
                                "generate_pseudo_labels.py --restore-from) and train a student from other weights")
            # The black box itself (an ONNX file), scored and pictured as the adapted models are.
            self.net = load_provider(config.restore_from, n, scales=config.evaluation.scales)
        else:
            self.net = get_network(num_classes=n.num_classes, restore_from=config.restore_from, arch=n.arch,
                                   head_branches=n.head_branches, freeze_bn_stats=n.freeze_bn_stats)
        self.val_confusion = ConfusionMatrix(n.num_classes, IGNORE_INDEX)
        self.test_confusion = ConfusionMatrix(n.num_classes, IGNORE_INDEX)
        self.val_label_free = LabelFreeScores(n.num_classes)
        self.test_label_free = LabelFreeScores(n.num_classes)
        # One more matrix per condition (items named <condition>/...), for validation and test alike.
        self.condition_confusion = torch.nn.ModuleDict(
            {c: ConfusionMatrix(n.num_classes, IGNORE_INDEX) for c in config.data.scored_conditions()})
        self.last_scores = None
        # The network of the running evaluation (start_evaluation), in a list: a module attribute
        # would register it, and it would enter the checkpoints.
        self.evaluation_nets = []

    def forward(self, images, size=None):
        return self.net(images, size=size)

    def networks(self):
        """The networks this stage runs (the student, and the teacher where there is one)."""
        return [self.net]

    def setup(self, stage):
        self.configure_networks(self.trainer.strategy.root_device.type)

    def configure_networks(self, device_type):
        """Speed settings that leave results unchanged beyond float noise, for the networks on a
        ``device_type`` device: channels-last tensors suit tensor cores; compilation is opt-in
        (slow to start, fast per step; ``--compile``), once per network however often this runs."""
        channels_last = self.hardware.channels_last == "on" or (self.hardware.channels_last == "auto" and device_type == "cuda")
        for net in self.networks():
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if self.hardware.compile != "off" and getattr(net, "_compiled_call_impl", None) is None:
                compile_network(net, self.hardware.compile_mode)

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        target = batch["target"]
        images, labels = target["image"], target["label"]
        logits = self.net(images, size=images.shape[-2:])
        loss = self.step_functions(cross_entropy)(logits, labels)
        self.log("train/loss", loss)
        return {"loss": loss, "picture": (images, labels, logits)}  # modules.callbacks.TrainingPictures

    def on_train_batch_start(self, batch, batch_idx):
        if self.hardware.compile != "off" and self.hardware.compile_mode in CUDA_GRAPH_MODES:
            # One step is one round of CUDA graph replays; outputs of the step before may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()

    def schedule(self):
        """The learning-rate schedule ``--lr-schedule`` resolves to (``auto``: as published)."""
        a = self.optim
        if a.lr_schedule != "auto":
            return a.lr_schedule
        return {"sgd": "poly", "adamw": "warmup_poly"}.get(a.optimizer, "cosine")

    def configure_optimizers(self):
        a = self.optim
        if a.optimizer == "sgd":
            # The classic DeepLab recipe: the freshly initialised head learns ten times faster.
            optimizer = torch.optim.SGD(self.net.param_groups(a.lr, SGD_WEIGHT_DECAY), lr=a.lr, momentum=0.9)
        elif a.optimizer == "adamw":
            # The transformer recipe (SegFormer, DAFormer): decoder and head at 10x, no decay on norms.
            optimizer = torch.optim.AdamW(self.net.param_groups(a.lr, ADAMW_WEIGHT_DECAY), lr=a.lr, betas=(0.9, 0.999))
        else:
            # The published stages train every parameter with one Adam learning rate.
            optimizer = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=a.lr)
        schedule = self.schedule()
        if schedule == "constant":
            return optimizer
        if schedule == "cosine":
            # The published stages: CosineAnnealingLR(T_max=10) stepped once per epoch and never
            # stopped, so the rate falls to 0 at epoch 10, is back at lr by epoch 20, and so on.
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=COSINE_PERIOD_EPOCHS)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        total = self.trainer.estimated_stepping_batches
        if schedule == "warmup_poly":
            warmup = a.warmup_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_poly_factor(step, total, warmup))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1.0 - step / max(1, total)) ** 0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- resuming ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        # Stochastic layers (the transformer students' drop-path) draw from torch's global stream; a
        # resumed run continues it, so that on one device it ends as an uninterrupted run would. The
        # loaders draw from their own generators (modules/data.py), so only the steps move the stream.
        checkpoint[RNG_STATE_KEY] = {"cpu": torch.get_rng_state(),
                                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get(RNG_STATE_KEY)
        if saved is None:  # a checkpoint of an earlier version
            return
        torch.set_rng_state(saved["cpu"])
        if saved["cuda"] and torch.cuda.is_available() and len(saved["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved["cuda"])

    # -- evaluation --------------------------------------------------------------------------------
    def start_evaluation(self, testing):
        """Fold BatchNorm into the convolutions of a copy of the student for this evaluation (the
        same scores up to float rounding; ``--no-fold-bn``: the student itself). A fresh copy each
        time: training changes the weights and BatchNorm statistics between evaluations. Compiled
        networks (``--compile``) fold in test mode only, where the copy is compiled once; a copy at
        every validation would be compiled again every time."""
        self.evaluation_nets.clear()
        compiled = self.hardware.compile != "off"  # "network" or "step" (utils/compile.py)
        if self.hardware.fold_bn and (testing or not compiled) and not isinstance(self.net, ProviderNetwork):
            net = fold_batchnorm(self.net)
            if compiled:
                compile_network(net, self.hardware.compile_mode)
            self.evaluation_nets.append(net)

    def on_validation_epoch_start(self):
        self.start_evaluation(testing=False)

    def on_test_epoch_start(self):
        self.start_evaluation(testing=True)

    def _evaluate(self, batch, confusion, label_free):
        """Update ``label_free`` with the batch, and ``confusion`` where it has labels; returns the
        predictions at ground-truth resolution (``None`` without labels)."""
        images = batch["image"]
        net = self.evaluation_nets[0] if self.evaluation_nets else self.net
        # At the network's output resolution: the logits of the images, their mirror images and mixes.
        plain, mirrored, mixed = label_free_logits(net, images)
        if isinstance(net, ProviderNetwork):  # a black box's scores must be finite (our networks' are)
            check_finite(torch.cat([plain, mirrored, mixed]), batch["name"] * 3, net.path)
        label_free.update(plain, mirrored, mixed)
        if "label" not in batch:
            return None
        if tuple(self.evaluation.scales) == (1.0,):  # one scale (always so in training): upsampled once below
            logits = plain + mirrored if self.evaluation.flip_when_test else plain
        else:
            logits = multiscale_logits(net, images, self.evaluation.scales, flip=self.evaluation.flip_when_test)
        predictions = []
        for i, label in enumerate(batch["label"]):
            # Logits are upsampled to the ground truth's own resolution (2048x1024 for Cityscapes,
            # 1920x1080 for ACDC and Dark Zurich).
            prediction = upsampled_argmax(logits[i], label.shape[-2:])
            confusion.update(prediction, label)
            condition = batch["name"][i].split("/", 1)[0]
            if condition in self.condition_confusion:
                self.condition_confusion[condition].update(prediction, label)
            predictions.append(prediction)
        return predictions

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_confusion, self.val_label_free)

    def test_step(self, batch, batch_idx):
        return {"predictions": self._evaluate(batch, self.test_confusion, self.test_label_free)}

    def _scores(self, confusion, label_free):
        """``{"label_free": {...}}`` and, where labels were scored, the IoUs and means."""
        free = {name: float(value) for name, value in label_free.compute().items()}
        label_free.reset()
        # compute() sums the matrices of all processes, so every rank sees the same scores. A split
        # without labels leaves the matrix empty on purpose (its sum says so, on every process).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* was called before")
            matrix = confusion.compute()
        confusion.reset()
        if not int(matrix.sum()):
            for m in self.condition_confusion.values():
                m.reset()
            self.last_scores = {"label_free": free}
            return self.last_scores
        scores = scores_from_confusion(matrix.cpu().numpy())
        scores["label_free"] = free
        if len(self.condition_confusion):
            scores["conditions"] = {c: scores_from_confusion(m.compute().cpu().numpy())
                                    for c, m in self.condition_confusion.items()}
            for m in self.condition_confusion.values():
                m.reset()
        self.last_scores = scores  # the table and the record are written by modules.callbacks.ScoreRecord
        return scores

    def on_validation_epoch_end(self):
        self.evaluation_nets.clear()
        if self.trainer.sanity_checking:
            self.val_confusion.reset()
            self.val_label_free.reset()
            for m in self.condition_confusion.values():
                m.reset()
            return
        scores = self._scores(self.val_confusion, self.val_label_free)
        for name, value in scores["label_free"].items():
            self.log(f"val/{name}", value, sync_dist=False)
        select_by = self.evaluation.select_by  # what keeps the best checkpoint; "last": the latest step wins
        if select_by in scores["label_free"] or select_by == "last":
            value = float(self.global_step) if select_by == "last" else scores["label_free"][select_by]
            self.log("val_score", value, prog_bar=True, sync_dist=False)
        if "miou" in scores:
            miou = scores["miou"] if np.isfinite(scores["miou"]) else 0.0
            self.log("val_miou", float(miou), prog_bar=True, sync_dist=False)
        for condition, condition_scores in scores.get("conditions", {}).items():
            self.log(f"val/miou_{condition}", float(condition_scores["miou"]), sync_dist=False)

    def on_test_epoch_end(self):
        self.evaluation_nets.clear()
        scores = self._scores(self.test_confusion, self.test_label_free)
        for name, value in scores["label_free"].items():
            self.log(f"test/{name}", value, sync_dist=False)
        for key in MEAN_KEYS if "miou" in scores else ():  # miou, miou16, miou13 and miou13_published
            self.log(f"test/{key}", float(scores[key]), sync_dist=False)
        for condition, condition_scores in scores.get("conditions", {}).items():
            self.log(f"test/miou_{condition}", float(condition_scores["miou"]), sync_dist=False)
