"""The ``mask`` stage: the bundled learned array mask through real onnxruntime, its inputs and outputs,
config and format errors, non-finite input and model failures, and ``beamform mask: model`` after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from voxd_array.mask import BINS, Mask, MaskParams

from tests.conftest import ROOT
from voxd.chain import build_chain
from voxd.config import load_config_text
from voxd.errors import ConfigError
from voxd.frame import AudioFormat, Domain, Frame
from voxd.side import MASK_GAIN
from voxd.sources.file import read_audio
from voxd.stage import StageContext
from voxd.stft import StftAnalysis

RATE, N_FFT, HOP = 16000, 320, 160
CHAIN = "capture: {type: file, path: in.wav}\narray: {preset: respeaker-4mic-hat}\nchain:\n"


def demo_spectra(hops: int = 150, start_s: float = 1.0) -> np.ndarray:
    """``(hops, 4, bins)`` spectra of the bundled 4-mic kitchen recording (a talker over kitchen noise)."""
    x, rate = read_audio(str(ROOT / "demo" / "respeaker4-kitchen.flac"))
    a = int(start_s * rate)
    x = np.ascontiguousarray(x[:, a : a + hops * HOP], np.float32)
    an = StftAnalysis(4, N_FFT, HOP)
    return np.stack([an.push(x[:, i * HOP : (i + 1) * HOP])[0] for i in range(hops)])


def make_stage(channels: list[int] | None = None, events: list[Any] | None = None, mics: int = 4) -> Mask:
    stage = Mask(MaskParams(channels=channels), "mask")
    stage.accept(AudioFormat(RATE, mics, HOP, Domain.SPECTRAL, N_FFT))

    def emit(event: str, **fields: Any) -> None:
        if events is not None:
            events.append((event, fields))

    stage.open(StageContext(rate=RATE, emit=emit))
    return stage


def gains(stage: Mask, specs: np.ndarray) -> np.ndarray:
    out = []
    for i, s in enumerate(specs):
        f = stage.process(Frame(None, i, i * HOP, 0.0, RATE, spec=s))
        assert f.spec is s, "the spectra pass unchanged"
        out.append(f.side[MASK_GAIN])
    return np.stack(out)


def test_gain_is_a_per_bin_mask_and_the_spectra_pass_unchanged() -> None:
    specs = demo_spectra()
    g = gains(make_stage(), specs)
    assert g.shape == (len(specs), 1, BINS) and g.dtype == np.float32
    assert (g >= 0).all() and (g <= 1).all()
    assert np.ptp(g, axis=0).max() > 0.1 and np.ptp(g, axis=2).max() > 0.1, "it varies in time and frequency"


def test_digital_silence_gives_a_zero_mask() -> None:
    g = gains(make_stage(), np.zeros((20, 4, BINS), np.complex64))
    np.testing.assert_array_equal(g, 0.0)


def test_reset_forgets_the_state_and_channels_pick_the_order() -> None:
    specs = demo_spectra(80)
    stage = make_stage()
    first = gains(stage, specs)
    stage.reset()
    np.testing.assert_array_equal(gains(stage, specs), first)
    # the model's state matters: the same hops after other audio give another mask
    assert np.abs(gains(stage, specs) - first).max() > 1e-3
    swapped = specs[:, [1, 0, 3, 2]]
    np.testing.assert_array_equal(gains(make_stage(channels=[1, 0, 3, 2]), swapped), first)
    assert np.abs(gains(make_stage(), swapped) - first).max() > 1e-3, "the reference mic matters"


def test_non_finite_input_keeps_the_mask_finite_and_a_failing_model_gives_zero_with_one_event() -> None:
    specs = demo_spectra(60)
    bad = specs.copy()
    bad[10, 2, 5] = np.nan
    bad[11] = np.inf
    g = gains(make_stage(), bad)
    assert np.isfinite(g).all() and (g >= 0).all() and (g <= 1).all()

    events: list[Any] = []
    stage = make_stage(events=events)
    run = stage._session.run
    calls = {"n": 0}

    def flaky(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        out = run(*a, **k)
        if calls["n"] == 5:  # non-finite output: this hop's gain is 0, the state starts over
            return [np.full_like(out[0], np.nan), out[1]]
        if calls["n"] > 20:
            raise RuntimeError("boom")
        return out

    stage._session.run = flaky
    g = gains(stage, specs)
    assert (g[4] == 0).all() and g[5].any() and stage.stats() == {"nonfinite_hops": 1}
    np.testing.assert_array_equal(g[20:], 0.0)
    assert [t for t, _ in events] == ["stage_error"]
    assert events[0][1]["pts"] == 20 * HOP and "boom" in events[0][1]["error"]
    assert calls["n"] == 21, "not called again after it raised"


def test_config_and_format_errors_name_the_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    for entry, want in [
        (f"{{stage: mask, model: {broken}}}", "does not load"),
        (f"{{stage: mask, model: {tmp_path / 'gone.onnx'}}}", "does not exist"),
        ("{stage: mask, channels: [0, 0, 1, 2]}", "distinct"),
        ("{stage: mask, channels: [0, 1, 2, 7]}", "not among the input's 4 channels"),
        ("{stage: mask, channels: [0, 1, 2]}", "no bundled mask model for 3 microphones"),
        (f"{{stage: mask, model: {ROOT / 'plugins/voxd_denoise/models/denoise.onnx'}}}", "not a mask model"),
        ("{stage: beamform, mask: model}", "mask.gain"),
    ]:
        with pytest.raises(ConfigError) as err:
            build_chain(load_config_text(CHAIN + f"  - {entry}\n", "m.yaml"), 4)
        assert want in str(err.value), (entry, str(err.value))
        assert "\n" not in str(err.value).strip()


def test_a_model_gone_at_open_gives_zero_with_one_event(monkeypatch: pytest.MonkeyPatch) -> None:
    import voxd_array.mask as mask

    real = mask.load_session
    stage = Mask(MaskParams(), "mask")
    stage.accept(AudioFormat(RATE, 4, HOP, Domain.SPECTRAL, N_FFT))

    def gone(*_a: Any) -> Any:
        raise ValueError("model went away")

    monkeypatch.setattr(mask, "load_session", gone)
    events: list[Any] = []
    stage.open(StageContext(rate=RATE, emit=lambda event, **f: events.append((event, f))))
    monkeypatch.setattr(mask, "load_session", real)
    np.testing.assert_array_equal(gains(stage, demo_spectra(5)), 0.0)
    assert [t for t, _ in events] == ["stage_error"] and "went away" in events[0][1]["error"]


def test_beamform_follows_the_mask_stage_in_a_real_chain() -> None:
    chain = build_chain(load_config_text(CHAIN + "  - {stage: mask}\n  - {stage: beamform, mask: model}\n",
                                         "m.yaml"), 4)
    assert chain.out_format.channels == 1
    names = [n.name for n in chain.nodes]
    assert names.index("mask") < names.index("beamform")
