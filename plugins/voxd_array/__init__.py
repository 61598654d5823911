"""voxd_array: microphone-array stages — direction of arrival (``doa``), the learned target mask
(``mask``) and beamforming (``beamform``).

Registered through the ``voxd`` entry point ``array`` exactly as an outside plugin would be. Both stages
need the array geometry (the config's ``array`` section, see :mod:`voxd.geometry`): the chain builder
checks that their input channel count equals the number of microphone positions (``mask`` needs no
geometry: its model learnt its board's).
"""

from __future__ import annotations

from voxd.hookspecs import hookimpl
from voxd.plugins import StageRegistry
from voxd_array.beamform import Beamformer
from voxd_array.doa import Doa
from voxd_array.mask import Mask

STAGES = (Doa, Mask, Beamformer)


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register the direction-of-arrival, mask and beamforming stages."""
    for stage in STAGES:
        registry.add(stage)
