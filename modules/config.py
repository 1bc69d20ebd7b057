"""Every flag of the toolkit's commands and the frozen dataclass that holds its values, in one file
without torch (``--help`` imports no heavy library): ``main.py``'s sections and each training stage's
options, and the flags the data-stage scripts share (target images, the provider and how it predicts,
hardware).

:func:`parse_args` builds one frozen :class:`RunConfig` from ``main.py``'s command line (optionally on
top of a saved ``--config`` file) and nothing changes it afterwards; the stage module, the data module
and the runner take the sections they need. Every rule between flags is checked there, once, before
anything is read or written: the sections' ``check_*`` functions and each stage's ``Options.check``.
"""
import argparse
import dataclasses
import math
import os
import re
from typing import Any, ClassVar, Optional

from datasets.targets import CITYSCAPES_LIST_ROOT, RESIZE_BACKENDS, TARGETS, make_target
from models.archs import ARCH_NAMES, family
from modules import MODULES
from utils.cli import (ArgumentParser, UserError, at_least, devices, finite_float, float_list, input_size,
                       learning_rate, name_text, non_negative_float, positive_float, probability, seed, typed_flags)
from utils.config import build, config_argv, read_config_values
from utils.criteria import CRITERIA, DEFAULT_CRITERION
from utils.image_cache import DEFAULT_FOLDER
from utils.loaders import add_num_workers_arg

DESCRIPTION = """Train or evaluate one stage of black-box domain adaptation (SpatialMix + hard patches).

stages (--module-name):
  basic        supervised training on the target ground truth (oracle); the plain evaluator in test mode
  source_only  the provider: supervised training on a labelled source domain (GTA5 / SYNTHIA layout)
  baseline     cross-domain distillation on the provider's pseudo-labels
  spatial_mix  self-distillation with SpatialMix (no hard patches)
  smhm         self-distillation with SpatialMix and hard patch mining

Add --module-name NAME to --help to see the flags of that stage."""
CONFIG_FILE = "config.json"  # the resolved configuration, in every experiment folder


# -- every command: the network, the hardware, the target images --------------------------------------------

@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The values of :func:`add_network_args`."""
    arch: str = "deeplabv2_r101"
    num_classes: int = 19
    head_branches: int = 2
    input_size: tuple = (1024, 512)


def add_network_args(parser, title="network"):
    """The flags that choose the network and its input size, shared by every entry point."""
    group = parser.add_argument_group(title)
    group.add_argument("--arch", default=NetworkConfig.arch, choices=ARCH_NAMES,
                       help="deeplabv2_r101 (published), deeplabv2_r50, deeplabv2_tiny for CPU trials, or a student "
                            "from segmentation-models-pytorch: segformer_b0..segformer_b5, deeplabv3plus_r50, "
                            "deeplabv3plus_r101 (docs/students.md) (default: %(default)s)")
    group.add_argument("--num-classes", type=at_least(1, 255), default=NetworkConfig.num_classes,
                       help="number of train ids, at most 255 (255 is the ignore label) (default: %(default)s)")
    group.add_argument("--head-branches", type=int, choices=(2, 4), default=NetworkConfig.head_branches,
                       help="ASPP branches summed in the head: 2 as the published checkpoints were made, or all 4 "
                            "(default: %(default)s)")
    group.add_argument("--input-size", type=input_size, default=NetworkConfig.input_size, metavar="WxH",
                       help="images are resized (bicubic) to WIDTHxHEIGHT for training and inference "
                            "(default: 1024x512)")
    return group


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # Lightning's, less those this project never runs on


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
    group.add_argument("--accelerator", choices=ACCELERATORS, default=HardwareConfig.accelerator,
                       help="cpu, gpu (cuda), mps or auto (default: %(default)s)")
    group.add_argument("--devices", type=devices, default=HardwareConfig.devices,
                       help="number of devices per node, a list such as 0,1, or auto (default: %(default)s)")
    group.add_argument("--num-nodes", type=at_least(1), default=HardwareConfig.num_nodes, help="number of machines (default: %(default)s)")
    group.add_argument("--strategy", default=HardwareConfig.strategy, help="Lightning strategy, e.g. ddp (default: %(default)s)")
    group.add_argument("--precision", default=HardwareConfig.precision,
                       help="32-true as published, or bf16-mixed for speed on recent GPUs (default: %(default)s)")
    group.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=HardwareConfig.fold_bn,
                       help="for inference (pseudo-labels, hard patches, validation, test, predict mode), run a copy "
                            "of the network with each BatchNorm folded into the convolution before it: the same "
                            "results up to float rounding, faster; --no-fold-bn runs the network as it is, for "
                            "debugging (default: on)")
    return group


COMPILE_LEVELS = ("off", "network", "step")  # utils/compile.py
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_level(text):
    """``--compile``: off, network or step."""
    value = str(text).strip().lower()
    if value not in COMPILE_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(COMPILE_LEVELS)}, got {text!r}")
    return value



def condition_list(text):
    """``--conditions``: comma-separated names, each once (checked against the target later)."""
    names = [n.strip() for n in str(text).split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, each once, such as fog,night, got {text!r}")
    return tuple(names)


def add_target_dataset_args(group, labels=True):
    """``--target-dataset``, ``--data-dir``, ``--image-root``, ``--conditions`` and, when ``labels``,
    ``--label-root`` (also spelt ``--label-dir``)."""
    group.add_argument("--target-dataset", choices=tuple(TARGETS), default="cityscapes",
                       help="the target domain's layout: cityscapes, acdc, darkzurich, or folder (any tree of "
                            ".png/.jpg images) (default: %(default)s)")
    truth = ", train-id ground truth in <data-dir>/gtFine2 (made by utils/transfer_trainid.py)" if labels else ""
    group.add_argument("--data-dir", default=None,
                       help="the target's root: for cityscapes, images in <data-dir>/leftImg8bit/<split>/<city>/"
                            f"<stem>_leftImg8bit.png{truth} (default: ./data/Cityscapes); for acdc and darkzurich, "
                            "the official download with rgb_anon/ and gt/ (default: ./data/ACDC, ./data/DarkZurich); "
                            "for folder, the folder of your images (no default)")
    group.add_argument("--image-root", default=None,
                       help="the image folder when it is not where --data-dir puts it (<data-dir>/leftImg8bit, "
                            "<data-dir>/rgb_anon)")
    if labels:
        group.add_argument("--label-root", "--label-dir", dest="label_root", default=None,
                           help="the train-id ground truth when it is not where --data-dir puts it "
                                "(<data-dir>/gtFine2/<split>/<city>/<stem>_gtFine_labelIds.png, <data-dir>/gt/...); "
                                "for folder, labels for evaluation: <relative path>/<stem>.png, mirroring the images")
    group.add_argument("--conditions", type=condition_list, default=None, metavar="NAME,...",
                       help="ACDC conditions (fog,night,rain,snow) or Dark Zurich times of day (day,twilight,night) "
                            "to read (default: every one; Dark Zurich: those of the split, day,twilight,night for "
                            "train and night otherwise)")
    return group


def add_resize_backend_arg(group):
    """``--resize-backend``, the same flag for training, evaluation and the data-stage scripts."""
    group.add_argument("--resize-backend", choices=RESIZE_BACKENDS, default=RESIZE_BACKENDS[0],
                       help="how images (bicubic) and labels (nearest) are resized to --input-size: pil, bit for "
                            "bit as the published loaders, or cv2 (OpenCV), several times faster but not the same "
                            "pixels (default: %(default)s)")


# -- main.py ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The values of :func:`add_data_args`."""
    target_dataset: str = "cityscapes"
    data_dir: str = None  # as typed; None: the target's default (./data/Cityscapes)
    image_root: str = None  # as typed; None: <data-dir>/leftImg8bit
    label_root: str = None  # as typed; None: <data-dir>/gtFine2
    conditions: Optional[tuple] = None  # as typed; None: the target's default
    list_root: str = None  # as typed; None: the default folder, which may be absent
    val_split: str = "val"
    num_workers: Optional[int] = None  # None: from the cores (utils/loaders.py)
    image_cache: str = "auto"  # a folder, auto (<log-tb-dir>/cache where the disk has room) or off
    resize_backend: str = "pil"
    train_batch_size: int = 4
    val_batch_size: int = 2
    test_batch_size: int = 2
    rare_class_sampling: Optional[float] = None  # the temperature; None: images in shuffled passes, as published

    def target(self):
        """The target's layout (``datasets.base.Target``); a flag that does not fit it is a ``UserError``."""
        return make_target(self.target_dataset, self.data_dir, self.image_root, self.label_root, self.conditions)

    @property
    def images(self):
        return self.target().images

    @property
    def labels(self):
        return self.target().labels

    @property
    def lists(self):
        """The folder of ``<split>.txt`` image lists to look in (``--list-root`` or the target's default)."""
        return self.list_root or TARGETS[self.target_dataset].default_list_root

    def scored_conditions(self):
        """The conditions evaluation scores one by one besides the whole split (ACDC's), else ``()``."""
        target = TARGETS[self.target_dataset]
        if not target.per_condition_scores:
            return ()
        return tuple(self.conditions) if self.conditions else target.default_conditions(self.val_split)


def add_data_args(parser):
    group = parser.add_argument_group("data")
    add_target_dataset_args(group)
    group.add_argument("--list-root", default=DataConfig.list_root, metavar="DIR",
                       help="folder with <split>.txt image lists (lines: image paths inside the split, as "
                            "<city>/<stem>_leftImg8bit.png); a split whose list is not in it is found by scanning its "
                            "image folder; a folder you name must exist (default: "
                            f"{CITYSCAPES_LIST_ROOT} for cityscapes, which may be absent; none for the other targets)")
    group.add_argument("--val-split", default=DataConfig.val_split, help="split used for validation and testing (default: %(default)s)")
    add_num_workers_arg(group)
    group.add_argument("--image-cache", default=DataConfig.image_cache, metavar="DIR|auto|off",
                       help="keep every training and evaluation image, decoded and resized to --input-size, as a raw "
                            "array under DIR (about W*H*3 bytes each) after its first read, and read it from there "
                            "in later epochs, rounds and runs; changed images, or another --input-size or "
                            f"--resize-backend, are read again. auto: DIR is <log-tb-dir>/{DEFAULT_FOLDER} when its "
                            "disk holds the images not cached yet with a tenth of the disk (1 to 20 GiB) to spare, "
                            "else no cache (a line says why); off: no cache (default: %(default)s)")
    add_resize_backend_arg(group)
    group.add_argument("--train-batch-size", type=at_least(1), default=DataConfig.train_batch_size, help="images per training step and device (default: %(default)s)")
    group.add_argument("--val-batch-size", type=at_least(1), default=DataConfig.val_batch_size, help="images per validation step (default: %(default)s)")
    group.add_argument("--test-batch-size", type=at_least(1), default=DataConfig.test_batch_size, help="images per test step (default: %(default)s)")
    group.add_argument("--rare-class-sampling", type=positive_float, default=DataConfig.rare_class_sampling, metavar="T",
                       help="baseline, spatial_mix, smhm: draw each training image (and smhm's hard patch) by "
                            "rare-class sampling: a class c with probability softmax((1 - f_c) / T) over the classes, "
                            "f_c its pixel share in the pseudo-labels of --pseudo-label-root, then an image "
                            "containing c uniformly; e.g. 0.01 (default: shuffled passes, as published)")
    return group


def add_pseudo_label_root_arg(group, default, use):
    """``--pseudo-label-root`` of the stages that read pseudo-labels; ``use``: what for."""
    group.add_argument("--pseudo-label-root", default=default,
                       help="pseudo-labels from generate_pseudo_labels.py: its --save folder, its label_ids/train "
                            "folder, or any folder of <city>/<stem>_gtFine_labelIds.png; refused while "
                            f"generate_pseudo_labels.py has not finished it (no summary.json); {use} "
                            "(default: %(default)s)")


def check_data_args(args):
    """After parsing: ``--list-root`` left out means the default folder, which need not exist (the
    image folders are scanned); a folder the user named must exist, else it is a typo. The target's
    flags must fit it (``--conditions`` of a target that has them, ``--data-dir`` for a folder)."""
    make_target(args.target_dataset, args.data_dir, args.image_root, args.label_root, args.conditions)
    if args.image_cache not in ("auto", "off") and os.path.exists(args.image_cache) and not os.path.isdir(args.image_cache):
        raise UserError(f"--image-cache {args.image_cache} is a file; the cache is a folder")
    if args.list_root is not None and not os.path.isdir(args.list_root):
        raise UserError(f"--list-root: folder not found: {args.list_root} (leave the flag out to scan the image "
                        "folders)")
    return args


@dataclasses.dataclass(frozen=True)
class TrainingNetwork(NetworkConfig):
    freeze_bn_stats: bool = False


@dataclasses.dataclass(frozen=True)
class TrainingHardware(HardwareConfig):
    sync_batchnorm: Optional[bool] = None  # None: on for training on GPUs
    channels_last: str = "auto"
    compile: str = "off"  # off, network or step (utils/compile.py)
    compile_mode: str = "default"


LR_SCHEDULES = ("auto", "cosine", "constant", "poly", "warmup_poly")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float
    optimizer: str = "adam"
    lr_schedule: str = "auto"
    warmup_steps: int = 1500
    max_steps: int = 20000
    max_epochs: Optional[int] = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    val_interval: Any = 1.0
    select_by: str = DEFAULT_CRITERION
    flip_when_test: bool = False
    save_predictions: Optional[str] = None
    overwrite: bool = False
    scales: tuple = (1.0,)
    log_interval: int = 50
    visualize_interval: int = 500

    @property
    def monitor(self):
        """The logged value by which the best checkpoint is kept (``--select-by``) and the name of
        the best checkpoint's file."""
        if self.select_by == "val-miou":
            return "val_miou", "checkpoint-step_{step}-miou_{val_miou:.2f}"
        return "val_score", "checkpoint-step_{step}-score_{val_score:.4f}"


def kept_checkpoint_score(filename):
    """The score in the name of a best checkpoint (:attr:`EvalConfig.monitor`), or ``None``."""
    match = re.fullmatch(r"checkpoint-step_\d+-(?:score|miou)_(-?[\d.]+)\.ckpt", filename)
    return float(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run of ``main.py`` is told; ``stage`` holds the flags of the stage's own
    ``Options`` (``None`` for stages without any)."""
    module_name: str
    mode: str
    restore_from: Optional[str]
    experiment_name: str
    log_tb_dir: str
    rounds: Optional[int]
    resume: Optional[str]
    network: TrainingNetwork
    optim: OptimConfig
    evaluation: EvalConfig
    hardware: TrainingHardware
    data: DataConfig
    stage: Any = None
    round_guard: bool = True

    @property
    def experiment_dir(self):
        """``<log-tb-dir>/<module-name>/<experiment-name>``: every output of the run lives here."""
        return os.path.join(self.log_tb_dir, self.module_name, self.experiment_name)

    def replace(self, **changes):
        """A copy with ``changes``: top-level fields by name, fields of a section as ``section__field``."""
        top, sections = {}, {}
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                sections.setdefault(section, {})[field] = value
            else:
                top[key] = value
        for section, fields in sections.items():
            top[section] = dataclasses.replace(getattr(self, section), **fields)
        return dataclasses.replace(self, **top)


def interval(text):
    """``--val-interval``: a fraction of an epoch (``1.0``, ``0.25``) or a number of steps (``500``)."""
    try:
        value = float(text) if "." in text else int(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0 or (isinstance(value, float) and value > 1):
        raise argparse.ArgumentTypeError(f"expected a fraction of an epoch in (0, 1] such as 1.0 or 0.25, or a step "
                                         f"count such as 500, got {text!r}")
    return value


def add_run_args(parser):
    parser.add_argument("--module-name", choices=tuple(MODULES), default="basic", help="the stage to run (default: %(default)s)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help=f"run again with the settings of an earlier run: its {CONFIG_FILE} (in every experiment "
                             "folder); flags given as well override the file's")
    parser.add_argument("--mode", choices=("train", "test", "predict"), default="train",
                        help="train the stage, evaluate --restore-from on the val split, or predict every image of "
                             "the --val-split split with it into --save-predictions, no labels needed "
                             "(modules/predict.py) (default: %(default)s)")
    parser.add_argument("--restore-from", default=None,
                        help="initial weights: a state dict, a Lightning checkpoint, or the ImageNet DeepLab "
                             "init (head left fresh); in test and predict mode, what to evaluate: those, a black "
                             "box's ONNX file, or a folder of its label maps (<name>.png per image, "
                             "modules/label_map_box.py)")
    parser.add_argument("--experiment-name", type=name_text, default="none",
                        help="outputs go to <log-tb-dir>/<module-name>/<experiment-name> (default: %(default)s)")
    parser.add_argument("--log-tb-dir", "--experiments-dir", dest="log_tb_dir", default="./experiments",
                        help="root of every output: experiment folders, TensorBoard logs, records (default: %(default)s)")
    parser.add_argument("--rounds", type=at_least(1), default=None,
                        help="self-distillation rounds: round k+1 restarts from the best student of round k; "
                             "outputs in <experiment-name>_round_<k> (with the best student extracted to "
                             "student.pth) and a <experiment-name>_rounds.csv table, also for --rounds 1 "
                             "(default: a single run in <experiment-name>, as published)")
    parser.add_argument("--round-guard", action=argparse.BooleanOptionalAction, default=True,
                        help="with --rounds: from the second round on, keep a round only if its best --select-by "
                             "score is above the round before, and stop at the first that is not (the first round "
                             "and, with --select-by last, every round is kept); --no-round-guard runs every round, "
                             "as published (default: on)")
    parser.add_argument("--resume", default=None, metavar="PATH|last",
                        help="continue training from a Lightning checkpoint, or 'last' for the experiment's last.ckpt")

    net = add_network_args(parser)
    net.add_argument("--freeze-bn-stats", action="store_true",
                     help="keep BatchNorm running statistics fixed during training (published: they update)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--lr", type=learning_rate, default=1e-4,
                     help="learning rate (default: %(default)s; as published, 1e-4 for the baseline and 1e-5 for "
                          "spatial_mix and smhm)")
    opt.add_argument("--optimizer", choices=("adam", "sgd", "adamw"), default=OptimConfig.optimizer,
                     help="adam as published; sgd (momentum 0.9, weight decay 5e-4, none on the students' norm "
                          "layers, head at 10x lr); or adamw, the transformer recipe of SegFormer / DAFormer for the "
                          "students (with --lr 6e-5: weight decay 0.01, none on norm layers, decoder and head at 10x "
                          "lr) (default: %(default)s)")
    opt.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=OptimConfig.lr_schedule,
                     help="cosine: the published per-epoch cosine, lr(epoch e) = lr * (1 + cos(pi * e / 10)) / 2, "
                          "periodic (0 at epoch 10, back to lr at epoch 20, ...); constant; poly (power 0.9 to "
                          "--max-steps); or warmup_poly: linear warm-up over --warmup-steps from 1e-6 of lr, then "
                          "poly with power 1 to 0; auto = cosine for adam (as published), poly for sgd (the DeepLab "
                          "recipe), warmup_poly for adamw (default: %(default)s)")
    opt.add_argument("--warmup-steps", type=at_least(0), default=OptimConfig.warmup_steps,
                     help="steps of the linear warm-up of --lr-schedule warmup_poly (default: %(default)s)")
    opt.add_argument("--max-steps", type=at_least(1), default=OptimConfig.max_steps,
                     help="training ends after this many optimiser steps (default: %(default)s)")
    opt.add_argument("--max-epochs", type=at_least(1), default=OptimConfig.max_epochs, help="or after this many epochs, whichever comes first")
    opt.add_argument("--seed", type=seed, default=OptimConfig.seed, help="random seed, 0 to 2**32-1 (default: %(default)s)")

    ev = parser.add_argument_group("evaluation and logging")
    ev.add_argument("--val-interval", type=interval, default=EvalConfig.val_interval,
                    help="validate every fraction of an epoch (1.0 = each epoch) or every N steps (an integer) "
                         "(default: %(default)s)")
    ev.add_argument("--select-by", choices=(*CRITERIA, "last", "val-miou"), default=EvalConfig.select_by,
                    help="how a stage keeps its best checkpoint: a label-free score of the val split's images "
                         "(utils/label_free.py: agreement under a flip or a mix, confident and diverse predictions, "
                         "and their means), needing no target labels; last, the last checkpoint; or val-miou, the "
                         "published protocol, which selects with the labels of the split it reports on "
                         "(default: %(default)s)")
    ev.add_argument("--flip-when-test", action="store_true", help="add horizontal-flip test-time augmentation")
    ev.add_argument("--save-predictions", default=EvalConfig.save_predictions, metavar="DIR",
                    help="test mode: write predicted train-id PNGs (train_ids/) and colour PNGs (color/) at "
                         "ground-truth resolution, mirroring the images' paths inside the split (<city>/<stem> "
                         "for Cityscapes); predict mode: train_ids/, color/ and pictures/ at each image's own "
                         "resolution, resumed by rerunning the same command")
    ev.add_argument("--scales", type=float_list(positive_float), default=EvalConfig.scales, metavar="S,S,...",
                    help="test and predict mode: average the logits over these input scale factors, e.g. "
                         "0.75,1.0,1.25 (each scale's logits resized back to the input size, flip-augmented with "
                         "--flip-when-test), as the data stages' --multiscale; training validates at the one "
                         "scale 1.0 (default: 1.0)")
    ev.add_argument("--overwrite", action="store_true",
                    help="test and predict mode: replace the predictions in --save-predictions made with other "
                         "settings or weights (a rerun with the same ones resumes in predict mode, and writes them "
                         "again in test mode)")
    ev.add_argument("--log-interval", type=at_least(1), default=EvalConfig.log_interval, help="log scalars every N steps (default: %(default)s)")
    ev.add_argument("--visualize-interval", type=at_least(0), default=EvalConfig.visualize_interval,
                    help="log an input | target | prediction picture every N steps; 0 = never (default: %(default)s)")

    hw = add_hardware_args(parser)
    hw.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=TrainingHardware.sync_batchnorm,
                    help="BatchNorm statistics of the student and the teacher computed over all devices, as "
                         "published (batch sizes are per device); default: on when training on GPUs, where "
                         "it matters for several devices and changes nothing on one; --no-sync-batchnorm: "
                         "each device normalises with its own batch")
    hw.add_argument("--channels-last", choices=("auto", "on", "off"), default=TrainingHardware.channels_last,
                    help="channels-last memory format for the networks; auto = on for CUDA (default: %(default)s)")
    hw.add_argument("--compile", type=compile_level, nargs="?", const="network", default=TrainingHardware.compile, metavar="LEVEL",
                    help="torch.compile for training (utils/compile.py): network compiles the student and the EMA "
                         "teacher (--compile alone means network); step also the tensor work of a training step "
                         "(SpatialMix, flip, augmentation, losses, EMA update); the first steps compile (minutes "
                         "for DeepLabv2-R101; the compile time is printed apart from the step time), and compiled "
                         "code is cached in <log-tb-dir>/inductor_cache for later runs; the same results as eager "
                         "within float rounding (default: %(default)s)")
    hw.add_argument("--compile-mode", choices=COMPILE_MODES, default=TrainingHardware.compile_mode,
                    help="torch.compile's mode with --compile: reduce-overhead captures CUDA graphs where shapes "
                         "are static; max-autotune also tunes kernels (longer to compile) (default: %(default)s)")


def check_compile(hardware):
    """``--compile-mode`` without ``--compile``, or CUDA graphs on a CPU: one line each."""
    if hardware.compile == "off" and hardware.compile_mode != "default":
        raise UserError(f"--compile-mode {hardware.compile_mode} needs --compile network or --compile step")
    if hardware.compile_mode == "reduce-overhead" and hardware.accelerator == "cpu":
        raise UserError("--compile-mode reduce-overhead captures CUDA graphs, which need a GPU (--accelerator "
                        "cpu); use --compile-mode default on CPU")


def check_batch_statistics(config, batch_size, flag):
    """DeepLabV3+'s ASPP pools each image to one pixel before a BatchNorm, which cannot normalise a
    single value: a training batch of one image fails there unless the statistics are frozen."""
    if batch_size == 1 and family(config.network.arch) == "cnn" and not config.network.freeze_bn_stats:
        raise UserError(f"{flag} 1 with --arch {config.network.arch}: the BatchNorm after its ASPP image pooling "
                        "needs at least 2 images per step; give 2 or more, or add --freeze-bn-stats")


# -- each stage's own options (main.py --module-name NAME --help) ------------------------------------------
# A field's default is its flag's default; ``check`` tests a value against the other flags (one flag
# alone is checked by its argparse type); ``published_lr`` is the stage's --lr default where it differs.

@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """``source_only``: the labelled source domain."""
    source_dataset: str = "gta5"
    source_root: str = "./data/GTA5"

    @classmethod
    def add_args(cls, parser):
        group = parser.add_argument_group("source_only")
        group.add_argument("--source-dataset", choices=("gta5", "synthia"), default=cls.source_dataset,
                           help="layout of --source-root: gta5 (images/, labels/ with Cityscapes label ids) or "
                                "synthia (RGB/, GT/LABELS/) (default: %(default)s)")
        group.add_argument("--source-root", default=cls.source_root, help="labelled source dataset (default: %(default)s)")


@dataclasses.dataclass(frozen=True)
class BaselineOptions:
    """``baseline``: the provider's pseudo-labels."""
    pseudo_label_root: str = "./experiments/gta5_pseudo_label/"
    complementary_weight: float = 0.0  # ATP's complementary labels; 0: off, as published

    @classmethod
    def add_args(cls, parser):
        group = parser.add_argument_group("baseline")
        add_pseudo_label_root_arg(group, cls.pseudo_label_root, "what the student learns from")
        group.add_argument("--complementary-weight", type=non_negative_float, default=cls.complementary_weight,
                           metavar="W", help="weight of the complementary-label loss: -log(1 - p) of the classes "
                                             "generate_pseudo_labels.py --complementary-below wrote a pixel is not, "
                                             "added to the cross-entropy (default: %(default)s, off as published)")


@dataclasses.dataclass(frozen=True)
class SelfDistillationOptions:
    """``spatial_mix``: the teacher, SpatialMix and the student's augmentation."""
    published_lr: ClassVar[float] = 1e-5
    position_beta: float = 0.5
    confidence_threshold: float = 0.968
    confidence_source: str = "softmax"
    ema_alpha: float = 0.99
    flip_prob: float = 0.5
    no_augment: bool = False
    teacher_dropout: bool = False
    pseudo_label_root: Optional[str] = None  # only for the class shares of the rare-class options
    distribution_alignment: bool = False

    @classmethod
    def add_args(cls, parser):
        group = parser.add_argument_group("self-distillation")
        group.add_argument("--position-beta", type=finite_float, default=cls.position_beta,
                           help="β of the Beta(β, β) that places the SpatialMix split point in [0.2, 0.8] of "
                                "each side; β <= 0 splits at the centre (default: %(default)s)")
        group.add_argument("--confidence-threshold", type=finite_float, default=cls.confidence_threshold,
                           help="a teacher pixel counts as confident at this probability (in [0, 1]; any "
                                "number with --confidence-source logits); the consistency weight is the share of "
                                "confident pixels (default: %(default)s)")
        group.add_argument("--confidence-source", choices=("softmax", "logits"), default=cls.confidence_source,
                           help="compare the threshold with softmax probabilities, or with raw logits as the "
                                "published code did (default: %(default)s)")
        group.add_argument("--ema-alpha", type=probability, default=cls.ema_alpha,
                           help="largest EMA factor of the teacher; α = min(1 - 1/(step + 1), this) "
                                "(default: %(default)s)")
        group.add_argument("--flip-prob", type=probability, default=cls.flip_prob,
                           help="probability of flipping the whole mixed batch horizontally (default: %(default)s)")
        group.add_argument("--no-augment", action="store_true",
                           help="feed the student the mixed images without colour jitter and blur")
        group.add_argument("--teacher-dropout", action="store_true",
                           help="run the EMA teacher's dropout and drop-path layers as in training (the "
                                "published code's module mode; DeepLabv2 has none); by default they are off in the "
                                "teacher, BatchNorm keeping batch statistics either way")
        group.add_argument("--distribution-alignment", action="store_true",
                           help="align the teacher's target to the pseudo-labels' class shares: its probabilities "
                                "multiplied per class by (share in --pseudo-label-root / running mean of the "
                                "teacher's predicted share), renormalised, before the argmax and the confidence")
        add_pseudo_label_root_arg(group, cls.pseudo_label_root, "read here only for the class shares of --rare-class-sampling and "
                                               "--distribution-alignment")

    @classmethod
    def check(cls, config):
        o = config.stage
        if config.data.train_batch_size < 2:
            raise UserError("--train-batch-size must be at least 2: SpatialMix mixes each image with others "
                            "of its batch")
        if o.confidence_source == "softmax" and not 0 <= o.confidence_threshold <= 1:
            raise UserError(f"--confidence-threshold {o.confidence_threshold} is no probability: with "
                            "--confidence-source softmax it must be in [0, 1] (above 1 no pixel is ever confident)")
        if o.distribution_alignment and o.confidence_source != "softmax":
            raise UserError("--distribution-alignment rescales probabilities: it needs --confidence-source softmax")
        if o.pseudo_label_root is not None and not (o.distribution_alignment or config.data.rare_class_sampling):
            raise UserError(f"--pseudo-label-root is read by {config.module_name} only for the class shares of "
                            "--rare-class-sampling and --distribution-alignment: add one of them, or drop it")
        if o.distribution_alignment and config.mode == "train" and o.pseudo_label_root is None:
            raise UserError("--distribution-alignment aligns to the class shares of the pseudo-labels: give "
                            "--pseudo-label-root")


@dataclasses.dataclass(frozen=True)
class SMHMOptions(SelfDistillationOptions):
    """``smhm``: the self-distillation options and the hard patches."""
    position_beta: float = 0.25
    hard_patches_root: str = "./experiments/hard_patch_from_gta5_model/"
    hard_patch_weight: float = 0.1
    hard_patch_batch_size: Optional[int] = None

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        group = parser.add_argument_group("hard patches")
        group.add_argument("--hard-patches-root", default=cls.hard_patches_root,
                           help="output folder of construct_hard_patch.py (patches/ and labels/); refused while its "
                                "mining has not finished (no summary.json); a folder made by hand is taken as it "
                                "is (default: %(default)s)")
        group.add_argument("--hard-patch-weight", type=non_negative_float, default=cls.hard_patch_weight,
                           help="weight of the hard patch loss (default: %(default)s)")
        group.add_argument("--hard-patch-batch-size", type=at_least(1), default=None,
                           help="patches per step and device (default: --train-batch-size)")

    @classmethod
    def check(cls, config):
        super().check(config)
        if config.mode == "train" and config.stage.hard_patch_batch_size is not None:
            check_batch_statistics(config, config.stage.hard_patch_batch_size, "--hard-patch-batch-size")


# --module-name -> the dataclass of the stage's own flags (basic has none)
STAGE_OPTIONS = {"source_only": SourceOptions, "baseline": BaselineOptions, "spatial_mix": SelfDistillationOptions,
                 "smhm": SMHMOptions}


def build_parser(module_name=None):
    parser = ArgumentParser(prog="main.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    add_data_args(parser)
    options = STAGE_OPTIONS.get(module_name)
    if options is not None:
        options.add_args(parser)
        parser.set_defaults(lr=getattr(options, "published_lr", parser.get_default("lr")))
    return parser


def parse_args(argv=None):
    """The :class:`RunConfig` of a command line; every mistake is a ``UserError`` before anything runs."""
    argv = list(argv if argv is not None else [])
    # The stage decides which flags exist, so it is read first (from the command line, else --config).
    pre = ArgumentParser(prog="main.py", add_help=False)
    pre.add_argument("--module-name", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    saved = read_config_values(known.config) if known.config else {}
    module_name = known.module_name or saved.get("module_name") or "basic"
    parser = build_parser(module_name)
    typed = argv
    if saved:
        # The file's settings come first, as if typed; what the command line says wins.
        # --resume (and --overwrite) is an instruction to one run, not a setting: a run again starts anew unless told.
        argv = config_argv(parser, saved, known.config, ignore=("config", "resume", "overwrite")) + argv
    args = parser.parse_args(argv)
    from models.networks import network_flags_from_file

    # A weight file the toolkit wrote says its network and input size, over the --config file's; typed flags win.
    network_flags_from_file(args, typed)
    # Checks that need several flags, or what the user typed as opposed to a default: still parsing,
    # so a mistake stops the command before anything is read or written.
    check_data_args(args)
    config = build(RunConfig, args)
    options = STAGE_OPTIONS.get(config.module_name)
    if options is not None:
        config = dataclasses.replace(config, stage=build(options, args))
    if config.mode == "train":
        check_batch_statistics(config, config.data.train_batch_size, "--train-batch-size")
    if hasattr(options, "check"):
        options.check(config)
    check_compile(config.hardware)
    if config.mode == "train" and config.evaluation.scales != (1.0,):
        raise UserError("--scales is for --mode test and --mode predict (validation during training runs at the "
                        "input size alone)")
    return config


# -- the data scripts (generate_pseudo_labels.py, construct_hard_patch.py) ------------------------------------

@dataclasses.dataclass(frozen=True)
class TargetImages:
    """The values of :func:`add_target_args`."""
    target_dataset: str = "cityscapes"
    data_dir: Optional[str] = None  # as typed; None: the target's default (./data/Cityscapes)
    image_root: Optional[str] = None  # as typed; None: <data-dir>/leftImg8bit
    conditions: Optional[tuple] = None  # as typed; None: the target's default
    list_root: Optional[str] = None
    data_list: Optional[str] = None
    split: str = "train"
    resize_backend: str = "pil"


def add_target_args(parser, data_list_help=""):
    """The target images a data stage reads, in the words ``main.py`` uses too: ``--target-dataset``
    and ``--data-dir`` (its root), or ``--image-root`` for the image folder alone; ``--conditions``;
    ``--list-root`` (a folder of ``<split>.txt`` lists) or ``--data-list`` (one list file, as
    published); ``--split``; ``--resize-backend``."""
    group = parser.add_argument_group("target images")
    add_target_dataset_args(group, labels=False)
    group.add_argument("--list-root", default=TargetImages.list_root, metavar="DIR",
                       help="folder with <split>.txt image lists, as for main.py; a folder you name must exist "
                            f"(default: {CITYSCAPES_LIST_ROOT} for cityscapes, which may be absent: the image "
                            "folder is scanned)")
    group.add_argument("--data-list", default=TargetImages.data_list, metavar="FILE",
                       help="or one image list, one <city>/<stem>_leftImg8bit.png per line, named <split>.txt"
                            + data_list_help)
    group.add_argument("--split", default=TargetImages.split, help="split to label (default: %(default)s)")
    add_resize_backend_arg(group)
    return group


scales = float_list(positive_float)  # --scales: positive finite factors, at least one


PROVIDER_OUTPUTS = ("auto", "logits", "probabilities")  # modules/providers.py


@dataclasses.dataclass(frozen=True)
class LabellingConfig:
    """How the provider predicts (:func:`add_labelling_args`, besides the network's flags)."""
    flip: bool = True
    multiscale: bool = False
    scales: tuple = (0.75, 1.0, 1.25)
    provider_output: str = "auto"  # what a provider file's first output holds (modules/providers.py)
    class_balanced_share: Optional[float] = None  # CBST: the share of each class's pixels kept; None: all
    complementary_below: Optional[float] = None  # ATP: a pixel is not the classes below this probability


def add_labelling_args(parser):
    """The network and how it predicts: the pseudo-label computation, shared by both data stages."""
    group = add_network_args(parser, "provider network")
    group.add_argument("--no-flip", dest="flip", action="store_false",
                       help="leave out the horizontal-flip test-time augmentation (published: flip on)")
    group.add_argument("--multiscale", action="store_true",
                       help="average the flip-augmented logits over the input scales of --scales")
    group.add_argument("--scales", type=scales, default=LabellingConfig.scales, metavar="S,S,...",
                       help="input scale factors of --multiscale (default: 0.75,1.0,1.25)")
    group.add_argument("--provider-output", choices=PROVIDER_OUTPUTS, default=LabellingConfig.provider_output,
                       help="what the first output of a provider file (.onnx) holds: logits (class scores "
                            "before a softmax) or probabilities (each pixel's scores sum to 1; the flip "
                            "augmentation then sums log-probabilities, see docs/providers.md); auto: "
                            "probabilities when the file's scores for a grey image are, else logits (default: "
                            "%(default)s)")
    group.add_argument("--class-balanced-share", type=probability, default=LabellingConfig.class_balanced_share, metavar="P",
                       help="class-balanced thresholds (CBST): keep in each class only the P most confident of the "
                            "pixels the provider gives it over the whole split (e.g. 0.8), the others 255 (ignored); "
                            "writes each pixel's confidence as a 16-bit PNG under confidence/ (default: every pixel)")
    group.add_argument("--complementary-below", type=probability, default=LabellingConfig.complementary_below,
                       metavar="P", help="complementary labels (ATP): also write, under complementary/, each pixel's "
                                         "classes of softmax probability below P (e.g. 0.05), which the baseline's "
                                         "--complementary-weight learns the pixel is not (default: none written)")
    return group


PROVIDER_FLAGS = ("--head-branches", "--no-flip", "--multiscale", "--scales", "--provider-output")  # only a run uses


def check_labelling_flags(argv, labels_given=False):
    """Flags that would do nothing are one line each: ``--scales`` without ``--multiscale``; with
    ``labels_given`` (pseudo-labels made earlier, no provider run), every flag of how a provider runs."""
    typed = typed_flags(argv)
    if "--scales" in typed and "--multiscale" not in typed:
        raise UserError("--scales are the scales of --multiscale: add --multiscale, or drop --scales")
    ignored = sorted(typed & set(PROVIDER_FLAGS)) if labels_given else []
    if ignored:
        raise UserError(f"{', '.join(ignored)} tell(s) how the provider runs, and --pseudo-label-root gives labels "
                        "made earlier: drop them (or give --restore-from to label here)")


@dataclasses.dataclass(frozen=True)
class PredictionConfig:
    """The batch and loader values of :func:`add_prediction_args`."""
    batch_size: int = 1
    num_workers: Optional[int] = None  # None: from the cores (utils/loaders.py)


def add_prediction_args(parser):
    """Batch and loader flags of the data stages, and the hardware flags (``utils/lightning.py``)."""
    group = add_hardware_args(parser)
    group.add_argument("--batch-size", type=at_least(1), default=PredictionConfig.batch_size, help="images per prediction step and device (default: %(default)s)")
    return add_num_workers_arg(group)


@dataclasses.dataclass(frozen=True)
class ProviderRun:
    """What both data stages are told: the provider, the target images, how to predict, where to."""
    restore_from: Optional[str]
    save: str
    overwrite: bool
    target: TargetImages
    network: NetworkConfig
    labelling: LabellingConfig
    prediction: PredictionConfig
    hardware: HardwareConfig
