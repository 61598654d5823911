"""Hot reload (SIGHUP): the real daemon, a real subscriber process, configs rewritten on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.conftest import ROOT, make_recording


def write_cfg(path: Path, recording: Path, port: int, chain: str, extra: str = "") -> None:
    path.write_text(f"""capture: {{type: file, path: {recording}, realtime: true, loop: true}}
output:
  endpoints: ["tcp://127.0.0.1:{port}"]
  frame_ms: 20
  stats_interval_s: 1
{extra}chain:
{chain}""")


GAIN0 = "  - {stage: select, channels: [0]}\n  - {stage: gain, db: 0}\n"
GAIN6 = "  - {stage: select, channels: [0]}\n  - {stage: gain, db: -6}\n"
SPECTRAL = "  - {stage: select, channels: [0]}\n  - {stage: passthrough_stft}\n  - {stage: gain, db: -6}\n"


class Running:
    """``voxd run`` plus ``tests/subscriber.py`` on its endpoint."""

    def __init__(self, cfg: Path, port: int, out: Path, seconds: float) -> None:
        self.out = out
        self.sub = subprocess.Popen([sys.executable, str(ROOT / "tests" / "subscriber.py"),
                                     f"tcp://127.0.0.1:{port}", str(out), "--seconds", str(seconds)],
                                    cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.sub.stdout is not None and self.sub.stdout.readline().strip() == "ready"
        self.daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                       stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # signals sent before the daemon installed its handlers would kill it: wait until audio flows
        assert wait_for(lambda: any("audio flowing" in line for line in self.lines), 30), self.lines

    def _read(self) -> None:
        assert self.daemon.stderr is not None
        for line in self.daemon.stderr:
            self.lines.append(line)

    def hup(self, wait_for_log: str | None = "reloaded (", timeout: float = 30.0) -> None:
        """SIGHUP; then wait until the daemon logged one more ``wait_for_log`` line (the reload is
        prepared off the hot path: on a loaded machine that takes a while, and a stop request that
        arrives first would cancel it)."""
        count = self.count(wait_for_log) if wait_for_log else 0
        self.daemon.send_signal(signal.SIGHUP)
        if wait_for_log:
            assert wait_for(lambda: self.count(wait_for_log) > count, timeout), "".join(self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def stop(self) -> tuple[dict, str]:
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(timeout=20)
        self._reader.join(5)
        err = "".join(self.lines)
        assert self.daemon.returncode == 0, err
        self.sub.send_signal(signal.SIGTERM)
        assert self.sub.wait(timeout=20) == 0
        return json.loads(Path(f"{self.out}.json").read_text()), err

    def kill(self) -> None:
        for p in (self.daemon, self.sub):
            if p.poll() is None:
                p.kill()


def proc_usage(pid: int) -> tuple[int, int, int]:
    """(open fds, threads, RSS kB) of a live process, from /proc."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field = {line.split(":")[0]: line.split(":")[1].strip() for line in status}
    return fds, int(field["Threads"]), int(field["VmRSS"].split()[0])


def events(info: dict, kind: str) -> list[dict]:
    return [e for e in info["events"] if e["type"] == kind]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def start(tmp_path: Path, port: int, chain: str, channels: int = 2, seconds: float = 3.0,
          sub_seconds: float = 30) -> tuple[Path, Path, Running]:
    """A recording, a config streaming it in real time with ``chain``, and the daemon + subscriber."""
    rec, cfg = tmp_path / "in.wav", tmp_path / "voxd.yaml"
    make_recording(rec, channels=channels, seconds=seconds)
    write_cfg(cfg, rec, port, chain)
    return rec, cfg, Running(cfg, port, tmp_path / "sub", seconds=sub_seconds)


def assert_no_gap(info: dict) -> list[int]:
    """The subscriber saw consecutive seq numbers (no frame lost); returns them."""
    seqs = info["seqs"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and info["gaps"] == 0
    return seqs


def test_sighup_swaps_the_chain_without_a_seq_gap(tmp_path: Path, free_port: int) -> None:
    rec, cfg, run = start(tmp_path, free_port, GAIN0)
    try:
        time.sleep(1.5)
        write_cfg(cfg, rec, free_port, GAIN6)  # same formats: the chain is swapped in place
        run.hup()
        time.sleep(1.5)
        write_cfg(cfg, rec, free_port, SPECTRAL)  # a spectral stage: a longer chain delay
        run.hup()
        time.sleep(1.5)
        info, err = run.stop()
    finally:
        run.kill()
    seqs = assert_no_gap(info)
    reloads = events(info, "reload")
    assert [e["count"] for e in reloads] == [1, 2]
    assert reloads[0]["changed"] == ["chain"]
    # the level follows the chain: -6 dB after the first reload
    pcm = np.frombuffer(Path(f"{tmp_path / 'sub'}.pcm").read_bytes(), np.int16).astype(np.float64)
    frames = pcm.reshape(len(seqs), -1)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    i1 = seqs.index(reloads[0]["seq"])
    before, after = np.median(rms[max(0, i1 - 30):i1 - 2]), np.median(rms[i1 + 3:i1 + 30])
    assert abs(20 * np.log10(after / before) + 6.0) < 1.0
    assert "reloaded (chain)" in err


def test_an_invalid_config_is_refused_and_the_old_chain_keeps_running(tmp_path: Path, free_port: int) -> None:
    rec, cfg, run = start(tmp_path, free_port, GAIN0)
    try:
        time.sleep(1.2)
        write_cfg(cfg, rec, free_port, "  - {stage: gian, db: -6}\n")  # misspelt stage
        run.hup(wait_for_log="reload refused")
        time.sleep(1.2)
        info, err = run.stop()
    finally:
        run.kill()
    failed = events(info, "reload_failed")
    assert len(failed) == 1 and not events(info, "reload")
    assert failed[0]["errors"][0].startswith(f"{cfg}:7: chain.0.stage: unknown stage 'gian'")
    assert f"reload refused: {cfg}:7: chain.0.stage: unknown stage 'gian'" in err
    seqs = assert_no_gap(info)
    i = seqs.index(failed[0]["seq"])
    assert len(seqs) - i > 30  # audio kept flowing after the refusal
    assert "Traceback" not in err


def test_thirty_reloads_under_load_lose_no_frame_and_leak_nothing(tmp_path: Path, free_port: int) -> None:
    """Acceptance (issue 8): 30 reloads while streaming in real time: no seq gap; fds, threads and RSS
    back where they were (RSS growth < 5 MB)."""
    rec = tmp_path / "in.wav"
    make_recording(rec, channels=4, seconds=2.0)
    cfg = tmp_path / "voxd.yaml"
    chains = [GAIN0, SPECTRAL, "  - {stage: highpass, cutoff_hz: 80}\n  - {stage: vad}\n  - {stage: noise}\n"
              "  - {stage: wiener}\n  - {stage: mix}\n"]
    write_cfg(cfg, rec, free_port, chains[2])
    run = Running(cfg, free_port, tmp_path / "sub", seconds=60)
    try:
        time.sleep(2.0)
        pid = run.daemon.pid
        write_cfg(cfg, rec, free_port, chains[0])  # warm up every chain kind once before the baseline
        run.hup()
        time.sleep(0.4)
        write_cfg(cfg, rec, free_port, chains[1])
        run.hup()
        time.sleep(0.4)
        write_cfg(cfg, rec, free_port, chains[2])
        run.hup()
        time.sleep(0.6)
        base = proc_usage(pid)
        for k in range(30):
            write_cfg(cfg, rec, free_port, chains[k % 3])
            run.hup()  # returns once the daemon logged the swap; audio keeps streaming throughout
            time.sleep(0.1)
        time.sleep(1.0)
        end = proc_usage(pid)
        info, _err = run.stop()
    finally:
        run.kill()
    seqs = assert_no_gap(info)
    n_reload = len(events(info, "reload"))
    assert n_reload == 33
    fds, threads, rss = end[0] - base[0], end[1] - base[1], end[2] - base[2]
    print(f"\n30 reloads: {n_reload} reload events, {len(seqs)} frames, fds {base[0]}->{end[0]}, "
          f"threads {base[1]}->{end[1]}, RSS {base[2]}->{end[2]} kB")
    assert fds <= 0 and threads <= 0
    assert rss < 5 * 1024


def test_a_capture_change_reopens_the_source_and_seq_goes_on(tmp_path: Path, free_port: int) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    make_recording(a, channels=2, seconds=2.0)
    make_recording(b, channels=4, seconds=2.0, seed=1)  # another device: more channels
    cfg = tmp_path / "voxd.yaml"
    mix = "  - {stage: mix}\n"
    write_cfg(cfg, a, free_port, mix)
    run = Running(cfg, free_port, tmp_path / "sub", seconds=30)
    try:
        time.sleep(1.0)
        write_cfg(cfg, b, free_port, mix)
        run.hup()
        time.sleep(1.2)
        run.daemon.send_signal(signal.SIGUSR1)  # thread stacks to stderr; the daemon carries on
        time.sleep(0.5)
        info, err = run.stop()
    finally:
        run.kill()
    (reload,) = events(info, "reload")
    assert reload["changed"] == ["capture"]
    seqs = assert_no_gap(info)
    i = seqs.index(reload["seq"])
    assert any(info["discontinuity"][i:i + 5])  # the new source's first frame says so
    assert len(seqs) - i > 40  # and audio flows from the new source
    assert "Thread 0x" in err and "voxd/daemon.py" in err  # SIGUSR1's dump names the worker's code
