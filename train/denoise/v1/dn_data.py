"""On-the-fly training mixtures from the audio indexed by ``prepare_data.py``.

Every mixture is a pure function of ``(seed, step, item)``: batch ``k`` of a run is the same whether the
run was resumed or not, and validation items are fixed.

A mixture (all at 16 kHz, ``length`` samples, float32):

- **speech**: utterances of one package (preferably one group: a fillets level, a language) back to
  back, each normalised to its active level +-3 dB, with 0.05 .. 0.8 s pauses and an optional lead-in of
  silence up to 1 s; random speech EQ (p 0.4, applied to the target as well).
- **reverberation** (p 0.3): convolved with a simulated RIR from the bank; the **target is the
  early-reverberant speech** (direct path + the first 50 ms of the RIR), so the model removes late
  reverberation but is not asked to undo the early reflections.
- **noise**: one of recorded noise (p 0.6, package chosen by weight, long files cropped, short clips
  strung together with pauses), babble (p 0.12, 3 .. 8 training talkers), synthetic (p 0.18:
  white/pink/brown/any-slope noise, optionally amplitude-modulated, or mains hum with harmonics over
  a noise floor), or two of those summed (p 0.1); random noise EQ (p 0.5).
- **SNR** uniform -5 .. 25 dB (speech active level vs mean noise power), **speech level** uniform
  -45 .. -15 dBFS (active level); if the mixture peaks above 0.99, mixture and target are scaled down
  together (no clipping).

EQ: 1 .. 3 biquads (low shelf 80 .. 400 Hz, high shelf 2 .. 6 kHz, peaking 200 Hz .. 6 kHz, Q 0.5 .. 2),
gains -6 .. +6 dB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

RATE = 16000

SPEECH_WEIGHTS = {
    "fillets-ng-data-cs": 0.25,
    "fillets-ng-data-nl": 0.20,
    "tuxpaint-stamps-default": 0.24,
    "klettres-data": 0.10,
    "ktuberling-data": 0.11,
    "qabcs-data": 0.07,
    "codec2-examples": 0.03,
}
NOISE_WEIGHTS = {
    "wesnoth-1.16-music": 0.13,
    "megaglest-data": 0.22,
    "lincity-ng-data": 0.17,
    "sonic-pi-samples": 0.12,
    "bucklespring-data": 0.10,
    "scorched3d-data": 0.14,
    "asterisk-moh-opsound-wav": 0.12,
}


@dataclass
class Clip:
    """One decoded file inside a role/split array."""

    offset: int
    length: int
    level_db: float
    group: str


class Pool:
    """Clips of one role and split, grouped by package, over a memory-mapped float32 array."""

    def __init__(self, data: Path, role: str, split: str, files: list[dict[str, object]]) -> None:
        self.audio = np.memmap(data / "audio" / f"{role}_{split}.f32", dtype="<f4", mode="r")
        self.by_pkg: dict[str, list[Clip]] = {}
        self.by_group: dict[str, list[Clip]] = {}
        for f in files:
            if f["role"] != role or f["split"] != split:
                continue
            c = Clip(int(f["offset"]), int(f["length"]), float(f["level_db"]), str(f["group"]))
            self.by_pkg.setdefault(str(f["package"]), []).append(c)
            self.by_group.setdefault(c.group, []).append(c)

    def get(self, c: Clip) -> np.ndarray:
        """The clip's samples, float32 (length,) (a copy)."""
        return np.array(self.audio[c.offset : c.offset + c.length], dtype=np.float32)

    def pick_pkg(self, rng: np.random.Generator, weights: dict[str, float]) -> str:
        """A package present in this pool, drawn with ``weights`` (renormalised)."""
        names = [p for p in weights if p in self.by_pkg]
        w = np.array([weights[p] for p in names])
        return names[int(rng.choice(len(names), p=w / w.sum()))]


def active_power(x: np.ndarray, rel_db: float = 40.0) -> float:
    """Mean power of the 20 ms frames of ``x`` within ``rel_db`` of the loudest one (speech level)."""
    n = x.size // 320
    if n == 0:
        return float(np.mean(x**2) + 1e-12)
    e = np.mean(x[: n * 320].reshape(n, 320).astype(np.float64) ** 2, axis=1)
    keep = e > e.max() * 10 ** (-rel_db / 10)
    return float(e[keep].mean() + 1e-12)


def random_eq(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """``x`` through 1 .. 3 random gentle biquads (shelves/peaks, -6 .. +6 dB)."""
    sos = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["low", "high", "peak"])
        gain = rng.uniform(-6.0, 6.0)
        if kind == "low":
            sos.append(_shelf(rng.uniform(80, 400), gain, low=True))
        elif kind == "high":
            sos.append(_shelf(rng.uniform(2000, 6000), gain, low=False))
        else:
            sos.append(_peak(rng.uniform(200, 6000), gain, rng.uniform(0.5, 2.0)))
    return signal.sosfilt(np.array(sos), x).astype(np.float32)


def _shelf(f0: float, gain_db: float, low: bool) -> list[float]:
    """RBJ cookbook shelf (slope 1) as one SOS row."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / RATE
    cw, al = np.cos(w), np.sin(w) / 2 * np.sqrt(2)
    sa = 2 * np.sqrt(a) * al
    if low:
        b = [
            a * ((a + 1) - (a - 1) * cw + sa),
            2 * a * ((a - 1) - (a + 1) * cw),
            a * ((a + 1) - (a - 1) * cw - sa),
        ]
        d = [(a + 1) + (a - 1) * cw + sa, -2 * ((a - 1) + (a + 1) * cw), (a + 1) + (a - 1) * cw - sa]
    else:
        b = [
            a * ((a + 1) + (a - 1) * cw + sa),
            -2 * a * ((a - 1) + (a + 1) * cw),
            a * ((a + 1) + (a - 1) * cw - sa),
        ]
        d = [(a + 1) - (a - 1) * cw + sa, 2 * ((a - 1) - (a + 1) * cw), (a + 1) - (a - 1) * cw - sa]
    return [v / d[0] for v in b] + [v / d[0] for v in d]


def _peak(f0: float, gain_db: float, q: float) -> list[float]:
    """RBJ cookbook peaking EQ as one SOS row."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / RATE
    al = np.sin(w) / (2 * q)
    b = [1 + al * a, -2 * np.cos(w), 1 - al * a]
    d = [1 + al / a, -2 * np.cos(w), 1 - al / a]
    return [v / d[0] for v in b] + [v / d[0] for v in d]


def colored_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^slope (0 white, 1 pink, 2 brown), unit RMS, (n,)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    f[0] = f[1]
    spec *= f ** (-slope / 2)
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


class MixtureMaker:
    """Builds (noisy, target) pairs; see the module docstring."""

    def __init__(self, data: Path, split: str, length: int, reverb_p: float = 0.3) -> None:
        files = json.loads((data / "audio" / "index.json").read_text())["files"]
        self.speech = Pool(data, "speech", split, files)
        self.noise = Pool(data, "noise", split, files)
        bank = np.load(data / "rirs.npz")
        self.rir, self.rir_direct = bank["rir"], bank["direct"]
        self.length = length
        self.reverb_p = reverb_p

    # ---- speech ----
    def _utterance(self, rng: np.random.Generator, pkg: str, group: str | None) -> tuple[np.ndarray, str]:
        pool = self.speech.by_group[group] if group is not None else self.speech.by_pkg[pkg]
        c = pool[int(rng.integers(len(pool)))]
        x = self.speech.get(c) * np.float32(10 ** ((-c.level_db + rng.uniform(-3, 3)) / 20))
        return x, c.group

    def speech_segment(self, rng: np.random.Generator, n: int, pauses: bool = True) -> np.ndarray:
        """Utterances of one package back to back, ~0 dBFS active level, (n,)."""
        out = np.zeros(n, np.float32)
        pkg = self.speech.pick_pkg(rng, SPEECH_WEIGHTS)
        pos = 0 if (not pauses or rng.random() < 0.5) else int(rng.uniform(0, 1.0) * RATE)
        group = None
        first = True
        while pos < n:
            x, g = self._utterance(rng, pkg, group if rng.random() < 0.7 else None)
            group = g
            if first and x.size > n - pos:  # a long utterance: random excerpt
                a = int(rng.integers(0, x.size - (n - pos) + 1))
                x = x[a:]
            first = False
            take = min(x.size, n - pos)
            out[pos : pos + take] = x[:take]
            pos += take + int(rng.uniform(0.05, 0.8 if pauses else 0.2) * RATE)
        return out

    # ---- noise ----
    def recorded_noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Recorded noise of one package, (n,), unnormalised."""
        pkg = self.noise.pick_pkg(rng, NOISE_WEIGHTS)
        clips = self.noise.by_pkg[pkg]
        out = np.zeros(n, np.float32)
        pos = 0
        keyboard = pkg == "bucklespring-data"
        while pos < n:
            c = clips[int(rng.integers(len(clips)))]
            x = self.noise.get(c) * np.float32(10 ** ((-c.level_db + rng.uniform(-6, 6)) / 20))
            if x.size > n - pos:
                a = int(rng.integers(0, x.size - (n - pos) + 1))
                x = x[a : a + n - pos]
            out[pos : pos + x.size] += x
            gap = rng.uniform(0.03, 0.25) if keyboard else rng.uniform(0.0, 0.3)
            pos += x.size + int(gap * RATE)
        return out

    def babble(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """3 .. 8 talkers summed, (n,)."""
        return sum(
            (self.speech_segment(rng, n, pauses=False) for _ in range(int(rng.integers(3, 9)))),
            np.zeros(n, np.float32),
        )

    def synthetic(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Coloured noise (maybe modulated) or hum with harmonics over a faint noise floor, (n,)."""
        if rng.random() < 0.7:
            slope = float(rng.choice([0.0, 1.0, 2.0])) if rng.random() < 0.6 else rng.uniform(-0.5, 2.5)
            x = colored_noise(rng, n, slope)
            if rng.random() < 0.3:  # slow amplitude modulation (fans, wind gusts)
                t = np.arange(n) / RATE
                x *= (1 + rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.uniform(0.1, 4) * t)).astype(
                    np.float32
                )
            return x
        f0 = float(rng.choice([50.0, 60.0, 100.0, 120.0])) * rng.uniform(0.99, 1.01)
        t = np.arange(n) / RATE
        x = np.zeros(n)
        decay = rng.uniform(0.3, 0.9)
        for k in range(1, int(rng.integers(3, 30))):
            if f0 * k < RATE / 2:
                x += (
                    decay**k
                    * rng.uniform(0.3, 1.0)
                    * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
                )
        x /= np.sqrt(np.mean(x**2)) + 1e-12
        return (x + 10 ** (rng.uniform(-40, -15) / 20) * colored_noise(rng, n, 1.0)).astype(np.float32)

    def noise_segment(self, rng: np.random.Generator, n: int, depth: int = 0) -> np.ndarray:
        """One noise draw (see the module docstring), (n,)."""
        u = rng.random()
        if u < 0.6:
            x = self.recorded_noise(rng, n)
        elif u < 0.72:
            x = self.babble(rng, n)
        elif u < 0.9 or depth > 0:
            x = self.synthetic(rng, n)
        else:
            a, b = self.noise_segment(rng, n, 1), self.noise_segment(rng, n, 1)
            w = 10 ** (rng.uniform(-10, 10) / 20)
            x = a / np.sqrt(np.mean(a**2) + 1e-12) + w * b / np.sqrt(np.mean(b**2) + 1e-12)
        if rng.random() < 0.5:
            x = random_eq(rng, x)
        return x.astype(np.float32)

    # ---- mixture ----
    def make(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (noisy, target) pair, float32 (length,) each."""
        n = self.length
        s = self.speech_segment(rng, n)
        if rng.random() < 0.4:
            s = random_eq(rng, s)
        if rng.random() < self.reverb_p:
            i = int(rng.integers(len(self.rir)))
            h = self.rir[i].astype(np.float64)
            early = h[: int(self.rir_direct[i]) + RATE // 20]
            speech_in = signal.fftconvolve(s, h)[:n].astype(np.float32)
            target = signal.fftconvolve(s, early)[:n].astype(np.float32)
        else:
            speech_in, target = s, s.copy()
        noise = self.noise_segment(rng, n)
        p_s = active_power(speech_in)
        p_n = float(np.mean(noise.astype(np.float64) ** 2) + 1e-12)
        snr = rng.uniform(-5.0, 25.0)
        noise = noise * np.float32(np.sqrt(p_s / p_n * 10 ** (-snr / 10)))
        level = rng.uniform(-45.0, -15.0)
        g = np.float32(10 ** (level / 20) / np.sqrt(p_s))
        noisy = (speech_in + noise) * g
        target = target * g
        peak = float(np.abs(noisy).max())
        if peak > 0.99:
            noisy *= np.float32(0.99 / peak)
            target *= np.float32(0.99 / peak)
        return noisy.astype(np.float32), target.astype(np.float32)

    def batch(self, seed: int, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step`` of a run: (noisy, target), float32 (size, length) each; deterministic."""
        rng = np.random.default_rng([seed, step])
        pairs = [self.make(rng) for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
