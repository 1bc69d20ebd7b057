"""Command-line plumbing shared by every entry point: user errors, size flags, exit codes."""
import argparse
import sys


class UserError(Exception):
    """A mistake in the user's input (a flag, a path, a file). Printed as one line, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose mistakes are one line (``error: ...``) instead of the usage dump."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def input_size(text):
    """Parse ``WIDTHxHEIGHT`` (e.g. ``1024x512``) into ``(width, height)``; an argparse ``type``."""
    parts = str(text).lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1024x512, got {text!r}")


def grid_size(text):
    """Parse ``COLSxROWS`` (e.g. ``4x4``); same form as :func:`input_size`."""
    return input_size(text)


def at_least(minimum):
    """An ``argparse`` type: an integer no smaller than ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def user_message(err):
    """The one-line message of a :class:`UserError`. One raised in a DataLoader worker process comes
    back re-raised with the worker's traceback as its text; its last line holds the message."""
    text = str(err)
    if text.startswith("Caught UserError in DataLoader worker"):
        text = text.rstrip().splitlines()[-1].split("UserError: ", 1)[-1]
    return text


def run(main, argv=None):
    """Call ``main(argv)``; turn a :class:`UserError` into ``error: ...`` on stderr and exit 2, and
    a file-system error on a path (a file where a folder should be, no permission, a full disk)
    into ``error: <reason>: <path>`` and exit 1."""
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.filename is None:  # not about a path the command was given or made
            raise
        print(f"error: {err.strerror or err}: {err.filename2 or err.filename}", file=sys.stderr)  # 2: a rename's target
        sys.exit(1)
    except KeyboardInterrupt as err:
        print(f"interrupted: {err.args[0] if err.args else 'finished files are kept; rerun the same command to resume'}",
              file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
