"""Speech detectors behind the ``vad`` stage: WebRTC's GMM VAD (with a noise gate and a voicing check)
and the Silero VAD neural network (ONNX, run with onnxruntime alone).

An engine looks at one *decision unit* at a time — a float32 array of exactly ``unit`` samples at the
chain rate, nominal full scale +-1.0 — and returns two levels of evidence, ``(weak, strong)``, that
:class:`voxd_vad.smoothing.Smoother` turns into segments. ``prob`` holds the latest speech
probability (0..1) for the ``speech_prob`` side value. Engines keep their own streaming state;
``reset()`` forgets it.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Any, Protocol

import numpy as np

WEBRTC_RATES = (8000, 16000, 32000, 48000)
SILERO_RATES = (8000, 16000)
SILERO_MODEL = "models/silero_vad.onnx"

# Noise floor: the minimum of the 60 ms level over the last 1.5-2 s. Long enough to span the pauses
# of continuous speech (syllables come every ~0.2 s, phrases break every few seconds), short enough to
# follow a noise that gets louder within a couple of seconds.
FLOOR_SMOOTH_S = 0.06
FLOOR_WINDOW_S = 2.0
FLOOR_SUBWINDOWS = 4
FLOOR_MIN_POWER = 1e-10  # -100 dBFS: digital silence must not open the gate for the next 2 s
# Voicing: normalised correlation over the last 30 ms at ~8 kHz, pitch 60-400 Hz (lags 2.5-16.7 ms).
VOICING_RATE = 8000
VOICING_SPAN_S = 0.03
PITCH_MIN_HZ = 60.0
PITCH_MAX_HZ = 400.0
S16_MAX = 32767.0 / 32768.0
PROB_WINDOW_S = 0.1  # webrtc speech_prob: running fraction of speech sub-frames, time constant 100 ms
# Level normalisation of WebRTC's input. Its GMM works on absolute log energies and rejects sub-frames
# below a fixed energy (recall of the dev items' clean speech: 0.91 at -10 dBFS, 0.75 at -40, 0.15 at
# -50, 0 at -60): the copy it hears is raised so that the loudest 60 ms of the last 4 s sit at -25 dBFS,
# by at most max_gain_db and never lowered (recall then 0.83-0.84 from -60 to -30 dBFS, 0.91 at -10;
# frame F1 on dev/vad 0.857 against 0.858 without). A -20 dBFS target kept more quiet speech (0.87) but
# let more noise through (dev/vad F1 0.846); -30 kept less (0.78). The noise gate and the voicing check
# are ratios: they use the input as it is.
PEAK_WINDOW_S = 4.0
PEAK_TARGET_DBFS = -25.0


class Engine(Protocol):
    """What the stage needs from a detector."""

    unit: int  #: samples per decision unit at the chain rate
    prob: float  #: latest speech probability, 0..1

    def analyse(self, x: np.ndarray) -> tuple[bool, bool]:
        """Evidence ``(weak, strong)`` for one unit ``x``, float32 ``(unit,)``; strong implies weak."""
        ...

    def reset(self) -> None:
        """Forget the stream."""
        ...


class WindowedLevel:
    """Streaming minimum (``peak=False``: the noise floor) or maximum (``peak=True``: the loudest
    passage) of the short-term power over the last ``window_s``.

    The power of each unit is averaged over ``smooth_s`` (so that one quiet sub-frame between two
    syllables does not count as the floor, nor one click as the peak), then its extreme is kept per
    sub-window of ``window_s / subwindows`` (minimum statistics): the window slides in steps, between
    ``window_s * (subwindows - 1) / subwindows`` and ``window_s`` long, and each update is O(1).
    """

    __slots__ = ("_count", "_cur", "_empty", "_in_sub", "_pick", "_prev", "_ring", "_ring_i", "_ring_sum",
                 "_sub_len", "_subs")

    def __init__(self, unit_s: float, window_s: float, smooth_s: float = FLOOR_SMOOTH_S,
                 subwindows: int = FLOOR_SUBWINDOWS, peak: bool = False) -> None:
        self._ring = [0.0] * max(1, round(smooth_s / unit_s))
        self._sub_len = max(1, round(window_s / subwindows / unit_s))
        self._pick = max if peak else min
        self._empty = 0.0 if peak else math.inf  # the extreme of nothing
        self._subs = [self._empty] * max(0, subwindows - 1)
        self.reset()

    def reset(self) -> None:
        """Forget the levels seen."""
        self._ring = [0.0] * len(self._ring)
        self._ring_i = 0
        self._ring_sum = 0.0
        self._count = 0  # units in the ring so far (the mean covers only what has been seen)
        self._cur = self._empty  # extreme of the current sub-window
        self._in_sub = 0
        self._subs = [self._empty] * len(self._subs)
        self._prev = self._empty  # extreme of the previous sub-windows

    def update(self, power: float) -> float:
        """Add one unit's mean-square power (linear, full scale 1.0); return the extreme (linear power)."""
        ring = self._ring
        self._ring_sum += power - ring[self._ring_i]
        ring[self._ring_i] = power
        self._ring_i = (self._ring_i + 1) % len(ring)
        if self._count < len(ring):
            self._count += 1
        pick = self._pick
        self._cur = pick(self._cur, self._ring_sum / self._count)
        level = pick(self._cur, self._prev)
        self._in_sub += 1
        if self._in_sub == self._sub_len:  # slide the window by one sub-window
            if self._subs:
                self._subs.pop(0)
                self._subs.append(self._cur)
                self._prev = pick(self._subs)
            self._cur = self._empty
            self._in_sub = 0
            self._ring_sum = math.fsum(ring)  # no drift from the running sum, however long the stream
        return level


class NoiseFloor(WindowedLevel):
    """The noise floor: the minimum of the 60 ms power over the last ``window_s`` (never below
    ``FLOOR_MIN_POWER``)."""

    __slots__ = ()

    def __init__(self, unit_s: float, window_s: float = FLOOR_WINDOW_S) -> None:
        super().__init__(unit_s, window_s)

    def update(self, power: float) -> float:
        floor = super().update(power)
        return floor if floor > FLOOR_MIN_POWER else FLOOR_MIN_POWER


class Voicing:
    """Degree of voicing, 0..1: the peak of the normalised correlation of the signal with itself
    delayed by one pitch period (60-400 Hz).

    ``max_k <head, lagged_k> / sqrt(E_head * E_lagged)``, where ``head`` is the first ``seg`` samples of
    the history and ``lagged_k`` the ``seg`` samples ``k`` later; ``E_lagged`` is approximated by the mean
    energy per ``seg`` samples of the region the lagged segments span (one dot product instead of one
    per lag: the measure stays in 0..1 for stationary sounds and tracked the exact normalisation to
    within 0.005 F1 on the development sets). 1.0 for a periodic signal, ~0.2 for noise, near 0 for a
    click. It runs on the last ``VOICING_SPAN_S`` of audio decimated to ~8 kHz by summing neighbours
    (pitch lives well below 4 kHz): seven small numpy calls, no FFT.
    """

    def __init__(self, rate: int, unit: int) -> None:
        self._step = step = max(1, rate // VOICING_RATE)
        r = rate / step
        lo, hi = math.floor(r / PITCH_MAX_HZ), math.ceil(r / PITCH_MIN_HZ)  # lags (decimated samples)
        span = max(round(VOICING_SPAN_S * r), hi + lo)
        seg = span - hi  # length of the compared segments
        self._unit = unit
        self._raw = np.zeros(span * step, np.float32)  # the last span * step input samples
        self._hist = np.zeros(span, np.float32)  # the same, decimated (built on demand)
        self._head = self._hist[:seg]
        self._tail = self._hist[lo : hi + seg]  # every lagged segment lies in here
        self._tail_scale = seg / self._tail.shape[0]

    def push(self, x: np.ndarray) -> None:
        """Append one unit ``x`` (float32 ``(unit,)``) to the history (a copy; decimation waits)."""
        raw, u = self._raw, self._unit
        if u >= raw.shape[0]:
            raw[:] = x[u - raw.shape[0] :]
        else:
            raw[:-u] = raw[u:]
            raw[-u:] = x

    def degree(self) -> float:
        """Voicing of the history (after :meth:`push`), 0..1."""
        h, raw, step = self._hist, self._raw, self._step
        if step == 1:
            h[:] = raw
        else:  # decimate: sum `step` neighbours (a crude lowpass; the aliases are noise-like)
            np.add(raw[0::step], raw[1::step], out=h)
            for k in range(2, step):
                h += raw[k::step]
        np.subtract(h, np.add.reduce(h) / h.shape[0], out=h)  # a DC offset would look periodic too
        e_head = float(np.dot(self._head, self._head))
        e_lagged = float(np.dot(self._tail, self._tail)) * self._tail_scale
        if e_head <= 0.0 or e_lagged <= 0.0:
            return 0.0
        peak = float(np.correlate(self._tail, self._head, "valid").max())  # lag lo .. hi
        return peak / math.sqrt(e_head * e_lagged)

    def reset(self) -> None:
        self._raw[:] = 0.0


class WebRtcEngine:
    """WebRTC VAD (``webrtcvad``) on int16 sub-frames, gated by the noise floor and confirmed by voicing.

    Per sub-frame of ``frame_ms``: ``weak`` = WebRTC says speech and the sub-frame's power is at least
    ``snr_gate_db`` above the noise floor (stationary noise — fans, machines, rain — that WebRTC takes
    for speech rarely stands out of its own floor); ``strong`` = weak and voiced (voicing degree >=
    ``voicing``: keyboard clicks, wind and crowd rumble are not periodic, vowels are). The voicing FFT
    runs only for weak sub-frames. ``snr_gate_db=0`` / ``voicing=0`` turn the checks off.

    WebRTC hears a level-normalised copy: raised (by at most ``max_gain_db``, never lowered) so that
    the loudest 60 ms of the last 4 s are at -25 dBFS; without it a -50 dBFS talker is mostly below
    its fixed energy threshold. ``max_gain_db=0`` turns it off.
    """

    def __init__(self, rate: int, aggressiveness: int, frame_ms: int, snr_gate_db: float,
                 voicing: float, max_gain_db: float = 30.0) -> None:
        import webrtcvad  # webrtcvad-wheels

        self.rate = rate
        self.unit = rate * frame_ms // 1000
        self.prob = 0.0
        self._aggressiveness = aggressiveness
        self._vad = webrtcvad.Vad(aggressiveness)
        self._clipped = np.empty(self.unit, np.float32)
        self._pcm16 = np.empty(self.unit, np.int16)
        # bytes view of the int16 buffer, made once (numpy's stubs do not declare the buffer protocol)
        self._pcm = memoryview(self._pcm16).cast("B")  # type: ignore[arg-type]
        self._gate = 10.0 ** (snr_gate_db / 10.0) if snr_gate_db > 0 else 0.0
        self._floor = NoiseFloor(frame_ms / 1000)
        self._peak = WindowedLevel(frame_ms / 1000, PEAK_WINDOW_S, peak=True)
        self._peak_target = 10.0 ** (PEAK_TARGET_DBFS / 10.0)
        self._max_gain = 10.0 ** (max_gain_db / 10.0)  # power ratio
        self._gain = 1.0  # power gain of WebRTC's copy at the last unit
        self._voicing_min = voicing
        self._voicing = Voicing(rate, self.unit)
        self._prob_alpha = min(1.0, frame_ms / 1000 / PROB_WINDOW_S)

    @property
    def gain_db(self) -> float:
        """The gain of the copy WebRTC heard last (dB; 0 before any audio): read on demand, not per unit."""
        return 10.0 * math.log10(self._gain)

    def analyse(self, x: np.ndarray) -> tuple[bool, bool]:
        """``x``: float32 ``(unit,)``. Returns ``(weak, strong)``; updates ``prob``."""
        power = float(np.dot(x, x)) / self.unit
        peak = self._peak.update(power)
        # power gain of WebRTC's copy: loudest passage to the target, within [1, max_gain]
        if peak * self._max_gain <= self._peak_target:
            gain = self._max_gain
        else:
            gain = max(1.0, self._peak_target / peak)
        self._gain = gain
        # one conversion per sub-frame to the int16 WebRTC wants (truncating: the VAD does not care);
        # minimum/maximum rather than np.clip, whose Python-level wrapper costs more than the work
        c = self._clipped
        np.multiply(x, math.sqrt(gain), out=c)
        np.minimum(c, S16_MAX, out=c)
        np.maximum(c, -1.0, out=c)
        np.multiply(c, 32768.0, out=self._pcm16, casting="unsafe")
        # WebRTC adapts its noise model on every sub-frame: always call it, gate afterwards
        weak = self._vad.is_speech(self._pcm, self.rate)
        floor = self._floor.update(power)
        if weak and self._gate:
            weak = power >= floor * self._gate
        self._voicing.push(x)
        strong = weak and (self._voicing_min <= 0.0 or self._voicing.degree() >= self._voicing_min)
        self.prob += self._prob_alpha * ((1.0 if weak else 0.0) - self.prob)
        return weak, strong

    def reset(self) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(self._aggressiveness)  # the binding has no reset: a fresh instance
        self._floor.reset()
        self._peak.reset()
        self._gain = 1.0
        self._voicing.reset()
        self.prob = 0.0


@functools.cache
def silero_session() -> Any:  # onnxruntime.InferenceSession (one per process: its state is passed explicitly)
    """The bundled Silero VAD model in an onnxruntime session: CPU, one intra- and one inter-op thread,
    sequential execution. Loaded from the package data, never from the network."""
    import onnxruntime as ort

    model = resources.files("voxd_vad").joinpath(SILERO_MODEL).read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: the model's initializer warnings are noise
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


class SileroEngine:
    """Silero VAD v6 (ONNX), streaming: 512-sample chunks at 16 kHz (256 at 8 kHz).

    The model takes each chunk preceded by the last 64 (32) samples of the previous input as context,
    and its recurrent state ``(2, 1, 128)`` as an explicit input; it returns the speech probability
    and the next state. ``weak`` = probability >= ``neg_threshold``, ``strong`` = >= ``threshold``.
    """

    def __init__(self, rate: int, threshold: float, neg_threshold: float) -> None:
        self.rate = rate
        self.unit = 512 if rate == 16000 else 256
        self._ctx = 64 if rate == 16000 else 32
        self.prob = 0.0
        self._thr, self._neg = threshold, neg_threshold
        self._session = silero_session()
        self._input = np.zeros((1, self._ctx + self.unit), np.float32)  # [context | chunk]
        self._feed = {"input": self._input, "state": np.zeros((2, 1, 128), np.float32),
                      "sr": np.array(rate, np.int64)}

    def analyse(self, x: np.ndarray) -> tuple[bool, bool]:
        """``x``: float32 ``(unit,)``. Returns ``(weak, strong)``; updates ``prob``."""
        inp = self._input
        inp[0, self._ctx :] = x
        prob, state = self._session.run(None, self._feed)
        self._feed["state"] = state
        inp[0, : self._ctx] = inp[0, self.unit :]  # the chunk's tail is the next chunk's context
        p = self.prob = float(prob[0, 0])
        return p >= self._neg, p >= self._thr

    def reset(self) -> None:
        self._input[:] = 0.0
        self._feed["state"] = np.zeros((2, 1, 128), np.float32)
        self.prob = 0.0
