"""``voxd process``: the daemon's chain on files, as fast as the CPU allows.

Each input goes through :func:`voxd.runtime.process_file`: a fresh pipeline exactly as the daemon would
run it (same block size, same resampler, same chain, same float-to-int16 conversion), so the written WAV
equals what a subscriber receives from ``voxd run`` on that file. The chain's delay is removed and the
output has the input's duration at the chain rate.

The output is streamed (:class:`~voxd.wavout.WavOut`): opened before any processing, so that a path
that cannot be written fails at once (exit 73), and written frame by frame, so that memory does not grow
with the length of the input. An input that stops decoding part way fails with exit 65 and its partial
output is removed.

With ``--vad-out FILE.jsonl`` it also writes, per input, the speech segments that the chain's voice
activity detector found (:func:`speech_segments`, from its ``speech_start``/``speech_end`` events).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from voxd.config import LoadedConfig
from voxd.errors import EX_CANTCREAT, EX_USAGE, VoxdError
from voxd.runtime import process_file
from voxd.side import SPEECH
from voxd.wavout import WavOut


def process(loaded: LoadedConfig, inputs: Sequence[str], out_dir: str | None = None,
            vad_out: str | None = None, progress: bool = False) -> int:
    """``voxd process``: run ``loaded``'s chain over ``inputs`` (``IN OUT``, or every input into
    ``out_dir`` as ``<stem>.wav``); with ``vad_out``, one JSON line of speech segments per input there.
    ``progress``: a bar per input on stderr. Returns the exit status (0); failures raise
    :class:`~voxd.errors.VoxdError` with theirs, each before any work where it can be known then."""
    pairs = output_paths(inputs, out_dir)
    vad_stage = speech_stage(loaded) if vad_out else None  # 64 before any work if there is no VAD
    if out_dir is not None:
        check_out_dir(out_dir)  # 73 before any work
    vad_file = open_vad_out(vad_out) if vad_out else None
    try:
        for inp, outp in pairs:
            out = WavOut(outp)  # 73 before this input is processed
            try:
                result = process_file(loaded, inp, progress=progress, out=out)
            except BaseException:
                out.discard()  # no half-written output next to an error
                raise
            out.close()
            if vad_file is not None:
                duration_s = result.samples / result.rate
                write_vad_line(vad_file, inp, speech_segments(result.events, result.rate, duration_s,
                                                              vad_stage))
    finally:
        if vad_file is not None:
            vad_file.close()
    return 0


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


def speech_stage(loaded: LoadedConfig) -> str:
    """Name of the chain's first stage that provides ``speech`` (a voice activity detector).

    Raises :class:`VoxdError` (EX_USAGE, 64) when there is none: ``--vad-out`` has nothing to report.
    """
    for spec in loaded.config.chain:
        if SPEECH in spec.cls.provided_keys(spec.params):
            return spec.name
    raise VoxdError(f"--vad-out: the chain in {loaded.path} has no voice activity detector (no stage "
                    "provides 'speech'); add one, e.g. '- {stage: vad}'", EX_USAGE)


def speech_segments(events: Sequence[dict[str, Any]], rate: int, duration_s: float,
                    stage: str | None = None) -> list[list[float]]:
    """Speech segments ``[[start_s, end_s], ...]`` (seconds since the start of the input) from events.

    ``events``: as collected by :func:`~voxd.runtime.process_file` (``type``, ``pts`` in samples at
    ``rate``, and the emitting ``stage``); only ``speech_start``/``speech_end`` of ``stage`` (all when
    None) count. A segment still open at the end is closed at ``duration_s``; every boundary is clamped to
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
