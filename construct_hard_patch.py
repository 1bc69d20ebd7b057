"""Stage 5: mine hard patches, the grid patches whose pseudo-label contains a rare class.

    python construct_hard_patch.py --pseudo-label-root ./experiments/gta5_pseudo_label/   # strict black-box
    python construct_hard_patch.py --restore-from W                                       # run the model

The labels are the provider's flip-augmented argmax, exactly the pseudo-labels of stage 2: read
from ``--pseudo-label-root`` (the generator's ``--save`` folder, its ``label_ids/<split>`` folder,
or any folder of ``<city>/<stem>_gtFine_labelIds.png``), or computed with the weights of
``--restore-from`` (kept in ``<save>/.pseudo_labels``). Writes ``patches/``, ``labels/``,
``color_labels/`` and ``summary.json`` under ``--save`` (see ``modules/hard_patches.py``). Rerunning
the same command after an interruption finishes the missing images only.
"""
import argparse
import sys

from modules.config import add_labelling_args, add_prediction_args, add_target_args
from utils.cli import ArgumentParser, UserError, at_least, grid_size, run, typed_flags


def build_parser():
    parser = ArgumentParser(prog="construct_hard_patch.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(parser)
    source = parser.add_argument_group("labels (give exactly one)")
    source.add_argument("--pseudo-label-root", default=None, metavar="DIR",
                        help="pseudo-labels made by generate_pseudo_labels.py (refused while that run has not "
                             "finished: no summary.json), or by hand: no weights needed")
    source.add_argument("--restore-from", default=None, metavar="W",
                        help="the provider, to compute the pseudo-labels here: DeepLabv2 weights, or a provider "
                             "file (.onnx) as for generate_pseudo_labels.py")
    mining = parser.add_argument_group("mining")
    mining.add_argument("--save", default="./experiments/hard_patch_from_gta5_model/",
                        help="output folder (default: %(default)s)")
    mining.add_argument("--rare-classes", default="gta5", metavar="gta5|synthia|auto|IDS",
                        help="gta5 (6,7,12,16,17,18), synthia (6,7,12,17,18; the set the published code used for "
                             "both), auto (the --num-rare classes with the smallest pixel share in the labels), or "
                             "comma-separated train ids (default: %(default)s)")
    mining.add_argument("--num-rare", type=at_least(1), default=6, help="number of classes --rare-classes auto picks "
                                                                "(default: %(default)s)")
    mining.add_argument("--grid", type=grid_size, default=(4, 4), metavar="COLSxROWS",
                        help="patches per image (default: 4x4, i.e. 256x128 patches at 1024x512)")
    mining.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --save instead of resuming it")
    add_labelling_args(parser)
    add_prediction_args(parser)
    return parser


def report(summary, skipped, counts, cells_per_image):
    rare = summary["rare_classes"]
    print(f"rare classes ({rare['source']}): " + ", ".join(f"{c} {n}" for c, n in zip(rare["train_ids"], rare["names"])))
    if counts is not None:
        print("pixel share per class in the labels (%), * = chosen:")
        present = [(name, share) for name, share in rare["pixel_share"].items() if name not in rare["absent"]]
        for name, share in sorted(present, key=lambda item: item[1]):
            print(f"  {'*' if name in rare['names'] else ' '} {name:<14} {100 * share:8.4f}")
        if rare["absent"]:
            print("absent from every label (cannot give a patch, not chosen): " + ", ".join(rare["absent"]))
    print(f"images: {summary['images']} ({summary['images'] - skipped} mined now, {skipped} already done), "
          f"{summary['images_with_patches']} with hard patches")
    print(f"patches kept: {summary['patches']} of {summary['images'] * cells_per_image}")
    print("patches containing each rare class:")
    for name, count in summary["patches_per_rare_class"].items():
        print(f"  {name:<14} {count:7d}")


def main(argv=None):
    args = build_parser().parse_args(argv)  # before the heavy imports: --help and flag mistakes stay fast
    from models.networks import network_flags_from_file
    from modules.config import check_labelling_flags
    from modules.hard_patches import MiningRun, construct
    from utils.config import build

    check_labelling_flags(argv, labels_given=args.pseudo_label_root is not None)
    if "--num-rare" in typed_flags(argv) and args.rare_classes != "auto":
        raise UserError(f"--num-rare is how many classes --rare-classes auto picks: drop it, or give --rare-classes "
                        f"auto (not {args.rare_classes})")
    network_flags_from_file(args, argv or [])
    result = construct(build(MiningRun, args))
    if result is None:  # a secondary process of a multi-device run: the first one mines and reports
        return 0
    summary = result["summary"]
    report(summary, result["skipped"], result["counts"], result["cells_per_image"])
    if summary["patches"] == 0:
        raise UserError(f"no patch holds a rare class ({', '.join(summary['rare_classes']['names'])}): smhm would have "
                        "no hard patches to learn from; choose other --rare-classes (auto takes the rarest present)")
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
