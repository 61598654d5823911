"""Live capture through a real PortAudio stream: a private PulseAudio whose pipe source is the
microphone (tests/virtual_mic.py), the real daemon in a subprocess, real ZeroMQ subscribers.

The virtual device is the one fake here, and only in the sense that no sound card exists on this
machine: PortAudio, ALSA and the PulseAudio server are the real ones a Raspberry Pi would run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.virtual_mic import ramp_pattern, ramp_source
from voxd.client import Subscriber
from voxd.wire import AudioMessage, EventMessage


def write_config(path: Path, endpoint: str, capture: str, chain: str = "[]", extra: str = "") -> Path:
    path.write_text(f"capture: {capture}\nchain: {chain}\n"
                    f"output: {{endpoints: ['{endpoint}'], frame_ms: 20, wait_for_subscriber_s: 20, "
                    f"stats_interval_s: 1}}\n{extra}")
    return path


class Daemon:
    """``voxd run`` in a subprocess with the mic's environment; its log goes to a file."""

    def __init__(self, cfg: Path, env: dict[str, str], tmp: Path) -> None:
        self.log = tmp / "daemon.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                     env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_log(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log.read_text():
                return
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.log.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in daemon log: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def counts(self) -> tuple[int, int]:
        """(threads, open file descriptors) of the daemon process, from /proc."""
        pid = self.proc.pid
        return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def subscriber(endpoint: str, out: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(ROOT / "tests" / "subscriber.py"), endpoint, str(out), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def wait_line(proc: subprocess.Popen[str], pred, timeout: float = 60) -> str:
    """Read a ``--progress`` subscriber's lines until one satisfies ``pred`` (waits on what happened,
    not on a guessed time: a loaded machine may take seconds to start the daemon)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "the subscriber ended"
        if pred(line.strip()):
            return line.strip()
    raise AssertionError(f"no such line within {timeout} s")


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def frames_of(line: str) -> int:
    return int(line.split()[1]) if line.startswith("frames ") else -1


def recorded(out: Path) -> tuple[dict, np.ndarray]:
    info = json.loads(Path(f"{out}.json").read_text())
    pcm = np.frombuffer(Path(f"{out}.pcm").read_bytes(), "<i2").reshape(-1, info["channels"] or 1)
    return info, pcm


@pytest.mark.parametrize("channels", [4, 8])
def test_every_channel_arrives_bit_exact_in_the_configured_order(channels, make_virtual_mic, free_port,
                                                                 tmp_path):
    mic = make_virtual_mic(channels=channels, rate=16000)
    mic.start_feeding(ramp_source(channels))
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cmap = list(range(channels))[::-1]  # a rotated/reversed board, put right by channel_map
    cfg = write_config(tmp_path / "c.yaml", endpoint,
                       f"{{type: pyaudio, device: pulse, channels: {channels}, rate: 16000, "
                       f"channel_map: {cmap}}}",
                       chain=f"[{{stage: select, channels: {list(range(channels))}}}]")
    out = tmp_path / "sub"
    sub = subscriber(endpoint, out, "--frames", "100")
    daemon = Daemon(cfg, mic.env, tmp_path)
    try:
        assert sub.wait(timeout=60) == 0
        assert daemon.stop() == 0
    finally:
        sub.kill()
        daemon.kill()
    info, pcm = recorded(out)
    assert info["channels"] == channels and info["rate"] == 16000
    assert info["seqs"] == list(range(100)) and info["gaps"] == 0
    device_order = pcm[:, np.argsort(cmap)]  # undo the map: column k is device channel k again
    start = int(np.flatnonzero(device_order[:, 0])[0])  # the stream may open on a little silence
    expected = ramp_pattern(len(pcm) - start, channels, int(device_order[start, 0]) - 1)
    np.testing.assert_array_equal(device_order[start:], expected)
    assert start < 320 and len(pcm) - start > 1800


def test_a_48k_device_is_published_at_16k_with_level_frequency_and_duration_kept(make_virtual_mic, free_port,
                                                                                    tmp_path):
    mic = make_virtual_mic(channels=4, rate=48000)
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = write_config(tmp_path / "c.yaml", endpoint,
                       "{type: pyaudio, device: pulse, channels: 4, rate: 48000, stall_timeout_ms: 5000}",
                       chain="[{stage: select, channels: [2]}]")
    out = tmp_path / "sub"
    sub = subscriber(endpoint, out, "--seconds", "90", "--progress")
    daemon = Daemon(cfg, mic.env, tmp_path)
    seconds, amp = 3.0, 10 ** (-20 / 20) * np.sqrt(2)  # a -20 dBFS RMS 1 kHz tone
    t = np.arange(int(seconds * 48000)) / 48000
    tone = np.rint(32768 * amp * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    try:
        daemon.wait_log("audio flowing")
        time.sleep(0.3)  # the stream is open before the tone starts (pacing, not a threshold)
        mic.start_feeding(np.repeat(tone[:, None], 4, axis=1), then_silence=True)
        assert mic.wait_payload(timeout=20)
        # frames flow from the tone on (then silence): 1 s of frames after the 3 s tone, however long
        # the loaded machine takes, and its end has surely been published
        wait_line(sub, lambda line: frames_of(line) >= int((seconds + 1.0) * 50))
        sub.send_signal(signal.SIGTERM)
        assert sub.wait(timeout=30) == 0
        assert daemon.stop() == 0
    finally:
        sub.kill()
        daemon.kill()
    info, pcm = recorded(out)
    assert info["rate"] == 16000 and info["channels"] == 1 and info["gaps"] == 0
    y = pcm[:, 0].astype(np.float64) / 32768
    env = np.sqrt(np.convolve(y**2, np.ones(160) / 160, mode="same"))
    on = np.flatnonzero(env > 0.5 * 10 ** (-20 / 20))
    duration = (on[-1] - on[0] + 1) / 16000
    assert abs(duration - seconds) <= 0.020, duration  # within one 20 ms frame
    mid = y[on[0] + 1600 : on[-1] - 1600]
    level = 20 * np.log10(np.sqrt(np.mean(mid**2)))
    assert abs(level - (-20.0)) <= 0.5, level
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    assert abs(np.argmax(spec) * 16000 / len(mid) - 1000) < 2


def events_until(sub: Subscriber, wanted: str, timeout: float) -> tuple[float, list[str]]:
    """Read until event ``wanted``; returns (monotonic time it arrived, event types seen)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = sub.recv(timeout_ms=50)
        if isinstance(msg, EventMessage):
            seen.append(msg.type)
            if msg.type == wanted:
                return time.monotonic(), seen
    raise AssertionError(f"no {wanted} event within {timeout} s; saw {seen}")


def first_audio(sub: Subscriber, timeout: float) -> AudioMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = sub.recv(timeout_ms=50)
        if isinstance(msg, AudioMessage):
            return msg
    raise AssertionError(f"no audio within {timeout} s")


def test_device_loss_and_return_twenty_times_without_leaks(make_virtual_mic, free_port, tmp_path):
    """Kill the sound server mid-stream (device vanishes) and stop the writer (device stalls): the
    daemon stays up, reports device_lost, and device_restored with audio flowing within 3 s of the
    device's return. Threads and file descriptors are counted after the first and the last cycle."""
    mic = make_virtual_mic(channels=2, rate=16000)
    mic.start_feeding(ramp_source(2))
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = write_config(tmp_path / "c.yaml", endpoint,
                       "{type: pyaudio, device: pulse, channels: 2, rate: 16000, stall_timeout_ms: 400, "
                       "retry_max_s: 1}", chain="[{stage: passthrough_stft}, {stage: mix}]")
    daemon = Daemon(cfg, mic.env, tmp_path)
    counts, delays = [], []
    settled = True
    try:
        with Subscriber(endpoint, topics=("audio", "event")) as sub:
            first_audio(sub, 30)
            for cycle in range(20):
                if cycle % 2 == 0:  # the server dies: PortAudio's host error / inactive stream
                    mic.kill()
                    events_until(sub, "device_lost", 10)
                    time.sleep(0.2)  # the device stays away a moment (not a threshold)
                    back = time.monotonic()
                    mic.start()
                else:  # the writer stops: nothing arrives and nothing is raised
                    mic.stop_feeding()
                    events_until(sub, "device_lost", 10)
                    time.sleep(0.2)
                    back = time.monotonic()
                    mic.start_feeding(ramp_source(2))
                restored, _ = events_until(sub, "device_restored", 10)
                audio = first_audio(sub, 10)
                delays.append(time.monotonic() - back)
                assert restored - back <= 3.0 and delays[-1] <= 3.0
                assert audio.header.get("discontinuity") is True  # the chain was reset on return
                for _ in range(15):  # 0.3 s of audio flowing again: the stream is up, not starting
                    first_audio(sub, 10)
                counts.append(daemon.counts())
            # PortAudio's threads of the last stream may still be on their way out: a leak is a count
            # that does not come back down to the first cycle's, not a count caught in passing
            base = counts[0]
            settled = wait_for(lambda: all(c <= b for c, b in zip(daemon.counts(), base, strict=True)), 10)
            counts.append(daemon.counts())
        assert daemon.proc.poll() is None, "the daemon never exits because a device went away"
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    threads, fds = zip(*counts, strict=True)
    print(f"threads per cycle: {threads[:-1]} (settled: {threads[-1]})\nfds per cycle: {fds[:-1]} (settled: "
          f"{fds[-1]})\ndevice back -> audio flowing (s): {[round(d, 2) for d in delays]}")
    assert settled and threads[-1] <= threads[0] and fds[-1] <= fds[0], (threads, fds)


def test_a_chain_slower_than_real_time_overruns_without_blocking(make_virtual_mic, free_port, tmp_path,
                                                                outside_plugins):
    mic = make_virtual_mic(channels=2, rate=16000)
    mic.start_feeding(ramp_source(2))
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = write_config(tmp_path / "c.yaml", endpoint,
                       "{type: pyaudio, device: pulse, channels: 2, rate: 16000, queue_ms: 200}",
                       chain="[{stage: sleep, ms: 15}]")
    out = tmp_path / "sub"
    sub = subscriber(endpoint, out, "--seconds", "90", "--progress")
    daemon = Daemon(cfg, {**mic.env, **outside_plugins}, tmp_path)
    try:
        # wait for what is asserted below, however long a loaded machine takes to get there: two
        # overrun events (the rate limit shows between them) and a stats message counting overruns
        wait_line(sub, lambda line: line.startswith("event overrun"))
        wait_line(sub, lambda line: line.startswith("event overrun"))
        wait_line(sub, lambda line: line.startswith("stats overruns=") and line != "stats overruns=0")
        sub.send_signal(signal.SIGTERM)
        assert sub.wait(timeout=30) == 0
        assert daemon.proc.poll() is None, "still running"
        assert daemon.stop() == 0
    finally:
        sub.kill()
        daemon.kill()
    info, _ = recorded(out)
    overruns = [e for e in info["events"] if e["type"] == "overrun"]
    assert len(overruns) >= 2 and overruns[-1]["overruns"] > 0
    # rate-limited: at most one a second (their capture-time stamps, allowing for a late first frame)
    assert min(np.diff([e["t"] for e in overruns])) >= 0.8, [e["t"] for e in overruns]
    assert sum(info["discontinuity"]) >= 1
    assert info["stats"] and info["stats"][-1]["overruns"] > 0
    assert info["gaps"] == 0  # the device lost input; the wire lost nothing


def test_wrong_device_or_channel_count_fails_at_start_with_one_line(make_virtual_mic, free_port, tmp_path,
                                                                    voxd):
    mic = make_virtual_mic(channels=2, rate=16000)
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = write_config(tmp_path / "c.yaml", endpoint, "{type: pyaudio, device: respeaker, channels: 2}")
    r = voxd("run", "--config", str(cfg), env=mic.env)
    assert r.returncode == 69
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("voxd: capture.device: no input device matches 'respeaker'; input devices: ")
    assert "pulse (32 ch, 44100 Hz)" in lines[0]

    cfg = write_config(tmp_path / "c.yaml", endpoint, "{type: pyaudio, device: pulse, channels: 40}")
    r = voxd("run", "--config", str(cfg), env=mic.env)
    assert r.returncode == 69
    assert r.stderr.strip().startswith("voxd: capture.channels: device 'pulse' gives at most 32 input "
                                       "channels, not 40; input devices: ")

    r = voxd("devices", env=mic.env)
    assert r.returncode == 0
    assert any(line.split()[1:3] == ["pulse", "32"] for line in r.stdout.splitlines()), r.stdout
