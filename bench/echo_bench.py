#!/usr/bin/env python3
"""Echo cancellation (``aec``) on the echo set (issue 18): ERLE, near-end STOI and CPU.

    python bench/echo_bench.py [--quick] [--cache DIR] [--items N] [--json OUT]

The set is built or reused through ``bench/echoset.py`` (:func:`echoset.ensure`; ``--quick``: its 4
items, one per condition). Each item becomes the capture a board delivers: the N microphone channels of
``noisy`` plus the reference ``ref`` as channel N (float32 WAV, 16 kHz; a drifted reference, which has
another length, is cut or zero-padded to the microphones' length). Two chains run on it through
:func:`voxd.runtime.process_file` (exactly what ``voxd process`` does), both with
``capture.reference_channels: [N]``, so the reference leaves the microphone channels in both:

- ``aec``:   ``aec`` (one AEC3 per microphone, defaults) -> ``select [0]`` (the mic-0 path);
- ``plain``: ``select [0]``.

Figures (all at microphone 0; the chain's delay is removed by the pipeline, so output sample k is input
sample k):

- **ERLE** (dB): 10*log10(input power / output power) over the item's ``farend_only_segments`` after
  2 s (the near end is ~0 there; the input is echo + room noise). ``ceiling`` (dB): echo over room
  noise power in the same spans, the ERLE an echo canceller that leaves the noise alone can reach.
- **ERLE after change** (dB): the same over the first 1 s after ``echo_path_change_s`` (pathchange items).
- **STOI** (0-1, pystoi, 16 kHz): the output over the item's ``doubletalk_segments`` (concatenated)
  against ``clean``; ``no-echo``: the input without its echo (noisy - echo) against ``clean``, the
  reference point an echo canceller would ideally reach (doubletalk and drift items).
- **RTF**: CPU time of the process (``time.process_time``, s) over the audio's duration (s), per chain.

Rows: per condition (mean over its items of the per-item figures) and ``all``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echoset  # noqa: E402

from voxd.config import LoadedConfig, load_config_text  # noqa: E402
from voxd.runtime import process_file  # noqa: E402

RATE = 16000
SETTLE_S = 2.0  # ERLE on far-end-only spans after this (s): the canceller's convergence
CHANGE_WINDOW_S = 1.0  # ERLE window after the echo-path change (s)
CHAINS = ("plain", "aec")
EPS = 1e-20

def chain_config(wav: Path, mics: int, with_aec: bool) -> LoadedConfig:
    """Capture ``wav`` (``mics`` microphones + the reference at channel ``mics``), 10 ms frames;
    chain ``[aec ->] select [0]``."""
    stages = ("  - {stage: aec}\n" if with_aec else "") + "  - {stage: select, channels: [0]}\n"
    text = (f"capture: {{type: file, path: {json.dumps(str(wav))}, reference_channels: [{mics}]}}\n"
            f"output: {{frame_ms: 10}}\nchain:\n{stages}")
    return load_config_text(text, "echo_bench.yaml")


def spans_mask(spans: list[list[float]], n: int, start_s: float = 0.0,
               end_s: float = math.inf) -> np.ndarray:
    """Boolean mask of ``n`` samples: inside ``spans`` (s) and within ``[start_s, end_s)``."""
    m = np.zeros(n, bool)
    for a, b in spans:
        lo, hi = max(a, start_s), min(b, end_s)
        if hi > lo:
            m[int(lo * RATE):min(n, int(hi * RATE))] = True
    return m


def ratio_db(num: np.ndarray, den: np.ndarray, mask: np.ndarray) -> float | None:
    """10*log10(sum num^2 / sum den^2) over ``mask`` (None when the mask is empty)."""
    if not mask.any():
        return None
    return float(10 * np.log10((np.sum(num[mask].astype(np.float64) ** 2) + EPS)
                               / (np.sum(den[mask].astype(np.float64) ** 2) + EPS)))


def stoi_over(clean: np.ndarray, x: np.ndarray, mask: np.ndarray) -> float | None:
    """STOI of ``x`` against ``clean`` over the samples of ``mask`` (concatenated); None if empty."""
    from pystoi import stoi

    if mask.sum() < RATE // 2:
        return None
    return float(stoi(clean[mask], x[mask], RATE, extended=False))


def run_item(d: Path, m: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Both chains on one item; its figures (see the module docstring)."""
    iid = m["id"]
    noisy, rate = sf.read(d / "noisy" / f"{iid}.flac", dtype="float32", always_2d=True)
    echo = sf.read(d / "echo" / f"{iid}.flac", dtype="float32", always_2d=True)[0][:, 0]
    clean = sf.read(d / "clean" / f"{iid}.flac", dtype="float32")[0]
    ref = sf.read(d / "ref" / f"{iid}.flac", dtype="float32")[0]
    nearend = sf.read(d / "nearend" / f"{iid}.flac", dtype="float32", always_2d=True)[0][:, 0]
    assert rate == RATE
    n, mics = noisy.shape
    ref = np.pad(ref[:n], (0, max(0, n - ref.shape[0])))
    wav = tmp / f"{iid}.wav"
    sf.write(wav, np.concatenate([noisy, ref[:, None]], axis=1), RATE, subtype="FLOAT")
    x0 = noisy[:, 0]
    noise = x0 - echo - nearend
    fo = spans_mask(m["farend_only_segments"], n, SETTLE_S)
    dt = spans_mask(m["doubletalk_segments"], n)
    change = m.get("echo_path_change_s")
    ch = (spans_mask(m["farend_only_segments"], n, change, change + CHANGE_WINDOW_S)
          if change is not None else np.zeros(n, bool))
    rec: dict[str, Any] = {"id": iid, "condition": m["condition"], "geometry": m["geometry"], "mics": mics,
                           "duration_s": n / RATE, "ceiling_db": ratio_db(echo, noise, fo),
                           "stoi_noecho": stoi_over(clean, x0 - echo, dt)}
    for name in CHAINS:
        loaded = chain_config(wav, mics, name == "aec")
        t0 = time.process_time()
        res = process_file(loaded, str(wav))
        cpu = time.process_time() - t0
        y = res.audio[0, :n]
        y = np.pad(y, (0, n - y.shape[0]))
        rec[name] = {"erle_db": ratio_db(x0, y, fo), "erle_change_db": ratio_db(x0, y, ch),
                     "stoi": stoi_over(clean, y, dt), "rtf": cpu / (n / RATE)}
    return rec


def mean(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def summarise(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per condition and ``all``: the mean of each per-item figure (None where no item has it)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in items:
        groups.setdefault(r["condition"], []).append(r)
    groups["all"] = items
    out: dict[str, dict[str, Any]] = {}
    for g, rs in groups.items():
        row: dict[str, Any] = {"n": len(rs), "ceiling_db": mean([r["ceiling_db"] for r in rs]),
                               "stoi_noecho": mean([r["stoi_noecho"] for r in rs])}
        for c in CHAINS:
            for k in ("erle_db", "erle_change_db", "stoi", "rtf"):
                row[f"{c}_{k}"] = mean([r[c][k] for r in rs])
        out[g] = row
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    cols = [("n", "n", "{:d}"), ("ERLE plain dB", "plain_erle_db", "{:.1f}"),
            ("ERLE aec dB", "aec_erle_db", "{:.1f}"), ("ceiling dB", "ceiling_db", "{:.1f}"),
            ("ERLE 1 s after change, aec dB", "aec_erle_change_db", "{:.1f}"),
            ("STOI plain", "plain_stoi", "{:.3f}"), ("STOI aec", "aec_stoi", "{:.3f}"),
            ("STOI no-echo", "stoi_noecho", "{:.3f}"), ("RTF plain", "plain_rtf", "{:.3f}"),
            ("RTF aec", "aec_rtf", "{:.3f}")]
    lines = ["| condition | " + " | ".join(c[0] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for g, row in summary.items():
        cells = ["-" if row[k] is None else fmt.format(row[k]) for _, k, fmt in cols]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=echoset.default_cache())
    ap.add_argument("--items", type=int, default=echoset.N_ITEMS)
    ap.add_argument("--seed", type=int, default=echoset.SEED)
    ap.add_argument("--quick", action="store_true", help=f"the {echoset.QUICK_ITEMS}-item quick set")
    ap.add_argument("--json", type=Path, help="write per-item figures and the summary here")
    a = ap.parse_args(argv)
    n = echoset.QUICK_ITEMS if a.quick else a.items
    d, man = echoset.ensure(a.cache, echoset.EchoConfig(n_items=n, seed=a.seed),
                            name="quick" if a.quick else "set")
    metas = [json.loads(line) for line in (d / "meta.jsonl").read_text(encoding="utf-8").splitlines()]
    items: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="echo_bench.") as tmp:
        for m in metas:
            items.append(run_item(d, m, Path(tmp)))
            r = items[-1]
            print(f"{r['id']} {r['condition']:10s} ERLE aec {r['aec']['erle_db']} dB, plain "
                  f"{r['plain']['erle_db']} dB", file=sys.stderr)
    summary = summarise(items)
    print(f"echo set {d} ({len(items)} items, set sha256 {man['set_sha256']}); chain: "
          "[aec ->] select [0], capture.reference_channels = the reference channel")
    print(table(summary))
    if a.json:
        a.json.write_text(json.dumps({"set": str(d), "set_sha256": man["set_sha256"], "summary": summary,
                                      "items": items}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
