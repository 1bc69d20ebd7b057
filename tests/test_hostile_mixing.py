"""Nothing is silently mixed: a catalogue of hostile "mixing" cases, each once refused or isolated.

Two runs, one folder (``utils/run_folder.py``):
  - two trainings started at once with the same ``--experiment-name``: one runs, the other stops
    with one line naming the folder and the holder; one record, one best checkpoint;
  - every command that writes an output folder (training, test mode's record and
    ``--save-predictions``, ``--rounds`` on any of its round folders, the pseudo-labels' and the
    hard patches' ``--save``, the demo's ``--out``) refuses a folder another process holds, with
    exit 2 and without writing anything;
  - a killed run's lock does not block the rerun that resumes it.
Same folder, other inputs (``utils/fingerprint.py``):
  - a fingerprint notices one byte changed at either end of a file whose size and time were kept;
  - the weight file replaced under the same path (same size, same time) is refused on resume, with
    a request for ``--overwrite``, which then relabels everything with the new model; the same for
    hard patches mined with a model;
  - images replaced in place are refused; the same data and weights moved elsewhere resume;
  - pseudo-labels rewritten in place with the same size and time do not pass for the mined ones.
A copied run, its own files (``modules/runner.py`` ``BestCheckpoint``, ``modules/rounds.py``):
  - a copied experiment folder resumed under its new name never touches, reports or extracts the
    original's checkpoints, and keeps one best checkpoint, compared with its own earlier scores;
  - a copied round folder starts the next round from its own student.
"""
import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import construct_hard_patch
import demo
import generate_pseudo_labels
import main
from tests.fixtures import make_cityscapes, make_patches, make_pseudo_labels
from tests.test_generate_pseudo_labels import make_weights
from tests.test_run_folder import ROOT, held_by_another_process, killed_holder
from utils.cli import run
from utils.run_folder import LOCK_NAME


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixing")
    paths = make_cityscapes(str(root / "cs"), train=4, val=2, size=(64, 32))
    paths["data"] = str(root / "cs")
    paths["lists"] = str(root / "lists")  # no lists in it: the image folders are scanned
    os.makedirs(paths["lists"])
    paths["pseudo"] = make_pseudo_labels(str(root / "pseudo"), paths["label_root"])
    paths["patches"] = make_patches(str(root / "patches"))
    paths["weights"] = make_weights(str(root / "a.pth"), seed=0)
    paths["other_weights"] = make_weights(str(root / "b.pth"), seed=1)
    return paths


def cli(entry, argv, capsys):
    """Run an entry point as the command line does: ``(exit code, stdout, stderr)``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(entry, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot(folder):
    """Every folder and file under ``folder`` with its bytes (hidden ones too)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            found[os.path.relpath(os.path.join(dirpath, d), folder) + "/"] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as handle:
                found[os.path.relpath(os.path.join(dirpath, f), folder)] = handle.read()
    return found


def training(world, exp, module="basic", name="t", *extra):
    return ["--module-name", module, "--image-root", world["image_root"], "--label-root", world["label_root"],
            "--list-root", world["lists"], "--arch", "deeplabv2_tiny", "--input-size", "64x32",
            "--log-tb-dir", str(exp), "--num-workers", "0", "--accelerator", "cpu", "--devices", "1",
            "--train-batch-size", "2", "--max-steps", "2", "--val-interval", "1", "--log-interval", "1",
            "--visualize-interval", "0", "--experiment-name", name, *extra]


def labelling(world, save, *extra, weights=None):
    return ["--data-dir", world["data"], "--restore-from", weights or world["weights"], "--save", str(save),
            "--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--batch-size", "2",
            "--accelerator", "cpu", "--devices", "1", *extra]


# -- two runs, one folder -------------------------------------------------------------------------------

RACER = """
import runpy, sys, time
from modules import runner
build = runner.build
def slow_build(args):
    time.sleep(2)  # holding the folder a while, so that the other process surely arrives meanwhile
    return build(args)
runner.build = slow_build
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


@pytest.mark.slow
def test_two_trainings_started_at_once_one_runs_the_other_is_refused(world, tmp_path):
    exp = tmp_path / "exp"
    argv = training(world, exp)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = [tmp_path / f"racer{k}.err" for k in range(2)]
    racers = []
    for log in logs:
        with open(log, "w") as err:
            racers.append(subprocess.Popen([sys.executable, "-c", RACER, *argv], cwd=ROOT, env=env,
                                           stdout=subprocess.DEVNULL, stderr=err))
    results = [(p.wait(timeout=300), log.read_text(), p.pid) for p, log in zip(racers, logs)]
    assert sorted(code for code, _, _ in results) == [0, 2], [err[-2000:] for _, err, _ in results]
    (_, _, winner), (_, loser_err, _) = sorted(results, key=lambda r: r[0])
    folder = exp / "basic" / "t"
    assert one_error_line(loser_err).startswith(f"error: {folder} is in use by another run: process {winner} on host ")
    assert len(glob.glob(str(folder / "checkpoint-step_*.ckpt"))) == 1
    with open(folder / "miou_record.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 2  # the header and the winner's two validations
    assert not (folder / LOCK_NAME).exists()


ENTRY_POINTS = ["train", "test", "test predictions", "rounds", "pseudo-labels", "hard patches", "demo"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_folder_in_use_is_refused_before_anything_is_written(world, tmp_path, capsys, entry):
    exp, out = tmp_path / "exp", tmp_path / "out"
    weights = ["--restore-from", world["weights"]]
    command, argv, held, flag = {
        "train": (main.main, training(world, exp), exp / "basic" / "t", "--experiment-name"),
        "test": (main.main, training(world, exp, "basic", "t", "--mode", "test", *weights), exp / "basic" / "t",
                 "--experiment-name"),
        "test predictions": (main.main, training(world, exp, "basic", "t", "--mode", "test", *weights,
                                                 "--save-predictions", str(out)), out, "--save-predictions"),
        # the last round's folder: the command stops before it trains the first round
        "rounds": (main.main, training(world, exp, "smhm", "t", "--rounds", "2", *weights, "--hard-patches-root",
                                       world["patches"]), exp / "smhm" / "t_round_2", "--experiment-name"),
        "pseudo-labels": (generate_pseudo_labels.main, labelling(world, out), out, "--save"),
        "hard patches": (construct_hard_patch.main, ["--data-dir", world["data"], "--pseudo-label-root",
                                                     world["pseudo"], "--save", str(out), "--input-size", "64x32",
                                                     "--num-workers", "0"], out, "--save"),
        "demo": (demo.main, ["--quick", "--out", str(out)], out, "--out"),
    }[entry]
    with held_by_another_process(held) as holder:
        before = snapshot(tmp_path)
        code, stdout, err = cli(command, argv, capsys)
        assert code == 2
        line = one_error_line(err)
        assert line.startswith(f"error: {held} is in use by another run: process {holder.pid} on host ")
        assert " since 20" in line and line.endswith(f"choose another {flag}")
        assert snapshot(tmp_path) == before  # not a folder, not a file, not a log line


def test_a_killed_runs_lock_does_not_block_the_rerun(world, tmp_path, capsys):
    save = tmp_path / "pl"
    pid = killed_holder(save)
    code, stdout, err = cli(generate_pseudo_labels.main, labelling(world, save), capsys)
    assert code == 0 and "4 labelled now" in stdout
    assert f"took over the lock of process {pid}" in err
    assert not (save / LOCK_NAME).exists()


# -- same folder, other inputs ----------------------------------------------------------------------------

def replace_keeping_size_and_time(path, data):
    """Write ``data`` over ``path`` and give it back its modification time: only the bytes differ."""
    status = os.stat(path)
    assert len(data) == status.st_size
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def labels(save):
    return {k: v for k, v in snapshot(save).items() if k.startswith("label_ids" + os.sep) and v is not None}


def test_a_fingerprint_follows_the_bytes_at_both_ends_the_size_and_the_time(tmp_path):
    from utils.fingerprint import SAMPLE_BYTES, fingerprint

    big = tmp_path / "weights.pth"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * SAMPLE_BYTES, dtype=np.uint8).tobytes())
    big.write_bytes(data)
    first = fingerprint([big], [""])
    moved = tmp_path / "elsewhere.pth"
    os.rename(big, moved)  # a move keeps bytes and time: the same input
    assert fingerprint([moved], [""]) == first
    for position in (0, len(data) - 1):  # a byte in the first and in the last MiB
        changed = bytearray(data)
        changed[position] ^= 0xFF
        replace_keeping_size_and_time(str(moved), bytes(changed))
        assert fingerprint([moved], [""]) != first
    replace_keeping_size_and_time(str(moved), bytes(data))
    assert fingerprint([moved], [""]) == first
    os.utime(moved, ns=(0, os.stat(moved).st_mtime_ns + 1))  # written again with the same bytes
    assert fingerprint([moved], [""]) != first
    assert fingerprint([moved], ["a"]) != fingerprint([moved], ["b"])  # names (an image's) count


def test_a_weight_file_replaced_under_the_same_path_is_refused_on_resume(world, tmp_path, capsys):
    weights = str(tmp_path / "provider.pth")
    shutil.copy(world["weights"], weights)
    save = tmp_path / "pl"
    assert cli(generate_pseudo_labels.main, labelling(world, save, weights=weights), capsys)[0] == 0
    first = labels(save)
    with open(world["other_weights"], "rb") as f:  # a retrained provider saved over the first one
        replace_keeping_size_and_time(weights, f.read())

    code, _, err = cli(generate_pseudo_labels.main, labelling(world, save, weights=weights), capsys)
    line = one_error_line(err)
    assert code == 2 and "(changed: weights;" in line and "add --overwrite" in line
    assert labels(save) == first
    code, stdout, _ = cli(generate_pseudo_labels.main, labelling(world, save, "--overwrite", weights=weights), capsys)
    assert code == 0 and "4 labelled now, 0 already done" in stdout
    fresh = tmp_path / "fresh"
    assert cli(generate_pseudo_labels.main, labelling(world, fresh, weights=world["other_weights"]), capsys)[0] == 0
    assert labels(save) == labels(fresh) != first  # every label from the new model, none from the old


def test_hard_patches_from_a_model_replaced_under_the_same_path_are_refused_on_resume(world, tmp_path, capsys):
    weights = str(tmp_path / "provider.pth")
    shutil.copy(world["weights"], weights)
    mined = tmp_path / "mined"
    mine = labelling(world, mined, "--rare-classes", ",".join(map(str, range(19))), weights=weights)
    assert cli(construct_hard_patch.main, mine, capsys)[0] == 0
    with open(world["other_weights"], "rb") as f:
        replace_keeping_size_and_time(weights, f.read())
    code, _, err = cli(construct_hard_patch.main, mine, capsys)
    line = one_error_line(err)
    assert code == 2 and "(changed: weights;" in line and "add --overwrite" in line


def test_inputs_count_by_content_not_by_path(world, tmp_path, capsys):
    data, weights = tmp_path / "cs", tmp_path / "w.pth"
    make_cityscapes(str(data), train=3, val=0, size=(64, 32), seed=5)
    shutil.copy(world["weights"], weights)
    save = tmp_path / "pl"
    argv = labelling(world, save, weights=str(weights))
    argv[1] = str(data)
    assert cli(generate_pseudo_labels.main, argv, capsys)[0] == 0
    # The same data and weights moved (a rename keeps every byte and time): the run resumes.
    os.rename(data, tmp_path / "moved")
    os.rename(weights, tmp_path / "moved.pth")
    argv[1], argv[3] = str(tmp_path / "moved"), str(tmp_path / "moved.pth")
    code, stdout, _ = cli(generate_pseudo_labels.main, argv, capsys)
    assert code == 0 and "0 labelled now, 3 already done" in stdout
    # An image replaced in place by another one: refused.
    image = tmp_path / "moved" / "leftImg8bit" / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png"
    assert cv2.imwrite(str(image), cv2.imread(str(image))[::-1])
    before = labels(save)
    code, _, err = cli(generate_pseudo_labels.main, argv, capsys)
    line = one_error_line(err)
    assert code == 2 and "(changed: images;" in line and "add --overwrite" in line
    assert labels(save) == before


def test_labels_rewritten_with_the_same_size_and_time_are_not_taken_for_the_mined_ones(world, tmp_path, capsys):
    pseudo = tmp_path / "pseudo" / "aachen"
    pseudo.mkdir(parents=True)
    stored = [cv2.IMWRITE_PNG_COMPRESSION, 0]  # uncompressed: the file size depends on the shape alone
    names = sorted(os.listdir(os.path.join(world["label_root"], "train", "aachen")))
    for name in names:
        label = cv2.imread(os.path.join(world["label_root"], "train", "aachen", name), cv2.IMREAD_UNCHANGED)
        assert cv2.imwrite(str(pseudo / name), label, stored)
    save = tmp_path / "mined"
    argv = ["--data-dir", world["data"], "--pseudo-label-root", str(tmp_path / "pseudo"), "--save", str(save),
            "--rare-classes", ",".join(map(str, range(19))), "--input-size", "64x32", "--num-workers", "0"]
    assert cli(construct_hard_patch.main, argv, capsys)[0] == 0
    _, encoded = cv2.imencode(".png", np.full((32, 64), 13, np.uint8), stored)  # all car now
    replace_keeping_size_and_time(str(pseudo / names[0]), encoded.tobytes())
    before = snapshot(save)
    code, _, err = cli(construct_hard_patch.main, argv, capsys)
    line = one_error_line(err)
    assert code == 2 and "(changed: labels;" in line and "add --overwrite" in line
    assert snapshot(save) == before


# -- a copied run, its own files --------------------------------------------------------------------------

def validations(folder):
    """The label-free score that keeps the best checkpoint (confidence, the default), one per validation."""
    with open(os.path.join(folder, "label_free_record.csv")) as f:
        rows = list(csv.reader(f))
    return [float(row[rows[0].index("confidence")]) for row in rows[1:]]


def test_a_copied_experiment_resumes_in_its_own_folder(world, tmp_path, capsys):
    exp = tmp_path / "exp"
    assert cli(main.main, training(world, exp, "basic", "a"), capsys)[0] == 0  # two steps, two validations
    original, copy = exp / "basic" / "a", exp / "basic" / "b"
    shutil.copytree(original, copy)  # cp -r experiments/basic/a experiments/basic/b
    before = snapshot(original)

    # Nothing left to do: the copy reports its own best checkpoint, not the original's.
    code, stdout, _ = cli(main.main, training(world, exp, "basic", "b", "--resume", "last"), capsys)
    assert code == 0
    best = stdout.split("best checkpoint: ")[1].split(" (")[0]
    assert os.path.dirname(best) == os.path.realpath(copy)

    # One more step and validation in the copy.
    code, stdout, _ = cli(main.main, training(world, exp, "basic", "b", "--max-steps", "3", "--resume", "last"),
                          capsys)
    assert code == 0
    assert snapshot(original) == before  # byte for byte untouched
    best = stdout.split("best checkpoint: ")[1].split(" (")[0]
    assert os.path.dirname(best) == os.path.realpath(copy)
    # One best: the copied one was compared with the new validation, and replaced or kept.
    assert glob.glob(str(copy / "checkpoint-step_*.ckpt")) == [best]
    scores = validations(copy)
    assert len(scores) == 3
    assert float(best.split("score_")[1][:-len(".ckpt")]) == pytest.approx(max(scores), abs=6e-5)
    state = torch.load(copy / "last.ckpt", map_location="cpu", weights_only=True)
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert saved["best_model_path"] == best and saved["dirpath"] == os.path.realpath(copy)


def test_the_best_checkpoint_state_is_filed_under_lightnings_key(tmp_path):
    """Older checkpoints (saved by Lightning's own ModelCheckpoint) resume with their best state."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from modules.runner import BestCheckpoint

    kwargs = dict(dirpath=str(tmp_path), monitor="val_miou", mode="max", save_top_k=1)
    assert BestCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key


def test_a_copied_round_goes_on_from_its_own_student(world, tmp_path, capsys):
    exp = tmp_path / "exp"
    flags = ["--restore-from", world["weights"], "--hard-patches-root", world["patches"], "--max-steps", "1",
             "--no-round-guard"]
    assert cli(main.main, training(world, exp, "smhm", "a", "--rounds", "1", *flags), capsys)[0] == 0
    shutil.copytree(exp / "smhm" / "a_round_1", exp / "smhm" / "b_round_1")
    before = snapshot(exp / "smhm" / "a_round_1")
    code, stdout, _ = cli(main.main, training(world, exp, "smhm", "b", "--rounds", "2", *flags), capsys)
    assert code == 0 and "round 1: already finished" in stdout
    own_student = os.path.join(str(exp), "smhm", "b_round_1", "student.pth")
    assert f"round 2/2: smhm from {own_student}" in stdout
    with open(exp / "smhm" / "b_round_2" / "round.json") as f:
        assert json.load(f)["restore_from"] == own_student
    assert snapshot(exp / "smhm" / "a_round_1") == before
