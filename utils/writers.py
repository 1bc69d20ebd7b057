"""Writing output files off the main process's thread: the PNGs of the data stages and of predict mode.

Encoding PNGs and syncing the record of a finished batch (``fsync``, which on ext4 also flushes
the PNGs just written) would otherwise take the main process's time between two batches, which a
fast GPU leaves little of (docs/benchmarks.md). :class:`BackgroundWriter` runs the jobs on a few threads (OpenCV's encoding, NumPy's look-ups and
file writes release the GIL, so threads run them in parallel without copying the arrays to another
process) and the records on one more, and keeps the guarantees of writing inline:

- **bounded**: at most ``max_pending`` jobs and records wait or run; submitting one more first
  waits for the oldest, so the arrays held stay bounded however fast the network predicts;
- **in order**: each job's ``then`` (a resumable run's record of the files) runs on the record
  thread, one at a time in submission order, only after that job and every earlier one finished,
  so a record still means "its files exist";
- **errors surface**: an error of a job or a ``then`` is raised on the submitting thread at its
  next ``submit`` or at :meth:`finish`; a file-system error becomes a one-line ``UserError`` naming
  the file;
- **finished before done**: :meth:`finish` waits for every job and record (the stage reports, and
  writes its summary, after it). After an error elsewhere (a damaged image, Ctrl-C),
  :meth:`settle` still finishes and records what was submitted, so the finished work is kept for a
  resumed run; a job that fails then is dropped with the ``then`` of every later one (each file is
  written atomically: it exists whole or not at all, and an unrecorded image is done again by the
  resumed run).
"""
import collections
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from utils.cli import UserError
from utils.loaders import available_cores

MAX_THREADS = 4  # enough encoding to keep up with a fast GPU, few enough to leave cores to the loaders


def default_threads(cores=None):
    """Writer threads: a quarter of the cores, 1 to :data:`MAX_THREADS` (the loader workers need the rest)."""
    cores = available_cores() if cores is None else cores
    return max(1, min(MAX_THREADS, cores // 4))


def _writing(job, *args):
    try:
        return job(*args)
    except OSError as err:  # a full disk, a folder without write permission, a file where a folder should be
        path = err.filename2 or err.filename
        if path is None:
            raise
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


class BackgroundWriter:
    """A few writer threads and a record thread with a bounded queue (module docstring). Use as a
    context manager, or call :meth:`finish` and then :meth:`close`."""

    def __init__(self, threads=None, max_pending=None):
        self.threads = default_threads() if threads is None else threads
        self.max_pending = max(1, 2 * self.threads if max_pending is None else max_pending)
        self._writers = self._recorder = None  # started with the first job, after the loader's workers
        self._jobs = collections.deque()  # (future, then) of the jobs, oldest first
        self._records = collections.deque()  # futures of the thens handed to the record thread, oldest first

    @property
    def pending(self):
        """Jobs and records submitted and not yet retired (waiting, running, or done and not yet looked at)."""
        return len(self._jobs) + len(self._records)

    def submit(self, job, *args, then=None):
        """Run ``job(*args)`` on a writer thread and then ``then(result)`` on the record thread, in
        submission order once it and all jobs before it are done. Waits first while
        :attr:`max_pending` are pending, and raises the error of a finished job or record."""
        self._collect(wait_until=self.max_pending - 1)
        if self._writers is None:
            self._writers = ThreadPoolExecutor(self.threads, thread_name_prefix="file-writer")
            self._recorder = ThreadPoolExecutor(1, thread_name_prefix="file-recorder")
        self._jobs.append((self._writers.submit(_writing, job, *args), then))
        self._collect()

    def finish(self):
        """Wait for every job and record; raises the first error."""
        self._collect(wait_until=0)

    def settle(self):
        """After an error elsewhere: finish what was submitted, as far as it goes (an error now is not
        raised: the first one is reported), then :meth:`close`."""
        try:
            self.finish()
        except Exception:
            pass
        finally:
            self.close()

    def close(self):
        """Drop the jobs not started (and their ``then``), wait for the running ones and for the
        records handed on, stop the threads."""
        self._jobs.clear()
        self._records.clear()
        if self._writers is not None:
            self._writers.shutdown(wait=True, cancel_futures=True)
            self._recorder.shutdown(wait=True)
            self._writers = self._recorder = None

    def _collect(self, wait_until=None):
        """Hand the thens of the finished jobs, oldest first, to the record thread, and retire the
        finished records; while more than ``wait_until`` are pending, wait (``None``: never)."""
        while True:
            while self._jobs and self._jobs[0][0].done():
                result = self._jobs[0][0].result()  # raises the job's error
                then = self._jobs.popleft()[1]
                if then is not None:
                    self._records.append(self._recorder.submit(_writing, then, result))
            while self._records and self._records[0].done():
                self._records.popleft().result()  # raises the record's error
            if wait_until is None or self.pending <= wait_until:
                return
            wait([self._records[0] if self._records else self._jobs[0][0]], return_when=FIRST_COMPLETED)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None:
            self.settle()
            return
        try:
            self.finish()
        finally:
            self.close()
