"""A WAV/FLAC/OGG file as a source (anything libsndfile reads, any channel count and rate).

Every way a file can fail to decode is one :class:`~voxd.errors.InputError` naming the file: missing
(66), or unreadable (65: not audio, a header with an impossible rate or channel count, or a body that
stops decoding part way, as a truncated or corrupt FLAC does). libsndfile raises its own
``LibsndfileError`` (a RuntimeError) for most of these, but a hostile header can also make it, or the
reader around it, raise ValueError, TypeError or MemoryError (found by ``tests/test_fuzz_audio.py``).
"""

from __future__ import annotations

import os
import time

import numpy as np
import soundfile as sf

from voxd.errors import EX_DATAERR, InputError
from voxd.sources.base import Block, Source

#: What libsndfile may report that we accept: rates (Hz) and channel counts of real recordings. A header
#: outside these is corrupt (and a rate of 0 would divide by zero downstream).
MIN_RATE, MAX_RATE = 1000, 768_000
MAX_CHANNELS = 1024

#: The exceptions reading a hostile or damaged file has been seen to raise (see the module docstring).
DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError, MemoryError, EOFError)


def _unreadable(path: str, exc: BaseException | str) -> InputError:
    reason = exc if isinstance(exc, str) else (str(exc).strip() or type(exc).__name__)
    return InputError(f"{path}: cannot read audio: {reason}", EX_DATAERR)


def _check_format(path: str, rate: int, channels: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _unreadable(path, f"sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz (a damaged "
                                "header?)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise _unreadable(path, f"{channels} channels is outside 1-{MAX_CHANNELS} (a damaged header?)")


def file_info(path: str) -> tuple[int, int]:
    """(rate Hz, channels) of an audio file, or :class:`InputError` naming the file."""
    if not os.path.exists(path):  # libsndfile only says "System error" for this
        raise InputError(f"{path}: no such file")
    try:
        info = sf.info(path)
        rate, channels = int(info.samplerate), int(info.channels)
    except DECODE_ERRORS as exc:
        raise _unreadable(path, exc) from None
    _check_format(path, rate, channels)
    return rate, channels


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """A whole audio file as float32 ``(channels, n)`` and its rate (Hz); a missing file is
    :class:`InputError` 66, an unreadable one 65, each naming the file."""
    rate, _ = file_info(path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except DECODE_ERRORS as exc:
        raise _unreadable(path, exc) from None
    return np.ascontiguousarray(data.T), int(rate)


class FileSource(Source):
    """Reads ``path`` in blocks of ``block_ms``.

    ``realtime``: deliver each block no earlier than its place in the stream (as a device would);
    ``loop``: start again at the end, forever (the stream stays continuous: no discontinuity flag).
    Block times ``t`` are the open time plus the stream position.
    """

    def __init__(self, path: str, realtime: bool = False, loop: bool = False, block_ms: float = 20.0) -> None:
        self.path, self.realtime, self.loop, self.block_ms = path, realtime, loop, block_ms
        self.name = path
        self._file: sf.SoundFile | None = None
        self._pos = 0
        self._done = False

    def open(self) -> None:
        self.rate, self.channels = file_info(self.path)
        try:
            self._file = sf.SoundFile(self.path)
        except DECODE_ERRORS as exc:
            raise _unreadable(self.path, exc) from None
        self._block = max(1, round(self.rate * self.block_ms / 1000))
        self._pos = 0
        self._done = False
        self.start()

    def start(self) -> None:
        self._t0 = time.time()
        self._m0 = time.monotonic()

    def read(self, timeout: float) -> Block | None:
        assert self._file is not None, "read() before open()"
        if self._done:
            return None
        if self.realtime:
            # a block is "captured" when its last sample has arrived
            due = self._m0 + (self._pos + self._block) / self.rate - time.monotonic()
            if due > timeout:
                time.sleep(max(timeout, 0.0))
                return None
            if due > 0:
                time.sleep(due)
        data = self._read()
        if data.shape[0] == 0 and self.loop and self._pos > 0:
            try:
                self._file.seek(0)
            except DECODE_ERRORS as exc:
                raise self._broken(exc) from None
            data = self._read()
        if data.shape[0] == 0:
            self._done = True
            return None
        block = Block(np.ascontiguousarray(data.T), self._t0 + self._pos / self.rate)
        self._pos += data.shape[0]
        if not self.loop and data.shape[0] < self._block:
            self._done = True
        return block

    def _read(self) -> np.ndarray:
        """The next block ``(n, channels)`` float32; a body that stops decoding is InputError (65)."""
        assert self._file is not None
        try:
            block: np.ndarray = self._file.read(self._block, dtype="float32", always_2d=True)
            return block
        except DECODE_ERRORS as exc:
            raise self._broken(exc) from None

    def _broken(self, exc: BaseException) -> InputError:
        where = f"decoding stopped after {self._pos / self.rate:.2f} s"
        return _unreadable(self.path, f"{where}: {str(exc).strip() or type(exc).__name__}")

    @property
    def exhausted(self) -> bool:
        return self._done

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
