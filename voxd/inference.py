"""onnxruntime sessions for the stages that run a model (the denoisers, the residual-echo suppressor)."""

from __future__ import annotations

from importlib import resources
from typing import Any


def model_bytes(path: str | None, package: str, bundled: str) -> bytes:
    """The ONNX file at ``path``, or ``package``'s ``bundled`` resource (e.g. ``models/x.onnx``)."""
    if path is not None:
        with open(path, "rb") as f:
            return f.read()
    return resources.files(package).joinpath(bundled).read_bytes()


def load_model(path: str | None, package: str, bundled: str) -> Any:  # -> onnxruntime.InferenceSession
    """:func:`open_session` on the file at ``path`` or ``package``'s ``bundled`` model; ValueError
    ``model '<path or bundled>' does not load: <onnxruntime's first line>`` when it cannot be read or parsed
    (a config error at ``voxd check``, not a traceback)."""
    try:
        return open_session(model_bytes(path, package, bundled))
    except Exception as exc:  # onnxruntime's errors have no common base class
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model {path or bundled!r} does not load: {first}") from None


def state_size(session: Any) -> int:
    """``S`` of a streaming model's ``state`` input ``(1, S)``: its shape, else the ``voxd.state_size``
    metadata."""
    shape = next(i.shape for i in session.get_inputs() if i.name == "state")
    if len(shape) == 2 and isinstance(shape[1], int):
        return int(shape[1])
    return int(session.get_modelmeta().custom_metadata_map["voxd.state_size"])


def open_session(model: bytes) -> Any:  # -> onnxruntime.InferenceSession
    """An onnxruntime session on the serialized ONNX ``model``: CPU, one intra-op and one inter-op
    thread, sequential (the daemon's worker thread is the only caller; more threads only contend)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
