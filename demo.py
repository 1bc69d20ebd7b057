"""The whole method, end to end, on the embedded synthetic benchmark: minutes on a laptop CPU.

    python demo.py            # or: make demo

It makes a black box and then adapts it exactly as a user would (``adapt.py``), printing every
command: generate a two-domain benchmark (source in GTA5 layout, target in Cityscapes layout, with a
held-out labelled *test* split), convert the target labels to train ids, train a provider on the
source and export it to an ONNX file (the black box: from here on only that file is run), then
``adapt.py``: pseudo-labels, baseline, hard patches and the self-distillation rounds, each stage
keeping its checkpoint by a label-free score on the val images (``--select-by val-miou`` for the
published protocol instead), the adapted model exported and reported against the black box. Last,
a target oracle trained on the target labels, and every stage scored on the test split, whose
labels no selection ever sees. The provider is always a tiny DeepLabv2; ``--student`` chooses the
target model, e.g. ``--student segformer_b0``; ``--target`` the target domain's layout and look, e.g.
``--target acdc`` (fog and night in ACDC's layout, scored per condition too). Results:
``experiments/demo/results.json`` and the adaptation report in ``experiments/demo/adapt/``.

A stage whose results already exist is skipped, so an interrupted demo continues where it stopped;
``--fresh`` starts over.
"""
import argparse
import csv
import json
import os
import shutil
import sys
import time

from datasets.targets import TARGETS
from models.archs import ARCH_NAMES
from utils.cli import ArgumentParser, UserError, announce, at_least, input_size, run, seed
from utils.io import atomic_write_text, json_number
from utils.criteria import CRITERIA, DEFAULT_CRITERION
from utils.run_folder import LOCK_NAME, folder_lock

DEMO_ENTRIES = ("data", "lists", "weights", "runs", "adapt", "results.json")  # what a demo writes in --out
# (a folder with the benchmark's manifest in data/ is a demo's, whatever else an earlier version left)

# The demo schedule; its measured results and timing are in docs/demo.md. Rare classes "auto": the
# provider hardly ever predicts most of the published GTA5 rare classes on this benchmark, so the
# patches follow the rarest classes it does predict.
DEFAULTS = dict(num_source=200, num_train=200, num_val=50, num_test=100, data_size="256x128", input_size="256x128",
                arch="deeplabv2_tiny", batch_size=4, provider_steps=600, baseline_steps=1000, oracle_steps=600,
                round_steps=300, rounds=3, lr=1e-3, smhm_lr=2e-4, rare_classes="auto")
QUICK = dict(num_source=8, num_train=8, num_val=4, num_test=4, data_size="64x32", input_size="64x32",
             provider_steps=4, baseline_steps=4, oracle_steps=4, round_steps=2, rounds=2,
             rare_classes="auto")  # an untrained provider predicts no rare class: take its rarest ones


TARGET_NAMES = tuple(TARGETS)


def build_parser():
    parser = ArgumentParser(prog="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="everything the demo makes goes here (default: ./experiments/demo, with the --target, "
                             "--student, --select-by, _no_guard, the rare-class flags, _seed<N> and _quick added "
                             "where they differ from the defaults, so that no demo replaces another; --rounds "
                             "continues the same folder)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the benchmark and of training (default: %(default)s)")
    parser.add_argument("--rounds", type=at_least(1), default=None, help=f"smhm self-distillation rounds (default: {DEFAULTS['rounds']})")
    parser.add_argument("--quick", action="store_true",
                        help="a few images and steps: checks that every stage runs (seconds), not that adaptation helps")
    parser.add_argument("--fresh", action="store_true", help="delete an earlier demo in --out and start over")
    parser.add_argument("--student", choices=ARCH_NAMES, default=DEFAULTS["arch"], metavar="ARCH",
                        help="the target model's network (baseline, smhm rounds, oracle), any --arch of main.py, "
                             "trained from a random initialisation with the demo's rates; the provider stays "
                             "deeplabv2_tiny (default: %(default)s)")
    parser.add_argument("--target", choices=TARGET_NAMES, default="cityscapes",
                        help="the target domain: cityscapes (daylight, Cityscapes layout), acdc (fog and night "
                             "renderings in ACDC's layout, scored per condition too), darkzurich (day, twilight and "
                             "night in Dark Zurich's layout; no train labels, so no oracle) or folder (a plain tree of "
                             "images) (default: %(default)s)")
    parser.add_argument("--round-guard", action=argparse.BooleanOptionalAction, default=True,
                        help="adapt.py's round guard: keep a round only if it raises the score (default: on)")
    parser.add_argument("--select-by", choices=(*CRITERIA, "last", "val-miou"), default=DEFAULT_CRITERION,
                        help="how every stage keeps its checkpoint: a label-free score, or val-miou (the published "
                             "protocol, with the val labels); the test split is never used (default: %(default)s)")
    from adapt import add_rare_class_args

    add_rare_class_args(parser, "rare classes: adapt.py's options, for an ablation (docs/method.md); each "
                                "combination goes to a folder of its own")
    parser.add_argument("--num-workers", type=at_least(0), default=0, help="data loader processes (default: %(default)s)")
    return parser


def rare_flags(args):
    """The rare-class options given to the demo, as adapt.py's flags."""
    flags = []
    for name in ("class_balanced_share", "complementary_below", "rare_class_sampling"):
        if getattr(args, name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags + (["--distribution-alignment"] if args.distribution_alignment else [])


def default_out(seed, quick, student=DEFAULTS["arch"], target="cityscapes", select_by=DEFAULT_CRITERION, guard=True,
                rare=()):
    return ("./experiments/demo" + (f"_{target}" if target != "cityscapes" else "")
            + (f"_{student}" if student != DEFAULTS["arch"] else "")
            + (f"_{select_by.replace('-', '_')}" if select_by != DEFAULT_CRITERION else "")
            + ("" if guard else "_no_guard")
            + "".join("_" + flag.lstrip("-").replace("-", "_") for flag in rare)
            + (f"_seed{seed}" if seed != 0 else "") + ("_quick" if quick else ""))


class Demo:
    def __init__(self, args):
        self.args = args
        self.cfg = dict(DEFAULTS, **(QUICK if args.quick else {}))
        if args.rounds is not None:
            self.cfg["rounds"] = args.rounds
        self.out = args.out or default_out(args.seed, args.quick, args.student, args.target, args.select_by,
                                           args.round_guard, rare_flags(args))
        self.data = os.path.join(self.out, "data")
        self.cityscapes = os.path.join(self.data, "cityscapes")
        self.weights = os.path.join(self.out, "weights")
        self.runs = os.path.join(self.out, "runs")
        self.timings = {}

    # -- running the entry points ---------------------------------------------------------------------
    def step(self, title, script, argv, call):
        announce(title, script, argv)
        start = time.time()
        try:
            result = call(argv)
        except UserError as err:  # the demo starts over with --fresh
            if "add --overwrite" not in str(err):
                raise
            raise UserError(str(err).replace("add --overwrite", "add --fresh")) from None
        self.timings[title] = round(time.time() - start, 1)
        return result

    def arch_of(self, stage):
        """The provider (source_only) is the demo's tiny DeepLabv2; every other stage is the student."""
        return self.cfg["arch"] if stage == "source_only" else self.args.student

    def target_args(self, labels=True):
        """The flags that point the entry points at the benchmark's target."""
        if self.args.target == "cityscapes":  # the train-id copy of its labels, made by the conversion step
            return ["--data-dir", self.cityscapes] + (
                ["--label-root", os.path.join(self.cityscapes, "gtFine2")] if labels else [])
        from tools.synthetic import target_args

        return target_args(self.data, self.args.target, labels=labels)

    def common_training(self, arch):
        c = self.cfg
        return [*self.target_args(), "--list-root", os.path.join(self.out, "lists"),
                "--arch", arch, "--input-size", c["input_size"], "--train-batch-size", str(c["batch_size"]),
                "--val-batch-size", "10", "--test-batch-size", "10", "--num-workers", str(self.args.num_workers),
                "--accelerator", "cpu", "--devices", "1", "--log-tb-dir", self.runs, "--seed", str(self.args.seed), "--log-interval", "10", "--visualize-interval", "100",
                # The demo's rates were tuned at a constant rate; the published cosine has a 10-epoch
                # half-period, sized for Cityscapes' 744 steps an epoch, not the demo's 50.
                "--lr-schedule", "constant"]

    def train(self, name, module, steps, lr, extra):
        """Train the provider or the oracle and extract its best network to weights/<name>.pth. Both are
        built with labels (of the source, of the target): kept by val mIoU."""
        from adapt import train_and_extract

        argv = ["--module-name", module, "--mode", "train", *self.common_training(self.arch_of(name)),
                "--experiment-name", name, "--max-steps", str(steps), "--lr", str(lr),
                "--val-interval", str(max(1, steps // 4)), "--select-by", "val-miou", *extra]
        return train_and_extract(self.step, name, argv, os.path.join(self.runs, module, name),
                                 os.path.join(self.weights, f"{name}.pth"))

    def export(self, provider):
        """The provider as a file that is only run (``python -m tools.export_provider``): from here on the
        demo's black box is this ONNX file, as a vendor would hand it over."""
        from tools.export_provider import main as export

        target = os.path.join(self.weights, "source_only.onnx")
        if os.path.isfile(target):
            print(f"\n=== black box: exported earlier ({target})")
            return target
        self.step("black box: export the provider to ONNX", "-m tools.export_provider",
                  ["--restore-from", provider, "--arch", self.cfg["arch"], "--input-size", self.cfg["input_size"],
                   "--onnx", target], export)
        return target

    def adapt(self, black_box):
        """``adapt.py``: the user's command, on the benchmark's target; returns its report and the
        weights of every stage it trained (baseline, each round)."""
        from adapt import main as adapt

        c, a = self.cfg, self.args
        out = os.path.join(self.out, "adapt")
        argv = ["--black-box", black_box, *self.target_args(), "--val-split", "val", "--report-split", "test",
                "--out", out, "--student", a.student, "--input-size", c["input_size"], "--rounds", str(c["rounds"]),
                "--max-steps", str(c["baseline_steps"]), "--round-steps", str(c["round_steps"]), "--lr", str(c["lr"]),
                "--round-lr", str(c["smhm_lr"]), "--lr-schedule", "constant", "--batch-size", str(c["batch_size"]),
                "--select-by", a.select_by, "--round-guard" if a.round_guard else "--no-round-guard",
                *rare_flags(a), "--seed", str(a.seed), "--accelerator", "cpu",
                "--num-workers", str(a.num_workers)]
        report = self.step("adapt the black box to the target (adapt.py)", "adapt.py", argv, adapt)
        with open(os.path.join(out, "runs", "smhm", "smhm_rounds.csv")) as f:
            rounds = list(csv.DictReader(f))
        stages = {"baseline": os.path.join(out, "weights", "baseline.pth")}
        stages.update({f"smhm_round_{r['round']}": r["student"] for r in rounds if r["round"] != "0"})
        stages["adapted"] = report["files"]["student"]
        return report, stages

    def evaluate(self, stages, selected_by):
        """``main.py --mode test --val-split test`` for every stage's weights (the black box's ONNX file
        included): scores on the held-out test split; returns {stage: {weights, selected_by, test}}."""
        from main import main as test_main
        from utils.labels import CLASS_NAMES
        from utils.metrics import MEAN_KEYS

        results = {}
        for stage, weights in stages.items():
            argv = ["--module-name", "basic", "--mode", "test", *self.common_training(self.arch_of(stage)),
                    "--val-split", "test", "--experiment-name", f"test_{stage}", "--restore-from", weights]
            scores = self.step(f"test split: {stage}", "main.py", argv, test_main)
            test = {**{key: json_number(scores[key]) for key in MEAN_KEYS},
                    "per_class": {n: json_number(v) for n, v in zip(CLASS_NAMES, scores["per_class"])},
                    "label_free": scores["label_free"]}
            if "conditions" in scores:  # ACDC, Dark Zurich: each condition scored on its own as well
                test["conditions"] = {name: {key: json_number(part[key]) for key in MEAN_KEYS}
                                      for name, part in scores["conditions"].items()}
            results[stage] = {"weights": weights, "selected_by": selected_by.get(stage), "test": test}
        return results

    def table(self, results, total):
        # The last column is the published code's 13-class mean (without fence, pole, traffic light).
        # ACDC and Dark Zurich add each condition's mIoU-19.
        conditions = list(next(iter(results.values()))["test"].get("conditions", {}))
        print(f"\ntest split{'':<6} {'mIoU-19':>8} {'mIoU-16':>8} {'mIoU-13':>8} {'13 (pub.)':>9}"
              + "".join(f" {name:>9}" for name in conditions))

        def number(value, width):
            return f"{value if value is not None else float('nan'):{width}.2f}"

        for stage, r in results.items():
            r = r["test"]
            print(f"{stage:<16} " + " ".join(number(r[k], w) for k, w in (("miou", 8), ("miou16", 8), ("miou13", 8),
                                                                          ("miou13_published", 9)))
                  + "".join(f" {number(r['conditions'][name]['miou'], 9)}" for name in conditions))
        print(f"\ntotal {total:.0f} s; per-class IoU in {os.path.join(self.out, 'results.json')}")

    # -- the stages -----------------------------------------------------------------------------------
    def run(self):
        c, a = self.cfg, self.args
        if a.fresh and os.path.isdir(self.out):
            from tools.synthetic import MANIFEST

            others = sorted(set(os.listdir(self.out)) - set(DEMO_ENTRIES) - {LOCK_NAME})
            if others and not os.path.isfile(os.path.join(self.data, MANIFEST)):  # not a demo's: not ours to delete
                raise UserError(f"--fresh: --out {self.out} holds {others[0]}, which no demo writes; choose another "
                                "--out, or move it away")
            for entry in os.listdir(self.out):  # all but the lock this demo holds on --out
                path = os.path.join(self.out, entry)
                if entry == LOCK_NAME:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        os.makedirs(self.weights, exist_ok=True)
        # No image lists: every split is scanned (the default list folder may hold the real Cityscapes lists).
        os.makedirs(os.path.join(self.out, "lists"), exist_ok=True)
        start = time.time()

        from tools.synthetic import OtherSettings
        from tools.synthetic import main as synthetic
        try:
            self.step("benchmark: generate", "-m tools.synthetic",
                      ["--root", self.data, "--seed", str(a.seed), "--num-source", str(c["num_source"]),
                       "--num-train", str(c["num_train"]), "--num-val", str(c["num_val"]), "--num-test", str(c["num_test"]),
                       "--size", c["data_size"],
                       *(["--target", a.target] if a.target != "cityscapes" else [])],
                      synthetic)
        except OtherSettings:
            raise UserError(f"--out {self.out} holds a demo made with another --seed, --target or with(out) --quick: "
                            "add --fresh to replace it, or choose another --out") from None
        if a.target == "cityscapes":  # the other layouts' synthetic labels are train ids already
            from utils.transfer_trainid import main as transfer
            self.step("labels: convert to train ids", "utils/transfer_trainid.py",
                      ["--dataset", "cityscapes", "--ori-label-root", os.path.join(self.cityscapes, "gtFine"),
                       "--dst-label-root", os.path.join(self.cityscapes, "gtFine2")], transfer)

        provider = self.train("source_only", "source_only", c["provider_steps"], c["lr"],
                              ["--source-dataset", "gta5", "--source-root", os.path.join(self.data, "gta5")])
        black_box = self.export(provider)
        report, trained = self.adapt(black_box)
        stages = {"black_box": black_box, **trained}
        selected_by = {"black_box": "val-miou", **{name: a.select_by for name in trained}}
        if a.target != "darkzurich":  # Dark Zurich has no train labels to train an oracle on
            stages["oracle"] = self.train("oracle", "basic", c["oracle_steps"], c["lr"], [])
            selected_by["oracle"] = "val-miou"
        results = self.evaluate(stages, selected_by)
        total = round(time.time() - start, 1)
        atomic_write_text(os.path.join(self.out, "results.json"), json.dumps(
            {"stages": results, "report": report, "seconds": self.timings, "total_seconds": total,
             "settings": dict(self.cfg, seed=a.seed, student=a.student, target=a.target, select_by=a.select_by)},
            indent=2, allow_nan=False))
        self.table(results, total)
        print(f"\n{report['verdict']}")
        return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    demo = Demo(args)
    with folder_lock(demo.out, "--out"):  # one demo at a time in a folder (utils/run_folder.py)
        demo.run()
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
