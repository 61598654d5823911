"""Streaming sample-rate conversion (libsoxr through ``soxr``), stateful across blocks."""

from __future__ import annotations

import numpy as np
import soxr


class StreamResampler:
    """Converts ``(channels, n)`` float32 blocks from ``in_rate`` to ``out_rate`` (Hz), keeping state.

    soxr removes its own filter delay, so output sample ``k`` lines up with input time ``k / out_rate``;
    after :meth:`flush` the total output length is ``round(n_in * out_rate / in_rate)``. When the rates
    are equal, blocks pass through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int, quality: str = "HQ") -> None:
        self.in_rate, self.out_rate, self.channels = in_rate, out_rate, channels
        self._stream = (
            None if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality=quality)
        )

    def push(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample one block ``(channels, n)``; ``last=True`` also drains the filter."""
        if self._stream is None:
            return x
        y = self._stream.resample_chunk(np.ascontiguousarray(x.T), last=last)
        return np.ascontiguousarray(y.T, dtype=np.float32)

    def flush(self) -> np.ndarray:
        """Drain the filter at end of stream: the last output samples ``(channels, m)``."""
        return self.push(np.zeros((self.channels, 0), np.float32), last=True)
