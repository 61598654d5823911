"""Running a time-domain denoiser engine inside voxd's hop-by-hop chain with an exact, constant delay.

A pretrained engine (DeepFilterNet3, RNNoise, GTCRN) has its own sample rate, its own frame size and
its own algorithmic delay. :class:`FramedRunner` hides all three behind the chain's contract — one
hop of ``(channels, hop)`` float32 samples in, one hop out, output lagging input by exactly
:attr:`FramedRunner.delay` samples at the chain rate:

- the hop is converted to the engine's rate, fed to one engine per channel, and the engine's output
  converted back. ``resampler="fir"``: :class:`voxd.resample.FirResampler` for integer ratios (it
  returns every block at once and delays the signal by 1.5 ms each way; soxr "HQ" for other ratios).
  ``resampler="soxr"``: soxr "VHQ" both ways, what offline tools use (the outputs then equal theirs),
  at the cost of the 75 ms that each of its streams holds back;
- the engine emits whole frames, so what comes back per hop varies: the output goes through a FIFO
  that starts with ``prefill`` zeros, the smallest prefill that never runs dry, found once by
  replaying the sample counts (:func:`prefill_for`);
- the delay is then ``prefill`` plus the engine's and the resamplers' delays at the chain rate; the
  chain's delay compensation removes it like the shared STFT's.

Input is sanitised before it reaches a resampler or an engine (:func:`sanitise`: non-finite values
become 0, magnitudes are clipped at :data:`CLIP`); an engine whose output is not finite restarts the
runner and the output is silence until the restarted engines catch up. The core
:class:`~voxd.delayline.DelayLine` gives the dry input with the same delay (wet/dry mix, aligned bypass).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import numpy as np

from voxd.resample import FirResampler, StreamResampler

#: Input samples are clipped to +-CLIP (40 dB over full scale) before an engine sees them: garbage
#: that large carries no speech, and some engines square their input in float32.
CLIP = 100.0
#: Hops replayed to find the prefill: long enough for a soxr start-up and every phase of the framing.
SIMULATED_HOPS = 400


class TimeEngine(Protocol):
    """One channel of a pretrained denoiser at its own rate.

    ``push(x)`` takes float32 ``(n,)`` samples (any ``n``, nominal full scale +-1) and returns the
    enhanced samples it has completed: after ``N`` samples in total it has returned
    ``frame * (N // frame)`` samples in total, output sample ``k`` being the enhancement of input
    sample ``k - delay`` (zeros before the start).
    """

    rate: int  #: Hz
    frame: int  #: samples per engine step, at ``rate``
    delay: int  #: algorithmic delay in samples at ``rate``

    def push(self, x: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None:
        """Forget the stream (as at its start)."""
        ...


class Resampler(Protocol):
    """What the runner needs of a resampler (:mod:`voxd.resample`)."""

    delay_s: Fraction

    def push(self, x: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


def resampler(in_rate: int, out_rate: int, channels: int, kind: str = "fir") -> Resampler | None:
    """None for equal rates; for ``kind`` "fir" a :class:`FirResampler` for an integer ratio, else soxr
    "HQ"; for ``kind`` "soxr" soxr "VHQ"."""
    if in_rate == out_rate:
        return None
    if kind == "fir" and max(in_rate, out_rate) % min(in_rate, out_rate) == 0:
        return FirResampler(in_rate, out_rate, channels)
    return StreamResampler(in_rate, out_rate, channels, quality="VHQ" if kind == "soxr" else "HQ")


def runner_delay(rate: int, hop: int, engine_rate: int, frame: int, engine_delay: int,
                 kind: str = "fir") -> tuple[int, int]:
    """``(delay, prefill)`` of a runner at chain ``rate`` with this ``hop`` for an engine of this rate,
    frame and delay, with resamplers of ``kind``: both in samples at ``rate``. ValueError when the delay
    is not a whole number of samples there."""
    up, down = resampler(rate, engine_rate, 1, kind), resampler(engine_rate, rate, 1, kind)
    signal_s = Fraction(engine_delay, engine_rate) + sum(
        (r.delay_s for r in (up, down) if r is not None), Fraction(0))
    own = signal_s * rate
    if own.denominator != 1:
        raise ValueError(f"its delay of {engine_delay} samples at {engine_rate} Hz (with resampling) is "
                         f"not a whole number of samples at {rate} Hz")
    prefill = prefill_for(rate, hop, engine_rate, frame, kind)[0]
    return prefill + int(own), prefill


def prefill_for(rate: int, hop: int, engine_rate: int, frame: int, kind: str = "fir") -> tuple[int, int]:
    """``(prefill, capacity)``: the FIFO's initial zeros so that it never runs dry when one ``hop`` is
    taken per hop given, and the most samples it ever holds (both at the chain ``rate``)."""
    up, down = resampler(rate, engine_rate, 1, kind), resampler(engine_rate, rate, 1, kind)
    fed = made = 0  # engine-rate samples fed to the engine; chain-rate samples out of the runner
    shortfall = surplus = 0
    zeros = np.zeros((1, hop), np.float32)
    for j in range(1, SIMULATED_HOPS + 1):
        before = fed // frame
        fed += hop if up is None else up.push(zeros).shape[1]
        out = (fed // frame - before) * frame
        made += out if down is None else down.push(np.zeros((1, out), np.float32)).shape[1]
        shortfall = max(shortfall, j * hop - made)  # the FIFO must hold this much extra at the start
        surplus = max(surplus, made - (j - 1) * hop)  # what it holds before the hop is taken out
    return shortfall, shortfall + surplus


class FramedRunner:
    """``(channels, hop)`` blocks at the chain ``rate`` through one :class:`TimeEngine` per channel
    (``make_engine()`` builds one), output lagging input by exactly :attr:`delay` samples; ``kind``:
    the resamplers (see :func:`resampler`)."""

    def __init__(self, make_engine: Callable[[], TimeEngine], channels: int, rate: int, hop: int,
                 kind: str = "fir") -> None:
        self.engines = [make_engine() for _ in range(channels)]
        eng = self.engines[0]
        self.channels, self.rate, self.hop = channels, rate, hop
        self.delay, self.prefill = runner_delay(rate, hop, eng.rate, eng.frame, eng.delay, kind)
        capacity = prefill_for(rate, hop, eng.rate, eng.frame, kind)[1]
        self._fifo = np.zeros((channels, capacity), np.float32)
        self._up = resampler(rate, eng.rate, channels, kind)
        self._down = resampler(eng.rate, rate, channels, kind)
        self._fill = self.prefill

    def reset(self) -> None:
        """Forget the stream: engines, resamplers and the FIFO (back to its prefill of zeros)."""
        for eng in self.engines:
            eng.reset()
        for res in (self._up, self._down):
            if res is not None:
                res.reset()
        self._fifo[:] = 0.0
        self._fill = self.prefill

    def process(self, x: np.ndarray) -> np.ndarray:
        """One hop: ``x`` float32 ``(channels, hop)`` (finite, clipped: :func:`sanitise`) -> the
        engines' output float32 ``(channels, hop)``, ``delay`` samples behind."""
        n = x.shape[1]
        up = x if self._up is None else self._up.push(x)
        y = np.stack([eng.push(np.ascontiguousarray(up[c])) for c, eng in enumerate(self.engines)])
        if not np.isfinite(y).all():
            # A broken engine state: start everything afresh, as at stream start (this hop's input
            # and what was in flight are lost; the delay stays the same).
            self.reset()
            return np.zeros((self.channels, n), np.float32)
        if self._down is not None:
            y = self._down.push(y)
        m, fifo = y.shape[1], self._fifo
        fifo[:, self._fill : self._fill + m] = y
        self._fill += m
        out = fifo[:, :n].copy()
        fifo[:, : self._fill - n] = fifo[:, n : self._fill]
        self._fill -= n
        return out


def sanitise(x: np.ndarray) -> np.ndarray:
    """``x`` with non-finite values set to 0 and magnitudes clipped at :data:`CLIP` (a copy only when
    something had to change)."""
    if np.isfinite(x).all() and np.abs(x).max(initial=0.0) <= CLIP:
        return x
    return np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), -CLIP, CLIP).astype(np.float32)
