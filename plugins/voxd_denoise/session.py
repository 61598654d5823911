"""onnxruntime sessions for the denoiser models (the in-house model and GTCRN): the core's
(:mod:`voxd.inference`), with this package's bundled models."""

from __future__ import annotations

from voxd.inference import model_bytes as _model_bytes
from voxd.inference import open_session

__all__ = ["model_bytes", "open_session"]


def model_bytes(path: str | None, bundled: str) -> bytes:
    """The ONNX file at ``path``, or this package's ``bundled`` resource (e.g. ``models/x.onnx``)."""
    return _model_bytes(path, "voxd_denoise", bundled)
