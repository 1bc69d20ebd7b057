"""The easy/hard split for label maps made elsewhere (a segmentation service's output), from the
per-image confidence maps the service returned with them: ``easy.txt`` / ``hard.txt`` as
``generate_pseudo_labels.py`` writes them, ranked by the mean per-pixel uncertainty (1 - confidence)
over the labelled pixels instead of the entropy of the provider's logits.

    python -m tools.rank_label_maps --pseudo-label-root ./service_labels/ --confidence-root ./service_confidence/

The confidence map of ``<labels>/<city>/<stem>_gtFine_labelIds.png`` is
``<confidence-root>/<city>/<stem>_gtFine_labelIds.png`` (or ``.tif`` / ``.tiff``): the same relative
path, in a folder of its own. One grey channel at the label's size, 8-bit (0..255 meaning 0..1) or
16-bit (0..65535), or float32 in 0..1 in a TIFF. Label 255 (ignore) is left out of the mean.

The lists are written beside the labels, where ``generate_pseudo_labels.py`` would put them (or into
``--save``), and nothing else: the folder stays one that baseline and hard patch mining read as it is.
The values are 1 - confidence, not entropies: the order means what the toolkit's ranking means, the
numbers cannot be compared with it. Every input is checked first; a mistake is one line and nothing
is written. See ``modules/label_maps.py``.
"""
import argparse
import sys

from utils.cli import ArgumentParser, at_least, run


def build_parser():
    from datasets.targets import TARGETS
    from utils.loaders import MAX_WORKERS, default_num_workers

    parser = ArgumentParser(prog="python -m tools.rank_label_maps", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pseudo-label-root", required=True, metavar="DIR",
                        help="the label maps, as given to main.py and construct_hard_patch.py: <DIR>/<city>/<stem>"
                             "_gtFine_labelIds.png, or <DIR>/label_ids/<split>/..., or <DIR>/<split>/...")
    parser.add_argument("--confidence-root", required=True, metavar="CDIR",
                        help="the confidence maps: each label's relative path (below the folder holding the labels) "
                             "under CDIR, as .png, .tif or .tiff; a folder apart from the labels")
    parser.add_argument("--save", default=None, metavar="DIR",
                        help="where to write easy.txt and hard.txt (default: beside the labels, where "
                             "generate_pseudo_labels.py puts them: DIR, or the folder above label_ids/<split>)")
    parser.add_argument("--target-dataset", choices=tuple(TARGETS), default="cityscapes",
                        help="how the labels are named: <city>/<stem>_gtFine_labelIds.png for cityscapes, "
                             "<name>.png for the others, as their pseudo-labels are (default: %(default)s)")
    parser.add_argument("--split", default="train",
                        help="the split the labels belong to (looked for in DIR/label_ids/<split> and DIR/<split> "
                             "before DIR itself); another than train writes easy_<split>.txt and hard_<split>.txt "
                             "(default: %(default)s)")
    parser.add_argument("--num-workers", type=at_least(0), default=None, metavar="N",
                        help="processes reading the maps; 0 reads them in this one (default: the CPU cores this "
                             f"process may use, at most {MAX_WORKERS}: {default_num_workers()} here)")
    return parser


def main(argv=None):
    from modules.label_maps import LabelMapRanking, rank
    from utils.config import build

    result = rank(build(LabelMapRanking, build_parser().parse_args(argv)))
    easy, hard = result["easy"], result["hard"]
    print(f"ranked {len(easy) + len(hard)} label maps in {result['folder']} by mean uncertainty (1 - confidence)")
    if result["skipped"]:
        print(f"left out {result['skipped']} PNG files not named as labels of this --target-dataset")
    print(f"easy: {len(easy)}, hard: {len(hard)} (median uncertainty {hard[0][1]})")
    print("wrote " + " and ".join(result["files"]))
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
