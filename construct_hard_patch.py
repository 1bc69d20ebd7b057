"""Stage 5: mine hard patches, the grid patches whose pseudo-label contains a rare class.

    python construct_hard_patch.py --pseudo-label-root ./experiments/gta5_pseudo_label/   # strict black-box
    python construct_hard_patch.py --restore-from W                                       # run the model

The labels are the provider's flip-augmented argmax, exactly the pseudo-labels of stage 2: read
from ``--pseudo-label-root`` (the generator's ``--save`` folder, its ``label_ids/<split>`` folder,
or any folder of ``<city>/<stem>_gtFine_labelIds.png``), or computed with the weights of
``--restore-from`` (kept in ``<save>/.pseudo_labels``). Writes ``patches/``, ``labels/``,
``color_labels/`` and ``summary.json`` under ``--save`` (see ``utils/hard_patches.py``). Rerunning
the same command after an interruption finishes the missing images only.
"""
import argparse
import os
import sys

from utils.cli import UserError, grid_size, run


def build_parser():
    from utils.prediction import add_hardware_args
    from utils.pseudo_labels import add_labelling_args, add_target_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(parser)
    source = parser.add_argument_group("labels (give exactly one)")
    source.add_argument("--pseudo-label-root", default=None, metavar="DIR",
                        help="pseudo-labels made by generate_pseudo_labels.py: no weights needed")
    source.add_argument("--restore-from", default=None, metavar="W",
                        help="the provider's weights, to compute the pseudo-labels here")
    mining = parser.add_argument_group("mining")
    mining.add_argument("--save", default="./experiments/hard_patch_from_gta5_model/",
                        help="output folder (default: %(default)s)")
    mining.add_argument("--rare-classes", default="gta5", metavar="gta5|synthia|auto|IDS",
                        help="gta5 (6,7,12,16,17,18), synthia (6,7,12,17,18; the set the published code used for "
                             "both), auto (the --num-rare classes with the smallest pixel share in the labels), or "
                             "comma-separated train ids (default: %(default)s)")
    mining.add_argument("--num-rare", type=int, default=6, help="number of classes --rare-classes auto picks "
                                                                "(default: %(default)s)")
    mining.add_argument("--grid", type=grid_size, default=(4, 4), metavar="COLSxROWS",
                        help="patches per image (default: 4x4, i.e. 256x128 patches at 1024x512)")
    mining.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --save instead of resuming it")
    add_labelling_args(parser)
    add_hardware_args(parser)
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
    args = build_parser().parse_args(argv)
    from datasets.cityscapes import resolve_pseudo_label_root
    from utils import hard_patches as hp
    from utils.prediction import claim_folder
    from utils.pseudo_labels import LABEL_SUFFIX, check_labelling_args, generate, target_dataset

    if (args.pseudo_label_root is None) == (args.restore_from is None):
        raise UserError("give exactly one of --pseudo-label-root (pseudo-labels already made) and --restore-from "
                        "(weights to compute them)")
    check_labelling_args(args)
    rare = hp.check_rare_classes(args.rare_classes, args.num_classes)
    if args.rare_classes == "auto" and not 1 <= args.num_rare <= args.num_classes:
        raise UserError(f"--num-rare must be between 1 and {args.num_classes}, got {args.num_rare}")
    boxes = hp.grid_boxes(args.input_size, args.grid)

    if args.restore_from is not None:
        label_source = {"model": os.path.abspath(args.restore_from)}
        generated = generate(args, os.path.join(args.save, ".pseudo_labels"), write_color=False)
        if generated is None:  # a secondary process of a multi-device run: the first one mines
            return 0
        print(f"pseudo-labels from the model: {len(generated['names'])} images "
              f"({generated['skipped']} already done)")
        pseudo_root = os.path.join(args.save, ".pseudo_labels")
    else:
        pseudo_root = args.pseudo_label_root
        if not os.path.isdir(pseudo_root):
            raise UserError(f"--pseudo-label-root: folder not found: {pseudo_root}")
        label_source = {"pseudo_label_root": os.path.abspath(pseudo_root)}
    label_dir = resolve_pseudo_label_root(pseudo_root, args.split)
    dataset = target_dataset(args, pseudo_label_root=label_dir)
    names = dataset.names

    counts, absent, rare_source = None, (), args.rare_classes
    if rare is None:
        paths = [os.path.join(label_dir, name + LABEL_SUFFIX) for name in names]
        counts = hp.class_pixel_counts(paths, args.input_size, args.num_classes, args.num_workers)
        rare, absent = hp.choose_rare_classes(counts, args.num_rare)
        rare_source = f"auto: the {args.num_rare} classes with the smallest pixel share"
        if not rare:
            raise UserError(f"--rare-classes auto: the labels in {label_dir} contain no class at all")

    settings = {"labels": label_source, "split": args.split, "input_size": list(args.input_size),
                "grid": list(args.grid), "rare_classes": list(rare)}
    claim_folder(os.path.join(args.save, ".state"), settings, args.overwrite,
                 outputs=[os.path.join(args.save, f) for f in (*hp.OUTPUT_FOLDERS, "summary.json")])
    records, skipped = hp.mine(dataset, names, args.save, boxes, rare, args.num_workers)
    summary = hp.summarize(records, rare, rare_source, args.num_classes, args.grid, args.input_size,
                           label_source, counts, absent)
    hp.write_summary(args.save, summary)
    report(summary, skipped, counts, len(boxes))
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
