"""``denoise``: the learned single-channel noise suppressor, run with onnxruntime on voxd's shared STFT.

The bundled model (``models/denoise.onnx``, see ``models/MODEL_CARD.md``) takes one 10 ms hop of the
161-bin spectrum (20 ms sqrt-Hann window, n_fft 320, 16 kHz) and its recurrent state, and returns the
enhanced spectrum of the same hop and the next state (interface: ``train/export_onnx.py``). It adds no
delay. Every channel is processed independently with its own state; one onnxruntime session (CPU, one
intra-op and one inter-op thread, sequential) per stage instance.

After the model: the noise removal is limited to ``attenuation_limit_db`` (the complex gain
``enh / x`` keeps its phase, its magnitude is raised to at least ``10^(-limit/20)``), then the result is
mixed with the input, ``mix * denoised + (1 - mix) * input``. Non-finite input values are replaced by 0
before the model and the output is always finite. If the model cannot be loaded or fails (raises, or
returns non-finite values), the stage emits one ``stage_error`` event and passes its (sanitised) input
through from then on.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from voxd.frame import AudioFormat, Domain, Frame
from voxd.stage import EventSink, FormatError, Stage, StageContext, StageParams

MODEL = "models/denoise.onnx"
RATE, N_FFT = 16000, 320
BINS = N_FFT // 2 + 1
TINY = 1e-12


class DenoiseParams(StageParams):
    attenuation_limit_db: float = Field(100.0, ge=0.0, le=200.0,
                                        description="maximum noise removal (dB): the gain applied to "
                                                    "each bin never drops below -limit dB")
    mix: float = Field(1.0, ge=0.0, le=1.0,
                       description="wet/dry: mix * denoised + (1 - mix) * input")
    model: str | None = Field(None, description="path of an ONNX model with the same interface; "
                                                "default: the bundled models/denoise.onnx")


def open_session(model: str | None) -> Any:  # -> onnxruntime.InferenceSession
    """An onnxruntime session on ``model`` (a path) or the bundled model: CPU, one thread, sequential."""
    import onnxruntime as ort

    data = (Path(model).read_bytes() if model is not None
            else resources.files("voxd_denoise").joinpath(MODEL).read_bytes())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def state_size(session: Any) -> int:
    """``S`` of the model's ``state`` input ``(1, S)``: its shape, else the ``voxd.state_size`` metadata."""
    shape = next(i.shape for i in session.get_inputs() if i.name == "state")
    if len(shape) == 2 and isinstance(shape[1], int):
        return int(shape[1])
    return int(session.get_modelmeta().custom_metadata_map["voxd.state_size"])


class Denoise(Stage):
    """Learned noise suppression (see the module docstring)."""

    kind = "denoise"
    domain = Domain.SPECTRAL
    Params = DenoiseParams
    params: DenoiseParams

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        if fmt.domain is not Domain.SPECTRAL or fmt.rate != RATE or fmt.n_fft != N_FFT:
            raise FormatError(f"denoise needs the spectral domain at {RATE} Hz with n_fft {N_FFT} "
                              f"({BINS} bins: window_ms 20, hop_ms 10), got {fmt.describe()}")
        return fmt

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        assert fmt is not None
        self._emit: EventSink = ctx.emit
        self._channels = fmt.channels
        self._floor = np.float32(10.0 ** (-self.params.attenuation_limit_db / 20.0))
        self._mix = np.float32(self.params.mix)
        self._inp = np.zeros((1, BINS, 2), np.float32)
        self.failed: str | None = None
        self._session: Any = None
        self._states = np.zeros((self._channels, 1, 0), np.float32)
        try:
            self._session = open_session(self.params.model)
            self._states = np.zeros((self._channels, 1, state_size(self._session)), np.float32)
        except Exception as exc:
            self._fail(0, exc)

    def _fail(self, pts: int, exc: Exception) -> None:
        """Switch to bypass for good and report it once."""
        if self.failed is None:
            self.failed = f"{type(exc).__name__}: {exc}"
            self._emit("stage_error", pts=pts, stage=self.name, kind=self.kind, error=self.failed,
                       action="bypassed", count=1)

    def process(self, frame: Frame) -> Frame:
        spec = frame.spec
        assert spec is not None
        # sanitising only when needed: nan_to_num on every frame costs more than the check
        x = spec if np.isfinite(spec).all() else np.nan_to_num(spec, nan=0.0, posinf=0.0, neginf=0.0)
        x = x.astype(np.complex64, copy=False)
        if self.failed is not None:
            return frame.with_spec(x)
        enh = np.empty_like(x)
        inp, sess = self._inp, self._session
        try:
            for c in range(x.shape[0]):
                inp[0, :, 0] = x[c].real
                inp[0, :, 1] = x[c].imag
                out, state = sess.run(None, {"spec": inp, "state": self._states[c]})
                if not (np.isfinite(out).all() and np.isfinite(state).all()):
                    raise FloatingPointError("the model returned non-finite values")
                self._states[c] = state
                enh[c].real = out[0, :, 0]
                enh[c].imag = out[0, :, 1]
        except Exception as exc:
            self._fail(frame.pts, exc)
            return frame.with_spec(x)
        # attenuation limit: |enh / x| >= floor, the gain's phase kept
        mag_x, mag_e = np.abs(x), np.abs(enh)
        low = mag_e < self._floor * mag_x
        if low.any():
            scale = self._floor * mag_x[low] / np.maximum(mag_e[low], TINY)
            enh[low] = np.where(mag_e[low] > TINY, enh[low] * scale, x[low] * self._floor)
        if self._mix != 1.0:
            enh = self._mix * enh + (np.float32(1.0) - self._mix) * x
        # finite by construction: x was sanitised, the model's output checked, the limit and mix
        # only scale finite values (divisions are by max(|enh|, TINY))
        return frame.with_spec(enh.astype(np.complex64, copy=False))

    def reset(self) -> None:
        self._states[:] = 0.0

    def close(self) -> None:
        self._session = None
