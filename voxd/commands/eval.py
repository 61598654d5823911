"""``voxd eval``: speech quality of a chain, stage by stage, against clean references.

For each (noisy, clean) pair the configured chain runs exactly as ``voxd process`` runs it (same
pipeline, same output), with a debug tap on every stage (``output.taps``; a spectral stage's tap goes
through its own STFT synthesis). Each signal — the input, every stage's tap, the output — is aligned
with the clean reference by removing its declared delay (the chain's delay up to that stage, plus the
tap's synthesis for a spectral stage; the output's delay is already removed by the pipeline) and scored
with :mod:`voxd.metrics`: SNR (dB), SI-SDR (dB), PESQ-WB (MOS-LQO), STOI (0..1). Multichannel signals
(an array input, taps before a down-mix) are scored on channel 0, the reference mic.

Rates: the noisy input is resampled to the chain rate by the pipeline, as in ``voxd process``; the clean
reference (channel 0) is resampled to the chain rate too (soxr HQ), so files at another rate work.
PESQ-WB is computed at 16 kHz (both signals resampled when the chain runs at another rate). A clean
and a noisy file whose durations differ by more than 1 % are an error (65); a smaller difference is
trimmed to the shorter one.

The quality gate compares the mean over items of output minus input: SNR gain (dB), PESQ gain and
STOI gain must exceed their thresholds, and the output's clipped samples (the largest share over items,
% of samples at or beyond int16 full scale) must stay below its threshold. ``--strict`` makes a failed
gate exit 1; otherwise the exit status is 0 whatever the gate says.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voxd.chain import Chain, StageNode, build_chain
from voxd.config import LoadedConfig, load_config
from voxd.errors import EX_DATAERR, EX_UNAVAILABLE, EX_USAGE, InputError, VoxdError
from voxd.frame import Domain
from voxd.metrics import resample_hq, score
from voxd.pipeline import OutFrame
from voxd.runtime import process_file
from voxd.side import DOA_DEG
from voxd.sources.file import read_audio

DEFAULT_GATE = {"snr": 3.0, "pesq": 0.5, "stoi": 0.1, "clip": 1.0}
LENGTH_TOLERANCE = 0.01  # clean and noisy durations may differ by this fraction (trimmed), not more
CLIP_LEVEL = 32767 / 32768  # |sample| at or above this saturates the int16 the wire and WAVs carry
METRICS = ("snr", "si_sdr", "pesq", "stoi")


@dataclass
class Item:
    """One evaluation pair: ``id`` (the meta.jsonl id, else the noisy file's stem) and two paths."""

    id: str
    noisy: str
    clean: str


@dataclass
class Trace:
    """What an item's run produced besides the audio: per-tap samples (channel 0) and a per-frame
    timeline of the output (``pts`` samples, level dBFS, speech flag, ``doa_deg`` or NaN)."""

    taps: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pts: list[int] = field(default_factory=list)
    level_db: list[float] = field(default_factory=list)
    speech: list[bool] = field(default_factory=list)
    doa_deg: list[float] = field(default_factory=list)


def parse_gate(text: str) -> dict[str, float]:
    """``snr=3,pesq=0.5,stoi=0.1,clip=1`` (any subset; the rest keep :data:`DEFAULT_GATE`) -> thresholds.

    A bad entry raises :class:`VoxdError` (64)."""
    gate = dict(DEFAULT_GATE)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        try:
            if not sep or key not in gate:
                raise ValueError
            gate[key] = float(value)
        except ValueError:
            raise VoxdError(f"eval: bad --gate entry '{part}': expected KEY=NUMBER with KEY one of "
                            f"{', '.join(DEFAULT_GATE)}", EX_USAGE) from None
    return gate


def items_from_args(noisy: Sequence[str], clean: Sequence[str], set_dir: str | None = None,
                    limit: int | None = None) -> list[Item]:
    """The pairs to evaluate: ``noisy``/``clean`` paths in order (``--noisy``/``--clean``), then the
    first ``limit`` items of ``set_dir``'s ``meta.jsonl`` (``--set-dir``, ``--items``)."""
    if len(clean) != len(noisy):
        raise VoxdError(f"eval: {len(noisy)} --noisy but {len(clean)} --clean; give them in pairs", EX_USAGE)
    items = [Item(Path(n).stem, n, c) for n, c in zip(noisy, clean, strict=True)]
    if set_dir:
        items += read_set(set_dir, limit)
    if not items:
        raise VoxdError("eval: nothing to evaluate: give --noisy N --clean C, or --set-dir DIR", EX_USAGE)
    return items


def read_set(set_dir: str, limit: int | None = None) -> list[Item]:
    """Items of a data set folder: ``DIR/meta.jsonl``, one JSON object per line with ``noisy`` and
    ``clean`` paths relative to ``DIR`` (and an optional ``id``); the first ``limit`` when given."""
    meta = Path(set_dir) / "meta.jsonl"
    if not meta.is_file():
        raise InputError(f"{meta}: no such file (--set-dir needs a folder with meta.jsonl)")
    items: list[Item] = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if limit is not None and len(items) >= limit:
            break
        try:
            rec = json.loads(line)
            noisy, clean = rec["noisy"], rec["clean"]
        except (ValueError, KeyError, TypeError):
            raise VoxdError(f"{meta}:{lineno}: expected a JSON object with 'noisy' and 'clean'",
                            EX_DATAERR) from None
        items.append(Item(str(rec.get("id", Path(noisy).stem)), str(Path(set_dir) / noisy),
                          str(Path(set_dir) / clean)))
    return items


def tap_delays(chain: Chain) -> dict[str, int]:
    """Delay (samples at the chain rate) of each stage's tap signal relative to the input: the delay
    of every node up to and including it, plus the tap's own synthesis for a spectral stage."""
    delays: dict[str, int] = {}
    total = 0
    for node in chain.nodes:
        total += node.delay_samples
        if isinstance(node, StageNode):
            fmt = node.out_format
            delays[node.name] = total + (fmt.n_fft - fmt.frame if fmt.domain is Domain.SPECTRAL else 0)
    return delays


def with_taps(config: str, overrides: list[str]) -> LoadedConfig:
    """The config with a debug tap on every stage (appended to the user's ``--set`` overrides)."""
    loaded = load_config(config, overrides)
    names = [spec.name for spec in loaded.config.chain]
    return load_config(config, [*overrides, f"output.taps={json.dumps(names)}"])


def evaluate_item(loaded: LoadedConfig, item: Item) -> tuple[dict[str, Any], dict[str, np.ndarray], Trace]:
    """Run and score one item; returns (report, signals by row name at the chain rate, trace)."""
    noisy, n_rate = read_audio(item.noisy)
    clean_all, c_rate = read_audio(item.clean)
    n_s, c_s = noisy.shape[1] / n_rate, clean_all.shape[1] / c_rate
    if abs(n_s - c_s) > LENGTH_TOLERANCE * max(n_s, c_s):
        raise VoxdError(f"eval: lengths differ by more than 1 %: {item.noisy} has {noisy.shape[1]} samples "
                        f"at {n_rate} Hz ({n_s:.3f} s), {item.clean} has {clean_all.shape[1]} at {c_rate} Hz "
                        f"({c_s:.3f} s)", EX_DATAERR)
    chain = build_chain(loaded, noisy.shape[0])  # not opened: only for the delays of its taps
    rate = chain.in_format.rate
    delays = tap_delays(chain)
    clean = resample_hq(clean_all[0], c_rate, rate)
    trace = Trace(taps={name: [] for name in delays})

    def on_frame(f: OutFrame) -> None:
        if f.topic == "audio":
            y = f.samples[0].astype(np.float64)
            trace.pts.append(f.pts)
            trace.level_db.append(10 * math.log10(float(np.mean(y * y)) + 1e-12))
            trace.speech.append(f.speech)
            trace.doa_deg.append(float(f.side.get(DOA_DEG, math.nan)))
        elif f.topic.startswith("audio."):
            trace.taps[f.topic[6:]].append(f.samples[0])

    result = process_file(loaded, item.noisy, on_frame=on_frame)
    out = result.audio
    n = out.shape[1]  # the input's length at the chain rate: the pipeline keeps it
    signals = {"input": resample_hq(noisy[0], n_rate, rate)[:n]}
    for name, d in delays.items():
        tap = np.concatenate(trace.taps[name]) if trace.taps[name] else np.zeros(0, np.float32)
        tap = tap[d : d + n]  # undo the tap's delay: sample k lines up with input sample k
        signals[name] = np.pad(tap, (0, n - tap.size))
    signals["output"] = out[0]
    removed = {"input": 0, **delays, "output": chain.delay_samples}  # the pipeline removed the chain delay
    rows = [{"name": name, "delay_samples": removed[name],
             **score(clean, sig, rate)} for name, sig in signals.items()]
    clip = 100.0 * float(np.mean(np.abs(out) >= CLIP_LEVEL)) if out.size else 0.0
    report = {"id": item.id, "noisy": item.noisy, "clean": item.clean, "rate": rate, "duration_s": n / rate,
              "chain_delay_samples": chain.delay_samples, "clip_pct": clip, "rows": rows}
    return report, signals, trace


def mean_rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row name, the mean of each metric over the items (NaNs, e.g. PESQ with no speech, skipped)."""
    names = [r["name"] for r in reports[0]["rows"]]
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"name": name, "delay_samples": reports[0]["rows"][i]["delay_samples"]}
        for m in METRICS:
            vals = [r["rows"][i][m] for r in reports if math.isfinite(r["rows"][i][m])]
            row[m] = float(np.mean(vals)) if vals else math.nan
        rows.append(row)
    return rows


def gate_result(rows: list[dict[str, Any]], clip_pct: float, gate: dict[str, float]) -> dict[str, Any]:
    """The quality gate on the mean rows: gains of output over input against the thresholds."""
    first, last = rows[0], rows[-1]
    criteria = []
    for key, metric, label in (("snr", "snr", "SNR gain (dB)"), ("pesq", "pesq", "PESQ-WB gain"),
                               ("stoi", "stoi", "STOI gain")):
        gain = last[metric] - first[metric]
        criteria.append({"criterion": label, "key": key, "input": first[metric], "output": last[metric],
                         "value": gain, "threshold": gate[key], "op": ">",
                         "pass": bool(math.isfinite(gain) and gain > gate[key])})
    criteria.append({"criterion": "clipping (% of samples)", "key": "clip", "input": None,
                     "output": clip_pct, "value": clip_pct, "threshold": gate["clip"], "op": "<",
                     "pass": clip_pct < gate["clip"]})
    return {"thresholds": gate, "criteria": criteria, "pass": all(c["pass"] for c in criteria)}


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table lines: one row per signal (input, each stage, output)."""
    lines = ["| signal | delay removed (samples) | SNR dB | SI-SDR dB | PESQ-WB | STOI |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['delay_samples']} | {_f(r['snr'])} | {_f(r['si_sdr'])} "
                     f"| {_f(r['pesq'])} | {_f(r['stoi'], '.3f')} |")
    return lines


def gate_table(g: dict[str, Any]) -> list[str]:
    """Markdown table lines of the gate, then the verdict."""
    lines = ["| criterion | input | output | value | threshold | result |", "|---|---:|---:|---:|---:|---|"]
    for c in g["criteria"]:
        fmt = ".3f" if c["key"] == "stoi" else ".2f"
        lines.append(f"| {c['criterion']} | {_f(c['input'], fmt)} | {_f(c['output'], fmt)} "
                     f"| {_f(c['value'], '+' + fmt)} | {c['op']} {c['threshold']:g} "
                     f"| {'PASS' if c['pass'] else 'FAIL'} |")
    lines.append(f"gate: {'PASS' if g['pass'] else 'FAIL'}")
    return lines


def _jsonable(v: Any) -> Any:
    """NaN and infinities become null: the output must be strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only), or a one-line error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VoxdError("eval: --plot needs matplotlib: pip install 'voxd[plot]'", EX_UNAVAILABLE) from None
    return plt


def plot_item(plt: Any, out_dir: Path, item_id: str, signals: dict[str, np.ndarray], trace: Trace,
              rate: int) -> list[Path]:
    """Write ``DIR/<id>/NN-<signal>.png`` spectrograms (input, each stage, output; dB, 32 ms window)
    and ``DIR/<id>/timeline.png`` (output level dBFS per frame, speech flag, ``doa_deg`` when the chain
    has one). Returns the paths written."""
    d = out_dir / item_id
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    nfft = 1 << max(4, round(math.log2(rate * 0.032)))
    for k, (name, x) in enumerate(signals.items()):
        fig, ax = plt.subplots(figsize=(10, 3.5))
        # a tiny floor keeps digital silence finite in dB
        ax.specgram(x.astype(np.float64) + 1e-9, NFFT=nfft, Fs=rate, noverlap=nfft * 3 // 4, vmin=-130,
                    cmap="magma")
        ax.set(title=f"{item_id}: {name}", xlabel="time (s)", ylabel="frequency (Hz)")
        fig.tight_layout()
        paths.append(d / f"{k:02d}-{name}.png")
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    t = np.asarray(trace.pts, np.float64) / rate
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(t, trace.level_db, lw=0.8, label="output level (dBFS)")
    speech = np.asarray(trace.speech, bool)
    if speech.any():
        ax.fill_between(t, -100, 0, where=speech, step="post", alpha=0.2, color="tab:green", label="speech")
    ax.set(ylim=(-100, 0), xlabel="time (s)", ylabel="dBFS", title=f"{item_id}: level / VAD / DOA")
    doa = np.asarray(trace.doa_deg, np.float64)
    if np.isfinite(doa).any():
        ax2 = ax.twinx()
        ax2.plot(t, doa, ".", ms=2, color="tab:red", label="doa_deg")
        ax2.set(ylim=(-180, 360), ylabel="DOA (deg)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    paths.append(d / "timeline.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def run_eval(config: str, overrides: Sequence[str] = (), *, noisy: Sequence[str] = (),
             clean: Sequence[str] = (), set_dir: str | None = None, items: int | None = None,
             gate: str = "", plot: str | None = None, strict: bool = False, as_json: bool = False,
             progress: bool = False) -> int:
    """``voxd eval``: score ``config`` (with ``--set`` ``overrides``) on the ``noisy``/``clean`` pairs and
    the first ``items`` of ``set_dir``; ``gate``: ``--gate`` thresholds; ``plot``: a folder for PNGs;
    ``as_json``: one JSON object instead of tables; ``progress``: a bar on stderr. Prints the report;
    returns 0, or 1 for a failed gate with ``strict``."""
    thresholds = parse_gate(gate)
    if items is not None and items < 1:
        raise VoxdError(f"eval: --items must be at least 1, got {items}", EX_USAGE)
    todo = items_from_args(noisy, clean, set_dir, items)
    for item in todo:  # every input before any work: a typo in item 40 must not cost 39 runs
        for path in (item.noisy, item.clean):
            if not os.path.exists(path):
                raise InputError(f"{path}: no such file")
    plt = _pyplot() if plot else None
    loaded = with_taps(config, list(overrides))
    reports = []
    bar = tqdm(todo, unit="item", disable=not progress, leave=False, file=sys.stderr)
    for item in bar:
        report, signals, trace = evaluate_item(loaded, item)
        if plt is not None and plot is not None:
            report["plots"] = [str(p) for p in plot_item(plt, Path(plot), item.id, signals, trace,
                                                         report["rate"])]
        reports.append(report)
    bar.close()
    mean = mean_rows(reports)
    clip = max(r["clip_pct"] for r in reports)
    g = gate_result(mean, clip, thresholds)
    if as_json:
        print(json.dumps(_jsonable({"config": config, "items": reports,
                                    "mean": {"items": len(reports), "rows": mean, "clip_pct_max": clip},
                                    "gate": g})))
    else:
        lines: list[str] = []
        for r in reports:
            lines += [f"{r['id']}: {r['noisy']} vs {r['clean']}, {r['duration_s']:.2f} s at {r['rate']} Hz, "
                      f"output clipping {r['clip_pct']:.2f} %", "", *rows_table(r["rows"]), ""]
        lines += [f"mean over {len(reports)} item{'s' * (len(reports) != 1)} ({config})", "",
                  *rows_table(mean), "", *gate_table(g)]
        print("\n".join(lines))
    return 1 if strict and not g["pass"] else 0
