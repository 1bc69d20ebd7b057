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


def refuse_exported_program(path, error=None):
    """A PyTorch exported program (``.pt2``, by its ending) is refused unread: loading one runs code
    from it. ``error``: the exception class to raise (default :class:`TorchFileError`)."""
    if os.path.splitext(str(path))[1].lower() == ".pt2":
        raise (error or TorchFileError)(
            f"{path}: PyTorch exported programs are not run (loading one runs code from it); convert a trusted "
            "one to ONNX: torch.onnx.export(torch.export.load('m.pt2'), dynamo=True).save('m.onnx')")


def load_torch_file(path, what="weight file", mmap=False):
    """The object saved in ``path``, read on the CPU without running code from the file.

    ``what`` names the file in errors (``"weight file"``, ``"--resume checkpoint"``). ``mmap``
    maps tensors from the file instead of reading them (cheap inspection of a large checkpoint).
    """
    refuse_exported_program(path)
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


# -- weight files: the state dict inside the forms of file people have ----------------------------------

def _listing(keys, limit=10):
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"({len(keys)}) {shown}{more}"


def select_prefix(state, prefix, path):
    """The entries under ``prefix.`` with the prefix removed; an error listing the prefixes otherwise."""
    prefix = prefix.rstrip(".") + "."
    selected = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not selected:
        present = sorted({k.split(".", 1)[0] for k in state if "." in k})
        raise TorchFileError(f"{path} has no weights under '{prefix}' (prefixes present: "
                             f"{', '.join(present) or 'none'})")
    return selected


def read_state_dict(path, prefix=None):
    """The network weights in ``path`` as a plain state dict of tensors: a plain state dict; a
    Lightning checkpoint (weights under ``net.``, else ``ema_net.``, or under an explicit ``prefix``);
    either saved with a ``module.`` prefix (DataParallel / DDP)."""
    obj = load_torch_file(path, "weight file")
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path} holds a {type(obj).__name__}, not a state dict or Lightning checkpoint")
    state = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    if prefix:
        state = select_prefix(state, prefix, path)
    else:  # a Lightning checkpoint of a self-distillation stage holds the student (net) and the teacher (ema_net)
        for candidate in ("net.", "ema_net."):
            if any(k.startswith(candidate) for k in state):
                state = select_prefix(state, candidate, path)
                break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return only_tensors(state, path)


def only_tensors(state, path):
    """``state``, refused with one line naming ``path`` when an entry is not a tensor."""
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise TorchFileError(f"{path} is not a state dict: entries that are not tensors: {_listing(not_tensors)}")
    return state


def key_mismatch(state, expected):
    """What keeps ``state`` from loading into a network whose state dict is ``expected``: the
    mis-shaped, missing and unexpected keys, each listed (empty when it fits)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if misshaped:
        problems.append("mis-shaped " + _listing(
            f"{k} (file {list(state[k].shape)}, network {list(expected[k].shape)})" for k in misshaped))
    if missing:
        problems.append("missing " + _listing(missing))
    if unexpected:
        problems.append("unexpected " + _listing(unexpected))
    return problems
