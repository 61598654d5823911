"""Channel stages: ``select`` (pick or reorder channels) and ``mix`` (average to mono)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from voxd.frame import AudioFormat, Frame
from voxd.stage import FormatError, Stage, StageParams


class SelectParams(StageParams):
    channels: list[Annotated[int, Field(ge=0, le=1023)]] = Field(
        min_length=1, max_length=1024, description="input channel indices (0-based), in output order")


class Select(Stage[SelectParams]):
    """Pick or reorder channels: output channel ``i`` is input channel ``channels[i]``."""

    kind = "select"

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        bad = [c for c in self.params.channels if not 0 <= c < fmt.channels]
        if bad:
            raise FormatError(f"channel {bad[0]} out of range: the input has {fmt.channels} "
                              f"channel{'s' if fmt.channels != 1 else ''} (0-{fmt.channels - 1})")
        self._index = np.asarray(self.params.channels)
        return AudioFormat(fmt.rate, len(self.params.channels), fmt.frame, fmt.domain, fmt.n_fft)

    def process(self, frame: Frame) -> Frame:
        assert frame.samples is not None
        return frame.with_samples(np.ascontiguousarray(frame.samples[self._index]))


class MixParams(StageParams):
    pass


class Mix(Stage[MixParams]):
    """Average all channels to one (a plain down-mix; a beamformer does better on an array)."""

    kind = "mix"

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        self._scale = np.float32(1.0 / fmt.channels)
        return AudioFormat(fmt.rate, 1, fmt.frame, fmt.domain, fmt.n_fft)

    def process(self, frame: Frame) -> Frame:
        assert frame.samples is not None
        return frame.with_samples(frame.samples.sum(axis=0, keepdims=True) * self._scale)
