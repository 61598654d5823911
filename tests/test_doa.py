"""The ``doa`` stage: direction of arrival on synthetic plane waves and on the shared array recordings,
its side values and life cycle, and the channel-order check (what it detects, and the permutations no
recording can reveal).

Synthetic signals: white noise delayed per microphone by the exact far-field delays of the geometry
(fractional delays as phase shifts of one long FFT), switched on and off in bursts like speech, plus
independent noise on every channel. The VAD is simulated by the ``speech`` side value on each frame
(the bursts, confirmed late as the real ``vad`` stage does); the real VAD runs in the recordings test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError
from voxd_array.doa import (
    CONFIDENCE,
    DOA,
    EVENT,
    Doa,
    DoaParams,
    SrpGrid,
    order_classes,
    symmetries,
)

from voxd.chain import build_chain
from voxd.config import load_config_text
from voxd.errors import ConfigError
from voxd.frame import AudioFormat, Domain, Frame
from voxd.geometry import linear_positions, preset_positions
from voxd.stage import StageContext
from voxd.stft import StftAnalysis

RATE, HOP, N_FFT = 16000, 160, 320
C = 343.0
PRESETS = ("respeaker-4mic-hat", "respeaker-usb-4mic", "respeaker-6mic")
ARRAY = Path(__file__).resolve().parents[2] / "shared" / "bench" / "dev" / "array"
VAD_LATE = 15  # frames: the simulated VAD confirms each burst 0.15 s after it starts


# ---------------------------------------------------------------------------------------- signals
def wrap(a: float) -> float:
    """Absolute angle difference to 0 (deg), 0..180."""
    return abs((a + 180.0) % 360.0 - 180.0)


def plane_wave(positions: np.ndarray, az_deg: float, el_deg: float = 0.0, seconds: float = 3.0,
               seed: int = 0) -> np.ndarray:
    """White noise arriving from (``az_deg``, ``el_deg``) as a far-field plane wave: float64
    ``(M, seconds * RATE)``, unit power per channel. Fractional delays are applied as phase shifts of one
    FFT over a zero-padded signal (no wrap-around)."""
    n = int(seconds * RATE)
    s = np.random.default_rng(seed).standard_normal(n)
    a, e = np.deg2rad(az_deg), np.deg2rad(el_deg)
    u = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    tau = -(positions @ u) / C  # arrival time at each mic relative to the centre (s)
    nfft = 2 * n
    f = np.fft.rfftfreq(nfft, 1.0 / RATE)
    spec = np.fft.rfft(s, nfft)[None, :] * np.exp(-2j * np.pi * f[None, :] * tau[:, None])
    return np.fft.irfft(spec, nfft)[:, :n]


def bursts(n_frames: int, on: int = 50, off: int = 30) -> np.ndarray:
    """Per-frame activity of a speech-like source: ``on`` frames active, ``off`` frames silent, repeated."""
    return (np.arange(n_frames) % (on + off)) < on


def late(active: np.ndarray, frames: int = VAD_LATE) -> np.ndarray:
    """What a causal VAD reports for ``active``: each burst confirmed ``frames`` late (and held as long)."""
    out = np.zeros_like(active)
    out[frames:] = active[:-frames]
    return out


def gate(x: np.ndarray, active: np.ndarray) -> np.ndarray:
    """``x`` ``(M, n)`` silenced outside the active frames (10 ms each)."""
    return x * np.repeat(active, HOP)[None, : x.shape[1]]


def noise(m: int, n: int, seed: int = 9) -> np.ndarray:
    """Independent white noise on every channel, unit power."""
    return np.random.default_rng(seed).standard_normal((m, n))


# ---------------------------------------------------------------------------------------- driving
class Events:
    """A ``StageContext.emit`` that records what the stage emits."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def __call__(self, type: str, pts: int | None = None, **fields) -> None:
        self.items.append({"type": type, "pts": pts, **fields})

    def of(self, type: str) -> list[dict]:
        return [e for e in self.items if e["type"] == type]


def open_stage(positions: np.ndarray, events: Events | None = None, **params) -> Doa:
    """A ``doa`` stage negotiated and opened for ``positions`` ``(M, 3)`` as the chain would do it."""
    stage = Doa(DoaParams(**params), "doa")
    fmt = AudioFormat(RATE, positions.shape[0], HOP, Domain.SPECTRAL, N_FFT)
    stage.accept(fmt)
    stage.open(StageContext(rate=RATE, positions=positions, emit=events or Events()))
    return stage


def spectra(x: np.ndarray) -> list[np.ndarray]:
    """The chain's STFT of ``x`` ``(M, n)``: one complex64 ``(M, 161)`` per hop."""
    return StftAnalysis(x.shape[0], N_FFT, HOP).push(np.ascontiguousarray(x, dtype=np.float32))


def run(stage: Doa, x: np.ndarray, speech: np.ndarray | None = None, start: int = 0) -> list[Frame]:
    """Feed ``x`` hop by hop; ``speech`` per frame (None: no ``speech`` side value). The output frames."""
    out = []
    for i, spec in enumerate(spectra(x)):
        side = {} if speech is None else {"speech": bool(speech[i])}
        out.append(stage.process(Frame(None, start + i, (start + i) * HOP, 0.0, RATE, spec=spec, side=side)))
    return out


def doa(frames: list[Frame]) -> np.ndarray:
    return np.array([f.side[DOA] for f in frames])


# ---------------------------------------------------------------------------------------- direction
@pytest.mark.parametrize("geometry", PRESETS)
@pytest.mark.parametrize(("az", "el"), [(0.0, 0.0), (47.0, 20.0), (133.5, 0.0), (222.0, 35.0), (301.0, 10.0)])
def test_a_plane_wave_is_located_within_2_degrees(geometry, az, el):
    pos = preset_positions(geometry)
    m, n = pos.shape[0], 3 * RATE
    active = bursts(n // HOP)
    x = gate(plane_wave(pos, az, el), active) + 0.1 * noise(m, n)  # 20 dB SNR in the bursts
    frames = run(open_stage(pos), x, late(active))
    est = doa(frames)
    err = wrap(est[-1] - az)
    print(f"{geometry} az {az} el {el}: estimate {est[-1]:.2f} (error {err:.2f} deg), confidence "
          f"{frames[-1].side[CONFIDENCE]:.2f}")
    assert err <= 2.0
    assert 0.3 <= frames[-1].side[CONFIDENCE] <= 1.0
    assert all(0.0 <= v < 360.0 for v in est)


def test_two_mics_is_gcc_phat_and_a_linear_array_reports_one_of_its_mirror_pair():
    pos = linear_positions(4, 0.04)
    x = plane_wave(pos, 60.0, seconds=2.0) + 0.1 * noise(4, 2 * RATE)
    est = doa(run(open_stage(pos, vad=False), x))[-1]
    assert min(wrap(est - 60.0), wrap(est - 300.0)) <= 2.0  # 60 and -60 deg give the same delays
    pair = linear_positions(2, 0.1)
    est2 = doa(run(open_stage(pair, vad=False), plane_wave(pair, 120.0, seconds=2.0)))[-1]
    assert min(wrap(est2 - 120.0), wrap(est2 - 240.0)) <= 3.0


def test_a_steady_interferer_outside_speech_is_subtracted():
    """Talker bursts at 70 deg, a steady noise source at 200 deg as loud as the talker (0 dB): the non-
    speech frames show the interferer alone and its direction cancels from the speech frames' map."""
    pos = preset_positions("respeaker-4mic-hat")
    n = 6 * RATE
    active = bursts(n // HOP)
    x = gate(plane_wave(pos, 70.0, seconds=6.0, seed=1), active) + plane_wave(pos, 200.0, seconds=6.0, seed=2)
    x += 0.1 * noise(4, n)
    est = doa(run(open_stage(pos), x, late(active)))
    alone = doa(run(open_stage(pos, subtract_noise=False), x, late(active)))
    print(f"estimate {est[-1]:.1f} deg with the subtraction, {alone[-1]:.1f} deg without")
    assert wrap(est[-1] - 70.0) <= 3.0
    assert wrap(alone[-1] - 70.0) > 20.0  # speech frames alone: the interferer dominates the map


def test_fixed_deg_is_reported_without_estimation_and_needs_no_vad():
    pos = preset_positions("respeaker-6mic")
    assert Doa.required_keys(DoaParams(fixed_deg=400.0)) == ()
    assert Doa.required_keys(DoaParams()) == ("speech",)
    assert Doa.required_keys(DoaParams(vad=False)) == ()
    frames = run(open_stage(pos, fixed_deg=400.0), plane_wave(pos, 100.0, seconds=2.0))  # no 'speech'
    assert {f.side[DOA] for f in frames} == {40.0}
    assert {f.side[CONFIDENCE] for f in frames} == {0.0}


def test_non_speech_frames_hold_the_last_value():
    pos = preset_positions("respeaker-4mic-hat")
    first = plane_wave(pos, 40.0, seconds=2.0, seed=3)
    other = plane_wave(pos, 200.0, seconds=2.0, seed=4)  # another source, outside speech
    stage = open_stage(pos)
    a = run(stage, first, np.ones(200, bool))
    b = run(stage, other, np.zeros(200, bool), start=200)
    assert wrap(a[-1].side[DOA] - 40.0) <= 2.0
    assert {f.side[DOA] for f in b} == {a[-1].side[DOA]}
    assert {f.side[CONFIDENCE] for f in b} == {a[-1].side[CONFIDENCE]}


def test_reset_restores_the_initial_behaviour():
    pos = preset_positions("respeaker-usb-4mic")
    x = plane_wave(pos, 250.0, seconds=2.0) + 0.1 * noise(4, 2 * RATE)
    speech = late(np.ones(200, bool))
    fresh = run(open_stage(pos, initial_deg=-30.0), x, speech)
    stage = open_stage(pos, initial_deg=-30.0)
    run(stage, plane_wave(pos, 20.0, seconds=2.0, seed=5), np.ones(200, bool))
    stage.reset()
    again = run(stage, x, speech)
    assert again[0].side[DOA] == 330.0 and again[0].side[CONFIDENCE] == 0.0
    np.testing.assert_array_equal(doa(again), doa(fresh))
    assert wrap(again[-1].side[DOA] - 250.0) <= 2.0


def test_the_spectrum_passes_unchanged_and_the_input_frame_is_not_touched():
    pos = preset_positions("respeaker-6mic")
    stage = open_stage(pos)
    for i, spec in enumerate(spectra(plane_wave(pos, 10.0, seconds=1.0))):
        copy = spec.copy()
        side = {"speech": True, "speech_prob": 0.9}
        frame = Frame(None, i, i * HOP, 0.0, RATE, spec=spec, side=side)
        out = stage.process(frame)
        assert out.spec is spec and out.spec.dtype == np.complex64
        np.testing.assert_array_equal(spec, copy)
        assert frame.side == {"speech": True, "speech_prob": 0.9} and out.side is not frame.side
        assert set(out.side) == {"speech", "speech_prob", DOA, CONFIDENCE}


def test_params_are_validated():
    with pytest.raises(ValidationError, match="fmax_hz 300 must exceed fmin_hz 300"):
        DoaParams(fmax_hz=300.0)
    with pytest.raises(ValidationError):
        DoaParams(grid_deg=0.0)
    with pytest.raises(ValidationError):
        DoaParams(speech=True)  # unknown key


# ---------------------------------------------------------------------------------------- channel order
def moving_talker(pos: np.ndarray, seconds_each: float = 2.0, azimuths=(20.0, 140.0, 250.0)) -> np.ndarray:
    """A talker speaking from each azimuth in turn (bursts), plus independent noise (20 dB SNR)."""
    parts = [plane_wave(pos, az, 10.0, seconds_each, seed=k) for k, az in enumerate(azimuths)]
    x = np.concatenate(parts, axis=1)
    return gate(x, bursts(x.shape[1] // HOP)) + 0.1 * noise(pos.shape[0], x.shape[1])


def restores(pos: np.ndarray, fed: list[int], fix: list[int]) -> bool:
    """``fix`` applied to channels fed in order ``fed`` gives the true order up to a symmetry."""
    return bool(symmetries(pos, np.array([[fed[j] for j in fix]]))[0])


@pytest.mark.parametrize(("geometry", "fed"), [("respeaker-4mic-hat", [1, 0, 2, 3]),
                                               ("respeaker-usb-4mic", [0, 2, 1, 3]),
                                               ("respeaker-6mic", [0, 1, 3, 2, 4, 5]),
                                               ("respeaker-6mic", [0, 2, 4, 1, 3, 5])])
def test_a_permuted_order_raises_channel_map_suspect_once_with_a_fix(geometry, fed, caplog):
    pos = preset_positions(geometry)
    x = moving_talker(pos)
    events = Events()
    stage = open_stage(pos, events)
    speech = late(bursts(x.shape[1] // HOP))
    with caplog.at_level(logging.WARNING):
        run(stage, x[fed], speech)
        run(stage, x[fed], speech, start=x.shape[1] // HOP)  # more speech: still one event
    (ev,) = events.of(EVENT)
    print(f"{geometry} fed {fed}: {ev}")
    assert restores(pos, fed, ev["permutation"])
    assert ev["score"] > ev["score_configured"] * 1.05 and ev["stage"] == "doa"
    assert sorted(ev["permutation"]) == list(range(pos.shape[0]))
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"capture.channel_map: {ev['permutation']}" in warning.getMessage()
    stage.reset()  # re-arms the check
    run(stage, x[fed], speech)
    assert len(events.of(EVENT)) == 2


@pytest.mark.parametrize("geometry", PRESETS)
def test_the_configured_order_never_raises(geometry):
    """Talkers from many directions, including ones on a mirror line of the array where some swapped
    pairs fit exactly as well, and then noise without any source: never suspect."""
    pos = preset_positions(geometry)
    events = Events()
    stage = open_stage(pos, events)
    x = moving_talker(pos, 1.5, (0.0, 45.0, 90.0, 135.0, 200.0, 300.0))
    run(stage, x, late(bursts(x.shape[1] // HOP)))
    run(stage, noise(pos.shape[0], 10 * RATE, seed=11), np.ones(1000, bool), start=x.shape[1] // HOP)
    assert events.of(EVENT) == []
    check = stage.last_check
    assert check is not None and check["score"] <= check["score_configured"] * 1.01


@pytest.mark.parametrize("geometry", PRESETS)
def test_a_cyclic_rotation_or_reversal_of_the_order_is_an_exact_tie(geometry):
    """On a uniform circular array whose channels go round the circle in order, rotating the order is a
    rigid rotation of the array: the rotated order fits any far-field recording exactly as well as the
    true one (at the source direction turned by 360/M deg), so it can never be detected. Likewise the
    reversal (a mirror image)."""
    pos = preset_positions(geometry)
    m = pos.shape[0]
    rotated = [(i + 1) % m for i in range(m)]
    reversed_ = list(range(m))[::-1]
    assert symmetries(pos, np.array([rotated, reversed_])).all()
    # the fits computed explicitly for both orders, on the same data, are equal
    x = moving_talker(pos, 1.0)[rotated]
    g = SrpGrid(pos, RATE, N_FFT, 300.0, 8000.0, C, 5.0, [0.0, 30.0, 60.0])
    y = np.stack([s[:, g.k0 : g.k1] / np.maximum(np.abs(s[:, g.k0 : g.k1]), 1e-20) for s in spectra(x)])
    cross = np.mean(y[:, g.ii] * y[:, g.jj].conj(), axis=0).astype(np.complex64)
    gcc = g.gcc(cross)
    fits = {}
    for name, order in {"configured": list(range(m)), "true": np.argsort(rotated).tolist(),
                        "reversed": reversed_}.items():
        lo, w0, w1 = g.lookup(np.asarray(order))
        fits[name] = float(g.srp(gcc, lo, w0, w1).max() / (g.pairs * g.bins))
    print(f"{geometry}: fits {fits}")
    assert fits["configured"] == pytest.approx(fits["true"], rel=1e-4)
    assert fits["reversed"] == pytest.approx(fits["true"], rel=1e-4)
    # so the stage stays silent on a rotated order
    events = Events()
    run(open_stage(pos, events), x, late(bursts(x.shape[1] // HOP)))
    assert events.of(EVENT) == []


def test_the_order_classes_follow_the_symmetries_of_each_geometry():
    for geometry, n_classes, size in (("respeaker-4mic-hat", 3, 8), ("respeaker-usb-4mic", 3, 8),
                                      ("respeaker-6mic", 60, 12)):
        classes = order_classes(preset_positions(geometry))
        assert len(classes.orders) == n_classes and set(classes.sizes.tolist()) == {size}
        assert classes.orders[0].tolist() == list(range(classes.orders.shape[1]))
    # a 4-mic square: swapping two opposite mics is a mirror image, two neighbours are not
    hat = preset_positions("respeaker-4mic-hat")  # mics at 180, 90, 0, 270 deg by channel
    assert symmetries(hat, np.array([[2, 1, 0, 3]]))[0]
    assert not symmetries(hat, np.array([[1, 0, 2, 3]]))[0]
    # a linear array: only the reversal; a rotated order is detectable there
    line = order_classes(linear_positions(4, 0.04))
    assert len(line.orders) == 12 and set(line.sizes.tolist()) == {2}
    # nothing to check with two mics or an equilateral triangle
    tri = np.array([[np.cos(a), np.sin(a), 0.0] for a in np.deg2rad([90, 210, 330])]) * 0.03
    assert len(order_classes(tri).orders) == 1 and len(order_classes(linear_positions(2, 0.1)).orders) == 1
    assert open_stage(tri).classes is None


def test_a_rotated_order_on_a_linear_array_is_detected():
    pos = linear_positions(4, 0.05)
    fed = [1, 2, 3, 0]
    events = Events()
    x = moving_talker(pos, 2.0, (40.0, 100.0, 160.0))
    run(open_stage(pos, events), x[fed], late(bursts(x.shape[1] // HOP)))
    (ev,) = events.of(EVENT)
    assert restores(pos, fed, ev["permutation"])


# ---------------------------------------------------------------------------------------- in a chain
CAPTURE = "capture: {type: file, path: unused.wav}\n"


def test_the_chain_requires_a_vad_unless_fixed_or_told_otherwise():
    text = CAPTURE + "array: {preset: respeaker-4mic-hat}\nchain:\n  - stage: doa\n"
    with pytest.raises(ConfigError, match="stage 'doa' \\(doa\\) requires 'speech'"):
        build_chain(load_config_text(text, "test.yaml"), 4)
    for extra in ("    fixed_deg: 90\n", "    vad: false\n"):
        build_chain(load_config_text(text + extra, "test.yaml"), 4)
    chain = build_chain(load_config_text(CAPTURE + "array: {preset: respeaker-6mic}\nchain:\n"
                                         "  - {stage: vad}\n  - {stage: doa}\n", "test.yaml"), 6)
    assert [n.kind for n in chain.nodes] == ["vad", "stft", "doa", "istft"]
    assert Doa.needs_geometry


def _items() -> list[dict]:
    meta = ARRAY / "meta.jsonl"
    lines = meta.read_text().splitlines() if meta.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.skipif(not (ARRAY / "meta.jsonl").exists(), reason="shared array benchmark not present")
def test_the_shared_array_recordings_median_error_is_within_10_degrees():
    """Chain ``vad -> doa`` on the 16 simulated-room recordings (reverberation, interferers at SIR -5..10
    dB): the median over items of the error at the end of the file is at most 10 deg, and the true
    channel order never raises ``channel_map_suspect``."""
    errors, suspects = [], 0
    for item in _items():
        x, rate = sf.read(ARRAY / item["noisy"], dtype="float32", always_2d=True)
        pos = item["mic_positions"]
        rows = "\n".join(f"    - {p}" for p in pos)
        text = CAPTURE + f"array:\n  positions:\n{rows}\nchain:\n  - {{stage: vad}}\n  - {{stage: doa}}\n"
        chain = build_chain(load_config_text(text, "test.yaml"), x.shape[1])
        events = Events()
        chain.open(rate, np.asarray(pos, dtype=np.float64), emit=events)
        est = 0.0
        for i in range(x.shape[0] // HOP):
            block = np.ascontiguousarray(x[i * HOP : (i + 1) * HOP].T)
            est = chain.process(Frame(block, i, i * HOP, 0.0, rate)).side[DOA]
        errors.append(wrap(est - item["target_azimuth_deg"]))
        suspects += len(events.of(EVENT))
    print("errors (deg):", np.round(errors, 1).tolist(), "median", np.median(errors))
    assert np.median(errors) <= 10.0
    assert suspects == 0
