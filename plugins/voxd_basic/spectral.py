"""``passthrough_stft``: the spectral identity, which proves the shared STFT reconstructs exactly."""

from __future__ import annotations

from voxd.frame import Domain, Frame
from voxd.stage import Stage, StageParams


class PassthroughParams(StageParams):
    pass


class PassthroughStft(Stage[PassthroughParams]):
    """Returns every spectrum unchanged; with it, the chain's output is its input delayed by the STFT."""

    kind = "passthrough_stft"
    domain = Domain.SPECTRAL

    def process(self, frame: Frame) -> Frame:
        return frame
