"""``voxd status``: the daemon's stats topic as a table (real daemon, real socket)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import make_recording, run_voxd
from tests.test_reload import Running, write_cfg


def test_status_prints_the_daemons_stats(tmp_path: Path, free_port: int) -> None:
    rec = tmp_path / "in.wav"
    make_recording(rec, channels=2, seconds=2.0)
    cfg = tmp_path / "voxd.yaml"
    write_cfg(cfg, rec, free_port, "  - {stage: vad}\n  - {stage: noise}\n  - {stage: wiener}\n"
              "  - {stage: mix}\n")
    run = Running(cfg, free_port, tmp_path / "sub", seconds=30)
    try:
        run.wait_frames(20)  # the stats interval is 1 s: more than one went out while waiting below
        table = run_voxd("status", f"tcp://127.0.0.1:{free_port}", "--timeout", "5")
        as_json = run_voxd("status", f"tcp://127.0.0.1:{free_port}", "--timeout", "5", "--json")
        run.stop()
    finally:
        run.kill()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("stream ")
    for key in ("frames", "rtf", "speech_ratio", "reloads"):
        assert any(line.split()[0] == key for line in lines[1:] if line.strip()), key
    assert any(line.split()[:1] == ["noise"] and len(line.split()) == 3 for line in lines)  # p50, p99
    stats = json.loads(as_json.stdout)
    assert stats["frames"] > 0 and 0 <= stats["speech_ratio"] <= 1
    assert set(stats["stages"]) >= {"vad", "noise", "wiener", "mix"}


def test_status_without_a_daemon_is_one_line_and_exit_69(free_port: int) -> None:
    r = run_voxd("status", f"tcp://127.0.0.1:{free_port}", "--timeout", "0.5")
    assert r.returncode == 69
    assert r.stderr.strip().count("\n") == 0 and "no stats message within 0.5 s" in r.stderr
