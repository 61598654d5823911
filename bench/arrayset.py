#!/usr/bin/env python3
"""A microphone-array TUNING set in the layout of ``../shared/bench/dev/array``, from held-out audio.

    .venv/bin/python bench/arrayset.py --out DIR [--items 48] [--seed 20] [--data /work/voxd-train/data]

``dev/array`` (16 items) is too small to tune array processing (beamformer, dereverberation) on. This
builds a larger set in exactly its layout, so that ``../shared/bench/tools/score_array.py --set DIR`` and
the project's own evaluation read it unchanged, but from other audio: the VALIDATION split of the
denoiser's prepared training data (``train/denoise/prepare_data.py``: ``DATA/audio/{speech,noise}_val.f32``
and ``index.json``). Those groups are held out from the denoiser's training; ``prepare_data.py`` already
left out every file the dev sets list (and their content-equivalents), and this script checks that no
file it uses appears in a ``../shared/bench/dev/*/meta.jsonl`` ``sources`` list (``--dev``; only those
metadata files are read there, never the dev audio). Deterministic: item ``k`` is a pure function of
``(seed, k)`` and the item count (the count sets the RT60 strata), ``numpy.random.default_rng``.

Written under ``DIR`` (stale ``tune-array-*`` files of a larger earlier run are removed):

- ``noisy/<id>.flac``: the microphones, ``M`` channels (channel i = mic i), 16-bit PCM, 16 kHz;
- ``clean/<id>.flac``: the reference, mono: the dry target convolved with its mic-0 RIR truncated to
  the direct path + 50 ms of early reflections, ``h0[0 : n_d + 800 + 1]`` with
  ``n_d = round(|mic0 - target| / c * 16000) + 40`` (pyroomacoustics' fractional-delay offset), same
  gain as in ``noisy`` (``reference``, ``early_reflections_ms`` in ``meta.jsonl``);
- ``image/<id>.flac``: the target's whole reverberant image at the microphones, same gain, ``M``
  channels as in ``dev/array`` (its channel 0 is the mic-0 image; the scorer's oracle baselines
  ``mvdr-oracle`` / ``mvdr-rtf-oracle`` take ``noisy - image`` per channel as the noise-only signal);
- ``dry/<id>.flac``: the dry target stream (mono, at -26 dBFS P.56; ``dry_gain_db`` is its gain into
  ``noisy``), as in ``dev/array``;
- ``meta.jsonl``: one line per item with ``dev/array``'s keys (ids ``tune-array-NNN``), plus
  ``interferer_level_dbfs``, ``noise_level_dbfs``, ``diffuse_method`` and per-source ``segment``
  (the record number in ``index.json``'s ``files``), ``group`` and ``offset``;
- ``card.md``: the data card of this build (sources with package, version, licence and minutes used;
  the parameters; the set's composition).

Recipe, per item (:func:`make_item`):

- **geometry**: the ``voxd.geometry`` presets ``respeaker-4mic-hat``, ``respeaker-usb-4mic``,
  ``respeaker-6mic`` cycled (item k: ``GEOMETRIES[k % 3]``); ``mic_positions`` in the array frame
  (centre at the origin, z = 0), the array horizontal in the room at a random yaw.
- **interferer kind** ``KINDS[k % 4]`` (noise, music, talker, tv-babble) and **SIR**
  ``SIRS_DB[(k % 4 + k // 12) % 4]`` (-5, 0, 5, 10 dB): 48 items hold every geometry x kind x SIR once.
- **room**: pyroomacoustics ShoeBox, image sources only (no ray tracing, no air absorption), 3..8 x
  3..6 m, height 2.5..3.2 m. The design RT60 (``rt60_target_s``) is stratified per geometry over
  0.15..0.8 s (the strata in a seeded random order, kept 0.02 s clear of the scorer's bucket edges 0.3
  and 0.5 s), so every geometry has items in all three buckets. Absorption: Sabine's for the design
  RT60 (``pra.inverse_sabine``, which also gives ``ism_max_order``: images up to ``c * RT60``), spread
  over the six surfaces by random weights 0.6..1.3 (area-weighted mean kept), then calibrated (up to 5
  single-pair simulations, Eyring-style update) until the RT60 measured on the target->mic-0 RIR
  (Schroeder T30, ``pra.experimental.measure_rt60``) is within 2 % of the design; ``rt60_s`` is that
  measured value (the scorer buckets on it). Rooms whose Sabine absorption would exceed 0.8 are
  redrawn (a 0.15 s room is a small one).
- **placement**: the array on a table (anywhere >= 0.5 m from the walls) or by a wall (0.1..0.4 m from
  it, ``wall_index`` 0..3 = the x = 0, x = Lx, y = 0, y = Ly wall, as pyroomacoustics orders them) at
  0.7..1.2 m; the target 0.8..3.3 m from the array centre at a random azimuth, its mouth at a seated
  (1.1..1.3 m, p 0.6) or standing (1.5..1.8 m) height; one point interferer 1..4 m away at another
  azimuth (separation >= 30 deg) and a height for its kind; everything >= 0.3 m from the walls.
- **target**: utterances of ONE val speaker (a fillets fish voice, a voice pack, a TTS voice, a
  language's reader; synthetic speakers with p 0.15, speakers drawn with weight ~ sqrt(minutes)) back
  to back with 0.1..0.6 s pauses after a 0.3..0.8 s lead-in, each at its index active level -26 +- 2 dB,
  ending 0.2..0.5 s before the item's end; items 5..7 s.
- **interferer** (one point source, its stream started 1 s before the item so its reverberation is
  built up at t = 0): ``noise`` = a non-music val noise (>= 1.5 s) looped with 50 ms cross-fades;
  ``music`` = a segment of a val music track (>= 20 s); ``talker`` = utterances of another val speaker
  (other speaker and other group than the target's); ``tv-babble`` = 2..3 other speakers at +-3 dB plus
  val music or noise 6..12 dB under them, through a small loudspeaker's band-pass (2nd-order high-pass
  120..250 Hz, 4th-order low-pass 5..7 kHz), from one point (a TV).
- **diffuse noise** (``diffuse_kind`` ``recording``): ``M`` different segments (offsets spread over the
  looped file) of one steady val noise (non-music, >= 3 s, active level within 10 dB of its floor),
  mixed per STFT bin (512 points, hop 256) by the symmetric square root of the spherically isotropic
  coherence ``sinc(2 f d_ij / c)`` (Habets & Gannot 2007), so every mic pair has a diffuse field's
  coherence; plus independent mic self-noise at -71..-69 dBFS (``self_noise_dbfs``).
- **levels** (mic 0): target image active level (ITU-T P.56 method B, the shared benchmark's
  ``tools/audio.py`` definition, re-implemented in :func:`active_level_db`) -38..-26 dBFS
  (``speech_level_dbfs``); ``sir_db`` = that level over the interferer image's power over the item;
  ``snr_db`` 10..25 dB = that level over the power of diffuse + self noise; ``snr_total_db`` = over
  ``noisy - image``. All signals scaled down together if a sample of ``noisy`` would exceed 0.99
  (``level_scaled_for_headroom_db``); the written levels are measured after that.
- **labels**: ``speech_segments_s`` = the P.56-relative activity (20 ms frames at 10 ms, > level - 30 dB,
  gaps < 0.2 s bridged, runs < 50 ms dropped) of the dry target stream, as in ``dev/array``;
  ``lead_in_s`` = ``speech_start_s`` = where the first utterance starts; ``drr_db`` (+-40 samples around
  ``n_d`` vs the rest of h0) and ``c50_db`` (``h0[: n_d + 801]`` vs the rest).
- **azimuths**: ``target_azimuth_deg`` etc. in the array's frame, degrees counter-clockwise from +x,
  ``atan2`` of (source - array centre) minus ``array_yaw_deg`` (:func:`array_frame`); this reproduces
  ``dev/array``'s values from its ``room`` blocks (checked on all 16 items).

Data card (the default build: 48 items, seed 20, 4.8 minutes of audio, 45 MB; about 3 minutes on 2
shared cores, ``nice -n 5``; per-build figures in ``DIR/card.md``). All audio is from the validation
split of ``/work/voxd-train/data`` (Debian ``main`` packages at the versions ``index.json`` records;
licences from the packages' ``copyright`` files as ``index.json`` records them, abridged here).
Minutes used = the union of the parts of each file the set uses (a looped file counts whole):

======  ============================  =========================  ===========================  =====  =====
role    package                       version                    licence                      files  min
======  ============================  =========================  ===========================  =====  =====
speech  fillets-ng-data-cs            1.0.1-1.1                  GPL                             39   1.60
speech  tuxpaint-stamps-default       2022.06.04-1               GPL-2                           75   1.02
speech  hedgewars-data                1.0.2-6                    GPL-2, GFDL-1.3, CC-BY-SA-3.0   39   0.75
speech  fillets-ng-data-nl            1.0.1-1.1                  GPL                             18   0.69
speech  klettres-data                 4:22.12.3-1                GPL-2+, GFDL, CC0-1.0           36   0.64
speech  festvox-czech-machac (TTS)    1.0.0-5                    GPL                             10   0.53
speech  asterisk-core-sounds-fr-g722  1.6.1-1                    CC-BY-SA-3.0, CC-BY-3.0          9   0.34
speech  espeak-ng (TTS)               1.51+dfsg-10+deb12u2       GPL, BSD                         3   0.15
speech  festvox-ca-ona-hts (TTS)      1.3-3                      LGPL-2.1+, BSD-3-clause          3   0.14
speech  qabcs-data                    1.0.2-6                    GPL-3+, CC0-1.0                  6   0.07
music   widelands-data                2:1.1-3                    GPL-2+                           2   0.81
music   0ad-data                      0.0.26-1                   CC-BY-SA-3.0                     2   0.36
music   supertuxkart-data             1.4+dfsg-2                 GPL-3+                           3   0.34
music   colobot-common-sounds         0.2.0-2                    GPL-3+                           2   0.21
music   torcs-data                    1.3.7+dfsg-5               GPL-2+                           1   0.10
noise   scorched3d-data               44+dfsg-8                  GPL-2+, CC-BY-SA-3               9   0.68
noise   supertuxkart-data             1.4+dfsg-2                 GPL-3+                           2   0.34
noise   torcs-data                    1.3.7+dfsg-5               GPL-2+                           2   0.19
noise   wesnoth-1.16-data             1:1.16.9-1                 GPL                              3   0.17
noise   megaglest-data                3.13.0-3                   CC-BY-SA-3.0, GPL-2+             2   0.12
noise   minetest-data                 5.6.1+dfsg+~1.9.0mt8+dfsg  LGPL-2.1+, CC-BY-SA-3.0          1   0.11
noise   colobot-common-sounds         0.2.0-2                    GPL-3+                           1   0.07
noise   lincity-ng-data               2.9~git20150314-5          GPL-2+, MIT                      1   0.06
RIRs    pyroomacoustics (PyPI)        0.10.1                     MIT                              -      -
======  ============================  =========================  ===========================  =====  =====

What the val split lacks, and what is used instead: little steady noise (no recorded HVAC, fan or
long ambience: the diffuse field is drawn from the 9 steady val files, looped: birds, a harbour, a
jet flyby, a laser hum, engines, a car, a fire, a river) and few speakers (24 speaker keys with >= 6 s,
most minutes in tuxpaint's Catalan readings, fillets' Czech levels and the TTS voices), so speakers
and noise files recur across items (at other offsets, rooms and levels). It has music (18 tracks
>= 20 s from 6 packages). Speech is multilingual (cs, nl, ca, en, es, de, fr, pt, ar), much of it
game/educational voice acting (single words, letter names, short lines), 15 % of the speakers
drawn synthetic; no English-only filter.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyroomacoustics as pra
import soundfile as sf
from scipy.signal import butter, fftconvolve, istft, lfilter, sosfilt, stft

from voxd.geometry import PRESETS, mic_azimuths_deg, preset_positions

FS = 16000
GENERATOR = "arrayset/1.0"
GEOMETRIES = ("respeaker-4mic-hat", "respeaker-usb-4mic", "respeaker-6mic")
KINDS = ("noise", "music", "talker", "tv-babble")
SIRS_DB = (-5.0, 0.0, 5.0, 10.0)
RT60_RANGE = (0.15, 0.8)
RT60_EDGES = (0.3, 0.5)  # the scorer's buckets (score_array.RT60_BUCKETS)
EARLY_MS = 50
PRA_OFFSET = pra.constants.get("frac_delay_length") // 2  # 40: pyroomacoustics' fractional-delay centre
C = float(pra.constants.get("c"))
DRY_LEVEL_DB = -26.0
SYNTH_P = 0.15
WALLS = ("west", "east", "south", "north", "floor", "ceiling")  # pyroomacoustics' order: x=0, x=Lx, ...
DEFAULT_DATA = Path("/work/voxd-train/data")
DEFAULT_DEV = Path("/work/shared/bench/dev")
REFERENCE = ("clean = target source convolved with h0[0:n_d+800+1], h0 = target->mic0 RIR, n_d = "
             "round(|mic0-target|/c*16000) + 40 (pra fractional-delay offset): direct path plus "
             "reflections up to 50 ms after it, same gain as in noisy; noise-only = noisy - image")


# ------------------------------------------------------------------------------------------------ levels
def active_level_db(x: np.ndarray, fs: int = FS) -> float:
    """ITU-T P.56 method B active speech level (dBFS, mean square of the active part), as the shared
    benchmark's ``tools/audio.py`` ``active_level_db`` defines it: envelope of |x| by two one-pole
    smoothers (30 ms), 15 thresholds 2^-15 .. 2^-1 with 0.2 s hangover, margin 15.9 dB, interpolated."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n == 0:
        return -200.0
    g = math.exp(-1.0 / (fs * 0.03))
    q = lfilter([1 - g], [1, -g], lfilter([1 - g], [1, -g], np.abs(x)))
    hang = math.ceil(fs * 0.2)
    sq = float(np.sum(x**2))
    c = 2.0 ** np.arange(-15, 0)
    idx = np.arange(n)
    a = np.empty(c.size)
    for j, cj in enumerate(c):
        hit = q >= cj
        if not hit.any():
            a[j] = 0
            continue
        last = np.maximum.accumulate(np.where(hit, idx, -10 * hang - 1))
        a[j] = np.count_nonzero(idx - last <= hang)
    if a[0] == 0:
        return -200.0
    eps = 1e-20
    big_a = 10 * np.log10(sq / np.maximum(a, eps) + eps)
    d = big_a - 20 * np.log10(c)
    if d[0] < 15.9:
        return float(10 * np.log10(sq / n + eps))
    for j in range(1, c.size):
        if a[j] == 0:
            return float(big_a[j - 1])
        if d[j] <= 15.9:
            t = (d[j - 1] - 15.9) / (d[j - 1] - d[j])
            return float(big_a[j - 1] + t * (big_a[j] - big_a[j - 1]))
    return float(big_a[-1])


def power_db(x: np.ndarray) -> float:
    """Mean-square level in dBFS."""
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _runs(b: np.ndarray) -> list[tuple[int, int, bool]]:
    if b.size == 0:
        return []
    d = np.flatnonzero(np.diff(b.astype(np.int8))) + 1
    st = np.concatenate([[0], d])
    en = np.concatenate([d, [b.size]])
    return [(int(s), int(e), bool(b[s])) for s, e in zip(st, en, strict=True)]


def speech_segments(x: np.ndarray, rel_db: float = -30.0, floor_db: float = -75.0) -> list[list[float]]:
    """Speech segments (s) of a clean signal: 10 ms frames whose centred 20 ms level is above its P.56
    level + ``rel_db`` and ``floor_db``; gaps < 0.2 s bridged, runs < 50 ms dropped."""
    hop, win = FS // 100, FS // 50
    nfr = math.ceil(x.size / hop)
    pad = (win - hop) // 2
    xp = np.concatenate([np.zeros(pad), np.asarray(x, np.float64), np.zeros(win + hop)])
    cs = np.concatenate([[0.0], np.cumsum(xp**2)])
    st = np.arange(nfr) * hop
    lv = 10 * np.log10((cs[st + win] - cs[st]) / win + 1e-20)
    act = (lv > active_level_db(x) + rel_db) & (lv > floor_db)
    runs = _runs(act)
    for i, (s, e, v) in enumerate(runs):
        if not v and 0 < i < len(runs) - 1 and e - s < 20:
            act[s:e] = True
    for s, e, v in _runs(act):
        if v and e - s < 5:
            act[s:e] = False
    return [[round(s * 0.01, 3), round(e * 0.01, 3)] for s, e, v in _runs(act) if v]


# -------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Seg:
    """One file of the validation split (a record of ``index.json``)."""

    record: int  # position in index.json "files"
    role: str  # speech | noise
    package: str
    version: str
    licence: str
    path: str
    group: str
    speaker: str  # speech: speaker key (see speaker_of); noise: the group
    kind: str  # speech: real | synthetic; noise: music, sfx, household, ambient, traffic, keyboard
    offset: int
    length: int
    level_db: float
    floor_db: float

    @property
    def seconds(self) -> float:
        return self.length / FS


def speaker_of(rec: dict[str, Any]) -> str:
    """A speaker key: fillets' ``<level>-<fish>-<name>`` and ``<fish>-<name>`` files by package and fish
    letter (the same voice actor across levels), its other files by level and name prefix; asterisk
    prompts by voice directory; otherwise the split group (a voice pack, a TTS voice, a language's
    reader)."""
    pkg, path, group = str(rec["package"]), str(rec["path"]), str(rec["group"])
    stem = path.rsplit("/", 1)[-1].split(".")[0]
    if pkg.startswith("fillets-ng-data"):
        parts = stem.split("-")
        if len(parts) >= 3 and len(parts[1]) == 1:  # <level>-<fish>-<name>
            return f"{pkg}:{parts[1]}"
        if len(parts) == 2 and len(parts[0]) == 1:  # <fish>-<name>
            return f"{pkg}:{parts[0]}"
        return f"{group}:{parts[0]}"
    m = re.search(r"/sounds/([^/]+)/", path)
    if pkg.startswith("asterisk") and m:
        return f"{pkg}:{m.group(1)}"
    return group


class ValData:
    """The validation split of the prepared data: memory-mapped float32 arrays and their index."""

    def __init__(self, data: Path) -> None:
        audio = data / "audio"
        index = json.loads((audio / "index.json").read_text())
        if int(index["rate"]) != FS:
            raise ValueError(f"{audio / 'index.json'}: rate {index['rate']}, expected {FS}")
        self.index_path = audio / "index.json"
        self.arrays = {r: np.memmap(audio / f"{r}_val.f32", dtype="<f4", mode="r")
                       for r in ("speech", "noise")}  # fmt: skip
        licences: dict[str, str] = index["licences"]
        self.segs: list[Seg] = []
        for i, f in enumerate(index["files"]):
            if f["split"] != "val":
                continue
            pkg = str(f["package"])
            s = Seg(i, str(f["role"]), pkg, str(f["version"]), licences.get(pkg, "?"), str(f["path"]),
                    str(f["group"]), speaker_of(f) if f["role"] == "speech" else str(f["group"]),
                    str(f["kind"]), int(f["offset"]), int(f["length"]), float(f["level_db"]),
                    float(f["floor_db"]))  # fmt: skip
            if s.offset + s.length > self.arrays[s.role].size:
                raise ValueError(f"index record {i} runs past {s.role}_val.f32")
            self.segs.append(s)
        self.speakers: dict[str, list[Seg]] = {}
        for s in self.segs:
            if s.role == "speech":
                self.speakers.setdefault(s.speaker, []).append(s)
        # speakers with enough material for a target stream (>= 6 s)
        self.speaker_keys = sorted(k for k, v in self.speakers.items() if sum(s.seconds for s in v) >= 6.0)
        noise = [s for s in self.segs if s.role == "noise"]
        self.music = [s for s in noise if s.kind == "music" and s.seconds >= 20.0]
        self.noises = [s for s in noise if s.kind != "music" and s.seconds >= 1.5]
        self.steady = [s for s in noise if s.kind != "music" and s.seconds >= 3.0
                       and s.level_db - s.floor_db <= 10.0]  # fmt: skip
        if not (self.speaker_keys and self.music and self.noises and self.steady):
            raise ValueError("the val split lacks speech, music or noise of the needed lengths")

    def audio(self, s: Seg) -> np.ndarray:
        """The file's samples, float64 (a copy)."""
        return np.array(self.arrays[s.role][s.offset : s.offset + s.length], dtype=np.float64)

    def pick_speaker(self, rng: np.random.Generator, exclude: set[str], exclude_groups: set[str]) -> str:
        """A speaker key (synthetic with p SYNTH_P), weight ~ sqrt(minutes), none of ``exclude`` and none
        with a file in ``exclude_groups``."""
        keys = [k for k in self.speaker_keys if k not in exclude
                and not any(s.group in exclude_groups for s in self.speakers[k])]  # fmt: skip
        synth = rng.uniform() < SYNTH_P
        pool = [k for k in keys if (self.speakers[k][0].kind == "synthetic") == synth] or keys
        w = np.array([math.sqrt(sum(s.seconds for s in self.speakers[k])) for k in pool])
        return pool[int(rng.choice(len(pool), p=w / w.sum()))]


def source_record(s: Seg, role: str, **extra: Any) -> dict[str, Any]:
    """A ``sources`` entry (dev/array's keys plus the index record number, group and offset)."""
    rec: dict[str, Any] = {"role": role, "package": s.package, "version": s.version, "license": s.licence,
                           "file": "/" + s.path.lstrip("/"), "segment": s.record, "group": s.group}
    if s.role == "speech":
        rec["speaker"] = s.speaker
    rec.update(extra)
    return rec


# ---------------------------------------------------------------------------------------------- signals
def speech_stream(data: ValData, speaker: str, rng: np.random.Generator, n: int, start: int, end: int,
                  role: str, cut: bool) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Utterances of ``speaker`` from sample ``start`` with 0.1..0.6 s pauses, each at its index level
    -26 +- 2 dB; an utterance must end by ``end`` unless ``cut`` (then the last one is cut at ``n``).
    A file is used once per stream, except in ``cut`` streams (interferers), which repeat the
    speaker's files if they run out. Returns the stream ``(n,)`` and its ``sources`` entries."""
    y = np.zeros(n)
    recs: list[dict[str, Any]] = []
    segs = data.speakers[speaker]
    t = start
    for _ in range(3 if cut else 1):  # the speaker's files in a random order (interferers: again)
        for i in rng.permutation(len(segs)):
            s = segs[int(i)]
            if t + s.length > (n if cut else end):
                if cut:
                    length = n - t
                    if length < FS // 2:
                        return y, recs
                else:
                    continue
            else:
                length = s.length
            gain = 10 ** ((DRY_LEVEL_DB + rng.uniform(-2.0, 2.0) - s.level_db) / 20)
            y[t : t + length] += gain * data.audio(s)[:length]
            recs.append(source_record(s, role, start_s=0.0, dur_s=round(length / FS, 3),
                                      at_s=round(t / FS, 3)))
            t += length + int(rng.uniform(0.1, 0.6) * FS)
            if t >= (n if cut else end) - FS // 4:
                return y, recs
    return y, recs


def looped(x: np.ndarray, start: int, n: int, xfade: int = 800) -> np.ndarray:
    """``n`` samples of ``x`` repeated with ``xfade``-sample raised-cosine cross-fades, from ``start``."""
    xfade = min(xfade, x.size // 4)
    if x.size >= start + n:
        return x[start : start + n].copy()
    body = x[: x.size - xfade].copy()
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(xfade) / max(xfade, 1))
    body[:xfade] = x[:xfade] * ramp + x[x.size - xfade :] * (1 - ramp)  # the loop's seam
    reps = math.ceil((start + n) / body.size) + 1
    return np.tile(body, reps)[start : start + n]


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit RMS."""
    return x / math.sqrt(float(np.mean(x**2)) + 1e-20)


def interferer_signal(data: ValData, kind: str, rng: np.random.Generator, n: int,
                      target_speaker: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The interferer's dry signal ``(n,)`` (unit RMS) and its ``sources`` entries."""
    if kind == "noise":
        s = data.noises[int(rng.integers(len(data.noises)))]
        start = int(rng.integers(s.length))
        return unit(looped(data.audio(s), start, n)), [
            source_record(s, "interferer", start_s=round(start / FS, 3), dur_s=round(n / FS, 3), mode="loop")]
    if kind == "music":
        s = data.music[int(rng.integers(len(data.music)))]
        start = int(rng.integers(s.length - n))
        return unit(data.audio(s)[start : start + n]), [
            source_record(s, "interferer", start_s=round(start / FS, 3), dur_s=round(n / FS, 3),
                          mode="segment")]
    groups = {s.group for s in data.speakers[target_speaker]}
    if kind == "talker":
        spk = data.pick_speaker(rng, {target_speaker}, groups)
        y, recs = speech_stream(data, spk, rng, n, int(rng.uniform(0.0, 0.5) * FS), n, "interferer", cut=True)
        return unit(y), recs
    if kind != "tv-babble":
        raise ValueError(f"unknown interferer kind {kind!r}")
    used = {target_speaker}
    y = np.zeros(n)
    recs = []
    for _ in range(int(rng.integers(2, 4))):
        spk = data.pick_speaker(rng, used, groups)
        used.add(spk)
        groups |= {s.group for s in data.speakers[spk]}
        x, r = speech_stream(data, spk, rng, n, int(rng.uniform(0.0, 0.8) * FS), n, "interferer", cut=True)
        y += unit(x) * 10 ** (rng.uniform(-3.0, 3.0) / 20)
        recs += r
    pool = data.music if rng.uniform() < 0.5 else data.noises
    s = pool[int(rng.integers(len(pool)))]
    start = int(rng.integers(max(1, s.length - n))) if s.length > n else int(rng.integers(s.length))
    bed_db = float(rng.uniform(-12.0, -6.0))
    y = unit(y) + unit(looped(data.audio(s), start, n)) * 10 ** (bed_db / 20)
    recs.append(source_record(s, "interferer", start_s=round(start / FS, 3), dur_s=round(n / FS, 3),
                              mode="tv-bed", rel_db=round(bed_db, 2)))
    hp, lp = float(rng.uniform(120, 250)), float(rng.uniform(5000, 7000))
    y = sosfilt(np.vstack([butter(2, hp, "highpass", fs=FS, output="sos"),
                           butter(4, lp, "lowpass", fs=FS, output="sos")]), y)
    recs[-1]["tv_band_hz"] = [round(hp, 1), round(lp, 1)]
    return unit(y), recs


def diffuse_field(x: np.ndarray, positions: np.ndarray, n: int, rng: np.random.Generator,
                  nfft: int = 512) -> tuple[np.ndarray, list[float]]:
    """``(M, n)`` spherically isotropic noise from recording ``x``: ``M`` segments at offsets spread over
    the looped file, mixed per bin by the symmetric square root ``V sqrt(L) V^T`` of the coherence
    ``sinc(2 f d_ij / c)`` (unique, so smooth across bins: an eigenvector basis with arbitrary signs
    would leak wrong coherence between neighbouring bins in the overlap-add). Unit RMS at mic 0.
    Returns the signals and the segment offsets (s)."""
    m = positions.shape[0]
    period = max(x.size, n)
    o0 = int(rng.integers(x.size))
    offs = [(o0 + k * period // m) % x.size for k in range(m)]
    seg = np.stack([unit(looped(x, o, n + nfft)) for o in offs])
    _, _, w = stft(seg, nperseg=nfft, noverlap=nfft // 2)
    freqs = np.fft.rfftfreq(nfft, 1.0 / FS)
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    for k, f in enumerate(freqs):
        lam, v = np.linalg.eigh(np.sinc(2.0 * f * d / C))
        w[:, k, :] = ((v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T) @ w[:, k, :]  # symmetric root
    _, y = istft(w, nperseg=nfft, noverlap=nfft // 2)
    y = y[:, :n]
    return y / math.sqrt(float(np.mean(y[0] ** 2)) + 1e-20), [round(o / FS, 3) for o in offs]


# ------------------------------------------------------------------------------------------------ rooms
def array_frame(centre: np.ndarray, yaw_deg: float, pos: np.ndarray) -> tuple[float, float, float]:
    """(azimuth deg in [0, 360) counter-clockwise from the array's +x, elevation deg, distance m) of
    room point ``pos`` seen from an array at ``centre`` rotated by ``yaw_deg`` about z."""
    v = np.asarray(pos, np.float64) - np.asarray(centre, np.float64)
    az = (math.degrees(math.atan2(v[1], v[0])) - yaw_deg) % 360.0
    el = math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))
    return az, el, float(np.linalg.norm(v))


def rotate_z(p: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Rows of ``p`` ``(M, 3)`` rotated by ``yaw_deg`` about z."""
    a = math.radians(yaw_deg)
    r = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    out: np.ndarray = np.asarray(p, np.float64) @ r.T
    return out


@dataclass
class Scene:
    """Where everything is (room coordinates, m)."""

    dims: np.ndarray
    placement: str
    wall_index: int
    centre: np.ndarray
    yaw_deg: float
    target: np.ndarray
    interferer: np.ndarray


INTERFERER_Z = {"noise": (0.2, 2.0), "music": (0.5, 1.8), "talker": (1.1, 1.8), "tv-babble": (0.6, 1.3)}


def draw_scene(rng: np.random.Generator, rt60: float, kind: str) -> Scene:
    """A room (Sabine absorption <= 0.8 for ``rt60``), the array, the target and the interferer."""
    margin = 0.3
    for _ in range(2000):
        dims = np.round([rng.uniform(3.0, 8.0), rng.uniform(3.0, 6.0), rng.uniform(2.5, 3.2)], 3)
        if pra.inverse_sabine(rt60, list(dims))[0] > 0.8:
            continue
        z = rng.uniform(0.7, 1.2)
        if rng.uniform() < 0.5:
            placement, wall = "table", -1
            centre = np.array([rng.uniform(0.5, dims[0] - 0.5), rng.uniform(0.5, dims[1] - 0.5), z])
        else:
            placement, wall = "wall", int(rng.integers(4))
            gap = rng.uniform(0.1, 0.4)
            axis, far = wall // 2, wall % 2  # 0/1: x = 0 / Lx; 2/3: y = 0 / Ly
            centre = np.array([rng.uniform(0.5, dims[0] - 0.5), rng.uniform(0.5, dims[1] - 0.5), z])
            centre[axis] = dims[axis] - gap if far else gap
        centre = np.round(centre, 3)
        yaw = round(float(rng.uniform(0.0, 360.0)), 2)
        target = None
        for _ in range(300):
            dist = rng.uniform(0.8, 3.3)
            dz = (rng.uniform(1.1, 1.3) if rng.uniform() < 0.6 else rng.uniform(1.5, 1.8)) - centre[2]
            if dist**2 - dz**2 < 0.5**2:
                continue
            phi = rng.uniform(0.0, 2 * np.pi)
            r = math.sqrt(dist**2 - dz**2)
            p = np.round(centre + np.array([r * math.cos(phi), r * math.sin(phi), dz]), 3)
            if np.all(p >= margin) and np.all(p <= dims - margin):
                target = p
                break
        if target is None:
            continue
        phi_t = math.atan2(target[1] - centre[1], target[0] - centre[0])
        for _ in range(300):
            phi = phi_t + rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(30.0, 180.0))
            r_h = rng.uniform(1.0, 4.0)
            zi = rng.uniform(*INTERFERER_Z[kind])
            p = np.round(np.array([centre[0] + r_h * math.cos(phi), centre[1] + r_h * math.sin(phi), zi]), 3)
            sep = abs((math.degrees(math.atan2(p[1] - centre[1], p[0] - centre[0]) - phi_t) + 180)
                      % 360 - 180)
            if (np.all(p >= margin) and np.all(p <= dims - margin) and sep >= 30.0
                    and np.linalg.norm(p - target) >= 0.5):  # fmt: skip
                return Scene(dims, placement, wall, centre, yaw, target, p)
    raise RuntimeError("could not place the array and sources in a room")


def wall_materials(dims: np.ndarray, e: float, weights: np.ndarray) -> dict[str, Any]:
    """Per-surface absorption ``e * w_i`` (area-weighted mean ``e``), capped at 0.99."""
    lx, ly, lz = dims
    area = np.array([ly * lz, ly * lz, lx * lz, lx * lz, lx * ly, lx * ly])
    w = weights * area.sum() / float(np.sum(weights * area))
    return {name: pra.Material(float(min(0.99, e * wi))) for name, wi in zip(WALLS, w, strict=True)}


def simulate(dims: np.ndarray, e: float, weights: np.ndarray, order: int, sources: list[np.ndarray],
             mics: np.ndarray) -> list[np.ndarray]:
    """RIRs ``[source] -> (M, L)`` (pyroomacoustics ShoeBox, image sources only)."""
    room = pra.ShoeBox(list(dims), fs=FS, materials=wall_materials(dims, e, weights), max_order=order,
                       air_absorption=False, ray_tracing=False, use_rand_ism=False)
    for s in sources:
        room.add_source(list(s))
    room.add_microphone_array(np.asarray(mics, np.float64).T.copy())
    room.compute_rir()
    out = []
    for j in range(len(sources)):
        length = max(len(room.rir[m][j]) for m in range(mics.shape[0]))
        h = np.zeros((mics.shape[0], length))
        for m in range(mics.shape[0]):
            h[m, : len(room.rir[m][j])] = room.rir[m][j]
        out.append(h)
    return out


def measure_rt60(h: np.ndarray) -> float:
    """RT60 (s) of an RIR: Schroeder T30 extrapolated to 60 dB."""
    return float(pra.experimental.measure_rt60(h, fs=FS, decay_db=30))


def calibrate(scene: Scene, rt60: float, weights: np.ndarray, mic0: np.ndarray) -> tuple[float, int, float]:
    """Mean absorption whose target->mic-0 RT60 (T30) is within 2 % of ``rt60``: Sabine's to start, then
    ``e <- 1 - (1 - e)^(measured / rt60)`` (Eyring), at most 5 simulations of that one pair. Returns
    (absorption, ISM order, measured RT60 s)."""
    e, order = pra.inverse_sabine(rt60, list(scene.dims))
    measured = 0.0
    for _ in range(5):
        measured = measure_rt60(simulate(scene.dims, e, weights, order, [scene.target], mic0[None, :])[0][0])
        if abs(measured / rt60 - 1) <= 0.02:
            break
        e = float(np.clip(1 - (1 - e) ** (measured / rt60), 0.02, 0.95))
    return float(e), int(order), measured


# ------------------------------------------------------------------------------------------------ items
@dataclass(frozen=True)
class Plan:
    """What item ``k`` holds, fixed before any audio is made."""

    k: int
    geometry: str
    kind: str
    sir_db: float
    rt60: float


def plan(n_items: int, seed: int) -> list[Plan]:
    """Geometry ``k % 3``, kind ``k % 4``, SIR ``(k % 4 + k // 12) % 4``; design RT60s stratified per
    geometry over :data:`RT60_RANGE` (one stratum per item, the strata in a seeded random order, a seeded
    point inside each, kept 0.02 s clear of the bucket edges)."""
    rng = np.random.default_rng([seed, 1_000_003])
    lo, hi = RT60_RANGE
    rt60: dict[int, float] = {}
    for g in range(len(GEOMETRIES)):
        ks = list(range(g, n_items, len(GEOMETRIES)))
        order = rng.permutation(len(ks))
        for j, k in enumerate(ks):
            t = lo + (hi - lo) * (int(order[j]) + rng.uniform(0.15, 0.85)) / len(ks)
            for edge in RT60_EDGES:
                if abs(t - edge) < 0.02:
                    t = edge - 0.02 if t < edge else edge + 0.02
            rt60[k] = round(float(t), 3)
    return [Plan(k, GEOMETRIES[k % 3], KINDS[k % 4], SIRS_DB[(k % 4 + k // 12) % 4], rt60[k])
            for k in range(n_items)]  # fmt: skip


def _gain_for_power(d: np.ndarray, s: np.ndarray, target_power: float) -> float:
    """g >= 0 with mean((g d + s)^2) = target_power (d, s given); 0 if s alone is louder."""
    a, b, c = float(np.mean(d**2)), 2 * float(np.mean(d * s)), float(np.mean(s**2)) - target_power
    disc = b * b - 4 * a * c
    return max(0.0, (-b + math.sqrt(max(disc, 0.0))) / (2 * a))


def make_item(p: Plan, data: ValData, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One item: its meta.jsonl record and its signals (noisy (M, n), image (M, n), clean (n,), dry (n,))."""
    rng = np.random.default_rng([seed, p.k])
    iid = f"tune-array-{p.k:03d}"
    local = preset_positions(p.geometry)
    m = local.shape[0]
    dur = float(rng.uniform(5.0, 7.0))
    n = round(dur * FS)
    lead = float(rng.uniform(0.3, 0.8))
    snr_db = round(float(rng.uniform(10.0, 25.0)), 2)
    level_db = float(rng.uniform(-38.0, -26.0))
    self_db = float(rng.uniform(-71.0, -69.0))

    scene = draw_scene(rng, p.rt60, p.kind)
    mics = scene.centre + rotate_z(local, scene.yaw_deg)
    weights = np.round(rng.uniform(0.6, 1.3, 6), 3)
    e, order, _ = calibrate(scene, p.rt60, weights, mics[0])
    h_t, h_i = simulate(scene.dims, e, weights, order, [scene.target, scene.interferer], mics)
    rt60_meas = measure_rt60(h_t[0])

    # target: one speaker, from the lead-in to 0.2..0.5 s before the end
    tail = int(rng.uniform(0.2, 0.5) * FS)
    span = (n - tail - round(lead * FS)) / FS
    for _ in range(20):  # a speaker whose utterances fill at least half of the span
        spk = data.pick_speaker(rng, set(), set())
        dry, t_recs = speech_stream(data, spk, rng, n, round(lead * FS), n - tail, "target", cut=False)
        if sum(r["dur_s"] for r in t_recs) >= 0.5 * span:
            break
    if not t_recs:
        raise RuntimeError(f"{iid}: no target utterance fits")
    dry *= 10 ** ((DRY_LEVEL_DB - active_level_db(dry)) / 20)
    image = np.stack([fftconvolve(dry, h)[:n] for h in h_t])
    n_d = round(float(np.linalg.norm(mics[0] - scene.target)) / C * FS) + PRA_OFFSET
    n_early = n_d + EARLY_MS * FS // 1000 + 1
    clean = fftconvolve(dry, h_t[0][:n_early])[:n]

    # interferer: started 1 s before the item (reverberation built up at t = 0)
    pre = FS
    x_i, i_recs = interferer_signal(data, p.kind, rng, n + pre, spk)
    for r in i_recs:
        if "at_s" in r:
            r["at_s"] = round(r["at_s"] - pre / FS, 3)
    inter = np.stack([fftconvolve(x_i, h)[pre : pre + n] for h in h_i])

    # diffuse + self noise
    dseg = data.steady[int(rng.integers(len(data.steady)))]
    diff, offs = diffuse_field(data.audio(dseg), mics, n, rng)
    selfn = rng.standard_normal((m, n)) * 10 ** (self_db / 20)

    # levels at mic 0
    g_t = 10 ** ((level_db - active_level_db(image[0])) / 20)
    image, clean = image * g_t, clean * g_t
    g_i = 10 ** ((level_db - p.sir_db - power_db(inter[0])) / 20)
    inter *= g_i
    g_d = _gain_for_power(diff[0], selfn[0], 10 ** ((level_db - snr_db) / 10))
    noise = g_d * diff + selfn
    noisy = image + inter + noise
    peak = float(np.max(np.abs(noisy)))
    scale = min(1.0, 0.99 / peak)
    noisy, image, clean, inter, noise, selfn = (a * scale for a in (noisy, image, clean, inter, noise, selfn))

    speech_level = active_level_db(image[0])
    az_t, el_t, d_t = array_frame(scene.centre, scene.yaw_deg, scene.target)
    az_i, el_i, d_i = array_frame(scene.centre, scene.yaw_deg, scene.interferer)
    h0 = h_t[0]
    e_direct = float(np.sum(h0[max(0, n_d - PRA_OFFSET) : n_d + PRA_OFFSET + 1] ** 2))
    e_all = float(np.sum(h0**2))
    e_early = float(np.sum(h0[:n_early] ** 2))
    preset = PRESETS[p.geometry]
    segs = speech_segments(dry)
    start_s = t_recs[0]["at_s"]
    meta: dict[str, Any] = {
        "id": iid, "noisy": f"noisy/{iid}.flac", "clean": f"clean/{iid}.flac", "dry": f"dry/{iid}.flac",
        "image": f"image/{iid}.flac", "sample_rate": FS, "n_channels": m, "sr": FS, "channels": m,
        "duration_s": round(n / FS, 3), "geometry": p.geometry,
        "mic_positions": [[round(float(c), 5) for c in row] for row in local],
        "mic_angles_deg": [round(float(a), 2) for a in mic_azimuths_deg(local)],
        "array_radius_m": preset.radius_m,
        "target_azimuth_deg": round(az_t, 2), "target_elevation_deg": round(el_t, 2),
        "target_distance_m": round(d_t, 3),
        "interferer_azimuth_deg": round(az_i, 2), "interferer_elevation_deg": round(el_i, 2),
        "interferer_distance_m": round(d_i, 3), "interferer_kind": p.kind,
        "azimuth_separation_deg": round(abs((az_i - az_t + 180.0) % 360.0 - 180.0), 2),
        "rt60_s": round(rt60_meas, 3), "rt60_target_s": p.rt60, "sir_db": p.sir_db, "snr_db": snr_db,
        "snr_total_db": round(speech_level - power_db(noisy[0] - image[0]), 2),
        "speech_level_dbfs": round(speech_level, 2), "self_noise_dbfs": round(power_db(selfn[0]), 2),
        "interferer_level_dbfs": round(power_db(inter[0]), 2),
        "noise_level_dbfs": round(power_db(noise[0]), 2),
        "level_scaled_for_headroom_db": round(20 * math.log10(scale), 2),
        "drr_db": round(10 * math.log10(e_direct / max(e_all - e_direct, 1e-20)), 2),
        "c50_db": round(10 * math.log10(e_early / max(e_all - e_early, 1e-20)), 2),
        "lead_in_s": start_s, "speech_start_s": start_s,
        "dry_gain_db": round(20 * math.log10(g_t * scale), 2), "speech_segments_s": segs,
        "diffuse_kind": "recording",
        "diffuse_method": "isotropic coherence sinc(2 f d / c), one segment per mic, STFT 512/256",
        "room_dims_m": [float(v) for v in scene.dims],
        "room": {
            "placement": scene.placement, "wall_index": scene.wall_index,
            "array_center_m": [float(v) for v in scene.centre], "array_yaw_deg": scene.yaw_deg,
            "target_pos_m": [float(v) for v in scene.target],
            "interferer_pos_m": [float(v) for v in scene.interferer],
            "mean_energy_absorption": round(e, 4), "wall_absorption_weights": [float(w) for w in weights],
            "ism_max_order": order, "simulator": f"pyroomacoustics {pra.__version__} ShoeBox ISM",
        },
        "sources": [*t_recs, *i_recs,
                    source_record(dseg, "diffuse", segment_offsets_s=offs, dur_s=round(n / FS, 3))],
        "reference": REFERENCE, "early_reflections_ms": EARLY_MS, "generator": GENERATOR,
    }  # fmt: skip
    return meta, {"noisy": noisy, "image": image, "clean": clean, "dry": dry}


# ------------------------------------------------------------------------------------------------ build
def dev_files(dev: Path) -> set[str]:
    """Every ``file`` the dev sets' ``sources`` list (their meta.jsonl only), without the leading '/'."""
    out: set[str] = set()
    for meta in sorted(dev.glob("*/meta.jsonl")):
        for line in meta.read_text().splitlines():
            for s in json.loads(line).get("sources", []) if line.strip() else []:
                if isinstance(s, dict) and s.get("file"):
                    out.add(str(s["file"]).lstrip("/"))
    return out


def write_item(out: Path, meta: dict[str, Any], sig: dict[str, np.ndarray]) -> None:
    """The item's four FLAC files (16-bit PCM)."""
    for key in ("noisy", "image", "clean", "dry"):
        x = sig[key]
        sf.write(out / meta[key], x.T if x.ndim == 2 else x, FS, subtype="PCM_16", format="FLAC")


def card(metas: list[dict[str, Any]], data: ValData, args: argparse.Namespace, wall_s: float) -> str:
    """The build's data card (markdown)."""
    by_rec = {s.record: s for s in data.segs}
    spans: dict[int, list[tuple[float, float]]] = {}
    for it in metas:
        for s in it["sources"]:
            seg = by_rec[int(s["segment"])]
            starts = s.get("segment_offsets_s", [s.get("start_s", 0.0)])
            for a in starts:
                b = a + float(s["dur_s"])
                spans.setdefault(seg.record, []).extend(
                    [(a, b)] if b <= seg.seconds else [(0.0, seg.seconds)])  # looped: the whole file
    used: dict[tuple[str, str], dict[int, float]] = {}
    for rec, iv in spans.items():
        seg = by_rec[rec]
        role = "speech" if seg.role == "speech" else ("music" if seg.kind == "music" else "noise")
        covered, end = 0.0, -1.0
        for a, b in sorted(iv):  # length of the union of the used intervals
            covered += max(0.0, b - max(a, end))
            end = max(end, b)
        used.setdefault((role, seg.package), {})[rec] = covered
    total = sum(it["duration_s"] for it in metas)
    lines = [
        f"# Array tuning set ({len(metas)} items, {total / 60:.1f} min)", "",
        f"Built by `bench/arrayset.py` ({GENERATOR}) in {wall_s / 60:.1f} min: `--items {args.items} "
        f"--seed {args.seed} --data {args.data}`. Layout and fields as `../shared/bench/dev/array`; ",
        "score with `score_array.py --set <this folder>`. Tuning only: never train on it.", "",
        "## Sources", "",
        f"All audio from the VALIDATION split of `{args.data}` (`{data.index_path}`, split groups held out "
        "from the denoiser's training). Minutes used: the union of the parts of each file the set uses "
        "(a file can serve several items at other offsets; a looped file counts whole). Licences as "
        "`index.json` records them (the packages' `copyright` files; `...` = more licences listed "
        "there).", "",
        "| role | package | version | licence | files | minutes used |",
        "| --- | --- | --- | --- | ---: | ---: |",
    ]
    for (role, pkg), recs in sorted(used.items()):
        seg = by_rec[next(iter(recs))]
        lines.append(f"| {role} | {pkg} | {seg.version} | {seg.licence} | {len(recs)} | "
                     f"{sum(recs.values()) / 60:.2f} |")
    lines += [f"| RIRs | pyroomacoustics | {pra.__version__} | MIT | - | - |", ""]
    cnt: dict[str, dict[str, int]] = {}
    for it in metas:
        rt = it["rt60_s"]
        bucket = "rt60<0.3" if rt < 0.3 else ("0.3<=rt60<0.5" if rt < 0.5 else "rt60>=0.5")
        for name, val in (("geometry", it["geometry"]), ("interferer", it["interferer_kind"]),
                          ("sir_db", str(it["sir_db"])), ("rt60 bucket", bucket),
                          ("placement", it["room"]["placement"]),
                          ("geometry x rt60 bucket", f"{it['geometry']} {bucket}")):
            cnt.setdefault(name, {})[val] = cnt.setdefault(name, {}).get(val, 0) + 1
    lines += ["## Composition", ""]
    lines += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for name, c in cnt.items()]
    lines += [
        "", "## Generator parameters", "",
        f"- geometries {', '.join(GEOMETRIES)} (cycled); kinds {', '.join(KINDS)}; SIR {SIRS_DB} dB",
        f"- RT60 design {RT60_RANGE[0]}..{RT60_RANGE[1]} s stratified per geometry, absorption calibrated to "
        "the T30 of the target->mic-0 RIR (within 2 %), ISM order from `pra.inverse_sabine`",
        "- rooms 3..8 x 3..6 x 2.5..3.2 m; array 0.7..1.2 m on a table or 0.1..0.4 m from a wall, random yaw",
        "- target 0.8..3.3 m, seated 1.1..1.3 m (p 0.6) / standing 1.5..1.8 m; interferer 1..4 m "
        "horizontally, >= 30 deg away, >= 0.5 m from the target",
        "- items 5..7 s, lead-in 0.3..0.8 s; speech active level (P.56, image mic 0) -38..-26 dBFS; "
        "SNR (diffuse + self noise) 10..25 dB; self noise -71..-69 dBFS; headroom 0.99",
        f"- synthetic target/talker speakers p {SYNTH_P}; reference: {REFERENCE}",
        "", "## Notes", "",
        "- Val split limits: few speakers (speakers recur across items), little steady noise (the diffuse "
        f"field uses {len(data.steady)} steady val noise files, looped; the point `noise` interferer "
        f"{len(data.noises)} non-music val noise files >= 1.5 s, looped), music from "
        f"{len(data.music)} val tracks >= 20 s; no recorded HVAC/fan noise.",
        "- `image` is multichannel (the target's image at every mic), as in dev/array.",
    ]
    return "\n".join(lines) + "\n"


def summary(out: Path) -> list[str]:
    """Per-item table measured from the written files: snr_total at mic 0 (image vs noisy - image), and
    the SIR it implies given the item's snr_db."""
    rows = ["id              geometry            rt60  kind       sir  snr   lvl    "
            "tot_meta tot_file sir_file"]
    for line in (out / "meta.jsonl").read_text().splitlines():
        it = json.loads(line)
        x, _ = sf.read(out / it["noisy"], always_2d=True)
        im, _ = sf.read(out / it["image"], always_2d=True)
        lvl = active_level_db(im[:, 0])
        tot = lvl - power_db(x[:, 0] - im[:, 0])
        inv = 10 ** (-tot / 10) - 10 ** (-it["snr_db"] / 10)
        sir = -10 * math.log10(inv) if inv > 0 else float("inf")
        rows.append(f"{it['id']}  {it['geometry']:18s} {it['rt60_s']:5.3f} {it['interferer_kind']:9s} "
                    f"{it['sir_db']:4.0f} {it['snr_db']:5.1f} {lvl:6.1f} {it['snr_total_db']:8.2f} "
                    f"{tot:8.2f} {sir:8.2f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepare_data.py's --data folder")
    ap.add_argument("--dev", type=Path, default=DEFAULT_DEV,
                    help="shared dev sets: their meta.jsonl sources must not be used (skipped if absent)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = ValData(args.data)
    deny = dev_files(args.dev) if args.dev.is_dir() else set()
    print(f"{len(data.segs)} val files; {len(deny)} dev-set source files to avoid ({args.dev})", flush=True)
    out: Path = args.out
    for sub in ("noisy", "clean", "image", "dry"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    metas = []
    for p in plan(args.items, args.seed):
        t1 = time.perf_counter()
        meta, sig = make_item(p, data, args.seed)
        clash = [s["file"] for s in meta["sources"] if s["file"].lstrip("/") in deny]
        if clash:
            raise RuntimeError(f"{meta['id']}: uses dev-set files {clash}")
        write_item(out, meta, sig)
        metas.append(meta)
        print(f"{meta['id']} {p.geometry:18s} rt60 {meta['rt60_s']:.3f} (design {p.rt60:.3f}, order "
              f"{meta['room']['ism_max_order']}) {p.kind:9s} sir {p.sir_db:+.0f} snr {meta['snr_db']:.1f} "
              f"{time.perf_counter() - t1:.1f} s", flush=True)
    ids = {m["id"] for m in metas}
    for sub in ("noisy", "clean", "image", "dry"):
        for f in (out / sub).glob("tune-array-*.flac"):
            if f.stem not in ids:
                f.unlink()
    tmp = out / "meta.jsonl.tmp"
    tmp.write_text("".join(json.dumps(m) + "\n" for m in metas))
    tmp.replace(out / "meta.jsonl")
    wall = time.perf_counter() - t0
    (out / "card.md").write_text(card(metas, data, args, wall))
    print("\n".join(summary(out)))
    print(f"{len(metas)} items in {out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
