"""The run-folder protocol: every output folder of the toolkit is held, claimed and looked up here.

- :func:`folder_lock`: one run per folder, an exclusive lock for the whole run (below).
- :func:`claim_folder`: a folder belongs to one set of settings; a rerun with the same ones
  resumes, other ones are refused unless ``--overwrite`` (the data stages' ``--save``).
- :func:`has_checkpoints`, :func:`latest_checkpoint`: a training run's checkpoints, by step
  number, not by file name order (``--resume last``, the rounds).
- :func:`read_record`: a small JSON file that records finished work (a round's ``round.json``),
  refused with one line when it is damaged.

One run per output folder: an exclusive lock on the folder for the whole run.

Two commands writing one folder at once would interleave their records, keep two best
checkpoints, or remove each other's resume state, and both would report success. So every command
that writes an output folder (a training or test run's experiment folder and ``--save-predictions``,
the data stages' ``--save``, the folders of ``--rounds``, the demo's ``--out``) holds that folder's
lock from before it reads the folder's state until it has written its last file; a second command
on the same folder stops with one line naming the holder, before it writes anything.

The lock is ``<folder>/.run.lock``, locked with ``flock`` and holding who holds it (pid, host,
command, since when) for that line. The kernel releases a ``flock`` however its process ends, also
killed, so a lock file left behind by a dead process is simply free again and is taken over (with a
note). On a file system without ``flock`` the file's own record decides: a lock of a live process on
this host, or of any process on another host (which cannot be checked from here), is held; one of a
process that is gone is taken over. The lock is released, and the file removed, when the run ends,
also by an exception or Ctrl-C; a folder that the lock itself had to create is removed again when
the run left it empty (a run stopped by a flag mistake leaves nothing behind).

Only the first process of a multi-process run takes the lock (:func:`launched_as_first_process`):
the others are processes of the same run. A process may take a lock it already holds (a round of
``--rounds`` trains in a folder that the rounds command holds): the inner one changes nothing.
"""
import contextlib
import datetime
import errno
import fcntl
import glob
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time

from utils.cli import UserError
from utils.io import TEMP_PREFIX, atomic_write_text

LOCK_NAME = ".run.lock"
_NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
_held = {}  # real path of a folder this process holds -> its Lock


class FolderInUse(UserError):
    """Another run holds the output folder."""


def launched_as_first_process():
    """Whether this process is (or will be) global rank 0, from the variables that launchers set
    (Lightning's own, torchrun, SLURM); usable before the ``Trainer`` exists."""
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return int(os.environ[variable]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def _this_process():
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _read_holder(fd):
    """The holder record in the open lock file; ``{}`` when it is empty or not a record."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 65536).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder):
    """Whether the holder of a lock file on a file system without ``flock`` may still run."""
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _try_lock(fd, path):
    """Lock the open lock file ``path``: ``None`` when this process now holds it, else what the
    refusal should add."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return ""
    except OSError as err:
        if err.errno not in _NO_FLOCK:
            raise
    holder = _read_holder(fd)
    if not holder or not _alive(holder):
        return None
    if holder.get("host") != socket.gethostname():
        return (f" (without flock here, a process on another host cannot be checked: if it has ended, remove "
                f"{path})")
    return ""


def describe(holder):
    """``process 123 on host h since <time> (command)`` for a holder record."""
    if not holder:
        return "another process (it has not yet written who it is)"
    command = " ".join(str(holder.get("command", "?")).split())  # one line, whatever the arguments held
    if len(command) > 120:
        command = command[:117] + "..."
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
            f"{holder.get('since', '?')} ({command})")


def _make_folders(folder, flag):
    """Create ``folder`` and its missing parents; the ones created here, outermost first. A file on
    the way is one line naming ``flag``, the flag that chose the folder."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
            created.append(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise UserError(f"{flag}: cannot make the folder {folder}: {path} is a file") from None
    return created


def _remove_if_empty(created):
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:  # not empty (or gone): the run wrote there, or something else did
            return


class Lock:
    """The lock of one folder, taken by :meth:`acquire` (see the module's description)."""

    def __init__(self, folder, choose_another):
        self.folder, self.choose_another = folder, choose_another
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd, self.pid, self.created = None, None, []

    def acquire(self):
        self.created = _make_folders(self.folder, self.choose_another)
        fd = None
        try:
            while True:
                try:  # never through a link: a planted one would have us overwrite the file it points to
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
                except OSError as err:
                    if err.errno == errno.ELOOP:
                        raise UserError(f"{self.path} is a symbolic link, not a lock file this toolkit wrote; "
                                        "remove it") from None
                    raise
                refusal = _try_lock(fd, self.path)
                if refusal is not None:
                    raise FolderInUse(f"{self.folder} is in use by another run: {describe(self._holder(fd))}; "
                                      f"wait for it to end, or choose another {self.choose_another}{refusal}")
                try:
                    if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                        break
                except FileNotFoundError:
                    pass
                # The holder removed the file between our open and our lock, as it ended: a new run
                # creates a new file, and only the lock of the file at the path counts.
                os.close(fd)
                fd = None
            previous = _read_holder(fd)
            me = _this_process()
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            _remove_if_empty(self.created)
            raise
        self.fd, self.pid = fd, me["pid"]
        if previous and (previous.get("pid"), previous.get("host")) != (me["pid"], me["host"]):
            print(f"note: {self.folder}: took over the lock of {describe(previous)}, which ended without "
                  "releasing it", file=sys.stderr)

    @staticmethod
    def _holder(fd):
        # The holder writes its record right after it took the lock: give it a moment.
        for _ in range(20):
            holder = _read_holder(fd)
            if holder:
                return holder
            time.sleep(0.05)
        return {}

    def release(self):
        # A process forked from the holder (a data loader worker) inherits this object, not the lock.
        if self.fd is None or os.getpid() != self.pid:
            return
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.remove(self.path)  # before unlocking: a waiting opener of this file sees it is gone
        except FileNotFoundError:
            pass
        finally:
            # Unlocked explicitly: forked processes (loader workers) may still hold copies of the file.
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        _remove_if_empty(self.created)


@contextlib.contextmanager
def folder_lock(folder, choose_another):
    """Hold ``folder`` (created if missing) exclusively for the body of the ``with``. A second
    holder gets :class:`FolderInUse`: one line naming the folder and its holder, and
    ``choose_another`` (the flag that names another folder, e.g. ``--save``). Only the first process
    of a multi-process run takes it; a process already holding the folder takes it again freely."""
    if not str(folder).strip():  # an unset shell variable: the current folder is not what was meant
        raise UserError(f"{choose_another} is empty: give a folder")
    if not launched_as_first_process():
        yield
        return
    key = os.path.realpath(folder)
    if key in _held:
        yield
        return
    lock = Lock(folder, choose_another)
    lock.acquire()
    _held[key] = lock
    try:
        yield
    finally:
        del _held[key]
        lock.release()


def is_within(path, folder):
    """Whether ``path`` is ``folder`` or inside it, also through symbolic links."""
    return (os.path.realpath(path) + os.sep).startswith(os.path.realpath(folder) + os.sep)


def check_outside_images(folder, flag, images):
    """Refuse an output ``folder`` inside the image folder ``images`` (or that folder itself), also
    through a symbolic link: a later run would take its PNGs for images."""
    if is_within(folder, images):
        raise UserError(f"{flag} {folder} is inside the image folder {os.path.realpath(images)}: a later run would take its PNGs for "
                        "images; choose a folder outside it")


# -- claiming a folder for one set of settings ---------------------------------------------------------

def _remove_temporary_files(folder):
    # A run killed while writing leaves the temporary file of an atomic write behind.
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(dirpath, name))


def _holds_results(target):
    """Whether ``target`` is a file, or a folder with a file other than an unfinished atomic write."""
    if os.path.isfile(target):
        return True
    return any(not name.startswith(TEMP_PREFIX) for _, _, names in os.walk(target) for name in names)


def _changed(previous_text, settings):
    """The names of the settings that differ from the recorded ones (all, when those are unreadable)."""
    try:
        previous = json.loads(previous_text)
    except ValueError:
        previous = None
    if not isinstance(previous, dict):
        return sorted(settings)
    current = json.loads(json.dumps(settings))  # tuples as the lists they were written as
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def claim_folder(folder, settings, overwrite, outputs=(), flag="--save", inputs=()):
    """Start or continue a run whose state lives in ``folder`` and whose results are ``outputs``.

    A rerun must use the same ``settings`` (a JSON-able dict of what decides the results), else old
    and new outputs would mix; ``overwrite`` first removes the outputs and the state. A run with
    other settings that left no output (one stopped by a flag mistake) is replaced as if by
    ``overwrite``. Only the first process removes and writes: the others may start while it does.
    The caller holds the output folder's lock (:func:`folder_lock`) from before this claim until
    its last file is written, so that no other run reads or changes the state meanwhile. ``flag``
    names the output folder's flag in messages. Refused before anything is removed: an output that
    holds files while no state says a run of ours wrote them (the user's own), and one of the
    ``inputs`` (``(flag, path)`` pairs) lying among the outputs.
    """
    path = os.path.join(folder, "settings.json")
    text = json.dumps(settings, indent=1, sort_keys=True) + "\n"
    first = launched_as_first_process()
    # What is written or removed stays inside the output folder: a symbolic link in it (planted, or
    # copied along) would lead --overwrite to delete, and the run to write, somewhere else.
    root = os.path.realpath(os.path.commonpath([os.path.abspath(p) for p in (folder, *outputs)]))
    for target in (folder, *outputs):
        if not os.path.realpath(target).startswith(root + os.sep):
            raise UserError(f"{target} leads outside {root} through a symbolic link; remove the link, or choose "
                            f"another {flag}")
    for input_flag, given in inputs:
        inside = [target for target in (folder, *outputs) if given and is_within(given, target)]
        if inside:
            raise UserError(f"{input_flag} {given} lies in {inside[0]}, which this run writes (and --overwrite "
                            f"removes): move it out, or choose another {flag}")
    refuse_foreign_outputs(folder, outputs, flag)
    if not overwrite and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = f.read()
        if previous != text:
            if any(_holds_results(target) for target in outputs):
                raise UserError(f"{flag} holds results made with other settings or inputs (changed: "
                                f"{', '.join(_changed(previous, settings))}; {path}); add --overwrite to replace "
                                f"them, or choose another {flag}")
            overwrite = True
    if overwrite:
        if not first:
            return
        remove_claim(folder, outputs)
    if first:
        for target in outputs:
            if os.path.isdir(target):
                _remove_temporary_files(target)
        atomic_write_text(path, text)


def refuse_foreign_outputs(folder, outputs, flag="--save"):
    """Outputs that hold files while the state ``folder`` records no run (the user's own) are refused;
    checked by the first process alone (the others may look while it removes an earlier run's)."""
    path = os.path.join(folder, "settings.json")
    if not launched_as_first_process() or os.path.isfile(path):
        return
    foreign = [target for target in outputs if _holds_results(target)]
    if foreign:
        raise UserError(f"{flag}: {foreign[0]} is there, but no earlier run of this command wrote it (no "
                        f"{path}); choose another {flag}, or move it away")


def remove_claim(folder, outputs=(), unless_finished=False):
    """Remove a claim's state ``folder`` and its ``outputs`` (before ``--overwrite``); with
    ``unless_finished``, only when no output holds a result: a run stopped on a user error before it
    finished anything leaves nothing behind (one that did keeps its finished files, to resume)."""
    if unless_finished and (not launched_as_first_process() or any(_holds_results(t) for t in outputs)):
        return
    root = os.path.commonpath([os.path.abspath(p) for p in (folder, *outputs)])
    for target in (*outputs, folder):
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.isfile(target):
            os.remove(target)
        parent = os.path.dirname(os.path.abspath(target))  # and the folders left empty, up to the root
        while parent.startswith(root + os.sep) and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
            parent = os.path.dirname(parent)


# -- a training run's checkpoints -----------------------------------------------------------------------

def has_checkpoints(folder):
    """Whether a training run in ``folder`` saved a checkpoint (``--resume last`` continues it)."""
    return bool(glob.glob(os.path.join(folder, "*.ckpt")))


def latest_checkpoint(folder):
    """``last.ckpt``; without it (a run stopped between the best checkpoint and ``last.ckpt`` of its
    first validation) the saved checkpoint of the latest step, by step number."""
    last = os.path.join(folder, "last.ckpt")
    steps = {int(m.group(1)): path for path in glob.glob(os.path.join(folder, "checkpoint-step_*.ckpt"))
             if (m := re.match(r"checkpoint-step_(\d+)-", os.path.basename(path)))}
    return last if os.path.isfile(last) or not steps else steps[max(steps)]


# -- records of finished work ---------------------------------------------------------------------------

def read_record(path, fields, what):
    """The JSON object in ``path`` whose ``fields`` ({name: type or tuple of types}) hold values of
    those types; a damaged or edited one is a user error naming it and ``what`` it records."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        record = None

    def fits(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))

    if not isinstance(record, dict) or not all(fits(record.get(n), k) for n, k in fields.items()):
        raise UserError(f"{path} is damaged (it records {what}: {', '.join(fields)}); delete it to do that work "
                        "again")
    return record
