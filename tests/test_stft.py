"""The shared STFT: exact reconstruction and independence from block sizes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from voxd.stft import StftAnalysis, StftSynthesis, sqrt_hann, synthesis_window


def run_pair(x: np.ndarray, n_fft: int, hop: int, cuts: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Push ``x`` through analysis+synthesis in blocks of the given sizes (cycled)."""
    ana, syn = StftAnalysis(x.shape[0], n_fft, hop), StftSynthesis(x.shape[0], n_fft, hop)
    specs, out, pos, i = [], [], 0, 0
    while pos < x.shape[1]:
        n = cuts[i % len(cuts)]
        i += 1
        for spec in ana.push(x[:, pos : pos + n]):
            specs.append(spec)
            out.append(syn.push(spec))
        pos += n
    y = np.concatenate(out, axis=1) if out else np.zeros((x.shape[0], 0), np.float32)
    return y, specs


blocks = st.lists(st.integers(1, 700), min_size=1, max_size=12)
shapes = st.sampled_from([(320, 160), (512, 256), (320, 80), (400, 100)])


@settings(max_examples=40, deadline=None)
@given(cuts=blocks, shape=shapes, channels=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_reconstruction_within_1e_5_after_the_window_delay(cuts, shape, channels, seed):
    n_fft, hop = shape
    x = np.random.default_rng(seed).uniform(-1, 1, (channels, 4000)).astype(np.float32)
    y, _ = run_pair(x, n_fft, hop, cuts)
    d = n_fft - hop
    assert y.shape[1] == (x.shape[1] // hop) * hop
    np.testing.assert_allclose(y[:, d:], x[:, : y.shape[1] - d], atol=1e-5, rtol=0)
    np.testing.assert_allclose(y[:, :d], 0.0, atol=1e-6)  # nothing before the delay


@settings(max_examples=40, deadline=None)
@given(cuts=blocks, shape=shapes, seed=st.integers(0, 2**16))
def test_spectra_do_not_depend_on_block_sizes(cuts, shape, seed):
    n_fft, hop = shape
    x = np.random.default_rng(seed).standard_normal((2, 3000)).astype(np.float32)
    _, ref = run_pair(x, n_fft, hop, [hop])
    _, got = run_pair(x, n_fft, hop, cuts)
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_default_synthesis_window_is_sqrt_hann():
    w = sqrt_hann(320)
    np.testing.assert_allclose(synthesis_window(w, 160), w, atol=1e-12)


def test_reset_restarts_from_silence():
    x = np.random.default_rng(1).standard_normal((1, 960)).astype(np.float32)
    ana = StftAnalysis(1, 320, 160)
    first = ana.push(x)
    ana.reset()
    np.testing.assert_array_equal(ana.push(x)[0], first[0])
