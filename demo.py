"""The whole method, end to end, on the embedded synthetic benchmark: minutes on a laptop CPU.

    python demo.py            # or: make demo

Stages, each run through the same entry points as the real staged commands (printed as it goes):
generate a two-domain benchmark (source in GTA5 layout, target in Cityscapes layout), convert the
target labels to train ids, train the provider on the source, export it to an ONNX file (the black
box: from here on only that file is run), let it pseudo-label the target, distil a baseline from
the pseudo-labels alone, mine hard patches from the pseudo-labels alone (strictly black-box), run
the smhm self-distillation rounds, train the target oracle, evaluate every stage on target val.
The provider is always a tiny DeepLabv2; ``--student`` chooses the target model (baseline, smhm
rounds and oracle), e.g. ``--student segformer_b0``; ``--target`` the target domain's layout and
look, e.g. ``--target acdc`` (the target rendered in fog and at night, in ACDC's layout, scored per
condition too). Results: ``experiments/demo/results.json`` and a
picture ``experiments/demo/predictions.png`` (image | ground truth | source-only | baseline | final).

A stage whose weights already exist is skipped, so an interrupted demo continues where it stopped;
``--fresh`` starts over.
"""
import argparse
import json
import os
import shutil
import sys
import time

from datasets.targets import TARGETS
from models.networks import ARCH_NAMES
from utils.cli import ArgumentParser, UserError, at_least, input_size, run, seed
from utils.io import atomic_write_text, json_number
from utils.run_folder import LOCK_NAME, folder_lock, has_checkpoints

# The demo schedule; its measured results and timing are in docs/demo.md. Rare classes "auto": the
# provider hardly ever predicts most of the published GTA5 rare classes on this benchmark, so the
# patches follow the rarest classes it does predict.
DEFAULTS = dict(num_source=200, num_train=200, num_val=50, data_size="256x128", input_size="256x128",
                arch="deeplabv2_tiny", batch_size=4, provider_steps=600, baseline_steps=1000, oracle_steps=600,
                round_steps=300, rounds=3, lr=1e-3, smhm_lr=2e-4, rare_classes="auto")
QUICK = dict(num_source=8, num_train=8, num_val=4, data_size="64x32", input_size="64x32",
             provider_steps=4, baseline_steps=4, oracle_steps=4, round_steps=2, rounds=2,
             rare_classes="auto")  # an untrained provider predicts no rare class: take its rarest ones


TARGET_NAMES = tuple(TARGETS)


def build_parser():
    parser = ArgumentParser(prog="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="everything the demo makes goes here (default: ./experiments/demo, with _seed<N> added "
                             "for another --seed and _quick for --quick, so that no demo replaces another)")
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
    parser.add_argument("--num-workers", type=at_least(0), default=0, help="data loader processes (default: %(default)s)")
    return parser


def default_out(seed, quick, student=DEFAULTS["arch"], target="cityscapes"):
    return ("./experiments/demo" + (f"_{target}" if target != "cityscapes" else "")
            + (f"_{student}" if student != DEFAULTS["arch"] else "")
            + (f"_seed{seed}" if seed != 0 else "") + ("_quick" if quick else ""))


class Demo:
    def __init__(self, args):
        self.args = args
        self.cfg = dict(DEFAULTS, **(QUICK if args.quick else {}))
        if args.rounds is not None:
            self.cfg["rounds"] = args.rounds
        self.out = args.out or default_out(args.seed, args.quick, args.student, args.target)
        self.data = os.path.join(self.out, "data")
        self.cityscapes = os.path.join(self.data, "cityscapes")
        self.weights = os.path.join(self.out, "weights")
        self.runs = os.path.join(self.out, "runs")
        self.timings = {}

    # -- running the entry points ---------------------------------------------------------------------
    def step(self, title, script, argv, call):
        print(f"\n=== {title}\n$ python {script} {' '.join(argv)}", flush=True)
        start = time.time()
        result = call(argv)
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
        """Train a stage (resuming an interrupted run) and extract its best network to weights/<name>.pth."""
        from extract_model_state_dict import main as extract
        from main import main as train_main

        target = os.path.join(self.weights, f"{name}.pth")
        if os.path.isfile(target):
            print(f"\n=== {name}: done earlier ({target})")
            return target
        argv = ["--module-name", module, "--mode", "train", *self.common_training(self.arch_of(name)),
                "--experiment-name", name,
                "--max-steps", str(steps), "--lr", str(lr), "--val-interval", str(max(1, steps // 4)), *extra]
        if has_checkpoints(os.path.join(self.runs, module, name)):
            argv += ["--resume", "last"]
        best = self.step(f"{name}: train", "main.py", argv, train_main)["best_checkpoint"]
        if not best:
            raise UserError(f"{name}: no validated checkpoint in {os.path.join(self.runs, module, name)}")
        self.step(f"{name}: extract", "extract_model_state_dict.py",
                  ["--pl-weight-path", best, "--model-weight-keyname", "net", "--save-path", target], extract)
        return target

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

    def smhm_rounds(self, baseline, patches):
        """``main.py --rounds N``: each round restarts smhm from the best student of the previous one."""
        from main import main as train_main

        c = self.cfg
        argv = ["--module-name", "smhm", "--mode", "train", *self.common_training(self.args.student),
                "--experiment-name", "smhm",
                "--rounds", str(c["rounds"]), "--restore-from", baseline, "--hard-patches-root", patches,
                "--position-beta", "0.25", "--max-steps", str(c["round_steps"]), "--lr", str(c["smhm_lr"]),
                "--val-interval", str(max(1, c["round_steps"] // 4))]
        rounds = self.step("smhm self-distillation rounds", "main.py", argv, train_main)
        return [r["student"] for r in rounds]

    def evaluate(self, stages):
        """``main.py --mode test`` for every stage's weights; returns
        {stage: {weights, miou, miou16, miou13, miou13_published, per_class}}."""
        from main import main as test_main
        from utils.labels import CLASS_NAMES
        from utils.metrics import MEAN_KEYS

        results = {}
        for stage, weights in stages.items():
            argv = ["--module-name", "basic", "--mode", "test", *self.common_training(self.arch_of(stage)),
                    "--experiment-name", f"eval_{stage}", "--restore-from", weights]
            scores = self.step(f"evaluate {stage}", "main.py", argv, test_main)
            results[stage] = {"weights": weights, **{key: json_number(scores[key]) for key in MEAN_KEYS},
                              "per_class": {n: json_number(v) for n, v in zip(CLASS_NAMES, scores["per_class"])}}
            if "conditions" in scores:  # ACDC, Dark Zurich: each condition scored on its own as well
                results[stage]["conditions"] = {name: {key: json_number(part[key]) for key in MEAN_KEYS}
                                                for name, part in scores["conditions"].items()}
        return results

    def picture(self, stages, columns, count=4):
        """Rows of image | ground truth | one prediction per column, for the first val images, under
        column titles and with a legend of the classes in them."""
        import torch

        from datasets.base import TargetDataset
        from datasets.pixels import to_bgr_uint8
        from datasets.targets import add_target_dataset_args, make_target
        from models.networks import get_network
        from utils.io import write_rgb_png
        from utils.visualize import labelled_picture

        c = self.cfg
        flags = add_target_dataset_args(argparse.ArgumentParser()).parse_args(self.target_args())
        target = make_target(flags.target_dataset, flags.data_dir, flags.image_root, flags.label_root, flags.conditions)
        data = TargetDataset(target, "val", input_size=input_size(c["input_size"]), labels=True, resize_label=False)
        # Spread over the split, so that every condition of ACDC or Dark Zurich shows.
        count = min(count, len(data))
        items = [data[i * (len(data) - 1) // max(1, count - 1)] for i in range(count)]
        predictions = []
        for column in columns:
            net = get_network(arch=self.arch_of(column), restore_from=stages[column]).eval()
            with torch.no_grad():
                predictions.append([net(item["image"][None], size=item["label"].shape)[0].argmax(0).numpy()
                                    for item in items])
        rows = [(to_bgr_uint8(item["image"])[:, :, ::-1], [item["label"].numpy()] + [p[i] for p in predictions])
                for i, item in enumerate(items)]
        path = os.path.join(self.out, "predictions.png")
        write_rgb_png(path, labelled_picture(rows, ["image", "ground truth", *columns]))
        print(f"\npicture: {path} (image | ground truth | {' | '.join(columns)})")

    def table(self, results, total):
        # The last column is the published code's 13-class mean (without fence, pole, traffic light).
        # ACDC and Dark Zurich add each condition's mIoU-19.
        conditions = list(next(iter(results.values())).get("conditions", {}))
        print(f"\n{'stage':<16} {'mIoU-19':>8} {'mIoU-16':>8} {'mIoU-13':>8} {'13 (pub.)':>9}"
              + "".join(f" {name:>9}" for name in conditions))

        def number(value, width):
            return f"{value if value is not None else float('nan'):{width}.2f}"

        for stage, r in results.items():
            print(f"{stage:<16} " + " ".join(number(r[k], w) for k, w in (("miou", 8), ("miou16", 8), ("miou13", 8),
                                                                          ("miou13_published", 9)))
                  + "".join(f" {number(r['conditions'][name]['miou'], 9)}" for name in conditions))
        print(f"\ntotal {total:.0f} s; per-class IoU in {os.path.join(self.out, 'results.json')}")

    # -- the stages -----------------------------------------------------------------------------------
    def run(self):
        c, a = self.cfg, self.args
        if a.fresh and os.path.isdir(self.out):
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
                       "--num-train", str(c["num_train"]), "--num-val", str(c["num_val"]), "--size", c["data_size"],
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

        from generate_pseudo_labels import main as pseudo
        pseudo_root = os.path.join(self.out, "pseudo_label")
        self.step("pseudo-labels (the black box's predictions, by onnxruntime)", "generate_pseudo_labels.py",
                  [*self.target_args(), "--restore-from", black_box, "--save", pseudo_root,
                   "--input-size", c["input_size"], "--batch-size", "10", "--num-workers", str(a.num_workers),
                   "--accelerator", "cpu"], pseudo)

        # Strict black-box: the target model starts without the provider's weights.
        baseline = self.train("baseline", "baseline", c["baseline_steps"], c["lr"],
                              ["--pseudo-label-root", pseudo_root])

        from construct_hard_patch import main as mine
        patches = os.path.join(self.out, "hard_patches")
        self.step("hard patches (from the pseudo-labels alone)", "construct_hard_patch.py",
                  [*self.target_args(labels=False), "--pseudo-label-root", pseudo_root, "--save", patches, "--rare-classes", c["rare_classes"],
                   "--input-size", c["input_size"], "--grid", "4x4", "--num-workers", str(a.num_workers)], mine)

        rounds = self.smhm_rounds(baseline, patches)

        stages = {"source_only": provider, "baseline": baseline,
                  **{f"smhm_round_{k}": w for k, w in enumerate(rounds, 1)}}
        if a.target != "darkzurich":  # Dark Zurich has no train labels to train an oracle on
            stages["oracle"] = self.train("oracle", "basic", c["oracle_steps"], c["lr"], [])
        results = self.evaluate(stages)
        self.picture(stages, ["source_only", "baseline", f"smhm_round_{len(rounds)}"])
        total = round(time.time() - start, 1)
        atomic_write_text(os.path.join(self.out, "results.json"), json.dumps(
            {"stages": results, "seconds": self.timings, "total_seconds": total,
             "settings": dict(self.cfg, seed=a.seed, student=a.student, target=a.target)}, indent=2))
        self.table(results, total)
        return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    demo = Demo(args)
    with folder_lock(demo.out, "--out"):  # one demo at a time in a folder (utils/run_folder.py)
        demo.run()
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
