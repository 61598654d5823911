"""Quality floors and CPU budgets of the shipped configs: the table, and the measurement behind it.

Every config in ``config/*.yaml`` runs, as ``voxd process`` runs it (:func:`voxd.runtime.process_file`),
on a few items of the shared dev set (``../shared/bench/dev``: noisy input, clean reference, labels).
Per config, means over its items:

- ``si_sdr`` (dB), ``pesq`` (PESQ-WB), ``stoi``: the output's channel 0 against the clean reference,
  with ``voxd eval``'s scorer (:func:`voxd.metrics.score`); floors;
- ``vad_acc``: the share of published frames whose ``speech`` flag agrees with the item's labelled
  speech segments; a floor;
- ``lf_db``: the output's energy below 50 Hz over its total (dB: what a high-pass removes); a ceiling;
- ``level_db``: the output's level (dBFS); it must stay within :data:`LEVEL_TOLERANCE_DB` (gain, AGC);
- ``doa_err``: the absolute error (deg) of the last published ``doa_deg`` against the item's talker
  azimuth, 180 when there is none (configs with a ``doa`` stage only); a ceiling;
- ``rtf``: CPU time of the whole runs (decoding, resampling, chain, framing) over the audio's duration,
  as ``voxd bench``'s ``rtf_cpu`` but on speech; a budget;
- ``stage_us``: each stage's median (p50) time per 10 ms chain frame in microseconds; a budget each, so
  that one stage made 10x slower fails however small its share of the whole.

:data:`FLOORS` is the one place the limits live; ``tests/test_floors.py`` checks them. To re-set the
table after an intended change (a new model, a new chain), run::

    .venv/bin/python -m tests.floors [CONFIG ...]     # today's figures and the rows they give

and paste the printed rows into :data:`FLOORS`. Quality limits are today's figure with the small
:data:`MARGIN` (the runs are deterministic: the margin absorbs other machines' float rounding, not
noise); CPU budgets are a few times today's figure (:data:`BUDGET_FACTOR`, :data:`STAGE_FACTOR`:
generous for a loaded machine, yet a stage made 10x slower fails).
``VOXD_CPU_BUDGET_SCALE`` (a number) multiplies every CPU budget on a slower machine.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DEV = Path(os.environ.get("VOXD_DEV_SET", ROOT.parent / "shared" / "bench" / "dev"))

#: Taken from today's figure to give a limit (SI-SDR dB, PESQ-WB MOS, STOI, VAD agreement, LF share dB,
#: DOA error deg).
MARGIN = {"si_sdr": 0.1, "pesq": 0.02, "stoi": 0.005, "vad_acc": 0.02, "lf_db": 3.0, "doa_err": 5.0}
#: The output level (dBFS) may move this much either way.
LEVEL_TOLERANCE_DB = 1.0
#: CPU budgets: today's RTF times this, each stage's p50 times :data:`STAGE_FACTOR` (a per-frame median
#: moves more with the machine's load than the process CPU time does), and at least
#: :data:`STAGE_SLACK_US` above it (tiny stages jitter).
BUDGET_FACTOR = 3.0
STAGE_FACTOR = 4.0
STAGE_SLACK_US = 20.0
LF_HZ = 50.0  # ``lf_db``: below this frequency
#: Seconds of the first item run untimed before the measured runs (the process's one-off costs).
WARMUP_S = 1.0
#: Items (``SET/ID`` in the dev set) per kind of input: mono configs, and each array geometry.
MONO_ITEMS = ("mono/dm001", "mono/dm015")
HAT_ITEMS = ("array/array-dev-006", "array/array-dev-012")
USB_ITEMS = ("array/array-dev-000", "array/array-dev-002")
SIX_ITEMS = ("array/array-dev-015", "array/array-dev-011")


@dataclass(frozen=True)
class Floor:
    """The limits of one shipped config (see the module doc for each figure): ``items`` it runs on;
    floors ``si_sdr``, ``pesq``, ``stoi``, ``vad_acc``; ceilings ``lf_db``, ``doa_err`` (None: the
    chain has no doa stage); ``level_db`` (within :data:`LEVEL_TOLERANCE_DB`); CPU budgets ``rtf`` and
    ``stage_us`` (by stage name)."""

    items: tuple[str, ...]
    si_sdr: float
    pesq: float
    stoi: float
    vad_acc: float
    lf_db: float
    level_db: float
    doa_err: float | None
    rtf: float
    stage_us: dict[str, float] = field(default_factory=dict)


#: One row per shipped config (path relative to the repository). Re-set with ``python -m tests.floors``.
FLOORS: dict[str, Floor] = {
    "config/default.yaml": Floor(
        HAT_ITEMS, si_sdr=2.58, pesq=1.577, stoi=0.814, vad_acc=0.889,
        lf_db=-42.4, level_db=-25.37, doa_err=9.8, rtf=0.331,
        stage_us={"highpass": 177.4, "vad": 162.9, "noise": 734.0, "doa": 311.4,
                  "beamform": 1489.0, "agc": 149.9}),
    "config/demo.yaml": Floor(
        HAT_ITEMS, si_sdr=-3.9, pesq=1.603, stoi=0.789, vad_acc=0.882,
        lf_db=-42.6, level_db=-19.96, doa_err=None, rtf=0.233,
        stage_us={"highpass": 269.3, "vad": 158.6, "noise": 844.2, "wiener": 181.9, "mix": 64.8,
                  "gain": 30.7}),
    "config/mono.yaml": Floor(
        MONO_ITEMS, si_sdr=-0.23, pesq=1.268, stoi=0.654, vad_acc=0.783,
        lf_db=-25.4, level_db=-24.7, doa_err=None, rtf=1.053,
        stage_us={"mix": 121.8, "vad": 94.0, "denoise": 9434.8}),
    "config/mono-neural.yaml": Floor(
        MONO_ITEMS, si_sdr=-0.44, pesq=1.211, stoi=0.656, vad_acc=0.773,
        lf_db=-38.3, level_db=-31.64, doa_err=None, rtf=0.211,
        stage_us={"mix": 72.2, "vad": 50.1, "denoise": 1233.2}),
    "config/respeaker-4mic-hat.yaml": Floor(
        HAT_ITEMS, si_sdr=8.53, pesq=1.56, stoi=0.82, vad_acc=0.879,
        lf_db=-27.3, level_db=-25.9, doa_err=9.8, rtf=0.315,
        stage_us={"vad": 179.8, "noise": 739.0, "doa": 314.7, "beamform": 1503.7, "wiener": 145.7}),
    "config/respeaker-usb-4mic.yaml": Floor(
        USB_ITEMS, si_sdr=3.04, pesq=1.352, stoi=0.736, vad_acc=0.83,
        lf_db=-18.1, level_db=-29.74, doa_err=9.9, rtf=0.31,
        stage_us={"aec": 247.6, "vad": 175.5, "noise": 710.0, "doa": 428.5, "beamform": 1469.7,
                  "wiener": 141.6}),
    "config/respeaker-6mic.yaml": Floor(
        SIX_ITEMS, si_sdr=-3.85, pesq=1.1, stoi=0.647, vad_acc=0.691,
        lf_db=-26.0, level_db=-26.0, doa_err=26.3, rtf=0.432,
        stage_us={"aec": 275.2, "vad": 154.1, "noise": 826.6, "doa": 579.2, "beamform": 2269.9,
                  "wiener": 147.5}),
    "config/respeaker-2mic-hat.yaml": Floor(  # on two of the USB array's mics: CHANNELS
        USB_ITEMS, si_sdr=3.41, pesq=1.363, stoi=0.747, vad_acc=0.83,
        lf_db=-18.2, level_db=-29.61, doa_err=32.9, rtf=0.313,
        stage_us={"vad": 188.0, "noise": 757.7, "doa": 355.3, "beamform": 1305.0, "wiener": 180.8}),
    "config/listening.yaml": Floor(
        HAT_ITEMS, si_sdr=6.31, pesq=1.451, stoi=0.81, vad_acc=0.886,
        lf_db=-44.0, level_db=-30.76, doa_err=9.9, rtf=1.786,
        stage_us={"vad": 359.1, "noise": 1787.3, "doa": 777.4, "beamform": 3070.2,
                  "denoise": 12771.1}),
}


#: The item channels a config is fed, for a board the dev set has no recordings of: the 2-mic HAT gets
#: the USB array's two mics on the x axis (channel 0 at 180 deg, 2 at 0 deg), a 64 mm line in the preset's
#: orientation (channel 0 at -x) where the HAT's is 58 mm: its doa reads a 10 % longer line than it thinks.
CHANNELS: dict[str, tuple[int, ...]] = {"config/respeaker-2mic-hat.yaml": (0, 2)}


def item_paths(item: str) -> tuple[Path, Path]:
    """(noisy, clean) paths of dev item ``SET/ID``."""
    set_name, item_id = item.split("/")
    return DEV / set_name / "noisy" / f"{item_id}.flac", DEV / set_name / "clean" / f"{item_id}.flac"


def item_meta(item: str) -> dict[str, Any]:
    """The ``meta.jsonl`` record of dev item ``SET/ID``."""
    set_name, item_id = item.split("/")
    for line in (DEV / set_name / "meta.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec: dict[str, Any] = json.loads(line)
            if rec["id"] == item_id:
                return rec
    raise KeyError(item)


def dev_set_present() -> bool:
    """Whether every item the table names is there."""
    return all(p.is_file() for f in FLOORS.values() for i in f.items for p in item_paths(i))


def _speech_at(segments: list[list[float]], t: float) -> bool:
    return any(a <= t < b for a, b in segments)


class _Published:
    """What a run published: (centre s, speech flag) of each audio frame, and the last ``doa_deg``."""

    def __init__(self, rate: int, doa_key: str) -> None:
        self.rate, self.doa_key = rate, doa_key
        self.frames: list[tuple[float, bool]] = []
        self.doa = math.nan

    def take(self, f: Any) -> None:
        if f.topic == "audio":
            self.frames.append(((f.pts + f.samples.shape[1] / 2) / self.rate, f.speech))
            self.doa = float(f.side.get(self.doa_key, math.nan))


def measure(config: str | Path, items: tuple[str, ...], channels: tuple[int, ...] | None = None
            ) -> dict[str, Any]:
    """Today's figures of ``config`` over ``items`` (the keys of :class:`Floor` but ``items``);
    ``channels``: the items' channels the config is fed (default: all; :data:`CHANNELS`)."""
    from voxd.config import load_config
    from voxd.metrics import resample_hq, score
    from voxd.runtime import process_file
    from voxd.side import DOA_DEG
    from voxd.sources.file import read_audio

    loaded = load_config(str(config))
    tmp = Path(tempfile.mkdtemp(prefix="floors."))

    def as_captured(path: Path) -> str:
        """The dev recordings hold microphones only: a config whose capture also delivers playback
        reference channels (a board's loopback) gets them appended, silent, as the board delivers them
        while nothing plays (the aec stage then passes the microphones through bit for bit)."""
        cap = loaded.config.capture
        refs = cap.reference_positions()
        want = int(getattr(cap, "out_channels", 0))
        if channels is not None:
            x, rate = sf.read(str(path), dtype="float32", always_2d=True)
            path = tmp / f"{path.stem}.{'-'.join(map(str, channels))}.wav"
            sf.write(path, x[:, list(channels)], rate, subtype="FLOAT")
        if not refs or not want:
            return str(path)
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
        if x.shape[1] != want - len(refs):
            return str(path)
        out = tmp / f"{path.stem}.wav"
        sf.write(out, np.concatenate([x, np.zeros((x.shape[0], len(refs)), np.float32)], axis=1), rate,
                 subtype="FLOAT")
        return str(out)

    # untimed first run: what a process does once (imports, first model load) is not the chain's cost.
    # The first WARMUP_S of the first item does all of that (a hundred chain frames and more), in the
    # item's own file format
    first = item_paths(items[0])[0]
    info = sf.info(str(first))
    head, rate = sf.read(str(first), frames=int(WARMUP_S * info.samplerate), dtype="float32", always_2d=True)
    warmup = tmp / f"warmup-{first.name}"
    sf.write(str(warmup), head, rate, format=info.format, subtype=info.subtype)
    process_file(loaded, as_captured(warmup))
    has_doa = any(spec.kind == "doa" for spec in loaded.config.chain)
    rows: list[dict[str, float]] = []
    stage_p50: dict[str, list[float]] = {spec.name: [] for spec in loaded.config.chain}
    cpu_s = audio_s = 0.0
    for item in items:
        noisy, clean_path = item_paths(item)
        meta = item_meta(item)
        segments = meta.get("speech_segments_s", meta.get("speech_segments", []))
        seen = _Published(loaded.config.processing.rate, DOA_DEG)
        clean, c_rate = read_audio(str(clean_path))
        t0 = time.process_time()
        result = process_file(loaded, as_captured(noisy), on_frame=seen.take)
        cpu_s += time.process_time() - t0
        audio_s += result.samples / result.rate
        y = result.audio[0].astype(np.float64)
        row = score(resample_hq(clean[0], c_rate, result.rate), result.audio[0], result.rate)
        row["vad_acc"] = float(np.mean([flag == _speech_at(segments, t) for t, flag in seen.frames]))
        spectrum = np.abs(np.fft.rfft(y)) ** 2
        low = spectrum[np.fft.rfftfreq(y.size, 1 / result.rate) < LF_HZ].sum()
        row["lf_db"] = 10 * math.log10((low + 1e-20) / (spectrum.sum() + 1e-20))
        row["level_db"] = 10 * math.log10(float(np.mean(y * y)) + 1e-20)
        if has_doa:
            err = abs((seen.doa - meta["target_azimuth_deg"] + 180.0) % 360.0 - 180.0)
            row["doa_err"] = err if math.isfinite(err) else 180.0
        rows.append(row)
        for name in stage_p50:
            stage_p50[name].append(result.timings[name][0])
    keys = ["si_sdr", "pesq", "stoi", "vad_acc", "lf_db", "level_db"] + (["doa_err"] if has_doa else [])
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows if math.isfinite(r[k])] or [math.nan]))
                           for k in keys}
    out["doa_err"] = out.get("doa_err")
    out["rtf"] = cpu_s / audio_s
    out["stage_us"] = {name: float(np.mean(v)) for name, v in stage_p50.items()}
    return out


def budget_scale() -> float:
    """``VOXD_CPU_BUDGET_SCALE`` (default 1): every CPU budget times this, for a slower machine."""
    return float(os.environ.get("VOXD_CPU_BUDGET_SCALE", "1"))


def failures(floor: Floor, got: dict[str, Any]) -> list[str]:
    """What ``got`` (from :func:`measure`) breaks of ``floor``, one line each; empty when it passes."""
    bad = []
    for key in ("si_sdr", "pesq", "stoi", "vad_acc"):
        if not got[key] >= getattr(floor, key):  # NaN (a metric that cannot be computed) fails too
            bad.append(f"{key} {got[key]:.3f} below its floor {getattr(floor, key)}")
    if not got["lf_db"] <= floor.lf_db:
        bad.append(f"lf_db {got['lf_db']:.1f} above its ceiling {floor.lf_db}")
    if not abs(got["level_db"] - floor.level_db) <= LEVEL_TOLERANCE_DB:
        bad.append(f"level_db {got['level_db']:.2f} not within {LEVEL_TOLERANCE_DB} dB of {floor.level_db}")
    if floor.doa_err is not None and not got["doa_err"] <= floor.doa_err:
        bad.append(f"doa_err {got['doa_err']:.1f} above its ceiling {floor.doa_err}")
    scale = budget_scale()
    if not got["rtf"] <= floor.rtf * scale:
        bad.append(f"CPU RTF {got['rtf']:.3f} over its budget {floor.rtf * scale:.3f}")
    for name, budget in floor.stage_us.items():
        if not got["stage_us"][name] <= budget * scale:
            bad.append(f"stage {name}: p50 {got['stage_us'][name]:.1f} us over its budget "
                       f"{budget * scale:.1f} us")
    return bad


def suggest(figures: dict[str, Any], items: tuple[str, ...]) -> Floor:
    """The row that today's ``figures`` give (see the module doc)."""
    doa = figures["doa_err"]
    return Floor(items, si_sdr=round(figures["si_sdr"] - MARGIN["si_sdr"], 2),
                 pesq=round(figures["pesq"] - MARGIN["pesq"], 3),
                 stoi=round(figures["stoi"] - MARGIN["stoi"], 3),
                 vad_acc=round(figures["vad_acc"] - MARGIN["vad_acc"], 3),
                 lf_db=round(figures["lf_db"] + MARGIN["lf_db"], 1),
                 level_db=round(figures["level_db"], 2),
                 doa_err=None if doa is None else round(doa + MARGIN["doa_err"], 1),
                 rtf=round(BUDGET_FACTOR * figures["rtf"], 3),
                 stage_us={name: round(max(STAGE_FACTOR * us, us + STAGE_SLACK_US), 1)
                           for name, us in figures["stage_us"].items()})


ITEM_SETS = {MONO_ITEMS: "MONO_ITEMS", HAT_ITEMS: "HAT_ITEMS", USB_ITEMS: "USB_ITEMS", SIX_ITEMS: "SIX_ITEMS"}


def row_text(config: str, floor: Floor) -> str:
    """``floor`` as a row of :data:`FLOORS` (Python source)."""
    items = ITEM_SETS.get(floor.items, repr(floor.items))
    lines, line = [], "        stage_us={"
    for k, v in floor.stage_us.items():
        entry = f'"{k}": {v}, '
        if len(line) + len(entry) > 100:
            lines.append(line.rstrip())
            line = "                  "
        line += entry
    lines.append(line.rstrip().rstrip(",") + "}),")
    return (f'    "{config}": Floor(\n        {items}, si_sdr={floor.si_sdr}, pesq={floor.pesq}, '
            f"stoi={floor.stoi}, vad_acc={floor.vad_acc},\n        lf_db={floor.lf_db}, "
            f"level_db={floor.level_db}, doa_err={floor.doa_err}, rtf={floor.rtf},\n" + "\n".join(lines))


#: The items of each shipped config, for a config that has no row yet.
DEFAULT_ITEMS = {"config/default.yaml": HAT_ITEMS, "config/demo.yaml": HAT_ITEMS,
                 "config/mono.yaml": MONO_ITEMS, "config/mono-neural.yaml": MONO_ITEMS,
                 "config/respeaker-4mic-hat.yaml": HAT_ITEMS, "config/respeaker-usb-4mic.yaml": USB_ITEMS,
                 "config/respeaker-6mic.yaml": SIX_ITEMS, "config/listening.yaml": HAT_ITEMS,
                 "config/respeaker-2mic-hat.yaml": USB_ITEMS}


def main(argv: list[str]) -> int:
    """Print today's figures per shipped config (one JSON line each, on stderr) and the rows they give."""
    for name in argv or list(DEFAULT_ITEMS):
        items = FLOORS[name].items if name in FLOORS else DEFAULT_ITEMS[name]
        figures = measure(ROOT / name, items, CHANNELS.get(name))
        print(json.dumps({"config": name, **figures}), file=sys.stderr, flush=True)
        print(row_text(name, suggest(figures, items)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
