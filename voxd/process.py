"""Offline processing (``voxd process``): the daemon's chain on files, as fast as the CPU allows.

Each input goes through a fresh :class:`~voxd.pipeline.Pipeline` exactly as the daemon would run it
(same block size, same resampler, same chain, same float-to-int16 conversion), so the written WAV
equals what a subscriber receives from ``voxd run`` on that file. The chain's delay is removed and the
output has the input's duration at the chain rate.

The output is streamed (:class:`WavOut`): opened before any processing, so that a path that cannot be
written fails at once (exit 73), and written frame by frame, so that memory does not grow with the
length of the input. An input that stops decoding part way fails with exit 65 and its partial output is
removed.

With ``--vad-out FILE.jsonl`` it also writes, per input, the speech segments that the chain's voice
activity detector found (:func:`speech_segments`, from its ``speech_start``/``speech_end`` events).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from voxd.chain import build_chain
from voxd.config import LoadedConfig
from voxd.errors import EX_CANTCREAT, EX_USAGE, VoxdError
from voxd.geometry import SPEED_OF_SOUND, resolve_positions
from voxd.pipeline import OutFrame, Pipeline, event_emitter
from voxd.sources.file import DECODE_ERRORS, FileSource, file_info
from voxd.wire import float_to_s16

SOURCE_BLOCK_MS = 20.0  # the same block size as the daemon's file source


@dataclass
class ProcessResult:
    """One processed input: output samples float32 ``(channels, n)`` (empty when they were streamed to
    a :class:`WavOut`), the chain rate (Hz), the events, and ``samples``: the output length per channel."""

    input: str
    output: str | None
    audio: np.ndarray
    rate: int
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0


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


def positions_of(loaded: LoadedConfig) -> np.ndarray | None:
    """Microphone positions float64 ``(channels, 3)`` in metres from the config's ``array`` section
    (explicit positions, else the preset's), or None without one."""
    return resolve_positions(loaded.config.array)


def speed_of_sound_of(loaded: LoadedConfig) -> float:
    """``array.speed_of_sound`` (m/s), or the default 343 m/s without an ``array`` section."""
    array = loaded.config.array
    return SPEED_OF_SOUND if array is None else array.speed_of_sound


def process_file(loaded: LoadedConfig, path: str, progress: bool = False,
                 on_frame: Callable[[OutFrame], None] | None = None,
                 out: WavOut | None = None) -> ProcessResult:
    """Run the configured chain over one file; returns the output audio and the events stages emitted.

    ``out``: stream the output there instead of returning it (``ProcessResult.audio`` is then empty):
    memory stays flat however long the input is. Raises :class:`~voxd.errors.InputError` (65) when
    the input stops decoding part way.
    """
    channels = file_info(path)[1]
    chain = build_chain(loaded, channels)
    events: list[dict[str, Any]] = []
    out_frame = max(1, round(chain.in_format.rate * loaded.config.output.frame_ms / 1000))
    emit = event_emitter(out_frame, chain.in_format.rate,
                         lambda type, seq=None, **f: events.append({"type": type, "seq": seq, **f}))
    chain.open(loaded.config.processing.rate, positions_of(loaded), emit=emit,
               speed_of_sound=speed_of_sound_of(loaded))
    src = FileSource(path, realtime=False, loop=False, block_ms=SOURCE_BLOCK_MS)
    src.open()
    pipe = Pipeline(chain, src.rate, out_frame)
    chunks: list[np.ndarray] = []
    written = 0
    if out is not None:
        out.start(chain.in_format.rate, chain.out_format.channels)
    try:
        total = sf.info(path).frames if progress else None  # the progress bar's length, nothing else
    except DECODE_ERRORS:
        total = None
    bar = tqdm(total=total, unit="smp", unit_scale=True, desc=Path(path).name, disable=not progress,
               leave=False, file=sys.stderr)

    def take(frames: list[OutFrame]) -> None:
        nonlocal written
        for f in frames:
            if on_frame is not None:
                on_frame(f)
            if f.topic == "audio":
                written += f.samples.shape[1]
                if out is not None:
                    out.write(f.samples)
                else:
                    chunks.append(f.samples)

    try:
        while (block := src.read(0.0)) is not None:
            take(pipe.push(block))
            bar.update(block.samples.shape[1])
        take(pipe.flush())
    finally:
        bar.close()
        src.close()
        chain.close()
    ch = chain.out_format.channels
    audio = np.concatenate(chunks, axis=1) if chunks else np.zeros((ch, 0), np.float32)
    return ProcessResult(path, None if out is None else out.path, audio, chain.in_format.rate, events,
                         samples=written)


def output_paths(inputs: Sequence[str], out_dir: str | None) -> list[tuple[str, str]]:
    """Pair inputs with output paths: ``OUT_DIR/<stem>.wav``, or the ``IN OUT`` form without a dir."""
    if out_dir is not None:
        return [(i, str(Path(out_dir) / f"{Path(i).stem}.wav")) for i in inputs]
    if len(inputs) == 2:
        return [(inputs[0], inputs[1])]
    raise VoxdError("process: give IN OUT, or --out-dir DIR with one or more inputs", EX_USAGE)


def check_out_dir(out_dir: str) -> None:
    """``--out-dir``: create it if missing and check that files can be created in it, before any input
    is processed (:class:`VoxdError` 73 naming it otherwise)."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VoxdError(f"cannot write to {out_dir}: {exc.strerror or exc}", EX_CANTCREAT) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise VoxdError(f"cannot write to {out_dir}: permission denied", EX_CANTCREAT)


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


def speech_stage(loaded: LoadedConfig) -> str:
    """Name of the chain's first stage that provides ``speech`` (a voice activity detector).

    Raises :class:`VoxdError` (EX_USAGE, 64) when there is none: ``--vad-out`` has nothing to report.
    """
    for spec in loaded.config.chain:
        if "speech" in spec.cls.provided_keys(spec.params):
            return spec.name
    raise VoxdError(f"--vad-out: the chain in {loaded.path} has no voice activity detector (no stage "
                    "provides 'speech'); add one, e.g. '- {stage: vad}'", EX_USAGE)


def speech_segments(events: Sequence[dict[str, Any]], rate: int, duration_s: float,
                    stage: str | None = None) -> list[list[float]]:
    """Speech segments ``[[start_s, end_s], ...]`` (seconds since the start of the input) from events.

    ``events``: as collected by :func:`process_file` (``type``, ``pts`` in samples at ``rate``, and the
    emitting ``stage``); only ``speech_start``/``speech_end`` of ``stage`` (all when None) count. A
    segment still open at the end is closed at ``duration_s``; every boundary is clamped to
    ``[0, duration_s]`` (a chain with delay feeds a few padding samples after the input) and empty
    segments are dropped. Times are rounded to 0.1 ms.
    """
    segments: list[list[float]] = []
    start: float | None = None
    for ev in events:
        if stage is not None and ev.get("stage", stage) != stage:
            continue
        if ev["type"] == "speech_start" and start is None:
            start = min(max(ev["pts"] / rate, 0.0), duration_s)
        elif ev["type"] == "speech_end" and start is not None:
            end = min(max(ev["pts"] / rate, 0.0), duration_s)
            if end > start:
                segments.append([round(start, 4), round(end, 4)])
            start = None
    if start is not None and duration_s > start:
        segments.append([round(start, 4), round(duration_s, 4)])
    return segments


def open_vad_out(path: str) -> IO[str]:
    """Open the ``--vad-out`` file for writing (before any processing, so that a bad path fails fast)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8")  # closed by the caller
    except OSError as exc:
        raise VoxdError(f"cannot write {path}: {exc.strerror or exc}", EX_CANTCREAT) from None


def write_vad_line(out: IO[str], input_path: str, segments: list[list[float]]) -> None:
    """One JSON line per input: ``{"input": <path as given>, "segments": [[start_s, end_s], ...]}``."""
    out.write(json.dumps({"input": input_path, "segments": segments}) + "\n")
    out.flush()  # a long batch leaves complete lines behind if it is interrupted
