"""voxd_noise: noise estimation (``noise``).

Registered through the ``voxd`` entry point ``noise`` exactly as an outside plugin would be. The
``noise`` stage provides ``noise.psd``, ``noise.cov`` and ``noise.spp`` (see :mod:`voxd_noise.noise`).
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_noise.noise import NoiseEstimator

STAGES = (NoiseEstimator,)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the noise estimation stage."""
    for stage in STAGES:
        registry.add(stage)
