"""The playback reference (capture.reference_channels -> side value aec.reference) and the ``aec`` stage
(plugins/voxd_aec, WebRTC AEC3 through livekit: docs/echo.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.signal import butter, lfilter, sosfilt

from voxd.chain import build_chain
from voxd.config import load_config
from voxd.errors import ConfigError
from voxd.frame import AudioFormat, Frame
from voxd.pipeline import Pipeline
from voxd.side import AEC_ACTIVE, AEC_DELAY_MS, AEC_DOUBLETALK, AEC_ECHO_ONLY, AEC_ERLE_DB, AEC_REFERENCE
from voxd.sources.base import Block

pytest.importorskip("livekit")
from voxd_aec.echogate import EchoGate
from voxd_aec.stage import APM_DELAY, Aec, AecParams

RATE, HOP = 16000, 160
SPEECH = Path(__file__).parent / "data" / "speech" / "allison-congrats-10s.flac"
#: the synthetic echo case below gives 20-30 dB over seconds 2-6 (docs/echo.md); pass-through gives 0
MIN_ERLE_DB = 12.0


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "voxd.yaml"
    p.write_text(text)
    return str(p)


def config_error(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.lines


# --- config ------------------------------------------------------------------------------------------


def test_reference_channel_out_of_range_is_one_line_at_its_key(tmp_path: Path) -> None:
    f = write(tmp_path, "capture:\n  type: pyaudio\n  channels: 8\n  reference_channels: [6, 8]\n")
    assert config_error(f) == [f"{f}:4: capture.reference_channels: channel 8 does not exist: the device is "
                               "opened with 8 channels (0-7)"]


def test_reference_channel_in_channel_map_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "capture:\n  type: pyaudio\n  channels: 8\n  channel_map: [0, 1, 2, 3, 4, 5, 6]\n"
                        "  reference_channels: [6, 7]\n")
    assert config_error(f) == [f"{f}:5: capture.reference_channels: channel 6 is also in channel_map: a "
                               "reference channel is not a microphone"]


def test_reference_channel_twice_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "capture:\n  type: pyaudio\n  channels: 8\n  reference_channels: [7, 7]\n")
    (line,) = config_error(f)
    assert line.startswith(f"{f}:4: capture.reference_channels") and "listed twice" in line


def test_file_reference_beyond_the_file_channels_is_a_config_error(tmp_path: Path) -> None:
    f = write(tmp_path, "capture:\n  type: file\n  path: x.wav\n  reference_channels: [4]\n")
    loaded = load_config(f)
    with pytest.raises(ConfigError) as info:
        build_chain(loaded, 4)
    assert info.value.lines == [f"{f}:4: capture.reference_channels: channel 4 does not exist: the capture "
                                "has 4 channels (0-3)"]


def test_reference_device_channels_come_after_the_microphones(tmp_path: Path) -> None:
    f = write(tmp_path, "capture:\n  type: pyaudio\n  channels: 4\n  reference_device: monitor\n"
                        "  reference_device_channels: 2\n")
    cap = load_config(f).config.capture
    assert cap.out_channels == 6 and cap.reference_positions() == [4, 5]


def test_reference_device_and_reference_channels_together_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "capture:\n  type: pyaudio\n  channels: 8\n  reference_channels: [6, 7]\n"
                        "  reference_device: monitor\n")
    (line,) = config_error(f)
    assert line.startswith(f"{f}:5: capture.reference_device") and "not both" in line, line


def test_pyaudio_delivers_map_then_references(tmp_path: Path) -> None:
    f = write(tmp_path, "capture:\n  type: pyaudio\n  channels: 8\n  channel_map: [0, 1, 2, 3, 4, 5]\n"
                        "  reference_channels: [6, 7]\n")
    cap = load_config(f).config.capture
    assert cap.out_channels == 8 and cap.device_channels() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert cap.reference_positions() == [6, 7]


# --- the reference split -----------------------------------------------------------------------------


def run_spy(tmp_path: Path, refs: str, x: np.ndarray) -> list[Frame]:
    f = write(tmp_path, f"capture:\n  type: file\n  path: x.wav\n{refs}chain: []\n")
    loaded = load_config(f)
    chain = build_chain(loaded, x.shape[0])
    seen: list[Frame] = []
    real = chain.process

    def spy(frame: Frame) -> Frame:
        seen.append(frame)
        return real(frame)

    chain.process = spy  # type: ignore[method-assign]
    chain.open(RATE)
    pipe = Pipeline(chain, RATE, 320)
    for i in range(0, x.shape[1], 320):
        pipe.push(Block(x[:, i:i + 320], 0.0))
    pipe.flush()
    return seen


def test_reference_split_is_bit_exact(tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (8, RATE)).astype(np.float32)
    seen = run_spy(tmp_path, "  reference_channels: [6, 7]\n", x)
    assert seen[0].samples is not None and seen[0].samples.shape == (6, HOP)
    mics = np.concatenate([fr.samples for fr in seen if fr.samples is not None], axis=1)[:, : RATE]
    ref = np.concatenate([fr.side[AEC_REFERENCE] for fr in seen], axis=1)[:, : RATE]
    assert ref.dtype == np.float32 and np.array_equal(ref, x[6:8]) and np.array_equal(mics, x[:6])


def test_without_reference_nothing_changes(tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(-1, 1, (8, RATE)).astype(np.float32)
    seen = run_spy(tmp_path, "", x)
    assert all(AEC_REFERENCE not in fr.side for fr in seen)
    mics = np.concatenate([fr.samples for fr in seen if fr.samples is not None], axis=1)[:, : RATE]
    assert np.array_equal(mics, x)


# --- the stage ---------------------------------------------------------------------------------------


ENGINES = [{"engine": "speex"}, {"engine": "speex", "suppress": False},
           {"engine": "speex", "suppress": "neural"}, {"engine": "aec3"}]
#: each engine's constant output delay at 16 kHz (samples), measured: docs/echo.md
ENGINE_DELAY = {("speex", True): HOP, ("speex", False): 0, ("speex", "neural"): HOP,
                ("aec3", True): APM_DELAY[RATE], ("aec3", False): APM_DELAY[RATE]}


def stage(channels: int = 1, **params: Any) -> Aec:
    s = Aec(AecParams(**params), "aec")
    s.accept(AudioFormat(RATE, channels, HOP))
    from voxd.stage import StageContext
    s.open(StageContext(rate=RATE))
    return s


def run_stage(s: Aec, mic: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, list[Frame]]:
    outs, frames = [], []
    for i in range(0, mic.shape[1] - HOP + 1, HOP):
        fr = s.process(Frame(samples=mic[:, i:i + HOP], seq=i // HOP, pts=i, t=0.0, rate=RATE,
                             side={AEC_REFERENCE: ref[:, i:i + HOP]}))
        assert fr.samples is not None
        outs.append(fr.samples)
        frames.append(fr)
    y = np.concatenate(outs, axis=1)
    d = s.delay_samples
    return y[:, d:], frames


def echo_scene(seconds: float = 6.0, pace: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(mic (1, n), far (1, n))`` float32: speech through a small loudspeaker and a room. ``pace``: the
    playback device's clock over the microphones' (1 + 300e-6: 300 ppm fast); the loudspeaker then plays
    ``pace`` samples of ``far`` per microphone sample, and ``far`` is what that device's monitor gives."""
    import soundfile as sf
    import soxr
    far, _ = sf.read(SPEECH, dtype="float32")
    far = np.tile(far, int(np.ceil(seconds * RATE / len(far))))[: int(seconds * RATE)]  # the 10 s, again
    far = far / np.sqrt(np.mean(far ** 2)) * 0.1
    played = far if pace == 1.0 else soxr.resample(far, RATE * pace, RATE, quality="VHQ")[: len(far)]
    played = np.pad(played, (0, len(far) - len(played)))
    spk = np.tanh(3 * sosfilt(butter(4, [200, 6000], btype="band", fs=RATE, output="sos"), played)) / 3
    rng = np.random.default_rng(0)
    n = int(0.3 * RATE)
    rir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / RATE / 0.25) * 0.3
    rir[0] = 1.0
    echo = lfilter(np.concatenate([np.zeros(80), rir]), [1.0], spk)
    echo = echo / np.sqrt(np.mean(echo ** 2)) * 10 ** (-15 / 20)
    mic = echo + rng.standard_normal(len(far)) * 10 ** (-65 / 20)
    return mic[None].astype(np.float32), far[None].astype(np.float32)


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


@pytest.mark.parametrize("params", ENGINES, ids=lambda p: "-".join(map(str, p.values())))
def test_echo_is_removed(params: dict[str, Any]) -> None:
    mic, far = echo_scene()
    y, frames = run_stage(stage(**params), mic, far)
    seg = slice(2 * RATE, y.shape[1])
    erle = db(mic[0, seg]) - db(y[0, seg])
    assert erle >= MIN_ERLE_DB, erle
    assert frames[-1].side[AEC_ACTIVE] is True and frames[-1].side[AEC_ERLE_DB] > 0


def test_speex_estimates_the_echo_delay_and_reports_it() -> None:
    """The scene's echo path starts 80 samples (5 ms) after the reference; the loudspeaker's band-pass
    moves the path's peak a little later: the estimate lies within 2 ms after the onset (a wrong one,
    e.g. 0 before the first estimate or a reverberant tap, lies anywhere up to 400 ms)."""
    mic, far = echo_scene()
    _, frames = run_stage(stage(engine="speex"), mic, far)
    assert 5.0 <= frames[-1].side[AEC_DELAY_MS] <= 7.0, frames[-1].side[AEC_DELAY_MS]


def near_end(n: int, level_db: float, seed: int = 1) -> np.ndarray:
    """A second talker for double talk: the speech recording from its middle, at ``level_db`` RMS."""
    import soundfile as sf
    x, _ = sf.read(SPEECH, dtype="float32")
    x = np.roll(x, len(x) // 2)[:n]
    x = np.pad(x, (0, n - len(x)))
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (level_db / 20)).astype(np.float32)


def test_echo_only_after_convergence_and_double_talk_when_a_user_talks() -> None:
    """Far end alone: once converged, the frames where the far end plays are echo only (and none is
    double talk); a user 6 dB under the echo from 3 s on: most of their speech frames are double talk."""
    mic, far = echo_scene()
    _, frames = run_stage(stage(engine="speex"), mic, far)
    late = frames[2 * RATE // HOP:]
    active = [f for f in late if f.side[AEC_ACTIVE]]
    assert active and all(not f.side[AEC_DOUBLETALK] for f in active if f.side[AEC_ECHO_ONLY])
    assert np.mean([f.side[AEC_ECHO_ONLY] for f in active]) > 0.9
    n = mic.shape[1]
    user = near_end(n, -21.0)  # the echo is at -15 dB
    user[: 3 * RATE] = 0.0
    _, frames = run_stage(stage(engine="speex"), mic + user[None], far)
    frame_level = np.array([db(user[i:i + HOP]) for i in range(0, n - HOP + 1, HOP)])
    talking = [f for f, lvl in zip(frames, frame_level, strict=False) if lvl > -35.0 and f.side[AEC_ACTIVE]]
    assert len(talking) > 50
    assert np.mean([f.side[AEC_DOUBLETALK] for f in talking]) > 0.6
    quiet = [f for f, lvl in zip(frames[2 * RATE // HOP: 3 * RATE // HOP], frame_level[2 * RATE // HOP:],
                                  strict=False) if f.side[AEC_ACTIVE]]
    assert np.mean([f.side[AEC_ECHO_ONLY] for f in quiet]) > 0.9  # before the user starts


def test_echo_attenuation_lowers_what_is_left_of_the_echo_only() -> None:
    """``echo_attenuation_db``: hops the gate calls echo only lose that much more; a silent reference
    still passes the input through bit for bit."""
    mic, far = echo_scene()
    plain, _ = run_stage(stage(engine="speex"), mic, far)
    quiet, frames = run_stage(stage(engine="speex", echo_attenuation_db=20.0), mic, far)
    only = np.array([f.side[AEC_ECHO_ONLY] for f in frames])
    late = slice(3 * RATE, plain.shape[1])
    assert db(plain[0, late]) - db(quiet[0, late]) > 6.0
    # frame k's samples, after the stage's one-hop delay; away from the one-hop gain ramps
    steady_only = np.flatnonzero(only[1:-1] & only[:-2]) + 1
    steady_not = np.flatnonzero(~only[1:-1] & ~only[:-2]) + 1
    assert len(steady_only) > 100 and len(steady_not) > 5
    idx = np.concatenate([np.arange(k * HOP - HOP, k * HOP) for k in steady_only])
    assert db(plain[0, idx]) - db(quiet[0, idx]) == pytest.approx(20.0, abs=0.01)
    for k in steady_not:
        seg = slice(k * HOP - HOP, k * HOP)
        np.testing.assert_array_equal(plain[:, seg], quiet[:, seg])
    y, _ = run_stage(stage(engine="speex", echo_attenuation_db=20.0), mic, np.zeros_like(far))
    np.testing.assert_array_equal(y, mic[:, : y.shape[1]])


def test_without_playback_nothing_is_echo_only() -> None:
    mic, _far = echo_scene(seconds=2.0)
    _, frames = run_stage(stage(engine="speex"), mic, np.zeros_like(mic))
    assert not any(f.side[AEC_ECHO_ONLY] or f.side[AEC_DOUBLETALK] for f in frames)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(arrays(np.int16, 160), arrays(np.int16, 160),
                          arrays(np.float32, 160, elements=st.floats(-4e4, 4e4, width=32)),
                          arrays(np.int16, (2, 160))), min_size=1, max_size=30), st.integers(0, 1))
def test_fuzz_echo_gate_any_hops_give_two_booleans(hops: list[tuple[np.ndarray, ...]], lag: int) -> None:
    """Whatever the canceller hands it (full-scale int16 extremes, silence, garbage), the gate returns
    two booleans, never both true, and keeps finite statistics; reset() forgets everything."""
    gate = EchoGate(RATE, HOP, lag)
    for mic, lin, out, ref in hops:
        only, both = gate.push(mic, lin, out, ref)
        assert isinstance(only, bool) and isinstance(both, bool) and not (only and both)
        assert np.isfinite(gate.coherent)
    gate.reset()
    assert gate.push(*(np.zeros(160, np.int16),) * 2, np.zeros(160, np.float32),
                     np.zeros((2, 160), np.int16)) == (False, False)


@pytest.mark.parametrize("params", ENGINES, ids=lambda p: "-".join(map(str, p.values())))
def test_silent_reference_passes_the_input_through_bit_exact(params: dict[str, Any]) -> None:
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (2, 2 * RATE)).astype(np.float32)
    s = stage(2, **params)
    y, frames = run_stage(s, x, np.zeros((2, x.shape[1]), np.float32))
    assert s.delay_samples == ENGINE_DELAY[(params["engine"], params.get("suppress", True))]
    assert np.array_equal(y, x[:, : y.shape[1]])
    assert not any(fr.side[AEC_ACTIVE] for fr in frames)


@pytest.mark.parametrize("params", ENGINES, ids=lambda p: "-".join(map(str, p.values())))
def test_declared_delay_is_the_engines_delay(params: dict[str, Any]) -> None:
    """While cancelling, the output lines up with the input after the declared delay: a near-end burst
    (the reference plays something unrelated) comes out at the declared lag."""
    rng = np.random.default_rng(7)
    x = (0.05 * rng.standard_normal((1, RATE))).astype(np.float32)
    ref = (0.05 * rng.standard_normal((1, RATE))).astype(np.float32)
    s = stage(1, **params)
    outs = []
    for i in range(0, RATE, HOP):
        fr = s.process(Frame(samples=x[:, i:i + HOP], seq=i // HOP, pts=i, t=0.0, rate=RATE,
                             side={AEC_REFERENCE: ref[:, i:i + HOP]}))
        assert fr.samples is not None
        outs.append(fr.samples[0])
    y = np.concatenate(outs).astype(np.float64)
    # multiply-and-sum, not np.dot: OpenBLAS splits a float64 dot this long over its threads, and on a
    # busy 2-CPU machine those threads spin (3-5 s of CPU for these 400 dots, 20 ms without BLAS)
    x64 = x[0].astype(np.float64)
    r = [abs(float(np.sum(y[k:] * x64[: y.size - k]))) for k in range(0, 400)]
    assert int(np.argmax(r)) == s.delay_samples


@pytest.mark.parametrize("params", ENGINES, ids=lambda p: "-".join(map(str, p.values())))
def test_no_playback_runs_no_engine_and_cancelling_resumes_after_the_pause(params: dict[str, Any]) -> None:
    """Between two playbacks (reference silent for longer than the hold) the engine is not called beyond
    the hold; when playback resumes the same engine cancels the echo again."""
    mic, far = echo_scene(6.0)
    pause = np.zeros((1, 2 * RATE), np.float32)
    noise = np.random.default_rng(5).standard_normal((1, 2 * RATE)).astype(np.float32) * 1e-3
    s = stage(**params)
    run_stage(s, mic, far)
    engine = s._engine
    assert engine is not None
    calls = 0
    real = engine.process

    def counting(m: np.ndarray, r: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return real(m, r)

    engine.process = counting  # type: ignore[method-assign]
    _, frames = run_stage(s, noise, pause)
    hold_hops = int(AecParams().silence_hold_ms * RATE / 1000) // HOP
    assert calls <= hold_hops + 2, (calls, hold_hops)
    assert not frames[-1].side[AEC_ACTIVE]
    y, _ = run_stage(s, mic[:, : 2 * RATE], far[:, : 2 * RATE])
    assert s._engine is engine
    seg = slice(RATE // 2, y.shape[1])
    assert db(mic[0, seg]) - db(y[0, seg]) >= MIN_ERLE_DB


def test_non_finite_input_gives_finite_output() -> None:
    x = np.random.default_rng(4).uniform(-0.5, 0.5, (2, RATE)).astype(np.float32)
    x[0, 100:400] = np.nan
    x[1, 500] = np.inf
    ref = x.copy()
    y, _ = run_stage(stage(2), x, ref)
    assert np.isfinite(y).all()


def test_reset_starts_afresh() -> None:
    mic, far = echo_scene(2.0)
    s = stage()
    a, _ = run_stage(s, mic, far)
    s.reset()
    b, _ = run_stage(s, mic, far)
    assert np.isfinite(b).all() and a.shape == b.shape


@settings(max_examples=15, deadline=None)
@given(arrays(np.float32, (2, 3 * HOP), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       arrays(np.float32, (1, 3 * HOP), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_hostile_input_gives_finite_output(x: np.ndarray, ref: np.ndarray) -> None:
    y, _ = run_stage(stage(2), x, ref)
    assert np.isfinite(y).all() and y.dtype == np.float32


# --- suppress: neural (the learned residual-echo suppressor, real onnxruntime) --------------------------


def test_neural_suppressor_removes_more_echo_than_the_linear_filter() -> None:
    mic, far = echo_scene()
    seg = slice(2 * RATE, mic.shape[1] - HOP)
    lin, _ = run_stage(stage(suppress=False), mic, far)
    neu, _ = run_stage(stage(suppress="neural"), mic, far)
    gain = db(lin[0, seg]) - db(neu[0, seg])
    assert gain >= 6.0, gain


def test_neural_suppressor_keeps_a_user_talking_over_the_playback() -> None:
    """Double talk: the user 6 dB under the echo. What the stage leaves of the user (its output less the
    output of the same scene without the user) keeps most of the user's energy and shape."""
    mic, far = echo_scene()
    user = np.zeros_like(mic)
    user[0, 3 * RATE:5 * RATE] = near_end(2 * RATE, db(mic[0]) - 6.0)
    with_user, _ = run_stage(stage(suppress="neural"), mic + user, far)
    without, _ = run_stage(stage(suppress="neural"), mic, far)
    seg = slice(3 * RATE + HOP, 5 * RATE - HOP)
    kept = with_user[0, seg] - without[0, seg]
    u = user[0, seg]
    corr = float(np.dot(kept, u) / np.sqrt(np.dot(kept, kept) * np.dot(u, u) + 1e-20))
    assert corr > 0.7, corr
    assert -6.0 < db(kept) - db(u) < 3.0, db(kept) - db(u)


def test_neural_suppressor_recovers_from_a_model_that_returns_non_finite_values() -> None:
    """The session is real; its output for some hops is replaced by NaN (as a broken model would give):
    those hops pass the linear output, the state starts over, the output stays finite."""
    mic, far = echo_scene(2.0)
    s = stage(suppress="neural")
    run_stage(s, mic[:, :RATE // 2], far[:, :RATE // 2])
    eng = s._engine
    assert eng is not None and eng.neural is not None  # type: ignore[union-attr]
    sup = eng.neural  # type: ignore[union-attr]
    real_run = sup._session.run
    calls = 0

    def flaky(names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        nonlocal calls
        calls += 1
        out = real_run(names, feeds)
        if calls % 7 == 0:
            out[0] = np.full_like(out[0], np.nan)
        return out

    sup._session = type("Flaky", (), {"run": staticmethod(flaky)})()
    y, _ = run_stage(s, mic[:, RATE // 2:], far[:, RATE // 2:])
    assert np.isfinite(y).all() and sup.failures >= 10


@pytest.mark.parametrize(("params", "expect"), [
    ({"suppress": "neural", "model": "/nonexistent/echo.onnx"}, "does not load"),
    ({"suppress": "neural", "engine": "aec3"}, "needs engine speex"),
    ({"model": "x.onnx"}, "model is for suppress: neural"),
])
def test_neural_suppressor_config_errors_are_one_line_at_the_stage(tmp_path: Path, params: dict[str, Any],
                                                                   expect: str) -> None:
    opts = "".join(f"\n    {k}: {v}" for k, v in params.items())
    f = write(tmp_path, "capture:\n  type: file\n  path: x.wav\n  reference_channels: [1]\nchain:\n"
                        f"  - stage: aec{opts}\n")
    (line,) = config_error(f)
    assert line.startswith(f"{f}:6: chain.0") and expect in line, line


def test_a_denoiser_model_is_not_a_residual_echo_suppressor(tmp_path: Path) -> None:
    from importlib import resources

    denoiser = resources.files("voxd_denoise").joinpath("models/denoise.onnx")
    f = write(tmp_path, "capture:\n  type: file\n  path: x.wav\n  reference_channels: [1]\nchain:\n"
                        f"  - stage: aec\n    suppress: neural\n    model: {denoiser}\n")
    (line,) = config_error(f)
    assert "is not a residual-echo suppressor" in line, line


@settings(max_examples=10, deadline=None)
@given(arrays(np.float32, (2, 3 * HOP), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       arrays(np.float32, (1, 3 * HOP), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_neural_hostile_input_gives_finite_output(x: np.ndarray, ref: np.ndarray) -> None:
    y, _ = run_stage(stage(2, suppress="neural"), x, ref)
    assert np.isfinite(y).all() and y.dtype == np.float32


# --- a configured chain (config -> chain -> pipeline, as `voxd process` runs it) ----------------------


def test_a_configured_aec_chain_removes_the_echo_of_its_loopback_channel(tmp_path: Path) -> None:
    """`aec` in a config's chain with `capture.reference_channels`: the capture provides the reference
    (a chain check once refused it: "requires 'aec.reference', which no earlier stage provides"), and
    `voxd process` on a 2-channel file (mic, loopback) removes the echo."""
    import soundfile as sf

    from voxd.runtime import process_file

    mic, far = echo_scene()
    wav = tmp_path / "board.wav"
    sf.write(wav, np.concatenate([mic, far]).T, RATE, subtype="FLOAT")
    f = write(tmp_path, f"capture:\n  type: file\n  path: {wav}\n  reference_channels: [1]\n"
                        "chain:\n  - stage: aec\n")
    res = process_file(load_config(f), str(wav))
    y = res.audio[0]  # (channels, n): the one microphone
    seg = slice(2 * RATE, min(len(y), mic.shape[1]))
    assert db(mic[0, seg]) - db(y[seg]) >= MIN_ERLE_DB
    without = write(tmp_path, f"capture:\n  type: file\n  path: {wav}\nchain:\n  - stage: aec\n")
    (line,) = config_error_on_build(without)
    assert "requires 'aec.reference'" in line and "set capture.reference_channels" in line


def config_error_on_build(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_chain(load_config(path), 2)
    return info.value.lines


# --- engine speex: the delay estimator and a missing library --------------------------------------------


@settings(max_examples=12, deadline=None)
@given(delay=st.integers(0, 6000), snr_db=st.floats(0.0, 30.0), seed=st.integers(0, 2**16))
def test_delay_estimator_finds_a_broadband_delay(delay: int, snr_db: float, seed: int) -> None:
    """Speech-like (white, amplitude-modulated) reference, the microphone hears it ``delay`` samples late
    through a short coloured path, plus noise ``snr_db`` under it: after 3 s the estimate is the
    delay (within the path's 3-tap spread)."""
    from voxd_aec.delay import DelayEstimator

    rng = np.random.default_rng(seed)
    n = 3 * RATE
    env = np.repeat(rng.uniform(0.2, 1.0, n // 800 + 1), 800)[:n]
    ref = (0.1 * env * rng.standard_normal(n)).astype(np.float32)
    echo = np.convolve(np.concatenate([np.zeros(delay), ref])[:n], [0.6, 1.0, 0.4])[:n]
    mic = (echo + rng.standard_normal(n) * np.std(echo) * 10 ** (-snr_db / 20)).astype(np.float32)
    est = DelayEstimator(block=8192, max_lag=6400)
    for i in range(0, n, HOP):
        d = est.push(ref[i:i + HOP], mic[i:i + HOP])
    assert d is not None and abs(d - (delay + 1)) <= 1, (d, delay)


def test_delay_estimator_stays_silent_on_silence_and_on_unrelated_noise() -> None:
    from voxd_aec.delay import DelayEstimator

    rng = np.random.default_rng(11)
    est = DelayEstimator(block=8192, max_lag=6400)
    for _ in range(300):
        assert est.push(np.zeros(HOP, np.float32), rng.standard_normal(HOP).astype(np.float32)) is None
        assert est.push(rng.standard_normal(HOP).astype(np.float32),
                        rng.standard_normal(HOP).astype(np.float32)) is None


def test_missing_speexdsp_is_one_config_line_naming_the_package(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The library is looked up for real under a name that does not exist (as on a system without
    libspeexdsp1)."""
    import voxd_aec.speex as sp

    monkeypatch.setattr(sp, "_lib", None)
    monkeypatch.setattr(sp, "LIBRARY", "libspeexdsp-missing.so.9")
    monkeypatch.setattr(sp.ctypes.util, "find_library", lambda name: None)
    f = write(tmp_path, "capture:\n  type: file\n  path: x.wav\n  reference_channels: [1]\nchain:\n"
                        "  - stage: aec\n")
    (line,) = config_error(f)
    assert line.startswith(f"{f}:6: chain.0") and "apt install libspeexdsp1" in line, line


# --- live capture: an 8-channel board (6 mics + the loopback pair) through a real PortAudio stream -------


def live_run(cfg: Path, env: dict[str, str], tmp_path: Path, frames: int, wait_for: str,
             start: Any) -> tuple[dict[str, Any], np.ndarray]:
    """``voxd run`` on ``cfg`` with ``env`` and a subscriber for ``frames`` frames; ``start()`` (feeding the
    virtual devices) runs once the daemon has logged ``wait_for``. Returns the subscriber's record and the
    published samples int16 ``(n, channels)``."""
    from tests.test_capture import Daemon, recorded, subscriber

    endpoint = cfg.read_text().split("endpoints: ['")[1].split("'")[0]
    out = tmp_path / "sub"
    sub = subscriber(endpoint, out, "--frames", str(frames))
    daemon = Daemon(cfg, env, tmp_path)
    try:
        daemon.wait_log(wait_for, timeout=30)
        start()
        assert sub.wait(timeout=90) == 0
        assert daemon.stop() == 0
    finally:
        sub.kill()
        daemon.kill()
    return recorded(out)


def onset(pcm: np.ndarray) -> tuple[np.ndarray, int]:
    """The published samples as float and the first sample above -60 dBFS on channel 0 (the feed's start)."""
    y = pcm.astype(np.float64) / 32767
    return y, int(np.flatnonzero(np.abs(y[:, 0]) > 1e-3)[0])


def test_live_8_channel_capture_carries_the_loopback_pair_bit_exact_to_the_stage(make_virtual_mic, free_port,
                                                                                 tmp_path, outside_plugins):
    """The ReSpeaker 6-mic HAT's layout: device channels 6 and 7 are the playback loopback. A ramp on
    every channel; the outside plugin's ``reference_tap`` stage writes the ``aec.reference`` it
    receives over its first two channels: the subscriber sees device channels 6, 7, 2, 3, 4, 5 bit for
    bit (the daemon, PortAudio, ALSA and PulseAudio are real; tests/test_capture.py)."""
    from tests.test_capture import write_config
    from tests.virtual_mic import ramp_pattern, ramp_source

    mic = make_virtual_mic(channels=8, rate=16000)
    cfg = write_config(tmp_path / "c.yaml", f"tcp://127.0.0.1:{free_port}",
                       "{type: pyaudio, device: pulse, channels: 8, rate: 16000, reference_channels: [6, 7]}",
                       chain="[{stage: reference_tap}]")
    info, pcm = live_run(cfg, {**mic.env, **outside_plugins}, tmp_path, 100, "capturing from",
                         lambda: mic.start_feeding(ramp_source(8)))
    assert info["channels"] == 6 and info["gaps"] == 0
    start = int(np.flatnonzero(pcm[:, 2])[0])  # the stream may open on a little silence
    device = ramp_pattern(len(pcm) - start, 8, int(pcm[start, 2]) - 2)  # what channels 0-7 carried
    np.testing.assert_array_equal(pcm[start:], device[:, [6, 7, 2, 3, 4, 5]])
    assert len(pcm) - start > 1800


def test_live_capture_with_the_loopback_pair_removes_the_echo(make_virtual_mic, free_port, tmp_path):
    """The same board playing speech: the six microphones hear it through a small loudspeaker and a
    room (the echo scene above, each mic its own gain), the loopback pair carries what was played. The
    daemon's ``aec`` (defaults) removes the echo from what it publishes."""
    from tests.test_capture import write_config

    mic_sig, far = echo_scene(6.0)
    gains = np.array([1.0, 0.9, 0.8, 0.85, 0.95, 0.7])
    mics = mic_sig[0][:, None] * gains[None, :]
    board = np.concatenate([mics, far[0][:, None], far[0][:, None]], axis=1)
    pcm_in = np.round(np.clip(board, -1, 1) * 32767).astype(np.int16)
    vm = make_virtual_mic(channels=8, rate=16000)
    cfg = write_config(tmp_path / "c.yaml", f"tcp://127.0.0.1:{free_port}",
                       "{type: pyaudio, device: pulse, channels: 8, rate: 16000, reference_channels: [6, 7]}",
                       chain="[{stage: aec}]")
    info, pcm = live_run(cfg, vm.env, tmp_path, len(pcm_in) // 320 - 5, "capturing from",
                         lambda: vm.start_feeding(pcm_in))
    assert info["channels"] == 6 and info["gaps"] == 0
    y, start = onset(pcm)  # where the feed began (the echo's onset)
    seg = slice(start + 2 * RATE, min(len(y), start + 5 * RATE))
    x = mics[: seg.stop - start]
    for ch in range(6):
        erle = db(x[2 * RATE:, ch]) - db(y[seg, ch])
        assert erle >= MIN_ERLE_DB, (ch, erle)


def test_live_reference_from_a_separate_device_with_its_own_clock(make_virtual_mic, free_port, tmp_path):
    """A Pi with a USB speaker: the microphones (4-channel device) and the playback reference (the
    speaker's monitor: another device, ``capture.reference_device``) run on different clocks, the
    speaker's 300 ppm fast (its echo in the microphones too), and the echo reaches the microphones 100 ms
    after the reference (the playback device's buffer). The daemon measures the clock offset, brings the
    reference onto the microphones' clock, and its ``aec`` removes the echo; ``stats`` report the offset."""
    from tests.test_capture import write_config

    # 20 s: the rate offset is measured from the two devices' delivery times, whose jitter (a few ms here,
    # on a loaded machine) takes seconds of data to average out
    mic_sig, far = echo_scene(20.0, pace=1 + 300e-6)
    mics = mic_sig[0][:, None] * np.array([1.0, 0.9, 0.8, 0.85])[None, :]
    pcm_mics = np.round(np.clip(mics, -1, 1) * 32767).astype(np.int16)
    pcm_ref = np.round(np.clip(far[0], -1, 1) * 32767).astype(np.int16)[:, None]
    vm = make_virtual_mic(channels=4, rate=16000, extra_sources={"voxdref": 1})
    cfg = write_config(tmp_path / "c.yaml", f"tcp://127.0.0.1:{free_port}",
                       "{type: pyaudio, device: pulse, channels: 4, rate: 16000, reference_device: voxdref, "
                       "reference_device_channels: 1}", chain="[{stage: aec}]")

    def start() -> None:  # the reference first: the playback device's buffer delays the echo 100 ms
        vm.feed_extra("voxdref", pcm_ref, clock=1 + 300e-6)
        time.sleep(0.1)
        vm.start_feeding(pcm_mics)

    info, pcm = live_run(cfg, vm.env, tmp_path, len(pcm_mics) // 320 - 20, "playback reference from", start)
    assert info["channels"] == 4 and info["gaps"] == 0
    y, start_at = onset(pcm)
    seg = slice(start_at + 10 * RATE, min(len(y), start_at + 19 * RATE))
    erle = db(mics[10 * RATE: seg.stop - start_at, 0]) - db(y[seg, 0])
    drift = [s["reference_drift_ppm"] for s in info["stats"] if "reference_drift_ppm" in s]
    delay = [s["aec.delay_ms"] for s in info["stats"] if "aec.delay_ms" in s]
    refstats = [(s.get("reference_underruns"), s.get("reference_overruns"), s.get("reference_buffer_ms"))
                for s in info["stats"]]
    assert erle >= MIN_ERLE_DB, (erle, drift, delay, refstats)
    assert drift and abs(drift[-1] - 300) <= 100, drift
