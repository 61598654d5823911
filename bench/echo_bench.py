#!/usr/bin/env python3
"""Echo cancellation (``aec``) on the echo set (issue 18): ERLE, self-triggering, near-end STOI, barge-in
WER and CPU, for several chains, in one command.

    python bench/echo_bench.py [--quick] [--chains a,b] [--no-asr] [--cache DIR] [--items N] [--json OUT]

The set is built or reused through ``bench/echoset.py`` (:func:`echoset.ensure`; ``--quick``: its 4
items, one per condition). Each item becomes the capture a board delivers: the N microphone channels of
``noisy`` plus the reference ``ref`` as channel N (float32 WAV, 16 kHz; a drifted reference, which has
another length, is cut or zero-padded to the microphones' length). Every chain runs on it through
:func:`voxd.runtime.process_file` (exactly what ``voxd process`` does) with
``capture.reference_channels: [N]``, so the reference leaves the microphone channels in all of them:

- ``plain``: ``select [0] -> vad`` (mic 0, no echo cancellation);
- ``aec``: ``aec -> select [0] -> vad`` (the stage's defaults: engine speex with its suppressor, one
  canceller per microphone; the mic-0 path); ``aec-linear``: the same without the suppressor;
  ``aec-aec3``: the same with engine aec3; ``plain-silero``, ``aec-silero``: ``plain`` and ``aec`` with
  the Silero VAD instead of WebRTC's;
- ``board``: the shipped chain of the item's board (``config/<geometry>.yaml``: its ``array`` and
  ``chain``, a ``select`` of the microphones dropped), with its ``aec`` stage wherever it is;
- ``board-noaec``: the same without ``aec``; ``board-aec-first`` / ``board-aec-last``: ``aec`` (the
  board config's, else the stage's defaults) first (one canceller per microphone) or after the last
  stage (one canceller on the beamformed channel).

Figures (at the chain's output channel 0 against microphone 0; the pipeline removes the chain's delay,
so output sample k is input sample k):

- **ERLE** (dB): 10*log10(input power / output power) over the item's ``farend_only_segments`` after
  2 s (the near end is ~0 there; the input is echo + room noise). ``ceiling`` (dB): echo over room
  noise power in the same spans, what an echo canceller that leaves the noise alone can reach.
- **ERLE after change** (dB): the same over the first 1 s after ``echo_path_change_s`` (pathchange items).
- **barge-in heard**: the share of double-talk items (a user talking over the playback) where the VAD
  reported speech overlapping the user's command: the other side of self-triggering (a VAD that never
  reports speech during playback never self-triggers).
- **self-trigger**: the share of items where the chain's VAD reported speech (a segment from its
  ``speech_start`` to its ``speech_end``) during a far-end-only span: the device triggering on its own
  playback; ``after 2 s``: the same ignoring the first 2 s of the item.
- **STOI** (0-1, pystoi, 16 kHz) over the item's ``doubletalk_segments`` (concatenated) against
  ``clean``; ``no-echo input``: the input less its echo (unprocessed); ``no playback``: the same chain
  run on the input less its echo with a silent reference (what the chain gives the user without
  playback).
- **WER** (Whisper tiny.en, PocketSphinx; ``bench/asr.py``, the examples' recognizers): the near end's
  command cut from the chain's output (``nearend_segments`` +- 0.3 s) against its text, with playback and
  without (the same chain on the input less its echo, silent reference); corpus WER over the items with
  a near end. ``--no-asr`` leaves it out.
- **RTF**: CPU time of the process (``time.process_time``, s) over the audio's duration (s), per chain.

Rows: per condition (mean over its items of the per-item figures) and ``all``, one table per chain.
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
ASR_PAD_S = 0.3  # the command's span is widened by this much each side before recognition (s)
CHAINS = ("plain", "aec", "aec-linear", "aec-aec3", "plain-silero", "aec-silero", "aec-neural",
          "aec-neural-silero", "board", "board-noaec", "board-aec-first", "board-aec-last")
#: the single-microphone chains: name -> (the aec stage or None, the VAD engine); then select [0] -> vad
MIC0_CHAINS: dict[str, tuple[dict[str, Any] | None, str]] = {
    "plain": (None, "webrtc"), "aec": ({"stage": "aec"}, "webrtc"),
    "aec-linear": ({"stage": "aec", "engine": "speex", "suppress": False}, "webrtc"),
    "aec-aec3": ({"stage": "aec", "engine": "aec3"}, "webrtc"),
    "plain-silero": (None, "silero"), "aec-silero": ({"stage": "aec"}, "silero"),
    "aec-neural": ({"stage": "aec", "suppress": "neural"}, "webrtc"),
    "aec-neural-silero": ({"stage": "aec", "suppress": "neural"}, "silero")}
RECOGNIZERS = ("whisper", "pocketsphinx")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
EPS = 1e-20


def board_stages(geometry: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``array`` section and the chain of the shipped ``config/<geometry>.yaml``, without a ``select``
    of microphones (the bench's capture holds only microphones and the reference)."""
    import yaml

    doc = yaml.safe_load((CONFIG_DIR / f"{geometry}.yaml").read_text(encoding="utf-8"))
    chain = [dict(st) for st in doc["chain"] if st.get("stage") != "select"]
    return dict(doc.get("array") or {}), chain


def chain_stages(name: str, geometry: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(array section, chain) of the chain ``name`` (see the module docstring) for a board."""
    if name in MIC0_CHAINS:
        aec, vad = MIC0_CHAINS[name]
        return {}, [*([aec] if aec else []), {"stage": "select", "channels": [0]},
                    {"stage": "vad", "channel": 0, "engine": vad}]
    array, chain = board_stages(geometry)
    aecs = [st for st in chain if st.get("stage") == "aec"]
    rest = [st for st in chain if st.get("stage") != "aec"]
    if name == "board":
        return array, chain
    if name == "board-noaec":
        return array, rest
    if name == "board-aec-first":
        return array, (aecs or [{"stage": "aec"}]) + rest
    if name == "board-aec-last":
        return array, rest + (aecs or [{"stage": "aec"}])
    raise ValueError(f"unknown chain {name!r} (expected one of {', '.join(CHAINS)})")


def chain_config(wav: Path, mics: int, name: str, geometry: str) -> LoadedConfig:
    """Capture ``wav`` (``mics`` microphones + the reference at channel ``mics``), 10 ms frames; the chain
    ``name`` for the board ``geometry``."""
    array, stages = chain_stages(name, geometry)
    doc: dict[str, Any] = {"capture": {"type": "file", "path": str(wav), "reference_channels": [mics]},
                           "output": {"frame_ms": 10}, "chain": stages}
    if array:
        doc["array"] = array
    return load_config_text(json.dumps(doc), f"echo_bench-{name}.yaml")


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


def triggers(events: list[dict[str, Any]], spans: list[list[float]], duration_s: float,
             after_s: float = 0.0) -> int:
    """How many of the VAD's speech segments (``speech_start`` .. ``speech_end``, as ``voxd process
    --vad-out`` reports them) overlap ``spans`` (s) at or after ``after_s``: a segment that began just
    before the playback (the VAD dates its start back by its pre-roll) and runs through it counts."""
    from voxd.commands.process import speech_segments

    n = 0
    for a, b in speech_segments(events, RATE, duration_s):
        n += any(min(b, hi) > max(a, lo, after_s) for lo, hi in spans)
    return n


def command_span(m: dict[str, Any], n: int) -> slice | None:
    """The near end's command (``nearend_segments``, widened by :data:`ASR_PAD_S`) as a sample slice."""
    segs = m["nearend_segments"]
    if not segs or not m.get("text"):
        return None
    a = max(0, int((segs[0][0] - ASR_PAD_S) * RATE))
    b = min(n, int((segs[-1][1] + ASR_PAD_S) * RATE))
    return slice(a, b)


def run_chain(loaded: LoadedConfig, wav: Path, n: int) -> tuple[np.ndarray, list[dict[str, Any]], float]:
    """Output channel 0 (``n`` samples), the events and the CPU seconds of one chain on one file."""
    t0 = time.process_time()
    res = process_file(loaded, str(wav))
    cpu = time.process_time() - t0
    y = res.audio[0, :n]
    return np.pad(y, (0, n - y.shape[0])), res.events, cpu


def run_item(d: Path, m: dict[str, Any], tmp: Path, chains: list[str],
             asr: dict[str, Any]) -> dict[str, Any]:
    """Every chain on one item (and, with a near end, on the item without its echo); its figures."""
    iid = m["id"]
    noisy, rate = sf.read(d / "noisy" / f"{iid}.flac", dtype="float32", always_2d=True)
    echo_all = sf.read(d / "echo" / f"{iid}.flac", dtype="float32", always_2d=True)[0]
    echo = echo_all[:, 0]
    clean = sf.read(d / "clean" / f"{iid}.flac", dtype="float32")[0]
    ref = sf.read(d / "ref" / f"{iid}.flac", dtype="float32")[0]
    nearend = sf.read(d / "nearend" / f"{iid}.flac", dtype="float32", always_2d=True)[0][:, 0]
    assert rate == RATE
    n, mics = noisy.shape
    ref = np.pad(ref[:n], (0, max(0, n - ref.shape[0])))
    wav = tmp / f"{iid}.wav"
    sf.write(wav, np.concatenate([noisy, ref[:, None]], axis=1), RATE, subtype="FLOAT")
    cmd = command_span(m, n)
    wav_quiet = tmp / f"{iid}-noplayback.wav"
    if cmd is not None:  # the same room and user, nothing played: no echo, a silent reference
        sf.write(wav_quiet, np.concatenate([noisy - echo_all, np.zeros((n, 1), np.float32)], axis=1), RATE,
                 subtype="FLOAT")
    x0 = noisy[:, 0]
    noise = x0 - echo - nearend
    fo = spans_mask(m["farend_only_segments"], n, SETTLE_S)
    dt = spans_mask(m["doubletalk_segments"], n)
    change = m.get("echo_path_change_s")
    ch = (spans_mask(m["farend_only_segments"], n, change, change + CHANGE_WINDOW_S)
          if change is not None else np.zeros(n, bool))
    rec: dict[str, Any] = {"id": iid, "condition": m["condition"], "geometry": m["geometry"], "mics": mics,
                           "duration_s": n / RATE, "ceiling_db": ratio_db(echo, noise, fo),
                           "stoi_noecho": stoi_over(clean, x0 - echo, dt), "text": m.get("text", "")}
    for name in chains:
        y, events, cpu = run_chain(chain_config(wav, mics, name, m["geometry"]), wav, n)
        r: dict[str, Any] = {
            "erle_db": ratio_db(x0, y, fo), "erle_change_db": ratio_db(x0, y, ch),
            "stoi": stoi_over(clean, y, dt), "rtf": cpu / (n / RATE),
            "self_trigger": triggers(events, m["farend_only_segments"], n / RATE) > 0,
            "self_trigger_after_settle": triggers(events, m["farend_only_segments"], n / RATE, SETTLE_S) > 0}
        if m["doubletalk_segments"]:  # the user talks over the playback: does the VAD hear them at all?
            r["barge_in"] = triggers(events, m["nearend_segments"], n / RATE) > 0
        if cmd is not None:
            q, _, _ = run_chain(chain_config(wav_quiet, mics, name, m["geometry"]), wav_quiet, n)
            r["stoi_noplayback"] = stoi_over(clean, q, dt)
            for k, rec_obj in asr.items():
                r[f"hyp_{k}"] = rec_obj.transcribe(y[cmd])
                r[f"hyp_{k}_noplayback"] = rec_obj.transcribe(q[cmd])
        rec[name] = r
    return rec


def mean(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


FIGURES = ("erle_db", "erle_change_db", "stoi", "stoi_noplayback", "rtf", "self_trigger",
           "self_trigger_after_settle", "barge_in")


def summarise(items: list[dict[str, Any]], chains: list[str],
              recognizers: list[str]) -> dict[str, dict[str, Any]]:
    """Per condition and ``all``: the mean of each per-item figure (None where no item has it), and per
    chain and recognizer the corpus WER with and without playback."""
    from asr import wer

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in items:
        groups.setdefault(r["condition"], []).append(r)
    groups["all"] = items
    out: dict[str, dict[str, Any]] = {}
    for g, rs in groups.items():
        row: dict[str, Any] = {"n": len(rs), "ceiling_db": mean([r["ceiling_db"] for r in rs]),
                               "stoi_noecho": mean([r["stoi_noecho"] for r in rs])}
        for c in chains:
            for k in FIGURES:
                row[f"{c}_{k}"] = mean([None if r[c].get(k) is None else float(r[c][k]) for r in rs])
            for k in recognizers:
                with_near = [r for r in rs if f"hyp_{k}" in r[c]]
                if with_near:
                    refs = [r["text"] for r in with_near]
                    row[f"{c}_wer_{k}"] = wer(refs, [r[c][f"hyp_{k}"] for r in with_near])["wer"]
                    row[f"{c}_wer_{k}_noplayback"] = wer(refs, [r[c][f"hyp_{k}_noplayback"]
                                                                for r in with_near])["wer"]
        out[g] = row
    return out


def table(summary: dict[str, dict[str, Any]], chain: str, recognizers: list[str]) -> str:
    """One chain's rows of the summary as a Markdown table (WER in %)."""
    cols = [("n", "n", "{:d}"), ("ERLE dB", f"{chain}_erle_db", "{:.1f}"),
            ("ceiling dB", "ceiling_db", "{:.1f}"),
            ("ERLE 1 s after change dB", f"{chain}_erle_change_db", "{:.1f}"),
            ("self-trigger", f"{chain}_self_trigger", "{:.0%}"),
            ("after 2 s", f"{chain}_self_trigger_after_settle", "{:.0%}"),
            ("barge-in heard", f"{chain}_barge_in", "{:.0%}"),
            ("STOI", f"{chain}_stoi", "{:.3f}"), ("STOI no playback", f"{chain}_stoi_noplayback", "{:.3f}"),
            ("STOI no-echo input", "stoi_noecho", "{:.3f}")]
    for k in recognizers:
        cols += [(f"WER {k} %", f"{chain}_wer_{k}", "{:.1%}"),
                 ("no playback %", f"{chain}_wer_{k}_noplayback", "{:.1%}")]
    cols.append(("RTF", f"{chain}_rtf", "{:.3f}"))
    lines = [f"**{chain}**", "", "| condition | " + " | ".join(c[0] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for g, row in summary.items():
        cells = ["-" if row.get(k) is None else fmt.format(row[k]).replace("%", "") for _, k, fmt in cols]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=echoset.default_cache())
    ap.add_argument("--items", type=int, default=echoset.N_ITEMS)
    ap.add_argument("--seed", type=int, default=echoset.SEED)
    ap.add_argument("--quick", action="store_true", help=f"the {echoset.QUICK_ITEMS}-item quick set")
    ap.add_argument("--chains", default=",".join(CHAINS), help="comma-separated, of: " + ", ".join(CHAINS))
    ap.add_argument("--no-asr", action="store_true", help="leave the recognizers (WER) out")
    ap.add_argument("--json", type=Path, help="write per-item figures and the summary here")
    a = ap.parse_args(argv)
    chains = [c.strip() for c in a.chains.split(",") if c.strip()]
    for c in chains:
        if c not in CHAINS:
            ap.error(f"unknown chain {c!r} (expected one of {', '.join(CHAINS)})")
    recognizers: list[str] = [] if a.no_asr else list(RECOGNIZERS)
    asr_objs: dict[str, Any] = {}
    if recognizers:
        from asr import recognizer

        asr_objs = {k: recognizer(k) for k in recognizers}
    n = echoset.QUICK_ITEMS if a.quick else a.items
    d, man = echoset.ensure(a.cache, echoset.EchoConfig(n_items=n, seed=a.seed),
                            name="quick" if a.quick else "set")
    metas = [json.loads(line) for line in (d / "meta.jsonl").read_text(encoding="utf-8").splitlines()]
    items: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="echo_bench.") as tmp:
        for m in metas:
            items.append(run_item(d, m, Path(tmp), chains, asr_objs))
            r = items[-1]
            print(f"{r['id']} {r['condition']:10s} " + ", ".join(
                f"{c} ERLE {r[c]['erle_db'] if r[c]['erle_db'] is None else round(r[c]['erle_db'], 1)}"
                for c in chains), file=sys.stderr)
    summary = summarise(items, chains, recognizers)
    print(f"echo set {d} ({len(items)} items, set sha256 {man['set_sha256']}); capture.reference_channels = "
          "the reference channel")
    for c in chains:
        print()
        print(table(summary, c, recognizers))
    if a.json:
        a.json.write_text(json.dumps({"set": str(d), "set_sha256": man["set_sha256"], "chains": chains,
                                      "summary": summary, "items": items}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
