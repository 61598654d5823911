"""voxd_denoise: the learned noise suppressor ``denoise`` (bundled ONNX model, run with onnxruntime).

Registered through the ``voxd`` entry point ``denoise`` exactly as an outside plugin would be. The
training and export tooling (torch, not needed at run time) is in ``train/``.
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_denoise.stage import Denoise

STAGES = (Denoise,)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the ``denoise`` stage."""
    for stage in STAGES:
        registry.add(stage)
