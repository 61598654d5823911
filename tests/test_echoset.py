"""The echo test set's generator (bench/echoset.py) on a tiny build, without apt, TTS or network.

Four 6-second items (one per condition, the three geometries) with a stand-in synthesiser (noise-excited
syllables: no pitch, so that a cross-correlation has one peak), stand-in music (coloured noise) and
free-field rooms (direct paths with the same fractional-delay offset as pyroomacoustics' RIRs). Checked:
the parts add up to the microphone signal, the reference leads the echo by the stated delay, the drift
item's reference is longer or shorter by the drift and its lag walks by it, far-end-only spans hold no
near-end energy, the path change raises the echo by its gain, and the files match a fresh rebuild.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import butter, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import echoset
import testset

from voxd.geometry import preset_positions

RATE = echoset.RATE
LSB = 1.0 / 32768


class FakeSpeech:
    """Noise-excited syllables (4 Hz envelope, a spectral tilt by voice), 60 ms per character of text."""

    voices = testset.VOICES[:4]

    def synth(self, voice: testset.Voice, text: str) -> np.ndarray:
        n = int(0.06 * len(text) * RATE)
        rng = np.random.default_rng(zlib.crc32(f"{voice.id}/{text}".encode()))
        x = np.cumsum(rng.standard_normal(n)) * 0.02 + rng.standard_normal(n)  # some low-frequency weight
        env = np.clip(np.sin(2 * np.pi * 4.0 * np.arange(n) / RATE), 0.0, None)
        return (0.05 * x * env).astype(np.float32)

    def versions(self) -> dict[str, str]:
        return {"fake-tts": "1"}


class FakeMusic:
    """Coloured noise with a slow loudness swell as 'music'."""

    def segment(self, kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
        x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(1 + np.arange(n // 2 + 1) / 200), n)
        x *= 1 + 0.5 * np.sin(2 * np.pi * 0.3 * np.arange(n) / RATE)
        rec = {"role": "noise", "package": "fake-music", "file": "m"}
        return (0.1 * x / x.std()).astype(np.float32), [rec]

    def versions(self) -> dict[str, str]:
        return {"fake-music": "1"}


TINY = echoset.EchoConfig(n_items=4, duration_s=(6.0, 6.0), rt60_s=(0.3, 0.3),
                          room_m=((3.5, 4.0), (3.0, 3.5), (2.5, 2.6)), change_s=(3.5, 3.5), id_prefix="t")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[dict[str, Any]],
                                                          list[echoset.EchoItem]]:
    out = tmp_path_factory.mktemp("echoset") / "set"
    manifest = echoset.build(out, TINY, FakeSpeech(), FakeMusic(), testset.free_field_rirs, progress=False)
    meta = [json.loads(s) for s in (out / "meta.jsonl").read_text().splitlines()]
    items = [echoset.make_item(TINY, p, FakeSpeech(), FakeMusic(), testset.free_field_rirs)
             for p in echoset.plan(TINY, FakeSpeech.voices)]
    return out, manifest, meta, items


def read(out: Path, rel: str) -> np.ndarray:
    x, sr = sf.read(out / rel, dtype="float64", always_2d=True)
    assert sr == RATE
    return x.T  # (channels, n)


def spans(segs: list[list[float]], n: int) -> np.ndarray:
    m = np.zeros(n, bool)
    for a, b in segs:
        m[int(a * RATE) : int(b * RATE)] = True
    return m


def test_layout_conditions_geometries_manifest(tiny: Any) -> None:
    out, manifest, meta, _ = tiny
    assert [r["condition"] for r in meta] == list(echoset.CONDITIONS)
    assert {r["geometry"] for r in meta} == set(echoset.GEOMETRIES)  # 4 items already cover the three
    for r in meta:
        n_mics = preset_positions(r["geometry"]).shape[0]
        for key, ch in (("noisy", n_mics), ("echo", n_mics), ("nearend", n_mics), ("clean", 1), ("ref", 1)):
            assert read(out, r[key]).shape[0] == ch, key
        assert r["channels"] == n_mics and r["sr"] == RATE
        assert 0.0 <= r["reference_delay_ms"] <= 200.0
        assert -40.5 <= r["loudspeaker"]["nonlinear_db"] <= -29.5  # mild, as drawn
    assert manifest["set_sha256"] == testset.set_hash(manifest["files_sha256"])
    assert {f for f in manifest["files_sha256"] if f.endswith(".flac")} == {
        r[k] for r in meta for k in ("noisy", "echo", "nearend", "clean", "ref")}


def test_parts_add_up_to_the_mic_signal(tiny: Any) -> None:
    out, _, meta, items = tiny
    for r, it in zip(meta, items, strict=True):
        np.testing.assert_allclose(it.noisy, it.echo + it.nearend + it.noise, atol=1e-6)
        noisy, echo, near = read(out, r["noisy"]), read(out, r["echo"]), read(out, r["nearend"])
        # the files are this fresh (deterministic) build, 16-bit
        np.testing.assert_allclose(noisy, it.noisy, atol=LSB)
        np.testing.assert_allclose(echo, it.echo, atol=LSB)
        noise = noisy - echo - near
        np.testing.assert_allclose(noise, it.noise, atol=3 * LSB)
        assert testset.rms_db(noise[0]) == pytest.approx(r["noise_level_dbfs"], abs=0.1)
        far = spans(r["farend_segments"], echo.shape[1])
        if r["echo_path_change_s"] is not None:  # the level is the one before the change
            far[int(r["echo_path_change_s"] * RATE) - 160 :] = False
        assert testset.rms_db(echo[0][far]) == pytest.approx(r["echo_level_dbfs"], abs=0.5)
        assert np.abs(noisy).max() <= 0.99 + LSB


def test_reference_leads_the_echo_by_the_stated_delay(tiny: Any) -> None:
    out, _, meta, _ = tiny
    delays = set()
    for r in meta:
        ref, echo = read(out, r["ref"])[0], read(out, r["echo"])[0]
        w = 3 * RATE  # the first 3 s: before any path change, drift under 5 samples
        lag = echoset.xcorr_lag(ref[:w], echo[:w], 4000)
        stated = r["reference_delay_samples"] + r["acoustic_delay_ms"][0] * RATE / 1000
        assert r["reference_delay_samples"] == round(r["reference_delay_ms"] * RATE / 1000)
        assert abs(lag - r["echo_lag_ms"] * RATE / 1000) <= 2.0, r["id"]
        assert abs(lag - stated) <= 2.0 + abs(r["loudspeaker"]["group_delay_samples"]), r["id"]
        delays.add(r["reference_delay_samples"])
    assert len(delays) == len(meta)


def test_drift_changes_the_reference_length_and_walks_the_lag(tiny: Any) -> None:
    out, _, meta, items = tiny
    for r, it in zip(meta, items, strict=True):
        n, ref = it.noisy.shape[1], read(out, r["ref"])[0]
        assert ref.size == r["ref_samples"] == n + round(n * r["drift_ppm"] * 1e-6)
        if r["condition"] == "drift":
            assert abs(r["drift_ppm"]) == 100.0 and ref.size != n
            echo = read(out, r["echo"])[0]
            lag = r["reference_delay_samples"]
            w = RATE  # 1 s windows at 1 s and 4.5 s: the lag moves by -ppm * 3.5 s (5.6 samples at 100 ppm)
            a = echoset.xcorr_lag(ref[RATE : RATE + w], echo[RATE + lag : RATE + lag + w], 400)
            s0 = int(4.5 * RATE)
            b = echoset.xcorr_lag(ref[s0 : s0 + w], echo[s0 + lag : s0 + lag + w], 400)
            assert b - a == pytest.approx(-r["drift_ppm"] * 1e-6 * 3.5 * RATE, abs=2.0)
        else:
            assert r["drift_ppm"] == 0.0 and ref.size == n


def test_labels_far_end_only_and_double_talk(tiny: Any) -> None:
    out, _, meta, _ = tiny
    for r in meta:
        near, echo = read(out, r["nearend"])[0], read(out, r["echo"])[0]
        n = echo.size
        fo, dt = spans(r["farend_only_segments"], n), spans(r["doubletalk_segments"], n)
        assert fo.sum() > 2 * RATE and not (fo & dt).any()
        assert 10 * np.log10(np.sum(near[fo] ** 2) / np.sum(echo[fo] ** 2) + 1e-30) < -35.0, r["id"]
        if r["condition"] in ("farend", "pathchange"):
            assert r["text"] == "" and not dt.any() and not np.any(near) and not np.any(read(out, r["clean"]))
        else:
            assert r["text"] and dt.sum() > 0.5 * RATE
            ser = 10 * np.log10(np.sum(near[dt] ** 2) / np.sum(echo[dt] ** 2))
            assert ser > -20.0, r["id"]  # the user is really talking over the playback there
        if r["condition"] == "pathchange":
            assert r["echo_path_change"]["kind"] == "volume"
            c = int(r["echo_path_change_s"] * RATE)
            ref = read(out, r["ref"])[0]
            lag = round(r["echo_lag_ms"] * RATE / 1000)

            sos = butter(4, [500.0, 4000.0], "bandpass", fs=RATE, output="sos")  # the loudspeaker's flat band
            e, x = sosfilt(sos, echo), sosfilt(sos, ref)

            after, before = slice(c + RATE // 10, c + 2 * RATE), slice(c - 2 * RATE, c - RATE // 10)
            rise = gain_db(e, x, lag, after) - gain_db(e, x, lag, before)
            assert rise == pytest.approx(TINY.path_gain_db, abs=1.5)
        else:
            assert r["echo_path_change_s"] is None


def gain_db(echo: np.ndarray, ref: np.ndarray, lag: int, s: slice) -> float:
    """Echo power over the reference's, ``lag`` samples earlier, in ``s`` (dB)."""
    return float(10 * np.log10(np.sum(echo[s] ** 2) / np.sum(ref[s.start - lag : s.stop - lag] ** 2)))


def test_default_plan_covers_every_geometry_and_condition() -> None:
    plans = echoset.plan(echoset.EchoConfig())
    assert len(plans) == echoset.N_ITEMS == 36
    pairs = [(p.geometry, p.condition) for p in plans]
    for g in echoset.GEOMETRIES:
        for c in echoset.CONDITIONS:
            assert pairs.count((g, c)) == 3
    delays = sorted(p.delay_ms for p in plans)
    assert delays[0] < 200 / 36 and delays[-1] > 200 - 200 / 36  # stratified over 0-200 ms
    assert sorted(p.drift_ppm for p in plans if p.condition == "drift").count(100.0) in (4, 5)
    assert {p.change for p in plans if p.condition == "pathchange"} == {"volume", "moved"}
    assert {p.farend_kind for p in plans} == {"speech", "music"}
    for p in plans:
        assert p.near_voice != p.far_voice
        assert (p.near_voice is None) == (p.condition in ("farend", "pathchange"))


def test_sources_respect_the_reserved_list() -> None:
    reserved = echoset.reserved_packages()
    assert "ambience" in reserved and "pocketsphinx-testdata" in reserved
    used = {"flite", "festival", "festvox-us-slt-hts", "festvox-kallpc16k", "festvox-kdlpc16k",
            "extremetuxracer-data"}
    assert not used & reserved
    assert testset.RECORDED["music"][0] == "extremetuxracer-data"
    with pytest.raises(SystemExit):
        echoset.check_sources([{"package": "ambience", "file": "x.ogg"}], reserved, set())
    with pytest.raises(SystemExit):
        echoset.check_sources([{"package": "p", "file": "/a/b.ogg"}], reserved, {("p", "a/b.ogg")})


def test_the_echo_bench_measures_each_chain_on_an_item(tiny: Any, tmp_path: Path) -> None:
    """bench/echo_bench.py on the tiny set (no recognizers): the plain chain removes nothing, the aec
    chain removes the echo, per-condition figures and the self-trigger flags are filled in."""
    pytest.importorskip("pystoi")
    import echo_bench

    out, _, meta, _ = tiny
    by_cond = {m["condition"]: m for m in meta}
    far = echo_bench.run_item(out, by_cond["farend"], tmp_path, ["plain", "aec"], {})
    assert abs(far["plain"]["erle_db"]) < 1.0
    assert far["aec"]["erle_db"] > far["plain"]["erle_db"] + 10.0
    assert isinstance(far["aec"]["self_trigger"], bool)
    dt = echo_bench.run_item(out, by_cond["doubletalk"], tmp_path, ["aec"], {})
    assert 0.0 < dt["aec"]["stoi"] <= 1.0 and dt["aec"]["stoi_noplayback"] is not None
    summary = echo_bench.summarise([far, dt], ["aec"], [])
    assert summary["all"]["n"] == 2 and summary["farend"]["aec_erle_db"] == far["aec"]["erle_db"]
