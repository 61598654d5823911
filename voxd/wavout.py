"""Audio files out: 16-bit PCM WAV written frame by frame with the wire's float-to-int16 conversion, so
that a file equals what a subscriber receives (``voxd process``, ``voxd eval``, the benchmarks)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf

from voxd.errors import EX_CANTCREAT, VoxdError
from voxd.wire import float_to_s16


class WavOut:
    """A 16-bit PCM WAV written as the chain produces it, with the wire's float-to-int16 conversion.

    The file is created by the constructor (the parent directory too), so that an output that cannot be
    written fails before any work: :class:`VoxdError` 73 naming the path (a directory, a path under
    /proc, no permission). :meth:`start` sets the format once the chain's is known; :meth:`write`
    appends float32 ``(channels, n)``; :meth:`close` finishes the header; :meth:`discard` removes the
    file (an input that failed part way leaves no half output behind).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sf: sf.SoundFile | None = None
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Python's open, not libsndfile's: its errors say why (libsndfile says "System error")
            self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by close()/discard()
        except OSError as exc:
            raise VoxdError(f"cannot write {path}: {exc.strerror or exc}", EX_CANTCREAT) from None

    def start(self, rate: int, channels: int) -> None:
        """Begin the WAV: ``rate`` Hz, ``channels`` channels, 16-bit PCM."""
        self._sf = sf.SoundFile(self._file, "w", samplerate=rate, channels=channels, subtype="PCM_16",
                                format="WAV")

    def write(self, audio: np.ndarray) -> None:
        """Append float32 ``(channels, n)`` samples (converted exactly as the wire converts them)."""
        assert self._sf is not None, "write() before start()"
        try:
            self._sf.write(float_to_s16(audio).T)
        except (OSError, RuntimeError) as exc:  # a full disk: libsndfile's error is a RuntimeError
            raise VoxdError(f"cannot write {self.path}: {exc}", EX_CANTCREAT) from None

    def close(self) -> None:
        """Finish the header and close the file."""
        try:
            if self._sf is not None:
                self._sf.close()
            self._file.close()
        except (OSError, RuntimeError) as exc:
            raise VoxdError(f"cannot write {self.path}: {exc}", EX_CANTCREAT) from None

    def discard(self) -> None:
        """Close and remove the file (never raises: it runs while another error is on its way)."""
        for close in ((self._sf.close,) if self._sf is not None else ()) + (self._file.close,):
            with contextlib.suppress(Exception):  # the file is being thrown away
                close()
        Path(self.path).unlink(missing_ok=True)


def write_wav(path: str, audio: np.ndarray, rate: int) -> None:
    """Write float32 ``(channels, n)`` as 16-bit PCM WAV with the wire's float-to-int16 conversion."""
    out = WavOut(path)
    try:
        out.start(rate, audio.shape[0])
        out.write(audio)
    except BaseException:
        out.discard()
        raise
    out.close()
