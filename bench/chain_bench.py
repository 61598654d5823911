#!/usr/bin/env python3
"""Chain cost: per-stage time per frame (p50/p99, microseconds) and the whole chain's real-time factor.

    python bench/chain_bench.py --config config/default.yaml [--input FILE] [--seconds 30] [--set K=V]

Runs the config's chain through the same pipeline as the daemon, on one thread (BLAS/OpenMP threads
pinned to 1, as on a small board), over ``--input`` (default: the config's capture file, else
synthetic noise with ``--channels`` channels) repeated to ``--seconds``. RTF = processing time /
audio time (lower is better; 0.01 means 1 % of one core). Prints a table, or JSON with ``--json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from voxd.chain import build_chain  # noqa: E402
from voxd.config import load_config  # noqa: E402
from voxd.errors import ConfigError, VoxdError  # noqa: E402
from voxd.pipeline import Pipeline  # noqa: E402
from voxd.process import positions_of  # noqa: E402
from voxd.sources.base import Block  # noqa: E402

BLOCK_MS = 20.0


def load_input(path: str | None, channels: int, rate: int, seconds: float) -> tuple[np.ndarray, int]:
    """Audio ``(channels, n)`` float32 of ``seconds`` (looped), and its rate."""
    if path:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        x = np.ascontiguousarray(data.T)
    else:
        rng = np.random.default_rng(0)
        x = (0.05 * rng.standard_normal((channels, rate * 5))).astype(np.float32)
    n = int(seconds * rate)
    reps = -(-n // x.shape[1])
    return np.ascontiguousarray(np.tile(x, reps)[:, :n]), rate


def bench(config: str, overrides: list[str], path: str | None, channels: int, seconds: float) -> dict:
    loaded = load_config(config, overrides)
    cfg = loaded.config
    cap = cfg.capture
    if path is None and cap.type == "file" and cap.path and os.path.exists(cap.path):
        path = cap.path
    x, rate = load_input(path, channels, cfg.processing.rate, seconds)
    chain = build_chain(loaded, x.shape[0])
    chain.open(cfg.processing.rate, positions_of(loaded))
    # every frame's time, not just the recent window the daemon keeps for its stats
    n_frames = int(seconds * cfg.processing.rate / chain.hop) + 64
    for node in chain.nodes:
        node.times_ns = np.zeros(n_frames, np.int64)
    pipe = Pipeline(chain, rate, round(cfg.processing.rate * cfg.output.frame_ms / 1000))
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
                       "p99_us": float(np.percentile(t, 99)), "mean_us": float(t.mean())})
    chain.close()
    return {"config": config, "input": path or f"noise ({channels} ch)", "audio_s": audio_s,
            "frames": chain.nodes[0].count if chain.nodes else 0,
            "hop_ms": chain.hop / cfg.processing.rate * 1e3,
            "stages": stages, "rtf_wall": wall / audio_s, "rtf_cpu": cpu / audio_s,
            "delay_ms": chain.delay_samples / cfg.processing.rate * 1e3,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version()}


def table(r: dict) -> str:
    lines = [f"config {r['config']}, input {r['input']}, {r['audio_s']:.1f} s, {r['frames']} frames of "
             f"{r['hop_ms']:g} ms, one thread ({r['machine']}, Python {r['python']})", "",
             "| stage | kind | p50 us/frame | p99 us/frame | mean us/frame |", "|---|---|---:|---:|---:|"]
    for s in r["stages"]:
        lines.append(f"| {s['name']} | {s['kind']} | {s['p50_us']:.1f} | {s['p99_us']:.1f} "
                     f"| {s['mean_us']:.1f} |")
    lines += ["", f"whole chain (with resampling, framing, timing): RTF {r['rtf_cpu']:.4f} CPU "
              f"({r['rtf_wall']:.4f} wall), algorithmic delay {r['delay_ms']:g} ms "
              f"+ one {r['hop_ms']:g} ms hop"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", "-c", default="config/default.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    ap.add_argument("--input", help="audio file (default: the config's capture file, else noise)")
    ap.add_argument("--channels", type=int, default=4, help="channels of the synthetic input")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        r = bench(args.config, args.overrides, args.input, args.channels, args.seconds)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return exc.exit_status
    except VoxdError as exc:
        print(f"chain_bench: {exc}", file=sys.stderr)
        return exc.exit_status
    print(json.dumps(r, indent=2) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
