"""Quality floors and CPU budgets of the shipped configs: the table, and the measurement behind it.

Every config in ``config/*.yaml`` runs, as ``voxd process`` runs it, on a few items of the shared dev
set (``../shared/bench/dev``: noisy input, clean reference); the output's channel 0 is scored against
the clean reference with ``voxd eval``'s scorer (:func:`voxd.metrics.score`): SI-SDR (dB),
PESQ-WB and STOI, each the mean over the config's items. The CPU cost is the process CPU time of the
whole run (decoding, resampling, chain, framing) over the audio's duration: the real-time factor on
speech, as ``voxd bench`` reports it (``rtf_cpu``), on this run's items.

:data:`FLOORS` is the one place the limits live. ``tests/test_floors.py`` fails when a mean falls below
its floor or the RTF exceeds its budget. To re-set the table after an intended change (a new model, a
new chain), run::

    .venv/bin/python -m tests.floors            # today's figures and the floors they suggest

and copy the printed rows into :data:`FLOORS`. Floors are today's figure minus :data:`MARGIN` (the
runs are deterministic: the margin absorbs other machines' float rounding, not noise); budgets are
:data:`BUDGET_FACTOR` times today's RTF (generous for a loaded machine, yet a stage that became 10x
slower breaks them when it is a fair part of the chain's cost). ``VOXD_CPU_BUDGET_SCALE`` (a number)
multiplies every budget on a slower machine.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEV = Path(os.environ.get("VOXD_DEV_SET", ROOT.parent / "shared" / "bench" / "dev"))

#: Subtracted from today's figure to give a floor (SI-SDR in dB, PESQ-WB in MOS, STOI in 0..1).
MARGIN = {"si_sdr": 0.3, "pesq": 0.05, "stoi": 0.01}
#: Today's CPU real-time factor times this is the budget.
BUDGET_FACTOR = 3.0
#: Items (``SET/ID`` in the dev set) per kind of input: mono configs, and each array geometry.
MONO_ITEMS = ("mono/dm001", "mono/dm015")
HAT_ITEMS = ("array/array-dev-006", "array/array-dev-012")
USB_ITEMS = ("array/array-dev-000", "array/array-dev-002")
SIX_ITEMS = ("array/array-dev-015", "array/array-dev-011")


@dataclass(frozen=True)
class Floor:
    """The limits of one shipped config: ``items`` it runs on; the lowest acceptable mean SI-SDR (dB),
    PESQ-WB and STOI of its output; ``rtf``: the highest acceptable CPU real-time factor (CPU s per
    audio s)."""

    items: tuple[str, ...]
    si_sdr: float
    pesq: float
    stoi: float
    rtf: float


#: One row per shipped config (path relative to the repository). Re-set with ``python -m tests.floors``.
FLOORS: dict[str, Floor] = {
    "config/default.yaml": Floor(HAT_ITEMS, si_sdr=2.49, pesq=1.556, stoi=0.812, rtf=0.327),
    "config/demo.yaml": Floor(HAT_ITEMS, si_sdr=-4.1, pesq=1.573, stoi=0.784, rtf=0.193),
    "config/mono.yaml": Floor(MONO_ITEMS, si_sdr=0.25, pesq=1.349, stoi=0.63, rtf=0.163),
    "config/mono-neural.yaml": Floor(MONO_ITEMS, si_sdr=-0.64, pesq=1.181, stoi=0.651, rtf=0.224),
    "config/respeaker-4mic-hat.yaml": Floor(HAT_ITEMS, si_sdr=8.33, pesq=1.525, stoi=0.814, rtf=0.32),
    "config/respeaker-usb-4mic.yaml": Floor(USB_ITEMS, si_sdr=2.81, pesq=1.309, stoi=0.733, rtf=0.31),
    "config/respeaker-6mic.yaml": Floor(SIX_ITEMS, si_sdr=-4.06, pesq=1.093, stoi=0.639, rtf=0.535),
}


def item_paths(item: str) -> tuple[Path, Path]:
    """(noisy, clean) paths of dev item ``SET/ID``."""
    set_name, item_id = item.split("/")
    return DEV / set_name / "noisy" / f"{item_id}.flac", DEV / set_name / "clean" / f"{item_id}.flac"


def dev_set_present() -> bool:
    """Whether every item the table names is there."""
    return all(p.is_file() for f in FLOORS.values() for i in f.items for p in item_paths(i))


def measure(config: str | Path, items: tuple[str, ...]) -> dict[str, float]:
    """Mean SI-SDR (dB), PESQ-WB, STOI of ``config``'s output over ``items``, and ``rtf``: the CPU time
    of the runs over their audio duration (s/s)."""
    from voxd.config import load_config
    from voxd.metrics import resample_hq, score
    from voxd.runtime import process_file
    from voxd.sources.file import read_audio

    loaded = load_config(str(config))
    rows: list[dict[str, float]] = []
    cpu_s = audio_s = 0.0
    for item in items:
        noisy, clean_path = item_paths(item)
        clean, c_rate = read_audio(str(clean_path))
        t0 = time.process_time()
        result = process_file(loaded, str(noisy))
        cpu_s += time.process_time() - t0
        audio_s += result.samples / result.rate
        rows.append(score(resample_hq(clean[0], c_rate, result.rate), result.audio[0], result.rate))
    metrics = ("si_sdr", "pesq", "stoi")
    means = {m: float(np.mean([r[m] for r in rows if math.isfinite(r[m])])) for m in metrics}
    return {**means, "rtf": cpu_s / audio_s}


def budget_scale() -> float:
    """``VOXD_CPU_BUDGET_SCALE`` (default 1): every budget times this, for a slower machine."""
    return float(os.environ.get("VOXD_CPU_BUDGET_SCALE", "1"))


def suggest(figures: dict[str, float], items: tuple[str, ...]) -> Floor:
    """The floor row that today's ``figures`` give."""
    return Floor(items, si_sdr=round(figures["si_sdr"] - MARGIN["si_sdr"], 2),
                 pesq=round(figures["pesq"] - MARGIN["pesq"], 3),
                 stoi=round(figures["stoi"] - MARGIN["stoi"], 3),
                 rtf=round(BUDGET_FACTOR * figures["rtf"], 3))


def main(argv: list[str]) -> int:
    """Print today's figures per shipped config (one JSON line each) and the rows they suggest."""
    names = argv or list(FLOORS)
    for name in names:
        floor = FLOORS[name]
        figures = measure(ROOT / name, floor.items)
        print(json.dumps({"config": name, **{k: round(v, 4) for k, v in figures.items()}}), flush=True)
        print(f"    {name!r}: {suggest(figures, floor.items)},", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
