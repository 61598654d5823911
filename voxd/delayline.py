"""A fixed delay, hop by hop: a stage's dry input aligned with its own delayed output.

A stage that declares a delay (an engine's algorithmic latency) and sometimes outputs its input instead
(a bypass, a wet/dry mix) must delay that input by the same amount, or the chain's delay compensation
would misalign it. The buffer is made once, at the stage's open.
"""

from __future__ import annotations

import numpy as np


class DelayLine:
    """The input delayed by ``delay`` samples, hop by hop, ``channels`` channels, at most ``hop`` samples
    per push."""

    def __init__(self, channels: int, delay: int, hop: int) -> None:
        self._line = np.zeros((channels, delay + hop), np.float32)

    def push(self, x: np.ndarray) -> np.ndarray:
        """Take ``x`` float32 ``(channels, n)`` (``n`` <= hop); return the input of ``delay`` samples ago,
        a new ``(channels, n)`` array."""
        line, n = self._line, x.shape[1]
        line[:, -n:] = x
        out = line[:, :n].copy()
        line[:, :-n] = line[:, n:]
        return out

    def reset(self) -> None:
        """Silence in the line (a new stream)."""
        self._line[:] = 0.0
