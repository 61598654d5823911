"""The learned residual-echo suppressor of the ``aec`` stage (``suppress: neural``).

After SpeexDSP's linear filter, what is left of the echo is still the playback: speech or music that a
VAD and a recognizer take for the user. The model (``models/echo.onnx``; training and data:
``train/echo/``, card: ``models/ECHO_MODEL_CARD.md``) is the v2 denoiser's network with two more input
spectra: per 10 ms hop it takes, per microphone channel, the spectrum of the linear filter's output (the
one it enhances), of the filter's echo estimate (its input less its output) and of the reference as the
filter saw it (aligned; the mean of the reference channels), and returns the enhanced spectrum and its
recurrent state. It keeps the user and removes the residual echo and part of the room noise (the noise
15 dB lower, as SpeexDSP's suppressor also lowers it).

Spectra are voxd's shared STFT (16 kHz, 20 ms sqrt-Hann window, 10 ms hop, 161 bins): the output lags
the input by one hop (the window less the hop), as with SpeexDSP's suppressor. Signals are int16 in
(the canceller's scale), float32 out (full scale 1.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from voxd.inference import load_model, state_size
from voxd.stft import StftAnalysis, StftSynthesis

MODEL = "models/echo.onnx"
RATE, N_FFT, HOP = 16000, 320, 160
BINS = N_FFT // 2 + 1
INPUTS = ("spec", "state")
OUTPUTS = ["enh", "state_out"]
_SCALE = np.float32(1.0 / 32767.0)


def load_session(path: str | None) -> Any:
    """The model's onnxruntime session (``path`` or the bundled model); ValueError naming what is wrong
    when it is not a residual-echo suppressor for 16 kHz and 10 ms hops."""
    session = load_model(path, "voxd_aec", MODEL)
    names = {i.name: i.shape for i in session.get_inputs()}
    outs = {o.name for o in session.get_outputs()}
    spec = names.get("spec")
    if set(INPUTS) - set(names) or set(OUTPUTS) - outs or spec is None or spec[-1] != 6:
        raise ValueError(f"model {path or MODEL!r} is not a residual-echo suppressor: it takes "
                         f"{sorted(names)} and gives {sorted(outs)} (expected spec (1, 161, 6) and state in, "
                         f"enh and state_out out)")
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("voxd.rate", str(RATE)) != str(RATE) or meta.get("voxd.hop", str(HOP)) != str(HOP):
        raise ValueError(f"model {path or MODEL!r} is for {meta.get('voxd.rate')} Hz and a hop of "
                         f"{meta.get('voxd.hop')} samples, the stage runs at {RATE} Hz, {HOP}")
    return session


class NeuralSuppressor:
    """The model for ``channels`` microphone channels (one recurrent state each), hop by hop.

    Buffers are made here; :meth:`process` allocates only the model's outputs and small temporaries.
    """

    def __init__(self, path: str | None, channels: int) -> None:
        self._session = load_session(path)
        self.channels = channels
        self._states = np.zeros((channels, 1, state_size(self._session)), np.float32)
        self._ana = StftAnalysis(2 * channels + 1, N_FFT, HOP)  # lin (C), est (C), ref (1)
        self._syn = StftSynthesis(channels, N_FFT, HOP)
        self._x = np.zeros((2 * channels + 1, HOP), np.float32)
        self._inp = np.zeros((1, BINS, 6), np.float32)
        self._enh = np.zeros((channels, BINS), np.complex64)
        self.failures = 0  #: hops where the model returned non-finite values (the linear output was used)

    @property
    def delay_samples(self) -> int:
        """Output lag behind the input: one hop."""
        return self._syn.delay_samples

    def reset(self) -> None:
        """Forget the recurrent states and the STFT history (the canceller restarted)."""
        self._states[:] = 0.0
        self._ana.reset()
        self._syn.reset()

    def process(self, lin: np.ndarray, est: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """One hop: ``lin`` and ``est`` int16 ``(channels, hop)``, ``ref`` int16 ``(refs, hop)`` ->
        float32 ``(channels, hop)``, one hop late."""
        c, x = self.channels, self._x
        x[:c] = lin
        x[c : 2 * c] = est
        x[2 * c] = ref.mean(axis=0) if ref.shape[0] > 1 else ref[0]
        x *= _SCALE
        spec = self._ana.push(x)[0]
        inp = self._inp
        inp[0, :, 4] = spec[2 * c].real
        inp[0, :, 5] = spec[2 * c].imag
        for k in range(c):
            inp[0, :, 0] = spec[k].real
            inp[0, :, 1] = spec[k].imag
            inp[0, :, 2] = spec[c + k].real
            inp[0, :, 3] = spec[c + k].imag
            out, state = self._session.run(OUTPUTS, {"spec": inp, "state": self._states[k]})
            if np.isfinite(out).all() and np.isfinite(state).all():
                self._states[k] = state
                self._enh[k].real = out[0, :, 0]
                self._enh[k].imag = out[0, :, 1]
            else:  # recover: this hop passes the linear output, the state starts over
                self.failures += 1
                self._states[k] = 0.0
                self._enh[k] = spec[k]
        return self._syn.push(self._enh)
