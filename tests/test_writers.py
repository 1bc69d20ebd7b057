"""utils/writers.py: PNGs written on writer threads, every byte as written inline, records in order after
their files, a bounded queue, a write error as one line naming the file; and the data stages' output
byte-equal with the writer threads and with every file written inline, as before them."""
import errno
import os
import random
import re
import time

import numpy as np
import pytest

import construct_hard_patch
import generate_pseudo_labels
import modules.hard_patches
import modules.prediction
import utils.io
from tests.fixtures import make_cityscapes
from tests.test_generate_pseudo_labels import make_weights, one_thread
from utils.cli import UserError, run
from utils.io import TEMP_PREFIX, encode_png, write_png
from utils.writers import BackgroundWriter, default_threads

pytestmark = pytest.mark.usefixtures(one_thread.__name__)  # one torch thread: exact sums, as that module's


def arrays(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 19, (24, 40), dtype=np.uint8) for _ in range(count)]


def test_every_file_written_with_its_bytes_and_recorded_in_order(tmp_path):
    labels = arrays(40)
    recorded = []

    def write(path, label):
        time.sleep(random.random() * 0.002)  # jobs finish out of order
        write_png(path, label)
        return os.path.basename(path)

    with BackgroundWriter(threads=3, max_pending=5) as writer:
        for i, label in enumerate(labels):
            writer.submit(write, str(tmp_path / "out" / f"{i}.png"), label, then=recorded.append)
            assert writer.pending <= 5  # bounded: never more jobs held than that
    assert recorded == [f"{i}.png" for i in range(len(labels))]
    for i, label in enumerate(labels):
        assert (tmp_path / "out" / f"{i}.png").read_bytes() == encode_png(label)
    assert writer.pending == 0


def test_a_record_follows_every_earlier_file(tmp_path):
    # A slow early job holds back the records of the later ones, which finished long before.
    order = []

    def job(delay, name):
        time.sleep(delay)
        order.append(("written", name))
        return name

    with BackgroundWriter(threads=2, max_pending=8) as writer:
        writer.submit(job, 0.2, "slow", then=lambda name: order.append(("recorded", name)))
        for i in range(4):
            writer.submit(job, 0.0, f"fast{i}", then=lambda name: order.append(("recorded", name)))
    recorded = [name for kind, name in order if kind == "recorded"]
    assert recorded == ["slow", "fast0", "fast1", "fast2", "fast3"]
    assert order.index(("written", "slow")) < order.index(("recorded", "slow"))


@pytest.fixture
def full_disk(monkeypatch):
    """Writing a PNG fails as on a full disk (the write names no file); other files are written."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        return Full(handle) if os.readlink(f"/proc/self/fd/{fd}").endswith(".png") else handle

    monkeypatch.setattr(utils.io.os, "fdopen", fdopen)


def test_a_write_error_is_one_line_naming_the_file(tmp_path, full_disk):
    target = str(tmp_path / "out" / "a.png")
    recorded = []
    writer = BackgroundWriter(threads=2)
    with pytest.raises(UserError) as error:
        writer.submit(write_png, target, arrays(1)[0], then=recorded.append)  # raises here when done already
        writer.finish()
    writer.close()
    message = str(error.value)
    assert message == f"cannot write {target}: {os.strerror(errno.ENOSPC)}" and "\n" not in message
    assert recorded == [] and os.listdir(tmp_path / "out") == []  # no record, no file, no temporary file


def test_an_error_surfaces_at_the_next_submit_and_the_pool_stays_bounded(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    writer = BackgroundWriter(threads=1, max_pending=2)
    with pytest.raises(UserError, match="is a file, not a folder"):
        for i in range(10):
            writer.submit(write_png, str(blocker / f"{i}.png"), arrays(1)[0])
    writer.close()


def test_after_another_error_the_submitted_work_is_finished(tmp_path):
    recorded = []
    with pytest.raises(KeyError):
        with BackgroundWriter(threads=1) as writer:
            for i in range(3):
                writer.submit(write_png, str(tmp_path / f"{i}.png"), arrays(1)[0], then=lambda _, i=i: recorded.append(i))
            raise KeyError("a damaged image")
    assert recorded == [0, 1, 2] and len(os.listdir(tmp_path)) == 3


@pytest.mark.parametrize("count, expected", [(1, 1), (2, 1), (8, 2), (16, 4), (64, 4)])
def test_writer_threads_from_the_cores(count, expected):
    assert default_threads(count) == expected


# -- the data stages: the same bytes as writing inline -------------------------------------------------

class InlineWriter:
    """What the stages did before the writer threads: each job and its record at once."""

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, job, *args, then=None):
        result = job(*args)
        if then is not None:
            then(result)

    def finish(self):
        pass

    settle = close = finish

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def run_script(main, argv):
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    return exit_info.value.code


def files(folder):
    """{relative path: bytes} of every file, the resume state included (in the summaries and settings,
    the folder's own path is written OUT, and the fingerprints of the labels, which hold their
    modification times, VERSION)."""
    out = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                data = handle.read().replace(os.path.abspath(folder).encode(), b"OUT")
            if name.endswith(".json"):
                data = re.sub(rb'"version": "[0-9a-f]+"', b'"version": "VERSION"', data)
                data = re.sub(rb'"pseudo_labels": "[0-9a-f]+"', b'"pseudo_labels": "VERSION"', data)
            out[os.path.relpath(path, folder)] = data
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    make_cityscapes(str(root / "cs"), train=5, val=0, size=(128, 64))
    return {"data": str(root / "cs"), "weights": make_weights(str(root / "w.pth"))}


def stage_outputs(world, out):
    common = ["--data-dir", world["data"], "--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0",
              "--accelerator", "cpu", "--devices", "1"]
    assert run_script(generate_pseudo_labels.main, [*common, "--restore-from", world["weights"], "--batch-size", "2",
                                                    "--save", str(out / "labels")]) == 0
    assert run_script(construct_hard_patch.main, [*common, "--pseudo-label-root", str(out / "labels"),
                                                  "--rare-classes", ",".join(map(str, range(19))),
                                                  "--save", str(out / "patches")]) == 0
    return files(out)


def test_stage_output_equals_writing_inline(world, tmp_path, monkeypatch):
    threaded = stage_outputs(world, tmp_path / "threads")
    monkeypatch.setattr(modules.prediction, "BackgroundWriter", InlineWriter)
    monkeypatch.setattr(modules.hard_patches, "BackgroundWriter", InlineWriter)
    inline = stage_outputs(world, tmp_path / "inline")
    assert sum(name.endswith(".png") for name in threaded) > 10
    assert threaded.keys() == inline.keys()
    assert all(threaded[name] == inline[name] for name in threaded), \
        [name for name in threaded if threaded[name] != inline[name]]


def test_a_full_disk_stops_the_stage_with_one_line(world, tmp_path, capsys, full_disk):
    save = tmp_path / "labels"
    capsys.readouterr()
    code = run_script(generate_pseudo_labels.main, [
        "--data-dir", world["data"], "--restore-from", world["weights"], "--save", str(save), "--arch",
        "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu", "--devices", "1"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: cannot write {save}") and errors[0].endswith(
        f".png: {os.strerror(errno.ENOSPC)}")
    assert not (save / "summary.json").exists()
    left = [name for _, _, names in os.walk(save) for name in names]
    assert not [name for name in left if name.endswith(".png") or name.startswith(TEMP_PREFIX)]


def test_a_record_error_is_one_line_naming_the_record_file(tmp_path):
    def record(rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "0.tsv"))

    writer = BackgroundWriter(threads=1)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / '0.tsv'}: "):
        writer.submit(write_png, str(tmp_path / "a.png"), arrays(1)[0], then=record)
        writer.finish()
    writer.close()
    assert os.path.isfile(tmp_path / "a.png")  # written, not recorded: done again by a resumed run
