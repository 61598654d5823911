#!/usr/bin/env python3
"""The peer benchmark's test set: English commands in simulated rooms, heard by a ReSpeaker 4-mic HAT.

    python bench/testset.py [--cache DIR] [--items 30] [--seed 9] [--force]

Builds (once; later calls reuse it) a 4-channel set in the ``meta.jsonl`` layout of ``../shared/bench``
under ``CACHE/set`` (default cache: ``$VOXD_PEERSET_CACHE``, else ``$XDG_CACHE_HOME/voxd/peerset``, else
``~/.cache/voxd/peerset``), so that ``config/default.yaml`` (the 4-mic HAT chain) runs on it as shipped
and the same items serve quality metrics (PESQ-WB, STOI, SI-SDR) and word error rate:

- **speech**: sentences a voice assistant hears (:data:`COMMANDS`, :data:`LONGER`, written for this set),
  spoken by Debian's synthesisers: ``flite`` voices slt, rms, awb, kal16 and ``festival`` voices
  cmu_us_slt_arctic_hts (festvox-us-slt-hts), kal_diphone (festvox-kallpc16k), ked_diphone
  (festvox-kdlpc16k). The text of each item is in ``text``.
- **rooms**: pyroomacoustics shoebox image-source simulation, RT60 0.2-0.7 s (Sabine design, corrected
  once against the RT60 measured on the talker's RIR, T30), the 4-mic HAT (``voxd.geometry`` preset
  ``respeaker-4mic-hat``, channel i = mic i) on a table, the talker 0.8-3 m away at a random azimuth,
  one noise kind per item from point source(s) elsewhere in the room, plus a little spatially diffuse
  pink noise (isotropic coherence) and independent mic self-noise.
- **noise** (:data:`KINDS`), one per item, cycled so that every kind meets five different SNRs:
  ``babble`` (four flite/festival talkers at four places, saying :data:`BABBLE` sentences, never the
  target's voice), ``music`` (extremetuxracer-data music), ``wind`` (lugaru-data ambiences),
  ``rumble`` (extremetuxracer-data slide sounds: broadband rushing), ``talker`` (a real English talker,
  the tutorial voice of warzone2100-data, like a TV or radio voice), ``fan`` (synthetic: coloured noise
  with a blade-pass flutter and mains hum). None of these packages is used by the denoisers' training
  (``plugins/voxd_denoise/train/README.md``, ``train/denoise/README.md``) nor by ``../shared/bench/dev``,
  and none is reserved for evaluation by the project's issues (generator 2 took its talker from
  asterisk-core-sounds-en-g722, which issue 15 reserved). The packages are fetched with ``apt-get
  download`` + ``dpkg-deb -x`` into the cache (``prepare_data.fetch``), never installed; game archives
  (``*.wz``: zip) are unpacked beside themselves; flite, festival and its voices must be installed
  (``make bench-peers`` does it).
- **levels**: SNR (``snr_db``) in {-5, 0, 5, 10, 15, 20} dB at mic 0: the active level of the talker's
  whole reverberant image over the frames where the reference is active, against the power of all noise
  (point sources, diffuse, self-noise) over the item (also ``snr_total_db``; ``sir_db``: against the point
  source(s) alone, as in the shared array sets); speech active level -38..-24 dBFS at mic 0; all
  scaled down together if a sample would exceed 0.99.
- **reference** (``clean``): as in ``../shared/bench/dev/array``: the dry talker convolved with the
  first 50 ms of its mic-0 RIR after the direct path (direct path + early reflections), same gain as in
  ``noisy``.

Files: ``noisy/<id>.flac`` (4 ch), ``clean/<id>.flac`` (mono), 16-bit, 16 kHz; ``meta.jsonl``;
``manifest.json`` (package versions, every file's sha256 and ``set_sha256``, a hash of ``meta.jsonl``
and every audio file). Everything is seeded: a rebuild with the same packages gives the same hashes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, istft, stft

from voxd.geometry import SPEED_OF_SOUND, mic_azimuths_deg, preset_positions

GENERATOR = "voxd bench/testset.py 3"  # bump when the recipe changes: the cache is rebuilt
RATE = 16000
GEOMETRY = "respeaker-4mic-hat"
EARLY_MS = 50.0  # reference = direct path + reflections up to this long after it
PRA_OFFSET = 40  # pyroomacoustics centres its fractional-delay filter (81 taps) 40 samples late
SEED = 9
N_ITEMS = 30
SNRS_DB = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)
KINDS = ("babble", "music", "wind", "rumble", "talker", "fan")
ROOT = Path(__file__).resolve().parents[1]

COMMANDS = (
    "Turn on the kitchen lights.",
    "Set a timer for ten minutes.",
    "What is the weather like tomorrow?",
    "Play some music in the living room.",
    "Turn the volume down.",
    "Stop the alarm.",
    "What time is it?",
    "Call my mother.",
    "Add milk to the shopping list.",
    "Remind me to water the plants at six.",
    "Open the garage door.",
    "Turn off all the lights downstairs.",
    "How long will it take to drive to work?",
    "Skip this song.",
    "Set the thermostat to twenty degrees.",
    "Wake me up at seven in the morning.",
    "What is on my calendar today?",
    "Read me the news.",
    "Pause the movie.",
    "Is it going to rain this afternoon?",
    "Lock the front door.",
    "How many ounces are in a cup?",
    "Dim the bedroom lights to half.",
    "Tell me a joke.",
    "Send a message to Peter saying I am running late.",
    "Turn on the fan in the office.",
    "What is the capital of Australia?",
    "Cancel my next meeting.",
    "Play the next episode.",
    "How far away is the moon?",
    "Start the vacuum cleaner.",
    "Turn up the heat in the bathroom.",
    "Where is the nearest pharmacy?",
    "Make the lights warmer.",
    "Close the blinds in the living room.",
    "How do you say thank you in Spanish?",
    "Set an alarm for half past five.",
    "What is twelve times fifteen?",
    "Order more coffee filters.",
    "Turn off the television.",
    "Who won the football game last night?",
    "Find my phone.",
)
LONGER = (
    "Remind me tomorrow morning to call the dentist and ask about moving my appointment to next week.",
    "Can you find a vegetarian recipe for dinner that takes less than thirty minutes to cook?",
    "Please turn off the lights in the kitchen and the hallway, but leave the porch light on.",
    "What is the traffic like on the way to the airport if I leave in twenty minutes?",
    "Add eggs, butter, flour and two lemons to my shopping list for the weekend.",
    "Play the playlist I listened to yesterday evening and shuffle the songs.",
    "Send an email to the team saying the meeting has moved to three in the afternoon.",
    "How many miles is it from here to the city centre, and how long does the bus take?",
    "Set the living room temperature to twenty one degrees and turn on the heater in the bedroom.",
    "Tell me the latest headlines and then give me the weather forecast for the weekend.",
    "Start a timer for the pasta and remind me when the water is boiling.",
    "Could you read the last message from my sister and reply that I will be there at eight?",
)
BABBLE = (  # only ever heard as interference
    "The museum opens at nine and closes early on Sundays.",
    "I think we should paint the fence before the summer.",
    "She bought a new bicycle with a bright red frame.",
    "The train was delayed because of the heavy snow.",
    "Our neighbours are having a party on Saturday night.",
    "He forgot his umbrella at the restaurant again.",
    "The children built a castle out of cardboard boxes.",
    "Let us meet at the corner cafe after lunch.",
    "The garden looks beautiful after the rain.",
    "They are planning a trip to the mountains next month.",
    "My brother is learning to play the violin.",
    "The soup needs a little more salt and pepper.",
    "We watched an old film about a lighthouse keeper.",
    "The library has a new collection of travel books.",
    "Nobody expected the match to end in a draw.",
    "The baker starts work long before sunrise.",
    "Please pass the bread and the olive oil.",
    "A small boat drifted slowly across the lake.",
    "The meeting ran late so we ordered pizza.",
    "Her grandmother tells the best stories about the village.",
)


@dataclass(frozen=True)
class Voice:
    """A synthetic talker: ``engine`` ``flite`` or ``festival``, its voice name and Debian package."""

    engine: str
    name: str
    package: str

    @property
    def id(self) -> str:
        return f"{self.engine}/{self.name}"


VOICES = (
    Voice("flite", "slt", "flite"),
    Voice("flite", "rms", "flite"),
    Voice("flite", "awb", "flite"),
    Voice("flite", "kal16", "flite"),
    Voice("festival", "cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
    Voice("festival", "kal_diphone", "festvox-kallpc16k"),
    Voice("festival", "ked_diphone", "festvox-kdlpc16k"),
)

# kind -> (Debian package, regex on the path inside it)
RECORDED = {
    "music": ("extremetuxracer-data", r"usr/share/games/etr/music/[^/]+\.ogg$"),
    "rumble": ("extremetuxracer-data", r"usr/share/games/etr/sounds/[^/]+_slide\.wav$"),
    "wind": ("lugaru-data", r"usr/share/games/lugaru/Sounds/(Wind|DesertAmbient)\.ogg$"),
    "talker": ("warzone2100-data", r"usr/share/games/warzone2100/base\.wz\.d/audio/tutorial/tut\d+\.ogg$"),
}


@dataclass
class SetConfig:
    """What to build. Durations in seconds, distances in metres, levels in dB / dBFS."""

    n_items: int = N_ITEMS
    seed: int = SEED
    kinds: tuple[str, ...] = KINDS
    snrs_db: tuple[float, ...] = SNRS_DB
    duration_s: tuple[float, float] = (4.0, 8.0)
    rt60_s: tuple[float, float] = (0.2, 0.7)
    distance_m: tuple[float, float] = (0.8, 3.0)
    room_m: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = (
        (3.5, 8.0), (3.0, 6.0), (2.5, 3.2))
    speech_level_dbfs: tuple[float, float] = (-38.0, -24.0)
    diffuse_below_db: tuple[float, float] = (10.0, 16.0)  # diffuse noise this far under the point noise
    self_noise_below_db: float = 60.0  # mic self-noise this far under the speech active level
    babble_talkers: int = 4
    id_prefix: str = "peer"


# ---------------------------------------------------------------- sources of audio
class Speech(Protocol):
    """Text-to-speech: ``synth`` returns float32 mono 16 kHz ``(n,)`` with silence trimmed."""

    voices: tuple[Voice, ...]

    def synth(self, voice: Voice, text: str) -> np.ndarray: ...

    def versions(self) -> dict[str, str]: ...


class Recorded(Protocol):
    """Recorded noise: ``segment`` returns float32 mono 16 kHz ``(n,)`` of ``kind`` and its source record."""

    def segment(self, kind: str, n: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]: ...

    def versions(self) -> dict[str, str]: ...


def _prepare_data() -> ModuleType:
    """The denoiser's data script (``fetch``: apt-get download + dpkg-deb -x; ``decode``: any audio file
    to float32 mono 16 kHz), imported from its file: it is a script, not a package module."""
    name = "voxd_train_prepare_data"
    if name not in sys.modules:
        path = ROOT / "train" / "denoise" / "v1" / "prepare_data.py"  # the v1 recipe's script
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up there while the file runs
        spec.loader.exec_module(mod)
    return sys.modules[name]


def deb_version(package: str) -> str:
    """Installed version of a Debian package, or ``"not installed"``."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "not installed"


def trim_silence(x: np.ndarray, below_db: float = 45.0, frame: int = 160) -> np.ndarray:
    """``x`` (n,) without leading/trailing 10 ms frames quieter than ``below_db`` under its loudest frame."""
    m = x.size // frame
    if m == 0:
        return x
    e = 10.0 * np.log10(np.mean(x[: m * frame].reshape(m, frame).astype(np.float64) ** 2, axis=1) + 1e-20)
    on = np.flatnonzero(e > e.max() - below_db)
    return x[on[0] * frame : (on[-1] + 1) * frame]


class Tts:
    """flite / festival through their command-line tools; WAVs cached under ``cache/tts``."""

    voices = VOICES

    def __init__(self, cache: Path) -> None:
        self.cache = cache / "tts"
        self.cache.mkdir(parents=True, exist_ok=True)
        self._decode = _prepare_data().decode
        missing = [t for t in ("flite", "text2wave") if shutil.which(t) is None]
        if missing:
            raise SystemExit(f"testset: {', '.join(missing)} not found: apt-get install flite festival "
                             "festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k (make bench-peers does)")

    def synth(self, voice: Voice, text: str) -> np.ndarray:
        key = hashlib.sha256(f"{voice.id}\n{text}".encode()).hexdigest()[:20]
        wav = self.cache / f"{voice.engine}-{voice.name}-{key}.wav"
        if not wav.exists():
            tmp = wav.with_suffix(".tmp.wav")
            if voice.engine == "flite":
                subprocess.run(["flite", "-voice", voice.name, "-t", text, "-o", str(tmp)], check=True)
            else:
                subprocess.run(["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(tmp)], input=text,
                               text=True, check=True, capture_output=True)
            tmp.rename(wav)
        return trim_silence(self._decode(wav))

    def versions(self) -> dict[str, str]:
        return {p: deb_version(p) for p in sorted({"festival", *(v.package for v in self.voices)})}


def unpack_archives(base: Path) -> None:
    """Unpack every game archive (``*.wz``, a zip) under ``base`` into ``<archive>.d/`` (once)."""
    import zipfile

    for wz in sorted(base.rglob("*.wz")):
        done = wz.with_name(wz.name + ".d")
        if not done.is_dir():
            tmp = wz.with_name(wz.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            with zipfile.ZipFile(wz) as z:
                z.extractall(tmp)
            tmp.rename(done)


class DebianNoise:
    """The recorded noises of :data:`RECORDED`, from packages fetched into ``cache/src``."""

    def __init__(self, cache: Path, kinds: Sequence[str]) -> None:
        pd = _prepare_data()
        self._decode = pd.decode
        packages = sorted({RECORDED[k][0] for k in kinds if k in RECORDED})
        self._versions = pd.fetch(cache / "src", packages) if packages else {}
        self.base = cache / "src" / "pkgs"
        for package in packages:
            unpack_archives(self.base / package)
        self.files: dict[str, list[Path]] = {}
        for k in kinds:
            if k not in RECORDED:
                continue
            package, pattern = RECORDED[k]
            base = self.base / package
            rx = re.compile(pattern)
            self.files[k] = sorted(p for p in base.rglob("*")
                                   if p.is_file() and rx.search(str(p.relative_to(base))))
            if not self.files[k]:
                raise SystemExit(f"testset: no files for noise kind {k!r} in {package} ({pattern})")
        self._audio: dict[Path, np.ndarray] = {}

    def _load(self, path: Path) -> np.ndarray:
        if path not in self._audio:  # voice prompts carry silence at both ends: the pauses are ours
            x = self._decode(path)
            self._audio[path] = trim_silence(x) if self._is_voice(path) else x
        return self._audio[path]

    def _is_voice(self, path: Path) -> bool:
        return path.is_relative_to(self.base / RECORDED["talker"][0])

    def segment(self, kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
        files = self.files[kind]
        root = self.base / RECORDED[kind][0]
        if kind == "talker":  # prompts one after another with short pauses, like a voice on the radio
            out, recs, pos = np.zeros(n, np.float32), [], 0
            while pos < n:
                f = files[int(rng.integers(len(files)))]
                x = self._load(f)[: n - pos]
                out[pos : pos + x.size] = x
                recs.append(self._src(kind, f, root, at_s=round(pos / RATE, 3)))
                pos += x.size + int(rng.uniform(0.15, 0.5) * RATE)
            return out, recs
        for _ in range(20):  # a segment that is not a near-silent stretch of the file
            f = files[int(rng.integers(len(files)))]
            x = self._load(f)
            start = int(rng.integers(max(1, x.size - n))) if x.size > n else 0
            seg = loop_to(x[start:], n) if x.size - start < n else x[start : start + n]
            if rms_db(seg) > rms_db(x) - 10.0:
                break
        return seg.astype(np.float32), [self._src(kind, f, root, offset_s=round(start / RATE, 3),
                                                  mode="loop" if x.size - start < n else "segment")]

    def _src(self, kind: str, path: Path, root: Path, **extra: Any) -> dict[str, Any]:
        package = RECORDED[kind][0]
        return {"role": "noise", "package": package, "version": self._versions.get(package, "?"),
                "file": "/" + str(path.relative_to(root)), **extra}

    def versions(self) -> dict[str, str]:
        return dict(self._versions)


# ---------------------------------------------------------------- signal helpers
def rms_db(x: np.ndarray) -> float:
    """RMS level of ``x`` in dBFS (-200 for silence)."""
    p = float(np.mean(np.asarray(x, np.float64) ** 2)) if x.size else 0.0
    return 10.0 * np.log10(p) if p > 0 else -200.0


def loop_to(x: np.ndarray, n: int, fade: int = 320) -> np.ndarray:
    """``x`` (m,) repeated to exactly ``n`` samples, each joint cross-faded over ``fade`` samples (20 ms)
    so that the loop does not click."""
    x = np.asarray(x, np.float32)
    if x.size >= n:
        return x[:n].copy()
    fade = min(fade, x.size // 4)
    out = x.copy()
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    while out.size < n:
        if fade:
            head = out[-fade:] * (1 - ramp) + x[:fade] * ramp
            out = np.concatenate([out[:-fade], head, x[fade:]])
        else:
            out = np.concatenate([out, x])
    return out[:n]


def active_mask(x: np.ndarray, below_db: float = 35.0, frame: int = 160, hang: int = 20) -> np.ndarray:
    """Boolean mask ``(n,)`` of the samples of ``x`` in 10 ms frames within ``below_db`` of its loudest
    frame, gaps under ``hang`` frames (200 ms) bridged: where a talker is speaking."""
    m = -(-x.size // frame)
    xp = np.pad(np.asarray(x, np.float64), (0, m * frame - x.size))
    e = 10.0 * np.log10(np.mean(xp.reshape(m, frame) ** 2, axis=1) + 1e-20)
    on = e > e.max() - below_db
    idx = np.flatnonzero(on)
    for a, b in itertools.pairwise(idx):
        if 1 < b - a <= hang:
            on[a:b] = True
    return np.repeat(on, frame)[: x.size]


def segments_s(mask: np.ndarray, rate: int = RATE) -> list[list[float]]:
    """``[[start_s, end_s], ...]`` of the runs of True in ``mask`` (samples at ``rate``)."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [[round(s / rate, 3), round(e / rate, 3)] for s, e in zip(starts, ends, strict=True)]


def fan_noise(n: int, rng: np.random.Generator, rate: int = RATE) -> tuple[np.ndarray, dict[str, Any]]:
    """A fan heater: noise with a ``1/f^alpha`` slope and a broad resonance, a blade-pass flutter
    (amplitude modulation) and mains hum with harmonics; ``(n,)`` float32 at 0.1 RMS and its recipe."""
    alpha = float(rng.uniform(0.8, 1.6))
    f0 = float(rng.uniform(150.0, 600.0))
    f = np.fft.rfftfreq(n, 1.0 / rate)
    shape = np.maximum(f, 20.0) ** (-alpha / 2) * (1.0 + 2.0 / (1.0 + ((f - f0) / (0.7 * f0)) ** 2))
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n)
    bp, depth = float(rng.uniform(8.0, 30.0)), float(rng.uniform(0.05, 0.15))
    t = np.arange(n) / rate
    x *= 1.0 + depth * np.sin(2 * np.pi * bp * t + rng.uniform(0, 2 * np.pi))
    x /= np.sqrt(np.mean(x**2))
    mains = float(rng.choice([50.0, 60.0]))
    hum = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    hum_db = float(rng.uniform(-15.0, -6.0))
    x += hum / np.sqrt(np.mean(hum**2)) * 10 ** (hum_db / 20)
    x *= 0.1 / np.sqrt(np.mean(x**2))
    recipe = {"role": "noise", "package": "synthetic", "file": "fan", "slope": round(alpha, 3),
              "resonance_hz": round(f0, 1), "blade_pass_hz": round(bp, 2), "mains_hz": mains,
              "hum_db": round(hum_db, 2)}
    return x.astype(np.float32), recipe


def diffuse_noise(positions: np.ndarray, n: int, rng: np.random.Generator, c: float = SPEED_OF_SOUND,
                  rate: int = RATE, nfft: int = 512) -> np.ndarray:
    """Spherically isotropic pink noise at mics ``positions`` ``(M, 3)`` (m): ``(M, n)`` float32, unit RMS.

    Independent noise per mic in the STFT domain, mixed per bin by the Cholesky factor of the diffuse
    field's coherence ``sinc(2 f d_ij / c)``, so every mic pair has the coherence of a diffuse field.
    """
    m = positions.shape[0]
    _, _, w = stft(rng.standard_normal((m, n + nfft)), fs=rate, nperseg=nfft, noverlap=nfft // 2)
    freqs = np.fft.rfftfreq(nfft, 1.0 / rate)
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    for k, f in enumerate(freqs):
        gamma = np.sinc(2.0 * f * d / c) + 1e-6 * np.eye(m)
        w[:, k, :] = (np.linalg.cholesky(gamma) @ w[:, k, :]) / np.sqrt(max(f, 50.0))
    _, y = istft(w, fs=rate, nperseg=nfft, noverlap=nfft // 2)
    y = y[:, :n]
    return (y / np.sqrt(np.mean(y**2))).astype(np.float32)


# ---------------------------------------------------------------- rooms
@dataclass
class Room:
    """One simulated room: ``dims`` (m), design RT60 (s), mic positions ``(M, 3)`` and source positions
    ``(S, 3)`` in room coordinates (m); source 0 is the talker."""

    dims: tuple[float, float, float]
    rt60: float
    mics: np.ndarray
    sources: np.ndarray


@dataclass
class Rirs:
    """Impulse responses ``rir[s]`` ``(M, L_s)`` of each source at each mic (sample 0 = emission; the
    direct path at ``round(distance / c * RATE) + offset``) and the RT60 measured on talker->mic 0 (s)."""

    rir: list[np.ndarray]
    rt60_measured: float
    offset: int
    c: float
    simulator: str
    absorption: float = float("nan")
    max_order: int = 0


RirFn = Callable[[Room], Rirs]


def _frac_delay(delay: float, taps: int = 2 * PRA_OFFSET + 1) -> tuple[int, np.ndarray]:
    """A Hann-windowed sinc fractional delay: (first sample index, taps); its centre is ``delay``."""
    i0 = int(np.floor(delay)) - taps // 2
    t = np.arange(taps) + i0 - delay
    return i0, np.sinc(t) * np.hanning(taps + 2)[1:-1]


def free_field_rirs(room: Room) -> Rirs:
    """Direct paths only (1/(4 pi r) spreading, fractional delays), no walls: a stand-in for tests and
    a check of the reference definition (here the reference equals the talker's whole image)."""
    out = []
    for s in room.sources:
        dist = np.linalg.norm(room.mics - s, axis=1)
        h = np.zeros((room.mics.shape[0], int(dist.max() / SPEED_OF_SOUND * RATE) + 2 * PRA_OFFSET + 4))
        for m, r in enumerate(dist):
            i0, taps = _frac_delay(r / SPEED_OF_SOUND * RATE + PRA_OFFSET)
            h[m, i0 : i0 + taps.size] += taps / (4 * np.pi * r)
        out.append(h)
    return Rirs(out, 0.0, PRA_OFFSET, SPEED_OF_SOUND, "free field (direct paths)")


def pra_rirs(room: Room) -> Rirs:
    """pyroomacoustics ShoeBox ISM with Sabine's absorption for the design RT60, re-designed once with
    the ratio of design to measured RT60 (the ISM decays slower than Sabine predicts)."""
    import pyroomacoustics as pra

    def run(rt60: float) -> tuple[Any, float, int]:
        e_abs, max_order = pra.inverse_sabine(rt60, list(room.dims))
        r = pra.ShoeBox(list(room.dims), fs=RATE, materials=pra.Material(e_abs), max_order=max_order)
        for s in room.sources:
            r.add_source(list(s))
        r.add_microphone_array(room.mics.T.copy())
        r.compute_rir()
        return r, float(e_abs), int(max_order)

    def measured(r: Any) -> float:
        return float(pra.experimental.measure_rt60(np.asarray(r.rir[0][0]), fs=RATE, decay_db=30))

    r, e_abs, order = run(room.rt60)
    t = measured(r)
    if t > 0 and abs(t / room.rt60 - 1) > 0.1:
        r, e_abs, order = run(max(0.1, room.rt60 * room.rt60 / t))
        t = measured(r)
    rir = []
    for s in range(room.sources.shape[0]):
        n = max(len(r.rir[m][s]) for m in range(room.mics.shape[0]))
        h = np.zeros((room.mics.shape[0], n))
        for m in range(room.mics.shape[0]):
            h[m, : len(r.rir[m][s])] = r.rir[m][s]
        rir.append(h)
    return Rirs(rir, t, pra.constants.get("frac_delay_length") // 2, float(r.c),
                f"pyroomacoustics {pra.__version__} ShoeBox ISM", e_abs, order)


def _azimuth_deg(v: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0)


def place(cfg: SetConfig, rng: np.random.Generator, n_noise: int, local: np.ndarray,
          rt60: float) -> tuple[Room, np.ndarray]:
    """A room with the array (``local`` ``(M, 3)`` around its centre, m) on a table, the talker at
    ``cfg.distance_m`` and ``n_noise`` noise sources >= 1 m from both and >= 20 deg from the talker's
    azimuth; everything >= 0.3 m from the walls. Returns the room and the array centre (m)."""
    for _ in range(1000):
        dims = tuple(float(rng.uniform(*lim)) for lim in cfg.room_m)
        lo = np.array([0.5, 0.5, 0.7])
        hi = np.array([dims[0] - 0.5, dims[1] - 0.5, 1.1])
        centre = rng.uniform(lo, hi)
        dist = float(rng.uniform(*cfg.distance_m))
        dz = float(rng.uniform(1.1, 1.7)) - centre[2]  # a seated or standing talker's mouth
        if abs(dz) >= dist * 0.9:
            continue
        az = rng.uniform(0, 2 * np.pi)
        rh = np.sqrt(dist**2 - dz**2)
        talker = centre + np.array([rh * np.cos(az), rh * np.sin(az), dz])
        margin = 0.3
        if np.any(talker < margin) or np.any(talker > np.array(dims) - margin):
            continue
        noises: list[np.ndarray] = []
        for _ in range(200):
            p = rng.uniform([margin] * 3, [dims[0] - margin, dims[1] - margin, min(2.0, dims[2] - margin)])
            sep = abs((_azimuth_deg(p - centre) - np.degrees(az) + 180.0) % 360.0 - 180.0)
            far = np.linalg.norm(p - centre) >= 1.0 and np.linalg.norm(p - talker) >= 1.0
            if far and sep >= 20.0 and all(np.linalg.norm(p - q) >= 0.5 for q in noises):
                noises.append(p)
                if len(noises) == n_noise:
                    break
        if len(noises) < n_noise:
            continue
        return Room(dims, rt60, centre + local, np.vstack([talker, *noises])), centre  # type: ignore[arg-type]
    raise RuntimeError("could not place the sources (room limits too tight)")


# ---------------------------------------------------------------- items
@dataclass
class Plan:
    """What item ``index`` will hold, decided before any audio is made."""

    index: int
    kind: str
    snr_db: float
    voice: Voice
    texts: list[str] = field(default_factory=list)


def plan(cfg: SetConfig, voices: Sequence[Voice]) -> list[Plan]:
    """Kinds cycle (item i has kind i mod K); SNRs shift by one per cycle (index (i + i // K) mod S),
    so a kind meets different SNRs and every SNR gets about the same number of items; voices cycle
    through a seeded permutation; sentences are drawn without replacement (short ones first round)."""
    rng = np.random.default_rng([cfg.seed, 0])
    k, s = len(cfg.kinds), len(cfg.snrs_db)
    vperm = rng.permutation(len(voices))
    short = list(rng.permutation(len(COMMANDS)))
    longer = list(rng.permutation(len(LONGER)))
    plans = []
    for i in range(cfg.n_items):
        voice = voices[int(vperm[i % len(voices)])]
        p = Plan(i, cfg.kinds[i % k], float(cfg.snrs_db[(i + i // k) % s]), voice)
        if i % 3 == 2 and longer:  # one item in three is a longer request
            p.texts = [LONGER[longer.pop()]]
        else:
            p.texts = [COMMANDS[short.pop() if short else int(rng.integers(len(COMMANDS)))]]
        plans.append(p)
    return plans


def babble(speech: Speech, target: Voice, n: int, talkers: int,
           rng: np.random.Generator) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """``talkers`` signals ``(n,)`` of :data:`BABBLE` sentences, each by another voice than ``target``,
    back to back with short pauses, each starting mid-sentence, at equal RMS (0.1)."""
    others = [v for v in speech.voices if v != target] or list(speech.voices)
    sigs, recs = [], []
    for t in range(talkers):
        v = others[(t + int(rng.integers(len(others)))) % len(others)]
        parts, said, total = [], [], 0
        while total < n + 2 * RATE:
            text = BABBLE[int(rng.integers(len(BABBLE)))]
            x = speech.synth(v, text)
            parts += [x, np.zeros(int(rng.uniform(0.1, 0.4) * RATE), np.float32)]
            said.append(text)
            total += x.size + parts[-1].size
        y = np.concatenate(parts)
        start = int(rng.integers(0, y.size - n))
        y = y[start : start + n]
        sigs.append((0.1 * y / np.sqrt(np.mean(y.astype(np.float64) ** 2) + 1e-20)).astype(np.float32))
        recs.append({"role": "noise", "package": v.package, "voice": v.id, "texts": said, "talker": t})
    return sigs, recs


def make_item(cfg: SetConfig, p: Plan, speech: Speech, recorded: Recorded | None,
              rirs_fn: RirFn) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One item: (meta record without file paths, noisy ``(4, n)``, clean ``(n,)``), float32."""
    rng = np.random.default_rng([cfg.seed, 1, p.index])
    local = preset_positions(GEOMETRY)
    # speech: the planned sentence(s), more commands until it fills at least half the minimum length
    said = [speech.synth(p.voice, t) for t in p.texts]
    lead = float(rng.uniform(0.4, 1.0))
    tail = float(rng.uniform(0.6, 1.0))
    while sum(x.size for x in said) / RATE < cfg.duration_s[0] - lead - tail - 0.5 and len(said) < 4:
        t = COMMANDS[int(rng.integers(len(COMMANDS)))]
        p.texts.append(t)
        said.append(speech.synth(p.voice, t))
    gaps = [int(rng.uniform(0.3, 0.7) * RATE) for _ in said[1:]]
    pieces = [np.concatenate([x, np.zeros(g, np.float32)]) for x, g in zip(said, [*gaps, 0], strict=True)]
    dry_speech = np.concatenate(pieces)
    n = int(np.clip(round((lead + tail) * RATE) + dry_speech.size, cfg.duration_s[0] * RATE,
                    cfg.duration_s[1] * RATE))
    lead_n = int(lead * RATE)
    dry = np.zeros(n, np.float32)
    m = min(dry_speech.size, n - lead_n)
    dry[lead_n : lead_n + m] = dry_speech[:m]  # an over-long request is cut at the maximum length

    # noise signals (before the room)
    if p.kind == "babble":
        noise_sigs, sources = babble(speech, p.voice, n, cfg.babble_talkers, rng)
    elif p.kind == "fan":
        sig, rec = fan_noise(n, rng)
        noise_sigs, sources = [sig], [rec]
    else:
        if recorded is None:
            raise ValueError(f"noise kind {p.kind!r} needs recorded noise")
        sig, sources = recorded.segment(p.kind, n, rng)
        noise_sigs = [sig]

    rt60 = float(rng.uniform(*cfg.rt60_s))
    room, centre = place(cfg, rng, len(noise_sigs), local, rt60)
    r = rirs_fn(room)

    def image(x: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.stack([fftconvolve(x, hm)[:n] for hm in h])

    target = image(dry, r.rir[0])
    d0 = float(np.linalg.norm(room.mics[0] - room.sources[0]))
    n_d = round(d0 / r.c * RATE) + r.offset
    clean = fftconvolve(dry, r.rir[0][0][: n_d + round(EARLY_MS * RATE / 1000) + 1])[:n]  # direct + early
    point = np.zeros((local.shape[0], n))
    for x, h in zip(noise_sigs, r.rir[1:], strict=True):
        point += image(x, h)
    point_db = rms_db(point[0])
    diffuse_db = point_db - float(rng.uniform(*cfg.diffuse_below_db))
    noise = point + diffuse_noise(room.mics, n, rng, r.c) * 10 ** (diffuse_db / 20)

    mask = active_mask(clean)
    speech_db = rms_db(target[0][mask])
    self_db = speech_db - cfg.self_noise_below_db
    noise = noise + rng.standard_normal(noise.shape) * 10 ** (self_db / 20)
    g_noise = 10 ** ((speech_db - p.snr_db - rms_db(noise[0])) / 20)  # total noise at mic 0 -> the SNR
    noise *= g_noise
    level = float(rng.uniform(*cfg.speech_level_dbfs))
    g = 10 ** ((level - speech_db) / 20)
    noisy = (target + noise) * g
    clean = clean * g
    peak = float(np.max(np.abs(noisy)))
    headroom_db = 0.0
    if peak > 0.99:  # every part down together: the SNR and the reference stay consistent
        headroom_db = 20 * np.log10(0.99 / peak)
        noisy *= 0.99 / peak
        clean *= 0.99 / peak
    target_rel = room.sources[0] - centre
    dist = float(np.linalg.norm(target_rel))
    h0 = r.rir[0][0]
    early_n = n_d + round(EARLY_MS * RATE / 1000) + 1
    direct_n = n_d + PRA_OFFSET + 1  # the direct path's fractional-delay taps

    def ratio_db(k: int) -> float:  # energy of h0 before sample k over after it
        return round(10 * np.log10(np.sum(h0[:k] ** 2) / (np.sum(h0[k:] ** 2) + 1e-20)), 2)

    noise_az = [round(_azimuth_deg(q - centre), 2) for q in room.sources[1:]]
    noise_dist = [round(float(np.linalg.norm(q - centre)), 3) for q in room.sources[1:]]
    sub = str(sources[0].get("file", "")).split("/")[-1]
    if p.kind == "babble":
        sub = f"{len(noise_sigs)} talkers"
    targets = [{"role": "target", "package": p.voice.package, "voice": p.voice.id, "text": t}
               for t in p.texts]
    rec: dict[str, Any] = {
        "sr": RATE, "sample_rate": RATE, "channels": local.shape[0], "n_channels": local.shape[0],
        "duration_s": round(n / RATE, 3), "text": " ".join(p.texts), "language": "en",
        "speaker": p.voice.id, "snr_db": p.snr_db, "snr_total_db": p.snr_db,
        "sir_db": round(speech_db - point_db - 20 * np.log10(g_noise), 2),
        "noise_kind": p.kind, "interferer_kind": p.kind, "noise_sub": sub,
        "speech_level_dbfs": round(level + headroom_db, 2),
        "noise_level_dbfs": round(rms_db(noise[0] * g) + headroom_db, 2),
        "lead_in_s": round(lead, 3), "speech_segments": segments_s(mask),
        "geometry": GEOMETRY, "mic_positions": local.round(6).tolist(),
        "mic_angles_deg": mic_azimuths_deg(local).round(3).tolist(), "array_radius_m": 0.0405,
        "target_azimuth_deg": round(_azimuth_deg(target_rel), 2),
        "target_elevation_deg": round(float(np.degrees(np.arcsin(target_rel[2] / dist))), 2),
        "target_distance_m": round(dist, 3),
        # the first noise source as the shared array sets' "interferer"; every source in the lists
        "interferer_azimuth_deg": noise_az[0], "interferer_distance_m": noise_dist[0],
        "noise_azimuths_deg": noise_az, "noise_distances_m": noise_dist,
        "rt60_target_s": round(rt60, 3), "rt60_s": round(r.rt60_measured, 3),
        "drr_db": ratio_db(direct_n), "c50_db": ratio_db(early_n),
        "diffuse_db_re_point": round(diffuse_db - point_db, 2),
        "self_noise_db_re_speech": -cfg.self_noise_below_db,
        "level_scaled_for_headroom_db": round(headroom_db, 2),
        "room_dims_m": [round(v, 3) for v in room.dims],
        "room": {"array_center_m": centre.round(3).tolist(),
                 "target_pos_m": room.sources[0].round(3).tolist(),
                 "noise_pos_m": room.sources[1:].round(3).tolist(), "absorption": round(r.absorption, 4),
                 "ism_max_order": r.max_order, "simulator": r.simulator},
        "sources": targets + sources,
        "reference": f"clean = dry talker convolved with h0[0:n_d+{early_n - n_d - 1}+1], h0 = talker->mic0 "
                     f"RIR, n_d = round(|mic0-talker|/c*{RATE}) + {r.offset} (fractional-delay offset): "
                     "direct path plus reflections up to 50 ms after it, same gain as in noisy",
        "early_reflections_ms": EARLY_MS, "generator": GENERATOR,
    }
    return rec, noisy.astype(np.float32), clean.astype(np.float32)


# ---------------------------------------------------------------- the set
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def set_hash(files: dict[str, str]) -> str:
    """One hash for a set: sha256 over ``"<path> <sha256>\\n"`` of every file, sorted by path."""
    return hashlib.sha256("".join(f"{k} {files[k]}\n" for k in sorted(files)).encode()).hexdigest()


def python_versions() -> dict[str, str]:
    """Versions of the Python packages a set is made with (numpy, scipy, soxr, soundfile, pyroomacoustics)."""
    import numpy
    import scipy
    import soxr

    py = {"numpy": numpy.__version__, "scipy": scipy.__version__, "soxr": soxr.__version__,
          "soundfile": sf.__version__}
    # its metadata, not an import: pyroomacoustics imports sounddevice, which starts PortAudio
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        py["pyroomacoustics"] = importlib.metadata.version("pyroomacoustics")
    return py


def build(out: Path, cfg: SetConfig, speech: Speech, recorded: Recorded | None, rirs_fn: RirFn = pra_rirs,
          progress: bool = True) -> dict[str, Any]:
    """Write the set to ``out`` (created atomically: built beside it, then renamed); returns the manifest."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (tmp / "noisy").mkdir()
        (tmp / "clean").mkdir()
        lines = []
        for p in plan(cfg, speech.voices):
            rec, noisy, clean = make_item(cfg, p, speech, recorded, rirs_fn)
            iid = f"{cfg.id_prefix}-{p.index + 1:03d}"
            rec = {"id": iid, "noisy": f"noisy/{iid}.flac", "clean": f"clean/{iid}.flac", **rec}
            sf.write(tmp / rec["noisy"], noisy.T, RATE, subtype="PCM_16")
            sf.write(tmp / rec["clean"], clean, RATE, subtype="PCM_16")
            lines.append(json.dumps(rec))
            if progress:
                print(f"testset: {iid} {rec['noise_kind']:>7} {rec['snr_db']:+5.0f} dB  "
                      f"rt60 {rec['rt60_s']:.2f} s  {rec['duration_s']:.1f} s  {rec['text'][:60]}",
                      file=sys.stderr)
        (tmp / "meta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        files = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        py = python_versions()
        debs = speech.versions()
        if recorded is not None:
            debs |= recorded.versions()
        manifest = {"generator": GENERATOR, "seed": cfg.seed, "n_items": cfg.n_items,
                    "kinds": list(cfg.kinds), "snrs_db": list(cfg.snrs_db), "geometry": GEOMETRY,
                    "rate": RATE, "debian_packages": debs,
                    "python_packages": py, "python": platform.python_version(),
                    "files_sha256": files, "set_sha256": set_hash(files)}
        publish(tmp, out, manifest)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_root(env: str, name: str) -> Path:
    """``$ENV``, else ``$XDG_CACHE_HOME/voxd/NAME``, else ``~/.cache/voxd/NAME`` (a generated set's cache)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxd" / name


def publish(tmp: Path, out: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` into the finished set ``tmp`` and put it in place of ``out`` (a reader
    never sees a half-built set)."""
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def default_cache() -> Path:
    """``$VOXD_PEERSET_CACHE``, else ``$XDG_CACHE_HOME/voxd/peerset``, else ``~/.cache/voxd/peerset``."""
    return cache_root("VOXD_PEERSET_CACHE", "peerset")


def ensure(cache: Path, cfg: SetConfig | None = None, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """The set under ``cache/set``: reused when its manifest matches this generator, seed and size,
    else (or with ``force``) built. Returns its directory and manifest."""
    cfg = cfg or SetConfig()
    out = cache / "set"
    man = out / "manifest.json"
    if man.exists() and not force:
        m = json.loads(man.read_text(encoding="utf-8"))
        if (m.get("generator"), m.get("seed"), m.get("n_items")) == (GENERATOR, cfg.seed, cfg.n_items):
            return out, m
    cache.mkdir(parents=True, exist_ok=True)
    speech = Tts(cache)
    recorded = DebianNoise(cache, cfg.kinds)
    return out, build(out, cfg, speech, recorded)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=default_cache(), help="cache folder (default: %(default)s)")
    ap.add_argument("--items", type=int, default=N_ITEMS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching set is there")
    a = ap.parse_args(argv)
    d, m = ensure(a.cache, SetConfig(n_items=a.items, seed=a.seed), a.force)
    print(f"{d}  ({m['n_items']} items, set sha256 {m['set_sha256'][:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
