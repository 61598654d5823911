"""voxd_vad: voice activity detection (the ``vad`` stage: WebRTC or Silero, with decision smoothing).

Registered through the ``voxd`` entry point ``vad`` exactly as an outside plugin would be. The Silero
model ships in ``models/`` (see ``models/README.md``); nothing is downloaded at run time.
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_vad.stage import Vad

STAGES = (Vad,)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the ``vad`` stage."""
    for stage in STAGES:
        registry.add(stage)
