"""voxd_noise: noise estimation (``noise``) and the classical suppressors (``spectral_subtraction``,
``wiener``).

Registered through the ``voxd`` entry point ``noise`` exactly as an outside plugin would be. The
``noise`` stage provides ``noise.psd``, ``noise.cov`` and ``noise.spp`` (see :mod:`voxd_noise.noise`);
the suppressors require ``noise.psd`` from an earlier stage.
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_noise.noise import NoiseEstimator
from voxd_noise.suppress import SpectralSubtraction, Wiener

STAGES = (NoiseEstimator, SpectralSubtraction, Wiener)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the noise estimation and suppression stages."""
    for stage in STAGES:
        registry.add(stage)
