"""Reading the PyTorch files a user names (weights, Lightning checkpoints, resume points) as data.

A ``torch.save`` file is a pickle, and a pickle can run any code while it is read. The provider's
weights come from a third party, so every such file goes through :func:`load_torch_file`, which
uses PyTorch's restricted unpickler: tensors, containers and numbers, plus the hyper-parameter
containers older Lightning checkpoints hold (an ``argparse.Namespace``, Lightning's
``AttributeDict``), rebuilt as a plain :class:`HyperParameters` mapping of our own that runs
nothing. A file that asks for any other Python type is refused with one line naming the file and
the type, and nothing in it runs. There is no switch to lift this.
"""
import os
import pickle
import warnings

import torch

from utils.cli import UserError


class TorchFileError(UserError):
    """A named file that is missing, not a PyTorch file, truncated, or wants to run code."""


class HyperParameters(dict):
    """What a pickled ``argparse.Namespace`` or Lightning ``AttributeDict`` is read as: its fields
    as a plain mapping. Building one sets items and nothing else."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots), as pickle's BUILD allows
            state = {**(state[0] or {}), **(state[1] or {})}
        if state:
            self.update(state)


# The full names under which these containers are pickled, all read as HyperParameters.
_STAND_INS = [(HyperParameters, name) for name in (
    "argparse.Namespace",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
)]


def reading_as_data():
    """A context in which ``torch.load(..., weights_only=True)`` elsewhere (Lightning's resume) reads
    the same hyper-parameter containers as :func:`load_torch_file` does, as plain data."""
    return torch.serialization.safe_globals(_STAND_INS)


def _unsafe_types(path):
    """The Python types ``path``'s pickle names that the restricted unpickler refuses (found by
    reading its opcodes, not by running them)."""
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file or a broken archive: no static listing
        return []


def load_torch_file(path, what="weight file", mmap=False):
    """The object saved in ``path``, read on the CPU without running code from the file.

    ``what`` names the file in errors (``"weight file"``, ``"--resume checkpoint"``). ``mmap``
    maps tensors from the file instead of reading them (cheap inspection of a large checkpoint).
    """
    if os.path.isdir(path):
        raise TorchFileError(f"{what} is a folder, not a file: {path}")
    if not os.path.isfile(path):
        raise TorchFileError(f"{what} {'is not a regular file' if os.path.exists(path) else 'not found'}: {path}")
    try:
        # torch warns about some foreign files (TorchScript archives) before refusing them: the refusal
        # below is the one line the user reads.
        with torch.serialization.safe_globals(_STAND_INS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_types(path)
        if unsafe:
            raise TorchFileError(f"{what} {path} asks for Python code a weight file has no use for "
                                 f"({', '.join(unsafe)}); refused without running anything (save tensors "
                                 "only: torch.save(net.state_dict(), ...))") from err
        raise TorchFileError(f"not a PyTorch {what}, or one holding Python objects besides tensors (refused "
                             f"without running anything): {path}") from err
    except RuntimeError as err:
        if mmap and "mmap" in str(err):  # a legacy (non-zip) file cannot be mapped: read it whole
            return load_torch_file(path, what)
        raise TorchFileError(f"not a PyTorch {what}, or a truncated one ({_first_line(err)}): {path}") from err
    except Exception as err:  # torch raises EOFError, KeyError, ValueError, ... on foreign or cut files
        raise TorchFileError(f"not a PyTorch {what}, or a truncated one ({type(err).__name__}): {path}") from err


def _first_line(err):
    return str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
