"""``engine: gtcrn``: GTCRN (Rong et al., ICASSP 2024; ~24 k parameters), the DNS3-trained streaming
ONNX export ``models/gtcrn_simple.onnx`` (MIT, see ``models/README.md`` for origin and sha256), run
with onnxruntime at its native 16 kHz.

GTCRN has its own STFT: 512-point periodic sqrt-Hann window, 256-sample hop (32 ms / 16 ms), which
voxd's shared 20/10 ms STFT cannot feed, so the engine frames the time signal itself with
:class:`voxd.stft.StftAnalysis` / :class:`voxd.stft.StftSynthesis` (the same window and weighted
overlap-add as its training). One call of the model per hop: the 257-bin spectrum ``(1, 257, 1, 2)``
and three caches in, the enhanced spectrum and the caches out. Output sample ``k`` enhances input
sample ``k - 256`` (window minus hop).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from voxd.stft import StftAnalysis, StftSynthesis

RATE = 16000
N_FFT, HOP = 512, 256
MODEL = "models/gtcrn_simple.onnx"
CACHES = {"conv_cache": (2, 1, 16, 16, 33), "tra_cache": (2, 3, 1, 1, 16), "inter_cache": (2, 1, 33, 16)}


class Gtcrn:
    """One channel of GTCRN (see the module docstring) on an onnxruntime ``session`` (shared by the
    stage's channels: a session is stateless, the caches are per channel)."""

    rate, frame, delay = RATE, HOP, N_FFT - HOP

    def __init__(self, session: Any) -> None:
        self._session = session
        self._ana = StftAnalysis(1, N_FFT, HOP)
        self._syn = StftSynthesis(1, N_FFT, HOP)
        self._inp = np.zeros((1, N_FFT // 2 + 1, 1, 2), np.float32)
        self._caches = {k: np.zeros(shape, np.float32) for k, shape in CACHES.items()}

    def reset(self) -> None:
        self._ana.reset()
        self._syn.reset()
        for cache in self._caches.values():
            cache[:] = 0.0

    def push(self, x: np.ndarray) -> np.ndarray:
        out: list[np.ndarray] = []
        inp = self._inp
        for spec in self._ana.push(x[None, :]):
            inp[0, :, 0, 0] = spec[0].real
            inp[0, :, 0, 1] = spec[0].imag
            enh, conv, tra, inter = self._session.run(None, {"mix": inp, **self._caches})
            self._caches = {"conv_cache": conv, "tra_cache": tra, "inter_cache": inter}
            y = (enh[0, :, 0, 0] + 1j * enh[0, :, 0, 1]).astype(np.complex64)
            out.append(self._syn.push(y[None, :])[0])
        return np.concatenate(out) if out else np.zeros(0, np.float32)
