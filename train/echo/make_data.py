"""Training pairs for the learned residual-echo suppressor (issue 18), from training-allowed audio only.

Run from the repository root with the project's venv (it needs voxd's ``aec`` stage and SpeexDSP, not
torch)::

    .venv/bin/python train/echo/make_data.py --data /work/voxd-train/data --out /work/voxd-train/echo \\
        --split train --items 2000
    .venv/bin/python train/echo/make_data.py ... --split val --items 96

``--data`` is the denoiser's prepared data (``train/denoise/prepare_data.py``): its speech and noise
pools (the reserved-for-evaluation packages and the evaluation sets' synthetic voices are excluded there,
see its data card) and its bank of simulated room impulse responses. What a voice assistant's
microphone hears while it plays something (one microphone, 16 kHz, ``ITEM_S`` s per item):

- **far end** (what the device plays; the reference): speech of the training pool (p 0.5: other
  talkers than the near end), recorded music (p 0.35) or a TV-like mix of both (p 0.15), starting at
  0.1-0.6 s, reference active level -32..-12 dBFS;
- **loudspeaker**: the echo set's small-loudspeaker model (``bench/echoset.py`` ``loudspeaker``: causal
  band-pass, soft clipper) with wider ranges: high-pass 100-400 Hz, low-pass 4.5-7.9 kHz, non-linear
  part 45-20 dB under the output;
- **echo path**: a fractional-delay direct path (the loudspeaker a few centimetres away) plus a room tail
  from the RIR bank, direct-to-reverberant ratio 3..20 dB; the reference leads the echo by 0-200 ms;
  optional **path change** (p 0.3, at 2.5-6 s: volume -6..+12 dB or a new path, 20 ms cross-fade) and
  **clock drift** (p 0.15: the reference resampled by +-20..150 ppm, as an uncompensated separate device);
  echo active level at the microphone -38..-14 dBFS;
- **near end** (p 0.65): training speech from 0.3-5 s on, through a room RIR of the bank (the whole
  reverberant image), signal-to-echo ratio -18..+6 dB;
- **noise**: the denoiser's noise kinds at 12..40 dB under the echo, microphone self-noise; a random
  microphone response (p 0.5) on all the microphone hears; scaled down together if a sample passes 0.99.

Then the shipped canceller runs on it exactly as in the stage (``voxd_aec.stage._Speex``, linear only:
``suppress: false``; delay estimation and alignment included). Stored per item (int16, full scale 1.0):
``lin`` the linear filter's output, ``est`` its echo estimate (microphone - ``lin``), ``ref`` the
reference as aligned for the filter, ``target`` = near end + noise lowered by ``NOISE_TARGET_DB`` (what
the suppressor should leave: the user, and the room quieter, as SpeexDSP's suppressor does). Files:
``OUT/<split>.i16`` (items, 4, samples) row-major, ``OUT/<split>.jsonl`` (one record per item: its recipe
and sources), ``OUT/card.md`` (the data card). Items are a pure function of ``(seed, split, index)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import soxr
from scipy.signal import fftconvolve

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "train" / "denoise"), str(ROOT / "bench"), str(ROOT / "plugins"), str(ROOT)]
from data import MixtureMaker, active_power, mic_response, sosfilt  # noqa: E402
from echoset import loudspeaker  # noqa: E402
from voxd_aec.stage import AecParams, _Speex  # noqa: E402

RATE, HOP = 16000, 160
ITEM_S = 8.0
NOISE_TARGET_DB = -15.0  # the noise in the target, relative to the noise at the microphone
STREAMS = ("lin", "est", "ref", "target")
SPLIT_SEED = {"train": 1, "val": 2}
SPEAKER = SimpleNamespace(highpass_hz=(100.0, 400.0), lowpass_hz=(4500.0, 7900.0),
                          nonlinear_db=(-45.0, -20.0))


def frac_delay(delay: float, taps: int = 33) -> np.ndarray:
    """A windowed-sinc impulse at ``delay`` samples (>= taps // 2), (ceil(delay) + taps // 2 + 1,)."""
    n = np.arange(int(np.ceil(delay)) + taps // 2 + 1)
    h = np.sinc(n - delay) * np.clip(0.5 + 0.5 * np.cos(np.pi * (n - delay) / (taps // 2 + 1)), 0, None)
    h[np.abs(n - delay) > taps // 2 + 1] = 0.0
    return h


def echo_path(maker: MixtureMaker, rng: np.random.Generator) -> np.ndarray:
    """Loudspeaker-to-microphone impulse response, float64: a direct path 16.5-20 samples in (plus a
    table reflection) over a room tail of the bank, direct-to-reverberant ratio 3..20 dB."""
    i = int(rng.integers(len(maker.rir)))
    room = maker.rir[i].astype(np.float64)
    d = int(maker.rir_direct[i])
    tail = room.copy()
    tail[: d + 48] = 0.0  # the bank's direct path and first 3 ms: replaced by the close loudspeaker's
    tail[d + 48 : d + 112] *= np.linspace(0.0, 1.0, 64)
    direct = frac_delay(16.5 + rng.uniform(0, 3.5))
    if rng.random() < 0.7:  # the table / enclosure: one strong early reflection 0.2-1.5 ms later
        direct = np.pad(direct, (0, 40))
        direct += rng.uniform(0.2, 0.7) * np.pad(frac_delay(16.5 + rng.uniform(3, 24)), (0, 80))[:direct.size]
    h = np.zeros(max(room.size, direct.size))
    h[: direct.size] += direct
    p_d = float(np.sum(direct**2))
    p_t = float(np.sum(tail**2)) + 1e-12
    h[: tail.size] += tail * np.sqrt(p_d / p_t * 10 ** (-rng.uniform(3.0, 20.0) / 10))
    return h


def farend_content(maker: MixtureMaker, rng: np.random.Generator, n: int) -> tuple[np.ndarray, str]:
    """What the device plays, (n,) float32 at ~unit active level, and its kind."""
    u = rng.random()
    if u < 0.5:
        return maker.speech_segment(rng, n), "speech"
    if u < 0.85:
        x = maker.recorded(rng, n, "music")
        if x is not None and active_power(x) > 1e-10:
            return x, "music"
        return maker.speech_segment(rng, n), "speech"
    return maker.tv(rng, n), "tv"


def norm_active(x: np.ndarray, level_db: float) -> np.ndarray:
    """``x`` scaled to an active level of ``level_db`` dBFS."""
    return x * np.float32(10 ** (level_db / 20) / np.sqrt(active_power(x) + 1e-20))


def make_mixture(maker: MixtureMaker, rng: np.random.Generator, n: int) -> dict[str, Any]:
    """One item before the canceller: microphone, reference, target (float64 (n,)) and its recipe."""
    delay = int(rng.integers(0, int(0.2 * RATE) + 1))
    far_start = int(rng.uniform(0.1, 0.6) * RATE)
    content, far_kind = farend_content(maker, rng, n - far_start)
    ref_level = float(rng.uniform(-32.0, -12.0))
    drive = np.zeros(n)
    drive[far_start:] = norm_active(content, ref_level)
    peak = float(np.abs(drive).max())
    if peak > 0.99:
        drive *= 0.99 / peak
    emitted, spk = loudspeaker(drive, rng, SPEAKER)  # type: ignore[arg-type]
    h1 = echo_path(maker, rng)
    echo = fftconvolve(emitted, h1)[:n]
    change: dict[str, Any] | None = None
    if rng.random() < 0.3:
        at = int(rng.uniform(2.5, 6.0) * RATE)
        w = np.clip((np.arange(n) - at) / 320 + 0.5, 0.0, 1.0)
        if rng.random() < 0.5:
            g = float(rng.uniform(-6.0, 12.0))
            echo = echo * (1 - w) + echo * w * 10 ** (g / 20)
            change = {"at_s": at / RATE, "kind": "volume", "gain_db": round(g, 1)}
        else:
            echo = echo * (1 - w) + fftconvolve(emitted, echo_path(maker, rng))[:n] * w
            change = {"at_s": at / RATE, "kind": "moved"}
    echo = np.concatenate([np.zeros(delay), echo])[:n]  # the reference leads its echo by `delay`
    ppm = 0.0
    ref = drive
    if rng.random() < 0.15:
        ppm = float(rng.choice([-1, 1]) * rng.uniform(20.0, 150.0))
        ref = soxr.resample(drive, RATE, RATE * (1 + ppm * 1e-6), quality="HQ")[:n]
        ref = np.pad(ref, (0, n - ref.size))
    echo_level = float(rng.uniform(-38.0, -14.0))
    echo *= 10 ** (echo_level / 20) / np.sqrt(active_power(echo) + 1e-20)

    near = np.zeros(n)
    ser = None
    if rng.random() < 0.65:
        start = int(rng.uniform(0.3, 5.0) * RATE)
        s = maker.speech_segment(rng, n - start)
        if rng.random() < 0.3:
            s = maker.perturb_speed(rng, s, n - start)
        h = maker.rir[int(rng.integers(len(maker.rir)))].astype(np.float64)
        near[start:] = fftconvolve(s, h)[: n - start]
        ser = float(rng.uniform(-18.0, 6.0))
        near = norm_active(near, echo_level + ser)
    noise = maker.noise_segment(rng, n).astype(np.float64)
    noise_db = echo_level - float(rng.uniform(12.0, 40.0))
    noise *= 10 ** (noise_db / 20) / np.sqrt(np.mean(noise**2) + 1e-20)
    noise += 10 ** (rng.uniform(-95, -70) / 20) * rng.standard_normal(n)
    mic = echo + near + noise
    target = near + noise * 10 ** (NOISE_TARGET_DB / 20)
    if rng.random() < 0.5:  # the microphone colours all it hears (the echo estimate follows the mic)
        sos = mic_response(rng)
        mic, target = sosfilt(sos, mic), sosfilt(sos, target)
    peak = float(np.abs(mic).max())
    if peak > 0.99:
        mic, target = mic * 0.99 / peak, target * 0.99 / peak
    return {"mic": mic, "ref": ref, "target": target,
            "recipe": {"delay_ms": delay / 16, "far_start_s": far_start / RATE, "far_kind": far_kind,
                       "ref_level_dbfs": round(ref_level, 1), "echo_level_dbfs": round(echo_level, 1),
                       "ser_db": None if ser is None else round(ser, 1), "noise_db": round(noise_db, 1),
                       "change": change, "drift_ppm": round(ppm, 1),
                       "loudspeaker": {k: spk[k] for k in ("highpass_hz", "lowpass_hz", "nonlinear_db")}}}


def cancel(mic: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped linear canceller on one item: (lin, est, aligned ref), int16 (n,) each."""
    eng = _Speex(1, 1, RATE, HOP, AecParams(suppress=False))
    n = mic.size // HOP * HOP
    m32 = mic[:n].astype(np.float32)[None]
    r32 = ref[:n].astype(np.float32)[None]
    lin = np.empty(n, np.int16)
    al = np.empty(n, np.int16)
    for a in range(0, n, HOP):
        eng.process(m32[:, a : a + HOP], r32[:, a : a + HOP])
        lin[a : a + HOP] = eng.canceller.linear[0]
        al[a : a + HOP] = eng.aligned[0]
    eng.close()
    m16 = (np.clip(m32[0], -1, 1) * 32767).round().astype(np.int32)
    est = np.clip(m16 - lin, -32768, 32767).astype(np.int16)
    return lin, est, al


def i16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).round().astype(np.int16)


CARD = """# Data card: residual-echo suppressor training pairs (train/echo/make_data.py)

Generated, not downloaded: every item mixes audio of the denoiser's prepared pools
(`train/denoise/prepare_data.py`: Debian packages pinned there, with versions and licences in its data
card; the reserved-for-evaluation packages and the evaluation sets' voices are excluded there) with the
echo set's loudspeaker model and the denoiser's simulated room impulse responses (pyroomacoustics 0.10.1,
MIT). Nothing of `../shared/bench` and nothing of the echo test set (`bench/echoset.py`: flite/festival
voices, extremetuxracer-data music, its REPLIES texts) is used.

| split | items | seconds each | hours | seed |
|---|---:|---:|---:|---:|
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/voxd-train/data"))
    ap.add_argument("--out", type=Path, default=Path("/work/voxd-train/echo"))
    ap.add_argument("--split", choices=sorted(SPLIT_SEED), default="train")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=18)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n = int(ITEM_S * RATE)
    maker = MixtureMaker(args.data, "train" if args.split == "train" else "val")
    arr = np.lib.format.open_memmap(args.out / f"{args.split}.npy", mode="w+", dtype=np.int16,
                                    shape=(args.items, len(STREAMS), n))  # fmt: skip
    t0 = time.monotonic()
    with open(args.out / f"{args.split}.jsonl", "w") as meta:
        for i in range(args.items):
            rng = np.random.default_rng([args.seed, SPLIT_SEED[args.split], i])
            mix = make_mixture(maker, rng, n)
            lin, est, al = cancel(mix["mic"], mix["ref"])
            arr[i, 0], arr[i, 1], arr[i, 2], arr[i, 3] = lin, est, al, i16(mix["target"])
            meta.write(json.dumps({"index": i, **mix["recipe"]}) + "\n")
            if (i + 1) % 50 == 0:
                el = time.monotonic() - t0
                print(f"{args.split}: {i + 1}/{args.items} items, {el:.0f} s", flush=True)
    arr.flush()
    card = args.out / "card.md"
    rows = card.read_text().splitlines()[CARD.count("\n"):] if card.exists() else []
    rows = [r for r in rows if not r.startswith(f"| {args.split} ")]
    hours = args.items * ITEM_S / 3600
    rows.append(f"| {args.split} | {args.items} | {ITEM_S:g} | {hours:.2f} | {args.seed} |")
    card.write_text(CARD + "\n".join(sorted(rows)) + "\n")
    print(f"{args.split}: {args.items} items -> {args.out} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
