"""``mask``: a learned time-frequency mask of the target talker from all microphones, for the beamformer.

Chain entry (spectral domain, before ``beamform``)::

    - {stage: mask}                      # the bundled model for the array's microphone count
    - {stage: beamform, mask: model}     # its statistics weighted by the mask

The model (``models/mask-<M>mic.onnx``; training, data and card: ``train/mask/``) is the v2 denoiser's
network with ``M - 1`` auxiliary input spectra. Per 10 ms hop it takes the reference microphone's
spectrum ``X_0`` and every other microphone's spectrum *relative* to it, ``X_m conj(X_0) / |X_0|`` (its
own magnitude with the inter-microphone phase difference: the spatial cue that a single-channel mask
lacks, and what tells the talker from a louder television), and returns a per-bin gain 0..1: an
estimate of the ratio mask of the talker's image at the reference microphone against everything else
(other talkers, music, TV, noise, the diffuse field). The stage passes every spectrum unchanged and
provides the gain as the side value ``mask.gain`` ``(1, bins)``.

Spectra are voxd's shared STFT (16 kHz, 20 ms sqrt-Hann window, 10 ms hop, 161 bins); the model adds
no delay. ``channels`` picks the microphones and their order (the first is the reference; default: all,
in capture order, which must be the order the model was trained with: the board's geometry).

Non-finite input values are zeroed before the model sees them. If the model returns non-finite values
its recurrent state starts over and that hop's gain is 0 (in the beamformer's statistics: noise); if it
raises, or no longer loads when the chain opens, the stage emits one ``stage_error`` event and provides
a gain of 0 from then on (the beamformer then keeps the reference microphone until its statistics
have a talker, which they then never get: the fallback is the single microphone).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from voxd.frame import AudioFormat, Domain, Frame
from voxd.inference import load_model, state_size
from voxd.side import MASK_GAIN
from voxd.stage import (
    EventSink,
    FormatError,
    Stage,
    StageContext,
    StageParams,
    distinct_indices,
    readable_file,
)

RATE, N_FFT = 16000, 320
BINS = N_FFT // 2 + 1
INPUTS = {"spec", "state"}
OUTPUTS = ["gain", "state_out"]
#: bundled models, by microphone count
BUNDLED = {4: "models/mask-4mic.onnx"}
_EPS = np.float32(1e-12)  # as in training (train/mask/train.py: relative)


def load_session(path: str | None, mics: int | None = None) -> Any:
    """The model's onnxruntime session (``path``, else the bundled model for ``mics`` microphones);
    ValueError naming what is wrong when it does not load or is not a mask model."""
    name = path or BUNDLED.get(mics or 0)
    if name is None:
        raise ValueError(f"there is no bundled mask model for {mics} microphones (bundled: "
                         f"{', '.join(str(m) for m in sorted(BUNDLED))}); give one with model:")
    session = load_model(path, "voxd_array", name)
    ins = {i.name: i.shape for i in session.get_inputs()}
    outs = {o.name for o in session.get_outputs()}
    spec = ins.get("spec")
    if (INPUTS - set(ins) or set(OUTPUTS) - outs or spec is None or not isinstance(spec[-1], int)
            or spec[-1] < 4 or spec[-1] % 2 or spec[-2] != BINS):
        raise ValueError(f"model {name!r} is not a mask model: it takes {sorted(ins)} and gives "
                         f"{sorted(outs)} (expected spec (1, {BINS}, 2 M) with M >= 2 and state in, gain "
                         f"and state_out out)")
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("voxd.rate", str(RATE)) != str(RATE) or meta.get("voxd.n_fft", str(N_FFT)) != str(N_FFT):
        raise ValueError(f"model {name!r} is for {meta.get('voxd.rate')} Hz and n_fft "
                         f"{meta.get('voxd.n_fft')}, the stage runs at {RATE} Hz, n_fft {N_FFT}")
    return session


def model_mics(session: Any) -> int:
    """The microphone count ``M`` a mask model takes (its ``spec`` input is ``(1, bins, 2 M)``)."""
    return int(next(i.shape for i in session.get_inputs() if i.name == "spec")[-1]) // 2


class MaskParams(StageParams):
    """Parameters of the ``mask`` stage."""

    model: str | None = Field(None, description="path of an ONNX mask model; default: the bundled model "
                                                "for the input's microphone count")
    channels: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, min_length=2, description="the microphones the model sees, in its order (the first is the "
                                        "reference); null: every input channel in capture order")

    @field_validator("model")
    @classmethod
    def _loads(cls, path: str | None) -> str | None:
        if path is not None:
            load_session(readable_file(path, "model file"))
        return path

    @field_validator("channels")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        return distinct_indices(v)


class Mask(Stage[MaskParams]):
    """The learned target mask from the array (see the module docstring)."""

    kind = "mask"
    domain = Domain.SPECTRAL

    @classmethod
    def provided_keys(cls, params: MaskParams) -> tuple[str, ...]:
        return (MASK_GAIN,)

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        if fmt.domain is not Domain.SPECTRAL or fmt.rate != RATE or fmt.n_fft != N_FFT:
            raise FormatError(f"mask needs the spectral domain at {RATE} Hz with n_fft {N_FFT} ({BINS} bins: "
                              f"window_ms 20, hop_ms 10), got {fmt.describe()}")
        rows = self.params.channels or list(range(fmt.channels))
        bad = [c for c in rows if c >= fmt.channels]
        if bad:
            raise FormatError(f"channels {bad} are not among the input's {fmt.channels} channels")
        try:
            mics = model_mics(load_session(self.params.model, len(rows)))
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        if mics != len(rows):
            raise FormatError(f"the model takes {mics} microphones, the stage is given {len(rows)} "
                              f"(channels: {rows})")
        return fmt

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        self._emit: EventSink = ctx.emit
        rows = self.params.channels or list(range(fmt.channels))
        self._all = rows == list(range(fmt.channels))
        self._rows = np.asarray(rows, np.intp)  # the per-frame gather index, made once
        self.failed: str | None = None
        self.failures = 0  #: hops where the model returned non-finite values (since the last stats())
        m = len(self._rows)
        self._inp = np.zeros((1, BINS, 2 * m), np.float32)
        self._zero = np.zeros((1, BINS), np.float32)
        self._state = np.zeros((1, 1), np.float32)
        try:  # the file was checked at build time; it may have gone or changed since
            self._session: Any = load_session(self.params.model, m)
            self._state = np.zeros((1, state_size(self._session)), np.float32)
        except Exception as exc:
            self._fail(0, exc)

    def _fail(self, pts: int, exc: Exception) -> None:
        """Give a gain of 0 (nothing learnt from this stage) for good, and report it once."""
        self.failed = f"{type(exc).__name__}: {exc}"
        self._session = None
        self._emit("stage_error", pts=pts, stage=self.name, kind=self.kind, error=self.failed,
                   action="gain 0 from now on", count=1)

    def reset(self) -> None:
        self._state[:] = 0.0

    def process(self, frame: Frame) -> Frame:
        spec = frame.spec
        assert spec is not None
        if self._session is None:
            return frame.with_side(**{MASK_GAIN: self._zero})
        x = spec if self._all else spec[self._rows]
        if not np.isfinite(x).all():
            x = np.where(np.isfinite(x), x, 0.0)
        x = x.astype(np.complex64, copy=False)
        # X_m conj(X_0) / |X_0| for m >= 1; X_0 itself first
        rot = x[0].conj() / np.sqrt(x[0].real ** 2 + x[0].imag ** 2 + _EPS)
        rel = x[1:] * rot
        inp = self._inp[0]
        inp[:, 0] = x[0].real
        inp[:, 1] = x[0].imag
        inp[:, 2::2] = rel.real.T
        inp[:, 3::2] = rel.imag.T
        try:
            gain, state = self._session.run(OUTPUTS, {"spec": self._inp, "state": self._state})
        except Exception as exc:  # onnxruntime's errors have no common base class
            self._fail(frame.pts, exc)
            return frame.with_side(**{MASK_GAIN: self._zero})
        if not (np.isfinite(gain).all() and np.isfinite(state).all()):
            self.failures += 1
            self._state[:] = 0.0
            return frame.with_side(**{MASK_GAIN: self._zero})
        self._state = state
        return frame.with_side(**{MASK_GAIN: np.clip(gain, 0.0, 1.0).astype(np.float32, copy=False)})

    def stats(self) -> dict[str, Any] | None:
        if not self.failures:
            return None
        out, self.failures = {"nonfinite_hops": self.failures}, 0
        return out

    def close(self) -> None:
        self._session = None


__all__ = ["BINS", "Mask", "MaskParams"]
