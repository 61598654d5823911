"""A WAV/FLAC/OGG file as a source (anything libsndfile reads, any channel count and rate)."""

from __future__ import annotations

import os
import time

import numpy as np
import soundfile as sf

from voxd.errors import EX_DATAERR, InputError
from voxd.sources.base import Block, Source


def file_info(path: str) -> tuple[int, int]:
    """(rate Hz, channels) of an audio file, or :class:`InputError` naming the file."""
    if not os.path.exists(path):  # libsndfile only says "System error" for this
        raise InputError(f"{path}: no such file")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(f"{path}: cannot read audio: {exc}", EX_DATAERR) from None
    return int(info.samplerate), int(info.channels)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """A whole audio file as float32 ``(channels, n)`` and its rate (Hz); a missing file is
    :class:`InputError` 66, an unreadable one 65, each naming the file."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(f"{path}: cannot read audio: {exc}", EX_DATAERR) from None
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
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise InputError(f"{self.path}: cannot read audio: {exc}", EX_DATAERR) from None
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
        data = self._file.read(self._block, dtype="float32", always_2d=True)
        if data.shape[0] == 0 and self.loop and self._pos > 0:
            self._file.seek(0)
            data = self._file.read(self._block, dtype="float32", always_2d=True)
        if data.shape[0] == 0:
            self._done = True
            return None
        block = Block(np.ascontiguousarray(data.T), self._t0 + self._pos / self.rate)
        self._pos += data.shape[0]
        if not self.loop and data.shape[0] < self._block:
            self._done = True
        return block

    @property
    def exhausted(self) -> bool:
        return self._done

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
