"""``spectral_subtraction`` and ``wiener``: how much they take off noise, what they leave of a clean
signal, reset, and the chain-order rule that they need ``noise.psd`` from an earlier stage."""

from __future__ import annotations

import numpy as np
import pytest
from voxd_noise.suppress import SpectralSubtraction, SpectralSubtractionParams, Wiener, WienerParams

from tests.test_noise import CAPTURE, HOP, N_FFT, RATE, SPEECH, active_power, build, make_noise, speech
from voxd import metrics
from voxd.chain import build_chain
from voxd.config import load_config_text
from voxd.errors import ConfigError
from voxd.frame import AudioFormat, Domain, Frame
from voxd.stage import Stage, StageContext
from voxd.stft import StftAnalysis

BINS = N_FFT // 2 + 1


def process(chain, x: np.ndarray) -> np.ndarray:
    """Run ``x`` ``(channels, n)`` through ``chain``; the output with the chain's delay removed."""
    out = []
    for i in range(x.shape[1] // HOP):
        frame = Frame(np.ascontiguousarray(x[:, i * HOP : (i + 1) * HOP], np.float32), i, i * HOP, 0.0, RATE)
        out.append(chain.process(frame).samples)
    y = np.concatenate(out, axis=1)
    d = chain.delay_samples
    return y[:, d:], x[:, : y.shape[1] - d]


def power_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64))))


# ------------------------------------------------------------------------------- noise reduction
def expected_reduction_db(stage: str, floor_db: float) -> float:
    """Noise-only reduction with an exact noise PSD, from the exponential law of periodogram values
    ``P = N e`` (``e`` ~ Exp(1)): Wiener leaves the floor where the decision-directed SNR is low, so
    ``-floor_db``; Berouti leaves ``max(P - alpha N, beta N)`` with ``alpha`` 4.75 on noise-only frames
    (SNR clamped at -5 dB), mean ``N (beta + exp(-alpha))``."""
    if stage == "wiener":
        return -floor_db
    return float(-10 * np.log10(10 ** (floor_db / 10) + np.exp(-4.75)))


@pytest.mark.parametrize(("stage", "floor_db"), [("wiener", -10), ("wiener", -20),
                                                  ("spectral_subtraction", -10),
                                                  ("spectral_subtraction", -20)])
def test_noise_only_input_is_reduced_by_about_the_floor(stage, floor_db):
    x = 0.03 * make_noise("white", 4 * RATE, seed=11)[None]
    chain = build(f"chain:\n  - stage: noise\n    vad: false\n  - stage: {stage}\n    floor_db: {floor_db}\n")
    y, ref = process(chain, x)
    reduction = power_db(ref[:, 2 * RATE :]) - power_db(y[:, 2 * RATE :])  # after the tracker settled
    expected = expected_reduction_db(stage, floor_db)
    print(f"{stage} floor {floor_db} dB: noise-only input {reduction:.1f} dB quieter "
          f"(with an exact PSD: {expected:.1f})")
    # never more than the floor allows; somewhat less, from the estimate's own fluctuation
    assert expected - 3.0 <= reduction <= expected + 0.5


class FixedNoise(Stage):
    """Test stand-in for ``noise``: provides a constant ``noise.psd``."""

    kind = "fixed_noise"
    domain = Domain.SPECTRAL
    provides = ("noise.psd",)

    def __init__(self, psd: np.ndarray) -> None:
        super().__init__(Stage.Params(), "fixed")
        self.psd = psd.astype(np.float32)

    def process(self, frame: Frame) -> Frame:
        return frame.with_side(**{"noise.psd": self.psd})


def _suppressor(cls: type[Stage], channels: int = 1, **params) -> Stage:
    stage = cls(cls.Params(**params), cls.kind)
    fmt = AudioFormat(RATE, channels, HOP, Domain.SPECTRAL, N_FFT)
    stage.accept(fmt)
    stage.open(StageContext(rate=RATE))
    return stage


def _spectra(x: np.ndarray) -> list[np.ndarray]:
    return StftAnalysis(x.shape[0], N_FFT, HOP).push(x.astype(np.float32))


@pytest.mark.parametrize("cls", [Wiener, SpectralSubtraction])
def test_a_clean_tone_passes_nearly_unchanged(cls):
    """A 1 kHz tone 60 dB above a known white noise floor: every tone bin keeps its level."""
    t = np.arange(2 * RATE) / RATE
    x = (0.1 * np.sin(2 * np.pi * 1000 * t))[None]
    floor = np.full((1, BINS), 0.1**2 * 1e-6 * N_FFT / 2, np.float32)  # ~60 dB below the tone bin
    noise, stage = FixedNoise(floor), _suppressor(cls)
    ins, outs = [], []
    for i, spec in enumerate(_spectra(x)):
        frame = noise.process(Frame(None, i, i * HOP, 0.0, RATE, spec=spec))
        before = spec.copy()
        outs.append(stage.process(frame).spec)
        np.testing.assert_array_equal(frame.spec, before)  # never mutates its input
        ins.append(spec)
    xin, xout = np.stack(ins)[20:, 0], np.stack(outs)[20:, 0]
    tone = slice(18, 23)  # 1 kHz = bin 20, with the window's main lobe
    change_db = 10 * np.log10(np.sum(np.abs(xout[:, tone]) ** 2) / np.sum(np.abs(xin[:, tone]) ** 2))
    print(f"{cls.kind}: tone level change {change_db:+.3f} dB")
    assert abs(change_db) < 0.1


def test_wiener_improves_si_sdr_on_speech_in_white_noise():
    s = speech()[: 5 * RATE]
    n = make_noise("white", s.size, seed=12) * np.sqrt(active_power(s) / 10 ** 0.5)  # 5 dB SNR
    chain = build("chain:\n  - stage: noise\n    vad: false\n  - stage: wiener\n")
    y, x = process(chain, (s + n)[None])
    clean = s[: y.shape[1]]
    before, after = metrics.si_sdr(clean, x[0]), metrics.si_sdr(clean, y[0])
    print(f"SI-SDR {before:.1f} -> {after:.1f} dB")
    assert after > before + 3.0


# ------------------------------------------------------------------------------- state and errors
@pytest.mark.parametrize(("cls", "params"), [(Wiener, {}), (SpectralSubtraction, {})])
def test_reset_forgets_the_previous_frames(cls, params):
    rng = np.random.default_rng(13)
    psd = np.full((2, BINS), 2.0, np.float32)

    def frames(scale: float, n: int) -> list[Frame]:
        spec = scale * (rng.standard_normal((n, 2, BINS)) + 1j * rng.standard_normal((n, 2, BINS)))
        return [Frame(None, i, i * HOP, 0.0, RATE, spec=spec[i].astype(np.complex64),
                      side={"noise.psd": psd}) for i in range(n)]

    fresh, reused = _suppressor(cls, 2, **params), _suppressor(cls, 2, **params)
    for f in frames(30.0, 20):
        reused.process(f)
    reused.reset()
    for f in frames(1.0, 20):
        np.testing.assert_array_equal(fresh.process(f).spec, reused.process(f).spec)


def test_wiener_state_carries_over_frames():
    """Decision-directed: the same frame is treated differently after loud speech than after silence."""
    psd = np.ones((1, BINS), np.float32)
    quiet = Frame(None, 0, 0, 0.0, RATE, spec=np.full((1, BINS), 1.5, np.complex64), side={"noise.psd": psd})
    loud = Frame(None, 0, 0, 0.0, RATE, spec=np.full((1, BINS), 30.0, np.complex64), side={"noise.psd": psd})
    a, b = _suppressor(Wiener), _suppressor(Wiener)
    a.process(loud)
    b.process(quiet)
    assert np.all(np.abs(a.process(quiet).spec) > np.abs(b.process(quiet).spec))


def test_berouti_alpha_follows_the_frame_snr():
    """Higher frame SNR, less over-subtraction: gain at a bin with P = 3 N differs with the rest."""
    psd = np.ones((1, BINS), np.float32)
    stage = _suppressor(SpectralSubtraction, floor_db=-40)
    quiet = np.ones(BINS) * np.sqrt(1.2)  # frame SNR about -7 dB -> alpha 4.75
    loud = np.ones(BINS) * 30.0  # frame SNR about 30 dB -> alpha 1
    quiet[50] = loud[50] = np.sqrt(3.0)
    gains = []
    for mag in (quiet, loud):
        spec = mag[None].astype(np.complex64)
        out = stage.process(Frame(None, 0, 0, 0.0, RATE, spec=spec, side={"noise.psd": psd})).spec
        gains.append(float(np.abs(out[0, 50]) / np.abs(spec[0, 50])))
    assert gains[0] == pytest.approx(np.sqrt(1e-4 / 3), rel=1e-3)  # floored: 3 - 4.75 < beta (-40 dB)
    assert gains[1] == pytest.approx(np.sqrt((3 - 1) / 3), rel=1e-3)
    fixed = _suppressor(SpectralSubtraction, floor_db=-40, snr_dependent=False, over_subtraction=2.0)
    out = fixed.process(Frame(None, 0, 0, 0.0, RATE, spec=loud[None].astype(np.complex64),
                              side={"noise.psd": psd})).spec
    assert float(np.abs(out[0, 50]) / np.sqrt(3.0)) == pytest.approx(np.sqrt(1 / 3), rel=1e-3)


def test_psd_of_another_channel_count_is_a_clear_error():
    stage = _suppressor(Wiener, channels=1)
    frame = Frame(None, 0, 0, 0.0, RATE, spec=np.ones((1, BINS), np.complex64),
                  side={"noise.psd": np.ones((4, BINS), np.float32)})
    with pytest.raises(ValueError, match="changes the channel count"):
        stage.process(frame)


@pytest.mark.parametrize("stage", ["wiener", "spectral_subtraction"])
def test_a_suppressor_before_noise_is_refused_naming_both(stage):
    text = CAPTURE + f"chain:\n  - stage: {stage}\n  - stage: noise\n    vad: false\n"
    with pytest.raises(ConfigError) as info:
        build_chain(load_config_text(text, "order.yaml"), 1)
    (line,) = info.value.args[0] if isinstance(info.value.args[0], list) else [str(info.value)]
    assert line.startswith("order.yaml:3:")
    assert f"stage '{stage}' ({stage}) requires 'noise.psd'" in line
    assert "stage 'noise' (noise) provides it but comes later (chain.1)" in line


def test_voxd_check_refuses_wiener_without_noise(voxd, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"capture: {{type: file, path: {SPEECH}}}\nchain:\n  - stage: wiener\n    floor_db: -12\n")
    r = voxd("check", str(cfg))
    assert r.returncode == 78, r.stderr
    assert "stage 'wiener' (wiener) requires 'noise.psd', which no earlier stage provides" in r.stderr


def test_params_are_validated():
    with pytest.raises(ValueError):
        WienerParams(dd_alpha=1.0)
    with pytest.raises(ValueError):
        SpectralSubtractionParams(over_subtraction=0.5)
