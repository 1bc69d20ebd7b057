"""Provider files: a segmentation model handed over as a file that is only *run*, never opened.

Two kinds, chosen by the file name's ending:

- ``.onnx``: an ONNX model (a protobuf graph of standard operators), run by onnxruntime on the CUDA
  execution provider when onnxruntime has one and the input is on a GPU, else on the CPU. No Python
  runs from such a file; an operator onnxruntime does not know (a custom operator library) fails.
- ``.pt2``: a PyTorch exported program (``torch.export.save``). It is **not** opened with
  ``torch.export.load``: that function runs code from the file (it unpickles weights, constants
  and sample inputs with the full unpickler when the file says so, ``pickle.loads`` its opaque
  constants, parses the graph's symbolic shapes with ``sympy.sympify``, which evaluates Python, and
  loads any AOTInductor shared library packed with it). :class:`ExportedProgramProvider` reads the
  archive itself instead: the graph from its JSON (``json.loads``), the weights and constants as raw
  bytes (a file storing any of them as a pickle is refused unread), and it runs the graph node by
  node, calling only the ATen operators of :data:`ALLOWED_OPS`, named by this module (any other
  target is refused before anything runs). Sample inputs and compiled code in the archive are
  never read.

The contract of both: one input, RGB images as float32 in 0..255, N×3×H×W; the first output is
class scores N×C×h×w at any resolution. Both are ``nn.Module`` s whose ``forward`` takes such a
batch and returns the first output as a float32 tensor on the input's device. Every mistake in a
file (not readable, wrong inputs, an operator outside the list) is a :class:`ProviderFileError`,
one line naming the file.
"""
import json
import math
import os
import posixpath
import zipfile

import numpy as np
import torch
import torch.nn as nn

from utils.cli import UserError

PROVIDER_FILE_KINDS = {".onnx": "ONNX model", ".pt2": "PyTorch exported program"}


class ProviderFileError(UserError):
    """A provider file that is missing, unreadable, or not what the provider contract says."""


def provider_file_kind(path):
    """``".onnx"`` or ``".pt2"`` for a provider file (by its ending, case-insensitive), else ``None``."""
    ext = os.path.splitext(str(path))[1].lower()
    return ext if ext in PROVIDER_FILE_KINDS else None


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def open_provider_file(path):
    """The provider file ``path`` as a module (:class:`OnnxProvider` or :class:`ExportedProgramProvider`)."""
    kind = provider_file_kind(path)
    if kind is None:
        raise ProviderFileError(f"{path}: not a provider file (a name ending in {' or '.join(PROVIDER_FILE_KINDS)})")
    if os.path.isdir(path):
        raise ProviderFileError(f"provider file is a folder, not a file: {path}")
    if not os.path.isfile(path):
        raise ProviderFileError(f"provider file not found: {path}")
    return OnnxProvider(path) if kind == ".onnx" else ExportedProgramProvider(path)


def _check_image_input(path, shape, dtype_ok, dtype_name):
    """The checks both kinds make on the one declared input: float32, rank 4, 3 channels."""
    if not dtype_ok:
        raise ProviderFileError(f"{path}: its input is {dtype_name}, not float32 (the provider contract: RGB "
                                "images as float32 in 0..255, N×3×H×W)")
    if shape is not None:
        if len(shape) != 4:
            raise ProviderFileError(f"{path}: its input has {len(shape)} dimensions ({_shape_text(shape)}), not "
                                    "N×3×H×W RGB images")
        if shape[1] is not None and shape[1] != 3:
            raise ProviderFileError(f"{path}: its input has {shape[1]} channels, not 3 (the provider contract: RGB "
                                    "images N×3×H×W)")


def _shape_text(shape):
    return "×".join("?" if s is None else str(s) for s in shape)


class _ProviderFile(nn.Module):
    """What both kinds share: ``path``, the declared input shape (``None`` per dynamic size) and a
    ``forward`` that runs whole batches, or image by image when the file takes one image at a time."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.input_shape = None  # (N, C, H, W) with None for a dynamic size, or None when unknown

    def accepts_size(self, height, width):
        shape = self.input_shape
        return shape is None or all(s is None or s == v for s, v in zip(shape[2:], (height, width)))

    def forward(self, rgb):
        batch = self.input_shape[0] if self.input_shape is not None else None
        if batch is None or rgb.shape[0] == batch:
            return self.run(rgb)
        # A file made for a fixed batch size: the images in chunks of that size, the last one padded.
        outputs = []
        for start in range(0, rgb.shape[0], batch):
            chunk = rgb[start:start + batch]
            count = chunk.shape[0]
            if count < batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(batch - count, *chunk.shape[1:])])
            outputs.append(self.run(chunk)[:count])
        return torch.cat(outputs)

    def run(self, rgb):
        raise NotImplementedError


# -- ONNX --------------------------------------------------------------------------------------------------

def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ProviderFileError("an ONNX provider needs onnxruntime: pip install -r requirements.txt") from None
    return onnxruntime


class OnnxProvider(_ProviderFile):
    """An ONNX model run by onnxruntime: one session per device, made when a batch first comes from it
    (a GPU's session on the CUDA execution provider when onnxruntime has it, e.g. onnxruntime-gpu)."""

    def __init__(self, path):
        super().__init__(path)
        self.sessions = {}
        session = self._session(torch.device("cpu"))  # reads and checks the file now, before any output
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ProviderFileError(f"{path}: the model takes {len(inputs)} inputs "
                                    f"({', '.join(i.name for i in inputs)}); a provider takes one (RGB images N×3×H×W)")
        if not outputs:
            raise ProviderFileError(f"{path}: the model has no output")
        shape = [s if isinstance(s, int) and s > 0 else None for s in inputs[0].shape] if inputs[0].shape else None
        _check_image_input(path, shape, inputs[0].type == "tensor(float)", inputs[0].type)
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = tuple(shape) if shape is not None else None

    def _session(self, device):
        key = (device.type, device.index)
        if key in self.sessions:
            return self.sessions[key]
        ort = _onnxruntime()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about its own optimisations
        try:
            session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            raise ProviderFileError(f"{self.path}: not a readable ONNX model ({_first_line(err)})") from None
        self.sessions[key] = session
        return session

    def run(self, rgb):
        session = self._session(rgb.device)
        array = np.ascontiguousarray(rgb.detach().to("cpu", torch.float32).numpy())
        try:
            scores = session.run([self.output_name], {self.input_name: array})[0]
        except Exception as err:
            raise ProviderFileError(f"{self.path}: running the model on a {_shape_text(array.shape)} batch failed "
                                    f"({_first_line(err)})") from None
        return torch.from_numpy(np.asarray(scores)).to(rgb.device, torch.float32)


# -- PyTorch exported programs, read as data -----------------------------------------------------------------

# The ATen operators an exported provider may call: tensor arithmetic whose arguments ATen checks.
# Nothing that reads files (from_file), aliases memory by hand (as_strided, set_) or calls back into
# Python. A graph naming any other target is refused before it runs.
ALLOWED_OPS = frozenset(f"torch.ops.aten.{name}" for name in (
    "conv2d.default", "convolution.default", "batch_norm.default", "_native_batch_norm_legit_no_training.default",
    "native_batch_norm.default", "layer_norm.default", "native_layer_norm.default", "group_norm.default",
    "relu.default", "relu_.default", "leaky_relu.default", "leaky_relu_.default", "hardtanh.default",
    "hardtanh_.default", "gelu.default", "silu.default", "silu_.default", "sigmoid.default", "tanh.default",
    "clamp.default", "add.Tensor", "add_.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "rsub.Scalar",
    "mul.Tensor", "mul_.Tensor", "mul.Scalar", "div.Tensor", "div.Scalar", "neg.default", "exp.default",
    "sqrt.default", "rsqrt.default", "pow.Tensor_Scalar", "mean.dim", "sum.dim_IntList",
    "softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default",
    "max_pool2d.default", "max_pool2d_with_indices.default", "avg_pool2d.default", "adaptive_avg_pool2d.default",
    "_adaptive_avg_pool2d.default", "upsample_bilinear2d.vec", "upsample_bilinear2d.default",
    "upsample_nearest2d.vec", "upsample_nearest2d.default", "constant_pad_nd.default",
    "flip.default", "cat.default", "permute.default", "transpose.int", "t.default", "view.default",
    "reshape.default", "_unsafe_view.default", "unsqueeze.default", "squeeze.dim", "expand.default",
    "slice.Tensor", "select.int", "contiguous.default", "clone.default", "alias.default", "detach.default",
    "detach_.default", "lift_fresh_copy.default", "dropout.default", "linear.default", "matmul.default",
    "addmm.default", "mm.default", "bmm.default",
))

# schema.ScalarType of torch/_export/serde/schema.py, for the types weights and arguments may have.
_DTYPES = {1: torch.uint8, 4: torch.int32, 5: torch.int64, 6: torch.float16, 7: torch.float32, 8: torch.float64,
           12: torch.bool, 13: torch.bfloat16}
_DTYPE_NAMES = {1: "uint8", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64", 12: "bool",
                13: "bfloat16"}
_MEMORY_FORMATS = {0: None, 1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d,
                   4: torch.preserve_format}
_SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _op(target):
    """The ATen operator ``target`` names; only called with a member of :data:`ALLOWED_OPS`."""
    _, _, _, name, overload = target.split(".")
    return getattr(getattr(torch.ops.aten, name), overload)


class _Archive:
    """The entries of a ``.pt2`` zip archive under its one top folder, read as bytes."""

    def __init__(self, path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            names = self.zip.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise ProviderFileError(f"{path}: not a PyTorch exported program (not a readable zip archive: "
                                    f"{_first_line(err)})") from None
        formats = [n for n in names if n.endswith("/archive_format") and n.count("/") == 1]
        if len(formats) != 1:
            raise ProviderFileError(f"{path}: not a PyTorch exported program (no archive_format entry: write it "
                                    "with torch.export.save)")
        self.prefix = formats[0].rsplit("/", 1)[0] + "/"
        self.names = set(names)

    def has(self, name):
        return self.prefix + name in self.names

    def read(self, name):
        try:
            return self.zip.read(self.prefix + name)
        except KeyError:
            raise ProviderFileError(f"{self.path}: not a PyTorch exported program this toolkit reads "
                                    f"({name} is missing)") from None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise ProviderFileError(f"{self.path}: damaged archive entry {name} ({_first_line(err)})") from None

    def json(self, name):
        try:
            return json.loads(self.read(name))
        except (ValueError, UnicodeDecodeError) as err:
            raise ProviderFileError(f"{self.path}: {name} is not JSON ({_first_line(err)})") from None


def _int(value, what, path):
    """An ``{"as_int": n}`` size; a symbolic one (a dynamic size in a weight) is refused."""
    if isinstance(value, dict) and isinstance(value.get("as_int"), int):
        return value["as_int"]
    raise ProviderFileError(f"{path}: {what} is not a plain integer")


class ExportedProgramProvider(_ProviderFile):
    """A ``torch.export.save`` archive read as data and run by a small interpreter (see the module's
    docstring): weights and constants become buffers (so the module moves between devices like any
    other), the nodes are kept as ``(operator, args, kwargs, outputs)`` with argument references
    resolved when the graph runs."""

    def __init__(self, path):
        super().__init__(path)
        try:
            self._read(path)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:  # a field of the wrong kind
            raise ProviderFileError(f"{path}: not a PyTorch exported program this toolkit reads ({type(err).__name__} "
                                    f"in its JSON: {_first_line(err)[:80]})") from None

    def _read(self, path):
        archive = _Archive(path)
        names = sorted(n[len(archive.prefix):] for n in archive.names if n.startswith(archive.prefix + "models/")
                       and n.endswith(".json"))
        if names != ["models/model.json"]:
            raise ProviderFileError(f"{path}: holds {len(names)} exported programs ({', '.join(names) or 'none'}); "
                                    "a provider file holds one, saved with torch.export.save")
        program = archive.json("models/model.json")
        try:
            graph = program["graph_module"]["graph"]
            signature = program["graph_module"]["signature"]
            nodes, input_specs, output_specs = graph["nodes"], signature["input_specs"], signature["output_specs"]
        except (KeyError, TypeError):
            raise ProviderFileError(f"{path}: not a PyTorch exported program this toolkit reads (no graph or "
                                    "signature in models/model.json)") from None

        stored = {}
        for folder, config_name, prefix in (("weights", "model_weights_config.json", None),
                                            ("constants", "model_constants_config.json", "tensor_")):
            if archive.has(f"data/{folder}/{config_name}"):
                stored.update(self._tensors(archive, folder, config_name, prefix))
        self.values = {}  # graph input name -> buffer name
        user_inputs = []
        for k, spec in enumerate(input_specs):
            kind, body = self._single(spec, "an input of the graph")
            if kind == "user_input":
                user_inputs.append(self._tensor_name(body.get("arg"), "its input"))
                continue
            field = {"parameter": "parameter_name", "buffer": "buffer_name", "tensor_constant": "tensor_constant_name"}
            if kind not in field:
                raise ProviderFileError(f"{path}: the graph takes a {kind} input, which a provider has no use for "
                                        "(only tensors: parameters, buffers, constants, and the images)")
            target = body.get(field[kind])
            if target not in stored:
                raise ProviderFileError(f"{path}: the graph's {kind} {target!r} is not stored in the archive")
            buffer = f"t{k}"
            self.register_buffer(buffer, stored[target], persistent=False)
            self.values[self._tensor_name(body.get("arg"), f"the {kind} {target!r}")] = buffer
        if len(user_inputs) != 1:
            raise ProviderFileError(f"{path}: the graph takes {len(user_inputs)} inputs; a provider takes one (RGB "
                                    "images N×3×H×W)")
        self.input_value = user_inputs[0]
        user_outputs = [body for kind, body in (self._single(s, "an output of the graph") for s in output_specs)
                        if kind == "user_output"]
        if not user_outputs:
            raise ProviderFileError(f"{path}: the graph has no output")
        self.output_value = self._tensor_name(user_outputs[0].get("arg"), "its first output")

        meta = graph.get("tensor_values", {}).get(self.input_value, {})
        sizes = meta.get("sizes") if isinstance(meta, dict) else None
        shape = None
        if isinstance(sizes, list):
            shape = [s["as_int"] if isinstance(s, dict) and isinstance(s.get("as_int"), int) else None for s in sizes]
        dtype = meta.get("dtype") if isinstance(meta, dict) else None
        _check_image_input(path, shape, dtype in (None, 7), _DTYPE_NAMES.get(dtype, f"scalar type {dtype}"))
        self.input_shape = tuple(shape) if shape is not None else None
        self.nodes = [self._node(node, k) for k, node in enumerate(nodes)]

    # -- reading ------------------------------------------------------------------------------------------------

    def _single(self, union, what):
        if not isinstance(union, dict) or len(union) != 1:
            raise ProviderFileError(f"{self.path}: {what} is not in the exported-program format")
        kind, body = next(iter(union.items()))
        return kind, body if isinstance(body, dict) else {}

    def _tensor_name(self, argument, what):
        if isinstance(argument, dict) and "as_tensor" in argument:
            argument = argument["as_tensor"]
        if isinstance(argument, dict) and isinstance(argument.get("name"), str):
            return argument["name"]
        raise ProviderFileError(f"{self.path}: {what} is not a tensor")

    def _tensors(self, archive, folder, config_name, prefix):
        """``{name: tensor}`` of ``data/<folder>``, each rebuilt from raw bytes and its recorded layout."""
        config = archive.json(f"data/{folder}/{config_name}").get("config", {})
        if not isinstance(config, dict):
            raise ProviderFileError(f"{self.path}: data/{folder}/{config_name} is not in the exported-program format")
        tensors = {}
        for name, entry in config.items():
            what = f"{folder[:-1]} {name!r}"
            if not isinstance(entry, dict):
                raise ProviderFileError(f"{self.path}: {what} is not in the exported-program format")
            if entry.get("use_pickle"):
                raise ProviderFileError(f"{self.path}: {what} is stored as a Python pickle, which can run code; refused "
                                        "without reading it (export a network of plain tensors)")
            file_name = entry.get("path_name")
            if not isinstance(file_name, str) or posixpath.basename(file_name) != file_name or (
                    prefix and not file_name.startswith(prefix)):
                raise ProviderFileError(f"{self.path}: {what} is a {file_name!r} entry, not a plain tensor; refused "
                                        "without reading it")
            meta = entry.get("tensor_meta") or {}
            dtype = _DTYPES.get(meta.get("dtype"))
            if dtype is None:
                raise ProviderFileError(f"{self.path}: {what} has a scalar type this toolkit does not read "
                                        f"({meta.get('dtype')})")
            sizes = [_int(s, f"a size of {what}", self.path) for s in meta.get("sizes", [])]
            strides = [_int(s, f"a stride of {what}", self.path) for s in meta.get("strides", [])]
            offset = _int(meta.get("storage_offset", {"as_int": 0}), f"the offset of {what}", self.path)
            data = archive.read(f"data/{folder}/{file_name}")
            element = torch.empty((), dtype=dtype).element_size()
            if len(data) % element:
                raise ProviderFileError(f"{self.path}: {what} has {len(data)} bytes, not whole {dtype} elements")
            try:
                flat = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.zeros(0, dtype=dtype)
                if not data and all(s >= 0 for s in sizes):
                    tensor = torch.zeros(sizes, dtype=dtype)
                else:  # as_strided checks that the view stays inside the bytes read
                    tensor = torch.as_strided(flat, sizes, strides, offset).clone()
            except (RuntimeError, ValueError, TypeError) as err:
                raise ProviderFileError(f"{self.path}: {what} does not fit its stored bytes ({_first_line(err)})") \
                    from None
            tensors[name] = tensor
        return tensors

    def _argument(self, argument, where):
        """A node's argument as ``("value", python value)`` or ``("ref", name or [names])``."""
        kind, value = next(iter(argument.items())) if isinstance(argument, dict) and len(argument) == 1 else (None, None)
        if kind == "as_none":
            return ("value", None)
        if kind == "as_tensor":
            return ("ref", self._tensor_name(value, where))
        if kind == "as_tensors" and isinstance(value, list):
            return ("refs", [self._tensor_name(v, where) for v in value])
        if kind == "as_optional_tensors" and isinstance(value, list):
            return ("refs", [None if isinstance(v, dict) and "as_none" in v else
                             self._tensor_name(v.get("as_tensor") if isinstance(v, dict) else v, where) for v in value])
        if kind in ("as_int", "as_bool") and isinstance(value, (int, bool)):
            return ("value", value)
        if kind in ("as_ints", "as_bools") and isinstance(value, list) and all(isinstance(v, (int, bool)) for v in value):
            return ("value", list(value))
        if kind == "as_float":
            return ("value", self._float(value, where))
        if kind == "as_floats" and isinstance(value, list):
            return ("value", [self._float(v, where) for v in value])
        if kind == "as_scalar_type" and value in _DTYPES:
            return ("value", _DTYPES[value])
        if kind == "as_memory_format" and value in _MEMORY_FORMATS:
            return ("value", _MEMORY_FORMATS[value])
        hint = " (a symbolic size: export with fixed sizes, or a dynamic batch only)" if kind and "sym" in kind else ""
        raise ProviderFileError(f"{self.path}: {where} has an argument of kind {kind} this toolkit does not run{hint}")

    def _float(self, value, where):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        raise ProviderFileError(f"{self.path}: {where} has a number that is not one: {str(value)[:40]!r}")

    def _node(self, node, k):
        target = node.get("target") if isinstance(node, dict) else None
        where = f"node {k} ({str(target)[:80]})"
        if target not in ALLOWED_OPS:
            raise ProviderFileError(f"{self.path}: the graph calls {str(target)[:80]!r}, which is not one of the "
                                    "tensor operators a provider may run; refused before running anything")
        args, kwargs = [], {}
        for item in node.get("inputs", []):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProviderFileError(f"{self.path}: {where} is not in the exported-program format")
            value = self._argument(item.get("arg"), where)
            if item.get("kind") == 2:
                kwargs[item["name"]] = value
            else:
                args.append(value)
        outputs = []
        for output in node.get("outputs", []):
            kind, value = self._argument(output, where)
            outputs.append(value if kind != "value" else None)
        return _op(target), args, kwargs, outputs, where

    # -- running ------------------------------------------------------------------------------------------------

    def run(self, rgb):
        env = {name: getattr(self, buffer) for name, buffer in self.values.items()}
        env[self.input_value] = rgb.float()

        def resolve(argument):
            kind, value = argument
            if kind == "value":
                return value
            if kind == "ref":
                return env[value]
            return [None if v is None else env[v] for v in value]

        with torch.no_grad():
            for op, args, kwargs, outputs, where in self.nodes:
                try:
                    result = op(*[resolve(a) for a in args], **{k: resolve(v) for k, v in kwargs.items()})
                except KeyError as err:
                    raise ProviderFileError(f"{self.path}: {where} uses {err.args[0]!r} before it is computed") \
                        from None
                except (RuntimeError, TypeError, ValueError, IndexError) as err:
                    raise ProviderFileError(f"{self.path}: {where} failed on a {_shape_text(rgb.shape)} batch "
                                            f"({_first_line(err)})") from None
                results = [result] if len(outputs) == 1 else list(result)
                for names, value in zip(outputs, results):
                    if isinstance(names, str):
                        env[names] = value
                    elif isinstance(names, list):
                        env.update({n: v for n, v in zip(names, value) if n is not None})
        if self.output_value not in env:
            raise ProviderFileError(f"{self.path}: the graph's output {self.output_value!r} is never computed")
        return env[self.output_value].float()
