#!/usr/bin/env python3
"""The echo test set (issue 18): a voice assistant's own playback heard by its microphones, with and
without its user talking over it, for acoustic echo cancellation.

    python bench/echoset.py [--cache DIR] [--items 36] [--seed 18] [--quick] [--force]

Builds (once; later calls reuse it) a set in the ``meta.jsonl`` layout of ``../shared/bench`` under
``CACHE/set`` (default cache: ``$VOXD_ECHOSET_CACHE``, else ``$XDG_CACHE_HOME/voxd/echoset``, else
``~/.cache/voxd/echoset``). The room simulation, the synthesisers, the music source, the noise, the
near-end reference and the manifest are those of the peer set (``bench/testset.py``, imported):

- **geometries** (:data:`GEOMETRIES`, ``voxd.geometry`` presets, channel i = mic i): ReSpeaker 4-mic HAT,
  6-mic HAT, USB 4-mic array, each in its own simulated rooms.
- **far end** (what the assistant plays, ``farend_kind``): ``speech`` = replies (:data:`REPLIES`, written
  for this set) spoken by flite / festival voices one after another, or ``music`` = extremetuxracer-data
  music (the peer set's music source). Played through a simulated small loudspeaker 6-12 cm from the
  array centre (horizontally; 0-5 cm below it): a causal band-pass (Butterworth, 4th order high-pass at
  150-300 Hz, 4th order low-pass at 6-7.5 kHz) then a soft clipper, linear up to a knee ``k`` and
  saturating smoothly at ``1.5 k`` (``k + 0.5 k tanh((|x| - k) / 0.5 k)``), its knee set per item so
  that the part no gain on the band-passed drive explains is 30-40 dB under the output
  (``loudspeaker.nonlinear_db``): mild, whatever the content's crest factor.
- **near end** (the user, ``text``): commands (``bench/testset.py`` ``COMMANDS``) by another voice than the
  far end's, 0.5-3 m from the array; room noise: a fan (synthetic, ``testset.fan_noise``) as a point
  source, diffuse pink noise 10-16 dB under it and mic self-noise.
- **conditions** (:data:`CONDITIONS`, cycled with the geometries so every pair gets the same count):
  ``farend`` (playback only, no near-end speech), ``doubletalk`` (the user speaks 2.5-4 s into the
  playback), ``pathchange`` (playback only; at 4-5 s the echo path changes: ``volume``, the loudspeaker
  +10 dB behind the loopback tap, or ``moved``, the loudspeaker at another place 6-12 cm from the array;
  20 ms cross-fade), ``drift`` (double talk, the reference recorded by a separate device whose clock runs
  +-100 ppm off the microphones': the reference resampled with soxr VHQ, so its length differs from the
  microphones' by ``n * ppm / 1e6`` samples).
- **reference delay** (every item, ``reference_delay_ms``, stratified over the set in 0-200 ms): the
  reference (``ref``) carries each far-end sample that many ms before the loudspeaker emits it; the echo's
  direct path then reaches mic m ``|speaker - mic m| / c`` later (``acoustic_delay_ms``); a
  (PHAT-weighted) cross-correlation of ``ref`` and the echo at mic 0 peaks at ``echo_lag_ms`` = delay +
  acoustic delay + the loudspeaker's own delay (``loudspeaker.group_delay_samples``: the peak of its
  band-pass's impulse response, 0-2 samples) for broadband content (speech; music with repeating or
  tonal passages can put the peak elsewhere). Delays are whole samples. With drift they hold at
  the item's start.
- **levels**: echo active level -30..-18 dBFS at mic 0, signal-to-echo ratio (``ser_db``: near-end
  active level over the echo's, mic 0) -12..0 dB, SNR (near-end over all noise, mic 0) 10-25 dB (items
  without near-end: the noise at the level it would have had); reference active level -26..-16 dBFS; all
  microphone signals scaled down together if a sample would exceed 0.99 (the reference is not).
- **rooms**: pyroomacoustics shoebox ISM, RT60 0.2-0.6 s, as in ``bench/testset.py``.

Files per item (16-bit FLAC, 16 kHz): ``noisy/<id>.flac`` the microphones (N ch), ``ref/<id>.flac`` the
reference as the board's loopback (or the separate device) carries it (mono), ``clean/<id>.flac`` the
near-end reference at mic 0 (direct path + 50 ms early reflections, same gain as in ``noisy``; silence
without near end), ``echo/<id>.flac`` the echo alone at the microphones (N ch, for ERLE),
``nearend/<id>.flac`` the near-end talker's whole reverberant image at the microphones (N ch); the room
noise is ``noisy - echo - nearend``. Labels in ``meta.jsonl`` (seconds, microphone time):
``farend_segments`` (echo active at mic 0), ``nearend_segments`` (near-end image active, +-50 ms),
``farend_only_segments``, ``doubletalk_segments``, ``echo_path_change_s`` (null without), ``text`` (the
near-end transcript, empty without near end), ``farend_text``. ``manifest.json``: Debian and Python
package versions, every file's sha256 and ``set_sha256``. Seeded: a rebuild with the same packages gives
the same hashes.

Data card (the default 36 items: 5.3 minutes of audio, 63 MB; about 3 minutes to build on 2 cores):

=====================  ==================  ==================================  =============================
package                version             licence                             used for
=====================  ==================  ==================================  =============================
flite                  2.2-5               BSD-style (CMU, free use)           voices slt, rms, awb, kal16
festival               1:2.5.0-9           X11-style (Edinburgh, free use)     text2wave
festvox-us-slt-hts     0.2010.10.25-4      BSD-3-clause, EST-2000/2003         voice cmu_us_slt_arctic_hts
festvox-kallpc16k      2.4-1               Edinburgh/CMU free use              voice kal_diphone
festvox-kdlpc16k       1.4.0-6.1           Edinburgh/CMU free use              voice ked_diphone
extremetuxracer-data   0.8.2-1             GPL-2+                              far-end music (music/*.ogg)
(synthetic)            -                   -                                   fan, diffuse and self-noise
pyroomacoustics        0.10.1 (PyPI)       MIT                                 room impulse responses
=====================  ==================  ==================================  =============================

None of these is on the reserved-for-evaluation list (``train/denoise/prepare_data.py``
``RESERVED_FOR_EVALUATION``, checked at build time), and no file listed in a ``../shared/bench/dev`` set's
``sources`` is used (checked when those sets are present). Texts: :data:`REPLIES` (far end) are this
file's; the near-end commands are the peer set's (``bench/testset.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, fftconvolve, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testset
from testset import (
    COMMANDS,
    EARLY_MS,
    RATE,
    VOICES,
    Recorded,
    RirFn,
    Room,
    Speech,
    Voice,
    active_mask,
    rms_db,
    segments_s,
)

from voxd.geometry import mic_azimuths_deg, preset_positions

GENERATOR = "voxd bench/echoset.py 1"  # bump when the recipe changes: the cache is rebuilt
SEED = 18
GEOMETRIES = ("respeaker-4mic-hat", "respeaker-6mic", "respeaker-usb-4mic")
CONDITIONS = ("farend", "doubletalk", "pathchange", "drift")
FAREND_KINDS = ("speech", "music")
N_ITEMS = len(GEOMETRIES) * len(CONDITIONS) * 3
QUICK_ITEMS = len(CONDITIONS)
ROOT = Path(__file__).resolve().parents[1]
SHARED_DEV = ROOT.parent / "shared" / "bench" / "dev"

REPLIES = (  # what the assistant says: only ever heard as far end (echo)
    "Okay, I have set a timer for ten minutes, starting now.",
    "Tomorrow will be mostly sunny with a high of twenty three degrees and a light breeze from the west.",
    "Here is the latest news. The city council has approved the new cycling lanes along the river.",
    "Your next meeting is at two thirty with the design team in the small conference room.",
    "I found three Italian restaurants nearby. The closest one is four hundred metres away.",
    "Sure, here is a recipe for banana bread. You will need three ripe bananas, flour, butter and sugar.",
    "The train to the airport leaves every fifteen minutes from platform two.",
    "Playing your morning playlist. The first song is by a band you listened to last week.",
    "It is currently eighteen degrees outside, and rain is expected after six in the evening.",
    "I have added eggs, milk and bread to your shopping list.",
    "Did you know that octopuses have three hearts and blue blood?",
    "Your package was delivered this morning and left at the front door.",
    "The living room lights are now at fifty percent. Would you like me to dim the kitchen as well?",
    "There is heavy traffic on the ring road, so the drive to work will take about forty minutes.",
    "Here is a joke. Why did the scarecrow win an award? Because he was outstanding in his field.",
    "The capital of Canada is Ottawa, which lies on the south bank of the Ottawa River.",
    "Reminder: your dentist appointment is tomorrow at nine fifteen in the morning.",
    "The football match ended two to one after a late goal in the final minute.",
)


@dataclass
class EchoConfig:
    """What to build. Durations in seconds, distances in metres, levels in dB / dBFS, delays in ms."""

    n_items: int = N_ITEMS
    seed: int = SEED
    geometries: tuple[str, ...] = GEOMETRIES
    conditions: tuple[str, ...] = CONDITIONS
    duration_s: tuple[float, float] = (8.0, 10.0)
    rt60_s: tuple[float, float] = (0.2, 0.6)
    near_distance_m: tuple[float, float] = (0.5, 3.0)
    room_m: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = (
        (3.5, 7.0), (3.0, 5.5), (2.5, 3.0))
    speaker_radius_m: tuple[float, float] = (0.06, 0.12)  # loudspeaker, horizontally from the centre
    speaker_below_m: tuple[float, float] = (0.0, 0.05)
    delay_ms: tuple[float, float] = (0.0, 200.0)
    drift_ppm: float = 100.0
    echo_level_dbfs: tuple[float, float] = (-30.0, -18.0)
    ser_db: tuple[float, float] = (-12.0, 0.0)
    snr_db: tuple[float, float] = (10.0, 25.0)
    ref_level_dbfs: tuple[float, float] = (-26.0, -16.0)
    nonlinear_db: tuple[float, float] = (-40.0, -30.0)  # the loudspeaker's non-linear part re its output
    highpass_hz: tuple[float, float] = (150.0, 300.0)
    lowpass_hz: tuple[float, float] = (6000.0, 7500.0)
    near_start_s: tuple[float, float] = (2.5, 4.0)
    change_s: tuple[float, float] = (4.0, 5.0)
    path_gain_db: float = 10.0
    diffuse_below_db: tuple[float, float] = (10.0, 16.0)
    self_noise_below_db: float = 60.0
    id_prefix: str = "echo"


@dataclass
class EchoPlan:
    """What item ``index`` will hold, decided before any audio is made."""

    index: int
    geometry: str
    condition: str
    farend_kind: str
    delay_ms: float
    drift_ppm: float
    change: str | None  # "volume" | "moved" | None
    far_voice: Voice
    near_voice: Voice | None
    texts: list[str] = field(default_factory=list)


def plan(cfg: EchoConfig, voices: tuple[Voice, ...] = VOICES) -> list[EchoPlan]:
    """Conditions and geometries both cycle (4 and 3: coprime, so items 0..11 cover every pair once, and
    the first 4 items every condition and every geometry); far-end kinds
    alternate, shifted by one each round of pairs; delays stratified over ``cfg.delay_ms`` in a seeded
    order; drift items alternate +ppm / -ppm; path changes alternate volume / moved; the near-end voice
    is never the far end's."""
    rng = np.random.default_rng([cfg.seed, 0])
    nc, ng = len(cfg.conditions), len(cfg.geometries)
    order = rng.permutation(cfg.n_items)
    lo, hi = cfg.delay_ms
    commands = list(rng.permutation(len(COMMANDS)))
    plans, n_drift, n_change = [], 0, 0
    for i in range(cfg.n_items):
        cond = cfg.conditions[i % nc]
        geom = cfg.geometries[i % ng]  # with nc, ng coprime (4, 3): nc * ng items cover every pair
        kind = FAREND_KINDS[(i + i // (nc * ng)) % len(FAREND_KINDS)]
        delay = lo + (hi - lo) * (float(order[i]) + float(rng.uniform())) / cfg.n_items
        far = voices[int(rng.integers(len(voices)))]
        near = None
        texts: list[str] = []
        if cond in ("doubletalk", "drift"):
            others = [v for v in voices if v != far]
            near = others[int(rng.integers(len(others)))]
            texts = [COMMANDS[int(commands.pop() if commands else rng.integers(len(COMMANDS)))]]
        ppm, change = 0.0, None
        if cond == "drift":
            ppm = cfg.drift_ppm * (1 if n_drift % 2 == 0 else -1)
            n_drift += 1
        if cond == "pathchange":
            change = ("volume", "moved")[n_change % 2]
            n_change += 1
        delay_ms = round(delay * RATE / 1000) * 1000 / RATE  # whole samples
        plans.append(EchoPlan(i, geom, cond, kind, delay_ms, ppm, change, far, near, texts))
    return plans


# ---------------------------------------------------------------- loudspeaker and reference
def soft_clip(u: np.ndarray, knee: float) -> np.ndarray:
    """Linear up to ``knee``, above it ``knee + 0.5 knee tanh((|u| - knee) / (0.5 knee))``: a soft limit
    at 1.5 ``knee``. ``u`` (n,) -> (n,)."""
    a = np.abs(u)
    over = a > knee
    y = u.copy()
    y[over] = np.sign(u[over]) * (knee + 0.5 * knee * np.tanh((a[over] - knee) / (0.5 * knee)))
    return y


def nonlinear_db(u: np.ndarray, y: np.ndarray) -> float:
    """Power of ``y`` not explained by a gain on ``u`` (least squares; the clipper is memoryless), relative
    to the power of ``y`` (dB)."""
    a = float(np.dot(u, y) / (np.dot(u, u) + 1e-30))
    return float(10 * np.log10(np.sum((y - a * u) ** 2) / (np.sum(y**2) + 1e-30) + 1e-30))


def loudspeaker(x: np.ndarray, rng: np.random.Generator,
                cfg: EchoConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """A small loudspeaker: ``x`` (n,) drive signal -> (n,) float64 radiated signal and its recipe.

    Causal Butterworth band-pass (high-pass and low-pass, 4th order each), then :func:`soft_clip` with
    its knee set (bisection) so that the non-linear part (:func:`nonlinear_db`) is a drawn
    ``cfg.nonlinear_db`` under the output: mild whatever the content's crest factor.
    """
    hp, lp = float(rng.uniform(*cfg.highpass_hz)), float(rng.uniform(*cfg.lowpass_hz))
    sos = np.vstack([butter(4, hp, "highpass", fs=RATE, output="sos"),
                     butter(4, lp, "lowpass", fs=RATE, output="sos")])
    u = sosfilt(sos, np.asarray(x, np.float64))
    target = float(rng.uniform(*cfg.nonlinear_db))
    rms = float(np.sqrt(np.mean(u[active_mask(u)] ** 2) + 1e-30))
    lo, hi = np.log(0.3), np.log(30.0)  # knee / active RMS, searched in the log domain
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if nonlinear_db(u, soft_clip(u, np.exp(mid) * rms)) > target:
            lo = mid  # too much distortion: raise the knee
        else:
            hi = mid
    knee = float(np.exp(hi))
    y = soft_clip(u, knee * rms)
    return y, {"highpass_hz": round(hp, 1), "lowpass_hz": round(lp, 1), "filter": "butterworth 4+4, causal",
               "group_delay_samples": int(np.argmax(np.abs(sosfilt(sos, np.eye(1, 400)[0])))),
               "soft_clip": "linear to knee k, then k + 0.5k tanh((|x|-k)/0.5k)",
               "knee_over_rms": round(knee, 3), "nonlinear_db": round(nonlinear_db(u, y), 2)}


def xcorr_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> int:
    """The lag (samples, -max_lag..max_lag) by which ``b`` (n,) trails ``a`` (m,): the peak of their
    phase-transform-weighted cross-correlation (GCC-PHAT, FFT): the strongest path's delay, not smeared
    by the signals' own correlation (pitch, band limits)."""
    size = a.size + b.size
    x = np.conj(np.fft.rfft(a, size)) * np.fft.rfft(b, size)
    c = np.fft.irfft(x / (np.abs(x) + 1e-3 * np.abs(x).max() + 1e-30), size)
    c = np.concatenate([c[-max_lag:], c[: max_lag + 1]])
    return int(np.argmax(c)) - max_lag


def drifted(ref: np.ndarray, n: int, ppm: float) -> np.ndarray:
    """The reference as a device whose clock runs ``ppm`` off records it: ``ref`` (m,) at 16 kHz of the
    microphones' clock, m >= n + 64 -> ``round(n * (1 + ppm / 1e6))`` samples (soxr VHQ)."""
    if ppm == 0.0:
        return ref[:n].astype(np.float32)
    y = soxr.resample(ref.astype(np.float64), RATE, RATE * (1.0 + ppm * 1e-6), quality="VHQ")
    m = round(n * (1.0 + ppm * 1e-6))
    if y.size < m:
        raise ValueError("reference too short for the drift")
    return y[:m].astype(np.float32)


# ---------------------------------------------------------------- far end and near end
def farend_signal(p: EchoPlan, n: int, speech: Speech, recorded: Recorded | None,
                  rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
    """The played content ``(n,)`` float64 at unit active RMS, its source records and texts.

    ``speech``: replies back to back (0.3-0.8 s pauses) from a drawn start, cut at ``n``; ``music``: a
    segment of a music file with a 50 ms fade-in."""
    if p.farend_kind == "speech":
        parts, said, total = [], [], 0
        k = int(rng.integers(len(REPLIES)))
        while total < n:
            text = REPLIES[k % len(REPLIES)]
            k += 1
            x = speech.synth(p.far_voice, text)
            pause = np.zeros(int(rng.uniform(0.3, 0.8) * RATE), np.float32)
            parts += [x, pause]
            said.append(text)
            total += x.size + pause.size
        y = np.concatenate(parts)[:n].astype(np.float64)
        recs = [{"role": "farend", "package": p.far_voice.package, "voice": p.far_voice.id, "text": t}
                for t in said]
    else:
        if recorded is None:
            raise ValueError("far-end music needs recorded audio")
        seg, recs = recorded.segment("music", n, rng)
        for r in recs:
            r["role"] = "farend"
        y = seg.astype(np.float64)
        fade = min(800, n)
        y[:fade] *= np.linspace(0.0, 1.0, fade)
        said = []
    mask = active_mask(y)
    y /= np.sqrt(np.mean(y[mask] ** 2) + 1e-20)
    return y, recs, said


def speaker_position(centre: np.ndarray, cfg: EchoConfig, rng: np.random.Generator,
                     avoid_az: float | None = None) -> tuple[np.ndarray, float]:
    """A loudspeaker place near the array (room coordinates, m) and its azimuth (deg); with ``avoid_az``
    at least 60 deg away from that azimuth (a moved loudspeaker)."""
    for _ in range(100):
        az = float(rng.uniform(0.0, 360.0))
        if avoid_az is None or abs((az - avoid_az + 180.0) % 360.0 - 180.0) >= 60.0:
            break
    r = float(rng.uniform(*cfg.speaker_radius_m))
    dz = -float(rng.uniform(*cfg.speaker_below_m))
    a = np.radians(az)
    return centre + np.array([r * np.cos(a), r * np.sin(a), dz]), az


def _spans(mask: np.ndarray) -> list[list[float]]:
    return segments_s(mask) if mask.any() else []


def dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """``mask`` (n,) grown by ``k`` samples on both sides of every True run."""
    if not mask.any() or k <= 0:
        return mask.copy()
    c = np.cumsum(np.concatenate([[0], mask.astype(np.int64)]))
    i = np.arange(mask.size)
    return (c[np.minimum(i + k + 1, mask.size)] - c[np.maximum(i - k, 0)]) > 0


@dataclass
class EchoItem:
    """One item's signals (float32; N mics, n samples; the reference m samples) and its record."""

    rec: dict[str, Any]
    noisy: np.ndarray  # (N, n)
    echo: np.ndarray  # (N, n)
    nearend: np.ndarray  # (N, n)
    noise: np.ndarray  # (N, n)
    clean: np.ndarray  # (n,)
    ref: np.ndarray  # (m,), m = n without drift


def make_item(cfg: EchoConfig, p: EchoPlan, speech: Speech, recorded: Recorded | None,
              rirs_fn: RirFn) -> EchoItem:
    """One item (see the module docstring); ``rirs_fn`` simulates the room (``testset.pra_rirs`` or the
    free-field stand-in of the tests)."""
    rng = np.random.default_rng([cfg.seed, 1, p.index])
    local = preset_positions(p.geometry)
    n_mics = local.shape[0]
    n = round(float(rng.uniform(*cfg.duration_s)) * RATE)
    delay = round(p.delay_ms * RATE / 1000)

    # the room: talker (also for far-end-only items: the geometry stays comparable), fan, loudspeaker(s)
    rt60 = float(rng.uniform(*cfg.rt60_s))
    room_cfg = testset.SetConfig(distance_m=cfg.near_distance_m, room_m=cfg.room_m)
    base, centre = testset.place(room_cfg, rng, 1, local, rt60)
    spk1, az1 = speaker_position(centre, cfg, rng)
    spks = [spk1]
    if p.change == "moved":
        spks.append(speaker_position(centre, cfg, rng, avoid_az=az1)[0])
    room = Room(base.dims, base.rt60, base.mics, np.vstack([base.sources, *spks]))
    r = rirs_fn(room)
    off = r.offset

    def image(x: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.stack([fftconvolve(x, hm)[:n] for hm in h])

    # far end: content -> drive p (reference level) -> loudspeaker -> echo; the reference leads by delay
    far_start = int(rng.uniform(0.2, 0.5) * RATE)
    pad = delay + 256
    content, far_sources, far_texts = farend_signal(p, n + pad - far_start, speech, recorded, rng)
    ref_level = float(rng.uniform(*cfg.ref_level_dbfs))
    drive = np.zeros(n + pad)
    drive[far_start:] = content * 10 ** (ref_level / 20)
    peak = float(np.max(np.abs(drive)))
    if peak > 0.99:
        drive *= 0.99 / peak
        ref_level += 20 * np.log10(0.99 / peak)
    # the loudspeaker emits drive[t] at mic time t + off (the RIRs' direct paths come off samples late);
    # the reference holds it delay samples before: ref[t] = drive[t + delay - off]
    ls, ls_rec = loudspeaker(drive[:n], rng, cfg)
    shift = delay - off
    ref_ideal = drive[shift:] if shift >= 0 else np.concatenate([np.zeros(-shift), drive])
    ref = drifted(ref_ideal, n, p.drift_ppm)

    change_n: int | None = None
    if p.change is None:
        echo = image(ls, r.rir[2])
    else:
        change_n = int(rng.uniform(*cfg.change_s) * RATE)
        xf = 320
        w = np.clip((np.arange(n) - change_n) / xf + 0.5, 0.0, 1.0)  # 20 ms cross-fade centred on the change
        before = image(ls * (1 - w), r.rir[2])
        if p.change == "volume":
            echo = before + image(ls * w, r.rir[2]) * 10 ** (cfg.path_gain_db / 20)
        else:
            echo = before + image(ls * w, r.rir[3])
    pre = slice(0, change_n if change_n is not None else n)
    far_mask = active_mask(echo[0], below_db=40.0)
    echo_db = rms_db(echo[0][pre][far_mask[pre]])
    echo_level = float(rng.uniform(*cfg.echo_level_dbfs))
    g_echo = 10 ** ((echo_level - echo_db) / 20)
    echo *= g_echo

    # near end: commands by the near voice from near_start; reference at mic 0 = direct + 50 ms early
    ser = float(rng.uniform(*cfg.ser_db))
    snr = float(rng.uniform(*cfg.snr_db))
    near_level = echo_level + ser
    dry = np.zeros(n)
    nearend = np.zeros((n_mics, n))
    clean = np.zeros(n)
    h0 = r.rir[0][0]
    d0 = float(np.linalg.norm(room.mics[0] - room.sources[0]))
    n_d = round(d0 / r.c * RATE) + off
    early_n = n_d + round(EARLY_MS * RATE / 1000) + 1
    near_sources: list[dict[str, Any]] = []
    if p.near_voice is not None:
        start = int(rng.uniform(*cfg.near_start_s) * RATE)
        said = [speech.synth(p.near_voice, t) for t in p.texts]
        x = np.concatenate([np.concatenate([s, np.zeros(int(0.4 * RATE), np.float32)]) for s in said])
        x = x[: x.size - int(0.4 * RATE)]
        start = min(start, n - int(0.3 * RATE) - x.size)  # a long command starts earlier: never cut
        if start < int(1.5 * RATE):
            raise ValueError(f"item {p.index}: near-end speech too long for the item ({x.size / RATE:.1f} s)")
        dry[start : start + x.size] = x
        nearend = image(dry, r.rir[0])
        clean = fftconvolve(dry, h0[:early_n])[:n]
        g_near = 10 ** ((near_level - rms_db(nearend[0][active_mask(clean)])) / 20)
        nearend *= g_near
        clean *= g_near
        near_sources = [{"role": "target", "package": p.near_voice.package, "voice": p.near_voice.id,
                         "text": t} for t in p.texts]

    # room noise: fan (point source), diffuse pink, self-noise; total at mic 0 = near level - snr
    fan, fan_rec = testset.fan_noise(n, rng)
    point = image(fan, r.rir[1])
    point_db = rms_db(point[0])
    diffuse_db = point_db - float(rng.uniform(*cfg.diffuse_below_db))
    noise = point + testset.diffuse_noise(room.mics, n, rng, r.c) * 10 ** (diffuse_db / 20)
    noise = noise + rng.standard_normal(noise.shape) * 10 ** ((near_level - cfg.self_noise_below_db) / 20)
    noise *= 10 ** ((near_level - snr - rms_db(noise[0])) / 20)

    noisy = echo + nearend + noise
    peak = float(np.max(np.abs(noisy)))
    headroom_db = 0.0
    if peak > 0.99:  # every microphone-side part down together (the reference is the playback: not)
        headroom_db = 20 * np.log10(0.99 / peak)
        for a in (noisy, echo, nearend, noise, clean):
            a *= 0.99 / peak

    # labels (microphone time): far end where the echo is active, near end where its image is (+-50 ms)
    near_mask = dilate(active_mask(nearend[0], below_db=40.0), int(0.05 * RATE)) if p.near_voice else \
        np.zeros(n, bool)
    far_only = far_mask & ~near_mask
    double = far_mask & near_mask
    spk_dist = [[round(float(np.linalg.norm(s - q)), 4) for q in room.mics] for s in spks]
    sources = near_sources + far_sources + [fan_rec]
    rec: dict[str, Any] = {
        "sr": RATE, "sample_rate": RATE, "channels": n_mics, "n_channels": n_mics,
        "duration_s": round(n / RATE, 3), "text": " ".join(p.texts), "language": "en",
        "speaker": p.near_voice.id if p.near_voice else None,
        "condition": p.condition, "farend_kind": p.farend_kind, "farend_voice": p.far_voice.id
        if p.farend_kind == "speech" else None, "farend_text": " ".join(far_texts),
        "reference_delay_ms": p.delay_ms, "reference_delay_samples": delay, "drift_ppm": p.drift_ppm,
        "ref_samples": int(ref.size), "ref_channels": 1,
        "acoustic_delay_ms": [round(d / r.c * 1000, 4) for d in spk_dist[0]],
        # where a GCC-PHAT of ref and echo at mic 0 peaks (at the start, before any change)
        "echo_lag_ms": round(delay * 1000 / RATE + spk_dist[0][0] / r.c * 1000
                             + ls_rec["group_delay_samples"] * 1000 / RATE, 3),
        "echo_path_change_s": round(change_n / RATE, 3) if change_n is not None else None,
        "echo_path_change": None if p.change is None else (
            {"kind": "volume", "gain_db": cfg.path_gain_db} if p.change == "volume" else
            {"kind": "moved", "to_speaker_pos_m": spks[1].round(4).tolist(),
             "acoustic_delay_ms": [round(d / r.c * 1000, 4) for d in spk_dist[1]]}),
        "farend_segments": _spans(far_mask), "nearend_segments": _spans(near_mask),
        "farend_only_segments": _spans(far_only), "doubletalk_segments": _spans(double),
        "speech_segments": _spans(active_mask(clean)) if p.near_voice else [],
        "echo_level_dbfs": round(echo_level + headroom_db, 2), "ser_db": round(ser, 2),
        "snr_db": round(snr, 2), "ref_level_dbfs": round(ref_level, 2),
        "near_level_dbfs": round(near_level + headroom_db, 2) if p.near_voice else None,
        "noise_level_dbfs": round(near_level - snr + headroom_db, 2),
        "level_scaled_for_headroom_db": round(headroom_db, 2),
        "loudspeaker": ls_rec, "noise_kind": "fan", "geometry": p.geometry,
        "mic_positions": local.round(6).tolist(), "mic_angles_deg": mic_azimuths_deg(local).round(3).tolist(),
        "target_distance_m": round(float(np.linalg.norm(room.sources[0] - centre)), 3),
        "speaker_distance_m": round(float(np.linalg.norm(spk1 - centre)), 4),
        "rt60_target_s": round(rt60, 3), "rt60_s": round(r.rt60_measured, 3),
        "room_dims_m": [round(v, 3) for v in room.dims],
        "room": {"array_center_m": centre.round(3).tolist(),
                 "target_pos_m": room.sources[0].round(3).tolist(),
                 "noise_pos_m": room.sources[1].round(3).tolist(), "speaker_pos_m": spk1.round(4).tolist(),
                 "absorption": round(r.absorption, 4), "ism_max_order": r.max_order,
                 "simulator": r.simulator},
        "sources": sources,
        "clean_definition": f"dry near-end talker convolved with h0[0:n_d+{early_n - n_d - 1}+1] "
                            "(talker->mic0 RIR): direct path plus reflections up to 50 ms after it, "
                            "same gain as in noisy",
        "early_reflections_ms": EARLY_MS, "generator": GENERATOR,
    }
    f32 = np.float32
    return EchoItem(rec, noisy.astype(f32), echo.astype(f32), nearend.astype(f32), noise.astype(f32),
                    clean.astype(f32), ref)


# ---------------------------------------------------------------- sources allowed
def _load_script(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def reserved_packages() -> frozenset[str]:
    """The packages reserved for evaluation (and their format variants), from the denoiser's data script."""
    pd = _load_script("voxd_train_prepare_data_v2", ROOT / "train" / "denoise" / "prepare_data.py")
    return frozenset(pd.RESERVED_FOR_EVALUATION | pd.RESERVED_VARIANTS)


def dev_set_files(dev: Path = SHARED_DEV) -> set[tuple[str, str]]:
    """``(package, file)`` of every source the shared dev sets list (empty when they are absent)."""
    out: set[tuple[str, str]] = set()
    for meta in sorted(dev.glob("*/meta.jsonl")):
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                for s in json.loads(line).get("sources", []):
                    if s.get("file"):
                        out.add((str(s.get("package")), str(s["file"]).lstrip("/")))
    return out


def check_sources(records: list[dict[str, Any]], reserved: frozenset[str],
                  dev_files: set[tuple[str, str]]) -> None:
    """Raise if a source record names a reserved package or a file a shared dev set uses."""
    for s in records:
        pkg = str(s.get("package"))
        if pkg in reserved:
            raise SystemExit(f"echoset: {pkg} is reserved for evaluation")
        if s.get("file") and (pkg, str(s["file"]).lstrip("/")) in dev_files:
            raise SystemExit(f"echoset: {pkg} {s['file']} is in a shared dev set")


# ---------------------------------------------------------------- the set
def build(out: Path, cfg: EchoConfig, speech: Speech, recorded: Recorded | None,
          rirs_fn: RirFn = testset.pra_rirs, progress: bool = True) -> dict[str, Any]:
    """Write the set to ``out`` (built beside it, then renamed); returns the manifest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    reserved, dev_files = reserved_packages(), dev_set_files()
    try:
        for d in ("noisy", "ref", "clean", "echo", "nearend"):
            (tmp / d).mkdir()
        lines = []
        for p in plan(cfg, speech.voices):
            item = make_item(cfg, p, speech, recorded, rirs_fn)
            check_sources(item.rec["sources"], reserved, dev_files)
            iid = f"{cfg.id_prefix}-{p.index + 1:03d}"
            paths = {d: f"{d}/{iid}.flac" for d in ("noisy", "ref", "clean", "echo", "nearend")}
            rec = {"id": iid, **paths, **item.rec}
            for d, x in (("noisy", item.noisy.T), ("ref", item.ref), ("clean", item.clean),
                         ("echo", item.echo.T), ("nearend", item.nearend.T)):
                sf.write(tmp / paths[d], x, RATE, subtype="PCM_16")
            lines.append(json.dumps(rec))
            if progress:
                print(f"echoset: {iid} {p.geometry:<19} {p.condition:<10} {p.farend_kind:<6} "
                      f"delay {p.delay_ms:5.1f} ms  ppm {p.drift_ppm:+4.0f}  ser {rec['ser_db']:+5.1f} dB  "
                      f"nl {rec['loudspeaker']['nonlinear_db']:+5.1f} dB  {rec['text'][:40]}",
                      file=sys.stderr)
        (tmp / "meta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        files = {str(f.relative_to(tmp)): testset.sha256_file(f)
                 for f in sorted(tmp.rglob("*")) if f.is_file()}
        debs = speech.versions()
        if recorded is not None:
            debs |= recorded.versions()
        manifest = {"generator": GENERATOR, "seed": cfg.seed, "n_items": cfg.n_items,
                    "geometries": list(cfg.geometries), "conditions": list(cfg.conditions),
                    "rate": RATE, "debian_packages": debs, "python_packages": testset.python_versions(),
                    "python": sys.version.split()[0], "files_sha256": files,
                    "set_sha256": testset.set_hash(files)}
        testset.publish(tmp, out, manifest)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache() -> Path:
    """``$VOXD_ECHOSET_CACHE``, else ``$XDG_CACHE_HOME/voxd/echoset``, else ``~/.cache/voxd/echoset``."""
    return testset.cache_root("VOXD_ECHOSET_CACHE", "echoset")


def ensure(cache: Path, cfg: EchoConfig | None = None, force: bool = False,
           name: str = "set") -> tuple[Path, dict[str, Any]]:
    """The set under ``cache/name``: reused when its manifest matches this generator, seed and size,
    else (or with ``force``) built. Returns its directory and manifest."""
    cfg = cfg or EchoConfig()
    out = cache / name
    man = out / "manifest.json"
    if man.exists() and not force:
        m = json.loads(man.read_text(encoding="utf-8"))
        if (m.get("generator"), m.get("seed"), m.get("n_items")) == (GENERATOR, cfg.seed, cfg.n_items):
            return out, m
    cache.mkdir(parents=True, exist_ok=True)
    speech = testset.Tts(cache)
    recorded = testset.DebianNoise(cache, ["music"])
    return out, build(out, cfg, speech, recorded)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=default_cache(), help="cache folder (default: %(default)s)")
    ap.add_argument("--items", type=int, default=N_ITEMS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_ITEMS} items (one per condition) under CACHE/quick")
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching set is there")
    a = ap.parse_args(argv)
    n = QUICK_ITEMS if a.quick else a.items
    d, m = ensure(a.cache, EchoConfig(n_items=n, seed=a.seed), a.force, "quick" if a.quick else "set")
    print(f"{d}  ({m['n_items']} items, set sha256 {m['set_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
