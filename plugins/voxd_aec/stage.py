"""``aec``: acoustic echo cancellation of the playback reference, per microphone channel.

Chain entry: ``- {stage: aec}`` before the beamformer; the capture must declare its loopback channels
(``capture.reference_channels: [6, 7]``), which reach the stage as the side value ``aec.reference``.

The engine is WebRTC's AEC3 inside its audio processing module (APM), as ``livekit`` ships it
(``pip install 'voxd[aec]'``; a missing package is a config error naming the extra). One APM per
microphone channel (its own state), each fed the reference (all reference channels) and its channel, in
10 ms int16 frames. docs/echo.md has the measurements behind the choice and the numbers below.

- **Delay**: the APM's output lags its input by a constant (128 samples at 16 kHz); the stage declares
  it (:attr:`Aec.delay_samples`) and the chain removes it.
- **Silent reference = the input, bit for bit**: the APM is not a pass-through (it enforces a high-pass
  filter and shifts the phase), so while the reference has been exactly zero for ``silence_hold_ms``
  the stage outputs its input (delayed by the declared delay); entering or leaving that state
  cross-fades over one hop. Meanwhile the APMs are not run (no playback costs only the delay line);
  they keep their state, so a converged echo path is still there when playback resumes.
- Input is sanitised (non-finite values -> 0, magnitudes clipped) before the engine; the output is
  finite. ``reset()`` (a discontinuity, a reload) builds fresh APMs.
- Side values: ``aec.active`` (the stage is cancelling) and ``aec.erle_db`` (smoothed input over output
  power of channel 0 while active, the delay taken into account; 0 otherwise). The library exposes no
  delay estimate or double-talk state.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from voxd.frame import AudioFormat, Domain, Frame
from voxd.side import AEC_ACTIVE, AEC_ERLE_DB, AEC_REFERENCE
from voxd.stage import FormatError, Stage, StageContext, StageParams

PACKAGE, DIST, EXTRA = "livekit", "livekit", "aec"
#: the APM's constant output delay in samples, by rate (measured: docs/echo.md)
APM_DELAY = {8000: 88, 16000: 128, 32000: 260, 48000: 430}
#: magnitudes are clipped here before the int16 conversion (full scale)
CLIP = 1.0
ERLE_SMOOTH = 0.9  # per-hop forgetting factor of the ERLE's power averages


class AecParams(StageParams):
    """Parameters of the ``aec`` stage."""

    silence_hold_ms: float = Field(500.0, ge=0.0, le=10_000.0,
                                   description="the reference must have been exactly silent this long "
                                               "(longer than the room's echo tail) before the stage passes "
                                               "its input through unchanged")
    stream_delay_ms: int = Field(0, ge=0, le=500,
                                 description="delay hint to AEC3 (ms) between the reference and its echo in "
                                             "the microphones; 0 for loopback channels of the same capture")

    @model_validator(mode="after")
    def _engine_installed(self) -> AecParams:
        if importlib.util.find_spec(PACKAGE) is None:
            raise ValueError(f"needs the package {DIST}, which is not installed: pip install 'voxd[{EXTRA}]'")
        return self


def _i16(x: np.ndarray) -> bytes:
    return (np.clip(x, -CLIP, CLIP) * 32767.0).round().astype(np.int16).tobytes()


class _Engine:
    """One APM per microphone channel."""

    def __init__(self, channels: int, rate: int, delay_ms: int) -> None:
        from livekit import rtc  # the extra: imported when a chain opens, never at registration

        self._rtc = rtc
        self.rate, self.hop, self.delay_ms = rate, rate // 100, delay_ms
        self.apms = [rtc.AudioProcessingModule(echo_cancellation=True) for _ in range(channels)]

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


class Aec(Stage[AecParams]):
    """Acoustic echo cancellation (see the module docstring)."""

    kind = "aec"
    domain = Domain.TIME
    requires = (AEC_REFERENCE,)
    provides = (AEC_ACTIVE, AEC_ERLE_DB)

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        if fmt.rate not in APM_DELAY:
            raise FormatError(f"aec runs at {', '.join(map(str, APM_DELAY))} Hz, got {fmt.rate} Hz")
        if fmt.frame % (fmt.rate // 100):
            raise FormatError(f"aec needs a hop of a whole number of 10 ms frames, got {fmt.frame} samples")
        return fmt

    @property
    def delay_samples(self) -> int:
        return APM_DELAY.get(self.input_format.rate, 0) if self._formats is not None else 0

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        self._hold = round(self.params.silence_hold_ms * fmt.rate / 1000)
        self._engine: _Engine | None = None
        self._shape = (fmt.channels, fmt.rate)
        d = self.delay_samples
        self._line = np.zeros((fmt.channels, d + fmt.frame), np.float32)  # dry input, delayed by d
        self._ramp = ((np.arange(fmt.frame, dtype=np.float32) + 1) / fmt.frame)[None, :]
        self.reset()

    def reset(self) -> None:
        self._engine = _Engine(*self._shape, self.params.stream_delay_ms)
        self._line[:] = 0.0
        self._silent = self._hold  # samples since the reference was last non-zero (capped)
        self._active = False
        self._p_in = self._p_out = 0.0

    def _delayed(self, x: np.ndarray) -> np.ndarray:
        line, n = self._line, x.shape[1]
        line[:, -n:] = x
        out = line[:, :n].copy()
        line[:, :-n] = line[:, n:]
        return out

    def process(self, frame: Frame) -> Frame:
        assert frame.samples is not None and self._engine is not None
        x = _sanitise(frame.samples)
        ref = frame.side.get(AEC_REFERENCE)
        n = x.shape[1]
        if not isinstance(ref, np.ndarray) or ref.ndim != 2 or ref.shape[1] != n:
            ref = np.zeros((1, n), np.float32)
        ref = _sanitise(ref)
        if ref.any():
            self._silent = 0
        else:
            self._silent = min(self._silent + n, self._hold)
        active = self._silent < self._hold or (self._hold == 0 and ref.any())
        dry = self._delayed(x)
        if not active and not self._active:
            # no playback: the engines are not run at all (the cost of this path is the delay line), and
            # they keep their converged echo paths for when playback resumes
            self._p_in = self._p_out = 0.0
            return frame.with_samples(dry, **{AEC_ACTIVE: False, AEC_ERLE_DB: 0.0})
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
        return frame.with_samples(y, **{AEC_ACTIVE: active, AEC_ERLE_DB: round(erle, 2)})

    def close(self) -> None:
        self._engine = None


def _sanitise(x: np.ndarray) -> Any:
    """``x`` as float32 with non-finite values set to 0 and magnitudes clipped at 100 (a copy only when
    something had to change)."""
    if x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max(initial=0.0) <= 100.0:
        return x
    return np.clip(np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0), -100.0, 100.0)


__all__ = ["APM_DELAY", "Aec", "AecParams"]
