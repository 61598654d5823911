"""The ``vad`` stage: voice activity detection with smoothed, strictly alternating speech events.

Chain entry: ``- {stage: vad}`` (WebRTC) or ``- {stage: vad, engine: silero}``, after the high-pass and
before the stages that use ``speech_prob`` (noise estimation). Parameters (durations in ms):

=================  ==============  ==================================================================
parameter          default         meaning
=================  ==============  ==================================================================
engine             webrtc          ``webrtc`` or ``silero``
channel            0               reference channel
aggressiveness     3               webrtc: WebRTC VAD mode 0-3
frame_ms           20              webrtc: sub-frame, 10/20/30 ms
snr_gate_db        3               webrtc: dB above the noise floor (min of the 60 ms level, ~2 s)
voicing            0.65            webrtc: normalised correlation at a 60-400 Hz pitch period
max_gain_db        30              webrtc: most gain of the level-normalised copy WebRTC hears (dB)
threshold          0.5             silero: probability for strong evidence
neg_threshold      threshold-0.15  silero: probability for weak evidence (bursts)
start_ms           60              strong evidence a burst needs to start a segment (confirmation)
min_speech_ms      250             shorter segments are never reported
end_ms             400 / 200       hangover without renewed strong evidence (webrtc / silero)
pre_roll_ms        50              speech_start pts = onset - pre_roll
post_roll_ms       200 / 50        speech_end pts = last renewal + post_roll (webrtc / silero)
=================  ==============  ==================================================================

Measured with these defaults (shared benchmark, frame-level F1 / precision / recall, 10 ms frames;
chain highpass -> mix -> vad):

=========  =====================  ===========  ===========  ========================================
engine     dev/vad F1 (P / R)     dev/mono F1  dev/asr F1   cost per 10 ms frame (chain_bench, mean)
=========  =====================  ===========  ===========  ========================================
webrtc     0.857 (0.798 / 0.926)  0.878        0.904        ~25 us
silero     0.908 (0.892 / 0.924)  0.895        0.940        ~80 us (one 512-sample chunk per 3.2 hops)
=========  =====================  ===========  ===========  ========================================

WebRTC's figures are with its level-normalised input (``max_gain_db`` 30; without it 0.858 / 0.876 /
0.904, but speech at -50 dBFS went undetected: recall of the clean dev speech 0.15 at -50 dBFS, 0.84
with it, 0.91 at -10 either way). The raw detectors on the same sets: WebRTC VAD mode 2, 30 ms:
0.772 / 0.862 / 0.872 (dev/vad precision 0.64); Silero at p > 0.5: 0.896 / 0.884 / 0.942.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from voxd.frame import AudioFormat, Frame
from voxd.side import AEC_ECHO_ONLY, SPEECH, SPEECH_PROB
from voxd.stage import EventSink, FormatError, Stage, StageContext, StageParams
from voxd_vad.engines import SILERO_RATES, WEBRTC_RATES, Engine, SileroEngine, WebRtcEngine
from voxd_vad.smoothing import Smoother, SmoothingSamples

# Hangover and post-roll depend on how the engine's strong evidence covers speech: WebRTC's is voicing,
# which pauses at unvoiced consonants and stops before unvoiced word endings; Silero's probability
# covers whole words.
ENGINE_DEFAULTS: dict[str, dict[str, float]] = {
    "webrtc": {"end_ms": 400.0, "post_roll_ms": 200.0},
    "silero": {"end_ms": 200.0, "post_roll_ms": 50.0},
}
WEBRTC_ONLY = ("aggressiveness", "frame_ms", "snr_gate_db", "voicing", "max_gain_db")
SILERO_ONLY = ("threshold", "neg_threshold")


class VadParams(StageParams):
    """Parameters of the ``vad`` stage (durations in milliseconds, levels in dB)."""

    engine: Literal["webrtc", "silero"] = Field(
        "webrtc", description="detector: 'webrtc' (WebRTC GMM VAD + noise gate + voicing, ~25 us per "
        "10 ms frame) or 'silero' (Silero VAD v6 network via onnxruntime: better on music and noise, "
        "~80 us per frame)")
    channel: int = Field(0, ge=0, le=1023, description="reference channel the detector listens to")
    # --- webrtc
    aggressiveness: int = Field(3, ge=0, le=3, description="webrtc: WebRTC VAD mode, 0 (keeps most "
                                "speech) to 3 (rejects most non-speech)")
    frame_ms: Literal[10, 20, 30] = Field(20, description="webrtc: sub-frame the WebRTC VAD decides on (ms)")
    snr_gate_db: float = Field(3.0, ge=0, le=40, description="webrtc: a sub-frame counts as speech only "
                               "this far above the noise floor (dB; 0 = off)")
    voicing: float = Field(0.65, ge=0, le=1, description="webrtc: minimum normalised correlation at a "
                           "60-400 Hz pitch period for a sub-frame to confirm or sustain speech (0 = off)")
    max_gain_db: float = Field(30.0, ge=0, le=60, description="webrtc: WebRTC VAD hears a copy raised "
                               "so that the loudest 60 ms of the last 4 s reach -25 dBFS, by at most this "
                               "(dB; 0 = off): quiet and far talkers are heard")
    # --- silero
    threshold: float = Field(0.5, gt=0, lt=1, description="silero: speech probability that confirms or "
                             "sustains speech")
    neg_threshold: float | None = Field(None, ge=0, lt=1, description="silero: probability below which a "
                                        "burst of possible speech is broken; default threshold - 0.15")
    echo_gate: bool = Field(True, description="after an aec stage: frames it marks as holding only the "
                            "playback's echo (aec.echo_only) count as no speech, so that the device does not "
                            "trigger on its own voice or music")
    # --- smoothing (both engines)
    start_ms: float = Field(60.0, ge=0, le=2000, description="speech-start confirmation: strong speech "
                            "evidence an uninterrupted burst must hold to start a segment (ms)")
    min_speech_ms: float = Field(250.0, ge=0, le=5000, description="minimum speech duration: shorter "
                                 "segments are dropped; speech_start waits until a segment is this long (ms)")
    end_ms: float | None = Field(None, ge=0, le=10000, description="speech-end hangover: time without "
                                 "renewed strong evidence after which the segment ends (ms); default 400 "
                                 "(webrtc: voicing pauses at every unvoiced consonant) or 200 (silero)")
    pre_roll_ms: float = Field(50.0, ge=0, le=2000, description="speech_start pts = detected onset minus "
                               "this (ms), clamped at 0 and at the previous speech_end")
    post_roll_ms: float | None = Field(None, ge=0, le=10000, description="speech_end pts = last strong "
                                       "evidence plus this (ms), at most end_ms; default 200 (webrtc: "
                                       "covers unvoiced word endings) or 50 (silero)")

    @model_validator(mode="after")
    def _consistent(self) -> VadParams:
        other = SILERO_ONLY if self.engine == "webrtc" else WEBRTC_ONLY
        misplaced = [k for k in other if k in self.model_fields_set]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} only appl{'ies' if len(misplaced) == 1 else 'y'} to "
                             f"engine {'silero' if self.engine == 'webrtc' else 'webrtc'}")
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise ValueError(f"neg_threshold {self.neg_threshold:g} must not exceed threshold "
                             f"{self.threshold:g}")
        if self.post_roll > self.end:
            raise ValueError(f"post_roll_ms {self.post_roll:g} must not exceed end_ms {self.end:g} "
                             "(the segment is over by then)")
        return self

    @property
    def end(self) -> float:
        """The effective ``end_ms``."""
        return self.end_ms if self.end_ms is not None else ENGINE_DEFAULTS[self.engine]["end_ms"]

    @property
    def post_roll(self) -> float:
        """The effective ``post_roll_ms``."""
        value = self.post_roll_ms
        return value if value is not None else ENGINE_DEFAULTS[self.engine]["post_roll_ms"]

    @property
    def neg(self) -> float:
        """The effective ``neg_threshold``."""
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


class Vad(Stage[VadParams]):
    """Voice activity detection on one reference channel; audio passes through unchanged.

    Side values on every frame: ``speech`` (bool, the smoothed state: true from the moment a segment
    is confirmed to the moment its end is decided) and ``speech_prob`` (0..1: Silero's probability of
    its latest chunk; for WebRTC the running fraction, time constant 100 ms, of sub-frames that were
    speech above the noise gate). Both travel in the wire header.

    Events: ``speech_start`` and ``speech_end``, strictly alternating, with ``pts`` (chain-rate sample
    index; :mod:`voxd_vad.smoothing` says where the boundaries fall) and ``stage`` (this stage's name,
    so that two detectors in one chain can be told apart). An open segment ends at the last sample
    seen on ``reset()`` (a discontinuity) and on ``close()`` (end of stream).

    The engine decides on units of its own size (WebRTC ``frame_ms``, Silero 32 ms) buffered from the
    chain's hops, so the decisions do not depend on how the stream is cut into frames.
    """

    kind = "vad"
    provides = (SPEECH, SPEECH_PROB)

    def __init__(self, params: VadParams, name: str) -> None:
        super().__init__(params, name)
        self._opened = False  # close() or reset() before open() has nothing to end

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        p = self.params
        if p.channel >= fmt.channels:
            raise FormatError(f"channel {p.channel} does not exist (channels 0-{fmt.channels - 1})")
        rates = WEBRTC_RATES if p.engine == "webrtc" else SILERO_RATES
        if fmt.rate not in rates:
            raise FormatError(f"engine {p.engine} needs a chain rate of {', '.join(map(str, rates))} Hz")
        return fmt

    def open(self, ctx: StageContext) -> None:
        p = self.params
        rate = ctx.rate
        self.engine: Engine = (
            WebRtcEngine(rate, p.aggressiveness, p.frame_ms, p.snr_gate_db, p.voicing, p.max_gain_db)
            if p.engine == "webrtc"
            else SileroEngine(rate, p.threshold, p.neg))
        self.smoother = Smoother(SmoothingSamples.from_ms(rate, p.start_ms, p.min_speech_ms, p.end,
                                                          p.pre_roll_ms, p.post_roll))
        self._emit: EventSink = ctx.emit
        self._channel = p.channel
        self._echo_gate = p.echo_gate
        self._unit = self.engine.unit
        self._buf = np.zeros(self._unit, np.float32)  # a unit being filled from consecutive frames
        self._fill = 0
        self._seen = 0  # pts just after the last sample seen
        self._after_reset = False
        self._opened = True

    def process(self, frame: Frame) -> Frame:
        assert frame.samples is not None
        x = frame.samples[self._channel]
        n, unit = x.shape[0], self._unit
        if self._after_reset:  # no pre-roll reaches back across the discontinuity (unless pts restarted)
            self.smoother.reset(self._seen if frame.pts >= self._seen else 0)
            self._after_reset = False
        # the canceller's verdict on this frame (absent without an aec stage): the detector still hears the
        # frame (its state and noise floor follow the stream), its evidence is not believed
        echo_only = self._echo_gate and frame.side.get(AEC_ECHO_ONLY) is True
        pos = 0
        while pos < n:
            if self._fill == 0 and n - pos >= unit:  # a whole unit in this frame: no copy
                chunk = x[pos : pos + unit]
                pos += unit
            else:
                take = min(unit - self._fill, n - pos)
                self._buf[self._fill : self._fill + take] = x[pos : pos + take]
                self._fill += take
                pos += take
                if self._fill < unit:
                    break
                chunk, self._fill = self._buf, 0
            weak, strong = self.engine.analyse(chunk)
            if echo_only:
                weak = strong = False
            end = frame.pts + pos
            event = self.smoother.push(weak, strong, end - unit, end)
            if event is not None:
                self._emit(event[0], pts=event[1], stage=self.name)
        self._seen = frame.pts + n
        return frame.with_side(**{SPEECH: self.smoother.speech, SPEECH_PROB: self.engine.prob})

    def _finish(self) -> None:
        if not self._opened:
            return
        event = self.smoother.finish(self._seen)
        if event is not None:
            self._emit(event[0], pts=event[1], stage=self.name)

    def reset(self) -> None:
        """Discontinuity: end an open segment at the last sample seen, then forget the stream."""
        self._finish()
        if not self._opened:
            return
        self.engine.reset()
        self._fill = 0
        self._after_reset = True

    def close(self) -> None:
        """End of stream: an open segment ends at the last sample seen."""
        self._finish()
