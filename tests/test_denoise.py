"""``denoise``: streaming through the chain equals the bare ONNX model frame by frame, reset, extreme
inputs stay finite, the attenuation limit, mix, and bypass + one ``stage_error`` on a model failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from voxd_denoise.inhouse import BINS, MODEL, state_size
from voxd_denoise.session import model_bytes, open_session
from voxd_denoise.stage import Denoise

from voxd.chain import build_chain
from voxd.config import load_config_text
from voxd.errors import ConfigError
from voxd.frame import Frame
from voxd.plugins import load_plugins
from voxd.stft import StftAnalysis

RATE, HOP, N_FFT = 16000, 160, 320
CAPTURE = "capture: {type: file, path: unused.wav}\n"


def build(text: str, channels: int = 1, events: list | None = None):
    chain = build_chain(load_config_text(CAPTURE + text, "test.yaml", plugins=load_plugins(disable=())),
                        channels)
    sink = (lambda t, **k: events.append((t, k))) if events is not None else None
    chain.open(RATE, emit=sink)
    return chain


def spectra(chain, x: np.ndarray) -> np.ndarray:
    """Push ``x`` ``(channels, n)`` hop by hop; the denoise stage's output spectra ``(frames, C, bins)``."""
    node = next(n for n in chain.nodes if n.name == "denoise")
    out = []
    orig = node.process

    def tap(frame):
        f = orig(frame)
        out.append(f.spec.copy())
        return f

    node.process = tap
    for i in range(x.shape[1] // HOP):
        chain.process(Frame(np.ascontiguousarray(x[:, i * HOP : (i + 1) * HOP], np.float32), i, i * HOP,
                            0.0, RATE))
    node.process = orig
    return np.stack(out)


def samples(chain, x: np.ndarray) -> np.ndarray:
    out = [chain.process(Frame(np.ascontiguousarray(x[:, i * HOP : (i + 1) * HOP], np.float32), i,
                               i * HOP, 0.0, RATE)).samples for i in range(x.shape[1] // HOP)]
    return np.concatenate(out, axis=1)[:, chain.delay_samples :]


def noise(n: int, level_db: float, seed: int = 0, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (10 ** (level_db / 20) * rng.standard_normal((channels, n))).astype(np.float32)


def speechlike(n: int, seed: int = 1) -> np.ndarray:
    """A voiced-like test signal: harmonics of a wobbling 150 Hz pitch, on/off every 0.4 s, plus noise."""
    t = np.arange(n) / RATE
    f0 = 150 + 20 * np.sin(2 * np.pi * 3 * t)
    ph = 2 * np.pi * np.cumsum(f0) / RATE
    v = sum(np.sin(k * ph) / k for k in range(1, 20)) * (np.sin(2 * np.pi * 1.25 * t) > 0)
    return (0.1 * v + noise(n, -40, seed)[0]).astype(np.float32)[None]


def offline(x: np.ndarray) -> np.ndarray:
    """The bundled model run directly with onnxruntime on voxd's STFT frames of mono ``x``."""
    sess = open_session(model_bytes(None, MODEL))
    state = np.zeros((1, state_size(sess)), np.float32)
    an = StftAnalysis(1, N_FFT, HOP)
    out = []
    for i in range(x.shape[1] // HOP):
        (spec,) = an.push(x[:, i * HOP : (i + 1) * HOP])
        inp = np.stack([spec.real, spec.imag], axis=-1).astype(np.float32)
        enh, state = sess.run(None, {"spec": inp, "state": state})
        out.append(enh[..., 0] + 1j * enh[..., 1])
    return np.stack(out)


def test_streaming_equals_offline_and_reset_repeats():
    x = speechlike(2 * RATE)
    chain = build("chain:\n  - stage: denoise\n")
    y = spectra(chain, x)
    ref = offline(x)
    assert y.shape == ref.shape == (x.shape[1] // HOP, 1, BINS)
    assert np.max(np.abs(y - ref)) < 1e-4
    assert np.max(np.abs(y)) > 1e-3  # not trivially silent
    chain.reset()
    y2 = spectra(chain, x[:, : 50 * HOP])
    np.testing.assert_array_equal(y2, y[:50])


def test_multichannel_states_are_independent():
    x = np.concatenate([speechlike(RATE), noise(RATE, -30, seed=5)])
    y = spectra(build("chain:\n  - stage: denoise\n", channels=2), x)
    for c in range(2):
        assert np.max(np.abs(y[:, c] - offline(x[c : c + 1])[:, 0])) < 1e-4


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", ["zeros", "square", "tiny", "nonfinite"])
def test_extreme_inputs_give_finite_output(kind):
    n = RATE
    if kind == "zeros":
        x = np.zeros((1, n), np.float32)
    elif kind == "square":
        x = np.sign(np.sin(2 * np.pi * 440 * np.arange(n) / RATE)).astype(np.float32)[None]
    elif kind == "tiny":
        x = noise(n, -180)
    else:
        x = speechlike(n)
        x[0, 3000] = np.nan
        x[0, 7000] = np.inf
        x[0, 9000:9100] = -np.inf
    events: list = []
    y = samples(build("chain:\n  - stage: denoise\n", events=events), x)
    assert np.isfinite(y).all()
    assert not events
    if kind == "zeros":
        assert np.max(np.abs(y)) < 1e-6  # silence in, silence out
    if kind == "square":
        assert np.max(np.abs(y)) < 4.0


def _drop_db(limit: float | None) -> float:
    x = noise(3 * RATE, -30, seed=3)
    extra = f"    attenuation_limit_db: {limit}\n" if limit is not None else ""
    cfg = "chain:\n  - stage: denoise\n" + extra
    y = samples(build(cfg), x)
    ref = x[:, : y.shape[1]]
    s = RATE  # after the model's 1 s normalisation settled
    return float(10 * np.log10(np.mean(ref[:, s:] ** 2.0) / np.mean(y[:, s:] ** 2.0)))


def test_attenuation_limit_is_honoured():
    free = _drop_db(None)
    limited = _drop_db(12)
    print(f"white noise -30 dBFS: {free:.1f} dB quieter with the default limit, {limited:.1f} dB with 12 dB")
    assert limited <= 12 + 1.0
    assert limited <= free + 0.5
    assert _drop_db(0) == pytest.approx(0.0, abs=0.3)  # a 0 dB limit leaves the noise (gains >= 1)


#: Noise-only white noise at -30 dBFS must come out at least this much quieter with the default
#: attenuation limit (100 dB): the bundled model removed 44.5 dB when this floor was set (2026-12-07);
#: a model that passes its input through (0 dB) or a much weaker one fails.
NOISE_DROP_FLOOR_DB = 40.0


def test_noise_only_input_drops_by_a_minimum():
    free = _drop_db(None)
    assert free >= NOISE_DROP_FLOOR_DB, f"noise-only input dropped by {free:.1f} dB only"
    for limit in (12, 30):  # the limit is reached, less 3 dB (MODEL_CARD.md)
        assert _drop_db(limit) >= limit - 3.0


def test_mix_zero_returns_the_input_spectrum():
    x = speechlike(RATE)
    chain = build("chain:\n  - stage: denoise\n    mix: 0\n")
    y = spectra(chain, x)
    an = StftAnalysis(1, N_FFT, HOP)
    ref = np.stack([an.push(x[:, i * HOP : (i + 1) * HOP])[0] for i in range(x.shape[1] // HOP)])
    np.testing.assert_array_equal(y, ref)
    half = spectra(build("chain:\n  - stage: denoise\n    mix: 0.5\n"), x)
    np.testing.assert_allclose(half, 0.5 * offline(x) + 0.5 * ref, atol=1e-4)


def test_a_model_file_that_does_not_load_is_a_config_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ConfigError, match=r"test.yaml:3: .*does not load"):
        build(f"chain:\n  - stage: denoise\n    model: {bad}\n")
    gtcrn_model = Path(__file__).resolve().parents[1] / "plugins/voxd_denoise/models/gtcrn_simple.onnx"
    with pytest.raises(ConfigError, match=r"is not a voxd model: it takes \['conv_cache'"):
        build(f"chain:\n  - stage: denoise\n    model: {gtcrn_model}\n")


def test_a_model_that_fails_to_open_at_run_time_bypasses_with_one_event(tmp_path, monkeypatch):
    """The file was fine at check time and is gone (or broken) when the chain opens: bypass, one event."""
    import voxd_denoise.inhouse as inhouse

    def gone(model: bytes) -> None:
        raise RuntimeError("the model went away")

    monkeypatch.setattr(inhouse, "open_session", gone)
    events: list = []
    x = speechlike(RATE // 2)
    chain = build("chain:\n  - stage: denoise\n", events=events)
    y = spectra(chain, x)
    an = StftAnalysis(1, N_FFT, HOP)
    ref = np.stack([an.push(x[:, i * HOP : (i + 1) * HOP])[0] for i in range(x.shape[1] // HOP)])
    np.testing.assert_array_equal(y, ref)
    assert [t for t, _ in events] == ["stage_error"]
    assert events[0][1]["stage"] == "denoise" and "went away" in events[0][1]["error"]


def test_model_raising_bypasses_with_one_event():
    events: list = []
    x = speechlike(RATE // 2)
    chain = build("chain:\n  - stage: denoise\n", events=events)
    stage = next(n for n in chain.nodes if n.name == "denoise").stage
    assert isinstance(stage, Denoise)
    calls = {"n": 0}
    run = stage._model._session.run

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("boom")
        return run(*a, **k)

    stage._model._session.run = flaky
    y = spectra(chain, x)
    assert [t for t, _ in events] == ["stage_error"]
    assert events[0][1]["pts"] == 10 * HOP and "boom" in events[0][1]["error"]
    an = StftAnalysis(1, N_FFT, HOP)
    ref = np.stack([an.push(x[:, i * HOP : (i + 1) * HOP])[0] for i in range(x.shape[1] // HOP)])
    np.testing.assert_array_equal(y[10:], ref[10:])
    assert calls["n"] == 11  # bypass for good: the model is not called again


def test_format_error_names_the_requirement():
    with pytest.raises(ConfigError, match="n_fft 320"):
        build_chain(load_config_text(CAPTURE + "processing: {rate: 16000, window_ms: 32, hop_ms: 16}\n"
                                     "chain:\n  - stage: denoise\n", "t.yaml",
                                     plugins=load_plugins(disable=())), 1)


def test_gain_side_value_is_the_effective_gain_per_bin():
    """``denoise.gain`` (engine voxd): output over input magnitude per bin, in [0, 1], with the
    attenuation limit as its floor; low on noise-only frames, higher where the voiced signal is."""
    from voxd.side import DENOISE_GAIN

    params = Denoise.Params.model_validate({"engine": "voxd"})
    assert Denoise.provided_keys(params) == (DENOISE_GAIN,)
    assert Denoise.provided_keys(params.model_copy(update={"engine": "gtcrn"})) == ()
    x = speechlike(RATE)
    for limit, floor in ((None, 0.0), (12, 10 ** (-12 / 20))):
        text = "chain:\n  - stage: denoise\n" + (f"    attenuation_limit_db: {limit}\n" if limit else "")
        chain = build(text)
        node = next(n for n in chain.nodes if n.name == "denoise")
        gains, ins, outs = [], [], []
        orig = node.process

        def tap(frame, orig=orig, gains=gains, ins=ins, outs=outs):
            f = orig(frame)
            gains.append(f.side[DENOISE_GAIN].copy())
            ins.append(frame.spec.copy())
            outs.append(f.spec.copy())
            return f

        node.process = tap
        for i in range(x.shape[1] // HOP):
            chain.process(Frame(np.ascontiguousarray(x[:, i * HOP : (i + 1) * HOP]), i, i * HOP, 0.0, RATE))
        g, xin, y = np.stack(gains), np.stack(ins), np.stack(outs)
        assert g.shape == (x.shape[1] // HOP, 1, BINS) and g.dtype == np.float32
        assert np.isfinite(g).all() and g.min() >= 0.0 and g.max() <= 1.0
        big = np.abs(xin) > 1e-4
        expected = np.minimum(np.abs(y) / np.maximum(np.abs(xin), 1e-12), 1.0)
        np.testing.assert_allclose(g[big], expected[big], atol=1e-4)
        assert g[big].min() >= floor - 1e-4
        if limit is not None:
            continue
        # the signal is on/off every 0.4 s: the mean gain of voiced frames exceeds that of the others
        voiced = np.abs(xin[:, 0, 5:40]).mean(axis=1) > 0.1 * np.abs(xin[:, 0, 5:40]).mean(axis=1).max()
        assert g[voiced, 0, 5:40].mean() > g[~voiced, 0, 5:40].mean() + 0.1


def test_channels_and_apply_false_estimate_the_gain_without_touching_the_spectra():
    """``channels: [1]``: the model runs on channel 1 only (its spectra equal a one-channel chain's on
    that channel), the other channel passes bit for bit, ``denoise.gain`` has one row; with ``apply:
    false`` every channel passes unchanged and the gain is the same as when applied."""
    from voxd.side import DENOISE_GAIN

    x = np.concatenate([noise(RATE, -30, seed=3), speechlike(RATE) + noise(RATE, -40, seed=4)])
    single = spectra(build("chain:\n  - stage: denoise\n"), x[1:])
    runs = {}
    for apply in (True, False):
        chain = build(f"chain:\n  - stage: denoise\n    channels: [1]\n    apply: {str(apply).lower()}\n",
                      channels=2)
        node = next(n for n in chain.nodes if n.name == "denoise")
        ins, outs, gains = [], [], []
        orig = node.process

        def tap(frame, orig=orig, ins=ins, outs=outs, gains=gains):
            f = orig(frame)
            ins.append(frame.spec.copy())
            outs.append(f.spec.copy())
            gains.append(f.side[DENOISE_GAIN].copy())
            return f

        node.process = tap
        for i in range(x.shape[1] // HOP):
            chain.process(Frame(np.ascontiguousarray(x[:, i * HOP : (i + 1) * HOP]), i, i * HOP, 0.0, RATE))
        runs[apply] = (np.stack(ins), np.stack(outs), np.stack(gains))
    xin, y, g = runs[True]
    assert g.shape == (x.shape[1] // HOP, 1, BINS)
    np.testing.assert_array_equal(y[:, 0], xin[:, 0])  # channel 0 untouched
    np.testing.assert_allclose(y[:, 1], single[:, 0], atol=1e-6)  # channel 1 as a one-channel run
    assert not np.allclose(y[:, 1], xin[:, 1])  # ... which did change it
    xin2, y2, g2 = runs[False]
    np.testing.assert_array_equal(y2, xin2)  # estimate only: nothing changes
    np.testing.assert_allclose(g2, g, atol=1e-6)


def test_channels_out_of_range_or_repeated_is_a_config_error():
    for chans, match in (("[0, 2]", r"channels \[2\] are not among the input's 2 channels"),
                         ("[1, 1]", "distinct"), ("[]", "channels")):
        with pytest.raises(ConfigError, match=match):
            build(f"chain:\n  - stage: denoise\n    channels: {chans}\n", channels=2)
    with pytest.raises(ConfigError, match="apply only applies to engine voxd"):
        build("chain:\n  - stage: denoise\n    engine: gtcrn\n    apply: false\n")
