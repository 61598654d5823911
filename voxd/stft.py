"""Streaming STFT analysis and synthesis with perfect reconstruction.

One analysis/synthesis pair serves a whole run of spectral stages (the chain builder inserts it where
the domain changes). Weighted overlap-add: the analysis window is a periodic sqrt-Hann of ``n_fft``
samples; the synthesis window is the analysis window divided by the sum of the squared analysis
windows over all overlapping hops, so ``synthesis(analysis(x))`` equals ``x`` delayed by
``n_fft - hop`` samples for any integer ``n_fft / hop`` (with the default 20 ms / 10 ms the synthesis
window is sqrt-Hann too).

Both objects accept blocks of any length and keep their state between calls, so the output does not
depend on how the input was cut into blocks.
"""

from __future__ import annotations

import numpy as np


def sqrt_hann(n: int) -> np.ndarray:
    """Periodic sqrt-Hann window of ``n`` samples, float64."""
    return np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n))


def synthesis_window(analysis: np.ndarray, hop: int) -> np.ndarray:
    """Synthesis window that makes weighted overlap-add exact for ``analysis`` at ``hop``."""
    n = analysis.size
    if n % hop:
        raise ValueError(f"window length {n} is not a multiple of hop {hop}")
    power = analysis**2
    norm = np.zeros(hop)
    for k in range(n // hop):
        norm += power[k * hop : (k + 1) * hop]
    return analysis / np.tile(norm, n // hop)


class StftAnalysis:
    """Streaming analysis: time blocks ``(channels, n)`` in, one spectrum per hop out.

    Each spectrum is complex64 ``(channels, n_fft // 2 + 1)`` and covers the newest ``n_fft`` samples
    (zeros before the stream start).
    """

    def __init__(self, channels: int, n_fft: int, hop: int) -> None:
        if n_fft % hop:
            raise ValueError(f"window length {n_fft} is not a multiple of hop {hop}")
        self.channels, self.n_fft, self.hop = channels, n_fft, hop
        self.window = sqrt_hann(n_fft).astype(np.float32)
        self._buf = np.zeros((channels, n_fft), np.float32)
        self._fill = n_fft - hop  # samples already in the buffer (the initial zeros)

    def reset(self) -> None:
        """Forget the history (as at stream start)."""
        self._buf[:] = 0.0
        self._fill = self.n_fft - self.hop

    def push(self, x: np.ndarray) -> list[np.ndarray]:
        """Append samples ``(channels, n)``; return the spectra of every hop completed (maybe none)."""
        out: list[np.ndarray] = []
        pos, n = 0, x.shape[1]
        while pos < n:
            take = min(self.n_fft - self._fill, n - pos)
            self._buf[:, self._fill : self._fill + take] = x[:, pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.n_fft:
                out.append(self.analyse(self._buf))
                # slide by one hop: keep the newest n_fft - hop samples
                self._buf[:, : self.n_fft - self.hop] = self._buf[:, self.hop :]
                self._fill = self.n_fft - self.hop
        return out

    def analyse(self, frame: np.ndarray) -> np.ndarray:
        """Spectrum of one full window ``(channels, n_fft)``."""
        return np.fft.rfft(frame * self.window, axis=1).astype(np.complex64)


class StftSynthesis:
    """Streaming synthesis: one spectrum ``(channels, bins)`` in, ``hop`` samples ``(channels, hop)`` out."""

    def __init__(self, channels: int, n_fft: int, hop: int) -> None:
        self.channels, self.n_fft, self.hop = channels, n_fft, hop
        self.window = synthesis_window(sqrt_hann(n_fft), hop).astype(np.float32)
        self._ola = np.zeros((channels, n_fft), np.float32)

    def reset(self) -> None:
        """Forget the overlap-add tail."""
        self._ola[:] = 0.0

    def push(self, spec: np.ndarray) -> np.ndarray:
        """Overlap-add one spectrum; return the ``hop`` samples now complete, float32 ``(channels, hop)``."""
        frame = np.fft.irfft(spec, n=self.n_fft, axis=1).astype(np.float32) * self.window
        self._ola += frame
        out = self._ola[:, : self.hop].copy()
        self._ola[:, : self.n_fft - self.hop] = self._ola[:, self.hop :]
        self._ola[:, self.n_fft - self.hop :] = 0.0
        return out

    @property
    def delay_samples(self) -> int:
        """Delay of analysis followed by synthesis, in samples."""
        return self.n_fft - self.hop
