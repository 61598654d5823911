"""The pipeline (resample -> hops -> chain -> delay removal -> wire frames) in-process: block-size
independence of the whole chain, exact STFT identity, timestamps, discontinuities, on_error policies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxd.chain import build_chain
from voxd.config import load_config_text
from voxd.errors import StageError
from voxd.frame import Flags, Frame
from voxd.pipeline import Pipeline
from voxd.plugins import load_plugins
from voxd.runtime import event_emitter
from voxd.sources.base import Block
from voxd.stage import Stage, StageParams

RATE = 16000


class Explode(Stage):
    """Raises on frames whose seq is in ``at``; otherwise doubles the signal."""

    kind = "explode"

    class Params(StageParams):
        at: tuple[int, ...] = ()

    def process(self, frame: Frame) -> Frame:
        if frame.seq in self.params.at:
            raise RuntimeError(f"boom at {frame.seq}")
        return frame.with_samples(frame.samples * 2)


class Counter(Stage):
    """Counts resets; passes audio through."""

    kind = "counter"
    Params = StageParams
    resets = 0

    def process(self, frame: Frame) -> Frame:
        return frame

    def reset(self) -> None:
        Counter.resets += 1


class _TestPlugin:
    @staticmethod
    def voxd_register_stages(registry):
        registry.add(Explode)
        registry.add(Counter)


_TestPlugin.voxd_register_stages.voxd_impl = {}  # type: ignore[attr-defined]
PLUGINS = None


def plugins():
    global PLUGINS
    if PLUGINS is None:
        from voxd.hookspecs import hookimpl

        hookimpl(_TestPlugin.voxd_register_stages)
        PLUGINS = load_plugins(disable=["extra", "broken"], extra=[("testplug", _TestPlugin)])
    return PLUGINS


def make_pipeline(chain_yaml: str, channels: int, in_rate: int = RATE, frame_ms: float = 20):
    loaded = load_config_text(f"capture: {{type: file, path: x.wav}}\noutput: {{frame_ms: {frame_ms}}}\n"
                              f"chain:\n{chain_yaml}", "t.yaml", plugins=plugins())
    chain = build_chain(loaded, channels)
    events: list[dict] = []
    out_frame = round(RATE * frame_ms / 1000)
    def sink(type, seq=None, **f):
        events.append({"type": type, "seq": seq, **f})

    chain.open(RATE, emit=event_emitter(out_frame, RATE, sink))
    return Pipeline(chain, in_rate, out_frame), events


def run(pipe: Pipeline, x: np.ndarray, cuts: list[int], rate: int = RATE, t0: float = 1000.0,
        flags_at: int | None = None):
    frames, pos, i = [], 0, 0
    while pos < x.shape[1]:
        n = cuts[i % len(cuts)]
        i += 1
        flags = Flags.DISCONTINUITY if flags_at is not None and pos <= flags_at < pos + n else Flags.NONE
        frames += pipe.push(Block(x[:, pos : pos + n], t0 + pos / rate, flags))
        pos += n
    return frames + pipe.flush()


FULL = """  - {stage: highpass, cutoff_hz: 120, order: 3}
  - {stage: select, channels: [2, 0, 1]}
  - {stage: passthrough_stft}
  - {stage: mix}
  - {stage: gain, db: -3}
"""


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 1500), min_size=1, max_size=8), seed=st.integers(0, 2**16),
       frame_ms=st.sampled_from([10, 20, 32.5]))
def test_chain_output_does_not_depend_on_source_block_sizes(cuts, seed, frame_ms):
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (3, 5003)).astype(np.float32)
    ref = run(make_pipeline(FULL, 3, frame_ms=frame_ms)[0], x, [320])
    got = run(make_pipeline(FULL, 3, frame_ms=frame_ms)[0], x, cuts)
    a = np.concatenate([f.samples for f in ref], axis=1)
    b = np.concatenate([f.samples for f in got], axis=1)
    assert a.shape == b.shape == (1, 5003)
    np.testing.assert_allclose(b, a, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(1, 2000), min_size=1, max_size=6), seed=st.integers(0, 2**16),
       channels=st.integers(1, 4))
def test_passthrough_stft_reconstructs_the_input(cuts, seed, channels):
    x = np.random.default_rng(seed).uniform(-1, 1, (channels, 4321)).astype(np.float32)
    pipe, _ = make_pipeline("  - {stage: passthrough_stft}\n", channels)
    assert pipe.delay == 160  # one window minus one hop, removed by the pipeline
    y = np.concatenate([f.samples for f in run(pipe, x, cuts)], axis=1)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-5, rtol=0)


def test_frames_carry_exact_pts_seq_and_capture_time():
    x = np.zeros((1, 16000), np.float32)
    frames = run(make_pipeline("  - {stage: passthrough_stft}\n", 1)[0], x, [777], t0=500.0)
    assert [f.seq for f in frames] == list(range(50))
    assert [f.pts for f in frames] == [320 * i for i in range(50)]
    np.testing.assert_allclose([f.t for f in frames], [500.0 + 0.02 * i for i in range(50)], atol=1e-9)


def test_timestamps_stay_exact_across_resampling():
    x = np.zeros((2, 48000), np.float32)
    frames = run(make_pipeline("  - {stage: mix}\n", 2, in_rate=48000)[0], x, [960], rate=48000, t0=10.0)
    assert sum(f.samples.shape[1] for f in frames) == 16000
    for f in frames:
        assert f.t == pytest.approx(10.0 + f.pts / RATE, abs=1e-9)


def test_discontinuity_resets_every_stage():
    Counter.resets = 0
    x = np.zeros((1, 3200), np.float32)
    run(make_pipeline("  - {stage: counter}\n  - {stage: highpass}\n", 1)[0], x, [320], flags_at=1600)
    assert Counter.resets == 1


def test_on_error_reset_keeps_audio_flowing_and_reports_once():
    x = np.full((1, 3200), 0.1, np.float32)
    pipe, events = make_pipeline("  - {stage: explode, at: [3, 4], on_error: reset}\n", 1)
    y = np.concatenate([f.samples for f in run(pipe, x, [160])], axis=1)[0]
    assert y.shape == (3200,)
    np.testing.assert_allclose(y[480:800], 0.1)  # frames 3 and 4 passed through unprocessed
    np.testing.assert_allclose(y[:480], 0.2)
    np.testing.assert_allclose(y[800:], 0.2)  # recovered after the reset
    assert [e["type"] for e in events] == ["stage_error"]  # rate-limited: one event for two failures
    assert events[0]["stage"] == "explode" and "boom at 3" in events[0]["error"]
    assert events[0]["pts"] == 480 and events[0]["seq"] == 1 and events[0]["t_s"] == 0.03  # 20 ms frames


def test_on_error_bypass_stays_bypassed():
    x = np.full((1, 1600), 0.1, np.float32)
    pipe, events = make_pipeline("  - {stage: explode, at: [2], on_error: bypass}\n", 1)
    y = np.concatenate([f.samples for f in run(pipe, x, [160])], axis=1)[0]
    np.testing.assert_allclose(y[:320], 0.2)
    np.testing.assert_allclose(y[320:], 0.1)
    assert events[0]["action"] == "bypassed"


def test_on_error_fail_raises_a_stage_error():
    pipe, _ = make_pipeline("  - {stage: explode, at: [1], on_error: fail}\n", 1)
    with pytest.raises(StageError, match=r"stage 'explode' \(explode\) failed: RuntimeError: boom at 1"):
        run(pipe, np.zeros((1, 1600), np.float32), [160])


def test_a_failing_channel_changing_stage_falls_back_to_silence_of_the_right_shape():
    class BadMix(Explode):
        kind = "badmix"

        def negotiate(self, fmt):
            from voxd.frame import AudioFormat

            return AudioFormat(fmt.rate, 1, fmt.frame)

    loaded = load_config_text("capture: {type: file, path: x.wav}\nchain: [{stage: explode, at: [0]}]\n",
                              "t.yaml", plugins=plugins())
    spec = loaded.config.chain[0]
    object.__setattr__(spec, "cls", BadMix)
    chain = build_chain(loaded, 4)
    chain.open(RATE)
    out = chain.process(Frame(np.ones((4, 160), np.float32), 0, 0, 0.0, RATE))
    assert out.samples.shape == (1, 160) and not out.samples.any()


@pytest.mark.parametrize(("first", "second"), [
    ("  - {stage: gain, db: 0}\n", "  - {stage: passthrough_stft}\n"),  # the delay grows by one hop
    ("  - {stage: passthrough_stft}\n", "  - {stage: gain, db: 0}\n"),  # the delay shrinks by one hop
])
def test_swap_chain_keeps_seq_and_alignment(first: str, second: str) -> None:
    """Hot reload's swap: seq continues, the output stays aligned with the input (sample exact once the
    new chain's window is full), the length is preserved; only the hops around the swap differ."""
    rng = np.random.default_rng(3)
    x = (0.3 * rng.standard_normal((1, RATE))).astype(np.float32)
    pipe, _ = make_pipeline(first, 1)
    new, _ = make_pipeline(second, 1)
    half = RATE // 2
    frames = pipe.push(Block(x[:, :half], 0.0, Flags.NONE))
    pipe.swap_chain(new.chain)
    frames += pipe.push(Block(x[:, half:], half / RATE, Flags.NONE)) + pipe.flush()
    audio = [f for f in frames if f.topic == "audio"]
    assert [f.seq for f in audio] == list(range(len(audio)))
    assert [f.pts for f in audio] == [sum(a.samples.shape[1] for a in audio[:i]) for i in range(len(audio))]
    y = np.concatenate([f.samples for f in audio], axis=1)
    assert y.shape == x.shape
    hop = pipe.hop
    keep = np.ones(x.shape[1], bool)
    keep[half - 2 * hop : half + 2 * hop] = False  # the transition: old chain's tail, new warm-up
    assert np.abs(y[0, keep] - x[0, keep]).max() < 1e-5


def test_swap_chain_refuses_another_format() -> None:
    pipe, _ = make_pipeline("  - {stage: gain, db: 0}\n", 2)
    other, _ = make_pipeline("  - {stage: mix}\n", 2)
    with pytest.raises(ValueError, match="cannot swap"):
        pipe.swap_chain(other.chain)
