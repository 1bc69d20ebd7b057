"""The GPU check: this toolkit measured on the GPU at hand, and the whole method run end to end there.

    make gpu-check [OUT=DIR]                   # the same as the next line, in the project's environment
    python -m tools.gpu_check --out DIR        # on any machine with a CUDA GPU and the requirements
    python -m tools.gpu_check --tiny --out DIR # a CPU rehearsal in a minute or two (tests/test_gpu_check.py)

Parts, in this order, each a process of its own with a time limit; a part that fails or runs out of
time is recorded and the next one starts:

1. ``benchmark``: ``tools/benchmark.py`` at the check's size (1024x512) and batch 4, every stage,
   the published configuration against the fast one;
2. ``method``: the whole method end to end on synthetic data at the check's size, on the GPU in
   bf16 and channels-last: the synthetic benchmark (``tools/synthetic.py``), train ids, the provider
   (source_only) exported to ONNX, pseudo-labels from that file, baseline, hard patches, smhm, test mode;
3. ``step_check``: ``--compile step`` (and on CUDA ``--compile-mode reduce-overhead``) against the
   eager step, the losses and weights of a few smhm steps in float32; and the host-device
   synchronisations inside training steps (``torch.cuda.set_sync_debug_mode``), eager and compiled;
4. ``compiled``: ``tools/benchmark.py``'s training stages (smhm first) with ``--compile step``
   against fast; after the others, as compiling DeepLabv2-R101 takes minutes;
5. ``compiled_more``: the same with ``--compile step --compile-mode reduce-overhead`` (CUDA graphs)
   and ``--compile network``; last, with what the other parts left of the time (the inductor cache
   on disk, filled by part 4, shortens its compiling).

Time limits: the whole check takes at most ``--budget`` seconds (default 900, fifteen minutes); each
part is given its planned share (:data:`PLANNED`, scaled to the budget) plus what earlier parts left,
and is stopped at its limit. Written to ``--out`` (default ``experiments/gpu_check``), plain files:
``gpu-<date>-<part>.json`` for each part, ``gpu-<date>-check.json`` (device, date, versions, every
part's status, seconds and command) and ``gpu-<date>-check.log`` (everything the parts printed).
JSON files are rewritten as a part goes, so a part stopped at its limit keeps what it measured.

``--tiny`` rehearses all of it on a CPU: DeepLabv2-tiny at 64x32 (or ``--size``), a few images and
steps, fewer compiled variants, and torch.compile's ``eager`` backend (graph capture without code
generation: the plumbing, not the numbers, in seconds instead of minutes; tests/test_compile.py
checks the numbers of compiled steps).
"""
import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings

from utils.cli import ArgumentParser, UserError, at_least, input_size, run
from utils.io import atomic_write_text

PARTS = ("benchmark", "method", "step_check", "compiled", "compiled_more")
# Seconds each part is planned to take with the default budget on one recent GPU; a part may also use
# what earlier parts left.
PLANNED = {"benchmark": 200, "method": 170, "step_check": 130, "compiled": 250, "compiled_more": 100}
MIN_PART_S = 20  # a part is not started with less
BUDGET_S = 900  # the whole check, fifteen minutes
TINY_BUDGET_S = 400
BENCHMARK_CONFIGS = "published,fast"
COMPILED_CONFIGS = "fast,compile_step"
MORE_COMPILED_CONFIGS = "compile_step_cudagraphs,compile_network"
MORE_COMPILED_CONFIGS_TINY = "compile_network"  # no CUDA graphs on a CPU


def plan(opts):
    """What each part runs: the GPU check, or the CPU rehearsal (``--tiny``)."""
    tiny = opts.tiny
    return {
        "accelerator": opts.accelerator,
        "size": "x".join(map(str, opts.size)),
        "arch": "deeplabv2_tiny" if tiny else "deeplabv2_r101",
        "batch_size": 2 if tiny else 4,
        "steps": 1 if tiny else 10,  # timed benchmark steps per configuration
        "warmup": 1 if tiny else 3,
        "images": (4, 4, 2) if tiny else (16, 16, 8),  # synthetic source, target train, target val
        "train_steps": 2 if tiny else 4,  # optimiser steps of each training stage of the method
        "check_steps": 2 if tiny else 4,  # smhm steps of the step check
        "check_arch": "deeplabv2_tiny",  # the step check compares code paths, not networks
        "compile_backend": "eager" if tiny else "inductor",
        "num_workers": 0 if tiny else None,
        "threads": 1 if tiny else None,
    }


def part_paths(out, date):
    return {part: os.path.join(out, f"gpu-{date}-{part}.json") for part in (*PARTS, "check")} | \
        {"log": os.path.join(out, f"gpu-{date}-check.log")}


def write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def one_line(err):
    return " ".join(f"{type(err).__name__}: {err}".split())[:2000]


# -- the driver -----------------------------------------------------------------------------------------

def benchmark_argv(p, configs, stages, json_path, cuda):
    argv = [sys.executable, "-m", "tools.benchmark", "--accelerator", "cuda" if cuda else "cpu", "--arch", p["arch"],
            "--input-size", p["size"], "--batch-size", str(p["batch_size"]), "--steps", str(p["steps"]),
            "--warmup", str(p["warmup"]), "--configs", configs, "--stages", stages, "--keep-going",
            "--compile-backend", p["compile_backend"], "--json", json_path]
    if p["num_workers"] is not None:
        argv += ["--num-workers", str(p["num_workers"])]
    if p["threads"] is not None:
        argv += ["--threads", str(p["threads"])]
    return argv


def commands(opts, p, paths, cuda):
    own = [sys.executable, "-m", "tools.gpu_check", "--size", p["size"], "--accelerator", "cuda" if cuda else "cpu"]
    if opts.tiny:
        own.append("--tiny")
    return {
        "benchmark": benchmark_argv(p, BENCHMARK_CONFIGS, "baseline,smhm,pseudo_label,val,data,resize", paths["benchmark"], cuda),
        "method": own + ["--part", "method", "--part-json", paths["method"]],
        "step_check": own + ["--part", "step_check", "--part-json", paths["step_check"]],
        "compiled": benchmark_argv(p, COMPILED_CONFIGS, "smhm,baseline", paths["compiled"], cuda),
        "compiled_more": benchmark_argv(p, MORE_COMPILED_CONFIGS if cuda else MORE_COMPILED_CONFIGS_TINY,
                                        "smhm,baseline", paths["compiled_more"], cuda),
    }


def run_part(argv, timeout, log):
    """Run one part as its own process group, its output appended to ``log`` and echoed; returns
    (status, seconds)."""
    start = time.time()
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def copy():
        for line in process.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write("    " + line if line.strip() else line)
            sys.stdout.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
        status = "ok" if code == 0 else f"failed (exit code {code})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # the part and its loader workers
        process.wait()
        status = f"timed out after {timeout:.0f} s"
    reader.join(timeout=10)
    return status, round(time.time() - start, 1)


def drive(opts):
    from tools.benchmark import device_info

    import torch

    cuda = opts.accelerator == "cuda" or (opts.accelerator == "auto" and torch.cuda.is_available())
    if opts.accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("--accelerator cuda: no CUDA device is available")
    opts.accelerator = "cuda" if cuda else "cpu"
    p = plan(opts)
    os.makedirs(opts.out, exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    paths = part_paths(opts.out, date)
    budget = opts.budget or (TINY_BUDGET_S if opts.tiny else BUDGET_S)
    start = time.time()
    deadline = start + budget
    summary = {"device": device_info(torch.device("cuda" if cuda else "cpu")), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "budget_s": budget, "settings": p, "parts": {}}
    parts = [part for part in PARTS if part in opts.parts]
    argvs = commands(opts, p, paths, cuda)
    scale = budget / BUDGET_S
    with open(paths["log"], "a") as log:
        for i, part in enumerate(parts):
            later = sum(PLANNED[q] * scale for q in parts[i + 1:])
            left = deadline - time.time()
            timeout = left - later if i + 1 < len(parts) else left
            entry = summary["parts"][part] = {"command": " ".join(argvs[part]), "json": os.path.basename(paths[part])}
            if timeout < MIN_PART_S * min(1.0, scale):
                entry.update(status=f"skipped: {left:.0f} s of the budget left", seconds=0)
            else:
                print(f"== {part} (at most {timeout:.0f} s)", flush=True)
                status, seconds = run_part(argvs[part], timeout, log)
                entry.update(status=status, seconds=seconds)
                print(f"== {part}: {status}, {seconds} s", flush=True)
            summary["seconds"] = round(time.time() - start, 1)
            write_json(paths["check"], summary)
    report(summary, paths)
    return 0 if all(e["status"] == "ok" for e in summary["parts"].values()) else 1


def report(summary, paths):
    """The summary, last in the output: each part's status, the benchmark tables, the checks."""
    from tools.benchmark import format_table

    print(f"\ngpu check on {summary['device'].get('name')} (torch {summary['device'].get('torch')}), "
          f"{summary['seconds']} s of {summary['budget_s']} s")
    for part, entry in summary["parts"].items():
        print(f"  {part:<11} {entry['status']}, {entry['seconds']} s")
    for part in ("benchmark", "compiled", "compiled_more"):
        try:
            with open(paths[part]) as f:
                print(f"\n{part}:\n" + format_table(json.load(f)))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for part in ("method", "step_check"):
        try:
            with open(paths[part]) as f:
                print(f"\n{part}: " + json.dumps(json.load(f).get("verdict"), default=str))
        except (OSError, ValueError, AttributeError):
            pass
    print("\nwritten: " + ", ".join(os.path.basename(paths[k]) for k in ("check", "log", *summary["parts"])))


# -- part 2: the method end to end ------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_checkpoint(folder):
    """The best checkpoint a training run kept (``checkpoint-step_<S>-<score>.ckpt``, one per run)."""
    found = sorted(glob.glob(os.path.join(folder, "checkpoint-step_*.ckpt")))
    if not found:
        raise RuntimeError(f"no best checkpoint in {folder}")
    return found[-1]


def last_mean_iou(record):
    with open(record, newline="") as f:
        rows = list(csv.reader(f))
    return float(rows[-1][rows[0].index("Mean")])


def run_method(opts, path):
    """Every stage of the method on a synthetic benchmark at the check's size, each entry point run as
    a user runs it (its own process); stops at the first stage that fails (the later ones need its
    output)."""
    p = plan(opts)
    cuda = opts.accelerator == "cuda"
    root = tempfile.mkdtemp(prefix="gpu-check-method-")
    data, cityscapes = os.path.join(root, "data"), os.path.join(root, "data", "cityscapes")
    lists, runs, weights = (os.path.join(root, name) for name in ("lists", "runs", "weights"))
    os.makedirs(lists)  # empty: every split is scanned
    os.makedirs(weights)
    num_source, num_train, num_val = p["images"]
    hardware = ["--accelerator", "gpu" if cuda else "cpu", "--devices", "1",
                "--precision", "bf16-mixed" if cuda else "32-true"]
    workers = ["--num-workers", str(p["num_workers"])] if p["num_workers"] is not None else []
    size, batch, steps = p["size"], str(p["batch_size"]), str(p["train_steps"])
    record = {"settings": {**p, "channels_last": "on" if cuda else "off", "precision": hardware[-1]},
              "stages": [], "verdict": None}

    def stage(name, script, argv):
        command = [sys.executable, *script.split(), *argv]
        entry = {"stage": name, "command": " ".join(command)}
        record["stages"].append(entry)
        print(f"-- {name}", flush=True)
        start = time.time()
        code = subprocess.call(command, cwd=REPO)
        entry.update(status="ok" if code == 0 else f"failed (exit code {code})", seconds=round(time.time() - start, 1))
        if code:
            record["verdict"] = f"failed at {name} (exit code {code})"
        write_json(path, record)
        if code:
            raise SystemExit(code)

    def training(module, extra):
        stage(module, "main.py",
              ["--module-name", module, "--mode", "train", "--image-root", os.path.join(cityscapes, "leftImg8bit"),
               "--label-root", os.path.join(cityscapes, "gtFine2"), "--list-root", lists, "--arch", p["arch"],
               "--input-size", size, "--train-batch-size", batch, "--val-batch-size", batch, *workers, *hardware,
               "--channels-last", "on" if cuda else "off", "--log-tb-dir", runs, "--experiment-name", module,
               "--max-steps", steps, "--val-interval", steps, "--lr-schedule", "constant", "--log-interval", "1",
               "--visualize-interval", steps, *extra])
        target = os.path.join(weights, f"{module}.pth")
        stage(f"{module}: extract", "extract_model_state_dict.py",
              ["--pl-weight-path", best_checkpoint(os.path.join(runs, module, module)), "--model-weight-keyname", "net",
               "--save-path", target])
        return target

    stage("synthetic benchmark", "-m tools.synthetic",
          ["--root", data, "--seed", "0", "--num-source", str(num_source), "--num-train", str(num_train),
           "--num-val", str(num_val), "--size", size])
    stage("train ids", "utils/transfer_trainid.py",
          ["--dataset", "cityscapes", "--ori-label-root", os.path.join(cityscapes, "gtFine"),
           "--dst-label-root", os.path.join(cityscapes, "gtFine2")])
    provider = training("source_only", ["--source-dataset", "gta5", "--source-root", os.path.join(data, "gta5")])
    onnx = os.path.join(weights, "source_only.onnx")
    stage("provider: export to ONNX", "-m tools.export_provider",
          ["--restore-from", provider, "--arch", p["arch"], "--input-size", size, "--onnx", onnx])
    pseudo = os.path.join(root, "pseudo_label")
    stage("pseudo-labels", "generate_pseudo_labels.py",
          ["--data-dir", cityscapes, "--restore-from", onnx, "--save", pseudo, "--input-size", size,
           "--batch-size", batch, *workers, *hardware])
    baseline = training("baseline", ["--pseudo-label-root", pseudo])
    patches = os.path.join(root, "hard_patches")
    stage("hard patches", "construct_hard_patch.py",
          ["--data-dir", cityscapes, "--pseudo-label-root", pseudo, "--save", patches, "--rare-classes", "auto",
           "--input-size", size, "--grid", "4x4", *workers])
    student = training("smhm", ["--restore-from", baseline, "--hard-patches-root", patches, "--position-beta", "0.25"])
    stage("test", "main.py",
          ["--module-name", "basic", "--mode", "test", "--image-root", os.path.join(cityscapes, "leftImg8bit"),
           "--label-root", os.path.join(cityscapes, "gtFine2"), "--list-root", lists, "--arch", p["arch"],
           "--input-size", size, "--test-batch-size", batch, *workers, *hardware, "--log-tb-dir", runs,
           "--experiment-name", "test_smhm", "--restore-from", student])
    record["test_miou"] = last_mean_iou(os.path.join(runs, "basic", "test_smhm", "miou_record.csv"))
    stage("predict", "main.py",
          ["--mode", "predict", "--target-dataset", "folder", "--data-dir", os.path.join(cityscapes, "leftImg8bit", "val"),
           "--restore-from", student, "--arch", p["arch"], "--input-size", size, "--test-batch-size", batch, *workers,
           *hardware, "--log-tb-dir", runs, "--save-predictions", os.path.join(root, "predictions")])
    record["verdict"] = f"every stage ran on {'CUDA, bf16, channels-last' if cuda else 'CPU'}"
    write_json(path, record)
    return 0


# -- part 3: the compiled step against the eager one, and synchronisations --------------------------------

def _sync_site(message, stack):
    """Where a synchronising call came from: the innermost frame of this project, else of Lightning."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [f for f in stack if f.filename.startswith(root) and "/tools/gpu_check.py" not in f.filename]
    frames = frames or [f for f in stack if "lightning" in f.filename]
    frame = frames[-1] if frames else stack[-1]
    return f"{os.path.relpath(frame.filename, root) if frame.filename.startswith(root) else frame.filename}:" \
           f"{frame.lineno} ({frame.name}): {message[:80]}"


def train_smhm(argv, batch, steps, cuda, watch_syncs):
    """``steps`` smhm steps on ``batch`` in a Trainer; returns (losses, weights, syncs per site)."""
    import torch
    from pytorch_lightning.callbacks import Callback
    from torch.utils.data import DataLoader

    from modules import MODULES
    from modules.config import HardwareConfig, parse_args
    from tools.benchmark import RepeatedBatch
    from utils.lightning import make_trainer

    class StepRecorder(Callback):
        """Each step's loss (kept on the device until the end), and with ``watch_syncs`` every
        synchronising CUDA call from the second step on (``torch.cuda.set_sync_debug_mode``; the module's
        batch-end hook, the EMA update, counts in its step)."""

        def __init__(self, watch_syncs):
            self.watch_syncs, self.losses, self.watching = watch_syncs, [], False

        def _watch(self, on):
            if self.watch_syncs and on != self.watching:
                torch.cuda.set_sync_debug_mode(1 if on else 0)
                self.watching = on

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._watch(batch_idx >= 1)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].detach().float().clone())

        def on_train_end(self, trainer, pl_module):
            self._watch(False)

    config = parse_args(argv)
    torch.manual_seed(0)
    module = MODULES["smhm"](config)
    recorder = StepRecorder(watch_syncs)
    trainer = make_trainer(HardwareConfig(accelerator="gpu" if cuda else "cpu", devices=1, precision="32-true"),
                           max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                           callbacks=[recorder])
    syncs = {}
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "synchroniz" in text.lower():
            site = _sync_site(text, traceback.extract_stack()[:-1])
            syncs[site] = syncs.get(site, 0) + 1
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        try:
            trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, steps), batch_size=None))
        finally:
            warnings.showwarning = original
    losses = [float(v) for v in recorder.losses]
    weights = {k: v.detach().float().cpu() for k, v in module.state_dict().items() if k.startswith(("net.", "ema_net."))}
    return losses, weights, syncs


def compare(reference, other):
    (losses_a, weights_a, _), (losses_b, weights_b, _) = reference, other
    loss = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses_a, losses_b))
    weight = max(float((weights_a[k] - weights_b[k]).abs().max()) for k in weights_a)
    scale = max(float(v.abs().max()) for v in weights_a.values())
    finite = all(map(lambda x: x == x and abs(x) != float("inf"), losses_b))
    return {"max_relative_loss_difference": loss, "max_weight_difference": weight, "largest_weight": scale,
            "finite": finite}


def run_step_check(opts, path):
    """``--compile step`` against eager on this device (float32; on CUDA convolutions in TF32, as
    PyTorch's default), and the synchronising calls per step."""
    import torch

    from models.deeplabv2 import get_deeplabv2
    from utils import compile as compile_utils
    from utils.labels import IGNORE_INDEX, NUM_CLASSES

    p = plan(opts)
    compile_utils.BACKEND = p["compile_backend"]
    cuda = opts.accelerator == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    width, height = opts.size
    workdir = tempfile.mkdtemp(prefix="gpu-check-step-")
    weights = os.path.join(workdir, "weights.pth")
    torch.manual_seed(0)
    torch.save(get_deeplabv2(NUM_CLASSES, arch=p["check_arch"]).state_dict(), weights)
    generator = torch.Generator().manual_seed(0)
    n = p["batch_size"]
    ph, pw = max(8, height // 4), max(8, width // 4)
    labels = torch.randint(0, NUM_CLASSES, (n, ph, pw), generator=generator)
    labels[:, : ph // 8] = IGNORE_INDEX
    batch = {"target": {"image": torch.rand(n, 3, height, width, generator=generator) * 255 - 120},
             "patches": {"image": torch.rand(n, 3, ph, pw, generator=generator) * 255 - 120, "label": labels}}
    batch = {k: {name: t.to(device) for name, t in v.items()} for k, v in batch.items()}
    base = ["--module-name", "smhm", "--arch", p["check_arch"], "--input-size", p["size"], "--train-batch-size", str(n),
            "--restore-from", weights, "--accelerator", "gpu" if cuda else "cpu", "--devices", "1",
            "--channels-last", "on" if cuda else "off", "--confidence-threshold", "0",  # every pixel counts
            "--log-tb-dir", os.path.join(workdir, "experiments")]
    variants = {"eager": [], "compile_step": ["--compile", "step"]}
    if cuda:
        variants["compile_step_cudagraphs"] = ["--compile", "step", "--compile-mode", "reduce-overhead"]
    record = {"settings": {**p, "precision": "32-true", "compile_backend": compile_utils.BACKEND}, "variants": {},
              "verdict": None}
    results = {}
    for name, extra in variants.items():
        print(f"-- {name}", flush=True)
        start = time.time()
        try:
            results[name] = train_smhm(base + extra, batch, p["check_steps"], cuda, watch_syncs=cuda)
        except Exception as err:  # noqa: BLE001 - recorded, the next variant runs
            record["variants"][name] = {"error": one_line(err), "seconds": round(time.time() - start, 1)}
            write_json(path, record)
            continue
        losses, _, syncs = results[name]
        entry = {"losses": losses, "seconds": round(time.time() - start, 1),
                 "syncs_per_step": sum(syncs.values()) / max(1, p["check_steps"] - 1) if cuda else None,
                 "sync_sites": syncs if cuda else "not measured on a CPU"}
        if name != "eager" and "eager" in results:
            entry.update(compare(results["eager"], results[name]))
        record["variants"][name] = entry
        write_json(path, record)
    verdicts = []
    for name, entry in record["variants"].items():
        if "error" in entry:
            verdicts.append(f"{name}: failed")
        elif name != "eager":
            # float32 rounding through a few steps, TF32 convolutions on CUDA: well under 1e-3
            same = entry["finite"] and entry["max_relative_loss_difference"] < 1e-3
            verdicts.append(f"{name}: {'same as eager' if same else 'DIFFERS from eager'} "
                            f"(loss {entry['max_relative_loss_difference']:.1e}, weights {entry['max_weight_difference']:.1e})")
        if cuda and "error" not in entry:
            verdicts.append(f"{name}: {entry['syncs_per_step']:.1f} synchronisations per step")
    record["verdict"] = "; ".join(verdicts)
    write_json(path, record)
    return 0


# -- command line ---------------------------------------------------------------------------------------

def part_list(text):
    parts = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or text!r}; choose from {', '.join(PARTS)}")
    return parts


def build_parser():
    parser = ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0],
                            epilog="See docs/benchmarks.md, 'The GPU check'.")
    parser.add_argument("--out", default=os.path.join("experiments", "gpu_check"),
                        help="folder of the JSON files and the log (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true",
                        help="the CPU rehearsal: DeepLabv2-tiny at 64x32, a few images and steps, graph capture "
                             "without code generation for the compiled parts")
    parser.add_argument("--size", type=input_size, default=None, metavar="WxH",
                        help="image and input size of every part (default: 1024x512, or 64x32 with --tiny)")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = cuda when available (default: %(default)s)")
    parser.add_argument("--budget", type=at_least(10), default=None, metavar="SECONDS",
                        help=f"time for all parts together (default: {BUDGET_S}, {TINY_BUDGET_S} with --tiny)")
    parser.add_argument("--parts", type=part_list, default=list(PARTS), metavar="P,P,...",
                        help="which parts, in their order: " + ", ".join(PARTS) + " (default: all)")
    parser.add_argument("--part", choices=("method", "step_check"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part-json", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    opts = build_parser().parse_args(argv)
    if opts.size is None:
        opts.size = (64, 32) if opts.tiny else (1024, 512)
    if opts.part is not None:  # one part, in this process (the driver runs each part so)
        import torch

        if opts.accelerator == "auto":
            opts.accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        return {"method": run_method, "step_check": run_step_check}[opts.part](opts, opts.part_json)
    return drive(opts)


if __name__ == "__main__":
    run(main, sys.argv[1:])
