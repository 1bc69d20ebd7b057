"""Adapt a segmentation model you can only run to your own images: no source data, no weights of the
black box, no target labels. One command runs the whole method and says whether it helped.

    python adapt.py --black-box model.onnx --images DIR --out DIR [--labels DIR] [--student ARCH] [--init FILE]

The black box is an ONNX file (the provider contract, docs/providers.md), a DeepLabv2 weight file
(``--black-box-arch``) or a folder of its label maps (``<name>.png`` train ids mirroring the
images). Each stage is one of the toolkit's entry points, printed as it runs, so a researcher can
take the pipeline apart; rerunning the same command continues where it stopped:

1. pseudo-labels: the black box labels the images (``generate_pseudo_labels.py``);
2. baseline: a student distilled from them (``main.py --module-name baseline``), from ``--init``
   (e.g. ImageNet weights) or from scratch;
3. hard patches with ``--rare-classes auto`` (``construct_hard_patch.py``);
4. self-distillation rounds (``main.py --module-name smhm --rounds N``); every stage keeps its
   checkpoint by a label-free score (``utils/label_free.py``), and a round that does not raise it
   is not kept;
5. the adapted student: ``OUT/student.pth`` and ``OUT/adapted.onnx`` (images of any size in,
   resized inside to ``--input-size`` as the stages resize, normalisation inside; logits at the
   image's own size out; ``tools/export_provider.py --resize-input --full-resolution``);
6. the report: ``OUT/report.json``, ``OUT/report.md`` and ``OUT/report.png`` — the black box and
   the adapted model side by side on the same images: their label-free scores, and with
   ``--labels`` their mIoU on the labelled images with a bootstrap 95 % interval of the difference.
   When that interval lies below 0, the report says so plainly.

The black box must label the 19 Cityscapes classes (another label set: the stages by hand, with
``--num-classes``).

``--labels`` (train-id PNGs for some or all of the images, mirroring their relative paths) are used
for reporting; no stage selects with them unless ``--select-by val-miou`` asks it.
"""
import argparse
import json
import os
import sys
import time

from utils.cli import (ArgumentParser, UserError, announce, at_least, input_size, learning_rate, positive_float,
                       probability, progress, run, seed)
from utils.io import atomic_write_bytes, atomic_write_text
from utils.criteria import CRITERIA, DEFAULT_CRITERION

STUDENT_DEFAULT = "deeplabv2_r101"  # the published target network


UNREAD_IMAGES = (".webp", ".tif", ".tiff", ".bmp", ".gif")  # images people have that the readers leave out
NINETEEN = ("adapt.py adapts black boxes of the 19 Cityscapes train-id classes (for another label set run the "
            "stages of main.py with --num-classes)")


def build_parser():
    from modules.config import (ACCELERATORS, LR_SCHEDULES, DataConfig, HardwareConfig, NetworkConfig, OptimConfig,
                                add_target_dataset_args)
    from models.archs import ARCH_NAMES

    parser = ArgumentParser(prog="adapt.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_argument_group("what you have")
    inputs.add_argument("--black-box", required=True, metavar="FILE|DIR",
                        help="the model you can only run: an ONNX file, a DeepLabv2 weight file (with "
                             "--black-box-arch), or a folder of its label maps (train-id PNGs <name>.png mirroring "
                             "the images)")
    inputs.add_argument("--black-box-arch", choices=ARCH_NAMES, default=None, metavar="ARCH",
                        help="the network of a weight-file black box (default: what the file says, else "
                             "deeplabv2_r101)")
    inputs.add_argument("--images", default=None, metavar="DIR",
                        help="your images: any tree of .png/.jpg files (the folder target; train/ and val/ "
                             "sub-folders are used as splits when present)")
    inputs.add_argument("--labels", default=None, metavar="DIR",
                        help="optional train-id labels of some or all of the images, <relative path>/<stem>.png: "
                             "for the report (and to keep checkpoints with --select-by val-miou)")
    add_target_dataset_args(inputs)  # another layout than a folder (--target-dataset cityscapes ...)
    inputs.add_argument("--val-split", default="val",
                        help="the split whose images score the checkpoints without labels (a folder target "
                             "without a val/ sub-folder: all images) (default: %(default)s)")
    inputs.add_argument("--report-split", default=None,
                        help="the split the report compares black box and adapted model on (default: --val-split)")
    out = parser.add_argument_group("what you get")
    out.add_argument("--out", required=True, metavar="DIR",
                     help="every output: report.json/.md/.png, student.pth, adapted.onnx, and the stages' folders")
    out.add_argument("--student", choices=ARCH_NAMES, default=STUDENT_DEFAULT, metavar="ARCH",
                     help=f"the network to adapt into: {', '.join(ARCH_NAMES)} (default: %(default)s)")
    out.add_argument("--overwrite", action="store_true",
                     help="start over: remove what an earlier run left in --out first (a rerun without it continues "
                          "that run, and refuses other settings)")
    out.add_argument("--init", default=None, metavar="FILE",
                     help="weights the student starts from (e.g. ImageNet weights); default: from scratch")
    train = parser.add_argument_group("training")
    train.add_argument("--input-size", type=input_size, default=NetworkConfig.input_size, metavar="WxH",
                       help="training and inference size (default: %s)" % "x".join(map(str, NetworkConfig.input_size)))
    train.add_argument("--rounds", type=at_least(1), default=3, help="self-distillation rounds at most (default: %(default)s)")
    train.add_argument("--max-steps", type=at_least(1), default=OptimConfig.max_steps,
                       help="steps of each training stage (default: %(default)s)")
    train.add_argument("--round-steps", type=at_least(1), default=None, help="steps of each round (default: --max-steps)")
    train.add_argument("--lr", type=learning_rate, default=None, help="the baseline's learning rate (default: main.py's)")
    train.add_argument("--round-lr", type=learning_rate, default=None, help="the rounds' learning rate (default: main.py's)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                       help="main.py's --lr-schedule for every stage (default: its own)")
    train.add_argument("--batch-size", type=at_least(2), default=DataConfig.train_batch_size,
                       help="training images per step (default: %(default)s)")
    train.add_argument("--select-by", choices=(*CRITERIA, "last", "val-miou"), default=DEFAULT_CRITERION,
                       help="the label-free score that keeps checkpoints and rounds (utils/label_free.py); last: "
                            "the last checkpoint of each stage; val-miou: the published protocol, which needs "
                            "labels of every --val-split image (default: %(default)s)")
    train.add_argument("--round-guard", action=argparse.BooleanOptionalAction, default=True,
                       help="keep a round only if it raises the --select-by score, and stop at the first that does "
                            "not (default: on; --no-round-guard runs every round, as published)")
    train.add_argument("--seed", type=seed, default=0, help="seed of every stage (default: %(default)s)")
    add_rare_class_args(parser)
    hw = parser.add_argument_group("hardware")
    hw.add_argument("--accelerator", choices=ACCELERATORS, default=HardwareConfig.accelerator,
                    help="cpu, gpu (cuda), mps or auto (default: %(default)s)")
    hw.add_argument("--num-workers", type=at_least(0), default=None, help="loader processes (default: from the cores)")
    return parser


def add_rare_class_args(parser, title="rare classes (ours, off by default; docs/method.md)"):
    """The rare-class options, declared once for adapt.py and demo.py."""
    rare = parser.add_argument_group(title)
    rare.add_argument("--class-balanced-share", type=probability, default=None, metavar="P",
                      help="pseudo-labels keep each class's P most confident pixels (CBST), the rest ignored")
    rare.add_argument("--complementary-below", type=probability, default=None, metavar="P",
                      help="the baseline also learns, per pixel, the classes the black box gives a probability "
                           "below P (ATP's complementary labels; not with label maps)")
    rare.add_argument("--rare-class-sampling", type=positive_float, default=None, metavar="T",
                      help="baseline and rounds draw images containing rare classes more often (temperature T)")
    rare.add_argument("--distribution-alignment", action="store_true",
                      help="the rounds' teacher labels are rectified toward the pseudo-labels' class shares")
    return rare


def train_and_extract(step, name, argv, run_folder, target):
    """Train a stage with ``main.py argv`` through ``step`` (an interrupted run resumes) and extract its
    best network to ``target``; a stage whose ``target`` exists is done."""
    from extract_model_state_dict import main as extract
    from main import main as train_main
    from utils.run_folder import has_checkpoints

    if os.path.isfile(target):
        print(f"\n=== {name}: done earlier ({target})")
        return target
    if has_checkpoints(run_folder):
        argv = [*argv, "--resume", "last"]
    best = step(f"{name}: train", "main.py", argv, train_main)["best_checkpoint"]
    if not best:
        raise UserError(f"{name}: no validated checkpoint in {run_folder}")
    step(f"{name}: extract", "extract_model_state_dict.py",
         ["--pl-weight-path", best, "--model-weight-keyname", "net", "--save-path", target], extract)
    return target


class Pipeline:
    """The stages, each an entry point's ``main`` called with the command line it prints."""

    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.weights = os.path.join(self.out, "weights")
        self.runs = os.path.join(self.out, "runs")
        self.black_box_kind = ("labels" if os.path.isdir(args.black_box) else
                               "onnx" if args.black_box.lower().endswith(".onnx") else "weights")
        self.report_split = args.report_split or args.val_split

    # -- command lines ------------------------------------------------------------------------------
    def target(self, labels=False):
        """The flags that point an entry point at the images (and, for scoring, at the labels)."""
        a = self.args
        if a.images:
            flags = ["--target-dataset", "folder", "--data-dir", a.images]
            return flags + (["--label-dir", a.labels] if labels and a.labels else [])
        flags = ["--target-dataset", a.target_dataset]
        for flag, value in (("--data-dir", a.data_dir), ("--image-root", a.image_root),
                            ("--conditions", ",".join(a.conditions) if a.conditions else None)):
            if value:
                flags += [flag, value]
        return flags + (["--label-dir", a.label_root] if labels and a.label_root else [])

    def common(self):
        a = self.args
        flags = ["--input-size", "x".join(map(str, a.input_size)), "--accelerator", a.accelerator]
        return flags + (["--num-workers", str(a.num_workers)] if a.num_workers is not None else [])

    def training(self, name, module, steps, lr, extra):
        a = self.args
        flags = ["--module-name", module, "--mode", "train", *self.target(labels=self.labelled_split(a.val_split)),
                 "--val-split", a.val_split, "--arch", a.student, *self.common(), "--train-batch-size",
                 str(a.batch_size), "--log-tb-dir", self.runs, "--experiment-name", name, "--seed", str(a.seed),
                 "--max-steps", str(steps), "--val-interval", str(max(1, steps // 4)), "--select-by", a.select_by]
        if lr is not None:
            flags += ["--lr", str(lr)]
        if a.lr_schedule:
            flags += ["--lr-schedule", a.lr_schedule]
        if a.rare_class_sampling is not None:
            flags += ["--rare-class-sampling", str(a.rare_class_sampling)]
        return flags + extra

    def labelled_split(self, split):
        """Whether every image of ``split`` has a label: then the stages report its mIoU too."""
        paths = self.label_paths(split)
        return bool(paths) and all(paths.values())

    def label_paths(self, split):
        """``{name: label path or None}`` of the split's images (``{}`` without labels)."""
        return {name: label for name, (_, label) in self.images_and_labels(split).items()}

    def images_and_labels(self, split):
        """``{name: (image path, label path or None)}`` of the split's images (``{}`` without labels)."""
        target = self.make_target()
        if target.labels is None or target.missing_label_dir(split):
            return {}
        from datasets.base import TargetDataset

        return {name: (image, label if os.path.isfile(label) else None)
                for image, _, name in TargetDataset(target, split, labels=False).samples
                for label in [target.label_path(split, name)]}

    def make_target(self):
        from datasets.targets import make_target

        a = self.args
        if a.images:
            return make_target("folder", a.images, None, a.labels, None)
        return make_target(a.target_dataset, a.data_dir, a.image_root, a.label_root, a.conditions)

    def step(self, title, script, argv, call, words=()):
        """Run an entry point; its refusals name adapt.py's flags (``words``: its flag -> ours)."""
        announce(title, script, argv)
        try:
            return call(argv)
        except UserError as err:
            message = str(err)
            labels = "--black-box" if self.black_box_kind == "labels" else "the black box's pseudo-labels"
            for theirs, ours in (*words, ("another --save", "another --out"), ("--save holds", "--out holds"),
                                 ("--pseudo-label-root", labels),
                                 ("--train-batch-size", "--batch-size"),
                                 ("add --resume last to the same command", "run the same adapt.py command again")):
                message = message.replace(theirs, ours)
            raise UserError(f"{title}: {message}") from None
        except KeyboardInterrupt:
            raise KeyboardInterrupt("finished stages are kept; run the same adapt.py command again to "
                                    "continue") from None

    # -- before anything runs -----------------------------------------------------------------------
    def settings(self):
        """What decides the results in --out: every flag but where the outputs and labels for the report
        are, the hardware, and --rounds (more rounds continue the ones made); labels count where they
        select (--select-by val-miou)."""
        report_only = {"out", "overwrite", "report_split", "accelerator", "num_workers", "rounds"}
        if self.args.select_by != "val-miou":
            report_only |= {"labels", "label_root"}
        paths = {"black_box", "images", "data_dir", "image_root", "init", "labels", "label_root"}
        return {k: (os.path.abspath(v) if k in paths and v else v) for k, v in sorted(vars(self.args).items())
                if k not in report_only}

    def outputs(self):
        names = ("pseudo_labels", "hard_patches", "weights", "runs", "student.pth", "adapted.onnx", "report.json",
                 "report.md", "report.png")
        return [os.path.join(self.out, name) for name in names]

    def check_labels(self):
        """--labels (or --label-dir) before anything runs: the folder exists, labels match images, each is
        a train-id map of its image's size; --select-by val-miou needs a label for every val image."""
        from datasets.base import check_label_values, check_size_on_disk
        from utils.io import read_label
        from utils.labels import NUM_CLASSES

        a = self.args
        flag, folder = ("--labels", a.labels) if a.images else ("--label-dir", a.label_root)
        if folder and not os.path.isdir(folder):
            raise UserError(f"{flag}: folder not found: {folder}")
        for split in dict.fromkeys((a.val_split, self.report_split)):
            paths = self.images_and_labels(split)
            labelled = [(image, label) for image, label in paths.values() if label]
            if a.select_by == "val-miou" and split == a.val_split and (not paths or len(labelled) < len(paths)):
                raise UserError(f"--select-by val-miou keeps checkpoints by the labels of every --val-split "
                                f"{split!r} image: {len(labelled)} of them have one; label the rest, or keep the "
                                "label-free default")
            if folder and not labelled:
                raise UserError(f"{flag} {folder}: no label for any image of split {split!r} (a label mirrors its "
                                "image's relative path: <relative path>/<stem>.png)")
            for image, label in labelled:
                check_size_on_disk(image, label)
                check_label_values(read_label(label), NUM_CLASSES, label)

    # -- the stages ---------------------------------------------------------------------------------
    def pseudo_labels(self):
        if self.black_box_kind == "labels":  # training and the report read these maps: all there, all train ids?
            from datasets.base import TargetDataset, check_label_values
            from modules.label_map_box import label_map_paths
            from utils.io import read_label
            from utils.labels import NUM_CLASSES

            target, box = self.make_target(), self.args.black_box
            print(f"\n=== pseudo-labels: the black box's label maps in {box}", flush=True)
            # Where training finds them (as pseudo-labels) and where the report finds them; each read once.
            try:
                train = TargetDataset(target, "train", input_size=self.args.input_size, pseudo_label_root=box)
                train.check_label_sizes()  # the image's size or --input-size, as training takes them
                paths = {label for _, label, _ in train.samples}
            except UserError as err:
                raise UserError(f"--black-box {box}: {str(err).replace('pseudo-label', 'label map')}") from None
            names = TargetDataset(target, self.report_split).names
            paths.update(label_map_paths(box, names, self.report_split, target.pseudo_label_suffix,
                                         "--black-box").values())
            classes = False
            for path in progress(sorted(paths), desc="checking the label maps", unit="map"):
                label = read_label(path)
                check_label_values(label, NUM_CLASSES, path)
                classes = classes or bool((label != 255).any())
            if not classes:
                raise UserError(f"--black-box {box}: every pixel of every label map is 255 (ignored): nothing to "
                                "learn from")
            return box
        from generate_pseudo_labels import main as pseudo

        save = os.path.join(self.out, "pseudo_labels")
        argv = [*self.target(), "--restore-from", self.args.black_box, "--save", save, *self.common()]
        for name in ("class_balanced_share", "complementary_below"):
            if getattr(self.args, name) is not None:
                argv += [f"--{name.replace('_', '-')}", str(getattr(self.args, name))]
        if self.black_box_kind == "weights" and self.args.black_box_arch:
            argv += ["--arch", self.args.black_box_arch]
        self.step("pseudo-labels: the black box labels the images", "generate_pseudo_labels.py", argv, pseudo,
                  words=(("add --arch", "add --black-box-arch"), ("--restore-from", "--black-box"),
                         ("--num-classes is 19", NINETEEN), ("the file's head has", f"{NINETEEN}; the file's head has")))
        return save

    def train(self, name, module, steps, lr, extra):
        return train_and_extract(self.step, name, self.training(name, module, steps, lr, extra),
                                 os.path.join(self.runs, module, name), os.path.join(self.weights, f"{name}.pth"))

    def hard_patches(self, pseudo):
        from construct_hard_patch import main as mine

        save = os.path.join(self.out, "hard_patches")
        self.step("hard patches from the pseudo-labels", "construct_hard_patch.py",
                  [*self.target(), "--pseudo-label-root", pseudo, "--save", save, "--rare-classes", "auto",
                   "--input-size", "x".join(map(str, self.args.input_size)), "--grid", "4x4",
                   *(["--num-workers", str(self.args.num_workers)] if self.args.num_workers is not None else [])], mine)
        return save

    def rounds(self, baseline, patches, pseudo):
        from main import main as train_main
        from modules.rounds import final_student

        a = self.args
        argv = self.training("smhm", "smhm", a.round_steps or a.max_steps, a.round_lr,
                             ["--rounds", str(a.rounds), "--restore-from", baseline, "--hard-patches-root", patches,
                              "--round-guard" if a.round_guard else "--no-round-guard",
                              *(["--distribution-alignment"] if a.distribution_alignment else []),
                              # the class shares of rare-class sampling and alignment
                              *(["--pseudo-label-root", pseudo] if a.distribution_alignment
                                or a.rare_class_sampling is not None else [])])
        results = self.step("self-distillation rounds", "main.py", argv, train_main)
        return results, final_student(results)

    def export(self, student):
        from tools.export_provider import main as export

        target = os.path.join(self.out, "adapted.onnx")
        self.step("the adapted model as an ONNX file", "-m tools.export_provider",
                  ["--restore-from", student, "--arch", self.args.student, "--input-size",
                   "x".join(map(str, self.args.input_size)), "--resize-input", "--full-resolution", "--onnx", target,
                   "--overwrite"],
                  export)
        return target

    def run(self):
        from utils.run_folder import claim_folder

        a = self.args
        start = time.time()
        self.check_labels()
        state = os.path.join(self.out, ".state")
        claim_folder(state, self.settings(), a.overwrite, self.outputs(), flag="--out",
                     inputs=[(f"--{k.replace('_', '-')}", getattr(a, k))
                             for k in ("black_box", "init", "images", "labels", "data_dir", "image_root", "label_root")])
        beyond = os.path.join(self.runs, "smhm", f"smhm_round_{a.rounds + 1}")
        if os.path.isdir(beyond) and os.listdir(beyond):  # more rounds continue the ones made; fewer would drop one
            raise UserError(f"--rounds {a.rounds}: --out holds round {a.rounds + 1} of an earlier run ({beyond}); give "
                            "as many rounds or more to continue it, or add --overwrite to start over")
        if a.images and os.path.isdir(os.path.join(a.images, "train")):
            print(f"note: {a.images} has a train/ sub-folder: the stages train on its images alone (a split is "
                  "the sub-folder of its name when there is one, else every image)", flush=True)
        if a.images:
            unread = []
            for folder, subfolders, names in os.walk(a.images):  # as the image scan walks: no hidden folder
                subfolders[:] = [d for d in subfolders if not d.startswith(".")]
                unread += [os.path.join(folder, n) for n in names if n.lower().endswith(UNREAD_IMAGES)]
            if unread:
                print(f"note: {len(unread)} image(s) such as {unread[0]} are not read: only .png, .jpg and .jpeg "
                      "images are; convert the others to use them", flush=True)
        spent = os.path.join(state, "seconds")  # the time of earlier invocations of this run
        try:
            with open(spent, encoding="utf-8") as f:
                earlier = float(f.read())
        except (OSError, ValueError):
            earlier = 0.0
        try:
            report = self.stages(state)
        finally:
            if os.path.isdir(state):
                atomic_write_text(spent, f"{earlier + time.time() - start:.1f}\n")
        report["seconds"] = round(earlier + time.time() - start, 1)  # every invocation's, resumed or not
        atomic_write_text(os.path.join(self.out, "report.json"), json.dumps(report, indent=2, allow_nan=False) + "\n")
        return report

    def stages(self, state):
        from utils.run_folder import remove_claim

        a = self.args
        try:
            pseudo = self.pseudo_labels()
        except UserError:  # nothing finished: nothing left behind
            remove_claim(state, self.outputs(), unless_finished=True)
            raise
        init = ["--restore-from", a.init] if a.init else []
        init += ["--complementary-weight", "1"] if a.complementary_below is not None else []
        baseline = self.train("baseline", "baseline", a.max_steps, a.lr, ["--pseudo-label-root", pseudo, *init])
        patches = self.hard_patches(pseudo)
        rounds, final = self.rounds(baseline, patches, pseudo)
        student = os.path.join(self.out, "student.pth")
        with open(final, "rb") as f:
            atomic_write_bytes(student, f.read())
        onnx = self.export(student)
        from modules.report import write_report

        return write_report(self, student, rounds, onnx)


def check_args(args):
    if args.images and args.data_dir:
        raise UserError("give --images (a folder of images) or --data-dir with --target-dataset, not both")
    if not args.images and not args.data_dir:
        raise UserError("--images DIR: the folder of your images (or --target-dataset and --data-dir for another layout)")
    if args.labels and not args.images:
        raise UserError("--labels goes with --images; for another layout give --label-dir")
    if not os.path.exists(args.black_box):
        raise UserError(f"--black-box: not found: {args.black_box}")
    if args.images and not os.path.isdir(args.images):
        raise UserError(f"--images {args.images} is a file; give the folder of your images"
                        if os.path.exists(args.images) else f"--images: folder not found: {args.images}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file; give a folder")
    for flag, split in (("--val-split", args.val_split), ("--report-split", args.report_split)):
        # A folder target's split is its sub-folder of that name, else all images: a name typed is a sub-folder.
        if args.images and split and split != "val" and not os.path.isdir(os.path.join(args.images, split)):
            raise UserError(f"{flag} {split}: no sub-folder {split}/ in --images {args.images}")
    if os.path.isdir(args.black_box) and (args.class_balanced_share is not None or args.complementary_below is not None):
        raise UserError("--class-balanced-share and --complementary-below need the black box's scores, which "
                        "label maps do not hold: give an ONNX or .pth black box")
    if args.init:
        if not os.path.isfile(args.init):
            raise UserError(f"--init: weight file not found: {args.init}")
        from models.networks import get_network

        try:  # read now, not after the black box has labelled every image
            get_network(arch=args.student, restore_from=args.init)
        except UserError as err:
            raise UserError(f"--init: {str(err).replace('add --arch', 'add --student')}") from None
    from utils.run_folder import check_outside_images

    check_outside_images(args.out, "--out", args.images or args.data_dir)


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    from utils.run_folder import folder_lock

    with folder_lock(args.out, "--out"):  # created, and removed again if a refusal leaves it empty
        report = Pipeline(args).run()
    print(f"\n{report['verdict']}\nreport: {os.path.join(args.out, 'report.md')}")
    return report


if __name__ == "__main__":
    run(main, sys.argv[1:])
