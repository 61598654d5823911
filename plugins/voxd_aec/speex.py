"""SpeexDSP's echo canceller (MDF) and residual-echo suppressor, through ctypes on ``libspeexdsp.so.1``.

The library is SpeexDSP as Debian and Raspberry Pi OS ship it (``apt install libspeexdsp1``); this
module holds only the calls voxd needs, not a Python package (the one on PyPI, ``speexdsp``, builds from
source with swig and leaves the suppressor out). The adaptive filter and the suppressor are the
library's; nothing here adapts anything.

Per microphone channel: one echo state (``speex_echo_state_init_mc(hop, tail, 1, refs)``: one mic, all
reference channels as loudspeakers) and, with suppression, one preprocessor bound to it
(``SPEEX_PREPROCESS_SET_ECHO_STATE``), which removes the echo the linear filter left (its estimate of
the residual echo) and, as the library requires for that, stationary noise. I/O is int16 at the frame
rate, ``hop`` samples per call.

Measured on this machine (docs/echo.md): the canceller's output is aligned with its input; the
preprocessor delays by one hop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import numpy as np

LIBRARY = "libspeexdsp.so.1"
DEBIAN_PACKAGE = "libspeexdsp1"
# request codes of speex_echo.h / speex_preprocess.h
_ECHO_SET_SAMPLING_RATE = 24
_PRE_SET_DENOISE = 0
_PRE_SET_AGC = 2
_PRE_SET_DEREVERB = 8
_PRE_SET_ECHO_SUPPRESS = 20
_PRE_SET_ECHO_SUPPRESS_ACTIVE = 22
_PRE_SET_ECHO_STATE = 24

_lib: Any = None


class SpeexMissing(RuntimeError):
    """``libspeexdsp.so.1`` cannot be loaded."""


def load() -> Any:
    """The library with its prototypes declared (loaded once); :class:`SpeexMissing` if absent."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("speexdsp") or LIBRARY)
    except OSError:
        raise SpeexMissing(f"needs SpeexDSP ({LIBRARY}), which is not installed: "
                           f"apt install {DEBIAN_PACKAGE}") from None
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.speex_echo_state_init_mc.restype = vp
    lib.speex_echo_state_init_mc.argtypes = [i, i, i, i]
    lib.speex_echo_state_destroy.argtypes = [vp]
    lib.speex_echo_state_reset.argtypes = [vp]
    lib.speex_echo_cancellation.argtypes = [vp, vp, vp, vp]
    lib.speex_echo_ctl.argtypes = [vp, i, vp]
    lib.speex_preprocess_state_init.restype = vp
    lib.speex_preprocess_state_init.argtypes = [i, i]
    lib.speex_preprocess_state_destroy.argtypes = [vp]
    lib.speex_preprocess_ctl.argtypes = [vp, i, vp]
    lib.speex_preprocess_run.argtypes = [vp, vp]
    lib.speex_preprocess_run.restype = i
    _lib = lib
    return lib


def available() -> bool:
    """Whether the library can be loaded."""
    try:
        load()
    except SpeexMissing:
        return False
    return True


def _ctl(fn: Any, st: int, request: int, value: int) -> None:
    v = ctypes.c_int(value)
    if fn(st, request, ctypes.byref(v)) != 0:
        raise RuntimeError(f"speexdsp rejected request {request} = {value}")


class SpeexCanceller:
    """Echo cancellation of ``channels`` microphones against ``refs`` reference channels.

    ``rate`` Hz, ``hop`` samples per call, ``tail_ms`` the adaptive filter's length (ms): the longest
    echo path after the reference has been aligned; ``suppress``: add the residual-echo suppressor
    (``suppress_db``: its attenuation of residual echo, ``suppress_active_db``: the same while the near
    end talks; dB, negative).
    """

    def __init__(self, channels: int, refs: int, rate: int, hop: int, tail_ms: float, suppress: bool,
                 suppress_db: int = -40, suppress_active_db: int = -15) -> None:
        lib = load()
        self._lib, self.hop, self.suppress = lib, hop, suppress
        taps = max(hop, round(tail_ms * rate / 1000 / hop) * hop)
        self.taps = taps  #: the adaptive filter's length (samples)
        self._echo: list[int] = []
        self._pre: list[int] = []
        for _ in range(channels):
            st = lib.speex_echo_state_init_mc(hop, taps, 1, refs)
            _ctl(lib.speex_echo_ctl, st, _ECHO_SET_SAMPLING_RATE, rate)
            self._echo.append(st)
            if suppress:
                pp = lib.speex_preprocess_state_init(hop, rate)
                _ctl(lib.speex_preprocess_ctl, pp, _PRE_SET_DENOISE, 1)  # the suppressor needs it on
                _ctl(lib.speex_preprocess_ctl, pp, _PRE_SET_AGC, 0)  # VAD: off by default (and
                # setting it prints a warning from the library)
                _ctl(lib.speex_preprocess_ctl, pp, _PRE_SET_DEREVERB, 0)
                lib.speex_preprocess_ctl(pp, _PRE_SET_ECHO_STATE, ctypes.c_void_p(st))
                _ctl(lib.speex_preprocess_ctl, pp, _PRE_SET_ECHO_SUPPRESS, suppress_db)
                _ctl(lib.speex_preprocess_ctl, pp, _PRE_SET_ECHO_SUPPRESS_ACTIVE, suppress_active_db)
                self._pre.append(pp)
        self._far = np.zeros((hop, refs), np.int16)  # interleaved reference frame
        self._near = np.zeros(hop, np.int16)
        self._out = np.zeros(hop, np.int16)
        #: the linear filter's output of the last hop, int16 ``(channels, hop)``, aligned with its input
        #: (the suppressor's comes one hop later): ``mic - linear`` is the filter's echo estimate
        self.linear = np.zeros((channels, hop), np.int16)

    @property
    def delay_samples(self) -> int:
        """Output lag behind the input (samples): one hop through the suppressor, none without."""
        return self.hop if self.suppress else 0

    def reset(self) -> None:
        """Forget the learnt echo paths (the reference's alignment changed)."""
        for st in self._echo:
            self._lib.speex_echo_state_reset(st)

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """One hop: ``mic`` int16 ``(channels, hop)``, ``ref`` int16 ``(refs, hop)`` -> int16
        ``(channels, hop)``."""
        lib, out = self._lib, np.empty(mic.shape, np.int16)
        self._far[:] = ref.T
        for c, st in enumerate(self._echo):
            self._near[:] = mic[c]
            lib.speex_echo_cancellation(st, self._near.ctypes.data, self._far.ctypes.data,
                                        self._out.ctypes.data)
            self.linear[c] = self._out
            if self.suppress:
                lib.speex_preprocess_run(self._pre[c], self._out.ctypes.data)
            out[c] = self._out
        return out

    def close(self) -> None:
        """Free the library's states (idempotent)."""
        for pp in self._pre:
            self._lib.speex_preprocess_state_destroy(pp)
        for st in self._echo:
            self._lib.speex_echo_state_destroy(st)
        self._pre, self._echo = [], []

    def __del__(self) -> None:
        if getattr(self, "_lib", None) is not None:
            self.close()
