"""Stage 1, label preparation: convert label-id images to the 19 Cityscapes train ids.

    python utils/transfer_trainid.py --dataset cityscapes \\
        --ori-label-root ./data/Cityscapes/gtFine --dst-label-root ./data/Cityscapes/gtFine2

Cityscapes: every ``*_gtFine_labelIds.png`` under the root (all splits) is converted through the
official label table (``cityscapesscripts``) into a mirror tree with the same file names; the
other gtFine files are not copied. ``--dataset gta5`` converts every ``*.png`` of a GTA5 labels
folder (same label ids) and ``--dataset synthia`` the 16-bit SYNTHIA ``GT/LABELS`` files. Ignored
classes become 255. Finished files are skipped on a rerun unless ``--overwrite``. A file holding a
value that is no label id of the dataset (``utils.labels.MAX_LABEL_ID``; 255 in a file of train ids
already) is refused with one line naming it; the first file to convert is checked before anything
is written.

The conversion itself is ``utils.labels.label_ids_to_train_ids``, which the source datasets
(``datasets/source.py``) also use to convert on the fly; this file is only its command line.
"""
import argparse
import fnmatch
import os
import sys
from multiprocessing import Pool

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from utils.cli import ArgumentParser, UserError, at_least, progress, run  # noqa: E402
from utils.io import read_label, write_png  # noqa: E402
from utils.labels import NUM_CLASSES, label_ids_to_train_ids, read_synthia_label_ids  # noqa: E402

PATTERNS = {"cityscapes": "*_gtFine_labelIds.png", "gta5": "*.png", "synthia": "*.png"}
def parse_args(argv=None):
    parser = ArgumentParser(prog="utils/transfer_trainid.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(PATTERNS), default="cityscapes",
                        help="whose label ids the files hold (default: %(default)s)")
    parser.add_argument("--ori-label-root", default="./data/Cityscapes/gtFine",
                        help="folder of label-id images, searched recursively (default: %(default)s)")
    parser.add_argument("--dst-label-root", default="./data/Cityscapes/gtFine2",
                        help="where the train-id mirror tree goes (default: %(default)s)")
    parser.add_argument("--workers", type=at_least(1), default=min(8, os.cpu_count() or 1),
                        help="parallel processes (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="convert files that already exist in the destination")
    return parser.parse_args(argv)


def find_label_files(root, dataset, exclude=None):
    """Sorted paths relative to ``root`` of the dataset's label-id files, skipping ``exclude``."""
    def unreadable(err):
        raise UserError(f"--ori-label-root: cannot read {err.filename} ({err.strerror})")

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        if exclude is not None:
            dirnames[:] = [d for d in dirnames if os.path.abspath(os.path.join(dirpath, d)) != exclude]
        found += [os.path.relpath(os.path.join(dirpath, f), root)
                  for f in fnmatch.filter(filenames, PATTERNS[dataset])]
    return sorted(found)


def convert_file(src, dst, dataset):
    """Read one label-id file and atomically write its train ids as a ``uint8`` PNG."""
    write_png(dst, label_ids_to_train_ids(read_label_ids(src, dataset), dataset, src))


def read_label_ids(path, dataset):
    return read_synthia_label_ids(path) if dataset == "synthia" else read_label(path)


def check_not_train_ids(paths, dataset, samples=8):
    """Refuse files that hold train ids already, before anything is written. One with a value that is
    no label id (255 = ignored) is refused by the conversion itself; train ids without ignored pixels
    are told by their range: a street scene in Cityscapes or GTA5 label ids has values above 18 (pole
    17 is the last below; sky, vegetation, cars, people lie above), so when none of up to ``samples``
    files spread over the folder has one, it holds the 19 train ids. SYNTHIA's ids overlap both."""
    picked = [paths[round(i * (len(paths) - 1) / max(1, samples - 1))] for i in range(min(samples, len(paths)))]
    largest = []
    for path in dict.fromkeys(picked):
        label_ids = read_label_ids(path, dataset)
        label_ids_to_train_ids(label_ids, dataset, path)
        largest.append(int(label_ids.max()) if label_ids.size else 0)
    if dataset in ("cityscapes", "gta5") and max(largest) < NUM_CLASSES:
        raise UserError(f"{picked[0]} and the other {len(largest) - 1} files checked hold only values 0..{max(largest)}, "
                        f"within the {NUM_CLASSES} train ids and without the label ids of sky, vegetation, cars or "
                        "people: are they converted already?")


def _convert_job(job):
    src, dst, dataset, overwrite = job
    if not overwrite and os.path.isfile(dst):
        return False
    convert_file(src, dst, dataset)
    return True


def main(argv=None):
    args = parse_args(argv)
    src_root, dst_root = args.ori_label_root, args.dst_label_root
    if not dst_root.strip():
        raise UserError("--dst-label-root is empty: give a folder")
    if not os.path.isdir(src_root):
        raise UserError(f"--ori-label-root: folder not found: {src_root}")
    if os.path.abspath(src_root) == os.path.abspath(dst_root):
        raise UserError(f"--dst-label-root must differ from --ori-label-root (both {src_root}): "
                        f"the label ids would be overwritten")
    files = find_label_files(src_root, args.dataset, exclude=os.path.abspath(dst_root))
    if not files:
        raise UserError(f"--ori-label-root: no label files matching {PATTERNS[args.dataset]} under {src_root}")

    jobs = [(os.path.join(src_root, rel), os.path.join(dst_root, rel), args.dataset, args.overwrite)
            for rel in files]
    pending = [src for src, dst, _, _ in jobs if args.overwrite or not os.path.isfile(dst)]
    if pending:  # a folder of another kind (train ids already) is refused before anything is written
        check_not_train_ids(pending, args.dataset)
    settings = dict(total=len(jobs), unit="file", desc=f"{args.dataset} label ids -> train ids")
    if args.workers == 1 or len(jobs) == 1:
        done = [_convert_job(job) for job in progress(jobs, **settings)]
    else:
        with Pool(min(args.workers, len(jobs))) as pool:
            done = list(progress(pool.imap_unordered(_convert_job, jobs, chunksize=16), **settings))
    converted = sum(done)
    skipped = len(done) - converted
    note = " (already there; --overwrite redoes them)" if skipped else ""
    print(f"converted {converted}, skipped {skipped}{note}, total {len(done)} -> {dst_root}")
    return 0


if __name__ == "__main__":
    run(main)
