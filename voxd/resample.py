"""Streaming sample-rate conversion, stateful across blocks.

- :class:`StreamResampler`: libsoxr through ``soxr``, any ratio. soxr removes its filter delay from
  the signal (output sample ``k`` lines up with input time ``k / out_rate``) but holds back output
  while its filter fills: tens of milliseconds at "HQ" (measured: 16 -> 48 kHz about 36 ms, 48 ->
  16 kHz about 37 ms). Right for the capture path, where only timestamps matter.
- :class:`FirResampler`: integer ratios only (16 <-> 48 kHz), a linear-phase Kaiser FIR from
  ``scipy.signal.firwin`` applied polyphase with ``numpy.convolve``: every block comes out at once
  (``n * L`` or exactly the due samples), the signal is delayed by half the filter (16 -> 48 -> 16
  kHz: 3 ms in all with the default length). Right inside a stage, where the output must keep pace
  hop by hop and every millisecond of delay is the user's (the denoiser engines that run at 48 kHz).

Both take and return float32 ``(channels, n)`` blocks and report the delay they add to the signal as
``delay_s`` (seconds, exact).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import soxr


class StreamResampler:
    """Converts ``(channels, n)`` float32 blocks from ``in_rate`` to ``out_rate`` (Hz), keeping state.

    soxr removes its own filter delay, so output sample ``k`` lines up with input time ``k / out_rate``;
    after :meth:`flush` the total output length is ``round(n_in * out_rate / in_rate)``. When the rates
    are equal, blocks pass through untouched.
    """

    delay_s = Fraction(0)

    def __init__(self, in_rate: int, out_rate: int, channels: int, quality: str = "HQ") -> None:
        self.in_rate, self.out_rate, self.channels, self.quality = in_rate, out_rate, channels, quality
        self._stream: soxr.ResampleStream | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the stream (as at its start)."""
        self._stream = (
            None if self.in_rate == self.out_rate
            else soxr.ResampleStream(self.in_rate, self.out_rate, self.channels, dtype="float32",
                                     quality=self.quality)
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


class FirResampler:
    """Converts ``(channels, n)`` float32 blocks between rates whose ratio is an integer ``R``.

    The filter has ``R * taps_per_phase + 1`` taps at the higher rate (Kaiser window, beta 8: about
    80 dB stop-band), cut off at ``cutoff`` times the lower rate's Nyquist frequency (defaults, 16 <->
    48 kHz there and back: flat to 7 kHz, -3.8 dB at 7.5 kHz; images of 8.5 kHz and up at least 50 dB
    down); the signal is
    delayed by half of it, :attr:`delay_s`. Up-sampling returns ``n * R`` samples per block;
    down-sampling returns the samples whose time has come (``n / R`` on average, exactly that when
    every block is a multiple of ``R``).
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int, taps_per_phase: int = 48,
                 cutoff: float = 0.97) -> None:
        from scipy.signal import firwin  # scipy only where this resampler is used

        hi, lo = max(in_rate, out_rate), min(in_rate, out_rate)
        if hi % lo:
            raise ValueError(f"{in_rate} -> {out_rate} Hz is not an integer ratio")
        self.in_rate, self.out_rate, self.channels = in_rate, out_rate, channels
        self.ratio = r = hi // lo
        self.up = out_rate > in_rate
        n_taps = r * taps_per_phase + 1
        h = firwin(n_taps, cutoff * lo / 2, window=("kaiser", 8.0), fs=hi)
        self.delay_s = Fraction(n_taps - 1, 2 * hi)
        if self.up:  # polyphase: phase p of the output uses taps p, p + R, p + 2R, ...
            taps = np.concatenate([h, np.zeros(r - 1)]) * r  # r * (taps_per_phase + 1): equal phases
            self._phases = [taps[p::r].astype(np.float32) for p in range(r)]
            self._hist = np.zeros((channels, taps_per_phase), np.float32)
        else:
            self._h = h.astype(np.float32)
            self._hist = np.zeros((channels, n_taps - 1), np.float32)
        self._phase = 0  # down: input samples since the last output sample's position, mod R

    def reset(self) -> None:
        """Forget the stream (as at its start)."""
        self._hist[:] = 0.0
        self._phase = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        """Resample one block ``x`` float32 ``(channels, n)``."""
        n, r = x.shape[1], self.ratio
        buf = np.concatenate([self._hist, x], axis=1)
        self._hist = buf[:, n:] if n else self._hist
        if self.up:
            y = np.empty((self.channels, n * r), np.float32)
            for c in range(self.channels):
                for p, hp in enumerate(self._phases):
                    y[c, p::r] = np.convolve(buf[c], hp, "valid")
            return y
        first = (-self._phase) % r  # the first input index of this block that is an output position
        self._phase = (self._phase + n) % r
        out = np.empty((self.channels, len(range(first, n, r))), np.float32)
        for c in range(self.channels):
            out[c] = np.convolve(buf[c], self._h, "valid")[first::r][: out.shape[1]]
        return out
