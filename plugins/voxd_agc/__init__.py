"""voxd_agc: loudness normalization, the ``agc`` stage (speech-driven AGC with a peak limiter).

Registered through the ``voxd`` entry point ``agc`` exactly as an outside plugin would be. The stage
requires ``speech`` from an earlier ``vad`` stage (unless ``vad: false``) and provides ``level_dbfs`` and
``agc_gain_db`` (see :mod:`voxd_agc.agc`).
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_agc.agc import Agc

STAGES = (Agc,)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the loudness stage."""
    for stage in STAGES:
        registry.add(stage)
