#!/usr/bin/env python3
"""Loudness (``agc``) acceptance tables on the shared dev recordings.

    python bench/agc_bench.py [--dev DIR] [--param KEY=VALUE ...] [--engine webrtc|silero] [--json]

Runs the chain ``vad -> agc`` (every agc parameter at its default unless ``--param``) through
:func:`voxd.runtime.process_file`, exactly as ``voxd process`` would, with 10 ms output frames so that
every chain frame's ``agc_gain_db`` side value is seen. Prints:

1. **Level**: every clean item of dev/mono and dev/vad (36), each labelled utterance scaled to -50,
   -40, -30, -20 and -10 dBFS (the items join utterances recorded up to 22 dB apart: the acceptance is
   about one talker at a steady level; 1b shows the items as recorded, informational), and the noisy
   mixtures scaled so that their speech component is at that level (1c, informational). Levels are
   ITU-T P.56 active speech levels (the shared benchmark's tools/audio.py, the convention of its
   ``speech_level_dbfs``). Every item is played 1 + ceil(3 s / its speech) times in a row, so that what
   is judged, the labelled speech after the first 3 s of it, holds at least one whole pass of the item.
   Reported: that speech's output active level minus the target (noisy items: the mixture's).
2. **Ceiling and slew**: the highest output sample (dBFS) over every run above plus three synthetic
   ones: a 0 dBFS 200 Hz square-wave burst (0.5 s) in the pause of a -30 dBFS utterance and the same
   inside an utterance, and a +30 dB level step (an item at -50 dBFS, then at -20 dBFS); the fastest
   measured change of ``agc_gain_db`` between consecutive 10 ms frames, down (attack) and up
   (release), in dB/s, against the configured rates.
3. **Pauses**: for every pause >= 0.3 s between labelled segments of the noisy items (as recorded and
   scaled to -50, -30, -10 dBFS), the output noise level minus the level it would have with the gain
   frozen at its value at the end of the preceding segment (input noise level + that gain), in dB.
   The acceptance bound is +3 dB.
4. **Cost**: the agc node's time per 10 ms frame inside the chain (p50/p99/mean, microseconds), and
   ``process`` timed directly on mono 160-sample frames (see :func:`cost`). Also runnable as
   ``python bench/chain_bench.py --config config/examples/agc.yaml``.
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
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from voxd.config import LoadedConfig, load_config_text  # noqa: E402
from voxd.frame import AudioFormat, Frame  # noqa: E402
from voxd.pipeline import OutFrame, Pipeline  # noqa: E402
from voxd.plugins import Plugins, load_plugins  # noqa: E402
from voxd.runtime import process_file  # noqa: E402
from voxd.sources.base import Block  # noqa: E402
from voxd.stage import StageContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "bench" / "dev"
RATE = 16000
HOP = 160  # 10 ms chain frames, and 10 ms output frames: one agc_gain_db per chain frame
LEVELS = (-50.0, -40.0, -30.0, -20.0, -10.0)
SETTLE_S = 3.0  # seconds of labelled speech after which the level is judged
MIN_PAUSE_S = 0.3


def plugins() -> Plugins:
    """The installed plugins, plus voxd_agc directly when its entry point is not (yet) installed."""
    found = load_plugins()
    if found.registry.get("agc") is None:
        import voxd_agc

        found = load_plugins(extra=[("agc", voxd_agc)])
    return found


def chain_config(params: dict[str, Any], engine: str = "webrtc",
                 plugs: Plugins | None = None) -> LoadedConfig:
    """``vad -> agc`` with 10 ms output frames; ``params``: agc parameters (YAML flow values)."""
    agc = "".join(f", {k}: {json.dumps(v)}" for k, v in params.items())
    text = (f"capture: {{type: file, path: x.wav}}\noutput: {{frame_ms: {HOP * 1000 // RATE}}}\nchain:\n"
            f"  - {{stage: vad, engine: {engine}}}\n  - {{stage: agc{agc}}}\n")
    return load_config_text(text, "agc_bench.yaml", plugins=plugs or plugins())


@dataclass
class Item:
    """One recording: mono float32 ``x`` at 16 kHz, labelled speech ``segments`` in seconds."""

    name: str
    x: np.ndarray
    segments: list[tuple[float, float]]
    speech_level_dbfs: float | None = None  # meta's level of the speech component (noisy items)

    def repeated(self) -> Item:
        """The item played as often in a row as needed for one whole pass after SETTLE_S of speech, so
        that the speech judged has the item's active-speech level (not that of one quiet word)."""
        total = sum(b - a for a, b in self.segments)
        reps = 1 + math.ceil(SETTLE_S / total)
        dur = self.x.shape[0] / RATE
        segs = [(a + k * dur, b + k * dur) for k in range(reps) for a, b in self.segments]
        return Item(self.name, np.tile(self.x, reps), segs, self.speech_level_dbfs)


def load_items(dev: Path, kind: str) -> list[Item]:
    """``kind`` (clean or noisy) recordings of dev/mono and dev/vad, with their labels."""
    items = []
    for sub in ("mono", "vad"):
        meta = dev / sub / "meta.jsonl"
        if not meta.exists():
            continue
        for line in meta.read_text().splitlines():
            m = json.loads(line)
            x, rate = sf.read(dev / sub / m[kind], dtype="float32")
            assert rate == RATE and x.ndim == 1
            items.append(Item(m["id"], x, [tuple(s) for s in m["speech_segments"]], m["speech_level_dbfs"]))
    return items


def equalized(it: Item, lev: float) -> np.ndarray:
    """``it.x`` with every labelled utterance scaled to ``lev`` dBFS RMS (float32).

    The dev items join utterances from different recordings, up to 22 dB apart (dm017); the level
    acceptance is about a talker at one steady level, so each utterance is brought to it (the samples
    after an utterance, up to the next one, take its scale: the clean items are silent there). Sudden
    level changes are what the +30 dB step measures.
    """
    scale = np.empty(it.x.shape[0])
    bounds = [round(a * RATE) for a, _ in it.segments[1:]]
    starts = [0, *bounds]
    ends = [*bounds, it.x.shape[0]]
    for (a, b), s0, s1 in zip(it.segments, starts, ends, strict=True):
        seg = active_db(it.x, mask(it.x.shape[0], [(a, b)]))
        scale[s0:s1] = 10.0 ** ((lev - seg) / 20.0)
    return (it.x * scale).astype(np.float32)


def mask(n: int, segments: list[tuple[float, float]]) -> np.ndarray:
    """Boolean ``(n,)``: samples inside the segments (seconds)."""
    m = np.zeros(n, bool)
    for a, b in segments:
        m[round(a * RATE) : round(b * RATE)] = True
    return m


def after_speech(segments: list[tuple[float, float]], skip_s: float) -> list[tuple[float, float]]:
    """The segments with their first ``skip_s`` seconds of speech (cumulative) removed."""
    out, left = [], skip_s
    for a, b in segments:
        if left >= b - a:
            left -= b - a
            continue
        out.append((a + left, b))
        left = 0.0
    return out


def level_db(x: np.ndarray, m: np.ndarray | None = None) -> float:
    """RMS level in dBFS of ``x`` (over ``m`` where given)."""
    v = x[m] if m is not None else x
    return 10.0 * np.log10(max(float(np.mean(np.square(v, dtype=np.float64))), 1e-20))


def active_db(x: np.ndarray, m: np.ndarray | None = None) -> float:
    """ITU-T P.56 (method B) active speech level in dBFS of ``x`` (of its samples in ``m``, joined), by
    the shared benchmark's implementation (its tools/audio.py): the convention of its
    ``speech_level_dbfs``."""
    return float(_p56()(np.asarray(x[m] if m is not None else x, np.float64), RATE))


def _p56() -> Any:
    global _ACTIVE
    if _ACTIVE is None:
        sys.path.insert(0, str(DEV.parent / "tools"))
        from audio import active_level_db  # the shared benchmark's tools/audio.py

        _ACTIVE = active_level_db
    return _ACTIVE


_ACTIVE: Any = None


@dataclass(eq=False)
class Run:
    """What one pass of the chain gave: output ``y`` (n,), AGC gain per 10 ms frame (dB)."""

    y: np.ndarray
    gain_db: np.ndarray
    speech: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def run_chain(loaded: LoadedConfig, x: np.ndarray, tmp: Path) -> Run:
    """``x`` (n,) float32 through the configured chain via :func:`process_file` (a float WAV on disk)."""
    path = tmp / "in.wav"
    sf.write(path, x, RATE, subtype="FLOAT")
    gains: list[float] = []
    speech: list[bool] = []

    def on_frame(f: OutFrame) -> None:
        if f.topic == "audio":
            gains.append(float(f.side.get("agc_gain_db", 0.0)))
            speech.append(f.speech)

    r = process_file(loaded, str(path), on_frame=on_frame)
    return Run(r.audio[0], np.array(gains), np.array(speech))


def peak_dbfs(y: np.ndarray) -> float:
    return 20.0 * np.log10(max(float(np.max(np.abs(y))), 1e-20))


def level_table(loaded: LoadedConfig, items: list[Item], target: float, tmp: Path,
                mode: str) -> tuple[list[dict[str, Any]], list[Run]]:
    """Per level: deviation of the output active-speech level (after SETTLE_S of speech) from target.

    ``mode``: ``equalized`` (every utterance at the level, :func:`equalized`), ``whole`` (the item as
    recorded, scaled as a whole to that active-speech level) or ``meta`` (noisy mixtures: scaled so that
    their speech component, whose level meta.jsonl gives, is at the level).
    """
    rows, runs = [], []
    for lev in LEVELS:
        devs: list[tuple[float, str]] = []
        for it in items:
            rep = it.repeated()
            if mode == "equalized":
                x = equalized(rep, lev)
            else:
                meta = mode == "meta" and it.speech_level_dbfs is not None
                ref = it.speech_level_dbfs if meta else active_db(rep.x, mask(rep.x.shape[0], rep.segments))
                x = (rep.x * 10.0 ** ((lev - ref) / 20.0)).astype(np.float32)
            run = run_chain(loaded, x, tmp)
            runs.append(run)
            m = mask(x.shape[0], after_speech(rep.segments, SETTLE_S))
            devs.append((active_db(run.y, m) - target, it.name))
        d = np.array([v for v, _ in devs])
        worst = max(devs, key=lambda t: abs(t[0]))
        rows.append({"level_dbfs": lev, "items": len(d), "mean_dev_db": float(d.mean()),
                     "mean_abs_dev_db": float(np.abs(d).mean()), "max_abs_dev_db": float(np.abs(d).max()),
                     "worst": f"{worst[1]} ({worst[0]:+.2f})", "within_2db": int(np.sum(np.abs(d) <= 2.0))})
    return rows, runs


def slew(runs: list[Run]) -> tuple[float, float]:
    """(fastest gain decrease, fastest increase) between consecutive 10 ms frames, dB/s, over ``runs``."""
    down, up = 0.0, 0.0
    for r in runs:
        d = np.diff(r.gain_db) / (HOP / RATE)
        if d.size:
            down, up = max(down, float(-d.min())), max(up, float(d.max()))
    return down, up


def synthetic_runs(loaded: LoadedConfig, clean: list[Item], tmp: Path) -> dict[str, Run]:
    """The 0 dBFS square-wave burst and the +30 dB level step (see the module docstring)."""
    it = next(i for i in clean if i.name == "dv007")  # three utterances with pauses of about 1 s
    base = it.x * 10.0 ** ((-30.0 - level_db(it.x, mask(it.x.shape[0], it.segments))) / 20.0)
    burst = base.copy()
    a = round(it.segments[1][1] * RATE) + 1600  # 0.1 s into the pause after the second utterance
    t = np.arange(RATE // 2) / RATE
    burst[a : a + RATE // 2] = np.where(np.sin(2 * np.pi * 200 * t) >= 0, 1.0, -1.0)
    # the same burst during speech, when the gain is highest
    during = base.copy()
    b = round(it.segments[2][0] * RATE) + 3200
    during[b : b + RATE // 2] = np.where(np.sin(2 * np.pi * 200 * t) >= 0, 1.0, -1.0)
    rep = it.repeated()
    ref = level_db(rep.x, mask(rep.x.shape[0], rep.segments))
    quiet = rep.x * 10.0 ** ((-50.0 - ref) / 20.0)
    step = np.concatenate((quiet, quiet * 10.0 ** (30.0 / 20.0)))
    return {name: run_chain(loaded, sig.astype(np.float32), tmp)
            for name, sig in (("square burst in a pause", burst), ("square burst in speech", during),
                              ("+30 dB step", step))}


def pause_table(loaded: LoadedConfig, noisy: list[Item], tmp: Path) -> dict[str, Any]:
    """Noise in the pauses: output level minus the level with the gain frozen at the last speech value."""
    diffs: list[tuple[float, str]] = []
    for lev in (None, -50.0, -30.0, -10.0):
        for it in noisy:
            x = it.x if lev is None else (it.x * 10.0 ** ((lev - (it.speech_level_dbfs or -30.0)) / 20.0))
            x = x.astype(np.float32)
            run = run_chain(loaded, x, tmp)
            for (_, end), (nxt, _) in zip(it.segments, it.segments[1:], strict=False):
                if nxt - end < MIN_PAUSE_S:
                    continue
                m = mask(x.shape[0], [(end, nxt)])
                frozen = run.gain_db[min(round(end * RATE) // HOP, run.gain_db.size - 1)]
                got = level_db(run.y, m) - (level_db(x, m) + frozen)
                diffs.append((got, f"{it.name}@{'native' if lev is None else f'{lev:g}'}"))
    d = np.array([v for v, _ in diffs])
    worst = max(diffs, key=lambda t: t[0])
    return {"pauses": len(d), "mean_db": float(d.mean()), "p95_db": float(np.percentile(d, 95)),
            "max_db": float(d.max()), "worst": worst[1], "over_3db": int(np.sum(d > 3.0))}


def cost(loaded: LoadedConfig, noisy: list[Item]) -> dict[str, Any]:
    """The agc node's time per frame in the chain (60 s of the noisy items through ``vad -> agc``), and
    ``process`` timed directly on mono 160-sample frames: speech (the gain moving every frame), a pause
    (gain held), the limiter working on every frame (a 0 dBFS square wave at +10 dB), and, as the
    machine's yardstick at that moment, the ``gain`` stage (one multiplication) on the same frames."""
    from voxd_basic.filters import Gain

    from voxd.chain import build_chain

    x = np.concatenate([it.x for it in noisy])[: RATE * 60]
    chain = build_chain(loaded, 1)
    chain.open(RATE)
    n_frames = x.shape[0] // HOP + 64
    for node in chain.nodes:
        node.times_ns = np.zeros(n_frames, np.int64)
    pipe = Pipeline(chain, RATE, HOP)
    for pos in range(0, x.shape[0], 320):
        pipe.push(Block(x[None, pos : pos + 320], pos / RATE))
    pipe.flush()
    node = next(n for n in chain.nodes if n.kind == "agc")
    t = node.times_ns[: min(node.count, n_frames)] / 1000.0
    summary = node.stage.stats() or {}
    out: dict[str, Any] = {"chain": {"p50_us": float(np.percentile(t, 50)),
                                     "p99_us": float(np.percentile(t, 99)), "mean_us": float(t.mean()),
                                     "frames": int(t.size), "limited_frac": summary.get("limited_frac")}}
    chain.close()
    agc_params = next(s.params for s in loaded.config.chain if s.kind == "agc").model_dump(exclude_unset=True)

    def direct(make: Any, sig: np.ndarray, speech: bool) -> dict[str, float]:
        stage = make()
        frames = [Frame(np.ascontiguousarray(sig[None, i * HOP : (i + 1) * HOP]), i, i * HOP, 0.0, RATE,
                        side={"speech": speech, "speech_prob": 0.9}) for i in range(sig.shape[0] // HOP)]
        times = []
        for f in frames:
            t0 = time.perf_counter_ns()
            stage.process(f)
            times.append(time.perf_counter_ns() - t0)
        a = np.array(times[50:]) / 1000.0
        return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
                "mean_us": float(a.mean())}

    def agc() -> Any:
        return micro_stage(agc_params)

    def gain() -> Any:
        stage = Gain(Gain.Params(db=-3.0), "gain")
        stage.open(StageContext(rate=RATE))
        return stage

    speech = x[: RATE * 20]
    square = np.where(np.sin(2 * np.pi * 200 * np.arange(RATE * 20) / RATE) >= 0, 1.0, -1.0)
    square = square.astype(np.float32)
    out["direct: speech frames"] = direct(agc, speech, True)
    out["direct: pause frames"] = direct(agc, speech, False)
    out["direct: limiter on every frame"] = direct(agc, square, False)
    out["direct: gain stage (yardstick)"] = direct(gain, speech, True)
    return out


def micro_stage(params: dict[str, Any]) -> Any:
    """A lone opened agc stage (mono, 10 ms frames) for direct measurements."""
    from voxd_agc.agc import Agc, AgcParams

    stage = Agc(AgcParams(**params), "agc")
    fmt = AudioFormat(RATE, 1, HOP)
    stage.accept(fmt)
    stage.open(StageContext(rate=RATE))
    return stage


def fmt_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| input level dBFS | items | mean dev dB | mean abs dev dB | max abs dev dB | worst "
             "| within +-2 dB |", "|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['level_dbfs']:g} | {r['items']} | {r['mean_dev_db']:+.2f} "
                     f"| {r['mean_abs_dev_db']:.2f} | {r['max_abs_dev_db']:.2f} | {r['worst']} "
                     f"| {r['within_2db']}/{r['items']} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dev", type=Path, default=DEV, help="the shared benchmark's dev folder")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="agc parameter")
    ap.add_argument("--engine", default="webrtc", choices=["webrtc", "silero"])
    ap.add_argument("--skip", action="append", default=[],
                    choices=["level", "whole", "noisy", "pauses", "cost"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    params = {k: json.loads(v) if v[:1] in "-0123456789tf[{\"" else v
              for k, v in (p.split("=", 1) for p in args.param)}
    if not (args.dev / "mono" / "meta.jsonl").exists():
        print(f"agc_bench: no dev set at {args.dev}", file=sys.stderr)
        return 66
    plugs = plugins()
    loaded = chain_config(params, args.engine, plugs)
    agc_params = next(s.params for s in loaded.config.chain if s.kind == "agc")
    target = agc_params.target_dbfs
    clean, noisy = load_items(args.dev, "clean"), load_items(args.dev, "noisy")
    report: dict[str, Any] = {"params": agc_params.model_dump(), "engine": args.engine}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if "level" not in args.skip:
            report["level_clean"], r = level_table(loaded, clean, target, tmp, "equalized")
            runs += r
        if "whole" not in args.skip:
            report["level_whole"], r = level_table(loaded, clean, target, tmp, "whole")
            runs += r
        if "noisy" not in args.skip:
            report["level_noisy"], r = level_table(loaded, noisy, target, tmp, "meta")
            runs += r
        synth = synthetic_runs(loaded, clean, tmp)
        report["peak_dbfs"] = {"all dev runs": max((peak_dbfs(r.y) for r in runs), default=float("nan")),
                               **{k: peak_dbfs(v.y) for k, v in synth.items()}}
        down, up = slew([*runs, *synth.values()])
        report["slew_db_s"] = {"attack_max": down, "attack_configured": agc_params.attack_db_s,
                               "release_max": up, "release_configured": agc_params.release_db_s}
        step = synth["+30 dB step"]
        half = step.gain_db.size // 2
        loud = step.gain_db[half:]
        settled = float(np.median(loud))  # the loud half's utterances differ by up to 5 dB among them
        report["step"] = {"gain_before_db": float(step.gain_db[half - 1]), "gain_after_db": settled,
                          "settle_s": float(np.argmax(np.abs(loud - settled) <= 2.0) * HOP / RATE),
                          "speech_s": float(np.cumsum(step.speech[half:])[np.argmax(
                              np.abs(loud - settled) <= 2.0)] * HOP / RATE)}
        if "pauses" not in args.skip:
            report["pauses"] = pause_table(loaded, noisy, tmp)
    if "cost" not in args.skip:
        report["cost"] = cost(loaded, noisy)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"agc bench: chain vad({args.engine}) -> agc, target {target:g} dBFS, params "
          f"{agc_params.model_dump()}\n")
    for key, title in (("level_clean", "1a. clean items, every utterance at the input level: output "
                        "active-speech level after 3 s of speech minus target"),
                       ("level_whole", "1b. clean items as recorded (utterances up to 22 dB apart), "
                        "scaled as a whole: the same measure (informational)"),
                       ("level_noisy", "1c. noisy mixtures (informational): mixture level in the labelled "
                        "speech after 3 s minus target")):
        if key in report:
            print(title)
            print("\n".join(fmt_rows(report[key])), "\n")
    print("2. peaks (dBFS; ceiling " f"{agc_params.ceiling_dbfs:g})")
    for k, v in report["peak_dbfs"].items():
        print(f"   {k}: {v:.3f}")
    s = report["slew_db_s"]
    print(f"   gain slew: attack (down) max {s['attack_max']:.2f} dB/s (configured "
          f"{s['attack_configured']:g}), release (up) max {s['release_max']:.2f} dB/s (configured "
          f"{s['release_configured']:g})")
    st = report["step"]
    print(f"   +30 dB step: gain {st['gain_before_db']:+.1f} dB before, {st['gain_after_db']:+.1f} dB after "
          f"(median); within 2 dB of it {st['settle_s']:.2f} s after the step ({st['speech_s']:.2f} s of "
          "it flagged speech)\n")
    if "pauses" in report:
        p = report["pauses"]
        print(f"3. pauses: {p['pauses']} pauses >= {MIN_PAUSE_S} s; output minus frozen-gain level: mean "
              f"{p['mean_db']:+.2f} dB, p95 {p['p95_db']:+.2f}, max {p['max_db']:+.2f} ({p['worst']}); "
              f"over +3 dB: {p['over_3db']}\n")
    if "cost" in report:
        c = report["cost"]
        print("4. cost per 10 ms frame (us, one thread)")
        for k, v in c.items():
            extra = f" ({v['frames']} frames, limiter acting on {100 * v['limited_frac']:.2f} %)" if (
                "frames" in v) else ""
            print(f"   {k}: p50 {v['p50_us']:.1f}, p99 {v['p99_us']:.1f}, mean {v['mean_us']:.1f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
