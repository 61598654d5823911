#!/usr/bin/env python3
"""What the ``aec`` stage costs (issue 18, acceptance 5), measured with ``voxd bench``.

    python bench/echo_cost.py [--seconds S] [--json OUT]

Input: 6 s of speech played through a small loudspeaker into a room (the echo scene of
``tests/test_aec.py``), the same echo on 1, 4 or 6 microphone channels, the reference as one more
channel (``capture.reference_channels``); "no playback": the same microphones with a silent reference.
Each case runs :func:`voxd.commands.bench.bench` (the ``voxd bench`` command: one thread, the daemon's
pipeline; looped to ``--seconds``) and reports the ``aec`` stage's time per 10 ms frame (p50/p99, us)
and the whole chain's CPU RTF:

- ``aec`` alone, per engine, for 1, 4 and 6 microphones, with and without playback;
- the 6-mic HAT's shipped chain (``config/respeaker-6mic.yaml``'s chain on a file) without playback, with
  its ``aec`` and with it removed: the no-playback overhead of echo cancellation on a whole chain.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
from echo_bench import board_stages  # noqa: E402

from voxd.commands.bench import bench  # noqa: E402

RATE = 16000
#: the cases' names -> the aec stage's parameters
ENGINES: dict[str, dict[str, Any]] = {"speex": {"engine": "speex"},
                                      "speex neural": {"engine": "speex", "suppress": "neural"},
                                      "aec3": {"engine": "aec3"}}


def scene() -> tuple[np.ndarray, np.ndarray]:
    """The echo at one microphone and the reference, float32 ``(n,)`` each (tests/test_aec.py)."""
    from test_aec import echo_scene

    mic, far = echo_scene(6.0)
    return mic[0], far[0]


def write_case(tmp: Path, mics: int, playback: bool, chain: list[dict[str, Any]],
               array: dict[str, Any] | None = None) -> Path:
    """A capture file (``mics`` echo channels + the reference) and a config running ``chain`` on it."""
    echo, far = scene()
    ref = far if playback else np.zeros_like(far)
    wav = tmp / f"m{mics}-{'play' if playback else 'quiet'}.wav"
    if not wav.exists():
        gains = np.linspace(1.0, 0.7, mics)
        sf.write(wav, np.concatenate([echo[:, None] * gains[None, :], ref[:, None]], axis=1), RATE,
                 subtype="FLOAT")
    doc: dict[str, Any] = {"capture": {"type": "file", "path": str(wav), "reference_channels": [mics]},
                           "output": {"frame_ms": 10}, "chain": chain}
    if array:
        doc["array"] = array
    cfg = tmp / f"cfg-{len(list(tmp.glob('cfg-*')))}.yaml"
    cfg.write_text(json.dumps(doc), encoding="utf-8")
    return cfg


def stage_of(report: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((s for s in report["stages"] if s["kind"] == kind), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="audio per case (s), the input looped")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help="comma-separated, of: " + ", ".join(ENGINES))
    ap.add_argument("--no-chain", action="store_true", help="leave out the 6-mic chain's no-playback case")
    a = ap.parse_args(argv)
    engines = a.engines.split(",")
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r} (expected one of {', '.join(ENGINES)})")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="echo_cost.") as t:
        tmp = Path(t)
        for engine in engines:
            for mics in (1, 4, 6):
                for playback in (True, False):
                    cfg = write_case(tmp, mics, playback, [{"stage": "aec", **ENGINES[engine]}])
                    r = bench(str(cfg), [], seconds=a.seconds)
                    st = stage_of(r, "aec")
                    assert st is not None
                    rows.append({"case": f"aec {engine}", "mics": mics, "playback": playback,
                                 "p50_us": st["p50_us"], "p99_us": st["p99_us"], "rtf_cpu": r["rtf_cpu"]})
                    print(f"aec {engine} {mics} mics playback={playback}: "
                          f"{st['p50_us']:.0f}/{st['p99_us']:.0f} us", file=sys.stderr)
        array, chain = board_stages("respeaker-6mic")
        if a.no_chain:
            chain = []
        without = [s for s in chain if s.get("stage") != "aec"]
        with_aec = chain if len(without) < len(chain) else [{"stage": "aec"}, *chain]
        for name, stages in (() if a.no_chain else (("respeaker-6mic chain with aec", with_aec),
                                                     ("respeaker-6mic chain without aec", without))):
            r = bench(str(write_case(tmp, 6, False, stages, array)), [], seconds=a.seconds)
            st = stage_of(r, "aec")
            rows.append({"case": name, "mics": 6, "playback": False,
                         "p50_us": st["p50_us"] if st else None, "p99_us": st["p99_us"] if st else None,
                         "rtf_cpu": r["rtf_cpu"]})
    print("| case | mics | playback | aec p50 us/frame | aec p99 us/frame | chain RTF (CPU) |")
    print("|---|---:|---|---:|---:|---:|")
    for row in rows:
        p50 = "-" if row["p50_us"] is None else f"{row['p50_us']:.0f}"
        p99 = "-" if row["p99_us"] is None else f"{row['p99_us']:.0f}"
        print(f"| {row['case']} | {row['mics']} | {'yes' if row['playback'] else 'no'} | {p50} | {p99} "
              f"| {row['rtf_cpu']:.4f} |")
    quiet = {r["case"]: r["rtf_cpu"] for r in rows if r["case"].startswith("respeaker-6mic")}
    if quiet:
        a_, b_ = quiet["respeaker-6mic chain with aec"], quiet["respeaker-6mic chain without aec"]
        print(f"\nno-playback overhead of aec on the 6-mic chain: {100 * (a_ - b_) / b_:+.1f} % CPU")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
