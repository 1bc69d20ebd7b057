"""Train or evaluate one stage of the method.

    python main.py --module-name baseline --mode train --restore-from ./pretrained/gta5_only.pth ...
    python main.py --module-name smhm --mode train --restore-from ./pretrained/basic.pth ...
    python main.py --mode test --restore-from W [--flip-when-test] [--save-predictions DIR]

``python main.py --module-name NAME --help`` lists the flags of stage NAME.
"""
import argparse
import math
import sys

from utils.cli import ArgumentParser, at_least, positive_float, run, seed

STAGES = ("basic", "source_only", "baseline", "spatial_mix", "smhm")
DESCRIPTION = """Train or evaluate one stage of black-box domain adaptation (SpatialMix + hard patches).

stages (--module-name):
  basic        supervised training on the target ground truth (oracle); the plain evaluator in test mode
  source_only  the provider: supervised training on a labelled source domain (GTA5 / SYNTHIA layout)
  baseline     cross-domain distillation on the provider's pseudo-labels
  spatial_mix  self-distillation with SpatialMix (no hard patches)
  smhm         self-distillation with SpatialMix and hard patch mining

Add --module-name NAME to --help to see the flags of that stage."""


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


def add_common_args(parser):
    parser.add_argument("--module-name", choices=STAGES, default="basic", help="the stage to run (default: %(default)s)")
    parser.add_argument("--mode", choices=("train", "test"), default="train",
                        help="train the stage, or evaluate --restore-from on the val split (default: %(default)s)")
    parser.add_argument("--restore-from", default=None,
                        help="initial weights: a state dict, a Lightning checkpoint, or the ImageNet DeepLab "
                             "init (head left fresh); in test mode, the weights to evaluate")
    parser.add_argument("--experiment-name", default="none",
                        help="outputs go to <log-tb-dir>/<module-name>/<experiment-name> (default: %(default)s)")
    parser.add_argument("--log-tb-dir", default="./experiments", help="root of all experiment folders (default: %(default)s)")
    parser.add_argument("--rounds", type=at_least(1), default=None,
                        help="self-distillation rounds: round k+1 restarts from the best student of round k; "
                             "outputs in <experiment-name>_round_<k> (with the best student extracted to "
                             "student.pth) and a <experiment-name>_rounds.csv table, also for --rounds 1 "
                             "(default: a single run in <experiment-name>, as published)")
    parser.add_argument("--resume", default=None, metavar="PATH|last",
                        help="continue training from a Lightning checkpoint, or 'last' for the experiment's last.ckpt")

    from models.deeplabv2 import add_network_args

    net = add_network_args(parser)
    net.add_argument("--freeze-bn-stats", action="store_true",
                     help="keep BatchNorm running statistics fixed during training (published: they update)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--lr", type=positive_float, default=1e-4,
                     help="learning rate (default: %(default)s; as published, 1e-4 for the baseline and 1e-5 for "
                          "spatial_mix and smhm)")
    opt.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                     help="adam as published, or sgd (momentum 0.9, weight decay 5e-4, head at 10x lr) (default: %(default)s)")
    opt.add_argument("--lr-schedule", choices=("auto", "cosine", "constant", "poly"), default="auto",
                     help="cosine: the published per-epoch cosine, lr(epoch e) = lr * (1 + cos(pi * e / 10)) / 2, "
                          "periodic (0 at epoch 10, back to lr at epoch 20, ...); constant; or poly (power 0.9 to "
                          "--max-steps); auto = cosine for adam, poly for sgd, as published (default: %(default)s)")
    opt.add_argument("--max-steps", type=at_least(1), default=20000,
                     help="training ends after this many optimiser steps (default: %(default)s)")
    opt.add_argument("--max-epochs", type=at_least(1), default=None, help="or after this many epochs, whichever comes first")
    opt.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2**32-1 (default: %(default)s)")

    ev = parser.add_argument_group("evaluation and logging")
    ev.add_argument("--val-interval", type=interval, default=1.0,
                    help="validate every fraction of an epoch (1.0 = each epoch) or every N steps (an integer) "
                         "(default: %(default)s)")
    ev.add_argument("--flip-when-test", action="store_true", help="add horizontal-flip test-time augmentation")
    ev.add_argument("--save-predictions", default=None, metavar="DIR",
                    help="test mode: write predicted train-id PNGs (train_ids/) and colour PNGs (color/) at "
                         "ground-truth resolution, mirroring <city>/<stem>")
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
    hw.add_argument("--compile", action="store_true", help="torch.compile the networks (slower start, faster steps)")


def build_parser(module_name=None):
    from modules import MODULES
    from modules.data import add_data_args

    parser = ArgumentParser(prog="main.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    add_data_args(parser)
    if module_name in MODULES:
        MODULES[module_name].add_args(parser)
        parser.set_defaults(lr=MODULES[module_name].default_lr)
    return parser


def parse_args(argv=None):
    # The stage decides which flags exist, so it is read first.
    pre = ArgumentParser(prog="main.py", add_help=False)
    pre.add_argument("--module-name", default="basic")
    known, _ = pre.parse_known_args(argv)
    args = build_parser(known.module_name).parse_args(argv)
    # Checks that need several flags, or what the user typed as opposed to a default: still parsing,
    # so a mistake stops the command before anything is read or written.
    from modules import MODULES
    from modules.data import resolve_data_args

    resolve_data_args(args)
    MODULES[args.module_name].check_args(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    import pytorch_lightning as pl

    from modules import runner

    pl.seed_everything(args.seed, workers=True, verbose=False)
    if args.mode == "test":
        runner.test(args)
    elif args.rounds is not None:
        from modules.rounds import train_rounds

        train_rounds(args, args.rounds)
    else:
        result = runner.train(args)
        print(f"best checkpoint: {result['best_checkpoint']} (val mIoU {result['best_miou']})")
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
