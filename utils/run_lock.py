"""One run per output folder: an exclusive lock on the folder for the whole run.

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
import json
import os
import shlex
import socket
import sys
import time

from utils.cli import UserError

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


def _make_folders(folder):
    """Create ``folder`` and its missing parents; the ones created here, outermost first."""
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
                raise
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
        self.created = _make_folders(self.folder)
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
