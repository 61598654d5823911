"""``engine: voxd``: the in-house model (``models/denoise.onnx``, see ``models/MODEL_CARD.md``) on
voxd's shared STFT.

The model takes one 10 ms hop of the 161-bin spectrum (20 ms sqrt-Hann window, n_fft 320, 16 kHz) and
its recurrent state, and returns the enhanced spectrum of the same hop and the next state (interface:
``train/export_onnx.py``). It adds no delay of its own. Every channel has its own state.
"""

from __future__ import annotations

import numpy as np

from voxd.inference import state_size
from voxd_denoise.session import model_bytes, open_session

MODEL = "models/denoise.onnx"
RATE, N_FFT = 16000, 320
BINS = N_FFT // 2 + 1
#: the outputs the stage reads, by name: a model may have more (v2 adds the per-bin ``gain``)
OUTPUTS = ["enh", "state_out"]


class InHouseModel:
    """The model for ``channels`` channels: :meth:`enhance` maps one hop's spectra to enhanced ones."""

    def __init__(self, path: str | None, channels: int) -> None:
        self._session = open_session(model_bytes(path, MODEL))
        self._states = np.zeros((channels, 1, state_size(self._session)), np.float32)
        self._inp = np.zeros((1, BINS, 2), np.float32)

    def enhance(self, x: np.ndarray) -> np.ndarray:
        """``x`` complex64 ``(channels, bins)`` (finite) -> enhanced complex64 ``(channels, bins)``.

        Raises FloatingPointError when the model returns non-finite values (its state is then kept)."""
        enh = np.empty_like(x)
        inp, sess = self._inp, self._session
        for c in range(x.shape[0]):
            inp[0, :, 0] = x[c].real
            inp[0, :, 1] = x[c].imag
            out, state = sess.run(OUTPUTS, {"spec": inp, "state": self._states[c]})
            if not (np.isfinite(out).all() and np.isfinite(state).all()):
                raise FloatingPointError("the model returned non-finite values")
            self._states[c] = state
            enh[c].real = out[0, :, 0]
            enh[c].imag = out[0, :, 1]
        return enh

    def reset(self) -> None:
        self._states[:] = 0.0
