"""Stage 2: the provider's pseudo-labels for the target training images.

    python generate_pseudo_labels.py            # published defaults: ./pretrained/gta5_only.pth on
                                                # ./data/Cityscapes train -> ./experiments/gta5_pseudo_label/
    python generate_pseudo_labels.py --restore-from W --save DIR [--multiscale] [--accelerator gpu --devices 4]
    python generate_pseudo_labels.py --target-dataset acdc --data-dir ./data/ACDC --restore-from W --save DIR

Writes ``label_ids/<split>/…`` (train ids), ``label_color/<split>/…``, ``easy.txt``, ``hard.txt`` and
``summary.json`` under ``--save`` (see ``modules/pseudo_labels.py``). Rerunning the same command after
an interruption finishes the missing images only.
"""
import argparse
import os
import sys

from modules.config import add_labelling_args, add_prediction_args, add_target_args
from utils.cli import ArgumentParser, UserError, run


def build_parser():
    parser = ArgumentParser(prog="generate_pseudo_labels.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(parser)
    parser.add_argument("--restore-from", default="./pretrained/gta5_only.pth",
                        help="the provider: DeepLabv2 weights (a state dict or a Lightning checkpoint), or a "
                             "provider file that is only run, an ONNX model (.onnx), see docs/providers.md "
                             "(default: %(default)s)")
    parser.add_argument("--save", default="./experiments/gta5_pseudo_label/", help="output folder (default: %(default)s)")
    parser.add_argument("--label-root", "--label-dir", dest="label_root", default=None,
                        help="ground truth in train ids, <label-root>/<split>/<city>/<stem>_gtFine_labelIds.png, to "
                             "score the pseudo-labels when it exists (default: <data-dir>/gtFine2; <data-dir>/gt for "
                             "acdc and darkzurich; for folder: <relative path>/<stem>.png mirroring the images)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --save instead of resuming it")
    add_labelling_args(parser)
    add_prediction_args(parser)
    return parser


def report(result, summary, scores, truth_note):
    total, skipped = len(result["names"]), result["skipped"]
    print(f"pseudo-labels: {total} images ({total - skipped} labelled now, {skipped} already done)")
    print(f"easy: {summary['easy']}, hard: {summary['hard']} (median entropy {summary['median_entropy']:.4f})")
    print("pixel share per class (%):")
    for name, share in summary["class_pixel_share"].items():
        print(f"  {name:<14} {100 * share:6.2f}")
    if scores is None:
        print(f"no quality report: {truth_note}")
    else:
        from utils.metrics import format_table
        print(format_table(scores, title=f"pseudo-labels against {truth_note} (at ground-truth resolution)"))


def main(argv=None):
    args = build_parser().parse_args(argv)  # before the heavy imports: --help and flag mistakes stay fast
    from models.networks import network_flags_from_file
    from modules.config import check_labelling_flags
    from modules.pseudo_labels import PseudoLabelRun, generate, layout_of, write_report
    from utils.config import build
    from utils.run_folder import folder_lock

    check_labelling_flags(argv)
    network_flags_from_file(args, argv or [])
    config = build(PseudoLabelRun, args)
    split = config.target.split
    layout = layout_of(config.target, config.label_root)  # the ground truth, to score the pseudo-labels
    if config.label_root:
        absent = next((folder for folder, _ in layout.label_dirs(split) if not os.path.isdir(folder)), None)
        if absent:
            raise UserError(f"--label-root: folder not found: {absent}")
    with folder_lock(config.save, "--save"):  # from reading the resume state to the last report file
        result = generate(config, config.save, truth=layout)
        if result is None:  # a secondary process of a multi-device run: the first one reports
            return 0
        summary, scores, truth_note = write_report(config.save, split, result, config, layout)
    report(result, summary, scores, truth_note)
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
