"""Speed of the method's hot paths: the published configuration against this project's fast one.

    python -m tools.benchmark                                   # CUDA if present: r101, 1024x512, batch 4
    python -m tools.benchmark --accelerator cpu --arch deeplabv2_r50 --input-size 256x128 --json cpu.json

Stages (``--stages``), each measured in both configurations:

- ``baseline``: one training step of cross-domain distillation (stage 3): forward, cross-entropy on
  pseudo-labels, backward, Adam step, on a batch already in device memory;
- ``smhm``: one self-distillation step (stage 6): teacher logits, SpatialMix, batch flip,
  photometric augmentation, consistency loss, hard patch loss, backward, Adam step, EMA update,
  on batches already in device memory;
- ``pseudo_label``: pseudo-labelling (stage 2) *from PNG files*: decoding and resizing in the
  loader's workers, flip test-time augmentation, argmax and entropy brought back to the host;
- ``val``: evaluation (stage 8) *from PNG files*: prediction at the input size, logits upsampled
  to the ground-truth resolution (twice the input size, as Cityscapes' 2048x1024 for 1024x512),
  argmax, confusion-matrix update;
- ``data``: the training image pipeline alone (decode, resize, normalise, collate);
- ``resize``: resizing one decoded image (bicubic) and one label (nearest) from twice the input
  size to the input size, on one thread as in a loader worker: PIL (``--resize-backend pil``, the
  published pixels) in the published configuration, OpenCV (``--resize-backend cv2``) in the fast
  one.

*published*: float32, eager, the per-image SpatialMix loop, NCHW, no cuDNN autotuning, PIL decoding
and bicubic resizing with numpy normalisation per sample, no pinned memory, no persistent workers.
*fast*: what the project does by default or by flag: batched SpatialMix, OpenCV decoding and
resizing (``--resize-backend cv2``) through the project's datasets and loaders (pinned memory and
persistent workers on CUDA), channels-last networks (``--channels-last``), and on CUDA cuDNN
autotuning and bfloat16 autocast (``--precision bf16-mixed``); ``--compile LEVEL`` adds
``main.py``'s ``--compile``. On CPU, bfloat16 autocast is left out (ten times slower on a CPU without bf16
instructions, see docs/benchmarks.md).

*variants* (``--configs``, training stages only): the fast configuration with one change, each
against it: ``compile_network``, ``compile_step``, ``compile_step_cudagraphs`` (``main.py
--compile``, ``--compile-mode reduce-overhead``). A training stage also reports its first step (``first_step_ms``), which compiles where anything is
compiled (``compile_s``: how much longer than a steady step it took).

The project's own code runs as users run it: the stage modules train in a Lightning ``Trainer``
(their steps, hooks and EMA update; in the published configuration the stage's batched SpatialMix is
swapped for the published per-image one, :func:`published_spatial_mix`); the pseudo-label ``PredictionModule``, the validation step with its
confusion matrix, the datasets and loaders. Synthetic PNG files are written to a temporary folder.

Reported per stage and configuration: images/s, the median step time, peak memory (CUDA only: the
largest memory allocated by PyTorch during the stage) and, from the floating-point operations counted once per stage with
``torch.utils.flop_counter.FlopCounterMode``, the achieved TFLOP/s.
"""
import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from unittest import mock

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from datasets.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX, CityscapesDataset
from datasets.pixels import IMG_MEAN_BGR, resize_image, resize_label
from modules.config import COMPILE_MODES, HardwareConfig, compile_level, parse_args
from models.deeplabv2 import get_deeplabv2
from models.networks import ARCH_NAMES, get_network
from modules import MODULES
from modules import spatial_mix as spatial_mix_module
from modules.data import SegmentationDataModule
from utils.cli import ArgumentParser, UserError, at_least, input_size, run
from utils import compile as compile_utils
from utils.io import atomic_write_bytes, atomic_write_text, encode_png
from utils.labels import IGNORE_INDEX, NUM_CLASSES
from utils.lightning import make_trainer
from utils.loaders import default_num_workers
from utils.writers import BackgroundWriter
from modules.prediction import PredictionData, PredictionModule, RecordFile
from modules.pseudo_labels import PseudoLabelWriter

STAGES = ("baseline", "smhm", "pseudo_label", "val", "data", "resize")
CONFIGS = ("published", "fast")
LOADER_STAGES = ("pseudo_label", "val", "data")
UNIQUE_FILES = 8  # distinct PNG files; longer image lists repeat them
MIB = 2 ** 20


# -- configurations -------------------------------------------------------------------------------------

class Config:
    """What separates the published configuration from the fast one, and a variant from the fast one."""

    def __init__(self, name, loop_mix, channels_last, autocast, cudnn_benchmark, project_loader, inference_mode,
                 resize_backend, compile="off", compile_mode="default"):
        self.name = name
        self.loop_mix = loop_mix
        self.channels_last = channels_last
        self.autocast = autocast
        self.cudnn_benchmark = cudnn_benchmark
        self.project_loader = project_loader
        self.inference_mode = inference_mode  # Lightning evaluates under inference_mode, the published scripts no_grad
        self.resize_backend = resize_backend
        self.compile = compile  # main.py's --compile: off, network or step
        self.compile_mode = compile_mode

    def describe(self):
        parts = ["SpatialMix " + ("per-image loop" if self.loop_mix else "batched"),
                 "channels-last" if self.channels_last else "NCHW",
                 "bf16 autocast" if self.autocast else "float32",
                 "cuDNN autotuning" if self.cudnn_benchmark else "no autotuning",
                 "project loaders (OpenCV)" if self.project_loader else "published loaders (PIL)",
                 f"{self.resize_backend} resizing"]
        if self.compile != "off":
            parts.append(f"torch.compile of the {'networks' if self.compile == 'network' else 'networks and the step'}"
                         + ("" if self.compile_mode == "default" else f" ({self.compile_mode})"))
        return ", ".join(parts)


def configurations(opts, device):
    """The configurations ``opts.configs`` names: published, fast (with ``--compile``, compiled), and
    variants of the fast one (``VARIANTS``)."""
    cuda = device.type == "cuda"
    # On the CPU of docs/benchmarks.md channels-last was a little faster, bf16 autocast ten times slower.
    channels_last = opts.channels_last != "off"
    autocast = opts.autocast == "bf16" or (opts.autocast == "auto" and cuda)
    fast = dict(loop_mix=False, channels_last=channels_last, autocast=autocast, cudnn_benchmark=cuda,
                project_loader=True, inference_mode=True, resize_backend="cv2")
    configs = {
        "published": Config("published", loop_mix=True, channels_last=False, autocast=False,
                            cudnn_benchmark=False, project_loader=False, inference_mode=False, resize_backend="pil"),
        "fast": Config("fast", **fast, compile=opts.compile, compile_mode=opts.compile_mode),
    }
    configs.update({name: Config(name, **fast, **changes) for name, (changes, _) in VARIANTS.items()})
    return {name: configs[name] for name in opts.configs}


# Variants of the fast configuration, measured in the training stages (--configs): name: (its changes, what).
VARIANTS = {
    "compile_step": ({"compile": "step"}, "main.py --compile step"),
    "compile_network": ({"compile": "network"}, "main.py --compile network"),
    "compile_step_cudagraphs": ({"compile": "step", "compile_mode": "reduce-overhead"},
                                "main.py --compile step --compile-mode reduce-overhead (CUDA graphs)"),
}
TRAINING_STAGES = ("baseline", "smhm")  # the stages the variants are measured in


# -- measuring ------------------------------------------------------------------------------------------

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, warmup, steps, device):
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed ones (synchronised on CUDA)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class PeakMemory:
    """Peak memory of a block in MiB: ``torch.cuda.max_memory_allocated`` after a reset (everything
    of earlier stages freed); ``None`` on a CPU."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def peak_mb(self):
        return torch.cuda.max_memory_allocated(self.device) / MIB if self.device.type == "cuda" else None

    def __exit__(self, *exc):
        return False


def count_flops(call):
    """Floating-point operations of one call of ``call`` (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def to_device(batch, device, non_blocking=False):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device, non_blocking) for v in batch]
    return batch


def result(times, images_per_step, total_rate, peak_mb):
    """Figures of one stage in one configuration.

    Steps fed from a preloaded batch take their rate from the median step (robust to a busy
    machine); steps that wait on a loader from the whole timed span, because prefetching makes
    single steps bursty.
    """
    median = statistics.median(times)
    rate = images_per_step * len(times) / sum(times) if total_rate else images_per_step / median
    return {"images_per_s": rate, "step_ms": median * 1000.0, "peak_mem_mb": peak_mb, "tflops": None}


# -- synthetic files ------------------------------------------------------------------------------------

def synthetic_photo(rng, width, height):
    """A smooth colour field with fine noise: PNG-compresses to a few MB at 2048x1024, like a photo."""
    coarse = rng.integers(0, 256, size=(height // 64 + 2, width // 64 + 2, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    image += rng.normal(0.0, 1.2, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_train_ids(rng, width, height):
    coarse = rng.choice([*range(NUM_CLASSES), IGNORE_INDEX], size=(height // 32 + 1, width // 32 + 1))
    return cv2.resize(coarse.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)


def _link(source, target):
    """``target`` as a hard link to ``source`` (a copy where the file system has none)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class Workspace:
    """Cityscapes-layout PNG files at twice the input size (Cityscapes: 2048x1024 for 1024x512).

    ``count`` list entries per split, cycling through ``UNIQUE_FILES`` distinct images (further
    entries are hard links to them under names of their own, as the datasets refuse two images of
    one name); val has ground truth (train ids) at full resolution.
    """

    def __init__(self, root, input_size, count, seed=0):
        width, height = 2 * input_size[0], 2 * input_size[1]
        self.root = root
        self.image_root = os.path.join(root, "leftImg8bit")
        self.label_root = os.path.join(root, "gtFine2")
        self.list_root = os.path.join(root, "lists")
        rng = np.random.default_rng(seed)
        stems = [f"bench/bench_{k:06d}_000019" for k in range(min(UNIQUE_FILES, count))]
        sizes = []
        for stem in stems:
            image = encode_png(synthetic_photo(rng, width, height), compression=6)
            sizes.append(len(image))
            for split in ("train", "val"):
                atomic_write_bytes(os.path.join(self.image_root, split, stem + IMAGE_SUFFIX), image)
            atomic_write_bytes(os.path.join(self.label_root, "val", stem + LABEL_SUFFIX),
                               encode_png(synthetic_train_ids(rng, width, height), compression=6))
        for k in range(len(stems), count):
            stem, source = f"bench/bench_{k:06d}_000019", stems[k % len(stems)]
            for folder, split, suffix in ((self.image_root, "train", IMAGE_SUFFIX), (self.image_root, "val", IMAGE_SUFFIX),
                                          (self.label_root, "val", LABEL_SUFFIX)):
                _link(os.path.join(folder, split, source + suffix), os.path.join(folder, split, stem + suffix))
            stems.append(stem)
        self.entries = [stem + IMAGE_SUFFIX for stem in stems]
        for split in ("train", "val"):
            atomic_write_text(os.path.join(self.list_root, f"{split}.txt"), "".join(e + "\n" for e in self.entries))
        self.png_mb = sum(sizes) / len(sizes) / 1e6
        self.full_size = (width, height)

    def image_paths(self, split):
        return [os.path.join(self.image_root, split, e) for e in self.entries]

    def label_paths(self, split):
        return [os.path.join(self.label_root, split, e[:-len(IMAGE_SUFFIX)] + LABEL_SUFFIX) for e in self.entries]


class PublishedImages(Dataset):
    """The published per-sample pipeline: PIL decoding, PIL bicubic resize, numpy normalisation
    (RGB to BGR, minus the Caffe mean, CHW copy); labels read with PIL at their own size."""

    def __init__(self, image_paths, input_size, label_paths=None):
        self.image_paths, self.input_size, self.label_paths = image_paths, tuple(input_size), label_paths
        self.mean = np.array(IMG_MEAN_BGR, dtype=np.float32)

    def __len__(self):
        return len(self.image_paths)

    def __getitem__(self, index):
        image = Image.open(self.image_paths[index]).convert("RGB").resize(self.input_size, Image.BICUBIC)
        image = np.asarray(image, np.float32)[:, :, ::-1] - self.mean
        item = {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()), "name": str(index), "index": index}
        if self.label_paths is not None:
            item["label"] = torch.from_numpy(np.asarray(Image.open(self.label_paths[index]), dtype=np.int64))
        return item


def published_spatial_mix(images, logits, others, xs, ys):
    """SpatialMix as the published code runs it, one image at a time with crop-and-paste of quadrants,
    on the draws of ``utils.mixing.draw_spatial_mix``: the result of ``utils.mixing.mix_with_draws``.
    The crops need the split points on the host: a synchronisation on a GPU, as in the published code."""
    others, xs, ys = others.tolist(), xs.tolist(), ys.tolist()
    outputs = []
    for tensor in (images, logits):
        mixed = torch.empty_like(tensor)
        for i, (x, y, (j1, j2, j3)) in enumerate(zip(xs, ys, others)):
            mixed[i, :, :y, :x] = tensor[i, :, :y, :x]
            mixed[i, :, :y, x:] = tensor[j1, :, :y, x:]
            mixed[i, :, y:, :x] = tensor[j2, :, y:, :x]
            mixed[i, :, y:, x:] = tensor[j3, :, y:, x:]
        outputs.append(mixed)
    return tuple(outputs)


# -- the project's modules in a Trainer ----------------------------------------------------------------

class StepTimes(Callback):
    """Wall time of each training step as the Trainer runs it: from one batch's start to the next
    (training step, backward, optimiser step, batch-end hooks such as the EMA update, logging),
    synchronised on CUDA; the last step ends when training does."""

    def __init__(self, device):
        self.device, self.times, self._start = device, [], None

    def _lap(self):
        synchronize(self.device)
        now = time.perf_counter()
        if self._start is not None:
            self.times.append(now - self._start)
        self._start = now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._lap()

    def on_train_end(self, trainer, pl_module):
        self._lap()


class RepeatedBatch(Dataset):
    """The same ready batch ``count`` times, as a loader without collation hands it to the Trainer."""

    def __init__(self, batch, count):
        self.batch, self.count = batch, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.batch


class Bench:
    """Everything one benchmark run shares: flags, device, files, configurations."""

    def __init__(self, opts, device, workdir):
        self.opts, self.device, self.workdir = opts, device, workdir
        self.configs = configurations(opts, device)
        self._workspace = None
        self._weights = None

    @property
    def workspace(self):
        if self._workspace is None:
            count = self.opts.batch_size * (self.opts.warmup + self.opts.steps)
            self._workspace = Workspace(os.path.join(self.workdir, "data"), self.opts.input_size, count)
        return self._workspace

    def weights(self):
        """A weight file for self-distillation, which starts student and teacher from given weights."""
        if self._weights is None:
            self._weights = os.path.join(self.workdir, "weights.pth")
            torch.save(get_network(self.opts.arch, NUM_CLASSES).state_dict(), self._weights)
        return self._weights

    def args(self, module_name, cfg):
        o = self.opts
        argv = ["--module-name", module_name, "--arch", o.arch, "--input-size", "x".join(map(str, o.input_size)),
                "--train-batch-size", str(o.batch_size), "--val-batch-size", str(o.batch_size),
                "--num-workers", str(o.num_workers), "--visualize-interval", "0",
                "--channels-last", "on" if cfg.channels_last else "off",
                "--precision", "bf16-mixed" if cfg.autocast else "32-true",
                "--accelerator", "gpu" if self.device.type == "cuda" else "cpu",
                "--log-tb-dir", os.path.join(self.workdir, "experiments")]
        if module_name == "smhm":
            argv += ["--restore-from", self.weights()]
        if cfg.compile != "off":
            argv += ["--compile", cfg.compile, "--compile-mode", cfg.compile_mode]
        return parse_args(argv)

    def module(self, module_name, cfg):
        """The stage's module on the device with the training speed settings (channels-last, compilation)."""
        module = MODULES[module_name](self.args(module_name, cfg))
        module.to(self.device)
        module.configure_networks(self.device.type)
        return module

    def fit(self, module, batch, cfg, steps, callbacks=()):
        """``steps`` training steps of ``module`` on ``batch`` (already on the device) by a Trainer, as
        ``main.py`` trains: precision, cuDNN autotuning and the module's hooks are the Trainer's."""
        # The Trainer's start-up notes and these warnings would repeat for every measured run; the
        # logger's level is put back afterwards (the benchmark also runs inside other programs' processes).
        lightning_log = logging.getLogger("pytorch_lightning")
        level = lightning_log.level
        lightning_log.setLevel(logging.WARNING)
        hardware = HardwareConfig(accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1,
                                  precision="bf16-mixed" if cfg.autocast else "32-true")
        mixing = mock.patch.object(spatial_mix_module, "mix_with_draws", published_spatial_mix) if cfg.loop_mix \
            else contextlib.nullcontext()
        try:
            with warnings.catch_warnings(), mixing:
                warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
                warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
                trainer = make_trainer(hardware, max_steps=steps, logger=False, enable_checkpointing=False,
                                       enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                       limit_val_batches=0, benchmark=cfg.cudnn_benchmark, callbacks=list(callbacks))
                trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, steps), batch_size=None))
        finally:
            lightning_log.setLevel(level)

    def autocast(self, cfg):
        if not cfg.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def no_grad(self, cfg):
        return torch.inference_mode() if cfg.inference_mode else torch.no_grad()

    def pin(self, cfg):
        return cfg.project_loader and self.device.type == "cuda"

    # -- inputs ---------------------------------------------------------------------------------------
    def training_batch(self, stage):
        """A batch in network-input range: images with pseudo-labels (baseline), or images and hard
        patches of a quarter of the input side (smhm, as mined from 1024x512 images)."""
        generator = torch.Generator().manual_seed(0)
        n, (w, h) = self.opts.batch_size, self.opts.input_size

        def images(height, width):
            return torch.rand(n, 3, height, width, generator=generator) * 255.0 - 120.0

        def labels(height, width):
            label = torch.randint(0, NUM_CLASSES, (n, height, width), generator=generator)
            label[:, : height // 8] = IGNORE_INDEX
            return label

        if stage == "baseline":
            return {"target": {"image": images(h, w), "label": labels(h, w)}}
        ph, pw = max(8, h // 4), max(8, w // 4)
        return {"target": {"image": images(h, w)}, "patches": {"image": images(ph, pw), "label": labels(ph, pw)}}

    def _published_loader(self, dataset, shuffle=False, drop_last=False):
        return DataLoader(dataset, batch_size=self.opts.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.opts.num_workers, pin_memory=False, persistent_workers=False)

    def loader(self, stage, cfg):
        ws, o = self.workspace, self.opts
        if not cfg.project_loader:
            if stage == "val":
                return self._published_loader(PublishedImages(ws.image_paths("val"), o.input_size, ws.label_paths("val")))
            return self._published_loader(PublishedImages(ws.image_paths("train"), o.input_size),
                                          shuffle=stage == "data", drop_last=stage == "data")
        if stage == "pseudo_label":
            dataset = CityscapesDataset(ws.image_root, "train", input_size=o.input_size, list_root=ws.list_root,
                                        resize_backend=cfg.resize_backend)
            return PredictionData(dataset, dataset.names, o.batch_size, o.num_workers).predict_dataloader()
        args = parse_args(["--image-root", ws.image_root, "--label-root", ws.label_root, "--list-root", ws.list_root,
                           "--input-size", "x".join(map(str, o.input_size)), "--num-workers", str(o.num_workers),
                           "--train-batch-size", str(o.batch_size), "--val-batch-size", str(o.batch_size),
                           "--resize-backend", cfg.resize_backend])
        data = SegmentationDataModule(args, "images")  # a RunConfig
        return data.val_dataloader() if stage == "val" else data.train_dataloader()["target"]


# -- stages ---------------------------------------------------------------------------------------------

def run_training(bench, stage, cfg, count):
    """``baseline`` / ``smhm``: training steps of the stage's module, run by a Trainer."""
    o, device = bench.opts, bench.device
    batch = to_device(bench.training_batch(stage), device)
    with PeakMemory(device) as memory:
        module = bench.module(stage, cfg)
        timer = StepTimes(device)
        bench.fit(module, batch, cfg, o.warmup + o.steps, [timer])
        times = timer.times[o.warmup:]
        peak = memory.peak_mb()
    flops = count_flops(lambda: bench.fit(module, batch, cfg, 1)) / o.batch_size if count else None
    figures = result(times, o.batch_size, False, peak)
    # The first step compiles (--compile): its time, and how much longer than a steady step it took.
    figures["first_step_ms"] = timer.times[0] * 1000.0
    if cfg.compile != "off":
        figures["compile_s"] = max(0.0, (figures["first_step_ms"] - figures["step_ms"]) / 1000.0)
    return figures, flops


def run_inference(bench, stage, cfg, count):
    """``pseudo_label`` / ``val`` fed by their loaders, then the same on the last batch alone."""
    o, device = bench.opts, bench.device
    pin = bench.pin(cfg)
    extra = {}
    with PeakMemory(device) as memory:
        module = bench.module("baseline", cfg)
        module.eval()
        if stage == "pseudo_label":
            predictor = PredictionModule(module.net, flip=True)
            infer = predictor.predict_step
        else:
            infer = module.validation_step
        loader = bench.loader(stage, cfg)
        batches = iter(loader)
        last = {}

        def predict(batch):
            with bench.no_grad(cfg), bench.autocast(cfg):
                return infer(batch, 0)

        def step():
            last["batch"] = to_device(next(batches), device, non_blocking=pin)
            last["output"] = predict(last["batch"])

        times = timed(step, o.warmup, o.steps, device)
        peak = memory.peak_mb()
        batches = loader = None  # the loader's workers end before the model-only timing
        model_times = timed(lambda: predict(last["batch"]), 0, o.steps, device)
        extra["model_images_per_s"] = o.batch_size / statistics.median(model_times)
    if stage == "pseudo_label" and cfg.project_loader:
        extra["writing"] = measure_writing(bench, last["output"])
    flops = count_flops(lambda: predict(last["batch"])) / o.batch_size if count else None
    return {**result(times, o.batch_size, True, peak), **extra}, flops


def measure_writing(bench, prediction):
    """The project's pseudo-label files of ``--steps`` batches (train-id PNG, colour PNG, class counts,
    the synced record), written as ``generate_pseudo_labels.py`` writes them: on writer threads
    (``utils/writers.py``), each batch recorded after its files; timed from the first batch handed
    over to the last record synced."""
    folder = os.path.join(bench.workdir, "pseudo")
    writer = PseudoLabelWriter(folder, "train", NUM_CLASSES)
    records = RecordFile(os.path.join(folder, "records.tsv"))
    writer.write_batch(prediction, None)  # untimed: the folders made, the code warm
    start = time.perf_counter()
    with BackgroundWriter() as pool:
        for _ in range(bench.opts.steps):
            pool.submit(writer.write_batch, prediction, None, then=records.append)
    elapsed = time.perf_counter() - start
    records.close()
    per_image = elapsed / (bench.opts.steps * len(prediction["name"]))
    return {"images_per_s": 1.0 / per_image, "ms_per_image": per_image * 1000.0, "threads": pool.threads}


def run_data(bench, cfg):
    """``data``: batches of decoded, resized, normalised training images from the loader alone."""
    o = bench.opts
    loader = bench.loader("data", cfg)
    batches = iter(loader)
    times = timed(lambda: next(batches), o.warmup, o.steps, torch.device("cpu"))
    return result(times, o.batch_size, True, None)


def run_resize(bench, cfg):
    """``resize``: one photo-like image (bicubic) and one label map (nearest) from twice the input size
    to the input size, already in memory, with the configuration's resize backend."""
    o = bench.opts
    rng = np.random.default_rng(0)
    width, height = o.input_size
    image, label = synthetic_photo(rng, 2 * width, 2 * height), synthetic_train_ids(rng, 2 * width, 2 * height)
    times = timed(lambda: resize_image(image, o.input_size, cfg.resize_backend), o.warmup, o.steps, torch.device("cpu"))
    label_times = timed(lambda: resize_label(label, o.input_size, cfg.resize_backend), o.warmup, o.steps,
                        torch.device("cpu"))
    return {**result(times, 1, False, None), "label_ms": statistics.median(label_times) * 1000.0}


def measure(bench, stage, cfg, count):
    """One stage in one configuration; returns (figures, FLOPs per image or None)."""
    torch.manual_seed(0)
    if bench.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    try:
        if stage in ("baseline", "smhm"):
            return run_training(bench, stage, cfg, count)
        if stage in ("pseudo_label", "val"):
            return run_inference(bench, stage, cfg, count)
        if stage == "resize":
            return run_resize(bench, cfg), None
        return run_data(bench, cfg), None
    finally:
        if not _eager(cfg):
            # The next configuration compiles afresh (torch.compile's own count of recompilations
            # starts over); compiled kernels stay in the inductor cache on disk.
            torch._dynamo.reset()
        if bench.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


# -- report ---------------------------------------------------------------------------------------------

def device_info(device):
    import pytorch_lightning
    import torchvision

    info = {"type": device.type, "torch": torch.__version__, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "pytorch_lightning": pytorch_lightning.__version__, "torchvision": torchvision.__version__,
            "opencv": cv2.__version__}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), tf32_convolutions=torch.backends.cudnn.allow_tf32)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
            name = found.group(1).strip() if found else name
        except OSError:
            pass
        info["name"] = name
    return info


def _number(value, digits=1):
    if value is None:
        return "-"
    if digits and 0 < abs(value) < 10:  # small rates keep two significant digits
        digits = max(digits, 2)
    return f"{value:.{digits}f}"


TABLE_COLUMNS = (("images/s", "images_per_s", 1), ("step ms", "step_ms", 1), ("peak MiB", "peak_mem_mb", 0),
                 ("TFLOP/s", "tflops", 2))


def _figure(report, stage, config, key):
    """One figure of the report, ``None`` where that configuration was not measured or failed."""
    return (report.get(stage, {}).get(config) or {}).get(key)


def format_table(report):
    """Side by side: per stage the speedup, then published and fast figures of each measure; then the
    variants of the fast configuration measured, against the fast one."""
    top = f"{'':<13}{'':>9}" + "".join(f"{title:>21}" for title, _, _ in TABLE_COLUMNS)
    sub = f"{'stage':<13}{'speedup':>9}" + f"{'published':>12}{'fast':>9}" * len(TABLE_COLUMNS)
    lines = [top, sub, "-" * len(sub)]
    variants = []
    for stage in STAGES:
        if stage not in report:
            continue
        row = f"{stage:<13}{_number(report[stage].get('speedup'), 2) + 'x':>9}"
        for _, key, digits in TABLE_COLUMNS:
            row += (f"{_number(_figure(report, stage, 'published', key), digits):>12}"
                    f"{_number(_figure(report, stage, 'fast', key), digits):>9}")
        lines.append(row)
        for name, ratio in report[stage].get("vs_fast", {}).items():
            error = _figure(report, stage, name, "error")
            figures = (f"failed: {error[:80]}" if error else
                       f"{_number(_figure(report, stage, name, 'images_per_s')):>9} {_number(_figure(report, stage, name, 'step_ms')):>9}"
                       f" {_number(ratio, 2) + 'x':>8} {_number(_figure(report, stage, name, 'first_step_ms')):>10}")
            variants.append(f"{stage:<13}{name:<25}{figures}")
    if variants:
        lines += ["", f"{'stage':<13}{'variant of fast':<25}{'images/s':>9} {'step ms':>9} {'vs fast':>8} "
                      f"{'1st step ms':>10}", *variants]
    notes = []
    for stage in ("pseudo_label", "val"):
        p, f = _figure(report, stage, "published", "model_images_per_s"), _figure(report, stage, "fast", "model_images_per_s")
        if stage in report:
            notes.append(f"{stage}: model alone on a loaded batch {_number(p)} (published) / {_number(f)} (fast) images/s")
    writing = _figure(report, "pseudo_label", "fast", "writing")
    if writing:
        notes.append(f"pseudo_label: writing the label and colour PNGs and the records on "
                     f"{writing.get('threads', 1)} writer thread(s) beside the main process "
                     f"{_number(writing['ms_per_image'])} ms per image ({_number(writing['images_per_s'])} images/s), "
                     "not included above")
    if "resize" in report:
        notes.append(f"resize: one image (bicubic) {_number(_figure(report, 'resize', 'published', 'step_ms'), 2)} ms "
                     f"with PIL (published) / {_number(_figure(report, 'resize', 'fast', 'step_ms'), 2)} ms with OpenCV "
                     f"(fast); one label (nearest) {_number(_figure(report, 'resize', 'published', 'label_ms'), 2)} / "
                     f"{_number(_figure(report, 'resize', 'fast', 'label_ms'), 2)} ms")
    if report["device"]["type"] == "cuda":
        notes.append("peak MiB: torch.cuda.max_memory_allocated during the stage (weights, optimiser state, activations)")
    return "\n".join(lines + [""] + notes)


# -- command line ---------------------------------------------------------------------------------------

def stage_list(text):
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(unknown) or text!r}; choose from {', '.join(STAGES)}")
    return list(dict.fromkeys(stages))  # in the order given: the first stage is measured first


def config_list(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = (*CONFIGS, *VARIANTS)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown configuration(s) {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join(known)}")
    return [n for n in known if n in names]


def build_parser():
    parser = ArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0],
                            epilog="Stages: " + ", ".join(STAGES) + ". See docs/benchmarks.md for results.")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device to measure on; auto = cuda when available (default: %(default)s)")
    parser.add_argument("--arch", choices=ARCH_NAMES, default="deeplabv2_r101",
                        help="network, any student of main.py's --arch; deeplabv2_r50, deeplabv2_tiny or segformer_b0 "
                             "keep CPU runs short (default: %(default)s)")
    parser.add_argument("--input-size", type=input_size, default=None, metavar="WxH",
                        help="network input size; PNG files are written at twice this size, as Cityscapes' "
                             "2048x1024 originals for 1024x512 (default: 1024x512 on CUDA, 256x128 on CPU)")
    parser.add_argument("--batch-size", type=at_least(1), default=4,
                        help="images per step in every stage (smhm needs at least 2) (default: %(default)s)")
    parser.add_argument("--steps", type=at_least(1), default=None,
                        help="timed steps per stage and configuration (default: 20 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=at_least(0), default=None,
                        help="untimed steps before them: allocator, cuDNN autotuning, compilation, loader "
                             "start-up (default: 5 on CUDA, 2 on CPU)")
    parser.add_argument("--num-workers", type=at_least(0), default=None,
                        help="loader processes of the pseudo_label, val and data stages, the same in both "
                             "configurations (default: the project's, from the cores: utils/loaders.py)")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="PyTorch CPU threads; on a machine shared with other jobs 1 avoids threads "
                             "spinning against each other (default: PyTorch's, one per core)")
    parser.add_argument("--stages", type=stage_list, default=list(STAGES), metavar="S,S,...",
                        help="comma-separated subset of " + ", ".join(STAGES) + " (default: all)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="channels-last networks in the fast configuration; auto = on (on CUDA for tensor "
                             "cores; on CPU it measured slightly faster too) (default: %(default)s)")
    parser.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto",
                        help="bfloat16 autocast in the fast configuration; auto = on for CUDA only, as it is "
                             "far slower on CPUs without bf16 instructions (default: %(default)s)")
    parser.add_argument("--compile", type=compile_level, nargs="?", const="network", default="off", metavar="LEVEL",
                        help="main.py's --compile for the fast configuration: network or step (--compile alone: "
                             "network); the first steps compile, so keep --warmup at 2 or more (default: %(default)s)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                        help="main.py's --compile-mode with --compile (default: %(default)s)")
    parser.add_argument("--configs", type=config_list, default=list(CONFIGS), metavar="C,C,...",
                        help="configurations to measure: published, fast, and variants of fast measured in the "
                             "training stages: " + ", ".join(f"{k} ({d})" for k, (_, d) in VARIANTS.items())
                             + " (default: published,fast)")
    parser.add_argument("--compile-backend", choices=("inductor", "aot_eager", "eager"), default="inductor",
                        help="the compiler behind torch.compile: inductor generates kernels; aot_eager and eager only "
                             "capture graphs (with and without autograd), to tell a capture problem from a code "
                             "generation one, or to rehearse quickly on a CPU (default: %(default)s)")
    parser.add_argument("--keep-going", action="store_true",
                        help="a configuration that fails is recorded (its error in the JSON) and the run goes on")
    parser.add_argument("--json", default=None, metavar="OUT",
                        help="also write the results as JSON, rewritten after every stage: device, versions, "
                             "settings, and per stage the figures of each configuration and the speedup")
    return parser


def resolve(opts):
    """Defaults that depend on the device, and checks of the flags; returns the device."""
    if opts.accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("--accelerator cuda: no CUDA device is available")
    cuda = opts.accelerator == "cuda" or (opts.accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    if opts.input_size is None:
        opts.input_size = (1024, 512) if cuda else (256, 128)
    if opts.steps is None:
        opts.steps = 20 if cuda else 5
    if opts.warmup is None:
        opts.warmup = 5 if cuda else 2
    if opts.num_workers is None:
        opts.num_workers = default_num_workers()
    if "smhm" in opts.stages and opts.batch_size < 2:
        raise UserError(f"--batch-size must be at least 2 for the smhm stage (SpatialMix mixes images of a "
                        f"batch), got {opts.batch_size}")
    if min(opts.input_size) < 16:
        raise UserError(f"--input-size must be at least 16 pixels on each side, got {opts.input_size}")
    if opts.compile == "off" and opts.compile_mode != "default":
        raise UserError(f"--compile-mode {opts.compile_mode} needs --compile network or --compile step")
    cuda_graphs = [n for n in opts.configs if n == "compile_step_cudagraphs"]
    if not cuda and (cuda_graphs or opts.compile_mode == "reduce-overhead"):
        raise UserError(f"{'--configs ' + cuda_graphs[0] if cuda_graphs else '--compile-mode reduce-overhead'} "
                        "captures CUDA graphs, which need a GPU")
    return device


def benchmark(opts, on_stage=None):
    """Run every stage of ``opts.stages`` in every configuration of ``opts.configs``; returns the
    report (a dict), which ``on_stage(report)`` also gets after each configuration and stage."""
    device = resolve(opts)
    threads, backend = torch.get_num_threads(), compile_utils.BACKEND
    compile_utils.BACKEND = opts.compile_backend
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    # Objects alive now (the imported libraries) are left out of the collections between stages.
    gc.freeze()
    try:
        return _benchmark(opts, device, on_stage)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
        compile_utils.BACKEND = backend


def warm_up_process(device):
    """One forward and backward of the tiny network: one-time library set-up (kernel libraries,
    autograd threads, the CUDA context) then counts against no stage."""
    net = get_deeplabv2(NUM_CLASSES, arch="deeplabv2_tiny").to(device)
    net(torch.zeros(2, 3, 64, 64, device=device), size=(64, 64)).sum().backward()
    synchronize(device)


def _eager(cfg):
    return cfg.compile == "off"


def _ratio(a, b):
    ok = all(isinstance(x, dict) and x.get("images_per_s") for x in (a, b))
    return a["images_per_s"] / b["images_per_s"] if ok else None


def _benchmark(opts, device, on_stage=None):
    report = {"device": device_info(device),
              "settings": {"arch": opts.arch, "input_size": "x".join(map(str, opts.input_size)),
                           "batch_size": opts.batch_size, "steps": opts.steps, "warmup": opts.warmup,
                           "num_workers": opts.num_workers, "compile": opts.compile,
                           "compile_mode": opts.compile_mode, "compile_backend": opts.compile_backend,
                           "configs": list(opts.configs),
                           "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    with tempfile.TemporaryDirectory(prefix="benchmark-") as workdir:
        bench = Bench(opts, device, workdir)
        warm_up_process(device)
        report["settings"]["configurations"] = {name: cfg.describe() for name, cfg in bench.configs.items()}
        for name, cfg in bench.configs.items():
            print(f"{name}: {cfg.describe()}", flush=True)
        for stage in opts.stages:
            # The variants change the training step; the other stages measure published and fast alone.
            names = [n for n in bench.configs if n in CONFIGS or stage in TRAINING_STAGES]
            figures, flops = {}, None
            for name in names:
                cfg = bench.configs[name]
                try:
                    figures[name], counted = measure(bench, stage, cfg, count=flops is None and _eager(cfg))
                except Exception as err:  # noqa: BLE001 - --keep-going records any failure and goes on
                    if not opts.keep_going:
                        raise
                    figures[name] = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:2000]}
                    print(f"  {stage:<13} {name:<10} failed: {figures[name]['error'][:300]}", flush=True)
                    continue
                flops = flops if counted is None else counted
                print(f"  {stage:<13} {name:<10} {figures[name]['images_per_s']:9.2f} images/s  "
                      f"{figures[name]['step_ms']:9.1f} ms/step", flush=True)
                if on_stage is not None:  # what is measured so far, should a later configuration not end
                    on_stage({**report, stage: dict(figures)})
            if flops is not None:  # counted in the first eager configuration: the same maths in all
                for entry in figures.values():
                    if "images_per_s" in entry:
                        entry["tflops"] = flops * entry["images_per_s"] / 1e12
            report[stage] = {**figures, "speedup": _ratio(figures.get("fast"), figures.get("published"))}
            variants = [n for n in figures if n not in CONFIGS]
            if variants:
                report[stage]["vs_fast"] = {n: _ratio(figures[n], figures.get("fast")) for n in variants}
            if stage in LOADER_STAGES:
                report["settings"]["png_mb"] = round(bench.workspace.png_mb, 2)
            if on_stage is not None:
                on_stage(report)
    return report


def main(argv=None):
    opts = build_parser().parse_args(argv)

    def write(report):  # after every stage: a run stopped later keeps the stages it measured
        if opts.json:
            atomic_write_text(opts.json, json.dumps(report, indent=1) + "\n")

    report = benchmark(opts, on_stage=write)
    print()
    print(format_table(report))
    if opts.json:
        write(report)
        print(f"\nwritten: {opts.json}")
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
