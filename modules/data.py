"""The data module: every dataset and loader of the training stages, and nothing else.

Each training stage names what it learns from (``train_source``): ground-truth labels of the
target (``labels``, the oracle), the provider's pseudo-labels (``pseudo_labels``), bare target
images for self-distillation (``images``) or a labelled source domain (``source``). The target is
any of ``datasets/targets.py`` (``--target-dataset``). With ``--rare-class-sampling`` the training images
(and smhm's hard patches) are drawn by the rarity of the classes their pseudo-labels contain. Validation and testing use the target's
``--val-split`` images, with their full-resolution ground truth where there is one. Samplers are built
here, per rank, so that evaluation counts every image once and hard patches differ across ranks.
"""
import os

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler

from datasets.base import TargetDataset, collate
from datasets.patches import HardPatchDataset
from datasets.samplers import CyclingSampler, RareClassSampler, ShardSampler, SkipSampler, drawable_classes
from datasets.source import GTA5Dataset, SynthiaDataset
from utils.cli import UserError
from utils.image_cache import DEFAULT_FOLDER, ResizedImageCache, entry_bytes, size_text
from utils.loaders import loader_kwargs
from modules.hard_patches import image_class_counts
from modules.stage_output import check_hard_patches_finished, check_pseudo_labels_finished, pseudo_label_save_folder

SOURCE_DATASETS = {"gta5": GTA5Dataset, "synthia": SynthiaDataset}


class ResumableLoader(DataLoader):
    """A training loader that Lightning resumes mid-epoch where the checkpoint left the epoch
    (it restarts a plain loader's epoch from the first batch, so a resumed run would see that
    epoch's first batches twice and never its last ones). Every epoch is ``len(self)`` optimiser
    steps (whole batches only, no gradient accumulation), so ``global_step() % len(self)`` batches
    of the current epoch are done when a checkpoint is saved."""

    def __init__(self, dataset, sampler, global_step, **kwargs):
        super().__init__(dataset, sampler=SkipSampler(sampler), drop_last=True, **kwargs)
        self.global_step = global_step

    def state_dict(self):
        return {"batches_done_in_epoch": self.global_step() % len(self)}

    def load_state_dict(self, state):
        self.sampler.skip = state["batches_done_in_epoch"] * self.batch_size


class SegmentationDataModule(pl.LightningDataModule):
    """``config``: the run's ``modules.config.RunConfig``; its data section, the network's input
    size and classes, the seed, and the stage's inputs (pseudo-labels, source domain, hard patches)."""

    def __init__(self, config, train_source, use_patches=False):
        super().__init__()
        self.data, self.options, self.seed = config.data, config.stage, config.optim.seed
        self.select_by = config.evaluation.select_by
        self.default_cache = os.path.join(config.log_tb_dir, DEFAULT_FOLDER)  # of --image-cache auto
        self.input_size, self.num_classes = config.network.input_size, config.network.num_classes
        self.train_source = train_source
        self.use_patches = use_patches
        self._datasets = {}
        self._class_counts = {}

    # Datasets are built once and on demand, so that ``check()`` can run before training starts
    # and Lightning's own ``setup`` calls reuse them.
    def _dataset(self, name):
        if name not in self._datasets:
            dataset = getattr(self, f"_build_{name}")()
            if self.data.image_cache not in ("auto", "off"):
                dataset.image_cache = ResizedImageCache(self.data.image_cache)
            self._datasets[name] = dataset
        return self._datasets[name]

    def _build_train(self):
        d, o = self.data, self.options
        common = dict(input_size=self.input_size, num_classes=self.num_classes, resize_backend=d.resize_backend)
        if self.train_source == "source":
            return SOURCE_DATASETS[o.source_dataset](o.source_root, **common)
        kwargs = dict(list_root=d.lists, **common)
        if self.train_source == "labels":
            kwargs["labels"] = True
        elif self.train_source == "pseudo_labels":
            check_pseudo_labels_finished(o.pseudo_label_root, "train")
            kwargs["pseudo_label_root"] = o.pseudo_label_root
            if getattr(o, "complementary_weight", 0) > 0:  # beside the pseudo-labels, as generate_pseudo_labels.py writes
                kwargs["complementary"] = os.path.join(pseudo_label_save_folder(o.pseudo_label_root, "train"),
                                                       "complementary", "train")
        return TargetDataset(d.target(), "train", **kwargs)

    def _build_eval(self):
        """The ``--val-split`` images, with their labels where the target has them: without labels
        they are scored label-free only (what keeps the best checkpoint by default)."""
        d = self.data
        target = d.target()
        missing = target.missing_label_dir(d.val_split)
        if missing and d.label_root is not None:  # typed: a typo, not a split without labels
            raise UserError(f"--label-dir {d.label_root}: {missing}")
        if missing and self.select_by == "val-miou":
            raise UserError(f"--select-by val-miou needs labels of the {d.val_split!r} split: {missing}; "
                            "leave --select-by out to keep checkpoints by a label-free score")
        if missing:
            rank_zero_info(f"scoring the {d.val_split!r} split without labels ({missing})")
        return TargetDataset(target, d.val_split, input_size=self.input_size, labels=not missing, list_root=d.lists,
                             resize_label=False, num_classes=self.num_classes, resize_backend=d.resize_backend)

    def _build_patches(self):
        root = self.options.hard_patches_root
        check_hard_patches_finished(root)
        patches = HardPatchDataset(root, num_classes=self.num_classes)
        batch_size = self.options.hard_patch_batch_size or self.data.train_batch_size
        if batch_size > len(patches):
            raise UserError(f"{'--hard-patch-batch-size' if self.options.hard_patch_batch_size else '--train-batch-size'} "
                            f"{batch_size} is more than the {len(patches)} hard patches in {root}")
        return patches

    def class_counts(self, name="train"):
        """Pixels of each class in the pseudo-label of each training image (``name="train"``, in the
        dataset's order) or hard patch (``"patches"``), N x C, counted once; the class shares of
        ``--rare-class-sampling`` and ``--distribution-alignment``."""
        if name not in self._class_counts:
            if name == "patches":
                paths = [label for _, label, _ in self._dataset("patches").samples]
                counts = image_class_counts(paths, None, self.num_classes, self.data.num_workers)
            else:
                counts = image_class_counts(self._pseudo_label_paths(), self.input_size, self.num_classes,
                                            self.data.num_workers, self.data.resize_backend)
            if name == "train" and not counts.any():
                raise UserError(f"--pseudo-label-root {self.options.pseudo_label_root}: no pixel of any class in "
                                "its pseudo-labels (all 255, ignored): --rare-class-sampling and "
                                "--distribution-alignment need the classes' shares")
            self._class_counts[name] = counts
        return self._class_counts[name]

    def drawn_class_share(self):
        """Each class's share of the training pixels as training draws the images (C): the pseudo-labels'
        shares, each image weighted by its probability under ``--rare-class-sampling``. Distribution
        alignment aligns the teacher to it, since the teacher's marginal is measured on those draws."""
        counts = self.class_counts("train")
        weights = np.ones(len(counts))
        if self.data.rare_class_sampling:
            weights = RareClassSampler(counts, counts.sum(axis=0), 1, self.data.rare_class_sampling).item_probability()
        pixels = (np.asarray(weights, dtype=np.float64)[:, None] * counts).sum(axis=0)
        return pixels / pixels.sum()

    def _pseudo_label_paths(self):
        if self.train_source == "pseudo_labels":
            return [label for _, label, _ in self._dataset("train").samples]
        root = getattr(self.options, "pseudo_label_root", None)
        if self.train_source != "images" or root is None:
            raise UserError("--rare-class-sampling and --distribution-alignment take the class shares from the "
                            "pseudo-labels: give --pseudo-label-root (baseline, spatial_mix and smhm have it)")
        check_pseudo_labels_finished(root, "train")
        d = self.data
        dataset = TargetDataset(d.target(), "train", list_root=d.lists, pseudo_label_root=root,
                                num_classes=self.num_classes)
        return [label for _, label, _ in dataset.samples]

    def check(self, stage):
        """Build the datasets a stage needs now: bad paths fail before any training starts."""
        self._dataset("eval")
        if stage == "fit":
            self._dataset("train")
            if self.use_patches:
                self._dataset("patches")
            if self.data.rare_class_sampling or getattr(self.options, "distribution_alignment", False):
                self.class_counts("train")
            if self.data.rare_class_sampling and self.use_patches:
                if not drawable_classes(self.class_counts("patches"), self.class_counts("train").sum(axis=0)).any():
                    raise UserError(f"--hard-patches-root {self.options.hard_patches_root}: no hard patch holds a "
                                    "class of the pseudo-labels, so --rare-class-sampling has none to draw")

    def setup(self, stage):
        self.check(stage)
        if self.data.image_cache == "auto":
            for name, what in (("train", "training"), ("eval", "evaluation")):
                if name in self._datasets:
                    self._default_cache(self._datasets[name], what)

    def _default_cache(self, dataset, what):
        """``--image-cache auto`` for ``dataset``: ``<log-tb-dir>/cache`` when its disk has room for the
        images not cached yet. Decided when a Trainer runs the data module (``setup``), so that a
        data module built outside a run (tests, the benchmark) writes nothing."""
        if dataset.input_size is None or dataset.image_cache is not None:
            return
        cache = ResizedImageCache(self.default_cache)
        paths = [image_path for image_path, _, _ in dataset.samples]
        missing, short = cache.room_for(paths, dataset.input_size, dataset.resize_backend)
        if short:
            rank_zero_info(f"image cache off for the {what} images: {short} (--image-cache DIR for another folder)")
            return
        if missing:
            rank_zero_info(f"image cache: {cache.root} keeps the {what} images decoded and resized, {missing} to add "
                           f"(about {size_text(missing * entry_bytes(dataset.input_size))}; --image-cache off to go "
                           "without)")
        dataset.image_cache = cache

    def steps_per_epoch(self, world_size):
        """Training steps per epoch on each of ``world_size`` devices; none is an error. ``runner.train``
        asks before training starts, so that a refused run writes nothing."""
        per_device = len(DistributedSampler(self._dataset("train"), num_replicas=world_size, rank=0))
        steps = per_device // self.data.train_batch_size
        if steps == 0:
            raise UserError(f"--train-batch-size {self.data.train_batch_size} is larger than the {per_device} "
                            f"training images each device gets")
        return steps

    # -- loaders ---------------------------------------------------------------------------------
    def _rank(self):
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset, batch_size, sampler, kind=DataLoader, **kwargs):
        # A generator of its own: starting an epoch would otherwise draw from torch's global stream,
        # which a resumed run restores for the networks' stochastic layers (modules/base.py).
        # Epochs and validations iterate again: persistent workers (utils/loaders.py).
        return kind(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                    generator=torch.Generator().manual_seed(self.seed),
                    **loader_kwargs(self.data.num_workers, self.trainer, repeated=True), **kwargs)

    def _train_loader(self, dataset, batch_size, sampler):
        # A last partial batch is dropped: SpatialMix cannot mix a batch of one image.
        return self._loader(dataset, batch_size, sampler, ResumableLoader, global_step=lambda: self.trainer.global_step)

    def train_dataloader(self):
        rank, world = self._rank()
        dataset = self._dataset("train")
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        temperature = self.data.rare_class_sampling
        if temperature:  # as many images per epoch as the shuffled passes give
            pixels = self.class_counts("train").sum(axis=0)
            sampler = RareClassSampler(self.class_counts("train"), pixels, len(sampler), temperature, rank, world,
                                       self.seed)
        steps = self.steps_per_epoch(world)
        loaders = {"target": self._train_loader(dataset, self.data.train_batch_size, sampler)}
        if self.use_patches:
            patches = self._dataset("patches")
            batch_size = self.options.hard_patch_batch_size or self.data.train_batch_size
            if temperature:
                # A stream of its own: with the images' seed, it would draw the images' classes again.
                patch_sampler = RareClassSampler(self.class_counts("patches"), pixels, steps * batch_size, temperature,
                                                 rank, world, self.seed + 1)
            else:
                patch_sampler = CyclingSampler(len(patches), steps * batch_size, rank, world, seed=self.seed)
            loaders["patches"] = self._train_loader(patches, batch_size, patch_sampler)
        return loaders

    def _eval_loader(self, batch_size):
        rank, world = self._rank()
        dataset = self._dataset("eval")
        return self._loader(dataset, batch_size, ShardSampler(len(dataset), rank, world))

    def val_dataloader(self):
        return self._eval_loader(self.data.val_batch_size)

    def test_dataloader(self):
        return self._eval_loader(self.data.test_batch_size)

