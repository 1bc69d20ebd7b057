"""The output-folder lock (utils/run_folder.py) on its own: held against a real second process,
released however the holder ends (normally, by an exception, Ctrl-C, killed), taken over when its
holder is gone, shared by the processes of one multi-process run, re-entered by its own process,
and the record-based fall-back of file systems without ``flock``."""
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from utils import run_folder
from utils.cli import UserError
from utils.run_folder import LOCK_NAME, FolderInUse, folder_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = """
import sys
from utils.run_folder import folder_lock
with folder_lock(sys.argv[1], "--save"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextlib.contextmanager
def held_by_another_process(folder):
    """A real second process holding ``folder`` for the body of the ``with``; yields it."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT), text=True)
    try:
        assert process.stdout.readline() == "held\n"
        yield process
    finally:
        if process.poll() is None:
            process.stdin.close()
            process.wait(timeout=30)


TAKER = """
import sys
from utils.cli import run
from utils.run_folder import folder_lock
def main(argv):
    with folder_lock(argv[0], "--save"):
        return 0
run(main, sys.argv[1:])
"""


def another_process_takes(folder):
    """Whether a real second process can take ``folder`` now (it exits 0; refused, 2)."""
    done = subprocess.run([sys.executable, "-c", TAKER, str(folder)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert done.returncode in (0, 2), done.stderr
    assert done.returncode == 0 or done.stderr.startswith(f"error: {folder} is in use by another run: process ")
    return done.returncode == 0


def killed_holder(folder):
    """A lock file left behind by a holder that was killed (SIGKILL: no cleanup at all); its pid."""
    with held_by_another_process(folder) as process:
        process.kill()
        process.wait()
    return process.pid


@pytest.fixture
def clean_env(monkeypatch):
    for variable in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)


def test_a_held_folder_is_refused_with_its_holder(tmp_path, clean_env):
    folder = tmp_path / "out"
    with held_by_another_process(folder) as process:
        before = (folder / LOCK_NAME).read_bytes()
        with pytest.raises(FolderInUse) as refused:
            with folder_lock(str(folder), "--save"):
                pytest.fail("entered a folder another process holds")
        message = str(refused.value)
        assert message.startswith(f"{folder} is in use by another run: process {process.pid} on host "
                                  f"{socket.gethostname()} since 20")
        assert "-c" in message and message.endswith("wait for it to end, or choose another --save")
        assert "\n" not in message
        assert (folder / LOCK_NAME).read_bytes() == before  # the refused run changed nothing
        holder = json.loads(before)
        assert holder["pid"] == process.pid and holder["host"] == socket.gethostname()
    # the holder ended normally: its lock file is gone, and so is the folder it had to create for it
    assert not folder.exists()
    with folder_lock(str(folder), "--save"):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()


def test_released_on_an_exception_and_on_ctrl_c(tmp_path, clean_env):
    folder = tmp_path / "out"
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with folder_lock(str(folder), "--save"):
                (folder / "result").write_text("kept")
                raise error
        assert os.listdir(folder) == ["result"]
    assert another_process_takes(folder)


def test_a_killed_holders_lock_is_taken_over(tmp_path, clean_env, capsys):
    folder = tmp_path / "out"
    pid = killed_holder(folder)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == pid  # left behind
    with folder_lock(str(folder), "--save"):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    note = capsys.readouterr().err
    assert f"took over the lock of process {pid} on host {socket.gethostname()}" in note
    assert not (folder / LOCK_NAME).exists()


def test_a_folder_the_lock_created_goes_when_the_run_left_it_empty(tmp_path, clean_env):
    folder = tmp_path / "a" / "b"
    with pytest.raises(ValueError):
        with folder_lock(str(folder), "--save"):
            assert folder.is_dir()
            raise ValueError("a flag mistake found after the lock was taken")
    assert os.listdir(tmp_path) == []
    with folder_lock(str(folder), "--save"):
        (folder / "result").write_text("x")
    assert os.listdir(folder) == ["result"]


def test_a_file_on_the_way_is_one_line_naming_the_flag(tmp_path, clean_env):
    (tmp_path / "a").write_text("not a folder")
    for folder in (tmp_path / "a", tmp_path / "a" / "b" / "c"):
        with pytest.raises(UserError) as err:
            with folder_lock(str(folder), "--out"):
                pass
        assert str(err.value) == f"--out: cannot make the folder {folder}: {tmp_path / 'a'} is a file"
    assert sorted(os.listdir(tmp_path)) == ["a"] and (tmp_path / "a").read_text() == "not a folder"
    with pytest.raises(UserError, match="^--out is empty: give a folder$"):  # an unset variable, not the current folder
        with folder_lock("", "--out"):
            pass


def test_the_other_processes_of_a_run_do_not_take_it(tmp_path, clean_env, monkeypatch):
    folder = tmp_path / "out"
    with held_by_another_process(folder) as process:  # the run's first process
        for variable, value in (("LOCAL_RANK", "1"), ("RANK", "3"), ("SLURM_PROCID", "1"), ("NODE_RANK", "1")):
            with monkeypatch.context() as env:
                env.setenv(variable, value)
                assert not run_folder.launched_as_first_process()
                with folder_lock(str(folder), "--save"):
                    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == process.pid
        monkeypatch.setenv("RANK", "0")  # torchrun's first process takes it like a single one
        with pytest.raises(FolderInUse):
            with folder_lock(str(folder), "--save"):
                pass


def test_its_own_process_enters_again_and_keeps_it(tmp_path, clean_env):
    folder = tmp_path / "out"
    with folder_lock(str(folder), "--save"):
        with folder_lock(str(folder) + "/", "--experiment-name"):  # a round inside the rounds command
            pass
        assert (folder / LOCK_NAME).exists()  # the inner exit did not release the outer hold
        assert not another_process_takes(folder)
    assert not (folder / LOCK_NAME).exists()


def test_a_forked_child_does_not_release_its_parents_lock(tmp_path, clean_env):
    folder = tmp_path / "out"
    with folder_lock(str(folder), "--save"):
        pid = os.fork()
        if pid == 0:  # a data loader worker, say: it inherits the Lock object
            run_folder._held[os.path.realpath(folder)].release()
            os._exit(0)
        os.waitpid(pid, 0)
        assert (folder / LOCK_NAME).exists()
        assert not another_process_takes(folder)


@pytest.mark.parametrize("holder, held", [("live", True), ("dead", False), ("other host", True)])
def test_without_flock_the_record_decides(tmp_path, clean_env, monkeypatch, holder, held):
    """Some network file systems have no ``flock``: a live holder on this host, or any holder on
    another host (unknowable from here), holds the folder; a dead one is taken over."""
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"live": {"pid": os.getppid(), "host": socket.gethostname()},
              "dead": {"pid": dead.pid, "host": socket.gethostname()},
              "other host": {"pid": os.getpid(), "host": socket.gethostname() + "-elsewhere"}}[holder]
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps(dict(record, command="main.py", since="2026-01-01T00:00:00+00:00")))
    if held:
        with pytest.raises(FolderInUse) as refused:
            with folder_lock(str(folder), "--save"):
                pass
        assert f"process {record['pid']} on host {record['host']} since 2026" in str(refused.value)
        assert (f"if it has ended, remove {folder / LOCK_NAME})" in str(refused.value)) == (holder == "other host")
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == record["pid"]
    else:
        with folder_lock(str(folder), "--save"):
            assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert not (folder / LOCK_NAME).exists()


def test_a_holder_killed_by_sigterm_frees_the_folder(tmp_path, clean_env):
    folder = tmp_path / "out"
    with held_by_another_process(folder) as process:
        process.send_signal(signal.SIGTERM)
        process.wait()
    assert another_process_takes(folder)


# -- the rest of the protocol: checkpoints of a run, records of finished work ------------------------------

def test_latest_checkpoint_goes_by_step_number_not_file_name(tmp_path):
    assert not run_folder.has_checkpoints(str(tmp_path))
    for step in (9, 10, 100):  # as strings "checkpoint-step_9-..." sorts after "..._100-..."
        (tmp_path / f"checkpoint-step_{step}-miou_1.00.ckpt").write_bytes(b"")
    assert run_folder.has_checkpoints(str(tmp_path))
    assert run_folder.latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-step_100-miou_1.00.ckpt")
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert run_folder.latest_checkpoint(str(tmp_path)) == str(tmp_path / "last.ckpt")


def test_read_record_checks_every_field(tmp_path):
    fields = {"student": str, "best_miou": (int, float)}
    path = tmp_path / "round.json"
    path.write_text(json.dumps({"student": "a.pth", "best_miou": 3}))
    assert run_folder.read_record(str(path), fields, "a round")["best_miou"] == 3
    for content in ('{"student": "a.pth", "best_miou": true}', '{"student": 1, "best_miou": 2.0}', "[1]", "{",
                    '{"best_miou": 1.0}'):
        path.write_text(content)
        with pytest.raises(UserError, match="round.json is damaged .*a round: student, best_miou"):
            run_folder.read_record(str(path), fields, "a round")


def test_a_claim_leaves_files_it_did_not_write_and_inputs_among_its_outputs(tmp_path):
    """Outputs that hold files with no state of an earlier run are the user's own: refused, with and
    without overwrite, and kept; an input lying among the outputs is refused before anything is removed."""
    state, outputs = tmp_path / ".state", [tmp_path / "weights", tmp_path / "report.md"]
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mine.pth").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"--out: .*weights is there, but no earlier run of this command wrote it"):
            run_folder.claim_folder(str(state), {"a": 1}, overwrite, [str(p) for p in outputs], flag="--out")
    assert (tmp_path / "weights" / "mine.pth").read_text() == "precious" and not state.exists()

    (tmp_path / "weights" / "mine.pth").unlink()
    run_folder.claim_folder(str(state), {"a": 1}, False, [str(p) for p in outputs], flag="--out")  # ours now
    (tmp_path / "report.md").write_text("ours")
    with pytest.raises(UserError, match=r"--black-box .*report.md lies in .*report.md, which this run writes"):
        run_folder.claim_folder(str(state), {"a": 2}, True, [str(p) for p in outputs], flag="--out",
                                inputs=[("--black-box", str(tmp_path / "report.md")), ("--init", None)])
    assert (tmp_path / "report.md").read_text() == "ours" and (state / "settings.json").is_file()
    run_folder.claim_folder(str(state), {"a": 2}, True, [str(p) for p in outputs], flag="--out")
    assert not (tmp_path / "report.md").exists()
