"""``voxd bench``: what a config's chain costs and how late it is.

Per node of the chain: time per frame (p50/p99/mean, microseconds); the whole chain's real-time factor
(RTF = processing time / audio time, lower is better: 0.01 is 1 % of one core), run through the same
:class:`~voxd.pipeline.Pipeline` as the daemon on one thread; the algorithmic latency both as the chain
declares it (the sum of its nodes' ``delay_samples``) and as measured (the lag of the cross-correlation
peak between a white-noise burst and the chain's output, before the pipeline removes the delay); and
the process's peak resident memory. ``bench/chain_bench.py`` is a thin wrapper around this module.

The command pins BLAS/OpenMP to one thread, as on a small board (:func:`voxd.commands.single_thread_blas`,
called by the CLI before numpy is first imported); a caller of :func:`bench` in its own process decides
for itself.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from typing import Any

import numpy as np

from voxd.chain import Chain, build_chain
from voxd.config import LoadedConfig, load_config
from voxd.errors import EX_DATAERR, InputError
from voxd.frame import Frame
from voxd.runtime import make_pipeline, open_chain
from voxd.sources.base import Block
from voxd.sources.file import read_audio

BLOCK_MS = 20.0  # source block size, as the daemon's file source
PROBE_S = 2.0  # length of the noise burst used to measure the delay (s)
MAX_LAG_S = 0.2  # longest delay the measurement looks for (s); far above any shipped chain


def load_input(path: str | None, channels: int, rate: int, seconds: float) -> tuple[np.ndarray, int]:
    """Audio float32 ``(channels, n)`` of ``seconds`` (looped) and its rate (Hz).

    ``path``: an audio file (its own rate and channels), else 5 s of seeded white noise (0.05 rms) with
    ``channels`` channels at ``rate``. A missing or unreadable file raises :class:`InputError` (66/65).
    """
    if path:
        x, rate = read_audio(path)
        if x.shape[1] == 0:
            raise InputError(f"{path}: no samples", EX_DATAERR)
    else:
        rng = np.random.default_rng(0)
        x = (0.05 * rng.standard_normal((channels, rate * 5))).astype(np.float32)
    n = int(seconds * rate)
    reps = -(-n // x.shape[1])
    return np.ascontiguousarray(np.tile(x, reps)[:, :n]), int(rate)


def _open(loaded: LoadedConfig, channels: int) -> Chain:
    chain = build_chain(loaded, channels)
    open_chain(loaded, chain)
    return chain


def measure_delay(loaded: LoadedConfig, channels: int, seed: int = 1) -> int:
    """Measured algorithmic delay of the chain in samples at the chain rate.

    A fresh chain is driven hop by hop with :meth:`Chain.process` (no pipeline, so nothing removes the
    delay) on ``PROBE_S`` of white noise, the same on every microphone channel (a broadside source:
    beamformers and down-mixes keep it; no playback reference, so an ``aec`` stage passes it through).
    The delay is the lag in ``[0, MAX_LAG_S]`` of the largest cross-correlation magnitude between the
    input and output channel 0: white noise makes the cross-correlation the chain's impulse response,
    whose largest tap is at the delay for every shipped stage.
    """
    chain = _open(loaded, channels)
    rate, hop = chain.in_format.rate, chain.hop
    n_hops = int(PROBE_S * rate) // hop
    rng = np.random.default_rng(seed)
    # 0.1 rms: well inside full scale, loud enough that gates and noise floors do not zero it
    mono = (0.1 * rng.standard_normal(n_hops * hop)).astype(np.float32)
    # the chain's own channels: capture.reference_channels leave the capture before the chain
    x = np.ascontiguousarray(np.broadcast_to(mono, (chain.in_format.channels, mono.size)))
    out = []
    try:
        for i in range(n_hops):
            frame = Frame(samples=np.ascontiguousarray(x[:, i * hop : (i + 1) * hop]), seq=i, pts=i * hop,
                          t=i * hop / rate, rate=rate)
            y = chain.process(frame).samples
            assert y is not None
            out.append(y[0])
    finally:
        chain.close()
    y64 = np.concatenate(out).astype(np.float64)
    n = mono.size
    size = 1 << (2 * n - 1).bit_length()
    # r[k] = sum_t y[t + k] x[t]: the output lags the input by k
    r = np.fft.irfft(np.fft.rfft(y64, size) * np.conj(np.fft.rfft(mono.astype(np.float64), size)), size)
    max_lag = min(n - 1, int(MAX_LAG_S * rate))
    return int(np.argmax(np.abs(r[: max_lag + 1])))


def bench(config: str, overrides: list[str], path: str | None = None, channels: int | None = None,
          seconds: float = 30.0) -> dict[str, Any]:
    """Run the benchmark; returns the report (see the module doc; times in us, delays in samples and ms).

    ``channels``: of the synthetic input when there is no ``path`` (default: the config's capture
    channel count). Without ``path`` the config's capture file is used if it has one that exists.
    """
    loaded = load_config(config, overrides)
    cfg = loaded.config
    cap = cfg.capture
    if path is None and cap.type == "file" and cap.path and os.path.exists(cap.path):
        path = cap.path
    if channels is None:  # a live config says how many channels the chain gets; a file config: 4 (an array)
        channels = int(getattr(cap, "out_channels", 4))
    x, rate = load_input(path, channels, cfg.processing.rate, seconds)
    chain = _open(loaded, x.shape[0])
    # every frame's time, not just the recent window the daemon keeps for its stats
    n_frames = int(seconds * cfg.processing.rate / chain.hop) + 64
    for node in chain.nodes:
        node.times_ns = np.zeros(n_frames, np.int64)
    pipe = make_pipeline(loaded, chain, rate)
    block = max(1, round(rate * BLOCK_MS / 1000))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for pos in range(0, x.shape[1], block):
        pipe.push(Block(x[:, pos : pos + block], pos / rate))
    pipe.flush()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    audio_s = x.shape[1] / rate
    stages = []
    for node in chain.nodes:
        t = node.times_ns[: min(node.count, node.times_ns.size)] / 1000.0
        stages.append({"name": node.name, "kind": node.kind, "p50_us": float(np.percentile(t, 50)),
                       "p99_us": float(np.percentile(t, 99)), "mean_us": float(t.mean()),
                       "delay_samples": node.delay_samples})
    chain.close()
    crate = cfg.processing.rate
    measured = measure_delay(loaded, x.shape[0])
    # ru_maxrss is kB on Linux: the peak of the whole process (interpreter, plugins, models, buffers)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"config": config, "input": path or f"noise ({channels} ch)", "audio_s": audio_s,
            "frames": chain.nodes[0].count if chain.nodes else 0, "rate": crate,
            "hop_ms": chain.hop / crate * 1e3,
            "stages": stages, "rtf_wall": wall / audio_s, "rtf_cpu": cpu / audio_s,
            "delay_samples": chain.delay_samples, "delay_ms": chain.delay_samples / crate * 1e3,
            "measured_delay_samples": measured, "measured_delay_ms": measured / crate * 1e3,
            "peak_rss_mb": round(rss_mb, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version()}


def table(r: dict[str, Any]) -> str:
    """The report as a Markdown table plus a summary line."""
    lines = [f"config {r['config']}, input {r['input']}, {r['audio_s']:.1f} s, {r['frames']} frames of "
             f"{r['hop_ms']:g} ms, one thread ({r['machine']}, Python {r['python']})", "",
             "| stage | kind | p50 us/frame | p99 us/frame | mean us/frame | delay (samples) |",
             "|---|---|---:|---:|---:|---:|"]
    for s in r["stages"]:
        lines.append(f"| {s['name']} | {s['kind']} | {s['p50_us']:.1f} | {s['p99_us']:.1f} "
                     f"| {s['mean_us']:.1f} | {s['delay_samples']} |")
    lines += ["", f"whole chain (with resampling, framing, timing): RTF {r['rtf_cpu']:.4f} CPU "
              f"({r['rtf_wall']:.4f} wall)",
              f"algorithmic latency: declared {r['delay_samples']} samples ({r['delay_ms']:g} ms), "
              f"measured {r['measured_delay_samples']} samples ({r['measured_delay_ms']:g} ms); "
              f"plus one {r['hop_ms']:g} ms hop of buffering",
              f"peak RSS {r['peak_rss_mb']:.1f} MB"]
    return "\n".join(lines)
