"""Bulk delay of the echo behind the playback reference, by averaged GCC-PHAT, streaming.

An adaptive echo filter must span the whole delay between a reference sample and its echo in the
microphones; with a separate playback device or a deep sound-server buffer that delay alone can be
200 ms or more, and a filter that long converges slowly. This estimator finds the delay so that the
reference can be delayed to match and the filter need only span the room's echo tail.

Method: blocks of ``block`` samples (50 % overlap) of the reference and of microphone 0; their
PHAT-weighted cross-spectrum (``M R* / |M R*|``) is averaged over blocks (forgetting factor
``forget``); in its inverse FFT over ``[0, max_lag]`` the candidate is the earliest peak that reaches
half the largest within ``early_window`` samples before it (the direct path, which a strong reflection
may outdo; 30 ms at 16 kHz: a room's path differences; a spike further back is noise). A
candidate counts only when its peak stands ``min_peak`` times above the correlation's RMS (silence,
tones and noise give none), and it becomes the estimate when two successive candidates agree within
``agree`` samples and it differs from the current estimate by more than ``agree`` (small wander is not
a change). Blocks whose reference is quieter than ``min_rms`` are skipped. Buffers are made up front;
cost: two real FFTs of ``2 * block`` points per ``block / 2`` samples.
"""

from __future__ import annotations

import numpy as np

EARLY_PEAK = 0.5  # a lag counts as the onset when its correlation is this fraction of the largest
EARLY_SPAN = 16  # the onset is the local maximum within this many samples after the first such lag


class DelayEstimator:
    """Streaming bulk-delay estimate (samples; the microphones lag the reference)."""

    def __init__(self, block: int = 8192, max_lag: int = 6400, forget: float = 0.6, min_peak: float = 6.0,
                 agree: int = 16, min_rms: float = 1e-4, early_window: int = 480) -> None:
        if max_lag >= block:
            raise ValueError(f"max_lag {max_lag} must be below the block {block}")
        self.block, self.max_lag, self.forget = block, max_lag, forget
        self.min_peak, self.agree, self.min_rms = min_peak, agree, min_rms
        self.early_window = early_window
        self.nfft = 2 * block
        self._ref = np.zeros(block, np.float32)
        self._mic = np.zeros(block, np.float32)
        self._fill = 0
        self._acc = np.zeros(block + 1, np.complex128)
        self._have_acc = False
        self._cand: int | None = None
        self.delay: int | None = None  #: the current estimate (samples), None before the first
        self.peak = 0.0  #: the last candidate's peak over the correlation's RMS

    def reset(self) -> None:
        """Forget everything (a new stream)."""
        self._fill = 0
        self._acc[:] = 0
        self._have_acc = False
        self._cand = None
        self.delay = None
        self.peak = 0.0

    def push(self, ref: np.ndarray, mic: np.ndarray) -> int | None:
        """Add one hop: ``ref`` and ``mic`` float32 ``(n,)`` of equal length; returns :attr:`delay`."""
        pos = 0
        n = ref.shape[0]
        while pos < n:
            take = min(n - pos, self.block - self._fill)
            self._ref[self._fill : self._fill + take] = ref[pos : pos + take]
            self._mic[self._fill : self._fill + take] = mic[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.block:
                self._analyse()
                half = self.block // 2  # keep the second half: 50 % overlap
                self._ref[:half] = self._ref[half:]
                self._mic[:half] = self._mic[half:]
                self._fill = half
        return self.delay

    def _analyse(self) -> None:
        r = self._ref
        if float(np.sqrt(np.mean(np.square(r, dtype=np.float64)))) < self.min_rms:
            return
        cross = np.fft.rfft(self._mic, self.nfft) * np.conj(np.fft.rfft(r, self.nfft))
        cross /= np.abs(cross) + 1e-12
        if self._have_acc:
            self._acc *= self.forget
            self._acc += (1.0 - self.forget) * cross
        else:
            self._acc[:] = cross
            self._have_acc = True
        cc = np.fft.irfft(self._acc, self.nfft)[: self.max_lag + 1]
        top = int(np.argmax(cc))
        # the echo's onset is the earliest strong peak, not the strongest: a reflection (or a loudspeaker
        # resonance) can beat the direct path, and the filter must start before the direct path
        lo = max(0, top - self.early_window)
        early = lo + np.flatnonzero(cc[lo : top + 1] >= EARLY_PEAK * cc[top])
        first = int(early[0]) if early.size else top
        k = first + int(np.argmax(cc[first : min(top, first + EARLY_SPAN) + 1]))
        self.peak = float(cc[top] / (np.sqrt(np.mean(cc * cc)) + 1e-12))
        if not np.isfinite(self.peak) or self.peak < self.min_peak:
            return
        agrees = self._cand is not None and abs(k - self._cand) <= self.agree
        if agrees and (self.delay is None or abs(k - self.delay) > self.agree):
            self.delay = k
        self._cand = k
