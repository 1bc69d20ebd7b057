"""Provider files: a segmentation model handed over as an ONNX file (``.onnx``) that is only *run*.

An ONNX model is a protobuf graph of standard operators, run by onnxruntime on the CUDA execution
provider when onnxruntime has one and the input is on a GPU, else on the CPU. No Python runs from
such a file; an operator onnxruntime does not know (a custom operator library) fails. A PyTorch
exported program (``.pt2``) is refused: reading one runs code from it.

The contract: one input, RGB images as float32 in 0..255, N×3×H×W; the first output is class
scores N×C×h×w at any resolution. :class:`OnnxProvider` is an ``nn.Module`` whose ``forward`` takes
such a batch and returns the first output as a float32 tensor on the input's device. Every mistake
in a file (not readable, wrong inputs, too large, too slow on its first run) is a
:class:`ProviderFileError`, one line naming the file.

What a file may cost is bounded in size and time: before onnxruntime reads it, the sizes its
constants declare (initializers, ``Constant`` tensors, ``ConstantOfShape`` of a constant shape, in
every subgraph) must add up to at most :data:`MAX_CONSTANT_BYTES`; every run (the first, on one grey
image, then each batch) is stopped after :data:`RUN_SECONDS`, and at once by Ctrl-C. The memory a
run takes is not bounded: a small graph can compute huge tensors from an image.
"""
import math
import os
import threading
import time

import numpy as np
import torch
import torch.nn as nn

from utils.cli import UserError
from utils.torch_files import refuse_exported_program

MAX_CONSTANT_BYTES = 1 << 30  # 1 GiB of declared constants: far above any segmentation network's weights
RUN_SECONDS = 600.0  # any one run of the file: on one grey image at first, then on each batch


class ProviderFileError(UserError):
    """A provider file that is missing, unreadable, or not what the provider contract says."""


def has_provider_ending(path):
    """Whether ``path`` ends in ``.onnx`` after a name (case-insensitive): how a provider file is told."""
    return os.path.splitext(str(path))[1].lower() == ".onnx"


def is_provider_file(path):
    """Whether ``path`` names an ONNX provider file (:func:`has_provider_ending`); a ``.pt2`` is refused."""
    refuse_exported_program(path, ProviderFileError)
    return has_provider_ending(path)


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _shape_text(shape):
    return "×".join("?" if s is None else str(s) for s in shape)


def open_provider_file(path):
    """The provider file ``path`` as an :class:`OnnxProvider`."""
    if not is_provider_file(path):
        raise ProviderFileError(f"{path}: not a provider file (a name ending in .onnx)")
    if os.path.isdir(path):
        raise ProviderFileError(f"provider file is a folder, not a file: {path}")
    if not os.path.isfile(path):
        raise ProviderFileError(f"provider file not found: {path}")
    return OnnxProvider(path)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ProviderFileError("an ONNX provider needs onnxruntime: pip install -r requirements.txt") from None
    return onnxruntime


def declared_constant_bytes(path):
    """The bytes the constants of the ONNX file ``path`` declare (read as protobuf data, external
    data not loaded): initializers, ``Constant`` tensors and ``ConstantOfShape`` outputs whose shape
    is a constant, in the main graph and every subgraph."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and the like
        raise ProviderFileError(f"{path}: not a readable ONNX model ({_first_line(err)})") from None

    def itemsize(data_type):
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
        except Exception:  # an unknown or undefined type: one byte per element
            return 1

    def size(dims, data_type):
        return math.prod(max(0, d) for d in dims) * itemsize(data_type)

    def tensor_bytes(tensor):
        return size(tensor.dims, tensor.data_type)

    def sparse_bytes(sparse):  # stored sparse, made dense when run
        return size(sparse.dims, sparse.values.data_type)

    total, constants, graphs = 0, {}, [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        total += sum(map(sparse_bytes, getattr(graph, "sparse_initializer", ())))
        for tensor in getattr(graph, "initializer", ()):
            total += tensor_bytes(tensor)
            constants[tensor.name] = tensor
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
                total += sum(map(tensor_bytes, attribute.tensors)) + sum(map(sparse_bytes, attribute.sparse_tensors))
                if attribute.HasField("sparse_tensor"):
                    total += sparse_bytes(attribute.sparse_tensor)
                if attribute.HasField("t"):
                    total += tensor_bytes(attribute.t)
                    if node.op_type == "Constant" and node.output:
                        constants[node.output[0]] = attribute.t
            shape = constants.get(node.input[0]) if node.op_type == "ConstantOfShape" and node.input else None
            if shape is not None and math.prod(shape.dims) <= 64:
                try:
                    dims = onnx.numpy_helper.to_array(shape).astype(np.int64).ravel().tolist()
                except Exception:  # not a shape: onnxruntime refuses it
                    continue
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                total += size(dims, value.data_type if value is not None else onnx.TensorProto.FLOAT)
    return total


class OnnxProvider(nn.Module):
    """An ONNX model run by onnxruntime: one session per device, made when a batch first comes from it
    (a GPU's session on the CUDA execution provider when onnxruntime has it, e.g. onnxruntime-gpu).
    A file made for a fixed batch size gets the images in chunks of that size."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        declared = declared_constant_bytes(path)
        if declared > MAX_CONSTANT_BYTES:
            raise ProviderFileError(f"{path}: its constants declare {declared / 2 ** 30:.1f} GiB, more than the "
                                    f"{MAX_CONSTANT_BYTES / 2 ** 30:g} GiB a provider file may hold; refused unread")
        self.sessions = {}
        session = self._session(torch.device("cpu"))  # reads and checks the file now, before any output
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ProviderFileError(f"{path}: the model takes {len(inputs)} inputs "
                                    f"({', '.join(i.name for i in inputs)}); a provider takes one (RGB images N×3×H×W)")
        if not outputs:
            raise ProviderFileError(f"{path}: the model has no output")
        shape = [s if isinstance(s, int) and s > 0 else None for s in inputs[0].shape] if inputs[0].shape else None
        if inputs[0].type != "tensor(float)":
            raise ProviderFileError(f"{path}: its input is {inputs[0].type}, not float32 (the provider contract: RGB "
                                    "images as float32 in 0..255, N×3×H×W)")
        if shape is not None and len(shape) != 4:
            raise ProviderFileError(f"{path}: its input has {len(shape)} dimensions ({_shape_text(shape)}), not "
                                    "N×3×H×W RGB images")
        if shape is not None and shape[3] == 3 and shape[1] != 3:
            raise ProviderFileError(f"{path}: its input is {_shape_text(shape)}, channels last; the provider contract "
                                    "takes channels first, RGB images N×3×H×W (export it so)")
        if shape is not None and shape[1] is not None and shape[1] != 3:
            raise ProviderFileError(f"{path}: its input has {shape[1]} channels, not 3 (the provider contract: RGB "
                                    "images N×3×H×W)")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = tuple(shape) if shape is not None else None  # None per dynamic size

    def accepts_size(self, height, width):
        shape = self.input_shape
        return shape is None or all(s is None or s == v for s, v in zip(shape[2:], (height, width)))

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
        # Memory is taken per run and given back, not kept in an arena or planned ahead for the largest run.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        try:
            session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            raise ProviderFileError(f"{self.path}: not a readable ONNX model ({_first_line(err)})") from None
        self.sessions[key] = session
        return session

    def forward(self, rgb, time_limit=RUN_SECONDS):
        """The first output for ``rgb``; ``time_limit`` (seconds) stops a run that takes longer."""
        batch = self.input_shape[0] if self.input_shape is not None else None
        if batch is None or rgb.shape[0] == batch:
            return self.run(rgb, time_limit)
        outputs = []
        for start in range(0, rgb.shape[0], batch):
            chunk = rgb[start:start + batch]
            count = chunk.shape[0]
            if count < batch:  # the last chunk padded with copies of its last image
                chunk = torch.cat([chunk, chunk[-1:].expand(batch - count, *chunk.shape[1:])])
            outputs.append(self.run(chunk, time_limit)[:count])
        return torch.cat(outputs)

    def run(self, rgb, time_limit=RUN_SECONDS):
        """One run of the session, on a thread of its own: the caller waits at most ``time_limit``
        seconds and, unlike inside onnxruntime, hears Ctrl-C; either stops the run between operators."""
        session = self._session(rgb.device)
        array = np.ascontiguousarray(rgb.detach().to("cpu", torch.float32).numpy())
        options = _onnxruntime().RunOptions()
        options.log_severity_level = 4  # a stopped run is reported here, not logged by onnxruntime
        outcome, finished = [], threading.Event()

        def call():
            try:
                outcome.append(np.asarray(session.run([self.output_name], {self.input_name: array}, options)[0]))
            except Exception as err:  # onnxruntime raises its own classes
                outcome.append(err)
            finally:
                finished.set()

        threading.Thread(target=call, name="onnx-run", daemon=True).start()
        deadline = time.monotonic() + time_limit
        try:  # short waits, each over when the run is: Python handles a signal (Ctrl-C) between two
            while not finished.wait(0.1) and time.monotonic() < deadline:
                pass
        finally:  # the time is up, or KeyboardInterrupt goes on from here once the run has stopped
            if not finished.is_set():
                options.terminate = True
                finished.wait()
        if isinstance(outcome[0], Exception):
            if options.terminate:
                raise ProviderFileError(f"{self.path}: a run on a {_shape_text(array.shape)} batch took longer than "
                                        f"{time_limit:g} s; refused") from None
            raise ProviderFileError(f"{self.path}: running the model on a {_shape_text(array.shape)} batch failed "
                                    f"({_first_line(outcome[0])})") from None
        return torch.from_numpy(outcome[0]).to(rgb.device, torch.float32)
