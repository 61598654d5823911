"""voxd_aec: the acoustic echo canceller ``aec`` (WebRTC AEC3 through ``livekit``'s audio processing
module; ``pip install 'voxd[aec]'``).

Registered through the ``voxd`` entry point ``aec`` exactly as an outside plugin would be.
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_aec.stage import Aec

STAGES = (Aec,)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the ``aec`` stage."""
    for stage in STAGES:
        registry.add(stage)
