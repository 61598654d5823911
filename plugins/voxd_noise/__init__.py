"""voxd_noise: placeholder, filled in by the VAD/noise work (registers nothing yet)."""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register this plugin's stages."""
