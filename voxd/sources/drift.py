"""A second device's stream brought onto the microphones' clock: the playback reference from a separate device
(``capture.reference_device``), for the ``aec`` stage.

Two sound devices never run at exactly the same rate: a reference captured from the playback device's
monitor gains or loses samples against the microphones (100 ppm is 0.36 s per hour), and an echo canceller
fed with it sees its echo path slide. The reference is therefore resampled onto the microphones' clock
through a small buffer, in the manner of PulseAudio's echo-cancel module and ``alsa_in``: every
reference sample received is resampled at the current ratio (libsamplerate through the ``samplerate``
package, whose sinc converters take a new ratio at every call and glide to it) into a buffer; each
microphone block takes its length from it. The ratio is the measured rate offset (each device's rate against
the system clock: the least-squares slope of its samples over their delivery times in the last
:data:`RATE_WINDOW_S`, refitted on the points on or above that line: a callback can only come late, so
those are the punctual ones, and the first seconds' fits are hundreds rather than thousands of ppm off
on a busy machine; delivery jitter and block granularity average out, so the ratio is smooth and the
reference's timing does not wander) times a pull of the buffer's fill back towards its target when it leaves
a dead band of :data:`DEAD_BAND_S` around it (time constant :data:`TIME_CONSTANT_S`): inside the band
nothing moves the reference against its echo. The buffer's steady fill is a constant delay between reference
and echo, which the echo canceller estimates itself.

Units: samples at the microphones' rate, channels first (``(channels, n)`` float32), like the blocks.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

EXTRA = "aec"  #: the optional dependency group that installs ``samplerate``
CONVERTER = "sinc_medium"  # libsamplerate's middle sinc: ~97 dB SNR, well under the echo canceller's needs
TIME_CONSTANT_S = 10.0  # a fill outside the dead band returns into it with this time constant (s)
DEAD_BAND_S = 0.015  # no fill correction while the fill is within this of its target (s)
MAX_PULL = 2e-4  # the fill's correction stays within +-200 ppm of the measured rate
MAX_OFFSET = 0.005  # +-5000 ppm: beyond that the two devices do not run at the same nominal rate
SMOOTH = 0.99  # per-block smoothing of the fill error: 1 s, over the callbacks' sawtooth
RATE_EVERY_S = 0.1  # one (mic samples, reference samples) point per this much microphone time
RATE_WINDOW_S = 60.0  # the rate offset is fitted over the last this much (s)
MIN_POINTS = 20  # points before the first fit (2 s)
SETTLE_S = 2.0  # no points during the first seconds: the streams' start-up backlogs and hiccups


def resampler_class() -> Any:
    """``samplerate.Resampler``; ImportError (naming the extra) when the package is missing."""
    try:
        import samplerate
    except ImportError:
        raise ImportError(f"the reference from a separate device needs the package samplerate: "
                          f"pip install 'voxd[{EXTRA}]'") from None
    return samplerate.Resampler


class DriftCompensator:
    """Reference samples in at their device's pace (:meth:`put`), out on demand at the microphones' pace
    (:meth:`take`). ``channels`` of the reference, ``rate`` Hz (both devices are opened at it),
    ``target_ms`` the buffer fill kept (enough to cover the two devices' callback jitter)."""

    def __init__(self, channels: int, rate: int, target_ms: float) -> None:
        self.channels, self.rate = channels, rate
        self.target = target_ms * rate / 1000.0
        self._resampler = resampler_class()(CONVERTER, channels=channels)
        self._buf = np.zeros((channels, 0), np.float32)
        self._started = False  # the buffer reached its target once: taking begins
        self._err = 0.0  # smoothed fill error (s)
        self._taken = 0  # microphone-clock samples taken since the start
        self._t0: float | None = None  # time of the first put (s), the origin of the histories
        window = round(RATE_WINDOW_S / RATE_EVERY_S)
        # (arrival time s, samples so far) of each device: the slope is its rate against the system clock
        self._ref_hist: deque[tuple[float, int]] = deque(maxlen=window)
        self._mic_hist: deque[tuple[float, int]] = deque(maxlen=window)
        self._next_ref = self._next_mic = 0.0
        self.offset = 0.0  #: the reference's measured rate offset (reference samples per mic sample - 1)
        self.ratio = 1.0  #: output samples per input sample, now
        self.underruns = 0  #: samples taken that the buffer did not have (zeros instead)
        self.received = 0  #: reference samples put, at its device's clock

    @property
    def fill(self) -> int:
        """Samples in the buffer (microphone clock)."""
        return int(self._buf.shape[1])

    @property
    def drift_ppm(self) -> float:
        """The reference device's measured rate offset against the microphones (ppm; + = it runs fast)."""
        return self.offset * 1e6

    def reset(self) -> None:
        """Start again (the reference stream was reopened): empty buffer; the rate offset is kept (the
        same two clocks), its measurement starts over."""
        self._resampler.reset()
        self._buf = np.zeros((self.channels, 0), np.float32)
        self._started = False
        self._err = 0.0
        self._taken = self.received = 0
        self._t0 = None
        self._ref_hist.clear()
        self._mic_hist.clear()
        self._next_ref = self._next_mic = 0.0

    def put(self, x: np.ndarray, t: float) -> None:
        """Reference samples ``(channels, n)`` float32, as they arrived; ``t``: when their buffer was
        delivered (s, the same clock as :meth:`take`'s)."""
        if x.shape[1] == 0:
            return
        self.received += x.shape[1]
        self._record(self._ref_hist, t, self.received, "ref")
        y = self._resampler.process(np.ascontiguousarray(x.T), self.ratio, end_of_input=False)
        y = np.asarray(y, np.float32).reshape(-1, self.channels).T
        self._buf = np.concatenate([self._buf, y], axis=1)

    def take(self, n: int, t: float) -> np.ndarray:
        """``n`` samples ``(channels, n)`` for a microphone block of ``n`` delivered at ``t`` (s); zeros
        while the buffer first fills, and where it ran dry (counted in :attr:`underruns`)."""
        out = np.zeros((self.channels, n), np.float32)
        self._record(self._mic_hist, t, self._taken + n, "mic")
        if not self._started:
            if self.fill < self.target:
                return out
            self._started = True
            # what piled up before the microphones' first block (a reference that started earlier) is
            # dropped once: the buffer starts at its target, inside the dead band
            self._buf = self._buf[:, self.fill - round(self.target):]
        k = min(n, self.fill)
        out[:, :k] = self._buf[:, :k]
        self._buf = self._buf[:, k:]
        self.underruns += n - k
        self._taken += n
        self._steer()
        return out

    def _record(self, hist: deque[tuple[float, int]], t: float, count: int, which: str) -> None:
        """One (time, samples so far) point of a device, every RATE_EVERY_S after the first SETTLE_S."""
        if self._t0 is None:
            self._t0 = t
        rel = t - self._t0
        due = self._next_ref if which == "ref" else self._next_mic
        if rel < SETTLE_S or rel < due:
            return
        hist.append((rel, count))
        if which == "ref":
            self._next_ref = rel + RATE_EVERY_S
        else:
            self._next_mic = rel + RATE_EVERY_S

    @staticmethod
    def _slope(hist: deque[tuple[float, int]]) -> float | None:
        """The slope of samples over delivery time (samples/s); None until there are enough points."""
        if len(hist) < MIN_POINTS:
            return None
        h = np.asarray(hist, np.float64)
        fit = _line(h)
        if fit is None:
            return None
        # A late callback makes its point lie under the line (fewer samples than due at that time); none
        # comes early. So the points on or above the line are the punctual ones: refit on them.
        b, a = fit[0], fit[1]
        res = h[:, 1] - (a + b * h[:, 0])
        upper = h[res >= np.median(res)]
        if len(upper) >= MIN_POINTS // 2:
            fit = _line(upper) or fit
        return fit[0]

    def _steer(self) -> None:
        # the rate offset: each device's rate against the system clock (the slope of its samples over their
        # delivery times, least squares over the last RATE_WINDOW_S: delivery jitter and the devices'
        # block granularity average out); their ratio is what the reference gains per microphone sample
        ref, mic = self._slope(self._ref_hist), self._slope(self._mic_hist)
        if ref is not None and mic is not None:
            self.offset = float(np.clip(ref / mic - 1.0, -MAX_OFFSET, MAX_OFFSET))
        # the buffer's fill: pulled back only when it leaves a dead band around the target, since every
        # correction moves the reference against its echo (what the offset's error left over time)
        err = (self.fill - self.target) / self.rate  # s of reference too many
        self._err = SMOOTH * self._err + (1.0 - SMOOTH) * err
        outside = float(np.sign(self._err)) * max(0.0, abs(self._err) - DEAD_BAND_S)
        pull = float(np.clip(outside / TIME_CONSTANT_S, -MAX_PULL, MAX_PULL))
        self.ratio = (1.0 - pull) / (1.0 + self.offset)


def _line(h: np.ndarray) -> tuple[float, float] | None:
    """Least-squares line through points ``h`` ``(N, 2)`` (x = time s, y = samples): (slope, intercept);
    None if degenerate."""
    xm, ym = h[:, 0].mean(), h[:, 1].mean()
    x, y = h[:, 0] - xm, h[:, 1] - ym
    den = float(np.dot(x, x))
    if den <= 0 or len(h) < 3:
        return None
    b = float(np.dot(x, y) / den)
    if b <= 0:
        return None
    return b, float(ym - b * xm)
