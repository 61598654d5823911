"""``voxd bench`` and ``voxd eval`` through the real command: tables, JSON, latency declared vs measured,
per-stage quality rows that agree with ``voxd process``, plots, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import ROOT, run_voxd
from voxd import metrics

MONO = Path(__file__).resolve().parents[2] / "shared" / "bench" / "dev" / "mono"
ITEM = "dm001"
needs_mono = pytest.mark.skipif(not (MONO / "meta.jsonl").is_file(),
                                reason="shared/bench/dev/mono not present")


@pytest.mark.parametrize("chain, declared", [
    ("[{stage: highpass}]", 0),
    ("[{stage: highpass}, {stage: passthrough_stft}, {stage: mix}]", 160),
])
def test_bench_declared_latency_equals_the_measured_impulse_delay(chain, declared, recording, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\nchain: {chain}\n")
    r = run_voxd("bench", "--config", str(cfg), "--seconds", "1", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["delay_samples"] == declared
    assert abs(report["measured_delay_samples"] - declared) <= 1
    assert report["peak_rss_mb"] > 10 and 0 < report["rtf_cpu"] < 1
    assert all(s["p99_us"] >= s["p50_us"] > 0 for s in report["stages"])


@pytest.mark.parametrize("engine, declared", [("speex", 160), ("aec3", 128)])
def test_bench_runs_a_capture_with_a_reference_channel(engine, declared, recording, tmp_path):
    """The 4-channel recording's last channel as the playback reference: the chain gets 3 microphones,
    the probe for the measured delay too (it used to get all 4 and the stage failed)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}, reference_channels: [3]}}\n"
                   f"chain: [{{stage: aec, engine: {engine}}}]\n")
    r = run_voxd("bench", "--config", str(cfg), "--seconds", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert "failed" not in r.stderr, r.stderr
    report = json.loads(r.stdout)
    assert report["delay_samples"] == declared == report["measured_delay_samples"]


def test_bench_prints_a_table_for_an_example_config():
    r = run_voxd("bench", "--config", "config/examples/wiener.yaml", "--seconds", "1")
    assert r.returncode == 0, r.stderr
    for needle in ("| mix | mix |", "| noise | noise |", "| wiener | wiener |", "| istft | istft |",
                   "RTF", "declared 160 samples (10 ms), measured 160 samples", "peak RSS"):
        assert needle in r.stdout


def test_bench_errors_are_one_line():
    r = run_voxd("bench", "--config", "config/examples/wiener.yaml", "--input", "/nonexistent/x.wav")
    assert (r.returncode, r.stderr.strip()) == (66, "voxd: /nonexistent/x.wav: no such file")
    r = run_voxd("bench", "--config", "/nonexistent/c.yaml")
    assert r.returncode == 78 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def wiener_chain(folder: Path) -> Path:
    """A chain with a stage that passes audio unchanged (vad, noise) and one that changes it (wiener):
    config/mono.yaml's chain before it became a DeepFilterNet3 chain."""
    cfg = folder / "wiener-chain.yaml"
    cfg.write_text("capture: {type: pyaudio, channels: 1}\n"
                   "chain: [{stage: mix}, {stage: vad, engine: silero}, {stage: noise}, {stage: wiener}]\n",
                   encoding="utf-8")
    return cfg


@pytest.fixture(scope="module")
def eval_json(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One ``voxd eval --json --plot`` run on a dev/mono item (matplotlib: the ``plot`` extra, which
    ``make test`` installs)."""
    plots = tmp_path_factory.mktemp("plots")
    cfg = wiener_chain(tmp_path_factory.mktemp("cfg"))
    r = run_voxd("eval", "--config", str(cfg), "--set-dir", str(MONO), "--items", "1", "--json",
                 "--plot", str(plots), timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), plots


@needs_mono
def test_eval_rows_per_stage_and_output_matches_voxd_process(eval_json, tmp_path):
    report, _ = eval_json
    (item,) = report["items"]
    assert item["id"] == ITEM
    rows = {r["name"]: r for r in item["rows"]}
    assert list(rows) == ["input", "mix", "vad", "noise", "wiener", "output"]
    # the last stage's tap, realigned, is the output; a stage that passes audio scores as its input
    assert rows["wiener"]["si_sdr"] == pytest.approx(rows["output"]["si_sdr"], abs=0.01)
    assert rows["noise"]["si_sdr"] == pytest.approx(rows["input"]["si_sdr"], abs=0.01)
    out = tmp_path / "out.wav"
    noisy = str(MONO / "noisy" / f"{ITEM}.flac")
    p = run_voxd("process", "--config", str(wiener_chain(tmp_path)), "-q", noisy, str(out))
    assert p.returncode == 0, p.stderr
    clean, _ = sf.read(MONO / "clean" / f"{ITEM}.flac", dtype="float32")
    processed, _ = sf.read(out, dtype="float32")
    expected = metrics.si_sdr(clean, processed, mismatch="trim")
    assert rows["output"]["si_sdr"] == pytest.approx(expected, abs=0.01)
    gate = report["gate"]
    assert [c["key"] for c in gate["criteria"]] == ["snr", "pesq", "stoi", "clip"]
    assert gate["pass"] == all(c["pass"] for c in gate["criteria"])
    assert report["mean"]["items"] == 1


@needs_mono
def test_eval_plot_writes_pngs(eval_json):
    report, plots = eval_json
    names = sorted(p.name for p in (plots / ITEM).iterdir())
    assert names == ["00-input.png", "01-mix.png", "02-vad.png", "03-noise.png", "04-wiener.png",
                     "05-output.png", "timeline.png"]
    assert all((plots / ITEM / n).stat().st_size > 1000 for n in names)
    assert report["items"][0]["plots"]


def test_eval_text_table_and_gate_thresholds(recording, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\n"
                   "chain: [{stage: highpass}, {stage: mix}, {stage: passthrough_stft},\n"
                   "        {stage: gain, db: 0}]\n")
    mono = tmp_path / "clean.wav"
    data, rate = sf.read(recording, dtype="float32")
    sf.write(mono, 0.8 * data[:, 0], rate)  # not the input itself: its SNR would be infinite
    r = run_voxd("eval", "--config", str(cfg), "--noisy", str(recording), "--clean", str(mono),
                 "--gate", "snr=-100,pesq=-10,stoi=-1,clip=5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in ("input", "highpass", "mix", "passthrough_stft", "gain", "output"):
        assert sum(line.startswith(f"| {name} |") for line in lines) == 2  # the item, then the mean
    assert "gate: PASS" in lines and "| SNR gain (dB) |" in r.stdout and "| < 5 | PASS |" in r.stdout
    strict = run_voxd("eval", "--config", str(cfg), "--noisy", str(recording), "--clean", str(mono),
                      "--gate", "snr=100", "--strict", "--json")
    assert strict.returncode == 1 and json.loads(strict.stdout)["gate"]["pass"] is False


def test_eval_errors_are_one_line(recording, tmp_path):
    cfg = "config/mono.yaml"
    r = run_voxd("eval", "--config", cfg, "--noisy", str(recording), "--clean", "/nonexistent/c.wav")
    assert (r.returncode, r.stderr.strip()) == (66, "voxd: /nonexistent/c.wav: no such file")
    short = tmp_path / "short.wav"
    data, rate = sf.read(recording, dtype="float32")
    sf.write(short, data[: int(0.9 * len(data)), 0], rate)
    r = run_voxd("eval", "--config", cfg, "--noisy", str(recording), "--clean", str(short))
    assert r.returncode == 65
    assert r.stderr.strip() == (f"voxd: eval: lengths differ by more than 1 %: {recording} has 32000 samples "
                                f"at 16000 Hz (2.000 s), {short} has 28800 at 16000 Hz (1.800 s)")
    r = run_voxd("eval", "--config", cfg, "--noisy", str(recording))
    assert r.returncode == 64 and len(r.stderr.strip().splitlines()) == 1
    r = run_voxd("eval", "--config", cfg, "--noisy", str(recording), "--clean", str(recording),
                 "--gate", "snr")
    assert r.returncode == 64 and "bad --gate entry 'snr'" in r.stderr
    r = run_voxd("eval", "--config", cfg, "--set-dir", str(tmp_path))
    assert r.returncode == 66
    assert r.stderr.strip() == (f"voxd: {tmp_path / 'meta.jsonl'}: no such file "
                                "(--set-dir needs a folder with meta.jsonl)")


def test_chain_bench_wrapper_still_works():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "bench/chain_bench.py", "--config", "config/examples/two-mics.yaml",
                        "--seconds", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["measured_delay_samples"] == 0
