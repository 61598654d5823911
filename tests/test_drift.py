"""A reference from a separate device onto the microphones' clock (voxd/sources/drift.py): the control loop
measures the clock offset, keeps its buffer, and what comes out is the reference at the microphones' rate.

The two clocks are simulated (there is one clock on this machine): the reference device delivers
``16000 * (1 + ppm / 1e6)`` samples per second of the microphones' time, in callbacks of jittering size,
of a known band-limited signal ``s(t)``; the microphones ask for 10 ms blocks. The live path through two
real PortAudio streams is tested in tests/test_aec.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxd.sources.drift import DEAD_BAND_S, DriftCompensator

pytest.importorskip("samplerate")

RATE, HOP = 16000, 160


def tones(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequencies (Hz: 150 Hz, the phase reference of :func:`rate_error_ppm`, and 11 more up to 5 kHz),
    amplitudes and phases of the test signal."""
    rng = np.random.default_rng(seed)
    freqs = np.concatenate([[150.0], rng.uniform(300.0, 5000.0, 11)])
    return freqs, rng.uniform(0.01, 0.05, 12), rng.uniform(0.0, 2 * np.pi, 12)


def signal(t: np.ndarray, f: np.ndarray, a: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (a[None, :] * np.sin(2 * np.pi * f[None, :] * t[:, None] + p[None, :])).sum(axis=1)


def simulate(ppm: float, seconds: float, seed: int, jitter_ms: float) -> tuple[DriftCompensator, np.ndarray,
                                                                                   list[int]]:
    """Run the compensator; returns it, its output on the mic clock and its fill after every block."""
    f, a, p = tones(seed)
    ref_rate = RATE * (1 + ppm / 1e6)
    rng = np.random.default_rng(seed + 1)
    comp = DriftCompensator(1, RATE, target_ms=40.0)
    sent = 0
    out, fills = [], []
    for b in range(int(seconds * RATE / HOP)):
        now = (b + 1) * HOP / RATE + rng.uniform(-jitter_ms, jitter_ms) / 1000  # when the callback ran
        due = max(sent, int(now * ref_rate))
        if due > sent:
            k = np.arange(sent, due)
            comp.put(signal(k / ref_rate, f, a, p).astype(np.float32)[None, :], now)
            sent = due
        out.append(comp.take(HOP, (b + 1) * HOP / RATE)[0])
        fills.append(comp.fill)
    return comp, np.concatenate(out), fills


def tone_fit(y: np.ndarray, start: int, f: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """Least-squares fit of ``y[start:start + n]`` by the test tones at their exact frequencies: the SNR
    (dB) it explains and each tone's phase (rad) at t = 0."""
    t = np.arange(start, start + n) / RATE
    basis = np.concatenate([np.sin(2 * np.pi * f[None, :] * t[:, None]),
                            np.cos(2 * np.pi * f[None, :] * t[:, None])], axis=1)
    seg = y[start:start + n].astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
    resid = seg - basis @ coef
    k = len(f)
    return float(10 * np.log10(np.sum(seg**2) / np.sum(resid**2))), np.arctan2(coef[k:], coef[:k])


def rate_error_ppm(y: np.ndarray, f: np.ndarray, t1: float, t2: float) -> float:
    """How fast the reference's delay on the mic clock changes between t1 and t2 (s), in ppm, from the
    phase of the 150 Hz tone (a change under half its 6.7 ms period is unambiguous: 300 ppm over 9 s is
    2.7 ms)."""
    lo = int(np.argmin(f))
    _, p1 = tone_fit(y, int(t1 * RATE), f, RATE // 4)
    _, p2 = tone_fit(y, int(t2 * RATE), f, RATE // 4)
    dphi = (p2[lo] - p1[lo] + np.pi) % (2 * np.pi) - np.pi
    return float(-dphi / (2 * np.pi * f[lo]) / (t2 - t1) * 1e6)


@settings(max_examples=3, deadline=None)
@given(ppm=st.floats(-300.0, 300.0), seed=st.integers(0, 1000), jitter_ms=st.floats(0.0, 2.0))
def test_the_clock_offset_is_measured_and_the_reference_lands_on_the_mic_clock(ppm: float, seed: int,
                                                                               jitter_ms: float) -> None:
    """After 25 s: the offset is measured, the buffer holds its target, nothing ran dry, the reference
    on the mic clock is the clean tone mix (0.25 s windows: what an echo canceller adapts over) and its
    delay moves by under 30 ppm (0.5 sample per second; 300 ppm uncompensated)."""
    comp, y, fills = simulate(ppm, 25.0, seed, jitter_ms)
    assert abs(comp.drift_ppm - ppm) <= 15.0, (comp.drift_ppm, ppm)
    settled = np.array(fills[len(fills) // 2:]) * 1000 / RATE
    band = DEAD_BAND_S * 1000 + HOP * 1000 / RATE  # the dead band, and one block taken
    assert settled.min() >= 40.0 - band and settled.max() <= 40.0 + band, (settled.min(), settled.max())
    assert comp.underruns == 0
    f, _, _ = tones(seed)
    snr, _ = tone_fit(y, len(y) - RATE // 4, f, RATE // 4)
    assert snr >= 30.0, snr
    assert abs(rate_error_ppm(y, f, 15.0, 24.0)) <= 30.0


def test_without_compensation_the_rate_check_fails() -> None:
    """The checks above can fail: the same reference taken 1:1 (no resampling) at 200 ppm."""
    f, a, p = tones(3)
    k = np.arange(25 * RATE)
    y = signal(k / (RATE * (1 + 200e-6)), f, a, p)
    assert abs(abs(rate_error_ppm(y, f, 15.0, 24.0)) - 200.0) <= 5.0


def test_underruns_are_counted_and_give_silence() -> None:
    comp = DriftCompensator(2, RATE, target_ms=20.0)
    comp.put(np.ones((2, 640), np.float32) * 0.5, 0.04)  # 40 ms: past the target, taking starts
    first = comp.take(HOP, 0.04)
    assert first.shape == (2, HOP) and comp.underruns == 0
    for i in range(5):
        last = comp.take(HOP, 0.05 + i * 0.01)
    assert comp.underruns > 0 and np.all(last == 0.0)
    assert np.isfinite(comp.drift_ppm)


def test_nothing_is_taken_before_the_buffer_first_fills() -> None:
    comp = DriftCompensator(1, RATE, target_ms=40.0)
    comp.put(np.full((1, 320), 0.25, np.float32), 0.02)
    assert np.all(comp.take(HOP, 0.02) == 0.0) and comp.underruns == 0 and comp.fill > 0
