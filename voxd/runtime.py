"""The run assembly: the one place that turns a loaded config into an opened chain and its pipeline.

Every way of running a chain — the daemon (``voxd run``, at start and at each reload), offline
processing (``voxd process``, and ``voxd eval`` through it), the benchmark (``voxd bench``) — goes
through these functions, so they cannot drift apart: a subscriber of ``voxd run`` receives exactly what
``voxd process`` writes for the same file and config.

The steps, which callers may take at different times (the daemon builds a reload's chain on its main
thread and opens it on the worker thread; ``voxd process`` opens its file between the two):

1. :func:`voxd.chain.build_chain` — check and instantiate the stages (no stage opened);
2. :func:`open_chain` — open every stage with the config's geometry (microphone positions, speed of
   sound) and an event emitter that turns a stage's ``emit(type, pts=...)`` into the ``seq`` of the
   published frame holding that sample (:func:`event_emitter`);
3. :func:`make_pipeline` — the :class:`~voxd.pipeline.Pipeline` that resamples source blocks, runs the
   chain hop by hop and re-frames its output to ``output.frame_ms`` (:func:`output_frame_samples`).

:func:`process_file` is the three steps on one audio file, as fast as the CPU allows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from voxd.chain import Chain, Emit, build_chain
from voxd.config import LoadedConfig
from voxd.pipeline import OutFrame, Pipeline
from voxd.sources.file import DECODE_ERRORS, FileSource, file_info
from voxd.wavout import WavOut

#: Where a run's events go: ``sink(type, seq=..., **fields)`` (``seq``: the published frame, or None).
EventSink = Callable[..., None]

#: Source block size of offline runs (ms): the same as the daemon's file source.
SOURCE_BLOCK_MS = 20.0


def output_frame_samples(loaded: LoadedConfig) -> int:
    """Samples per published frame at the chain rate (``output.frame_ms``; at least 1)."""
    cfg = loaded.config
    return max(1, round(cfg.processing.rate * cfg.output.frame_ms / 1000))


def event_emitter(out_frame: int, rate: int, sink: EventSink) -> Emit:
    """The ``emit`` given to stages: ``emit(type, pts=..., **fields)`` -> ``sink(type, seq=..., pts=...,
    t_s=..., **fields)`` where ``seq`` is the published frame (``out_frame`` samples) that holds sample
    ``pts`` and ``t_s`` is ``pts`` in seconds since stream start (``rate`` Hz). Output sample k is input
    sample k (the pipeline removes the chain's delay), so the same numbers hold for input and output."""

    def emit(type: str, pts: int | None = None, **fields: Any) -> None:
        if pts is None:
            sink(type, seq=None, **fields)
        else:
            sink(type, seq=max(0, pts) // out_frame, pts=pts, t_s=round(pts / rate, 4), **fields)

    return emit


def open_chain(loaded: LoadedConfig, chain: Chain, sink: EventSink | None = None) -> None:
    """Open every stage of ``chain`` (built from ``loaded``) with the config's microphone positions and
    speed of sound; the stages' events go to ``sink`` (nowhere when None). A stage that cannot open
    raises; the caller decides what that means (a fatal error at start, a refused reload)."""
    cfg = loaded.config
    emit = None if sink is None else event_emitter(output_frame_samples(loaded), chain.in_format.rate, sink)
    chain.open(cfg.processing.rate, cfg.mic_positions(), emit=emit, speed_of_sound=cfg.speed_of_sound)


def make_pipeline(loaded: LoadedConfig, chain: Chain, in_rate: int, resume: Pipeline | None = None
                  ) -> Pipeline:
    """The pipeline that runs ``chain`` (opened) on source blocks at ``in_rate`` (Hz) and emits frames of
    ``output.frame_ms``; ``resume``: the pipeline it replaces, whose stream it continues (a reload that
    changed the source, rate or framing: ``seq`` goes on)."""
    return Pipeline(chain, in_rate, output_frame_samples(loaded), resume=resume)


def assemble(loaded: LoadedConfig, channels: int, in_rate: int, sink: EventSink | None = None) -> Pipeline:
    """All three steps for a source of ``channels`` channels at ``in_rate`` (Hz): a running pipeline
    whose chain is opened (events to ``sink``). Raises :class:`~voxd.errors.ConfigError` as
    :func:`~voxd.chain.build_chain` does."""
    chain = build_chain(loaded, channels)
    open_chain(loaded, chain, sink)
    return make_pipeline(loaded, chain, in_rate)


@dataclass
class ProcessResult:
    """One processed input: output samples float32 ``(channels, n)`` (empty when they were streamed to
    a :class:`~voxd.wavout.WavOut`), the chain rate (Hz), the events, ``samples``: the output length
    per channel, and ``timings``: each chain node's (p50, p99) time per frame in microseconds (over
    its last :data:`~voxd.chain.TIMING_WINDOW` frames)."""

    input: str
    output: str | None
    audio: np.ndarray
    rate: int
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)


def process_file(loaded: LoadedConfig, path: str, progress: bool = False,
                 on_frame: Callable[[OutFrame], None] | None = None,
                 out: WavOut | None = None) -> ProcessResult:
    """Run the configured chain over one file, exactly as the daemon would run it (same block size,
    resampler, chain and framing); returns the output audio and the events stages emitted.

    ``progress``: a bar on stderr; ``on_frame``: called with every output frame (taps included);
    ``out``: stream the output there instead of returning it (``ProcessResult.audio`` is then empty):
    memory stays flat however long the input is. Raises :class:`~voxd.errors.InputError` (65) when
    the input stops decoding part way.
    """
    from tqdm import tqdm  # only offline runs draw a bar

    events: list[dict[str, Any]] = []

    def collect(type: str, seq: int | None = None, **fields: Any) -> None:
        events.append({"type": type, "seq": seq, **fields})

    chain = build_chain(loaded, file_info(path)[1])
    open_chain(loaded, chain, collect)
    src = FileSource(path, realtime=False, loop=False, block_ms=SOURCE_BLOCK_MS)
    src.open()
    pipe = make_pipeline(loaded, chain, src.rate)
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
                         samples=written, timings=chain.timings())
