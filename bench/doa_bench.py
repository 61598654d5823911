#!/usr/bin/env python3
"""Direction of arrival and channel-order check on the shared array benchmark, and the doa stage's cost.

    python bench/doa_bench.py [--data DIR] [--set KEY=VALUE ...] [--only doa|check|cost] [--json OUT]

Every item of ``DIR/meta.jsonl`` (default: the shared ``bench/dev/array``) goes through the voxd chain
``vad`` (channel 0) -> ``doa`` with the item's ``mic_positions``, built from a YAML config with
:func:`voxd.config.load_config_text` and driven hop by hop through :class:`voxd.chain.Chain` (so the side
values of every frame are visible). Per item: the truth ``target_azimuth_deg``, the estimate at the end
of the file, the median estimate over the speech frames after the first second of speech, and their
absolute errors (wrapped to 0..180 deg); then the median absolute error over the items (acceptance:
<= 10 deg).

Channel-order check: every item again with its channels fed swapped (0 <-> 1), rotated by one (chain
channel i carries the item's channel i + 1) and reversed. Whether ``channel_map_suspect`` fires, after
how many seconds of speech, whether its permutation restores the order (up to a symmetry of the array,
which no recording can reveal), and the fits of the configured order and of the best other order at the
last check.

Cost: ``time.perf_counter_ns`` around ``Doa.process`` (p50 / p99 / mean, microseconds) for 4 and 6 mics,
(a) worst case: synthetic input, every frame speech (accumulation and a map search every frame, the
channel check running), (b) the dev items through ``vad -> doa`` (the chain's own per-node timing).
BLAS threads are pinned to 1 as on a small board.

``--set KEY=VALUE`` overrides a doa parameter (a YAML value), e.g. ``--set grid_deg=3``.
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
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402
from voxd_array.doa import EVENT, symmetries  # noqa: E402

from voxd.chain import Chain, StageNode, build_chain  # noqa: E402
from voxd.config import load_config_text  # noqa: E402
from voxd.frame import Frame  # noqa: E402
from voxd.geometry import preset_positions  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "bench" / "dev" / "array"
RATE, HOP = 16000, 160
SETTLE_S = 1.0  # the median estimate leaves out the first second of speech (the average is forming)


def chain_for(positions: list[list[float]], doa: dict[str, Any], vad: bool = True) -> Chain:
    """Build (not open) the chain ``vad -> doa`` (or ``doa`` alone) for ``positions`` ``(M, 3)`` (m)."""
    entries: list[dict[str, Any]] = [{"stage": "vad", "channel": 0}] if vad else []
    entries.append({"stage": "doa", **doa})
    cfg = {"capture": {"type": "file", "path": "unused.wav"}, "array": {"positions": positions},
           "chain": entries}
    return build_chain(load_config_text(yaml.safe_dump(cfg), "doa_bench.yaml"), len(positions))


def doa_node(chain: Chain) -> StageNode:
    return next(n for n in chain.stages() if n.kind == "doa")


def wrap_err(a: float, b: float) -> float:
    """Absolute angle difference (deg), 0..180."""
    return float(abs((a - b + 180.0) % 360.0 - 180.0))


def run_item(x: np.ndarray, positions: list[list[float]], doa: dict[str, Any]) -> dict[str, Any]:
    """Push ``x`` ``(M, n)`` through ``vad -> doa`` hop by hop: per-frame ``doa_deg`` and ``speech``, the
    events (with the seconds of speech seen when each was emitted), every check, the stage's times."""
    chain = chain_for(positions, doa)
    events: list[dict[str, Any]] = []
    chain.open(RATE, np.asarray(positions, dtype=np.float64),
               emit=lambda type, pts=None, **f: events.append({"type": type, "pts": pts, **f}))
    node = doa_node(chain)
    n_frames = x.shape[1] // HOP
    node.times_ns = np.zeros(n_frames, np.int64)  # every frame, not the daemon's recent window
    doas, speech, checks = [], [], []
    n_speech, last = 0, None
    for i in range(n_frames):
        block = np.ascontiguousarray(x[:, i * HOP : (i + 1) * HOP], dtype=np.float32)
        out = chain.process(Frame(block, i, i * HOP, 0.0, RATE))
        n_speech += bool(out.side.get("speech", False))
        doas.append(float(out.side["doa_deg"]))
        speech.append(bool(out.side.get("speech", False)))
        check = node.stage.last_check
        if check is not None and check is not last:
            checks.append(check)
            last = check
        for ev in events:
            ev.setdefault("speech_s", round(n_speech * HOP / RATE, 2))
    chain.close()
    return {"doa": np.asarray(doas), "speech": np.asarray(speech), "events": events, "checks": checks,
            "times_us": node.times_ns / 1000.0}


def load(item: dict[str, Any], data: Path) -> np.ndarray:
    """The item's noisy recording, float32 ``(M, n)``."""
    x, rate = sf.read(data / item["noisy"], dtype="float32", always_2d=True)
    if rate != RATE:
        raise SystemExit(f"{item['id']}: {rate} Hz, expected {RATE}")
    return np.ascontiguousarray(x.T)


def doa_table(items: list[dict[str, Any]], data: Path, doa: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        r = run_item(load(item, data), item["mic_positions"], doa)
        d, sp = r["doa"], r["speech"]
        truth = float(item["target_azimuth_deg"])
        settled = d[np.flatnonzero(sp)[int(SETTLE_S * RATE / HOP) :]]
        med = float(np.median(settled)) if settled.size else float("nan")
        errs = [wrap_err(v, truth) for v in settled]
        rows.append({"id": item["id"], "geometry": item["geometry"], "channels": len(item["mic_positions"]),
                     "truth": truth, "elevation": float(item["target_elevation_deg"]),
                     "interferer": item["interferer_kind"], "sir_db": float(item["sir_db"]),
                     "rt60_s": float(item["rt60_s"]), "end": float(d[-1]), "err_end": wrap_err(d[-1], truth),
                     "median_est": med, "err_median": float(np.median(errs)) if errs else float("nan"),
                     "speech_s": round(float(sp.sum()) * HOP / RATE, 2),
                     "false_suspect": sum(e["type"] == EVENT for e in r["events"]),
                     "times_us": r["times_us"]})
    return rows


def fed_orders(m: int) -> dict[str, list[int]]:
    """Channel orders to feed: chain channel i takes the item's channel ``order[i]``."""
    swap = list(range(m))
    swap[0], swap[1] = 1, 0
    return {"true": list(range(m)), "swap01": swap, "rot1": [(i + 1) % m for i in range(m)],
            "reverse": list(range(m))[::-1]}


def restores(fed: list[int], fix: list[int], positions: list[list[float]]) -> bool:
    """Whether ``fix`` applied to channels fed in order ``fed`` gives the true order or one of its
    symmetries (a rotation or mirror image of the array, which no recording can tell apart)."""
    order = np.asarray([[fed[j] for j in fix]])
    return bool(symmetries(np.asarray(positions, dtype=np.float64), order)[0])


def check_table(items: list[dict[str, Any]], data: Path, doa: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        x = load(item, data)
        for name, order in fed_orders(x.shape[0]).items():
            r = run_item(x[order], item["mic_positions"], doa)
            ev = [e for e in r["events"] if e["type"] == EVENT]
            last = r["checks"][-1] if r["checks"] else {}
            ratios = [c["score"] / c["score_configured"] for c in r["checks"] if c["score_configured"] > 0]
            rows.append({"id": item["id"], "geometry": item["geometry"], "fed": name, "order": order,
                         "fired": bool(ev), "after_s": ev[0]["speech_s"] if ev else None,
                         "permutation": ev[0]["permutation"] if ev else None,
                         "restores": bool(ev) and restores(order, ev[0]["permutation"],
                                                           item["mic_positions"]),
                         "fit_configured": last.get("score_configured"), "fit_other": last.get("score"),
                         "other_fix": last.get("fix"), "checks": len(r["checks"]),
                         "max_ratio": max(ratios) if ratios else None})
    return rows


def worst_case_cost(channels: int, doa: dict[str, Any], seconds: float = 20.0) -> dict[str, Any]:
    """p50/p99/mean (us) of ``Doa.process`` on ``channels`` mics, every frame speech (vad: false)."""
    geometry = {4: "respeaker-4mic-hat", 6: "respeaker-6mic"}[channels]
    pos = preset_positions(geometry)
    chain = chain_for(pos.tolist(), {**doa, "vad": False}, vad=False)
    chain.open(RATE, pos)
    rng = np.random.default_rng(0)
    n = int(seconds * RATE)
    x = (0.05 * rng.standard_normal((channels, n))).astype(np.float32)
    x[1:] = np.roll(x[1:], 1, axis=1) + 0.01 * rng.standard_normal((channels - 1, n)).astype(np.float32)
    analysis, node = chain.nodes[0], doa_node(chain)
    times = []
    for i in range(n // HOP):
        frame = analysis.process(Frame(x[:, i * HOP : (i + 1) * HOP], i, i * HOP, 0.0, RATE))
        t0 = time.perf_counter_ns()
        node.stage.process(frame)
        times.append(time.perf_counter_ns() - t0)
    return {"channels": channels, "input": f"{geometry}, synthetic, every frame speech",
            **stats(np.asarray(times[100:]) / 1000.0)}


def stats(t: np.ndarray) -> dict[str, float]:
    return {"p50_us": float(np.percentile(t, 50)), "p99_us": float(np.percentile(t, 99)),
            "mean_us": float(t.mean()), "max_us": float(t.max()), "frames": int(t.size)}


def print_doa(rows: list[dict[str, Any]]) -> dict[str, float]:
    print("| item | geometry | interferer | SIR dB | el deg | truth | end | err end | median est "
          "| err median |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['id']} | {r['geometry']} | {r['interferer']} | {r['sir_db']:g} | {r['elevation']:.0f} "
              f"| {r['truth']:.1f} | {r['end']:.1f} | {r['err_end']:.1f} | {r['median_est']:.1f} "
              f"| {r['err_median']:.1f} |")
    e_end = np.array([r["err_end"] for r in rows])
    e_med = np.array([r["err_median"] for r in rows])
    summary = {"median_err_end": float(np.median(e_end)), "median_err_median": float(np.median(e_med)),
               "within_10_end": int(np.sum(e_end <= 10)), "within_10_median": int(np.sum(e_med <= 10)),
               "false_suspects": int(sum(r["false_suspect"] for r in rows))}
    print(f"\nmedian absolute error over {len(rows)} items: {summary['median_err_end']:.1f} deg at the "
          f"end of the file, {summary['median_err_median']:.1f} deg for the median estimate after "
          f"{SETTLE_S:g} s of speech (acceptance <= 10); within 10 deg: {summary['within_10_end']} / "
          f"{summary['within_10_median']} of {len(rows)}; channel_map_suspect on the true order: "
          f"{summary['false_suspects']}\n")
    return summary


def print_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    print("| item | geometry | fed | fired | after s of speech | permutation | restores | fit configured "
          "| fit best other | best other fix | max ratio over checks |")
    print("|---|---|---|---|---:|---|---|---:|---:|---|---:|")
    for r in rows:
        fc, fo, mr = r["fit_configured"], r["fit_other"], r["max_ratio"]
        print(f"| {r['id']} | {r['geometry']} | {r['fed']} {r['order']} | {'yes' if r['fired'] else 'no'} "
              f"| {r['after_s'] if r['fired'] else '-'} | {r['permutation'] or '-'} "
              f"| {r['restores'] if r['fired'] else '-'} | {'-' if fc is None else f'{fc:.3f}'} "
              f"| {'-' if fo is None else f'{fo:.3f}'} | {r['other_fix'] or '-'} "
              f"| {'-' if mr is None else f'{mr:.3f}'} |")
    summary: dict[str, Any] = {}
    for fed in ("true", "swap01", "rot1", "reverse"):
        sel = [r for r in rows if r["fed"] == fed]
        fired = [r for r in sel if r["fired"]]
        ratios = [r["max_ratio"] for r in sel if r["max_ratio"] is not None]
        summary[fed] = {"items": len(sel), "fired": len(fired), "restored": sum(r["restores"] for r in fired),
                        "median_after_s": float(np.median([r["after_s"] for r in fired])) if fired else None,
                        "max_ratio_min": min(ratios) if ratios else None,
                        "max_ratio_max": max(ratios) if ratios else None}
        s = summary[fed]
        print(f"\nfed {fed}: fired on {s['fired']} of {s['items']} items"
              + (f" (fix restores the order on {s['restored']}; median {s['median_after_s']:g} s of speech)"
                 if fired else "")
              + (f"; best other / configured fit, max over checks: {s['max_ratio_min']:.3f}.."
                 f"{s['max_ratio_max']:.3f}" if ratios else ""))
    print()
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="benchmark directory with meta.jsonl")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="doa parameter override (YAML value)")
    ap.add_argument("--only", choices=("doa", "check", "cost"), help="run one part only")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = ap.parse_args()
    doa = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)}
    meta = args.data / "meta.jsonl"
    if not meta.exists() and args.only != "cost":
        print(f"doa_bench: {meta} not found", file=sys.stderr)
        return 66
    lines = meta.read_text().splitlines() if meta.exists() else []
    items = [json.loads(line) for line in lines if line.strip()]
    result: dict[str, Any] = {"params": doa, "python": platform.python_version(),
                              "machine": f"{platform.machine()} {platform.processor()}".strip()}
    rows: list[dict[str, Any]] = []
    if args.only in (None, "doa"):
        rows = doa_table(items, args.data, doa)
        result["doa_summary"] = print_doa(rows)
        result["doa"] = [{k: v for k, v in r.items() if k != "times_us"} for r in rows]
    if args.only in (None, "check"):
        checks = check_table(items, args.data, doa)
        result["check_summary"] = print_check(checks)
        result["check"] = checks
    if args.only in (None, "cost"):
        costs = [worst_case_cost(4, doa), worst_case_cost(6, doa)]
        for m in (4, 6):
            t = [r["times_us"] for r in rows if r["channels"] == m]
            if t:
                costs.append({"channels": m, "input": "dev items through vad -> doa",
                              **stats(np.concatenate(t))})
        result["cost"] = costs
        print(f"doa cost per 10 ms frame, one thread ({result['machine']}, Python {result['python']}):")
        for c in costs:
            print(f"  {c['channels']} mics, {c['input']}: p50 {c['p50_us']:.1f} us, p99 "
                  f"{c['p99_us']:.1f} us, mean {c['mean_us']:.1f} us, max {c['max_us']:.1f} us "
                  f"({c['frames']} frames)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
