#!/usr/bin/env python3
"""Quick array-chain evaluation in-process: STOI / SI-SDR (and optionally PESQ-WB) deltas vs the
reference microphone, per geometry, RT60 bucket and interferer kind.

    python bench/array_eval.py --chain CHAIN.yaml [--set DIR ...] [--pesq] [--json OUT] [--jobs 1]

``CHAIN.yaml`` holds a voxd config (at least ``chain:``; ``processing`` optional); every item of every
``DIR/meta.jsonl`` (default: the shared ``bench/dev/array``) runs through it with the item's
``mic_positions`` as ``array.positions`` (:func:`voxd.runtime.process_file`, exactly the daemon's
framing). The output is aligned to the item's ``clean`` reference as the shared scorer does (one lag
per system: the median of the per-item cross-correlation estimates) and scored with the shared
scorer's metric definitions (``../shared/bench/tools/metrics.py``). The reference microphone (channel
0 of ``noisy``) is scored alongside, so every figure is a paired delta.

This is the development loop for the array stages (one chain, many variants, figures in a minute);
the acceptance figures come from the shared ``score_array.py``, which runs ``voxd process``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(SHARED / "tools"))
import metrics as M  # type: ignore[import-not-found]  # noqa: E402

RATE = 16000
RT60 = [(0.0, 0.3, "rt60<0.3"), (0.3, 0.5, "0.3<=rt60<0.5"), (0.5, 9.9, "rt60>=0.5")]


def items_of(sets: list[Path]) -> list[dict[str, Any]]:
    """Every item of the sets, with absolute ``noisy`` / ``clean`` paths."""
    out = []
    for d in sets:
        for line in (d / "meta.jsonl").read_text().splitlines():
            if line.strip():
                it = json.loads(line)
                it["noisy"], it["clean"] = str(d / it["noisy"]), str(d / it["clean"])
                out.append(it)
    return out


def run_item(cfg: dict[str, Any], item: dict[str, Any]) -> tuple[np.ndarray, float]:
    """The chain's mono output for one item (float64) and the CPU seconds it took."""
    from voxd.config import load_config_text
    from voxd.runtime import process_file

    c = dict(cfg)
    c["capture"] = {"type": "file", "path": item["noisy"]}
    c["array"] = {"positions": item["mic_positions"]}
    loaded = load_config_text(yaml.safe_dump(c), "array_eval.yaml")
    t0 = time.process_time()
    res = process_file(loaded, item["noisy"])
    cpu = time.process_time() - t0
    y = np.asarray(res.audio, np.float64)
    return (y[0] if y.ndim == 2 else y), cpu  # (channels, n) -> the first channel


def score(ref: np.ndarray, y: np.ndarray, pesq: bool) -> dict[str, float]:
    r = {"stoi": float(M.stoi(ref, y)), "si_sdr": float(M.si_sdr(ref, y))}
    if pesq:
        p = M.pesq_wb(ref, y)
        r["pesq_wb"] = float(p[0] if isinstance(p, tuple) else p)
    return r


def _job(args: tuple[dict[str, Any], dict[str, Any]]) -> tuple[np.ndarray, float]:
    return run_item(*args)


def evaluate(cfg: dict[str, Any], items: list[dict[str, Any]], pesq: bool = False,
             jobs: int = 1) -> list[dict[str, Any]]:
    """Per-item rows: the item's groups, ``ref`` and ``sys`` metric dicts, and the CPU RTF."""
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            outs = list(ex.map(_job, [(cfg, it) for it in items]))
    else:
        outs = [run_item(cfg, it) for it in items]
    refs = [sf.read(it["clean"], dtype="float64")[0] for it in items]
    max_lag = RATE // 4
    lags = [M.estimate_lag(ref, y, max_lag)[0] for ref, (y, _) in zip(refs, outs, strict=True)]
    lag = int(np.median(lags))
    rows = []
    for it, ref, (y, cpu) in zip(items, refs, outs, strict=True):
        x0 = sf.read(it["noisy"], dtype="float64", always_2d=True)[0][:, 0]
        rows.append({
            "id": it["id"], "geometry": it["geometry"], "kind": it.get("interferer_kind", "?"),
            "rt60": next(lbl for lo, hi, lbl in RT60 if lo <= it["rt60_s"] < hi),
            "ref": score(ref, x0[: len(ref)], pesq), "sys": score(ref, M.shift(y, lag, len(ref)), pesq),
            "rtf": cpu / (len(x0) / RATE), "lag": lag})
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Mean deltas overall and per group, one line each."""
    metrics = list(rows[0]["sys"])
    lines = []

    def line(name: str, sel: list[dict[str, Any]]) -> str:
        parts = []
        for m in metrics:
            d = np.mean([r["sys"][m] - r["ref"][m] for r in sel])
            parts.append(f"d{m} {d:+.3f}")
        return f"  {name:<22} n={len(sel):<3} " + "  ".join(parts)

    lines.append(line("all", rows))
    for key in ("geometry", "rt60", "kind"):
        for g in sorted({r[key] for r in rows}):
            lines.append(line(g, [r for r in rows if r[key] == g]))
    lines.append(f"  CPU RTF mean {np.mean([r['rtf'] for r in rows]):.3f}; lag {rows[0]['lag']} samples")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", required=True, help="YAML config with the chain to evaluate")
    ap.add_argument("--set", action="append", type=Path, help="set folder(s) with meta.jsonl")
    ap.add_argument("--pesq", action="store_true", help="also PESQ-WB (slower)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the per-item rows here")
    a = ap.parse_args()
    cfg = yaml.safe_load(Path(a.chain).read_text())
    items = items_of(a.set or [SHARED / "dev" / "array"])
    rows = evaluate(cfg, items, a.pesq, a.jobs)
    print(f"{a.chain}: {len(rows)} items")
    print(summary(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
