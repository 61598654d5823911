"""``aec``: acoustic echo cancellation of the playback reference, per microphone channel.

Chain entry: ``- {stage: aec, engine: speex}`` before the beamformer; the capture must declare its
loopback channels (``capture.reference_channels: [6, 7]``), which reach the stage as the side value
``aec.reference``. docs/echo.md has the measurements behind the engines and their defaults.

Engines (``engine:``):

- ``speex`` (default): SpeexDSP's adaptive echo canceller (MDF) and residual-echo suppressor, from the
  system's ``libspeexdsp.so.1`` (``apt install libspeexdsp1``; :mod:`voxd_aec.speex`). The delay of the
  echo behind the reference is estimated (:mod:`voxd_aec.delay`, GCC-PHAT) and the reference delayed to
  match, less ``margin_ms``, so the filter (``tail_ms``) need only span the room's echo; an estimate
  outside the first half of the filter's span re-aligns and restarts the filter. ``suppress: false``
  keeps only the linear filter (no suppressor: the near end untouched, more residual echo).
- ``aec3``: WebRTC's AEC3 inside its audio processing module, as ``livekit`` ships it (``pip install
  'voxd[aec]'``): more echo removed and faster re-convergence, but its suppressor (not configurable
  through the binding) also removes most of a user who talks over the playback.

A missing engine (library or package) is a config error naming what to install. Common behaviour:

- **Delay**: each engine's output lags its input by a constant (:attr:`Aec.delay_samples`: AEC3 128
  samples at 16 kHz; speex one hop with the suppressor, 0 without); the chain removes it.
- **Silent reference = the input, bit for bit**: neither engine is a pass-through, so while the
  reference has been exactly zero for ``silence_hold_ms`` the stage outputs its input (delayed by the
  declared delay); entering or leaving that state cross-fades over one hop. Meanwhile the engine is
  not run (no playback costs only the delay line); it keeps its state, so a converged echo path is
  still there when playback resumes.
- Input is sanitised (non-finite values -> 0, magnitudes clipped) before the engine; the output is
  finite. ``reset()`` (a discontinuity, a reload) builds a fresh engine.
- Side values: ``aec.active`` (the stage is cancelling), ``aec.erle_db`` (smoothed input over output
  power of channel 0 while active, the delay taken into account; 0 otherwise) and, engine speex,
  ``aec.delay_ms`` (the estimated echo delay), ``aec.echo_only`` (the frame's first channel holds only
  the playback's residue: a ``vad`` after the stage reports no speech there) and ``aec.doubletalk`` (the
  playback plays and something else is heard: a user talking over it); neither library exposes a
  double-talk state, so :mod:`voxd_aec.echogate` decides both from the canceller's powers and spectra.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from voxd.delayline import DelayLine
from voxd.frame import AudioFormat, Domain, Frame, finite_within, sanitized
from voxd.side import AEC_ACTIVE, AEC_DELAY_MS, AEC_DOUBLETALK, AEC_ECHO_ONLY, AEC_ERLE_DB, AEC_REFERENCE
from voxd.stage import FormatError, Stage, StageContext, StageParams

from . import residual, speex
from .delay import DelayEstimator
from .echogate import EchoGate

PACKAGE, DIST, EXTRA = "livekit", "livekit", "aec"
#: the APM's constant output delay in samples, by rate (measured: docs/echo.md)
APM_DELAY = {8000: 88, 16000: 128, 32000: 260, 48000: 430}
#: magnitudes are clipped here before the int16 conversion (full scale)
CLIP = 1.0
#: input values beyond this (40 dB over full scale) or not finite are garbage: they become 0
LIMIT = 100.0
#: the echo gate's default margins (dB): the learned suppressor leaves less of the echo than SpeexDSP's,
#: so a user further under the echo can still count as double talk (docs/echo.md)
MARGIN_DB, NEURAL_MARGIN_DB = 10.0, 20.0
ERLE_SMOOTH = 0.9  # per-hop forgetting factor of the ERLE's power averages


class AecParams(StageParams):
    """Parameters of the ``aec`` stage."""

    engine: Literal["speex", "aec3"] = Field("speex", description="speex (SpeexDSP, delay-aligned) or aec3 "
                                                                   "(WebRTC AEC3 through livekit)")
    silence_hold_ms: float = Field(500.0, ge=0.0, le=10_000.0,
                                   description="the reference must have been exactly silent this long "
                                               "(longer than the room's echo tail) before the stage passes "
                                               "its input through unchanged")
    stream_delay_ms: int = Field(0, ge=0, le=500,
                                 description="engine aec3: delay hint (ms) between the reference and its "
                                             "echo in the microphones; 0 for loopback channels of the same "
                                             "capture")
    tail_ms: float = Field(128.0, ge=10.0, le=1000.0,
                           description="engine speex: the adaptive filter's length (ms), the echo tail after "
                                       "the reference has been aligned")
    suppress: bool | Literal["neural"] = Field(
        True, description="engine speex: residual-echo suppressor after the linear filter: true "
                          "(SpeexDSP's), 'neural' (the learned one, models/echo.onnx) or false (the linear "
                          "filter alone)")
    model: str | None = Field(None, description="suppress neural: path of an ONNX residual-echo suppressor "
                                                "(default: the bundled model)")
    max_delay_ms: float = Field(400.0, ge=0.0, le=500.0,
                                description="engine speex: the longest reference-to-echo delay searched (ms)")
    echo_margin_db: float | None = Field(
        None, ge=0.0, le=60.0,
        description="engine speex: a hop whose output is this far under the canceller's echo estimate is "
                    "echo only (aec.echo_only: a vad after the stage reports no speech there); a user "
                    "quieter than the echo by more than this at the microphones cannot barge in; default "
                    "20 with suppress neural (its residue is lower), else 10")
    echo_attenuation_db: float = Field(0.0, ge=0.0, le=60.0,
                                       description="engine speex: hops that are echo only (aec.echo_only) "
                                                   "are attenuated this much more (dB; 0 = off), ramped "
                                                   "over a hop")
    margin_ms: float = Field(3.0, ge=0.0, le=50.0,
                             description="engine speex: the reference is aligned this much before the "
                                         "estimated delay (ms), so the echo's onset stays inside the filter")

    @property
    def margin_db(self) -> float:
        """The echo gate's margin (dB): ``echo_margin_db``, else the default for the suppressor."""
        if self.echo_margin_db is not None:
            return self.echo_margin_db
        return NEURAL_MARGIN_DB if self.suppress == "neural" else MARGIN_DB

    @model_validator(mode="after")
    def _engine_installed(self) -> AecParams:
        if self.model is not None and self.suppress != "neural":
            raise ValueError("model is for suppress: neural")
        if self.suppress == "neural":
            if self.engine != "speex":
                raise ValueError("suppress: neural needs engine speex (it works on SpeexDSP's linear output)")
            residual.load_session(self.model)  # a missing or wrong model file is a config error
        if self.engine == "aec3" and importlib.util.find_spec(PACKAGE) is None:
            raise ValueError(f"engine aec3 needs the package {DIST}, which is not installed: "
                             f"pip install 'voxd[{EXTRA}]'")
        if self.engine == "speex" and not speex.available():
            raise ValueError(f"engine speex needs SpeexDSP ({speex.LIBRARY}), which is not installed: "
                             f"apt install {speex.DEBIAN_PACKAGE}")
        return self


def _i16(x: np.ndarray) -> bytes:
    return (np.clip(x, -CLIP, CLIP) * 32767.0).round().astype(np.int16).tobytes()


class _Aec3:
    """One AEC3 APM per microphone channel (float32 in and out)."""

    def __init__(self, channels: int, rate: int, delay_ms: int) -> None:
        from livekit import rtc  # the extra: imported when a chain opens, never at registration

        self._rtc = rtc
        self.rate, self.hop, self.delay_ms = rate, rate // 100, delay_ms
        self.delay_samples = APM_DELAY[rate]
        self.delay_estimate: float | None = None
        self.apms = [rtc.AudioProcessingModule(echo_cancellation=True) for _ in range(channels)]

    def resume(self) -> None:
        """Playback starts again after a pause (nothing to do: AEC3 aligns itself)."""

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """``mic`` float32 ``(channels, n)``, ``ref`` ``(refs, n)``, ``n`` a multiple of 10 ms."""
        rtc, hop = self._rtc, self.hop
        out = np.empty(mic.shape, np.float32)
        for start in range(0, mic.shape[1], hop):
            far = _i16(np.ascontiguousarray(ref[:, start:start + hop].T))
            for c, apm in enumerate(self.apms):
                apm.process_reverse_stream(rtc.AudioFrame(far, self.rate, ref.shape[0], hop))
                near = rtc.AudioFrame(_i16(mic[c, start:start + hop]), self.rate, 1, hop)
                apm.set_stream_delay_ms(self.delay_ms)
                apm.process_stream(near)
                out[c, start:start + hop] = np.frombuffer(near.data, np.int16) / np.float32(32767.0)
        return out

    def close(self) -> None:
        self.apms = []


class _Speex:
    """SpeexDSP per microphone channel behind a reference delayed by the estimated echo delay."""

    def __init__(self, channels: int, refs: int, rate: int, hop: int, p: AecParams) -> None:
        self.rate, self.hop = rate, hop
        self.max_lag = int(p.max_delay_ms * rate / 1000)
        self.margin = round(p.margin_ms * rate / 1000)
        # the estimator's block: a power of two above the longest lag (and at least 0.25 s)
        block = 1 << max(int(0.25 * rate), self.max_lag + 1).bit_length()
        self.est = DelayEstimator(block=block, max_lag=self.max_lag, early_window=int(0.03 * rate))
        self.canceller = speex.SpeexCanceller(channels, refs, rate, hop, p.tail_ms, p.suppress is True)
        self.neural = residual.NeuralSuppressor(p.model, channels) if p.suppress == "neural" else None
        self.delay_samples = hop if self.neural is not None else self.canceller.delay_samples
        self.shift = 0  # samples the reference is delayed by
        self.span = self.canceller.taps  # samples the adaptive filter spans
        self._line = np.zeros((refs, self.max_lag + hop), np.int16)  # the reference's recent past
        #: the reference as the filter saw it in the last hop, int16 ``(refs, hop)`` (delayed by ``shift``)
        self.aligned = np.zeros((refs, hop), np.int16)
        self.delay_estimate: float | None = 0.0
        self.gate = EchoGate(rate, hop, lag=1 if self.delay_samples else 0, margin_db=p.margin_db)
        self.echo_only = self.doubletalk = False  # of the last frame processed
        self.floor_gain = np.float32(10.0 ** (-p.echo_attenuation_db / 20.0))
        self._gain = np.float32(1.0)  # the gain at the end of the last hop
        self._ramp = (np.arange(1, hop + 1, dtype=np.float32) / hop)[None, :]

    def resume(self) -> None:
        """Playback starts again after a pause: the reference's past is silence, not the old playback."""
        self._line[:] = 0

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """``mic`` float32 ``(channels, n)``, ``ref`` ``(refs, n)``, ``n`` a multiple of the hop."""
        hop, line = self.hop, self._line
        out = np.empty(mic.shape, np.float32)
        echo_only, doubletalk = True, False
        for start in range(0, mic.shape[1], hop):
            r = ref[:, start:start + hop]
            d = self.est.push(r[0], mic[0, start:start + hop])
            if d is not None:
                self.delay_estimate = d * 1000.0 / self.rate
                # re-align only when the echo's onset has left the first half of the filter's span:
                # every re-alignment restarts the filter, and peaks of a reverberant path wander
                if d < self.shift or d - self.shift > self.span // 2:
                    self.shift = max(0, d - self.margin)
                    self.canceller.reset()
                    self.gate.reset()
                    if self.neural is not None:
                        self.neural.reset()
            line[:, :-hop] = line[:, hop:]
            line[:, -hop:] = np.clip(r, -CLIP, CLIP) * 32767.0
            end = line.shape[1] - self.shift
            m16 = (np.clip(mic[:, start:start + hop], -CLIP, CLIP) * 32767.0).round().astype(np.int16)
            self.aligned[:] = line[:, end - hop:end]
            y = self.canceller.process(m16, self.aligned)
            if self.neural is None:
                out[:, start:start + hop] = y / np.float32(32767.0)
                y0: np.ndarray = y[0]
            else:
                lin = self.canceller.linear
                est = np.clip(m16.astype(np.int32) - lin, -32768, 32767).astype(np.int16)
                out[:, start:start + hop] = np.clip(self.neural.process(lin, est, self.aligned), -CLIP, CLIP)
                y0 = out[0, start:start + hop] * np.float32(32767.0)
            only, both = self.gate.push(m16[0], self.canceller.linear[0], y0, self.aligned)
            echo_only, doubletalk = echo_only and only, doubletalk or both
            target = self.floor_gain if only else np.float32(1.0)
            if target != 1.0 or self._gain != 1.0:
                g = self._gain + (target - self._gain) * self._ramp
                out[:, start:start + hop] *= g
                self._gain = target
        self.echo_only, self.doubletalk = echo_only, doubletalk
        return out

    def close(self) -> None:
        self.canceller.close()


class Aec(Stage[AecParams]):
    """Acoustic echo cancellation (see the module docstring)."""

    kind = "aec"
    domain = Domain.TIME
    requires = (AEC_REFERENCE,)
    provides = (AEC_ACTIVE, AEC_ERLE_DB, AEC_DELAY_MS, AEC_ECHO_ONLY, AEC_DOUBLETALK)

    @classmethod
    def provided_keys(cls, params: AecParams) -> tuple[str, ...]:
        if params.engine == "speex":
            return cls.provides
        return (AEC_ACTIVE, AEC_ERLE_DB)

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        if fmt.rate not in APM_DELAY:
            raise FormatError(f"aec runs at {', '.join(map(str, APM_DELAY))} Hz, got {fmt.rate} Hz")
        if self.params.suppress == "neural" and fmt.rate != residual.RATE:
            raise FormatError(f"aec with suppress: neural runs at {residual.RATE} Hz, got {fmt.rate} Hz")
        if fmt.frame % (fmt.rate // 100):
            raise FormatError(f"aec needs a hop of a whole number of 10 ms frames, got {fmt.frame} samples")
        return fmt

    @property
    def delay_samples(self) -> int:
        if self._formats is None:
            return 0
        rate = self.input_format.rate
        if self.params.engine == "aec3":
            return APM_DELAY.get(rate, 0)
        return rate // 100 if self.params.suppress else 0

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        self._hold = round(self.params.silence_hold_ms * fmt.rate / 1000)
        self._engine: _Aec3 | _Speex | None = None
        self._refs = 0  # reference channels the engine was built for (0: not built yet)
        self._dry = DelayLine(fmt.channels, self.delay_samples, fmt.frame)  # the input, as late as the engine
        self._ramp = ((np.arange(fmt.frame, dtype=np.float32) + 1) / fmt.frame)[None, :]
        self.reset()

    def _build(self, refs: int) -> _Aec3 | _Speex:
        fmt, p = self.input_format, self.params
        if p.engine == "aec3":
            return _Aec3(fmt.channels, fmt.rate, p.stream_delay_ms)
        return _Speex(fmt.channels, refs, fmt.rate, fmt.rate // 100, p)

    def reset(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine, self._refs = None, 0  # built with the first playback (its reference channel count)
        self._dry.reset()
        self._silent = self._hold  # samples since the reference was last non-zero (capped)
        self._active = False
        self._p_in = self._p_out = 0.0

    def process(self, frame: Frame) -> Frame:
        assert frame.samples is not None
        x = _sanitise(frame.samples)
        ref = frame.side.get(AEC_REFERENCE)
        n = x.shape[1]
        if not isinstance(ref, np.ndarray) or ref.ndim != 2 or ref.shape[1] != n or ref.shape[0] < 1:
            ref = np.zeros((1, n), np.float32)
        ref = _sanitise(ref)
        playing = bool(ref.any())
        if playing:
            self._silent = 0
        else:
            self._silent = min(self._silent + n, self._hold)
        active = self._silent < self._hold or (self._hold == 0 and playing)
        dry = self._dry.push(x)
        if not active and not self._active:
            # no playback: the engine is not run at all (the cost of this path is the delay line), and it
            # keeps its converged echo paths for when playback resumes
            self._p_in = self._p_out = 0.0
            return frame.with_samples(dry, **self._side(False, 0.0))
        if self._engine is None or self._refs != ref.shape[0]:
            if self._engine is not None:
                self._engine.close()
            self._engine, self._refs = self._build(ref.shape[0]), ref.shape[0]
        elif active and not self._active:
            self._engine.resume()
        wet = self._engine.process(x, ref)
        if active and self._active:
            y = wet
        elif active != self._active:  # cross-fade into the new state over this hop
            fade = self._ramp if active else 1.0 - self._ramp
            y = (fade * wet + (1.0 - fade) * dry).astype(np.float32)
        else:
            y = dry
        erle = 0.0
        if active:
            p_in = float(np.dot(dry[0], dry[0])) / n
            p_out = float(np.dot(wet[0], wet[0])) / n
            self._p_in = ERLE_SMOOTH * self._p_in + (1 - ERLE_SMOOTH) * p_in
            self._p_out = ERLE_SMOOTH * self._p_out + (1 - ERLE_SMOOTH) * p_out
            erle = 10.0 * float(np.log10((self._p_in + 1e-12) / (self._p_out + 1e-12)))
        else:
            self._p_in = self._p_out = 0.0
        self._active = active
        return frame.with_samples(y, **self._side(active, round(erle, 2)))

    def _side(self, active: bool, erle: float) -> dict[str, Any]:
        side: dict[str, Any] = {AEC_ACTIVE: active, AEC_ERLE_DB: erle}
        if self.params.engine == "speex":
            eng = self._engine
            est = eng.delay_estimate if eng is not None else None
            side[AEC_DELAY_MS] = round(est or 0.0, 2)
            speex_eng = eng if active and isinstance(eng, _Speex) else None
            side[AEC_ECHO_ONLY] = speex_eng is not None and speex_eng.echo_only
            side[AEC_DOUBLETALK] = speex_eng is not None and speex_eng.doubletalk
        return side

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine = None


def _sanitise(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 with non-finite values and magnitudes over :data:`LIMIT` set to 0 (the core's
    rule, :func:`voxd.frame.sanitized`; a copy only when something had to change; one dot product when
    nothing does)."""
    x = x if x.dtype == np.float32 else x.astype(np.float32)
    return x if finite_within(x, LIMIT) else sanitized(x, LIMIT)[0]


__all__ = ["APM_DELAY", "Aec", "AecParams"]
