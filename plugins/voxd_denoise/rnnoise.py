"""``engine: rnnoise``: RNNoise (Xiph, BSD-3-Clause) from the C library the ``pyrnnoise`` wheel ships,
one denoiser state per channel, at 48 kHz.

The library is loaded with ctypes from the installed package's folder without importing the package:
``pyrnnoise``'s Python side imports an audio-file stack (audiolab, PyAV) that costs about 0.4 s and
is not needed to call ``rnnoise_process_frame``. RNNoise takes 480-sample frames (10 ms) scaled to
the int16 range and returns the frame of 960 samples earlier (20 ms: its window plus its pitch
look-back alignment, measured).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

RATE = 48000
FRAME = 480
DELAY = 960
PACKAGE, DIST, EXTRA = "pyrnnoise", "pyrnnoise", "rnnoise"
SCALE = 32768.0
_FLOATS = ctypes.POINTER(ctypes.c_float)


@functools.cache
def library() -> Any:
    """The ``librnnoise`` shipped inside the installed ``pyrnnoise`` package (ctypes handle)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(d) / "librnnoise.so" for d in folders if (Path(d) / "librnnoise.so").is_file()), None)
    if path is None:
        where = folders or "not installed"
        raise OSError(f"librnnoise.so not found in the installed {DIST} package ({where})")
    lib = ctypes.CDLL(str(path))
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.restype = None
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, _FLOATS, _FLOATS]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    lib.rnnoise_get_frame_size.restype = ctypes.c_int
    if lib.rnnoise_get_frame_size() != FRAME:
        raise OSError(f"{path}: frame size {lib.rnnoise_get_frame_size()}, expected {FRAME}")
    return lib


class Rnnoise:
    """One channel of RNNoise (see the module docstring); ``speech_prob`` is its latest voice
    probability (0..1)."""

    rate, frame, delay = RATE, FRAME, DELAY

    def __init__(self) -> None:
        self._lib = library()
        self._state: int | None = None
        self._buf = np.zeros(FRAME, np.float32)  # the frame being filled, int16 scale
        self._out = np.zeros(FRAME, np.float32)
        self._fill = 0
        self.speech_prob = 0.0
        self.reset()

    def reset(self) -> None:
        if self._state is not None:
            self._lib.rnnoise_destroy(self._state)
        self._state = self._lib.rnnoise_create(None)
        self._fill = 0
        self.speech_prob = 0.0

    def push(self, x: np.ndarray) -> np.ndarray:
        out: list[np.ndarray] = []
        pos, n = 0, x.size
        while pos < n:
            take = min(FRAME - self._fill, n - pos)
            self._buf[self._fill : self._fill + take] = x[pos : pos + take] * SCALE
            self._fill += take
            pos += take
            if self._fill == FRAME:
                self.speech_prob = float(self._lib.rnnoise_process_frame(
                    self._state, self._out.ctypes.data_as(_FLOATS), self._buf.ctypes.data_as(_FLOATS)))
                out.append(self._out / np.float32(SCALE))
                self._fill = 0
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def __del__(self) -> None:
        if getattr(self, "_state", None) is not None:
            self._lib.rnnoise_destroy(self._state)
            self._state = None
