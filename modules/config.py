"""The configuration of a ``main.py`` run: its flags and the typed sections that hold their values.

Flags are declared by the part that reads them (the network in ``models/deeplabv2.py``, hardware in
``utils/lightning.py``, data in ``modules/data.py``, each stage's own in its module); the run-level
ones are declared here. :func:`parse_args` builds one frozen :class:`RunConfig` from the command
line (optionally on top of a saved ``--config`` file) and nothing changes it afterwards; the stage
module, the data module and the runner take the sections they need.
"""
import argparse
import dataclasses
import math
import os
from typing import Any, Optional

from models.deeplabv2 import NetworkConfig
from modules.data import DataConfig
from utils.cli import ArgumentParser, UserError, at_least, float_list, learning_rate, name_text, positive_float, seed
from utils.compile import COMPILE_MODES, compile_level
from utils.config import build, config_argv, read_config_values
from utils.label_free import CRITERIA, DEFAULT_CRITERION
from utils.lightning import HardwareConfig

DESCRIPTION = """Train or evaluate one stage of black-box domain adaptation (SpatialMix + hard patches).

stages (--module-name):
  basic        supervised training on the target ground truth (oracle); the plain evaluator in test mode
  source_only  the provider: supervised training on a labelled source domain (GTA5 / SYNTHIA layout)
  baseline     cross-domain distillation on the provider's pseudo-labels
  spatial_mix  self-distillation with SpatialMix (no hard patches)
  smhm         self-distillation with SpatialMix and hard patch mining

Add --module-name NAME to --help to see the flags of that stage."""
CONFIG_FILE = "config.json"  # the resolved configuration, in every experiment folder


@dataclasses.dataclass(frozen=True)
class TrainingNetwork(NetworkConfig):
    freeze_bn_stats: bool = False


@dataclasses.dataclass(frozen=True)
class TrainingHardware(HardwareConfig):
    sync_batchnorm: Optional[bool] = None  # None: on for training on GPUs
    channels_last: str = "auto"
    compile: str = "off"  # off, network or step (utils/compile.py)
    compile_mode: str = "default"


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
    from modules import MODULES

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
                             "init (head left fresh); in test mode, the weights to evaluate")
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
                        help="with --rounds: score the starting weights first, keep a round only if its best "
                             "--select-by score is above the one before, and stop at the first that is not; "
                             "--no-round-guard runs every round, as published (default: on)")
    parser.add_argument("--resume", default=None, metavar="PATH|last",
                        help="continue training from a Lightning checkpoint, or 'last' for the experiment's last.ckpt")

    from models.deeplabv2 import add_network_args

    net = add_network_args(parser)
    net.add_argument("--freeze-bn-stats", action="store_true",
                     help="keep BatchNorm running statistics fixed during training (published: they update)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--lr", type=learning_rate, default=1e-4,
                     help="learning rate (default: %(default)s; as published, 1e-4 for the baseline and 1e-5 for "
                          "spatial_mix and smhm)")
    opt.add_argument("--optimizer", choices=("adam", "sgd", "adamw"), default="adam",
                     help="adam as published; sgd (momentum 0.9, weight decay 5e-4, head at 10x lr); or adamw, the "
                          "transformer recipe of SegFormer / DAFormer for the students (with --lr 6e-5: weight decay "
                          "0.01, none on norm layers, decoder and head at 10x lr) (default: %(default)s)")
    opt.add_argument("--lr-schedule", choices=("auto", "cosine", "constant", "poly", "warmup_poly"), default="auto",
                     help="cosine: the published per-epoch cosine, lr(epoch e) = lr * (1 + cos(pi * e / 10)) / 2, "
                          "periodic (0 at epoch 10, back to lr at epoch 20, ...); constant; poly (power 0.9 to "
                          "--max-steps); or warmup_poly: linear warm-up over --warmup-steps from 1e-6 of lr, then "
                          "poly with power 1 to 0; auto = cosine for adam, poly for sgd, as published, warmup_poly "
                          "for adamw (default: %(default)s)")
    opt.add_argument("--warmup-steps", type=at_least(0), default=1500,
                     help="steps of the linear warm-up of --lr-schedule warmup_poly (default: %(default)s)")
    opt.add_argument("--max-steps", type=at_least(1), default=20000,
                     help="training ends after this many optimiser steps (default: %(default)s)")
    opt.add_argument("--max-epochs", type=at_least(1), default=None, help="or after this many epochs, whichever comes first")
    opt.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2**32-1 (default: %(default)s)")

    ev = parser.add_argument_group("evaluation and logging")
    ev.add_argument("--val-interval", type=interval, default=1.0,
                    help="validate every fraction of an epoch (1.0 = each epoch) or every N steps (an integer) "
                         "(default: %(default)s)")
    ev.add_argument("--select-by", choices=(*CRITERIA, "last", "val-miou"), default=DEFAULT_CRITERION,
                    help="how a stage keeps its best checkpoint: a label-free score of the val split's images "
                         "(utils/label_free.py: agreement under a flip or a mix, confident and diverse predictions, "
                         "and their means), needing no target labels; last, the last checkpoint; or val-miou, the "
                         "published protocol, which selects with the labels of the split it reports on "
                         "(default: %(default)s)")
    ev.add_argument("--flip-when-test", action="store_true", help="add horizontal-flip test-time augmentation")
    ev.add_argument("--save-predictions", default=None, metavar="DIR",
                    help="test mode: write predicted train-id PNGs (train_ids/) and colour PNGs (color/) at "
                         "ground-truth resolution, mirroring the images' paths inside the split (<city>/<stem> "
                         "for Cityscapes); predict mode: train_ids/, color/ and pictures/ at each image's own "
                         "resolution, resumed by rerunning the same command")
    ev.add_argument("--scales", type=float_list(positive_float), default=(1.0,), metavar="S,S,...",
                    help="test and predict mode: average the logits over these input scale factors, e.g. "
                         "0.75,1.0,1.25 (each scale's logits resized back to the input size, flip-augmented with "
                         "--flip-when-test), as the data stages' --multiscale; training validates at the one "
                         "scale 1.0 (default: 1.0)")
    ev.add_argument("--overwrite", action="store_true",
                    help="predict mode: replace the predictions in --save-predictions made with other settings or "
                         "weights (a rerun with the same ones resumes)")
    ev.add_argument("--log-interval", type=at_least(1), default=50, help="log scalars every N steps (default: %(default)s)")
    ev.add_argument("--visualize-interval", type=at_least(0), default=500,
                    help="log an input | target | prediction picture every N steps; 0 = never (default: %(default)s)")

    from utils.lightning import add_hardware_args

    hw = add_hardware_args(parser)
    hw.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                    help="BatchNorm statistics of the student and the teacher computed over all devices, as "
                         "published (batch sizes are per device); default: on when training on GPUs, where "
                         "it matters for several devices and changes nothing on one; --no-sync-batchnorm: "
                         "each device normalises with its own batch")
    hw.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                    help="channels-last memory format for the networks; auto = on for CUDA (default: %(default)s)")
    hw.add_argument("--compile", type=compile_level, nargs="?", const="network", default="off", metavar="LEVEL",
                    help="torch.compile for training (utils/compile.py): network compiles the student and the EMA "
                         "teacher (--compile alone means network); step also the tensor work of a training step "
                         "(SpatialMix, flip, augmentation, losses, EMA update); the first steps compile (minutes "
                         "for DeepLabv2-R101; the compile time is printed apart from the step time), and compiled "
                         "code is cached in <log-tb-dir>/inductor_cache for later runs. Off by default: the same "
                         "results as eager within float rounding on CPU, not yet measured on a GPU (default: "
                         "%(default)s)")
    hw.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                    help="torch.compile's mode with --compile: reduce-overhead captures CUDA graphs where shapes "
                         "are static; max-autotune also tunes kernels (longer to compile) (default: %(default)s)")


def check_compile(hardware):
    """``--compile-mode`` without ``--compile``, or CUDA graphs on a CPU: one line each."""
    if hardware.compile == "off" and hardware.compile_mode != "default":
        raise UserError(f"--compile-mode {hardware.compile_mode} needs --compile network or --compile step")
    if hardware.compile_mode == "reduce-overhead" and hardware.accelerator == "cpu":
        raise UserError("--compile-mode reduce-overhead captures CUDA graphs, which need a GPU (--accelerator "
                        "cpu); use --compile-mode default on CPU")


def build_parser(module_name=None):
    from modules import MODULES
    from modules.data import add_data_args

    parser = ArgumentParser(prog="main.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    add_data_args(parser)
    if module_name in MODULES:
        MODULES[module_name].add_args(parser)
        parser.set_defaults(lr=MODULES[module_name].default_lr)
    return parser


def parse_args(argv=None):
    """The :class:`RunConfig` of a command line; every mistake is a ``UserError`` before anything runs."""
    from modules import MODULES
    from modules.data import resolve_data_args

    argv = list(argv if argv is not None else [])
    # The stage decides which flags exist, so it is read first (from the command line, else --config).
    pre = ArgumentParser(prog="main.py", add_help=False)
    pre.add_argument("--module-name", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    saved = read_config_values(known.config) if known.config else {}
    module_name = known.module_name or saved.get("module_name") or "basic"
    parser = build_parser(module_name)
    if saved:
        # The file's settings come first, as if typed; what the command line says wins.
        # --resume (and --overwrite) is an instruction to one run, not a setting: a run again starts anew unless told.
        argv = config_argv(parser, saved, known.config, ignore=("config", "resume", "overwrite")) + argv
    args = parser.parse_args(argv)
    from models.networks import network_flags_from_file

    network_flags_from_file(args, argv)  # a weight file the toolkit wrote says its network and input size
    # Checks that need several flags, or what the user typed as opposed to a default: still parsing,
    # so a mistake stops the command before anything is read or written.
    resolve_data_args(args)
    stage_class = MODULES[args.module_name]
    config = build(RunConfig, args)
    if stage_class.Options is not None:
        config = dataclasses.replace(config, stage=build(stage_class.Options, args))
    stage_class.check_config(config)
    check_compile(config.hardware)
    if config.mode == "train" and config.evaluation.scales != (1.0,):
        raise UserError("--scales is for --mode test and --mode predict (validation during training runs at the "
                        "input size alone)")
    return config
