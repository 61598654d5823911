"""On-the-fly training mixtures from the audio indexed by ``prepare_data.py``.

Every mixture is a pure function of ``(seed, step, item)``: batch ``k`` of a run is the same whether the
run was resumed or not (the generator is ``numpy.random.default_rng([seed, k])``), and validation items
are fixed. A mixture (16 kHz, ``length`` samples, float32):

- **speech**: utterances of one source (synthetic with p :data:`SYNTH_P`, else a real-speech package
  drawn with weight ~ sqrt(minutes); mostly one group: one talker/voice pack/language) back to back,
  each at its active level +-3 dB, with 0.05 .. 0.8 s pauses and an optional lead-in up to 1 s;
  **speed/pitch perturbation** (p 0.5: resampled by 0.88 .. 1.12, which moves tempo and pitch together);
  **talker EQ** (p 0.4).
- **room** (p 0.5): convolution with a simulated RIR from the bank; the **target is the direct path plus
  the early reflections** (the first 50 ms of the RIR after the direct path). Noise gets its own RIR
  with p 0.3.
- **noise**, by kind (:data:`NOISE_KINDS`): recorded music/TV, game and household effects, outdoor
  ambiences, engines (traffic-like), keyboard; **babble** of 3 .. 10 training talkers; synthetic
  **fan/HVAC** (coloured noise, blade-pass harmonics, slow modulation), **traffic** (low-passed rumble
  with swells and pass-bys), **hum**, **white/pink/brown**; a **TV** (music or effects plus 1 .. 2 talkers
  through a small loudspeaker's band-pass); or two of these summed.
- **conditions**: noise-only (p 0.05; the target is silence), clean or near-clean (p 0.1: no noise or
  SNR 30 .. 50 dB), otherwise SNR uniform -5 .. 30 dB (speech active level vs mean noise power);
  speech active level uniform -50 .. -10 dBFS; a **microphone response** (p 0.6: high-pass 50 .. 250 Hz,
  low-pass 3.5 .. 8 kHz, a presence peak; applied to everything the microphone hears, target included);
  microphone self-noise -100 .. -75 dBFS (not in the target); if the mixture peaks above 0.99, mixture
  and target are scaled down together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from scipy import signal

RATE = 16000
SYNTH_P = 0.15  # share of speech segments drawn from the synthetic voices
EARLY_S = 0.05  # target = direct path + reflections up to 50 ms after it
# noise kind -> probability (recorded kinds use the packages tagged with that kind by prepare_data)
NOISE_KINDS = {
    "music": 0.11, "sfx": 0.09, "household": 0.10, "ambient": 0.07, "traffic": 0.05, "keyboard": 0.05,
    "babble": 0.12, "tv": 0.05, "fan": 0.10, "traffic_synth": 0.05, "hum": 0.03, "colored": 0.08,
    "two": 0.10,
}  # fmt: skip


@dataclass
class Clip:
    """One decoded file inside a role/split array."""

    offset: int
    length: int
    level_db: float
    group: str


class Pool:
    """Clips of one role and split over a memory-mapped float32 array, indexed by source and group."""

    def __init__(self, data: Path, role: str, split: str, files: list[dict[str, object]]) -> None:
        self.audio = np.memmap(data / "audio" / f"{role}_{split}.f32", dtype="<f4", mode="r")
        self.by_src: dict[str, list[Clip]] = {}
        self.by_group: dict[str, list[Clip]] = {}
        self.by_kind: dict[str, list[str]] = {}
        for f in files:
            if f["role"] != role or f["split"] != split:
                continue
            c = Clip(int(f["offset"]), int(f["length"]), float(f["level_db"]), str(f["group"]))  # type: ignore[call-overload]
            src = f"{f['package']}|{f['kind']}"
            self.by_src.setdefault(src, []).append(c)
            self.by_group.setdefault(c.group, []).append(c)
        for src in sorted(self.by_src):
            self.by_kind.setdefault(src.split("|")[1], []).append(src)
        self.weight = {s: float(np.sqrt(sum(c.length for c in cl) / RATE / 60))
                       for s, cl in self.by_src.items()}  # fmt: skip

    def get(self, c: Clip) -> np.ndarray:
        """The clip's samples, float32 (length,) (a copy)."""
        return np.array(self.audio[c.offset : c.offset + c.length], dtype=np.float32)

    def pick(self, rng: np.random.Generator, kind: str) -> str | None:
        """A source (``package|kind``) of ``kind``, drawn with weight ~ sqrt(minutes); None if none."""
        srcs = self.by_kind.get(kind, [])
        if not srcs:
            return None
        w = np.array([self.weight[s] for s in srcs])
        return srcs[int(rng.choice(len(srcs), p=w / w.sum()))]


# ---------------------------------------------------------------------------------------------- filters
def _biquad(kind: str, f0: float, gain_db: float, q: float) -> list[float]:
    """RBJ cookbook biquad as one SOS row: kind low|high (shelves), peak, hp, lp."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * min(f0, 0.45 * RATE) / RATE
    cw, sw = np.cos(w), np.sin(w)
    al = sw / (2 * q)
    if kind == "peak":
        b, d = [1 + al * a, -2 * cw, 1 - al * a], [1 + al / a, -2 * cw, 1 - al / a]
    elif kind == "hp":
        b, d = [(1 + cw) / 2, -(1 + cw), (1 + cw) / 2], [1 + al, -2 * cw, 1 - al]
    elif kind == "lp":
        b, d = [(1 - cw) / 2, 1 - cw, (1 - cw) / 2], [1 + al, -2 * cw, 1 - al]
    else:
        sa = 2 * np.sqrt(a) * al
        sg = 1 if kind == "low" else -1
        b = [a * ((a + 1) - sg * (a - 1) * cw + sa), sg * 2 * a * ((a - 1) - sg * (a + 1) * cw),
             a * ((a + 1) - sg * (a - 1) * cw - sa)]  # fmt: skip
        d = [(a + 1) + sg * (a - 1) * cw + sa, -sg * 2 * ((a - 1) + sg * (a + 1) * cw),
             (a + 1) + sg * (a - 1) * cw - sa]  # fmt: skip
    return [v / d[0] for v in b] + [v / d[0] for v in d]


def random_eq(rng: np.random.Generator) -> np.ndarray:
    """1 .. 3 gentle random biquads (shelves 80 .. 400 Hz / 2 .. 6 kHz, peaks 200 Hz .. 6 kHz, +-6 dB)."""
    sos = []
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(["low", "high", "peak"]))
        g = rng.uniform(-6.0, 6.0)
        f0 = rng.uniform(80, 400) if kind == "low" else rng.uniform(2000, 6000) if kind == "high" else \
            rng.uniform(200, 6000)  # fmt: skip
        sos.append(_biquad(kind, f0, g, rng.uniform(0.5, 2.0) if kind == "peak" else 0.7071))
    return np.array(sos)


def mic_response(rng: np.random.Generator) -> np.ndarray:
    """A random cheap-microphone response: high-pass 50 .. 250 Hz, maybe a low-pass 3.5 .. 8 kHz (p 0.5),
    a presence peak 2 .. 6 kHz of 0 .. 6 dB, as SOS rows."""
    sos = [_biquad("hp", rng.uniform(50, 250), 0, rng.uniform(0.5, 1.0))]
    if rng.random() < 0.5:
        sos.append(_biquad("lp", rng.uniform(3500, 8000), 0, rng.uniform(0.5, 1.0)))
    sos.append(_biquad("peak", rng.uniform(2000, 6000), rng.uniform(0, 6), rng.uniform(0.7, 2.0)))
    return np.array(sos)


def sosfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` through the SOS filter, float32."""
    return signal.sosfilt(sos, x).astype(np.float32)


def colored_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^slope (0 white, 1 pink, 2 brown), unit RMS, (n,)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    f[0] = f[1]
    spec *= f ** (-slope / 2)
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    """Root mean square of ``x``."""
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-20))


def active_power(x: np.ndarray, rel_db: float = 40.0) -> float:
    """Mean power of the 20 ms frames of ``x`` within ``rel_db`` of the loudest one (speech level)."""
    n = x.size // 320
    if n == 0:
        return float(np.mean(x**2) + 1e-12)
    e = np.mean(x[: n * 320].reshape(n, 320).astype(np.float64) ** 2, axis=1)
    keep = e > e.max() * 10 ** (-rel_db / 10)
    return float(e[keep].mean() + 1e-12)


# ---------------------------------------------------------------------------------------------- maker
class MixtureMaker:
    """Builds (noisy, target) pairs from one split; see the module docstring."""

    def __init__(self, data: Path, split: str) -> None:
        files = json.loads((data / "audio" / "index.json").read_text())["files"]
        self.speech = Pool(data, "speech", split, files)
        self.noise = Pool(data, "noise", split, files)
        if not self.speech.by_src:
            raise ValueError(f"no speech in split {split!r} of {data}")
        bank = np.load(data / "rirs.npz")
        self.rir, self.rir_direct = bank["rir"], bank["direct"]

    # ---- speech ----
    def speech_segment(self, rng: np.random.Generator, n: int, pauses: bool = True) -> np.ndarray:
        """Utterances of one source back to back, ~0 dBFS active level, (n,)."""
        kind = "synthetic" if rng.random() < SYNTH_P and "synthetic" in self.speech.by_kind else "real"
        src = self.speech.pick(rng, kind)
        assert src is not None
        clips = self.speech.by_src[src]
        out = np.zeros(n, np.float32)
        pos = 0 if (not pauses or rng.random() < 0.5) else int(rng.uniform(0, 1.0) * RATE)
        group: str | None = None
        first = True
        while pos < n:
            pool = self.speech.by_group[group] if group is not None and rng.random() < 0.7 else clips
            c = pool[int(rng.integers(len(pool)))]
            group = c.group
            x = self.speech.get(c) * np.float32(10 ** ((-c.level_db + rng.uniform(-3, 3)) / 20))
            if first and x.size > n - pos:  # a long utterance: random excerpt
                a = int(rng.integers(0, x.size - (n - pos) + 1))
                x = x[a:]
            first = False
            take = min(x.size, n - pos)
            out[pos : pos + take] = x[:take]
            pos += take + int(rng.uniform(0.05, 0.8 if pauses else 0.2) * RATE)
        return out

    def perturb_speed(self, rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
        """Resample by 0.88 .. 1.12 (tempo and pitch together), cropped/padded back to (n,)."""
        r = rng.uniform(0.88, 1.12)
        y = soxr.resample(x, RATE, RATE / r, quality="HQ").astype(np.float32)
        return y[:n] if y.size >= n else np.pad(y, (0, n - y.size))

    # ---- noise ----
    def recorded(self, rng: np.random.Generator, n: int, kind: str) -> np.ndarray | None:
        """Recorded noise of one source of ``kind`` (long files cropped, short clips strung together)."""
        src = self.noise.pick(rng, kind)
        if src is None:
            return None
        clips = self.noise.by_src[src]
        out = np.zeros(n, np.float32)
        pos = 0 if rng.random() < 0.7 else int(rng.uniform(0, 0.5) * n)
        while pos < n:
            c = clips[int(rng.integers(len(clips)))]
            x = self.noise.get(c) * np.float32(10 ** ((-c.level_db + rng.uniform(-6, 6)) / 20))
            if x.size > n - pos:
                a = int(rng.integers(0, x.size - (n - pos) + 1))
                x = x[a : a + n - pos]
            out[pos : pos + x.size] += x
            gap = rng.uniform(0.03, 0.25) if kind == "keyboard" else rng.uniform(0.0, 0.5)
            pos += x.size + int(gap * RATE)
        return out

    def babble(self, rng: np.random.Generator, n: int, lo: int = 3, hi: int = 10) -> np.ndarray:
        """``lo`` .. ``hi`` training talkers summed at random relative levels (+-6 dB), (n,)."""
        out = np.zeros(n, np.float32)
        for _ in range(int(rng.integers(lo, hi + 1))):
            out += self.speech_segment(rng, n, pauses=False) * np.float32(10 ** (rng.uniform(-6, 6) / 20))
        return out

    def fan(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Fan / HVAC: coloured broadband noise, band-limited, with blade-pass harmonics and slow
        amplitude modulation, unit RMS."""
        x = colored_noise(rng, n, rng.uniform(0.5, 2.0))
        x = sosfilt(np.array([_biquad("lp", rng.uniform(600, 5000), 0, 0.7071)]), x)
        t = np.arange(n) / RATE
        f0 = rng.uniform(20, 160)
        tone = np.zeros(n)
        for k in range(1, int(rng.integers(2, 9))):
            tone += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
        x = x / rms(x) + 10 ** (rng.uniform(-20, 0) / 20) * tone / (rms(tone) + 1e-9)
        x *= 1 + rng.uniform(0, 0.3) * np.sin(2 * np.pi * rng.uniform(0.05, 2.0) * t)
        return (x / rms(x)).astype(np.float32)

    def traffic_synth(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Traffic-like: low-passed brown noise with slow swells and 0 .. 3 louder pass-bys, unit RMS."""
        x = colored_noise(rng, n, rng.uniform(1.5, 2.5))
        x = sosfilt(np.array([_biquad("lp", rng.uniform(300, 2000), 0, 0.7071)]), x)
        t = np.arange(n) / RATE
        env = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.02, 0.2) * t + rng.uniform(0, 6.3))
        for _ in range(int(rng.integers(0, 4))):
            c, w = rng.uniform(0, n / RATE), rng.uniform(0.5, 3.0)
            env += rng.uniform(1, 6) * np.exp(-(((t - c) / w) ** 2))
        y = x * env
        return (y / rms(y)).astype(np.float32)

    def hum(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Mains hum with harmonics over a faint pink floor, unit RMS."""
        f0 = float(rng.choice([50.0, 60.0, 100.0, 120.0])) * rng.uniform(0.99, 1.01)
        t = np.arange(n) / RATE
        x = np.zeros(n)
        decay = rng.uniform(0.3, 0.9)
        for k in range(1, int(rng.integers(3, 30))):
            if f0 * k < RATE / 2:
                x += decay**k * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
        x = x / rms(x) + 10 ** (rng.uniform(-40, -15) / 20) * colored_noise(rng, n, 1.0)
        return (x / rms(x)).astype(np.float32)

    def colored(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """White/pink/brown or any slope, maybe slowly modulated, unit RMS."""
        slope = float(rng.choice([0.0, 1.0, 2.0])) if rng.random() < 0.6 else rng.uniform(-0.5, 2.5)
        x = colored_noise(rng, n, slope)
        if rng.random() < 0.3:
            t = np.arange(n) / RATE
            x *= (1 + rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.uniform(0.1, 4) * t)).astype(np.float32)
        return x

    def tv(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """A TV/radio in the room: music or effects plus 1 .. 2 talkers, through a small loudspeaker
        (band-pass 150 .. 400 Hz to 4 .. 7 kHz)."""
        bed = self.recorded(rng, n, "music" if rng.random() < 0.6 else "sfx")
        voices = self.babble(rng, n, 1, 2)
        x = voices / rms(voices) + (0 if bed is None else 10 ** (rng.uniform(-12, 3) / 20) * bed / rms(bed))
        sos = np.array([_biquad("hp", rng.uniform(150, 400), 0, 0.8),
                        _biquad("lp", rng.uniform(4000, 7000), 0, 0.8)])  # fmt: skip
        return sosfilt(sos, x.astype(np.float32))

    def noise_segment(self, rng: np.random.Generator, n: int, depth: int = 0) -> np.ndarray:
        """One noise draw by kind (see :data:`NOISE_KINDS`), (n,), unnormalised."""
        kinds = list(NOISE_KINDS)
        p = np.array([NOISE_KINDS[k] for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        if kind == "two" and depth > 0:
            kind = "colored"
        x: np.ndarray | None
        if kind == "two":
            a, b = self.noise_segment(rng, n, 1), self.noise_segment(rng, n, 1)
            x = a / rms(a) + np.float32(10 ** (rng.uniform(-10, 10) / 20)) * b / rms(b)
        elif kind in ("babble", "fan", "hum", "colored", "tv"):
            x = getattr(self, kind)(rng, n)
        elif kind == "traffic_synth":
            x = self.traffic_synth(rng, n)
        else:
            x = self.recorded(rng, n, kind)
            if x is None or rms(x) < 1e-7:
                x = self.colored(rng, n)
        if rng.random() < 0.4:
            x = sosfilt(random_eq(rng), x)
        return x.astype(np.float32)

    # ---- mixture ----
    def make(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """One (noisy, target) pair, float32 (n,) each."""
        u = rng.random()
        noise_only, clean = u < 0.05, 0.05 <= u < 0.15
        s = self.speech_segment(rng, n)
        if rng.random() < 0.5:
            s = self.perturb_speed(rng, s, n)
        if rng.random() < 0.4:
            s = sosfilt(random_eq(rng), s)
        if rng.random() < 0.5:
            i = int(rng.integers(len(self.rir)))
            h = self.rir[i].astype(np.float64)
            early = h[: int(self.rir_direct[i]) + int(EARLY_S * RATE)]
            speech_in = signal.fftconvolve(s, h)[:n].astype(np.float32)
            target = signal.fftconvolve(s, early)[:n].astype(np.float32)
        else:
            speech_in, target = s, s.copy()
        p_s = active_power(speech_in)
        noise = self.noise_segment(rng, n)
        if rng.random() < 0.3:
            h = self.rir[int(rng.integers(len(self.rir)))].astype(np.float64)
            noise = signal.fftconvolve(noise, h)[:n].astype(np.float32)
        p_n = float(np.mean(noise.astype(np.float64) ** 2) + 1e-12)
        if noise_only:  # noise at what would have been the speech level; nothing to keep
            snr = 0.0
            speech_in, target = speech_in * 0, target * 0
        elif clean:
            snr = np.inf if rng.random() < 0.4 else rng.uniform(30.0, 50.0)
        else:
            snr = rng.uniform(-5.0, 30.0)
        noise = noise * np.float32(np.sqrt(p_s / p_n * 10 ** (-snr / 10))) if np.isfinite(snr) else noise * 0
        level = rng.uniform(-50.0, -10.0)
        g = np.float32(10 ** (level / 20) / np.sqrt(p_s))
        noisy = (speech_in + noise) * g
        target = target * g
        if rng.random() < 0.6:  # the microphone colours all it hears, the target too
            sos = mic_response(rng)
            noisy, target = sosfilt(sos, noisy), sosfilt(sos, target)
        self_noise = np.float32(10 ** (rng.uniform(-100, -75) / 20))
        noisy = noisy + self_noise * rng.standard_normal(n).astype(np.float32)
        peak = float(np.abs(noisy).max())
        if peak > 0.99:
            noisy *= np.float32(0.99 / peak)
            target *= np.float32(0.99 / peak)
        return noisy.astype(np.float32), target.astype(np.float32)

    def batch(self, seed: int, step: int, size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step`` of a run: (noisy, target), float32 (size, length) each; deterministic."""
        rng = np.random.default_rng([seed, step])
        pairs = [self.make(rng, length) for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
