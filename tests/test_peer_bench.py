"""The peer benchmark's deterministic parts (bench/testset.py, bench/peers.py), without apt or network.

The test set builder runs on a tiny synthetic build (a fake synthesiser, synthetic noises, free-field
rooms); the pyroomacoustics room is checked only where the ``bench`` extra is installed. The scorer's
lag alignment and its RTF / latency bookkeeping run on synthetic signals.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peers
import testset

from voxd.geometry import preset_positions

RATE = testset.RATE


class FakeSpeech:
    """A stand-in synthesiser: a harmonic tone (f0 by voice) with a 4 Hz syllable envelope, 60 ms per
    character of text, so that items have speech-like on/off structure and a known length."""

    voices = testset.VOICES[:3]

    def synth(self, voice: testset.Voice, text: str) -> np.ndarray:
        n = int(0.06 * len(text) * RATE)
        t = np.arange(n) / RATE
        f0 = 100.0 + zlib.crc32(voice.id.encode()) % 120
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
        env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None)
        return (0.1 * tone * env).astype(np.float32)

    def versions(self) -> dict[str, str]:
        return {"fake-tts": "1"}


TINY = testset.SetConfig(n_items=2, kinds=("fan", "babble"), snrs_db=(0.0, 10.0), duration_s=(2.0, 2.5),
                         rt60_s=(0.2, 0.2), distance_m=(0.8, 1.2),
                         room_m=((3.0, 3.5), (3.0, 3.5), (2.5, 2.6)), babble_talkers=2, id_prefix="t")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("peerset") / "set"
    manifest = testset.build(out, TINY, FakeSpeech(), None, testset.free_field_rirs, progress=False)
    return out, manifest


def test_tiny_set_meta_files_and_geometry(tiny_set: tuple[Path, dict]) -> None:
    out, manifest = tiny_set
    items = [json.loads(line) for line in (out / "meta.jsonl").read_text().splitlines()]
    assert [it["id"] for it in items] == ["t-001", "t-002"]
    assert [it["noise_kind"] for it in items] == ["fan", "babble"]
    hat = preset_positions("respeaker-4mic-hat")
    for it in items:
        for key in ("text", "noisy", "clean", "snr_db", "speech_segments", "target_azimuth_deg", "rt60_s",
                    "sources", "speaker", "duration_s"):
            assert key in it, key
        assert it["text"].strip() and it["geometry"] == "respeaker-4mic-hat"
        # the point noise is part of all the noise: its SIR is at least the SNR
        assert it["interferer_kind"] == it["noise_kind"] and it["sir_db"] >= it["snr_db"]
        assert np.allclose(it["mic_positions"], hat) and it["mic_angles_deg"] == [180.0, 90.0, 0.0, 270.0]
        noisy, rate = sf.read(out / it["noisy"], always_2d=True)
        clean, rate_c = sf.read(out / it["clean"])
        assert rate == rate_c == RATE and noisy.shape == (clean.size, 4)
        assert TINY.duration_s[0] <= noisy.shape[0] / RATE <= TINY.duration_s[1]
        # the talker's place agrees with its azimuth and distance (array frame = room frame, no yaw)
        rel = np.subtract(it["room"]["target_pos_m"], it["room"]["array_center_m"])
        az = np.degrees(np.arctan2(rel[1], rel[0])) % 360
        assert math.isclose(az, it["target_azimuth_deg"], abs_tol=0.5)
        assert math.isclose(np.linalg.norm(rel), it["target_distance_m"], abs_tol=0.01)
        assert 0.8 <= it["target_distance_m"] <= 1.2
        # free field: the reference is the talker's whole image at mic 0, so noisy - clean is the noise and
        # the SNR over the active speech is the one asked for (16-bit files: within a few hundredths of dB)
        mask = testset.active_mask(clean)
        snr = 10 * np.log10(np.mean(clean[mask] ** 2) / np.mean((noisy[:, 0] - clean) ** 2))
        assert abs(snr - it["snr_db"]) < 0.1
    assert set(manifest["files_sha256"]) == {"meta.jsonl", *(it["noisy"] for it in items),
                                             *(it["clean"] for it in items)}
    assert manifest["set_sha256"] == testset.set_hash(manifest["files_sha256"])


def test_tiny_set_is_reproducible(tiny_set: tuple[Path, dict], tmp_path: Path) -> None:
    again = testset.build(tmp_path / "set", TINY, FakeSpeech(), None, testset.free_field_rirs, progress=False)
    assert again["set_sha256"] == tiny_set[1]["set_sha256"]


def test_plan_balances_kinds_and_snrs() -> None:
    plans = testset.plan(testset.SetConfig(), testset.VOICES)
    assert len(plans) == testset.N_ITEMS
    for snr in testset.SNRS_DB:
        assert sum(p.snr_db == snr for p in plans) == testset.N_ITEMS // len(testset.SNRS_DB)
    for kind in testset.KINDS:
        snrs = [p.snr_db for p in plans if p.kind == kind]
        assert len(snrs) == len(set(snrs)) == testset.N_ITEMS // len(testset.KINDS)
    texts = [p.texts[0] for p in plans]
    assert len(set(texts)) == len(texts)  # no sentence twice as an item's first request


def test_pyroomacoustics_room(monkeypatch: pytest.MonkeyPatch) -> None:
    # pyroomacoustics imports sounddevice when it can (pocketsphinx installs it), and sounddevice
    # initialises PortAudio at import: ALSA's configuration is then read once for the whole process,
    # without the virtual microphone's environment, and tests/test_virtual_mic.py finds no device.
    # Nothing here plays audio: hide sounddevice from this import.
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    cfg = testset.SetConfig(rt60_s=(0.3, 0.3), room_m=((3.5, 4.0), (3.0, 3.5), (2.5, 2.6)))
    room, _ = testset.place(cfg, np.random.default_rng(1), 1, preset_positions("respeaker-4mic-hat"), 0.3)
    r = testset.pra_rirs(room)
    assert len(r.rir) == 2 and r.rir[0].shape[0] == 4
    assert 0.2 < r.rt60_measured < 0.4  # the design is corrected against the measured RT60
    # the direct path where the reference expects it (a floor reflection may be the larger tap: the
    # direct one's energy is split over two taps by its fractional delay)
    n_d = float(np.linalg.norm(room.mics[0] - room.sources[0])) / r.c * RATE + r.offset
    near = np.abs(r.rir[0][0][round(n_d) - 10 : round(n_d) + 11])
    assert abs(int(np.argmax(near)) - 10 + round(n_d) - n_d) <= 1


def test_lag_estimate_and_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(8000)
    for lag in (37, -12, 0):
        y = np.roll(ref, lag) * 0.5
        assert peers.estimate_lag(ref, y, 1600) == lag
        back = peers.shift(y, lag)
        inner = slice(100, -100)
        assert np.allclose(back[inner], 0.5 * ref[inner])
    assert peers.system_lag([3, 3, 4, 3, -700]) == 3  # one item's stray peak does not move the system's lag
    assert peers.system_lag([]) == 0


def test_rtf_deltas_and_latency_cells() -> None:
    assert math.isclose(peers.rtf([1.0, 2.0], [10.0, 10.0]), 0.15)
    with pytest.raises(ValueError):
        peers.rtf([1.0], [0.0])
    d, n = peers.paired_delta({"a": 2.0, "b": math.nan, "c": 5.0}, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0})
    assert (d, n) == (2.5, 2)
    assert peers.latency_cell({"latency_ms": None}) == "offline"
    assert peers.latency_cell({"latency_ms": 10.0, "latency_measured_ms": 9.9375}) == "10 (meas. 9.9)"
    assert peers.latency_cell({"latency_ms": 30.0}) == "30"
    assert peers.strict_json({"x": [math.nan, 1.0, math.inf]}) == {"x": [None, 1.0, None]}


class Delayed(peers.Runner):
    """A fake peer whose raw output lags by 80 samples (5 ms); compensated unless told otherwise."""

    has_delay = True

    def process(self, x: np.ndarray) -> np.ndarray:
        y = np.concatenate([np.zeros(80, np.float32), x])
        return peers.fit(y[0 if not self.compensate else 80 :], x.size)


def test_raw_latency_is_measured(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    items, paths = [], []
    for i, snr in enumerate((0.0, 20.0, 10.0)):
        p = tmp_path / f"{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(RATE)).astype(np.float32), RATE, subtype="FLOAT")
        items.append({"id": str(i), "snr_db": snr})
        paths.append(p)
    runner = Delayed()
    assert peers.raw_latency_ms(runner, items, paths) == 5.0
    assert runner.compensate  # restored for the scored outputs
    x = rng.standard_normal(1000).astype(np.float32)
    assert np.array_equal(runner.process(x), x)
