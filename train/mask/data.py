"""On-the-fly multichannel training mixtures for the array mask model.

    from data import ArrayMixtures          # train/mask on sys.path
    ds = ArrayMixtures("/work/voxd-train/data", "/work/voxd-train/mask-rirs", "train")
    b = ds.batch(seed, k, size=8, seconds=4.0)           # geometry GEOMETRIES[k % 3]
    b["mix"].shape == (8, M, 64000)

Self-check and timing (``--check``; builds a few batches per geometry from both splits):

    /work/voxd-train/venv/bin/python train/mask/data.py --check

Batch ``k`` is a pure function of ``(seed, k)`` (``numpy.random.default_rng([seed, k])``, as
``train/denoise/data.py``), whatever came before, for a given bank (rooms are drawn from the rooms
loaded: a bank still being built gives other batches once it grows); one geometry per batch (the mic
count differs).
Audio: the prepared speech/noise pools of ``train/denoise/prepare_data.py`` (``DATA/audio/
{speech,noise}_{split}.f32`` memory-mapped, ``index.json``); rooms: the RIR bank of ``rirs.py``
(``RIRS/{split}/*.npz``: the validation split uses the validation rooms, a separate seed stream).
No ``voxd`` import: it runs in the training venv. Per item (16 kHz, ``n = round(seconds * 16000)``):

- **room**: a bank room of the batch's geometry (uniform); mic ``j`` = channel ``j``.
- **target** (bank source 0): utterances of ONE talker (a speaker key, :func:`speaker_of`: a fillets fish,
  an asterisk voice, else the split group: a voice pack, a TTS voice, a language's reader; synthetic with
  p 0.15, the package drawn with weight ~ sqrt(minutes) as ``train/denoise/data.py``, then the talker
  ~ sqrt(minutes)), each at its index level +-3 dB, 0.05 .. 0.8 s pauses, after a lead-in uniform
  0 .. 1.5 s (0 with p 0.25: then the first utterance may start part-way through); convolved with the
  target's RIRs (``target``) and with mic 0's RIR cut at the direct path + 50 ms (``early``:
  ``h0[: n_d + 801]``, ``n_d`` = the bank's direct-path index, as ``bench/arrayset.py`` and dev/array).
- **interferer** (p 0.9; else none): one of the room's two interferer positions (a TV prefers the one by a
  wall), kind drawn uniformly from ``noise`` (recorded effects / household / ambient / engines /
  keyboard noise, clips strung with 0 .. 0.3 s gaps), ``music`` (a recorded track, short loops strung),
  ``talker`` (another talker: other speaker key, no group shared with the target), ``tv`` (1 .. 2
  other talkers +-3 dB plus music (p 0.6) or effects 12 dB under .. 3 dB over them, through a small
  loudspeaker: 2nd-order high-pass 120 .. 300 Hz, 4th-order low-pass 4 .. 7 kHz). Its stream starts
  one RIR length before the item, so it sounds, reverberation built up, over the whole item.
- **diffuse field**: the six diffuse bank positions, each with its own noise segment (also started
  before the item): ``recorded`` (p 0.5: segments of steady recorded noises of one package, level
  within 12 dB of their floor), ``colored`` (p 0.35: independent Gaussian noises of one random spectral
  slope 0 .. 2, low-passed 1 .. 8 kHz with p 0.5, slowly modulated with p 0.3) or ``babble`` (p 0.15: six
  other talkers, one per position).
- **levels** (mic 0): target image active level (ITU-T P.56 method B, as the shared benchmark,
  :func:`active_level_db`) uniform -45 .. -20 dBFS; ``sir_db`` uniform -8 .. 12 dB = that level over
  the interferer image's mean power over the item; ``snr_db`` uniform 5 .. 30 dB = that level over the
  diffuse field's mean power; microphone self-noise (white, independent per mic) -75 .. -65 dBFS
  (per-mic RMS). If a sample of ``mix`` exceeds 0.99 every signal is scaled down together
  (``gain_db``).

``batch`` returns float32 arrays (``B`` items, ``M`` mics, ``n`` samples):

=====================  ==========  ==================================================================
key                    shape       meaning
=====================  ==========  ==================================================================
``mix``                (B, M, n)   what the array records
``target``             (B, M, n)   the target's full reverberant image at every mic (gain as in mix)
``early``              (B, n)      the target through mic 0's RIR cut at direct path + 50 ms
``dry``                (B, n)      the target source signal (``target[:, j] = dry * h_j``)
``positions``          (M, 3)      mic positions in the array frame (m), row j = mic j
``sir_db``             (B,)        drawn SIR (dB); +inf without interferer
``snr_db``             (B,)        drawn SNR of the diffuse field (dB)
``level_dbfs``         (B,)        drawn target active level at mic 0 before headroom scaling (dBFS)
``self_noise_dbfs``    (B,)        drawn self-noise RMS per mic before headroom scaling (dBFS)
``gain_db``            (B,)        headroom scaling applied to everything (<= 0 dB)
``kind``               (B,)        interferer kind, an index into :data:`KINDS` (0 = none)
``diffuse_kind``       (B,)        an index into :data:`DIFFUSE_KINDS`
``rt60_s``             (B,)        the room's measured RT60 (T30, target -> mic 0, s)
``target_azimuth_deg``     (B,)    target azimuth in the array frame (deg ccw from +x)
``target_distance_m``      (B,)    target distance from the array centre (m)
``interferer_azimuth_deg`` (B,)    NaN without interferer
``lead_in_s``          (B,)        where the target's first utterance starts (s)
``room``               (B,)        row of the room in the loaded bank (int64)
``direct``             (B,)        mic-0 direct-path sample index of the target RIR (int64)
=====================  ==========  ==================================================================
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy.signal import butter, lfilter, oaconvolve, sosfilt

RATE = 16000
GEOMETRIES = ("respeaker-4mic-hat", "respeaker-usb-4mic", "respeaker-6mic")
KINDS = ("none", "noise", "music", "talker", "tv")
DIFFUSE_KINDS = ("recorded", "colored", "babble")
DIFFUSE_P = (0.5, 0.35, 0.15)
NO_INTERFERER_P = 0.1
SIR_DB = (-8.0, 12.0)
SNR_DB = (5.0, 30.0)
LEVEL_DBFS = (-45.0, -20.0)
SELF_NOISE_DBFS = (-75.0, -65.0)
LEAD_IN_S = (0.0, 1.5)
LEAD_ZERO_P = 0.25
EARLY_SAMPLES = 800  # 50 ms after the direct path
PEAK = 0.99
SYNTH_P = 0.15
# recorded kinds of the ``noise`` interferer, weights as train/denoise/data.py's NOISE_KINDS
NOISE_KINDS = {"sfx": 0.09, "household": 0.10, "ambient": 0.07, "traffic": 0.05, "keyboard": 0.05}
STEADY_DB = 12.0  # a steady noise clip: level within 12 dB of its floor
VAL_SEED = 771
DEFAULT_DATA = Path("/work/voxd-train/data")
DEFAULT_RIRS = Path("/work/voxd-train/mask-rirs")


# ------------------------------------------------------------------------------------------------ levels
def active_level_db(x: np.ndarray, fs: int = RATE) -> float:
    """ITU-T P.56 method B active speech level (dBFS, mean square of the active part) of ``x`` (n,), as
    the shared benchmark's ``tools/audio.py`` defines it (copied from ``bench/arrayset.py``): envelope of
    |x| by two one-pole smoothers (30 ms), 15 thresholds 2^-15 .. 2^-1 with 0.2 s hangover, margin
    15.9 dB, interpolated. -200 for silence."""
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


def power(x: np.ndarray) -> float:
    """Mean square of ``x`` (float64 accumulation)."""
    return float(np.mean(np.square(x, dtype=np.float64)))


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit RMS (float32)."""
    return (x / np.float32(math.sqrt(power(x)) + 1e-12)).astype(np.float32)


# -------------------------------------------------------------------------------------------------- audio
@dataclass(frozen=True)
class Clip:
    """One decoded file of a role/split array (a record of ``index.json``)."""

    role: str  # speech | noise
    offset: int
    length: int
    level_db: float
    floor_db: float
    group: str
    source: str  # "package|kind"
    speaker: str  # speech: speaker key; noise: ""


def speaker_of(rec: dict[str, object]) -> str:
    """A speaker key (as ``bench/arrayset.py``): fillets' ``<level>-<fish>-<name>`` and ``<fish>-<name>``
    files by package and fish letter (one voice actor across levels), its other files by level and name
    prefix; asterisk prompts by voice directory; otherwise the split group."""
    pkg, path, group = str(rec["package"]), str(rec["path"]), str(rec["group"])
    stem = path.rsplit("/", 1)[-1].split(".")[0]
    if pkg.startswith("fillets-ng-data"):
        parts = stem.split("-")
        if len(parts) >= 3 and len(parts[1]) == 1:
            return f"{pkg}:{parts[1]}"
        if len(parts) == 2 and len(parts[0]) == 1:
            return f"{pkg}:{parts[0]}"
        return f"{group}:{parts[0]}"
    m = re.search(r"/sounds/([^/]+)/", path)
    if pkg.startswith("asterisk") and m:
        return f"{pkg}:{m.group(1)}"
    return group


class AudioPools:
    """The speech and noise clips of one split over the memory-mapped float32 arrays."""

    def __init__(self, data: Path, split: str) -> None:
        audio = Path(data) / "audio"
        index = json.loads((audio / "index.json").read_text())
        if int(index["rate"]) != RATE:
            raise ValueError(f"{audio / 'index.json'}: rate {index['rate']}, expected {RATE}")
        self.arrays = {r: np.memmap(audio / f"{r}_{split}.f32", dtype="<f4", mode="r")
                       for r in ("speech", "noise")}  # fmt: skip
        self.clips: list[Clip] = []
        for f in index["files"]:
            if f["split"] != split:
                continue
            role = str(f["role"])
            c = Clip(role, int(f["offset"]), int(f["length"]), float(f["level_db"]),
                     float(f.get("floor_db", f["level_db"] - 30.0)), str(f["group"]),
                     f"{f['package']}|{f['kind']}", speaker_of(f) if role == "speech" else "")  # fmt: skip
            if c.offset + c.length > self.arrays[role].size:
                raise ValueError(f"{c.source}: a clip runs past {role}_{split}.f32")
            self.clips.append(c)
        speech = [c for c in self.clips if c.role == "speech"]
        noise = [c for c in self.clips if c.role == "noise"]
        if not speech or not noise:
            raise ValueError(f"split {split!r} of {data} lacks speech or noise")
        self.speakers: dict[str, list[Clip]] = {}
        for c in speech:
            self.speakers.setdefault(c.speaker, []).append(c)
        self.speaker_groups = {k: {c.group for c in v} for k, v in self.speakers.items()}
        # speech sources (package|real or package|synthetic) -> speakers, weights ~ sqrt(minutes)
        self.speech_src: dict[str, list[str]] = {}
        for k in sorted(self.speakers):
            self.speech_src.setdefault(self.speakers[k][0].source, []).append(k)
        self.noise_src: dict[str, list[Clip]] = {}
        self.steady_src: dict[str, list[Clip]] = {}
        for c in noise:
            self.noise_src.setdefault(c.source, []).append(c)
            if (not c.source.endswith("|music") and c.length >= RATE
                    and c.level_db - c.floor_db <= STEADY_DB):  # fmt: skip
                self.steady_src.setdefault(c.source, []).append(c)
        if not self.steady_src:  # a split without steady noise: any non-music noise
            self.steady_src = {s: v for s, v in self.noise_src.items() if not s.endswith("|music")}

    @staticmethod
    def minutes(clips: list[Clip]) -> float:
        """Total minutes of ``clips``."""
        return sum(c.length for c in clips) / RATE / 60

    def get(self, c: Clip) -> np.ndarray:
        """The clip's samples, float32 (length,) (a copy)."""
        return np.array(self.arrays[c.role][c.offset : c.offset + c.length], dtype=np.float32)

    def pick_speaker(self, rng: np.random.Generator, exclude: set[str] | None = None,
                     exclude_groups: set[str] | None = None) -> str:
        """A speaker key: synthetic with p :data:`SYNTH_P`, the package ~ sqrt(minutes), then the speaker
        ~ sqrt(minutes); none of ``exclude`` and none with a clip in ``exclude_groups`` (relaxed to "not
        in ``exclude``", then to anyone, when that leaves nobody)."""
        exclude, exclude_groups = exclude or set(), exclude_groups or set()
        ok = [k for k in self.speakers if k not in exclude and not (self.speaker_groups[k] & exclude_groups)]
        ok = ok or [k for k in self.speakers if k not in exclude] or list(self.speakers)
        okset = set(ok)
        synth = rng.uniform() < SYNTH_P
        srcs = [s for s in sorted(self.speech_src) if s.endswith("|synthetic") == synth
                and any(k in okset for k in self.speech_src[s])]  # fmt: skip
        srcs = srcs or [s for s in sorted(self.speech_src) if any(k in okset for k in self.speech_src[s])]
        w = np.array([math.sqrt(sum(self.minutes(self.speakers[k]) for k in self.speech_src[s]
                                    if k in okset)) for s in srcs])  # fmt: skip
        src = srcs[int(rng.choice(len(srcs), p=w / w.sum()))]
        keys = [k for k in self.speech_src[src] if k in okset]
        w = np.array([math.sqrt(self.minutes(self.speakers[k])) for k in keys])
        return keys[int(rng.choice(len(keys), p=w / w.sum()))]

    def pick_noise(self, rng: np.random.Generator, kinds: tuple[str, ...],
                   pool: dict[str, list[Clip]] | None = None) -> list[Clip]:
        """The clips of one noise source (package|kind) of one of ``kinds``, ~ sqrt(minutes)."""
        pool = self.noise_src if pool is None else pool
        srcs = [s for s in sorted(pool) if s.split("|")[1] in kinds] or sorted(pool)
        w = np.array([math.sqrt(self.minutes(pool[s])) for s in srcs])
        return pool[srcs[int(rng.choice(len(srcs), p=w / w.sum()))]]

    # ---- streams ----
    def speech_stream(self, rng: np.random.Generator, speaker: str, n: int, start: int,
                      pause_s: tuple[float, float] = (0.05, 0.8), cut_first: bool = False) -> np.ndarray:
        """Utterances of ``speaker`` back to back from sample ``start``, each at its index level +-3 dB
        (~0 dBFS active), ``pause_s`` pauses; the first one starts part-way through if ``cut_first``
        (or if it is longer than the stream). Returns float32 (n,)."""
        clips = self.speakers[speaker]
        out = np.zeros(n, np.float32)
        pos, first = start, True
        while pos < n:
            c = clips[int(rng.integers(len(clips)))]
            x = self.get(c) * np.float32(10 ** ((-c.level_db + rng.uniform(-3, 3)) / 20))
            if first and x.size > n - pos:  # a long utterance: an excerpt that fills the stream
                x = x[int(rng.integers(0, x.size - (n - pos) + 1)) :]
            elif first and cut_first:  # already under way
                x = x[int(rng.integers(0, x.size // 2 + 1)) :]
            first = False
            take = min(x.size, n - pos)
            out[pos : pos + take] = x[:take]
            pos += take + int(rng.uniform(*pause_s) * RATE)
        return out

    def noise_stream(self, rng: np.random.Generator, clips: list[Clip], n: int,
                     gap_s: tuple[float, float]) -> np.ndarray:
        """Clips of one noise source strung from sample 0 (each at its level +-6 dB, a random excerpt of
        a long one) with ``gap_s`` gaps. Returns float32 (n,)."""
        out = np.zeros(n, np.float32)
        pos = 0
        while pos < n:
            c = clips[int(rng.integers(len(clips)))]
            x = self.get(c) * np.float32(10 ** ((-c.level_db + rng.uniform(-6, 6)) / 20))
            if x.size > n - pos:
                a = int(rng.integers(0, x.size - (n - pos) + 1))
                x = x[a : a + n - pos]
            out[pos : pos + x.size] = x
            pos += x.size + int(rng.uniform(*gap_s) * RATE)
        return out


def looped(x: np.ndarray, start: int, n: int, xfade: int = 800) -> np.ndarray:
    """``n`` samples of ``x`` repeated with ``xfade``-sample raised-cosine cross-fades, from ``start``
    (as ``bench/arrayset.py``). Returns (n,)."""
    xfade = min(xfade, x.size // 4)
    if x.size >= start + n:
        return x[start : start + n].copy()
    body = x[: x.size - xfade].copy()
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(xfade) / max(xfade, 1))).astype(x.dtype)
    body[:xfade] = x[:xfade] * ramp + x[x.size - xfade :] * (1 - ramp)
    reps = math.ceil((start + n) / body.size) + 1
    return np.tile(body, reps)[start : start + n]


def colored_noise(rng: np.random.Generator, rows: int, n: int, slope: float,
                  lowpass_hz: float | None) -> np.ndarray:
    """``rows`` independent Gaussian noises with power spectrum ~ 1/f^slope, optionally low-passed
    (a smooth 1st-order roll-off at ``lowpass_hz``), unit RMS each. Returns float32 (rows, n)."""
    spec = sfft.rfft(rng.standard_normal((rows, n)).astype(np.float32), axis=-1)
    f = np.fft.rfftfreq(n, 1 / RATE).astype(np.float32)
    f[0] = f[1]
    shape = f ** np.float32(-slope / 2)
    if lowpass_hz is not None:
        shape /= np.sqrt(1 + (f / np.float32(lowpass_hz)) ** 2)
    x = sfft.irfft(spec * shape, n, axis=-1)
    return (x / (np.sqrt(np.mean(x**2, axis=-1, keepdims=True)) + 1e-12)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- RIR bank
def _npz_member(path: Path, name: str) -> np.ndarray:
    """Array ``name`` of an uncompressed npz, memory-mapped read-only when it is stored (so processes
    share it through the page cache), else loaded."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name + ".npy")
        stored = info.compress_type == zipfile.ZIP_STORED
    if stored:
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")  # fmt: skip
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0  # fmt: skip
            shape, fortran, dtype = read(fh)
            if not fortran and not dtype.hasobject:
                return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape)
    with np.load(path) as z:
        return np.asarray(z[name])


class RirBank:
    """The rooms of one split of ``rirs.py``'s bank (all its shards; one copy per room index)."""

    def __init__(self, rir_dir: Path, split: str, max_rooms: int | None = None) -> None:
        shards = sorted((Path(rir_dir) / split).glob("rooms-*.npz"))
        shards = [s for s in shards if not s.name.endswith(".tmp.npz")]
        if not shards:
            raise FileNotFoundError(f"no RIR shards in {Path(rir_dir) / split} (run train/mask/rirs.py)")
        self.rir: list[np.ndarray] = []
        rows: dict[int, tuple[int, int]] = {}  # room index -> (shard, row)
        tables: list[dict[str, np.ndarray]] = []
        for si, path in enumerate(shards):
            with np.load(path) as z:
                tables.append({k: z[k] for k in z.files if k != "rir"})
            self.rir.append(_npz_member(path, "rir"))
            for r, idx in enumerate(tables[-1]["room_index"]):
                rows.setdefault(int(idx), (si, r))
        order = sorted(rows)
        if max_rooms is not None:  # a run that names its rooms is reproducible before the bank is complete
            order = [i for i in order if i < max_rooms]
            if order != list(range(max_rooms)):
                raise FileNotFoundError(f"the {split} RIR bank in {rir_dir} lacks rooms below {max_rooms} "
                                        f"({len(order)} of them present; run train/mask/rirs.py further)")
        self.shard = np.array([rows[i][0] for i in order], np.int64)
        self.room_index = np.array(order, np.int64)

        def col(key: str) -> np.ndarray:
            return np.stack([tables[rows[i][0]][key][rows[i][1]] for i in order])

        self.offset, self.length, self.direct = col("offset"), col("length"), col("direct")
        self.n_mics, self.geometry = col("n_mics"), col("geometry").astype(str)
        self.mic_local, self.rt60 = col("mic_local"), col("rt60")
        self.azimuth_deg, self.distance_m = col("azimuth_deg"), col("distance_m")
        self.near_wall = col("near_wall")
        self.by_geometry = {g: np.flatnonzero(self.geometry == g) for g in GEOMETRIES}

    def __len__(self) -> int:
        return int(self.room_index.size)

    def get(self, room: int, source: int) -> np.ndarray:
        """RIRs of source ``source`` (0 target, 1 .. 2 interferers, 3 .. 8 diffuse) of bank row ``room``
        at every mic, float32 (M, L)."""
        m, n = int(self.n_mics[room]), int(self.length[room, source])
        a = int(self.offset[room, source])
        return np.asarray(self.rir[int(self.shard[room])][a : a + m * n], np.float32).reshape(m, n)


# -------------------------------------------------------------------------------------------- convolution
def conv_image(x: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    """``x`` (n,) through every row of ``h`` (M, L), the first ``n`` samples (the source silent before
    sample 0). FFT convolution, float32 (M, n)."""
    nfft = sfft.next_fast_len(n + h.shape[1] - 1, real=True)
    y = sfft.irfft(sfft.rfft(x, nfft)[None] * sfft.rfft(h, nfft, axis=-1), nfft, axis=-1)
    return np.ascontiguousarray(y[:, :n], np.float32)


def conv_running(xs: list[np.ndarray], hs: list[np.ndarray], n: int) -> np.ndarray:
    """``sum_j xs[j] * hs[j]`` over the last ``n`` samples: each ``xs[j]`` ``(n + L_j - 1,)`` is a stream
    that started ``L_j - 1`` samples before the item, ``hs[j]`` ``(M, L_j)`` its RIRs (the 'valid' part of
    the convolution: the reverberation is built up at sample 0). Sums in the frequency domain (one
    inverse FFT per mic). FFT convolution, float32 (M, n)."""
    lmax = max(h.shape[1] for h in hs)
    nfft = sfft.next_fast_len(n + 2 * lmax - 2, real=True)
    acc = None
    for x, h in zip(xs, hs, strict=True):
        pad = lmax - h.shape[1]  # align every stream's end: x starts lmax - L_j later
        xf = sfft.rfft(np.concatenate([np.zeros(pad, np.float32), x]) if pad else x, nfft)
        term = xf[None] * sfft.rfft(h, nfft, axis=-1)
        acc = term if acc is None else acc + term
    assert acc is not None
    y = sfft.irfft(acc, nfft, axis=-1)
    return np.ascontiguousarray(y[:, lmax - 1 : lmax - 1 + n], np.float32)


# ------------------------------------------------------------------------------------------------ mixtures
class ArrayMixtures:
    """Multichannel mixtures of one split (see the module docstring for the recipe and the keys)."""

    def __init__(self, data_dir: str | Path, rir_dir: str | Path, split: str,
                 max_rooms: int | None = None) -> None:
        """``max_rooms``: use rooms ``0 .. max_rooms - 1`` only (all must be built), so that batches do
        not change while the bank grows; None: every room present."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        self.split = split
        self.audio = AudioPools(Path(data_dir), split)
        self.bank = RirBank(Path(rir_dir), split, max_rooms)
        missing = [g for g in GEOMETRIES if self.bank.by_geometry[g].size == 0]
        if missing:
            raise ValueError(f"the {split} RIR bank has no room of {missing}")

    # ---- signals ----
    def interferer(self, rng: np.random.Generator, kind: str, n: int, target: str) -> np.ndarray:
        """The interferer's dry stream of ``kind`` (noise|music|talker|tv), unit RMS, float32 (n,);
        ``target`` is the target's speaker key (talkers avoid it and its groups)."""
        a = self.audio
        groups = set(a.speaker_groups[target])
        if kind == "noise":
            kinds = list(NOISE_KINDS)
            p = np.array([NOISE_KINDS[k] for k in kinds])
            kd = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
            gap = (0.03, 0.25) if kd == "keyboard" else (0.0, 0.3)
            x = a.noise_stream(rng, a.pick_noise(rng, (kd,)), n, gap)
        elif kind == "music":
            x = a.noise_stream(rng, a.pick_noise(rng, ("music",)), n, (0.0, 0.0))
        elif kind == "talker":
            spk = a.pick_speaker(rng, {target}, groups)
            x = a.speech_stream(rng, spk, n, 0, (0.05, 0.5), cut_first=True)
        elif kind == "tv":
            x = np.zeros(n, np.float32)
            used = {target}
            for _ in range(int(rng.integers(1, 3))):
                spk = a.pick_speaker(rng, used, groups)
                used.add(spk)
                groups |= a.speaker_groups[spk]
                v = a.speech_stream(rng, spk, n, 0, (0.05, 0.6), cut_first=True)
                x += unit(v) * np.float32(10 ** (rng.uniform(-3, 3) / 20))
            bed = a.noise_stream(rng, a.pick_noise(rng, ("music",) if rng.uniform() < 0.6 else ("sfx",)),
                                 n, (0.0, 0.3))  # fmt: skip
            x = unit(x) + unit(bed) * np.float32(10 ** (rng.uniform(-12, 3) / 20))
            sos = np.vstack([butter(2, rng.uniform(120, 300), "highpass", fs=RATE, output="sos"),
                             butter(4, rng.uniform(4000, 7000), "lowpass", fs=RATE, output="sos")])
            x = sosfilt(sos, x).astype(np.float32)
        else:
            raise ValueError(f"unknown interferer kind {kind!r}")
        if power(x) < 1e-14:  # a silent draw: pink noise instead
            x = colored_noise(rng, 1, n, 1.0, None)[0]
        return unit(x)

    def diffuse(self, rng: np.random.Generator, kind: str, lengths: list[int],
                target: str) -> list[np.ndarray]:
        """One independent noise stream per diffuse position (lengths ``lengths``), float32, each unit
        RMS (the field is levelled at mic 0 afterwards)."""
        a = self.audio
        out: list[np.ndarray] = []
        if kind == "recorded":
            clips = a.pick_noise(rng, tuple(NOISE_KINDS), a.steady_src)
            for m in lengths:
                c = clips[int(rng.integers(len(clips)))]
                out.append(unit(looped(a.get(c), int(rng.integers(c.length)), m)))
        elif kind == "colored":
            slope = float(rng.uniform(0.0, 2.0))
            lp = float(rng.uniform(1000, 8000)) if rng.uniform() < 0.5 else None
            x = colored_noise(rng, len(lengths), max(lengths), slope, lp)
            if rng.uniform() < 0.3:
                t = np.arange(x.shape[1]) / RATE
                for j in range(len(lengths)):
                    ph = 2 * np.pi * rng.uniform(0.1, 2) * t + rng.uniform(0, 2 * np.pi)
                    x[j] *= (1 + rng.uniform(0.2, 0.6) * np.sin(ph)).astype(np.float32)
            out = [unit(x[j, : lengths[j]]) for j in range(len(lengths))]
        elif kind == "babble":
            used = {target}
            for m in lengths:
                spk = a.pick_speaker(rng, used)
                used.add(spk)
                out.append(unit(a.speech_stream(rng, spk, m, 0, (0.05, 0.4), cut_first=True)))
        else:
            raise ValueError(f"unknown diffuse kind {kind!r}")
        return out

    # ---- one item ----
    def item(self, rng: np.random.Generator, geometry: str, n: int) -> dict[str, np.ndarray | float]:
        """One mixture of ``n`` samples in a room of ``geometry`` (see the module docstring)."""
        bank = self.bank
        rooms = bank.by_geometry[geometry]
        room = int(rooms[int(rng.integers(rooms.size))])
        # target
        spk = self.audio.pick_speaker(rng)
        lead = 0 if rng.uniform() < LEAD_ZERO_P else int(rng.uniform(*LEAD_IN_S) * RATE)
        lead = min(lead, n - RATE // 4) if n > RATE // 2 else 0
        dry = self.audio.speech_stream(rng, spk, n, lead, cut_first=lead == 0 and rng.uniform() < 0.5)
        h_t = bank.get(room, 0)
        n_d = int(bank.direct[room, 0, 0])
        image = conv_image(dry, h_t, n)
        early = oaconvolve(dry, h_t[0, : n_d + EARLY_SAMPLES + 1])[:n].astype(np.float32)
        # interferer
        kind = "none" if rng.uniform() < NO_INTERFERER_P else KINDS[1 + int(rng.integers(len(KINDS) - 1))]
        sir = float(rng.uniform(*SIR_DB)) if kind != "none" else math.inf
        slot = 1 + int(rng.integers(2))
        if kind == "tv" and bank.near_wall[room, 1:3].any() and not bank.near_wall[room, slot]:
            slot = 3 - slot
        # diffuse
        dkind = DIFFUSE_KINDS[int(rng.choice(len(DIFFUSE_KINDS), p=np.array(DIFFUSE_P)))]
        snr = float(rng.uniform(*SNR_DB))
        level = float(rng.uniform(*LEVEL_DBFS))
        self_db = float(rng.uniform(*SELF_NOISE_DBFS))
        h_d = [bank.get(room, s) for s in range(3, 9)]
        d_streams = self.diffuse(rng, dkind, [n + h.shape[1] - 1 for h in h_d], spk)
        diff = conv_running(d_streams, h_d, n)
        m = h_t.shape[0]
        if kind != "none":
            h_i = bank.get(room, slot)
            x_i = self.interferer(rng, kind, n + h_i.shape[1] - 1, spk)
            inter = conv_running([x_i], [h_i], n)
        else:
            inter = np.zeros((m, n), np.float32)
        selfn = rng.standard_normal((m, n), dtype=np.float32)
        # levels at mic 0
        lv = active_level_db(image[0])
        g_t = 10 ** ((level - lv) / 20) if lv > -200 else 1.0
        if lv > -200:  # P.56 is not exactly scale-invariant (absolute thresholds): one correction
            g_t *= 10 ** ((level - active_level_db(image[0] * np.float32(g_t))) / 20)
        g_t = np.float32(g_t)
        dry, image, early = dry * g_t, image * g_t, early * g_t
        p_s = 10 ** (level / 10)
        if kind != "none":
            inter *= np.float32(math.sqrt(p_s * 10 ** (-sir / 10) / (power(inter[0]) + 1e-30)))
        diff *= np.float32(math.sqrt(p_s * 10 ** (-snr / 10) / (power(diff[0]) + 1e-30)))
        selfn *= np.float32(10 ** (self_db / 20))
        mix = image + inter + diff + selfn
        peak = float(np.max(np.abs(mix)))
        scale = min(1.0, PEAK / peak) if peak > 0 else 1.0
        if scale < 1.0:
            s = np.float32(scale)
            mix, image, early, dry = mix * s, image * s, early * s, dry * s
        return {
            "mix": mix, "target": image, "early": early, "dry": dry, "sir_db": sir, "snr_db": snr,
            "level_dbfs": level, "self_noise_dbfs": self_db, "gain_db": 20 * math.log10(scale),
            "kind": float(KINDS.index(kind)), "diffuse_kind": float(DIFFUSE_KINDS.index(dkind)),
            "rt60_s": float(bank.rt60[room]), "target_azimuth_deg": float(bank.azimuth_deg[room, 0]),
            "target_distance_m": float(bank.distance_m[room, 0]),
            "interferer_azimuth_deg": float(bank.azimuth_deg[room, slot]) if kind != "none" else math.nan,
            "lead_in_s": lead / RATE, "room": float(room), "direct": float(n_d),
        }  # fmt: skip

    # ---- batches ----
    def batch(self, seed: int, k: int, size: int, seconds: float,
              geometry: str | None = None) -> dict[str, np.ndarray]:
        """Batch ``k`` of a run: ``size`` items of ``seconds`` s (``n = round(seconds * 16000)``), all in
        rooms of ``geometry`` (None: ``GEOMETRIES[k % 3]``). A pure function of ``(seed, k)`` (and the
        other arguments). Keys and shapes: see the module docstring (float32; ``kind``,
        ``diffuse_kind`` int8, ``room``, ``direct`` int64)."""
        geometry = GEOMETRIES[k % len(GEOMETRIES)] if geometry is None else geometry
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; known: {', '.join(GEOMETRIES)}")
        n = round(seconds * RATE)
        rng = np.random.default_rng([seed, k])
        items = [self.item(rng, geometry, n) for _ in range(size)]
        out: dict[str, np.ndarray] = {}
        for key in items[0]:
            vals = [it[key] for it in items]
            if isinstance(vals[0], np.ndarray):
                out[key] = np.stack(vals).astype(np.float32)
            elif key in ("kind", "diffuse_kind"):
                out[key] = np.array(vals, np.int8)
            elif key in ("room", "direct"):
                out[key] = np.array(vals, np.int64)
            else:
                out[key] = np.array(vals, np.float32)
        room0 = int(out["room"][0])
        out["positions"] = self.bank.mic_local[room0, : int(self.bank.n_mics[room0])].astype(np.float32)
        return out

    def val_items(self, n: int, size: int = 8, seconds: float = 4.0) -> list[dict[str, np.ndarray]]:
        """A fixed validation set of ``n`` items: ``ceil(n / size)`` batches ``batch(VAL_SEED, k, ...)``
        (geometries cycled by ``k``; the last batch holds the remainder). Meant for the ``val`` split
        (validation speech/noise and validation rooms)."""
        out = []
        for k in range(math.ceil(n / size)):
            out.append(self.batch(VAL_SEED, k, min(size, n - k * size), seconds))
        return out


# ------------------------------------------------------------------------------------------------ check
def self_check(data: Path, rirs: Path, batches: int = 3) -> int:
    """Builds ``batches`` batches per split and geometry and checks them; times 8 x 4 s batches. Returns
    the number of failed checks (0: all passed)."""
    fails = 0

    def check(ok: bool, what: str) -> None:
        nonlocal fails
        if not ok:
            fails += 1
            print(f"FAIL {what}", flush=True)

    for split in ("train", "val"):
        t0 = time.perf_counter()
        ds = ArrayMixtures(data, rirs, split)
        print(f"{split}: {len(ds.bank)} rooms, {len(ds.audio.speakers)} speakers, loaded in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        for k in range(batches * len(GEOMETRIES)):
            b = ds.batch(5, k, 4, 3.0)
            geo = GEOMETRIES[k % 3]
            m = ds.bank.n_mics[ds.bank.by_geometry[geo][0]]
            n = 3 * RATE
            check(b["mix"].shape == (4, m, n) and b["target"].shape == (4, m, n), f"{split} {k} shapes")
            check(b["early"].shape == (4, n) and b["positions"].shape == (m, 3), f"{split} {k} shapes")
            finite = all(np.isfinite(b[x]).all() for x in ("mix", "target", "early", "dry"))
            check(finite, f"{split} {k} finite")
            check(float(np.abs(b["mix"]).max()) <= PEAK + 1e-5, f"{split} {k} peak")
            for i in range(4):
                sc = 10 ** (b["gain_db"][i] / 10)
                p_s = 10 ** (b["level_dbfs"][i] / 10) * sc
                lv = active_level_db(b["target"][i, 0])
                check(abs(lv - (b["level_dbfs"][i] + b["gain_db"][i])) < 0.1 + abs(b["gain_db"][i]) / 10,
                      f"{split} {k}/{i} level {lv:.2f} vs {b['level_dbfs'][i] + b['gain_db'][i]:.2f}")
                want = p_s * (10 ** (-b["snr_db"][i] / 10) + 10 ** (-b["sir_db"][i] / 10)) \
                    + 10 ** (b["self_noise_dbfs"][i] / 10) * sc  # fmt: skip
                got = power(b["mix"][i, 0] - b["target"][i, 0])
                err = 10 * np.log10(got / want)
                check(abs(err) < 1.0, f"{split} {k}/{i} noise power {err:+.2f} dB off "
                      f"(kind {KINDS[b['kind'][i]]}, sir {b['sir_db'][i]:.1f}, snr {b['snr_db'][i]:.1f})")
                room, n_d = int(b["room"][i]), int(b["direct"][i])
                h = ds.bank.get(room, 0).astype(np.float64)
                ref = np.convolve(b["dry"][i].astype(np.float64), h[0, : n_d + EARLY_SAMPLES + 1])[:n]
                e_err = np.max(np.abs(ref - b["early"][i])) / (np.max(np.abs(ref)) + 1e-12)
                check(e_err < 1e-4, f"{split} {k}/{i} early vs direct convolution: {e_err:.1e}")
                full = np.convolve(b["dry"][i].astype(np.float64), h[m - 1])[:n]
                t_err = np.max(np.abs(full - b["target"][i, m - 1])) / (np.max(np.abs(full)) + 1e-12)
                check(t_err < 1e-4, f"{split} {k}/{i} target (last mic) vs direct convolution: {t_err:.1e}")
            again = ds.batch(5, k, 4, 3.0)
            check(all(np.array_equal(b[x], again[x], equal_nan=True) for x in b), f"{split} {k} reproducible")
        other = ds.batch(6, 0, 4, 3.0)
        check(not np.array_equal(other["mix"], ds.batch(5, 0, 4, 3.0)["mix"]), f"{split} seeds differ")
        kinds = np.concatenate([ds.batch(9, k, 8, 1.0)["kind"] for k in range(6)])
        print(f"{split}: interferer kinds over 48 items: "
              f"{ {KINDS[j]: int((kinds == j).sum()) for j in range(len(KINDS))} }", flush=True)
        if split == "val":
            v1, v2 = ds.val_items(20), ds.val_items(20)
            check(len(v1) == 3 and v1[-1]["mix"].shape[0] == 4, "val_items sizes")
            same = all(np.array_equal(a["mix"], b2["mix"]) for a, b2 in zip(v1, v2, strict=True))
            check(same, "val_items fixed")
        for geo in GEOMETRIES:  # timing: 8 x 4 s
            ds.batch(1, 0, 8, 4.0, geometry=geo)
            c0, w0 = time.process_time(), time.perf_counter()
            reps = 3
            for r in range(reps):
                ds.batch(1, 100 + r, 8, 4.0, geometry=geo)
            print(f"{split} {geo}: 8 x 4 s batch {(time.process_time() - c0) / reps:.2f} s CPU, "
                  f"{(time.perf_counter() - w0) / reps:.2f} s wall", flush=True)
    print("self-check:", "all passed" if fails == 0 else f"{fails} FAILED", flush=True)
    return fails


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="run the self-check and the timing")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepare_data.py's --data folder")
    ap.add_argument("--rirs", type=Path, default=DEFAULT_RIRS, help="rirs.py's --out folder")
    ap.add_argument("--batches", type=int, default=3, help="checked batches per split and geometry")
    args = ap.parse_args(argv)
    if not args.check:
        ap.print_help()
        return 0
    return 1 if self_check(args.data, args.rirs, args.batches) else 0


if __name__ == "__main__":
    sys.exit(main())
