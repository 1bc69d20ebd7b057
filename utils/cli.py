"""Command-line plumbing shared by every entry point: user errors, flag types, exit codes.

Every numeric flag is checked by its argparse ``type`` when it is parsed, so a bad value is one
line naming the flag before anything runs or is written: :func:`at_least` (integers, optionally
bounded), :func:`finite_float`, :func:`positive_float`, :func:`non_negative_float`,
:func:`probability`, :func:`float_list`, :func:`devices` and the seed range :data:`seed`. NaN and
infinity are refused by every float type.
"""
import argparse
import importlib
import math
import shlex
import sys
import time
from collections.abc import Mapping


class UserError(Exception):
    """A mistake in the user's input (a flag, a path, a file). Printed as one line, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose mistakes are one line (``error: ...``) instead of the usage dump,
    naming the closest real flag of a mistyped one; abbreviations of flags are not taken (a typo
    must not silently become another flag)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            message = "; ".join(self.unknown_flag(word) for word in message.split(": ", 1)[1].split()
                                if word.startswith("--")) or message
        raise UserError(f"{message} (see {self.prog} --help)")

    def unknown_flag(self, word):
        import difflib

        flag = word.split("=", 1)[0]
        known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        return f"unknown flag {flag}" + (f": did you mean {close[0]}?" if close else "")


MAX_SIDE = 8192  # pixels per side of an input size: 4x Cityscapes' 2048; beyond it memory runs out, not the method


def input_size(text):
    """Parse ``WIDTHxHEIGHT`` (e.g. ``1024x512``) into ``(width, height)``; an argparse ``type``."""
    parts = str(text).lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() and 0 < int(p) <= MAX_SIDE for p in parts):
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1024x512, each side 1 to {MAX_SIDE}, got {text!r}")


def grid_size(text):
    """Parse ``COLSxROWS`` (e.g. ``4x4``); same form as :func:`input_size`."""
    return input_size(text)


def at_least(minimum, maximum=None):
    """An ``argparse`` type: an integer no smaller than ``minimum`` (and no larger than ``maximum``)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}" if maximum is None else f"integer in {minimum}..{maximum}"
    return parse


seed = at_least(0, 2 ** 32 - 1)  # what NumPy (and Lightning's seed_everything) accept


def name_text(text):
    """An ``argparse`` type for names that become folder names (``--experiment-name``): no control
    characters (a NUL byte, a tab or a newline cannot be in a path or a record), not empty."""
    if not str(text) or any(ord(c) < 32 or ord(c) == 127 for c in str(text)):
        raise argparse.ArgumentTypeError(f"expected a name without control characters, got {text!r}")
    return str(text)


def typed_flags(argv):
    """The flags written in ``argv`` (``--name`` of ``--name value`` and ``--name=value``)."""
    return {word.split("=", 1)[0] for word in argv or () if word.startswith("--")}


def _float_type(name, accepts, requirement):
    """An ``argparse`` type: a finite float for which ``accepts(value)`` holds."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if not math.isfinite(value) or not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value
    parse.__name__ = name
    return parse


finite_float = _float_type("finite number", lambda v: True, "a finite number")
positive_float = _float_type("positive number", lambda v: v > 0, "a finite number above 0")
learning_rate = _float_type("learning rate", lambda v: 0 < v <= 1, "a rate above 0 and at most 1 (published: 1e-4, 1e-5)")
non_negative_float = _float_type("non-negative number", lambda v: v >= 0, "a finite number, 0 or more")
probability = _float_type("probability", lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def float_list(item=positive_float):
    """An ``argparse`` type: comma-separated numbers (at least one), each checked by ``item``,
    e.g. ``0.75,1.0,1.25``; returns a tuple."""
    def parse(text):
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.75,1.0,1.25, got {text!r}")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentTypeError(f"{err} (in {text!r})") from None
        return tuple(values)
    parse.__name__ = f"list of {item.__name__}s"
    return parse


def devices(text):
    """``--devices``: ``auto``, a number of devices (1 or more), or a comma-separated list of device
    indices such as ``0,1`` (kept as text: Lightning reads it so)."""
    text = str(text).strip()
    if text == "auto":
        return text
    if "," in text:
        if all(part.strip().isdigit() for part in text.rstrip(",").split(",")):
            return text
        raise argparse.ArgumentTypeError(f"expected auto, a count such as 2 or device indices such as 0,1, got {text!r}")
    return at_least(1)(text)


class Registry(Mapping):
    """Names (a flag's choices) mapped to classes given as ``"package.module.Class"``: the names are
    known without importing anything, a class is imported when it is asked for."""

    def __init__(self, paths):
        self.paths = dict(paths)

    def __getitem__(self, name):
        module, _, attribute = self.paths[name].rpartition(".")
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self):
        return iter(self.paths)

    def __len__(self):
        return len(self.paths)


def user_message(err):
    """The one-line message of a :class:`UserError` (or a subclass). One raised in a DataLoader worker
    process comes back re-raised with the worker's traceback as its text; its last line holds the
    message, after the error's class name."""
    text = str(err)
    if text.startswith("Caught ") and " in DataLoader worker" in text.split("\n", 1)[0]:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


def _say(text):
    """``text`` on standard error; a file name's undecodable bytes are shown escaped, whatever the
    stream's encoding (printing them as they are would fail in the error report itself)."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=sys.stderr)


def run(main, argv=None):
    """Call ``main(argv)``; turn a :class:`UserError` into ``error: ...`` on stderr and exit 2, and
    a file-system error on a path (a file where a folder should be, no permission, a full disk)
    into ``error: <reason>: <path>`` and exit 1."""
    try:
        code = main(argv)
    except UserError as err:
        _say(f"error: {user_message(err)}")
        sys.exit(2)
    except OSError as err:
        if err.filename is None:  # not about a path the command was given or made
            raise
        _say(f"error: {err.strerror or err}: {err.filename2 or err.filename}")  # filename2: a rename's target
        sys.exit(1)
    except KeyboardInterrupt as err:
        print(f"interrupted: {err.args[0] if err.args else 'finished files are kept; rerun the same command to resume'}",
              file=sys.stderr)
        sys.exit(130)
    # An entry point returns an exit code, or its result for Python callers (then it succeeded).
    sys.exit(code if isinstance(code, int) else 0)


def announce(title, script, argv):
    """Print a stage's title and the command that runs it alone, quoted so that it can be pasted."""
    print(f"\n=== {title}\n$ python {script} {shlex.join(argv)}", flush=True)


def interactive():
    """Whether output goes to a terminal (then progress is a bar; in a log file, plain lines)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class PlainLines:
    """Progress for a log file: ``desc done/total[, extra], rate, time left`` on standard output about
    every ``every`` seconds and once at the end, never a carriage return. The rate counts the
    ``images`` given to :meth:`update` when there are any, else the items done."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", every=30.0):
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.done = self.images = 0
        self.started = self.last = time.monotonic()
        self.printed_at = None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def update(self, n=1, images=0, extra=""):
        self.done += n
        self.images += images
        now = time.monotonic()
        if now - self.last >= self.every or (self.total is not None and self.done >= self.total):
            self.last = now
            self.print(extra)

    def print(self, extra=""):
        elapsed = time.monotonic() - self.started
        count, unit = (self.images, "images") if self.images else (self.done, f"{self.unit}")
        rate = f", {count / elapsed:.1f} {unit}/s" if count and elapsed > 0 else ""
        left = (f", {_duration(elapsed / self.done * (self.total - self.done))} left"
                if self.total and self.done and self.done < self.total else "")
        print(f"{self.desc + ' ' if self.desc else ''}{self.done}/{self.total if self.total is not None else '?'}"
              f"{extra}{rate}{left}", flush=True)
        self.printed_at = self.done

    def close(self):
        if self.done and self.printed_at != self.done:
            self.print()


def progress(iterable, total=None, desc="", unit="it", leave=True, disable=False):
    """``iterable`` with a progress display: tqdm's bar on a terminal, :class:`PlainLines` when output
    goes to a file, nothing with ``disable``."""
    if disable:
        return iterable
    if interactive():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    return PlainLines(iterable, total, desc, unit)
