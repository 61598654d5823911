"""End to end: the daemon publishes over a real tcp:// socket to a subscriber in another process, and
what arrives equals ``voxd process``'s output for the same file and config, sample for sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.conftest import ROOT, make_recording, run_with_subscriber

SUBSCRIBER = str(ROOT / "tests" / "subscriber.py")  # records seqs, pts, events and the raw payloads

CHAIN = """
chain:
  - {stage: highpass, cutoff_hz: 100, order: 4}
  - {stage: select, channels: [3, 1, 0, 2]}
  - {stage: passthrough_stft}
  - {stage: mix}
  - {stage: gain, db: 3}
"""


def test_daemon_stream_equals_offline_processing(tmp_path: Path, free_port: int, voxd):
    rec = tmp_path / "rec.wav"
    make_recording(rec, channels=4, seconds=2.05, rate=16000)
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"capture: {{type: file, path: {rec}, realtime: true}}\n{CHAIN}"
                   f"output: {{endpoints: ['{endpoint}'], frame_ms: 20, wait_for_subscriber_s: 20}}\n")

    out = tmp_path / "sub"
    info = run_with_subscriber(cfg, endpoint, out)
    n = len(info["seqs"])
    assert info["seqs"] == list(range(n)), "every frame arrives, in order, no seq gap"
    assert info["gaps"] == 0 and info["restarts"] == 0
    assert info["events"][-1]["type"] == "end_of_stream"
    assert info["pts"] == [320 * i for i in range(n)]
    streamed = np.frombuffer(Path(f"{out}.pcm").read_bytes(), "<i2")

    offline = tmp_path / "offline.wav"
    r = voxd("process", "--config", str(cfg), str(rec), str(offline))
    assert r.returncode == 0, r.stderr
    y, rate = sf.read(offline, dtype="int16")
    assert rate == 16000 and y.ndim == 1
    assert len(y) == round(2.05 * 16000)  # as long as the input
    np.testing.assert_array_equal(streamed, y)


def test_process_removes_the_chain_delay(tmp_path: Path, voxd):
    """With only gain and the STFT identity, the output is the input (delay removed) to within rounding."""
    rec = tmp_path / "mono.wav"
    pcm = make_recording(rec, channels=1, seconds=1.0, rate=16000)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {rec}}}\nchain:\n  - {{stage: passthrough_stft}}\n")
    out = tmp_path / "out.wav"
    r = voxd("process", "--config", str(cfg), str(rec), str(out))
    assert r.returncode == 0, r.stderr
    y, _ = sf.read(out, dtype="int16")
    assert len(y) == len(pcm)
    assert np.abs(y.astype(int) - pcm[:, 0]).max() <= 1


def test_process_resamples_48k_input_to_the_chain_rate(tmp_path: Path, voxd):
    rec = tmp_path / "in48k.wav"
    make_recording(rec, channels=2, seconds=1.0, rate=48000)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {rec}}}\nchain:\n  - {{stage: mix}}\n")
    outdir = tmp_path / "out"
    r = voxd("process", "--config", str(cfg), "--out-dir", str(outdir), str(rec))
    assert r.returncode == 0, r.stderr
    y, rate = sf.read(outdir / "in48k.wav", dtype="float32")
    assert rate == 16000 and len(y) == 16000
    x, _ = sf.read(rec, dtype="float32")
    ref = x.mean(axis=1)[::3]
    # soxr is linear phase and delay-compensated: the chirp lines up with the decimated input
    assert np.corrcoef(y[200:-200], ref[200:-200])[0, 1] > 0.95


def test_sigterm_stops_cleanly_and_flushes(tmp_path: Path, free_port: int):
    """A looping real-time daemon stopped by SIGTERM: exit 0, no seq gap, a final 'stopping' event."""
    import signal

    rec = tmp_path / "rec.wav"
    make_recording(rec, channels=2, seconds=0.5)
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"capture: {{type: file, path: {rec}, realtime: true, loop: true}}\n"
                   "chain: [{stage: passthrough_stft}, {stage: mix}]\n"
                   f"output: {{endpoints: ['{endpoint}'], wait_for_subscriber_s: 20}}\n")
    out = tmp_path / "sub"
    sub = subprocess.Popen([sys.executable, SUBSCRIBER, endpoint, str(out), "--until", "stopping",
                            "--progress"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    daemon = None
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                  stderr=subprocess.PIPE, text=True)
        assert daemon.stderr is not None and "publishing stream" in daemon.stderr.readline()
        while sub.stdout.readline().strip() != "frames 80":  # 1.6 s: three loops of the recording
            assert sub.poll() is None
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert sub.wait(timeout=30) == 0
    finally:
        sub.kill()
        if daemon is not None:
            daemon.kill()
    info = json.loads(Path(f"{out}.json").read_text())
    n = len(info["seqs"])
    assert n >= 80 and info["seqs"] == list(range(n)) and info["gaps"] == 0
    assert [e["type"] for e in info["events"]] == ["stopping"]
    assert len(Path(f"{out}.pcm").read_bytes()) == 2 * 320 * n
