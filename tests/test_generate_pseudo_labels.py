"""generate_pseudo_labels.py (stage 2): layout, labels equal to an independent flip-augmented argmax,
the easy/hard split, the ground-truth report, resuming after a real kill, bad input, several processes.

The two-process test starts real DDP processes (gloo) and takes about half a minute on two cores, so
it runs only with ``RUN_DDP_TESTS=1`` in the environment.
"""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import generate_pseudo_labels
from models.deeplabv2 import get_deeplabv2
from tests.fixtures import make_cityscapes, pil_resized_bgr, pil_resized_label
from utils.cli import run
from utils.labels import colorize
from modules.prediction import RecordFile, read_records, shard_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
INPUT = (64, 32)
SUFFIX = "_gtFine_labelIds.png"


@pytest.fixture(autouse=True)
def one_thread():
    # Kernels sum in an order that depends on the thread count; the comparisons below are exact, and
    # the subprocesses they compare with run with OMP_NUM_THREADS=1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_weights(path, num_classes=19, seed=0):
    torch.manual_seed(seed)
    net = get_deeplabv2(num_classes=num_classes, arch="deeplabv2_tiny")
    with torch.no_grad():  # a sharper head, so that the argmax varies over the image
        for conv in net.layer5.conv2d_list:
            conv.weight.mul_(100)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    make_cityscapes(str(root / "cs"), train=6, val=1, size=(128, 64))
    return {"data": str(root / "cs"), "weights": make_weights(str(root / "w.pth")),
            "weights7": make_weights(str(root / "w7.pth"), num_classes=7)}


def args_for(world, save, *extra, batch_size=2):
    return ["--data-dir", world["data"], "--restore-from", world["weights"], "--save", str(save),
            "--arch", "deeplabv2_tiny", "--input-size", "x".join(map(str, INPUT)), "--num-workers", "0",
            "--batch-size", str(batch_size), "--accelerator", "cpu", "--devices", "1", *extra]


def run_script(argv):
    with pytest.raises(SystemExit) as exit_info:
        run(generate_pseudo_labels.main, argv)
    return exit_info.value.code


def image_paths(world):
    folder = os.path.join(world["data"], "leftImg8bit", "train", "aachen")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))]


def name_of(path):
    return "aachen/" + os.path.basename(path)[:-len("_leftImg8bit.png")]


def network_input(path):
    image = pil_resized_bgr(cv2.imread(path, cv2.IMREAD_COLOR), INPUT)  # as published (--resize-backend pil)
    return torch.from_numpy((image.astype(np.float32) - MEAN).transpose(2, 0, 1).copy())


def reference_logits(world, paths, scales=(1.0,), weights=None):
    """net(x) + flip(net(flip(x))) at the input size, averaged over scales, computed here directly."""
    net = get_deeplabv2(num_classes=19, arch="deeplabv2_tiny")
    net.load_state_dict(torch.load(weights or world["weights"]))
    net.eval()
    x = torch.stack([network_input(p) for p in paths])
    size = (INPUT[1], INPUT[0])
    total = 0
    with torch.no_grad():
        for s in scales:
            xs = x if s == 1.0 else F.interpolate(x, size=(round(size[0] * s), round(size[1] * s)),
                                                  mode="bilinear", align_corners=False)
            total = total + net(xs, size=size) + net(xs.flip(-1), size=size).flip(-1)
    return total / len(scales)


def tree(folder):
    """{relative path: bytes} of the results (the resume state left out)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != ".state"]
        for f in filenames:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, folder)] = handle.read()
    return files


def test_records_survive_a_torn_last_line(tmp_path):
    folder = tmp_path / "state"
    records = RecordFile(str(folder / "0.tsv"))
    records.append([("a/x", "0.5", "1,2"), ("a/y", "0.25", "3,4")])
    records.close()
    with open(folder / "0.tsv", "a") as f:
        f.write("a/z\t0.12")  # killed in the middle of a line: an entropy that parses, but is cut
    assert read_records(str(folder)) == {"a/x": ["0.5", "1,2"], "a/y": ["0.25", "3,4"]}
    records = RecordFile(str(folder / "0.tsv"))  # a resumed run cuts the torn line off first
    records.append([("a/z", "0.125", "5,6"), ("a/x", "0.5", "1,2")])
    records.close()
    assert (folder / "0.tsv").read_text().count("\n") == 4
    assert read_records(str(folder)) == {"a/x": ["0.5", "1,2"], "a/y": ["0.25", "3,4"], "a/z": ["0.125", "5,6"]}


def test_batches_are_the_same_for_any_number_of_processes():
    names = [f"c/{k}" for k in range(7)]
    single = shard_batches(names, 2)
    assert single == [[0, 1], [2, 3], [4, 5], [6]]
    for world in (2, 3, 5):
        dealt = [b for rank in range(world) for b in shard_batches(names, 2, rank, world)]
        assert sorted(dealt) == single  # every image once, in the same batch company
    # Finished batches are left out; a batch with one unfinished image is predicted whole.
    assert shard_batches(names, 2, done={"c/0", "c/1", "c/2"}) == [[2, 3], [4, 5], [6]]
    assert shard_batches(names, 2, rank=1, world_size=2, done={"c/2", "c/3"}) == [[6]]


def test_published_defaults():
    from modules.pseudo_labels import PseudoLabelRun, layout_of
    from utils.config import build

    args = generate_pseudo_labels.build_parser().parse_args([])
    layout = layout_of(build(PseudoLabelRun, args).target)  # --data-dir left out: the target's default
    assert args.target_dataset == "cityscapes" and layout.images == "./data/Cityscapes/leftImg8bit"
    assert args.data_dir is None and args.restore_from == "./pretrained/gta5_only.pth"
    assert args.save == "./experiments/gta5_pseudo_label/" and args.num_classes == 19
    assert args.split == "train" and args.input_size == (1024, 512) and args.arch == "deeplabv2_r101"
    assert args.flip and not args.multiscale and args.precision == "32-true" and args.resize_backend == "pil"


def test_labels_ranking_and_report(world, tmp_path, capsys):
    save = tmp_path / "out"
    assert run_script(args_for(world, save)) == 0
    paths = image_paths(world)
    names = [name_of(p) for p in paths]
    # The run predicts batches of two in list order; the reference does the same (kernels may
    # depend on the batch), so the comparison can be exact.
    logits = torch.cat([reference_logits(world, paths[i:i + 2]) for i in range(0, len(paths), 2)])
    labels = logits.argmax(1).numpy().astype(np.uint8)
    log_p = F.log_softmax(logits, 1)
    entropy = (-(log_p.exp() * log_p).sum(1)).double().mean((1, 2)).numpy()
    assert len(np.unique(labels)) > 1

    for name, label in zip(names, labels):
        ids = cv2.imread(str(save / "label_ids" / "train" / (name + SUFFIX)), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint8 and ids.shape == (INPUT[1], INPUT[0])
        np.testing.assert_array_equal(ids, label)
        color = cv2.imread(str(save / "label_color" / "train" / (name + SUFFIX)), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(color[:, :, ::-1], colorize(label))

    rows = {}
    for kind in ("easy", "hard"):
        lines = (save / f"{kind}.txt").read_text().splitlines()
        rows[kind] = [(line.split(" ")[0], float(line.split(" ")[1])) for line in lines]
        values = [v for _, v in rows[kind]]
        assert values == sorted(values)
    assert len(rows["easy"]) == len(names) // 2 and len(rows["hard"]) == len(names) - len(names) // 2
    assert max(v for _, v in rows["easy"]) <= min(v for _, v in rows["hard"])
    recorded = dict(rows["easy"] + rows["hard"])
    assert sorted(recorded) == names
    # The run folds BatchNorm into the convolutions: float rounding, which this sharp head's tiny
    # entropies magnify; the unfolded run matches to the last digits (test_folded_batchnorm_...).
    np.testing.assert_allclose([recorded[n] for n in names], entropy, rtol=1e-3)

    # Ground truth (gtFine2, 128x64) is compared at its own resolution: the label upsampled nearest.
    summary = json.loads((save / "summary.json").read_text())
    assert (summary["provider_output"], summary["flip"], summary["complementary_below"]) == ("logits", True, None)
    confusion = np.zeros((19, 19), np.int64)
    for name, label in zip(names, labels):
        truth = cv2.imread(os.path.join(world["data"], "gtFine2", "train", name + SUFFIX), cv2.IMREAD_UNCHANGED)
        up = pil_resized_label(label, (truth.shape[1], truth.shape[0]))
        keep = truth != 255
        np.add.at(confusion, (truth[keep].astype(int), up[keep].astype(int)), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    miou = 100 * np.mean(tp[union > 0] / union[union > 0])
    assert summary["ground_truth"]["miou"] == pytest.approx(miou, abs=1e-3)
    iou = {c: 100 * tp[c] / union[c] for c in range(19) if union[c] > 0}
    published13 = [iou[c] for c in iou if c not in (4, 5, 6, 9, 14, 16)]  # fence, pole, light; terrain, truck, train
    assert summary["ground_truth"]["miou13_published"] == pytest.approx(np.mean(published13), abs=1e-3)
    share = np.bincount(labels.ravel(), minlength=19) / labels.size
    assert list(summary["class_pixel_share"].values()) == pytest.approx(share, abs=1e-6)
    out = capsys.readouterr().out
    assert "6 labelled now, 0 already done" in out and "mIoU" in out

    # A rerun finds everything done and changes nothing.
    before = tree(save)
    assert run_script(args_for(world, save)) == 0
    assert "0 labelled now, 6 already done" in capsys.readouterr().out
    assert tree(save) == before


def recorded_entropies(save):
    return {line.split(" ")[0]: float(line.split(" ")[1])
            for kind in ("easy", "hard") for line in (save / f"{kind}.txt").read_text().splitlines()}


def test_folded_batchnorm_gives_the_same_pseudo_labels(world, tmp_path, monkeypatch):
    """BatchNorm with real statistics folded into the convolutions (the default) gives the labels of
    the network as it is (``--no-fold-bn``), whose labels and entropies are the reference's exactly."""
    import modules.prediction

    torch.manual_seed(1)
    state = torch.load(world["weights"])
    for bn in [k[:-len("running_mean")] for k in state if k.endswith("running_mean")]:
        # A trained network's BatchNorm: statistics and affine parameters other than 0 and 1.
        state[bn + "running_mean"] = torch.randn_like(state[bn + "running_mean"]) * 0.3
        state[bn + "running_var"] = torch.rand_like(state[bn + "running_var"]) + 0.5
        state[bn + "weight"] = torch.rand_like(state[bn + "weight"]) + 0.5
        state[bn + "bias"] = torch.randn_like(state[bn + "bias"]) * 0.2
    weights = str(tmp_path / "bn.pth")
    torch.save(state, weights)
    folded, fold = [], modules.prediction.fold_batchnorm

    def spy(net):
        folded.append(fold(net))
        return folded[-1]

    monkeypatch.setattr(modules.prediction, "fold_batchnorm", spy)
    runs = {"folded": tmp_path / "folded", "as_is": tmp_path / "as_is"}
    assert run_script(args_for(world, runs["folded"], "--restore-from", weights)) == 0
    assert run_script(args_for(world, runs["as_is"], "--restore-from", weights, "--no-fold-bn")) == 0
    assert len(folded) == 1 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded[0].modules())
    label_files = {k: v for k, v in tree(runs["folded"]).items() if "label_" in k}
    assert len(label_files) == 12 and label_files == {k: v for k, v in tree(runs["as_is"]).items() if "label_" in k}
    folded_entropy, entropy = recorded_entropies(runs["folded"]), recorded_entropies(runs["as_is"])
    assert sorted(folded_entropy) == sorted(entropy)
    np.testing.assert_allclose([folded_entropy[n] for n in entropy], list(entropy.values()), rtol=1e-3)

    paths = image_paths(world)
    logits = torch.cat([reference_logits(world, paths[i:i + 2], weights=weights) for i in range(0, len(paths), 2)])
    log_p = F.log_softmax(logits, 1)
    reference = (-(log_p.exp() * log_p).sum(1)).double().mean((1, 2)).numpy()
    np.testing.assert_allclose([entropy[name_of(p)] for p in paths], reference, rtol=1e-9)
    for path, label in zip(paths, logits.argmax(1).numpy()):
        ids = cv2.imread(str(runs["as_is"] / "label_ids" / "train" / (name_of(path) + SUFFIX)), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(ids, label)
    assert len(np.unique(logits.argmax(1).numpy())) > 1


def test_multiscale(world, tmp_path):
    save = tmp_path / "ms"
    assert run_script(args_for(world, save, "--multiscale", "--scales", "0.5,1.0", batch_size=1)) == 0
    for path in image_paths(world)[:2]:
        expected = reference_logits(world, [path], scales=(0.5, 1.0)).argmax(1)[0].numpy()
        ids = cv2.imread(str(save / "label_ids" / "train" / (name_of(path) + SUFFIX)), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(ids, expected)


SLOW_WRITER = """
import runpy, sys, time
import modules.pseudo_labels as pseudo_labels
write_batch = pseudo_labels.PseudoLabelWriter.write_batch
def slow_write_batch(self, prediction, batch):
    rows = write_batch(self, prediction, batch)
    time.sleep(0.3)  # the files exist, their record not yet: the delicate moment to be killed
    return rows
pseudo_labels.PseudoLabelWriter.write_batch = slow_write_batch
sys.argv = ["generate_pseudo_labels.py"] + sys.argv[1:]
runpy.run_path("generate_pseudo_labels.py", run_name="__main__")
"""


def single_thread_env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def test_killed_run_resumes_to_identical_output(world, tmp_path, capsys):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_script(args_for(world, reference, batch_size=1)) == 0

    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *args_for(world, resumed, batch_size=1)],
                               cwd=ROOT, env=single_thread_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    label_dir = resumed / "label_ids" / "train" / "aachen"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if label_dir.is_dir() and len([f for f in os.listdir(label_dir) if f.endswith(".png")]) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = [f for f in os.listdir(label_dir) if f.endswith(".png")]
    assert 2 <= len(written) < 6, "the run was not killed part-way"
    assert not (resumed / "easy.txt").exists()

    capsys.readouterr()
    assert run_script(args_for(world, resumed, batch_size=1)) == 0
    assert "already done" in capsys.readouterr().out
    assert tree(resumed) == tree(reference)


def run_expecting_error(argv, capsys):
    capsys.readouterr()
    assert run_script(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("case", ["data-dir", "split", "weights", "classes", "not-an-image"])
def test_bad_input_one_line_exit_2_nothing_written(world, tmp_path, capsys, case):
    save = tmp_path / "out"
    argv = args_for(world, save)
    if case == "data-dir":
        argv[1] = str(tmp_path / "nowhere")
    elif case == "split":
        argv += ["--split", "test"]
    elif case == "weights":
        argv[3] = str(tmp_path / "missing.pth")
    elif case == "classes":
        argv[3] = world["weights7"]
    else:
        data = tmp_path / "cs"
        make_cityscapes(str(data), train=3, val=0, size=(64, 32))
        bad = data / "leftImg8bit" / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png"
        bad.write_bytes(b"this is not a PNG")
        argv[1] = str(data)
    message = run_expecting_error(argv, capsys)
    expected = {"data-dir": "nowhere", "split": "test", "weights": "missing.pth", "classes": "7 classes",
                "not-an-image": "aachen_000001_000019_leftImg8bit.png"}[case]
    assert expected in message
    assert not save.exists()


def test_damaged_image_stops_with_one_line_and_keeps_finished_files(tmp_path, capsys, world):
    data = tmp_path / "cs"
    make_cityscapes(str(data), train=4, val=0, size=(64, 32))
    bad = data / "leftImg8bit" / "train" / "aachen" / "aachen_000002_000019_leftImg8bit.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG: valid signature, no image data
    save = tmp_path / "out"
    argv = args_for(world, save, batch_size=1)
    argv[1] = str(data)
    message = run_expecting_error(argv, capsys)
    assert "aachen_000002_000019_leftImg8bit.png" in message
    label_dir = save / "label_ids" / "train" / "aachen"
    written = sorted(os.listdir(label_dir))
    assert written == [f"aachen_00000{k}_000019{SUFFIX}" for k in (0, 1)]
    for f in written:
        assert cv2.imread(str(label_dir / f), cv2.IMREAD_UNCHANGED).shape == (INPUT[1], INPUT[0])


def test_settings_must_match_to_resume(world, tmp_path, capsys):
    save = tmp_path / "out"
    make_cityscapes(str(tmp_path / "cs"), train=1, val=0, size=(64, 32))
    argv = args_for(world, save)
    argv[1] = str(tmp_path / "cs")
    assert run_script(argv) == 0
    message = run_expecting_error(argv + ["--no-flip"], capsys)
    assert "--overwrite" in message
    assert run_script(argv + ["--no-flip", "--overwrite"]) == 0


@pytest.mark.skipif(os.environ.get("RUN_DDP_TESTS") != "1", reason="starts two DDP processes; set RUN_DDP_TESTS=1")
def test_two_process_ddp_writes_each_image_once(world, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_script(args_for(world, one)) == 0
    argv = args_for(world, two)
    argv[argv.index("--devices") + 1] = "2"
    done = subprocess.run([sys.executable, "generate_pseudo_labels.py", *argv, "--strategy", "ddp"], cwd=ROOT,
                          env=single_thread_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    records = []
    for rank in (0, 1):
        lines = (two / ".state" / "train" / f"{rank}.tsv").read_text().splitlines()
        assert lines, f"process {rank} labelled nothing"
        records += [line.split("\t")[0] for line in lines]
    assert sorted(records) == [name_of(p) for p in image_paths(world)]  # each image once
    assert tree(two) == tree(one)


def test_ctrl_c_says_finished_files_are_kept(world, tmp_path, capsys, monkeypatch):
    import signal

    from modules.prediction import PredictionModule

    def interrupted(self, batch, batch_idx, dataloader_idx=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(PredictionModule, "predict_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = run_script(args_for(world, tmp_path / "pl"))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C once it has one
    assert code == 130
    assert "interrupted: finished files are kept; rerun the same command" in capsys.readouterr().err


def test_a_flag_mistake_does_not_lock_the_folder(world, tmp_path, capsys):
    """The run stops at the Trainer, after it claimed --save with its settings; nothing was labelled,
    so the corrected command starts afresh instead of asking for --overwrite."""
    save = tmp_path / "pl"
    assert run_script(args_for(world, save, "--precision", "17")) == 2
    assert "--precision 17" in capsys.readouterr().err
    assert run_script(args_for(world, save)) == 0
    assert len(os.listdir(save / "label_ids" / "train" / "aachen")) == 6
    # With labels written, other settings are refused as before.
    assert run_script(args_for(world, save, "--precision", "bf16-mixed")) == 2
    assert "--overwrite" in capsys.readouterr().err
