"""The basic stages: what they compute, and that stateful ones ignore how the stream is cut."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal
from voxd_basic.channels import Mix, Select
from voxd_basic.filters import Gain, HighPass

from voxd.frame import AudioFormat, Frame
from voxd.stage import FormatError, Stage, StageContext

RATE = 16000


def make(cls: type[Stage], n_in: int = 2, **params) -> Stage:
    stage = cls(cls.Params(**params), cls.kind)
    fmt = AudioFormat(RATE, n_in, 160)
    stage.accept(fmt)
    stage.open(StageContext(rate=RATE))
    return stage


def run(stage: Stage, x: np.ndarray, cuts: list[int]) -> np.ndarray:
    out, pos, i, seq = [], 0, 0, 0
    while pos < x.shape[1]:
        n = cuts[i % len(cuts)]
        i += 1
        block = np.ascontiguousarray(x[:, pos : pos + n])
        before = block.copy()
        out.append(stage.process(Frame(block, seq, pos, 0.0, RATE)).samples)
        np.testing.assert_array_equal(block, before)  # stages never mutate their input
        pos += n
        seq += 1
    return np.concatenate(out, axis=1)


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 900), min_size=1, max_size=10), order=st.integers(1, 6),
       cutoff=st.floats(20, 2000), seed=st.integers(0, 2**16))
def test_highpass_output_does_not_depend_on_block_sizes(cuts, order, cutoff, seed):
    x = np.random.default_rng(seed).uniform(-1, 1, (2, 4000)).astype(np.float32)
    whole = run(make(HighPass, cutoff_hz=cutoff, order=order), x, [x.shape[1]])
    np.testing.assert_allclose(run(make(HighPass, cutoff_hz=cutoff, order=order), x, cuts), whole,
                               atol=1e-6)


def test_highpass_removes_dc_and_rumble_but_keeps_speech_band():
    t = np.arange(RATE * 2) / RATE
    x = (0.3 + 0.2 * np.sin(2 * np.pi * 30 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t))[None].astype(np.float32)
    y = run(make(HighPass, n_in=1, cutoff_hz=100, order=4), x, [160])[0, RATE:]  # after settling
    spec = np.abs(np.fft.rfft(y)) / (len(y) / 2)
    assert spec[0] / len(y) < 1e-4  # DC gone
    assert spec[30] < 0.002  # 30 Hz rumble down by > 40 dB
    assert abs(spec[1000] - 0.2) < 0.01  # 1 kHz untouched
    sos = signal.butter(4, 100, "highpass", fs=RATE, output="sos")
    np.testing.assert_allclose(y, signal.sosfilt(sos, x[0])[RATE:], atol=1e-5)  # it is a Butterworth


def test_highpass_reset_forgets_state():
    x = np.random.default_rng(3).uniform(-1, 1, (2, 800)).astype(np.float32)
    stage = make(HighPass)
    first = run(stage, x, [160])
    stage.reset()
    np.testing.assert_array_equal(run(stage, x, [160]), first)


def test_highpass_cutoff_above_nyquist_is_a_format_error():
    stage = HighPass(HighPass.Params(cutoff_hz=9000), "hp")
    with pytest.raises(FormatError, match="below Nyquist"):
        stage.negotiate(AudioFormat(RATE, 1, 160))


def test_gain_in_db():
    x = np.full((2, 10), 0.1, np.float32)
    np.testing.assert_allclose(run(make(Gain, db=-20), x, [10]), 0.01, rtol=1e-6)
    np.testing.assert_allclose(run(make(Gain, db=6.0206), x, [10]), 0.2, rtol=1e-4)


def test_select_picks_and_reorders_channels():
    x = np.arange(4 * 5, dtype=np.float32).reshape(4, 5)
    stage = make(Select, n_in=4, channels=[3, 0, 0])
    assert stage.output_format.channels == 3
    np.testing.assert_array_equal(run(stage, x, [5]), x[[3, 0, 0]])


def test_select_out_of_range_is_a_format_error():
    stage = Select(Select.Params(channels=[0, 4]), "select")
    with pytest.raises(FormatError, match="channel 4 out of range: the input has 4 channels"):
        stage.negotiate(AudioFormat(RATE, 4, 160))


def test_mix_averages_to_mono():
    x = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.float32)
    stage = make(Mix, n_in=4)
    assert stage.output_format.channels == 1
    np.testing.assert_allclose(run(stage, x, [2]), [[4, 5]])
