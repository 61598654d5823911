"""The ``beamform`` stage: delay-and-sum and MVDR against numpy references and plane-wave physics."""

from __future__ import annotations

import numpy as np
import pytest
from voxd_array.beamform import Beamformer, BeamformParams

from voxd.chain import build_chain
from voxd.config import load_config_text
from voxd.errors import ConfigError
from voxd.frame import AudioFormat, Domain, Frame
from voxd.geometry import preset_positions
from voxd.stage import StageContext

RATE, N_FFT, HOP = 16000, 320, 160
BINS = N_FFT // 2 + 1
C = 343.0


def make_stage(positions: np.ndarray, **params: object) -> Beamformer:
    stage = Beamformer(BeamformParams(**params), "bf")
    fmt = AudioFormat(RATE, len(positions), HOP, Domain.SPECTRAL, N_FFT)
    stage.accept(fmt)
    stage.open(StageContext(rate=RATE, positions=positions))
    return stage


def plane_wave(positions: np.ndarray, az_deg: float, el_deg: float = 0.0) -> np.ndarray:
    """Far-field transfer ``(bins, M)`` of a plane wave from ``az_deg`` (phase re the array centre)."""
    a, e = np.radians(az_deg), np.radians(el_deg)
    u = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    tau = -(positions @ u) / C
    f = np.arange(BINS) * RATE / N_FFT
    return np.exp(-2j * np.pi * f[:, None] * tau[None, :])


def frame(spec: np.ndarray, i: int, **side: object) -> Frame:
    """A spectral frame; ``spec`` is ``(M, bins)``."""
    return Frame(None, i, i * HOP, 0.0, RATE, spec=spec.astype(np.complex64), side=dict(side))


def random_cov(rng: np.random.Generator, m: int, rank: int = 8) -> np.ndarray:
    a = rng.standard_normal((BINS, m, rank)) + 1j * rng.standard_normal((BINS, m, rank))
    return (a @ a.conj().transpose(0, 2, 1) / rank).astype(np.complex64)


def random_spec(rng: np.random.Generator, m: int) -> np.ndarray:
    return rng.standard_normal((m, BINS)) + 1j * rng.standard_normal((m, BINS))


@pytest.mark.parametrize("preset", ["respeaker-4mic-hat", "respeaker-usb-4mic", "respeaker-6mic"])
def test_mvdr_streaming_equals_batch_reference(preset: str) -> None:
    """Fixed steering, frozen covariance: the streamed output is one linear filter per bin (1e-5)."""
    rng = np.random.default_rng(1)
    pos = preset_positions(preset)
    m = len(pos)
    cov = random_cov(rng, m)
    stage = make_stage(pos, method="mvdr", steering="doa", azimuth_deg=70.0, loading=0.1, ref_mic=1)
    specs = [random_spec(rng, m) for _ in range(50)]
    streamed = np.stack([stage.process(frame(s, i, **{"noise.cov": cov}))
                         .spec[0] for i, s in enumerate(specs)])  # type: ignore[index]

    # batch numpy reference, written from the textbook formula
    d = plane_wave(pos, 70.0)
    d = d / d[:, 1:2]
    r = cov.astype(np.complex128)
    tr = np.trace(r, axis1=1, axis2=2).real
    r = r + (0.1 * tr / m)[:, None, None] * np.eye(m)
    rd = np.linalg.solve(r, d[:, :, None])[:, :, 0]
    w = rd / np.einsum("fm,fm->f", d.conj(), rd)[:, None]
    x = np.stack(specs).astype(np.complex64).astype(np.complex128)  # (T, M, bins)
    batch = np.einsum("fm,tmf->tf", w.conj(), x)
    scale = np.abs(batch).max()
    assert np.abs(streamed - batch).max() / scale < 1e-5


def test_delay_and_sum_streaming_equals_batch_and_is_distortionless() -> None:
    rng = np.random.default_rng(2)
    pos = preset_positions("respeaker-4mic-hat")
    stage = make_stage(pos, method="delay_and_sum", azimuth_deg=200.0)
    h = plane_wave(pos, 200.0)  # target from the steered direction
    src = [rng.standard_normal(BINS) + 1j * rng.standard_normal(BINS) for _ in range(20)]
    out = np.stack([stage.process(frame((h * s[:, None]).T, i)).spec[0]  # type: ignore[index]
                    for i, s in enumerate(src)])
    ref_mic = np.stack([h[:, 0] * s for s in src])
    # a plane wave from the look direction comes out as the reference microphone heard it
    assert np.abs(out - ref_mic).max() / np.abs(ref_mic).max() < 1e-5


def test_delay_and_sum_attenuates_off_axis_high_frequencies() -> None:
    pos = preset_positions("respeaker-6mic")
    stage = make_stage(pos, method="delay_and_sum", azimuth_deg=0.0)
    off = plane_wave(pos, 180.0).T  # from behind
    y = stage.process(frame(off, 0)).spec[0]  # type: ignore[index]
    f = np.arange(BINS) * RATE / N_FFT
    band = (f > 3000) & (f < 6000)
    assert np.mean(np.abs(y[band]) ** 2) < 0.3  # > 5 dB below the on-axis response (1.0)
    assert np.mean(np.abs(y[f < 200]) ** 2) > 0.9  # a 9 cm array cannot be directive at 200 Hz


def test_mvdr_cancels_a_point_interferer_and_keeps_the_target() -> None:
    rng = np.random.default_rng(3)
    pos = preset_positions("respeaker-usb-4mic")
    m = len(pos)
    g = plane_wave(pos, 300.0)  # interferer
    cov = (np.einsum("fm,fn->fmn", g, g.conj()) * 100.0 + 0.01 * np.eye(m)).astype(np.complex64)
    stage = make_stage(pos, method="mvdr", steering="doa", azimuth_deg=60.0, loading=1e-3)
    h = plane_wave(pos, 60.0)
    f = np.arange(BINS) * RATE / N_FFT
    band = (f > 1000) & (f < 7000)
    y_t = stage.process(frame(h.T, 0, **{"noise.cov": cov})).spec[0]  # type: ignore[index]
    y_i = stage.process(frame(g.T, 1, **{"noise.cov": cov})).spec[0]  # type: ignore[index]
    assert np.allclose(y_t[band], h[band, 0], atol=1e-3)  # distortionless towards the target
    assert 10 * np.log10(np.mean(np.abs(y_i[band]) ** 2)) < -20  # the interferer is nulled
    _ = rng


def test_rtf_steering_learns_a_non_far_field_transfer_function() -> None:
    """A target with an arbitrary (reverberant, mismatched) transfer function: the RTF estimate lets
    MVDR pass it like the reference microphone heard it, which far-field steering cannot."""
    rng = np.random.default_rng(4)
    pos = preset_positions("respeaker-4mic-hat")
    m = len(pos)
    mismatch = rng.standard_normal((BINS, m)) + 1j * rng.standard_normal((BINS, m))
    h = plane_wave(pos, 30.0) * (1 + 0.5 * mismatch)
    noise_cov = np.tile(np.eye(m, dtype=np.complex64) * 0.01, (BINS, 1, 1))
    stage = make_stage(pos, method="mvdr", steering="rtf", azimuth_deg=30.0, rtf_min_s=0.1)
    far = make_stage(pos, method="mvdr", steering="doa", azimuth_deg=30.0)
    errs: list[float] = []
    far_errs: list[float] = []
    for i in range(300):
        s = rng.standard_normal(BINS) + 1j * rng.standard_normal(BINS)
        n = 0.1 * (rng.standard_normal((BINS, m)) + 1j * rng.standard_normal((BINS, m))) / np.sqrt(2)
        x = (h * s[:, None] + n).T
        side = {"noise.cov": noise_cov, "speech": True}
        y = stage.process(frame(x, i, **side)).spec[0]  # type: ignore[index]
        y_far = far.process(frame(x, i, **side)).spec[0]  # type: ignore[index]
        target = h[:, 0] * s
        errs.append(float(np.mean(np.abs(y - target) ** 2) / np.mean(np.abs(target) ** 2)))
        far_errs.append(float(np.mean(np.abs(y_far - target) ** 2) / np.mean(np.abs(target) ** 2)))
    late = 10 * np.log10(np.mean(errs[-50:]))
    assert late < -15  # target kept, noise reduced
    assert late < 10 * np.log10(np.mean(far_errs[-50:])) - 6  # far-field steering distorts this target


def test_reset_restores_the_initial_output_and_bad_input_stays_finite() -> None:
    rng = np.random.default_rng(5)
    pos = preset_positions("respeaker-6mic")
    cov = random_cov(rng, len(pos))
    stage = make_stage(pos, method="mvdr", steering="rtf", azimuth_deg=10.0, rtf_min_s=0.05)
    specs = [random_spec(rng, len(pos)) for _ in range(40)]

    def run() -> np.ndarray:
        return np.stack([stage.process(frame(s, i, **{"noise.cov": cov, "speech": True}))
                         .spec[0] for i, s in enumerate(specs)])  # type: ignore[index]

    first = run()
    stage.reset()
    assert np.array_equal(run(), first)

    bad = specs[0].copy()
    bad[0, 3] = np.nan
    bad[2, 7] = np.inf
    huge = np.full_like(cov, 1e30)
    for i, (s, c) in enumerate([(bad, cov), (specs[1], huge), (specs[2], np.zeros_like(cov)),
                                (np.zeros_like(specs[3]), cov)]):
        out = stage.process(frame(s, 100 + i, **{"noise.cov": c, "speech": True}))
        assert np.isfinite(out.spec).all()  # type: ignore[union-attr]
        assert np.isfinite(out.side["noise.psd"]).all()
    # and it recovers: normal frames afterwards are finite and non-zero
    out = stage.process(frame(specs[4], 200, **{"noise.cov": cov, "speech": True}))
    assert np.isfinite(out.spec).all() and np.abs(out.spec).max() > 0  # type: ignore[union-attr]


def test_without_a_direction_the_reference_mic_passes() -> None:
    rng = np.random.default_rng(6)
    pos = preset_positions("respeaker-4mic-hat")
    stage = make_stage(pos, method="mvdr", steering="rtf", ref_mic=2)
    s = random_spec(rng, len(pos))
    out = stage.process(frame(s, 0, **{"noise.cov": random_cov(rng, 4), "speech": False}))
    assert np.allclose(out.spec[0], s[2].astype(np.complex64))  # type: ignore[index]


CHAIN = """
capture: {type: file, path: in.wav}
array: {preset: respeaker-4mic-hat}
chain:
"""


def test_chain_with_post_filter_builds_and_requirements_are_checked() -> None:
    loaded = load_config_text(CHAIN + "  - {stage: vad}\n  - {stage: noise}\n  - {stage: beamform}\n"
                              "  - {stage: wiener}\n", "bf.yaml")
    chain = build_chain(loaded, 4)
    assert chain.out_format.channels == 1
    with pytest.raises(ConfigError) as err:
        build_chain(load_config_text(CHAIN + "  - {stage: beamform, method: delay_and_sum}\n", "bf.yaml"), 4)
    assert "doa_deg" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_chain(load_config_text(CHAIN + "  - {stage: vad}\n  - {stage: beamform}\n", "bf.yaml"), 4)
    assert "noise.cov" in str(err.value)
    with pytest.raises(ConfigError) as err:  # the array has 4 microphones, the chain offers 2
        build_chain(load_config_text(CHAIN + "  - {stage: select, channels: [0, 1]}\n"
                                     "  - {stage: beamform, method: delay_and_sum, azimuth_deg: 0}\n",
                                     "bf.yaml"), 4)
    assert "4 microphone positions" in str(err.value)


@pytest.mark.parametrize(("mask", "key"), [("denoise", "denoise.gain"), ("model", "mask.gain")])
def test_mask_mode_learns_the_target_under_a_continuous_interferer(mask: str, key: str) -> None:
    """``mask: denoise`` (or ``model``): a louder point interferer is present in every frame (a VAD would
    call every frame speech); the per-bin gain marks where the target is. The stage learns the target's
    arbitrary transfer function from the masked bins and the interferer from the rest: the target passes
    as the reference mic heard it and the interferer drops by far more than the reference mic's level."""
    rng = np.random.default_rng(8)
    pos = preset_positions("respeaker-4mic-hat")
    m = len(pos)
    def mismatch(scale: float) -> np.ndarray:
        return 1 + scale * (rng.standard_normal((BINS, m)) + 1j * rng.standard_normal((BINS, m)))

    h = plane_wave(pos, 30.0) * mismatch(0.5)  # target: an arbitrary (reverberant-like) transfer
    g = plane_wave(pos, 200.0) * mismatch(0.3)  # interferer
    stage = make_stage(pos, method="mvdr", steering="rtf", mask=mask, loading=0.01)
    t_err, i_gain = [], []
    for i in range(600):
        on = rng.random(BINS) < 0.5  # the target occupies half of the bins of each frame
        s = (rng.standard_normal(BINS) + 1j * rng.standard_normal(BINS)) * on * 3.0
        q = rng.standard_normal(BINS) + 1j * rng.standard_normal(BINS)
        n = 0.01 * (rng.standard_normal((BINS, m)) + 1j * rng.standard_normal((BINS, m)))
        x = h * s[:, None] + g * q[:, None] + n
        gain = np.where(on, 0.9, 0.05).astype(np.float32)[None]
        w_out = stage.process(frame(x.T, i, **{key: gain})).spec[0]  # type: ignore[index]
        w = stage._w  # the weights of this frame: apply them to each component alone
        if i >= 500:
            y_t = np.einsum("fm,fm->f", w.conj(), h * s[:, None])
            y_i = np.einsum("fm,fm->f", w.conj(), g * q[:, None])
            t_err.append(np.sum(np.abs(y_t - h[:, 0] * s) ** 2) / np.sum(np.abs(h[:, 0] * s) ** 2))
            i_gain.append(np.sum(np.abs(y_i) ** 2) / np.sum(np.abs(g[:, 0] * q) ** 2))
            assert np.isfinite(w_out).all()
    assert 10 * np.log10(np.mean(t_err)) < -15  # the target as the reference mic heard it
    assert 10 * np.log10(np.mean(i_gain)) < -15  # the interferer suppressed


def run_masked(stage: Beamformer, h: np.ndarray, band: np.ndarray, seed: int, frames: int = 150) -> None:
    """Feed ``stage`` (mask mode) a target with transfer ``h`` ``(bins, M)`` that only ever occupies the
    bins in ``band``, in white sensor noise; the mask marks the target's bins."""
    rng = np.random.default_rng(seed)
    m = h.shape[1]
    for i in range(frames):
        on = band & (rng.random(BINS) < 0.7)
        s = (rng.standard_normal(BINS) + 1j * rng.standard_normal(BINS)) * on * 3.0
        n = 0.1 * (rng.standard_normal((BINS, m)) + 1j * rng.standard_normal((BINS, m)))
        gain = np.where(on, 1.0, 0.02).astype(np.float32)[None]
        stage.process(frame((h * s[:, None] + n).T, i, **{"mask.gain": gain}))


def test_mwf_is_the_mvdr_times_a_wiener_gain_per_bin() -> None:
    """Same statistics, same eigenvector: the MWF's weights are the MVDR's times a real gain, ~1 where
    the talker is far above the noise and the floor in bins it never occupies."""
    pos = preset_positions("respeaker-4mic-hat")
    h = plane_wave(pos, 30.0) * (1 + 0.3 * np.random.default_rng(4).standard_normal((BINS, len(pos))))
    band = np.arange(BINS) < 80
    stages = {mth: make_stage(pos, method=mth, mask="model", rtf_min_s=0.0) for mth in ("mvdr", "mwf")}
    for st in stages.values():
        run_masked(st, h, band, seed=5)
    ratio = stages["mwf"]._w / stages["mvdr"]._w
    assert np.abs(ratio.imag).max() < 1e-9 and np.ptp(ratio.real, axis=1).max() < 1e-9, "a real gain per bin"
    g = ratio[:, 0].real
    floor = 10 ** (-12 / 20)
    assert (g >= floor - 1e-12).all() and (g <= 1 + 1e-12).all()
    assert g[10:80].min() > 0.9 and np.allclose(g[90:], floor)


def test_gev_ban_is_distortionless_for_a_plane_wave_in_white_noise() -> None:
    """With spatially white noise the max-SNR direction is the target's own; BAN scales it to unit
    response for a target of equal magnitude at every mic, so GEV-BAN and MVDR give the same weights."""
    pos = preset_positions("respeaker-usb-4mic")
    h = plane_wave(pos, 120.0)
    band = np.ones(BINS, bool)
    stages = {mth: make_stage(pos, method=mth, mask="model", rtf_min_s=0.0, loading=0.0)
              for mth in ("mvdr", "gev_ban")}
    for st in stages.values():
        run_masked(st, h, band, seed=6)
    w_gev, w_mvdr = stages["gev_ban"]._w, stages["mvdr"]._w
    resp = np.einsum("fm,fm->f", w_gev.conj(), h / h[:, :1])
    assert np.abs(resp[5:] - 1).max() < 0.05, "unit response to the target at the reference mic"
    assert np.abs(w_gev - w_mvdr)[5:].max() < 0.05


def test_mwf_and_gev_ban_need_rtf_steering() -> None:
    for method in ("mwf", "gev_ban"):
        with pytest.raises(ConfigError, match=f"method {method} needs steering rtf"):
            load_config_text(CHAIN + f"  - {{stage: beamform, method: {method}, steering: doa}}\n", "bf.yaml")


def test_mask_mode_needs_a_gain_and_survives_a_bad_one() -> None:
    with pytest.raises(ConfigError) as err:
        build_chain(load_config_text(CHAIN + "  - {stage: vad}\n  - {stage: beamform, mask: denoise}\n",
                                     "bf.yaml"), 4)
    assert "denoise.gain" in str(err.value)
    chain = build_chain(load_config_text(CHAIN + "  - {stage: denoise, channels: [0], apply: false}\n"
                                         "  - {stage: beamform, mask: denoise}\n", "bf.yaml"), 4)
    assert chain.out_format.channels == 1
    rng = np.random.default_rng(9)
    pos = preset_positions("respeaker-6mic")
    stage = make_stage(pos, method="mvdr", steering="rtf", mask="denoise", rtf_min_s=0.0)
    for i, gain in enumerate([np.full((1, BINS), np.nan, np.float32), None, np.full((2, 7), 0.5, np.float32),
                              np.full((1, BINS), 0.9, np.float32), np.full((2, BINS), np.inf, np.float32)]):
        side = {} if gain is None else {"denoise.gain": gain}
        out = stage.process(frame(random_spec(rng, len(pos)), i, **side))
        assert np.isfinite(out.spec).all() and np.isfinite(out.side["noise.psd"]).all()  # type: ignore[union-attr]
