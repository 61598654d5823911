"""voxd's basic stages: high-pass, gain, channel selection, down-mix and the spectral identity.

Registered through the ``voxd`` entry point ``basic`` exactly as an outside plugin would be.
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_basic.channels import Mix, Select
from voxd_basic.filters import Gain, HighPass
from voxd_basic.spectral import PassthroughStft

STAGES = (HighPass, Gain, Select, Mix, PassthroughStft)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the basic stages."""
    for stage in STAGES:
        registry.add(stage)
