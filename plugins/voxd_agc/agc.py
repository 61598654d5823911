"""The ``agc`` stage: speech-driven automatic gain control followed by a peak limiter.

Chain entry, last in the chain: ``- {stage: agc}`` after a ``vad`` stage (it requires ``speech``; with
``vad: false`` a level gate decides instead, for chains without a detector). Recognizers and wake-word
models get active speech at ``target_dbfs`` whatever the talker's distance, and no sample above
``ceiling_dbfs``. Anchors: WebRTC AGC2 (speech-level estimate on VAD frames, bounded gain change, a
limiter), the XMOS array processor's AGC (-23 dBov target, 30 dB max gain), SpeexDSP's AGC. The
algorithm is in :class:`Agc`; levels are dBFS RMS re. full scale 1.0 (a full-scale sine is -3 dBFS).

Defaults, chosen on the shared dev recordings with ``bench/agc_bench.py`` (dev/mono + dev/vad, chain
``vad -> agc``):

=====================  ========  ====================================================================
parameter              default   why
=====================  ========  ====================================================================
target_dbfs            -23       XMOS's -23 dBov; speech peaks (crest 15-20 dB) stay under the ceiling
max_gain_db            30        a -53 dBFS talker still reaches the target; more lifts the room noise
min_gain_db            -20       a -3 dBFS talker (near clipping) still comes down to the target
initial_gain_db        15        WebRTC AGC2's start: at most 12 dB to climb for a -50 dBFS talker.
                                 From 10 the gain was still climbing in the first pause, and where
                                 the detector takes that pause's babble for speech (dv001, 0 dB SNR)
                                 the noise rose 5.2 dB; the limiter covers a loud start
attack_db_s            30        gain DEcrease for louder speech: a +30 dB step is down within 2 dB in
                                 1.7 s of speech, the limiter holding the ceiling meanwhile
release_db_s           10        gain INcrease for quieter speech: at 15 dB/s the gain, still
                                 climbing toward a -50 dBFS talker, lifted the noise in the pauses the
                                 detector bridges by up to 4.5 dB (the bound is +3); 10 keeps every
                                 pause within +2.9 dB and still converges within 3 s of speech
hold_decay_db_s        0         hold: a drift toward 0 dB in long silences would leave the next
                                 utterance's start too quiet (raise it for rooms where amplified
                                 silence matters more)
level_tau_s            1.0       1-2 s did as well on the level table; after a -20 dB step (the
                                 talker stepped back) 1 s is within 2 dB in 5 s of speech, 2 s in 10
level_margin_db        15.9      ITU-T P.56's margin ...
level_hangover_ms      200       ... and hangover: without the hangover the output read 1 dB low
                                 against P.56 (quiet frames inside words left out), with 200 ms its
                                 mean is within 0.1 dB
backfill_ms            300       the detector confirms speech 60-300 ms after the onset; without it
                                 short words lost their loud onset: up to 3.8 dB hot (silero)
ceiling_dbfs           -1        the issue's ceiling: 1 dB of headroom for the int16 encoding
lookahead_ms           1         a 17-sample gain ramp before a peak instead of a gain step, for 1 ms
                                 of delay (declared: delay_samples, removed by the pipeline)
limiter_release_db_s   100       a 10 dB reduction recovers in 0.1 s, 0.5 dB per period of a 200 Hz
                                 wave: a held gain, hardly modulated by each peak
min_speech_prob        0         off: with the webrtc engine 0.3 and 0.5 changed nothing measurable;
                                 it holds the gain through the detector's hangover
=====================  ========  ====================================================================

Measured with these defaults (bench/agc_bench.py; each utterance of the 36 clean items at the level,
P.56 active level of the labelled speech after the first 3 s of speech, minus the target):

=========  =====================================  =====================================
input      vad engine webrtc: mean / max dev          vad engine silero: mean / max dev
=========  =====================================  =====================================
-50 dBFS   -0.02 / 0.69 dB, 36/36 within +-2 dB   -0.10 / 0.92 dB, 36/36 within +-2 dB
-40 dBFS   -0.03 / 0.68 dB, 36/36                 -0.03 / 0.86 dB, 36/36
-30 dBFS   -0.02 / 0.68 dB, 36/36                 -0.01 / 0.84 dB, 36/36
-20 dBFS   -0.01 / 0.66 dB, 36/36                 -0.02 / 0.91 dB, 36/36
-10 dBFS   -0.00 / 0.67 dB, 36/36                 -0.05 / 0.92 dB, 36/36
=========  =====================================  =====================================

The WebRTC detector hears a level-normalised copy of its input (``voxd_vad``): without it, it missed
most of a -50 dBFS talker (27/36 within +-2 dB). Highest output sample over every run,
including a 0 dBFS square-wave burst in a pause and in speech and a +30 dB step: -1.000 dBFS. Measured
gain slew: 30.00 dB/s down, 10.00 dB/s up (the configured rates). Noise in the 172 pauses of the noisy
items (as recorded and at -50/-30/-10 dBFS), against the gain frozen at the end of the utterance
before: mean +0.00 dB, max +2.94 dB (webrtc); mean -0.64, max +2.86 dB (silero).

Cost per 10 ms mono frame, one thread, on the development machine (2 cores shared with a training
job, so figures move by 2x with its load): ``process`` alone 10-20 us, 35-65 us on a frame where the
limiter acts (0.02 % of the dev frames); inside the chain (bench/chain_bench.py on
config/examples/agc.yaml) 27-31 us p50, 51-59 us p99, where the one-line ``mix`` stage took 9-10 us.
About 8 numpy calls per frame; the limiter's short path skips all of its own when nothing is near the
ceiling.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from voxd.frame import Frame
from voxd.side import AGC_GAIN_DB, LEVEL_DBFS, SPEECH, SPEECH_PROB
from voxd.stage import Stage, StageContext, StageParams

LEVEL_FLOOR_DBFS = -120.0  #: ``level_dbfs`` before the first speech frame, and the estimate's floor
#: mean square (full scale 1.0) above which a frame stops counting at face value in the level estimate:
#: +10 dBFS, only reachable by clipping or a bug upstream, must not wreck the estimate for seconds
LEVEL_MS_MAX = 10.0
#: |x| above this (80 dB over full scale) is clamped before processing, so that gains up to +60 dB cannot
#: overflow float32; the output bound holds either way (see :meth:`Agc._sanitize`)
INPUT_ABS_MAX = 1e4
#: internal ceiling margin: float32 rounding of ``y * gain`` can exceed the exact product by ~6e-8 of
#: it; 1e-6 keeps every output sample at or below the configured ceiling without a final clip
CEILING_MARGIN = 1.0 - 1e-6
GATE_ONLY = ("gate_db", "gate_floor_rise_db_s")  #: parameters of the level gate (vad: false)
VAD_ONLY = ("min_speech_prob",)  #: parameters that read the vad stage's side values
GATE_FLOOR_DBFS = -80.0  #: level gate (``vad: false``): the tracked noise floor never counts below this


def _db_to_lin(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _sliding_min(a: np.ndarray, width: int) -> np.ndarray:
    """``out[i] = min(a[i : i + width])`` for every full window: ``(len(a) - width + 1,)``, by doubling
    (log2(width) + 1 vector minima instead of one per window position)."""
    size = 1
    while 2 * size <= width:
        a = np.minimum(a[:-size], a[size:])
        size *= 2
    if size < width:
        a = np.minimum(a[: a.shape[0] - (width - size)], a[width - size :])
    return a


class SpeechLevel:
    """Active-speech level of a stream of frames: a gated one-pole mean square over speech frames.

    ``push(ms, n, speech)`` takes one frame's mean square (full scale 1.0), its length in samples and
    whether it is speech. Only speech frames count, and of those only the ones within ``margin_db`` of
    the speech level (as in ITU-T P.56, whose 15.9 dB margin is the default): the detector's hangover,
    pauses and the noise under them are not speech level even when the frame is flagged. The gate's
    reference is a second, ungated mean square of every speech frame, so a talker who became quieter is
    not locked out: that mean follows them down and the gate opens again (after a -20 dB step the level
    is within 2 dB after about 5 ``tau`` of speech).

    Both means weigh a frame by ``max(n / samples_so_far, n / tau_samples)``: a plain running mean over
    the first ``tau`` of speech, an exponential memory of ``tau`` after. Power, not dB, is averaged:
    the result is the RMS of active speech, the quantity a target in dBFS names.

    A detector confirms speech some time after it starts (the VAD stage: ``start_ms`` + its decision
    unit, and a segment is only reported once ``min_speech_ms`` long), so the loud onset of every word
    would be missed. The last ``backfill`` non-speech frames are kept and, when speech starts, offered to
    the gated mean as well; the gate keeps the silence or noise before the onset out.
    """

    __slots__ = ("_all", "_all_n", "_gate", "_hang", "_hangover", "_ms", "_ms_n", "_ring", "_tau",
                 "was_speech")

    def __init__(self, tau_samples: float, margin_db: float, backfill: int, hangover: int) -> None:
        self._tau = max(1.0, tau_samples)
        self._hangover = hangover
        self._gate = 10.0 ** (-margin_db / 10.0)
        self._ring: deque[tuple[float, int]] = deque(maxlen=max(backfill, 0))
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        self._ms = 0.0  # gated mean square: the level (0 = none yet)
        self._ms_n = 0  # samples it has taken
        self._all = 0.0  # ungated mean square of speech frames: the gate's reference
        self._all_n = 0
        self._hang = 0  # samples of hangover left after the last frame above the gate
        self._ring.clear()
        self.was_speech = False

    @property
    def mean_square(self) -> float:
        """The active-speech mean square (full scale 1.0), 0.0 before any speech."""
        return self._ms

    def push(self, ms: float, n: int, speech: bool) -> bool:
        """Take one frame; True when it is active speech: flagged speech, and above the gate."""
        if not speech:
            self._ring.append((ms, n))
            self.was_speech = False
            return False
        ms = min(ms, LEVEL_MS_MAX)
        self._all_n += n
        self._all += n / min(self._all_n, self._tau) * (ms - self._all)
        if not self.was_speech:  # speech starts: the frames the detector took to confirm it count too
            self.was_speech = True
            self._hang = 0  # no hangover reaches back across the pause
            for past, m in self._ring:
                self._offer(min(past, LEVEL_MS_MAX), m)
            self._ring.clear()
        return self._offer(ms, n)

    def _offer(self, ms: float, n: int) -> bool:
        """Count one frame toward the level if it is above the gate or within the hangover after one
        that was; returns whether it was above the gate."""
        active = ms >= self._all * self._gate
        if active:
            self._hang = self._hangover
        elif self._hang > 0:
            self._hang -= n  # a short dip inside speech still counts, as in P.56
        else:
            return False
        self._ms_n += n
        self._ms += n / min(self._ms_n, self._tau) * (ms - self._ms)
        return active


class AgcParams(StageParams):
    """Parameters of the ``agc`` stage: levels in dBFS (RMS re. a full-scale of 1.0), gains in dB, rates
    in dB per second, durations in seconds or milliseconds as named."""

    target_dbfs: float = Field(-23.0, ge=-60, le=-3, description="output level of active speech "
                               "(dBFS RMS over speech frames)")
    max_gain_db: float = Field(30.0, ge=0, le=60, description="largest gain the AGC applies (dB)")
    min_gain_db: float = Field(-20.0, ge=-60, le=0, description="smallest gain the AGC applies (dB)")
    initial_gain_db: float = Field(15.0, ge=-60, le=60, description="gain before the first speech (dB), "
                                   "clamped to [min_gain_db, max_gain_db]")
    attack_db_s: float = Field(30.0, gt=0, le=1000, description="fastest gain DEcrease (louder speech "
                               "than the target), dB per second of audio")
    release_db_s: float = Field(10.0, gt=0, le=1000, description="fastest gain INcrease (quieter speech "
                                "than the target), dB per second of audio")
    hold_decay_db_s: float = Field(0.0, ge=0, le=100, description="during non-speech the gain moves "
                                   "toward 0 dB at most this fast (dB/s); 0 = hold it exactly")
    level_tau_s: float = Field(1.0, gt=0, le=60, description="time constant of the speech-level "
                               "estimate, in seconds of speech (a one-pole mean square over speech frames)")
    level_margin_db: float = Field(15.9, ge=3, le=60, description="speech frames more than this below "
                                   "the speech level do not count toward it (dB; ITU-T P.56's margin)")
    level_hangover_ms: float = Field(200.0, ge=0, le=2000, description="speech frames below the margin "
                                     "still count this long after one above it (ms; P.56's hangover)")
    backfill_ms: float = Field(300.0, ge=0, le=2000, description="when the detector starts a segment, "
                               "this much audio before it counts toward the level too (ms): the detector's "
                               "confirmation delay, during which the onset went by")
    ceiling_dbfs: float = Field(-1.0, ge=-30, le=0, description="limiter: no output sample exceeds "
                                "this peak level (dBFS)")
    lookahead_ms: float = Field(1.0, ge=0, le=20, description="limiter look-ahead (ms): the gain ramps "
                                "down over this time before a peak; adds this much delay (0 = none: "
                                "instant attack)")
    limiter_release_db_s: float = Field(100.0, gt=0, le=10000, description="limiter: how fast its gain "
                                        "reduction recovers after a peak (dB/s)")
    min_speech_prob: float = Field(0.0, ge=0, le=1, description="the gain moves only on frames whose "
                                   "speech_prob (from the vad stage) is at least this; 0 = off. 0.5 with the "
                                   "silero engine holds the gain through the detector's hangover")
    vad: bool = Field(True, description="take speech frames from the 'speech' side value of an earlier "
                      "vad stage (required); false: a level gate decides (gate_db)")
    gate_db: float = Field(10.0, ge=0, le=60, description="vad: false only: a frame counts as speech when "
                           "its level is this far above the tracked noise floor (dB)")
    gate_floor_rise_db_s: float = Field(1.0, gt=0, le=100, description="vad: false only: how fast the "
                                        "tracked noise floor may rise (dB/s; it falls at once)")

    @model_validator(mode="after")
    def _consistent(self) -> AgcParams:
        other = GATE_ONLY if self.vad else VAD_ONLY
        misplaced = [k for k in other if k in self.model_fields_set]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} only appl{'ies' if len(misplaced) == 1 else 'y'} with "
                             f"vad: {'false' if self.vad else 'true'}")
        return self


class Agc(Stage[AgcParams]):
    """Speech-driven AGC + look-ahead peak limiter, time domain, any channel count (one gain for all
    channels, so the stereo image and inter-channel phase are kept).

    Per frame ``(C, n)`` float32 (n = the chain hop, 160 at 16 kHz):

    1. **Speech level** (``level_dbfs``): :class:`SpeechLevel` on the frame's mean square over all
       channels: only frames the detector flags as speech, and of those only the ones within
       ``level_margin_db`` of the speech level (or ``level_hangover_ms`` after one that was), plus the
       ``backfill_ms`` before each detected start. A power mean: the RMS of active speech, the quantity
       ``target_dbfs`` names (close to ITU-T P.56's active level: bias under 0.1 dB on the dev set).
    2. **AGC gain** (``agc_gain_db``): on *active* speech frames (flagged and above the margin) it
       moves toward ``clamp(target_dbfs - level_dbfs, min_gain_db, max_gain_db)`` by at most
       ``attack_db_s * dt`` downward and ``release_db_s * dt`` upward (dt = the frame's duration). On
       any other frame (non-speech, or the detector's hangover over a pause) it holds, or with
       ``hold_decay_db_s`` moves toward 0 dB during non-speech: noise between words is not pumped up.
       The linear gain is interpolated linearly across the frame's samples (no zipper steps).
    3. **Limiter**: after the AGC gain, every sample's needed gain ``r = min(1, ceiling / max_c |y|)`` is
       met by a gain that ramps down linearly over the ``lookahead_ms`` before it (the signal is delayed
       by that much: ``delay_samples``), and recovers at ``limiter_release_db_s``. Its gain never
       exceeds ``r`` at any sample, so ``|out| <= ceiling`` always, with a gain, never a clip (see
       :meth:`_limit`). Frames where nothing comes near the ceiling and the limiter is at rest take a
       short path (delay only).

    Non-finite input samples become 0 and magnitudes above 1e4 (80 dB over full scale) are clamped
    before any of this, so the state stays finite whatever arrives.

    Side values (scalars, also in the wire header): ``level_dbfs`` (the speech level estimate of the
    input, dBFS; -120 before the first speech) and ``agc_gain_db`` (AGC gain at the frame's last
    sample, dB; without the limiter's momentary reduction). :meth:`stats` summarises the gain trajectory.

    ``reset()`` (a discontinuity: lost samples) clears the limiter's delay line but keeps the level
    estimate and the gain: the talker and the room did not change with the lost samples, and starting
    over from ``initial_gain_db`` would make an audible level jump and re-converge for seconds. A reload
    builds a new stage, which does start over.
    """

    kind = "agc"

    @classmethod
    def required_keys(cls, params: AgcParams) -> tuple[str, ...]:
        if not params.vad:
            return ()
        return (SPEECH, SPEECH_PROB) if params.min_speech_prob > 0 else (SPEECH,)

    provides = (LEVEL_DBFS, AGC_GAIN_DB)

    @property
    def delay_samples(self) -> int:
        """The limiter's look-ahead, samples at the chain rate."""
        return round(self.params.lookahead_ms * self.input_format.rate / 1000)

    def open(self, ctx: StageContext) -> None:
        p = self.params
        self._rate = ctx.rate
        self._channels = self.input_format.channels
        self._la = round(p.lookahead_ms * ctx.rate / 1000)
        # float64 on purpose: the needed gains computed from it stay float64 (see CEILING_MARGIN)
        self._ceiling = np.float64(_db_to_lin(p.ceiling_dbfs) * CEILING_MARGIN)
        self._target = p.target_dbfs
        self._attack_per_sample = p.attack_db_s / ctx.rate
        self._release_per_sample = p.release_db_s / ctx.rate
        self._decay_per_sample = p.hold_decay_db_s / ctx.rate
        self._lim_release = p.limiter_release_db_s / ctx.rate * math.log(10.0) / 20.0  # ln(gain) per sample
        self._ramps: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._g_db = min(max(p.initial_gain_db, p.min_gain_db), p.max_gain_db)
        self._g_lin = _db_to_lin(self._g_db)
        hop = self.input_format.frame
        self._level = SpeechLevel(p.level_tau_s * ctx.rate, p.level_margin_db,
                                  math.ceil(p.backfill_ms * ctx.rate / 1000 / hop),
                                  round(p.level_hangover_ms * ctx.rate / 1000))
        self._level_db = LEVEL_FLOOR_DBFS
        self._floor_db: float | None = None  # level gate's noise floor (vad: false)
        self._reset_limiter()
        self._reset_stats()

    def _reset_limiter(self) -> None:
        self._ybuf = np.zeros((self._channels, self._la), np.float32)  # delayed, AGC-gained samples
        self._rbuf = np.ones(self._la)  # needed gains of the buffered samples
        self._htail = np.ones(self._la)  # the last L released hold gains (linear), for the ramp
        self._lim_ln = 0.0  # released hold gain at the last sample (natural log, <= 0)
        self._at_rest = True  # all of the above at unity: the limiter's gain is exactly 1

    def _reset_stats(self) -> None:
        self._st_frames = 0
        self._st_speech = 0
        self._st_sum = 0.0
        self._st_min = math.inf
        self._st_max = -math.inf
        self._st_lim_min = 0.0
        self._st_limited = 0

    def _ramp(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per frame length n, cached: ``(k+1)/n`` float32 for the AGC gain interpolation, ``s*k``
        float64 for the limiter's release (s = its rate in ln(gain) per sample), k = 0 .. n-1, and a
        float32 ``(n,)`` work buffer for the interpolated gain (no allocation per frame)."""
        ramp = self._ramps.get(n)
        if ramp is None:
            if len(self._ramps) >= 8:  # the chain's frames are all one size: odd sizes are rare
                self._ramps.clear()
            ramp = ((np.arange(1, n + 1) / n).astype(np.float32), np.arange(n) * self._lim_release,
                    np.empty(n, np.float32))
            self._ramps[n] = ramp
        return ramp

    @staticmethod
    def _sanitize(x: np.ndarray) -> np.ndarray:
        """Non-finite -> 0, then clamp to +-INPUT_ABS_MAX (a new array; the input is not touched)."""
        y = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        return np.clip(y, -INPUT_ABS_MAX, INPUT_ABS_MAX, out=y)

    def process(self, frame: Frame) -> Frame:
        x = frame.samples
        assert x is not None
        n = x.shape[1]
        if n == 0:
            return frame.with_side(**{LEVEL_DBFS: self._level_db, AGC_GAIN_DB: self._g_db})
        peak = float(np.abs(x).max())  # NaN and inf fail the test below (and raise no warning)
        if not peak <= INPUT_ABS_MAX:
            x = self._sanitize(x)
            peak = float(np.abs(x).max())
        flat = x.reshape(-1)
        ms = float(np.dot(flat, flat)) / flat.size  # float32 cannot overflow below INPUT_ABS_MAX

        p = self.params
        speech = bool(frame.side.get(SPEECH, False)) if p.vad else self._gate(ms, n)
        level = self._level
        before = level.mean_square
        active = level.push(ms, n, speech)
        lms = level.mean_square
        if lms != before:
            self._level_db = max(10.0 * math.log10(lms), LEVEL_FLOOR_DBFS) if lms > 0 else LEVEL_FLOOR_DBFS
        g0_db = self._g_db
        # the gain follows the level on active speech only (and, with min_speech_prob, only while the
        # detector's own evidence is there, not through its hangover): pauses hold it
        if active and lms > 0 and (not p.min_speech_prob
                                   or frame.side.get(SPEECH_PROB, 0.0) >= p.min_speech_prob):
            want = min(max(self._target - self._level_db, p.min_gain_db), p.max_gain_db)
            g1_db = g0_db + min(max(want - g0_db, -self._attack_per_sample * n), self._release_per_sample * n)
        elif self._decay_per_sample and g0_db and not speech:
            d = self._decay_per_sample * n
            g1_db = g0_db - min(max(g0_db, -d), d)
        else:
            g1_db = g0_db
        g0 = self._g_lin
        if g1_db != g0_db:
            g1 = _db_to_lin(g1_db)
            self._g_db, self._g_lin = g1_db, g1
            ramp, _, g = self._ramp(n)
            np.multiply(ramp, g1 - g0, out=g)
            g += g0
            y = x * g  # (n,) gains g0 -> g1, broadcast over channels
        else:
            y = x * np.float32(g0)
        # the interpolated gain stays between g0 and g1, so this bounds every |y| (the limiter's test)
        out = self._limit(y, n, peak * max(g0, self._g_lin))

        self._st_frames += 1
        self._st_speech += speech
        self._st_sum += g1_db
        if g1_db < self._st_min:
            self._st_min = g1_db
        if g1_db > self._st_max:
            self._st_max = g1_db
        return frame.with_samples(out, **{LEVEL_DBFS: self._level_db, AGC_GAIN_DB: g1_db})

    def _gate(self, ms: float, n: int) -> bool:
        """Level gate for ``vad: false``: above the tracked noise floor by ``gate_db``."""
        db = 10.0 * math.log10(ms) if ms > 0 else LEVEL_FLOOR_DBFS
        rise = self.params.gate_floor_rise_db_s * n / self._rate
        floor = db if self._floor_db is None else min(db, self._floor_db + rise)
        self._floor_db = floor
        return db > max(floor, GATE_FLOOR_DBFS) + self.params.gate_db

    def _limit(self, y: np.ndarray, n: int, peak: float) -> np.ndarray:
        """Delay ``y`` (C, n) by the look-ahead L and apply the limiter gain; returns (C, n) float32.
        ``peak``: an upper bound of ``|y|``.

        Output sample j is buffered sample j (the L samples kept from the previous frame come first).
        ``need[k] = min(1, ceiling / max_c |buf[k]|)``; the gain is
        ``min(need[j], box_{L+1}(release(hold_{L+1}(need)))[j])``: ``hold`` is the minimum of the need over
        the next L+1 samples, ``release`` lets it rise at most ``limiter_release_db_s``, ``box`` is the
        mean over the last L+1 samples. Every hold value in that mean covers sample j, so the mean is at
        most ``need[j]`` already (the final minimum only absorbs rounding): the bound holds at every
        sample, and a peak is approached by a linear ramp over the L+1 samples before it.
        """
        c, la = self._ceiling, self._la
        if la:
            buf = np.concatenate((self._ybuf, y), axis=1)
            self._ybuf = buf[:, n:]
            delayed = buf[:, :n]
        else:
            delayed = y
        if peak <= c and self._at_rest:  # nothing near the ceiling, nothing pending: gain 1 everywhere
            return np.ascontiguousarray(delayed)
        env = np.abs(y).max(axis=0) if y.shape[0] > 1 else np.abs(y[0])
        need = c / np.maximum(env, c)  # (n,) float64, 1 where no limiting is needed
        if la:
            allneed = np.concatenate((self._rbuf, need))  # (L + n,), aligned with buf
            self._rbuf = allneed[n:]
            hold = _sliding_min(allneed, la + 1)  # (n,)
        else:
            allneed = hold = need
        k = self._ramp(n)[1]  # release per sample (natural log of the gain) times 0 .. n-1
        # release recursion l[j] = min(0, log hold[j], l[j-1] + s), unrolled into a running minimum;
        # natural log rather than dB: the same recursion, one multiplication fewer each way
        l_ln = np.minimum.accumulate(np.log(hold) - k) + k
        np.minimum(l_ln, self._lim_ln + self._lim_release + k, out=l_ln)
        np.minimum(l_ln, 0.0, out=l_ln)
        self._lim_ln = float(l_ln[-1])
        gain = np.exp(l_ln)
        if la:
            seq = np.concatenate((self._htail, gain))  # the previous L released values, then these
            csum = np.cumsum(seq)
            box = csum[la:].copy()
            box[1:] -= csum[: n - 1]
            self._htail = seq[n:]
            gain = np.minimum(box * (1.0 / (la + 1)), allneed[:n])
            # at rest again once the last L released gains are 1: hold[n-1] <= every buffered need
            # and those gains are the ramp's tail, so nothing is pending
            self._at_rest = bool(l_ln[n - la :].min() >= 0.0) if n >= la else (
                self._lim_ln >= 0.0 and bool(self._rbuf.min() >= 1.0) and bool(self._htail.min() >= 1.0))
        else:
            self._at_rest = self._lim_ln >= 0.0
        lowest = float(gain.min())
        if lowest < 1.0:
            self._st_limited += 1
            self._st_lim_min = min(self._st_lim_min, 20.0 * math.log10(lowest))
        return (delayed * gain).astype(np.float32)

    def reset(self) -> None:
        """A discontinuity: forget the limiter's delay line; keep the speech level and the gain."""
        self._reset_limiter()

    def stats(self) -> dict[str, Any] | None:
        """Summary since the previous call: AGC gain min/mean/max and now (dB), speech level (dBFS),
        fraction of frames that were speech, deepest limiter reduction (dB) and fraction of frames where
        the limiter acted. None before any frame."""
        frames = self._st_frames
        if not frames:
            return None
        out = {"gain_db": {"min": round(self._st_min, 2), "mean": round(self._st_sum / frames, 2),
                           "max": round(self._st_max, 2)},
               "gain_db_now": round(self._g_db, 2), LEVEL_DBFS: round(self._level_db, 2),
               "speech_frac": round(self._st_speech / frames, 3),
               "limiter_min_db": round(self._st_lim_min, 2),
               "limited_frac": round(self._st_limited / frames, 4), "frames": frames}
        self._reset_stats()
        return out
