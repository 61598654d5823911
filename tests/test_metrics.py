"""``voxd.metrics`` against values known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxd import metrics

RATE = 16000
SPEECH = Path(__file__).parent / "data" / "speech" / "allison-congrats-10s.flac"  # see its README

# `make test` installs the 'metrics' extra (pesq, pystoi): the PESQ/STOI test runs, and fails without
# it, rather than skip. Outside make, `pip install -e '.[metrics]'` first.


def noise_at(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White noise scaled to exactly ``snr_db`` below ``clean``'s energy, made orthogonal to ``clean``
    (and zero-mean) so that SNR and SI-SDR are both exactly ``snr_db``."""
    n = np.random.default_rng(seed).standard_normal(clean.size)
    c = clean - clean.mean()
    n -= n.mean()
    n -= (n @ c) / (c @ c) * c
    return n * np.sqrt(np.sum(clean**2) / np.sum(n**2) / 10 ** (snr_db / 10))


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """3 s of real speech, float64."""
    return sf.read(SPEECH, dtype="float64", frames=3 * RATE)[0]


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_snr_and_si_sdr_of_added_noise(clean, snr_db):
    test = clean + noise_at(clean, snr_db)
    assert metrics.snr(clean, test) == pytest.approx(snr_db, abs=1e-6)
    assert metrics.si_sdr(clean, test) == pytest.approx(snr_db, abs=0.01)


def test_si_sdr_ignores_scale_and_snr_does_not(clean):
    assert metrics.si_sdr(clean, 0.3 * clean) > 100  # a scaled copy: inf, or huge from rounding
    assert metrics.si_sdr(clean, -2.0 * clean + 1e-3 * noise_at(clean, 0.0)) > 60
    assert metrics.snr(clean, 0.5 * clean) == pytest.approx(6.02, abs=0.01)  # error = half the signal
    assert metrics.snr(clean, clean) == float("inf")


def test_segmental_snr_is_clamped(clean):
    lo, hi = metrics.SEGSNR_RANGE_DB
    assert metrics.segmental_snr(clean, clean, RATE) == hi
    assert metrics.segmental_snr(clean, clean + 100 * noise_at(clean, 0.0), RATE) == lo
    # error = the signal itself in every frame: exactly 0 dB everywhere
    assert metrics.segmental_snr(clean, np.zeros_like(clean), RATE) == pytest.approx(0.0, abs=1e-9)
    # constant per-frame SNR of 10 dB -> 10 dB; frames with digital silence in both count as 0 dB
    tone = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    assert metrics.segmental_snr(tone, tone * (1 + 10 ** -0.5), RATE) == pytest.approx(10.0, abs=1e-6)
    padded = np.concatenate([tone, np.zeros(RATE)])
    half = metrics.segmental_snr(padded, padded * (1 + 10 ** -0.5), RATE)
    assert 4.5 < half < 5.5


def test_segmental_snr_frames():
    """Frame length and hop in seconds: 20 dB in the first half second, 0 dB in the second."""
    tone = np.sin(2 * np.pi * 400 * np.arange(RATE) / RATE)
    err = tone * np.where(np.arange(RATE) < RATE // 2, 0.1, 1.0)
    assert metrics.segmental_snr(tone, tone + err, RATE, frame_s=0.1, hop_s=0.1) == pytest.approx(10.0)
    middle = 10 * np.log10(1 / ((0.01 + 1) / 2))  # the frame straddling the change
    assert metrics.segmental_snr(tone, tone + err, RATE, frame_s=0.5, hop_s=0.25) == pytest.approx(
        (20 + middle + 0) / 3, abs=0.01)
    assert metrics.segmental_snr(tone, tone + 1e-4 * tone, RATE, clamp_db=(-10, 100)) == pytest.approx(80)


def test_length_mismatch_is_explicit(clean):
    with pytest.raises(ValueError, match="length mismatch: clean has 48000 samples, test 47990"):
        metrics.si_sdr(clean, clean[:-10])
    assert metrics.si_sdr(clean, clean[:-10], mismatch="trim") > 100
    assert metrics.snr(clean[:-5], clean, mismatch="trim") == float("inf")
    with pytest.raises(ValueError, match="1-D"):
        metrics.snr(np.zeros((2, 10)), np.zeros((2, 10)))


def test_pesq_and_stoi_of_identical_speech_are_at_the_top(clean):
    assert metrics.pesq_wb(clean, clean) > 4.5
    assert metrics.stoi(clean, clean, RATE) > 0.99
    noisy = clean + noise_at(clean, 0.0)
    assert metrics.pesq_wb(clean, noisy) < 2.0
    assert metrics.stoi(clean, noisy, RATE) < 0.9


def test_pesq_needs_16_khz(clean):
    with pytest.raises(ValueError, match="16000 Hz"):
        metrics.pesq_wb(clean, clean, rate=8000)


def test_missing_extra_names_it(clean, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pesq(name, *args, **kwargs):
        if name in ("pesq", "pystoi"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pesq)
    with pytest.raises(metrics.MissingExtraError, match=r"extra 'metrics'.*voxd\[metrics\]"):
        metrics.pesq_wb(clean, clean)
    with pytest.raises(metrics.MissingExtraError, match="pystoi"):
        metrics.stoi(clean, clean, RATE)
