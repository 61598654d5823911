"""Hot reload (SIGHUP): the real daemon, a real subscriber process, configs rewritten on disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.conftest import ROOT, make_recording
from tests.notify_sink import NotifySink


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
HEAVY = ("  - {stage: highpass, cutoff_hz: 80}\n  - {stage: vad}\n  - {stage: noise}\n  - {stage: wiener}\n"
         "  - {stage: mix}\n")


class Running:
    """``voxd run`` plus ``tests/subscriber.py --progress`` on its endpoint.

    Waits are on what the subscriber reports (frames received, events) and on the daemon's log lines,
    never on a guessed time: on a loaded 2-core machine the daemon may take seconds to start or reload.
    """

    def __init__(self, cfg: Path, port: int, out: Path, seconds: float, env: dict[str, str] | None = None,
                 wait_audio: bool = True) -> None:
        self.out = out
        self.sub = subprocess.Popen([sys.executable, str(ROOT / "tests" / "subscriber.py"),
                                     f"tcp://127.0.0.1:{port}", str(out), "--seconds", str(seconds),
                                     "--progress"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.sub.stdout is not None and self.sub.stdout.readline().strip() == "ready"
        self.sub_lines: list[str] = []
        self._sub_reader = threading.Thread(target=self._read_sub, daemon=True)
        self._sub_reader.start()
        self.daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                       stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait_audio:
            # signals sent before the daemon installed its handlers would kill it: wait until audio flows
            assert wait_for(lambda: any("audio flowing" in line for line in self.lines), 30), self.lines
            self.wait_frames(1)

    def _read(self) -> None:
        assert self.daemon.stderr is not None
        for line in self.daemon.stderr:
            self.lines.append(line)

    def _read_sub(self) -> None:
        assert self.sub.stdout is not None
        for line in self.sub.stdout:
            self.sub_lines.append(line.strip())

    def frames(self) -> int:
        """Audio frames the subscriber has received so far (to the last 10)."""
        counts = [int(line.split()[1]) for line in list(self.sub_lines) if line.startswith("frames ")]
        return counts[-1] if counts else 0

    def wait_frames(self, more: int, timeout: float = 30.0) -> None:
        """Wait until the subscriber has received ``more`` frames beyond what it has now."""
        n0 = self.frames()
        assert wait_for(lambda: self.frames() >= n0 + more, timeout), \
            f"{self.frames() - n0} of {more} frames in {timeout} s: {''.join(self.lines)}"

    def events(self, kind: str) -> int:
        return sum(line.split()[:2] == ["event", kind] for line in list(self.sub_lines))

    def wait_event(self, kind: str, count: int = 1, timeout: float = 30.0) -> None:
        assert wait_for(lambda: self.events(kind) >= count, timeout), \
            f"no {kind} event #{count}: {self.sub_lines[-5:]} {''.join(self.lines)}"

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

    def stop(self, status: int = 0) -> tuple[dict, str]:
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(timeout=20)
        self._reader.join(5)
        err = "".join(self.lines)
        assert self.daemon.returncode == status, err
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
          sub_seconds: float = 90) -> tuple[Path, Path, Running]:
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
        run.wait_frames(40)
        write_cfg(cfg, rec, free_port, GAIN6)  # same formats: the chain is swapped in place
        run.hup()
        run.wait_event("reload")
        run.wait_frames(40)
        write_cfg(cfg, rec, free_port, SPECTRAL)  # a spectral stage: a longer chain delay
        run.hup()
        run.wait_event("reload", 2)
        run.wait_frames(40)
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
        run.wait_frames(40)
        write_cfg(cfg, rec, free_port, "  - {stage: gian, db: -6}\n")  # misspelt stage
        run.hup(wait_for_log="reload refused")
        run.wait_event("reload_failed")
        run.wait_frames(40)
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
    chains = [GAIN0, SPECTRAL, HEAVY]
    write_cfg(cfg, rec, free_port, chains[2])
    run = Running(cfg, free_port, tmp_path / "sub", seconds=120)
    try:
        run.wait_frames(50)
        pid = run.daemon.pid
        for k in range(3):  # warm up every chain kind once before the baseline
            write_cfg(cfg, rec, free_port, chains[k])
            run.hup()
            run.wait_event("reload", k + 1)
            run.wait_frames(10)
        base = proc_usage(pid)
        for k in range(30):
            write_cfg(cfg, rec, free_port, chains[k % 3])
            run.hup()  # returns once the daemon logged the swap; audio keeps streaming throughout
            run.wait_event("reload", k + 4)
        run.wait_frames(20)
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
    run = Running(cfg, free_port, tmp_path / "sub", seconds=60)
    try:
        run.wait_frames(40)
        write_cfg(cfg, b, free_port, mix)
        run.hup()
        run.wait_event("reload")
        run.wait_frames(50)
        run.daemon.send_signal(signal.SIGUSR1)  # thread stacks to stderr; the daemon carries on
        assert wait_for(lambda: run.count("voxd/daemon.py") > 0, 10)
        run.wait_frames(10)
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


# ------------------------------------------------- issue 16: reloads that fail, slow reloads, early SIGHUP
def test_a_reload_the_daemon_cannot_apply_is_refused_and_the_old_setup_carries_on(
        tmp_path: Path, free_port: int) -> None:
    """Issue 16, class 2: a reload to an endpoint already in use, to an ipc:// path that cannot be
    created, or with an out-of-range hwm. Before, the first two killed the daemon (exit 69, a ZMQError
    logged while closing, subscribers told nothing) and the third was a traceback. Now each is a
    ``reload_failed`` event naming the problem; the old chain and endpoint keep streaming without a gap,
    and a valid reload afterwards still works."""
    rec, cfg, run = start(tmp_path, free_port, GAIN0)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    good = f'["tcp://127.0.0.1:{free_port}"]'
    bad_outputs = [  # (what the endpoints line becomes, a line added to the output section)
        (f'["tcp://127.0.0.1:{taken}"]', ""),  # in use by another process
        ('["ipc:///proc/voxd-test/audio.sock"]', ""),  # a path that cannot be created
        (good, "  hwm: 10000000000\n"),  # out of range
    ]
    try:
        run.wait_frames(20)
        for k, (endpoints, extra) in enumerate(bad_outputs):
            write_cfg(cfg, rec, free_port, GAIN0, extra=extra)
            cfg.write_text(cfg.read_text().replace(good, endpoints))
            run.hup(wait_for_log="reload refused")
            run.wait_event("reload_failed", k + 1)
            run.wait_frames(20)
            assert run.daemon.poll() is None, "".join(run.lines)
        write_cfg(cfg, rec, free_port, GAIN6)  # and a good one still goes through
        run.hup()
        run.wait_event("reload")
        run.wait_frames(20)
        info, err = run.stop()
    finally:
        squatter.close()
        run.kill()
    failed = events(info, "reload_failed")
    assert len(failed) == 3, info["events"]
    assert "Address already in use" in failed[0]["errors"][0] and f":{taken}" in failed[0]["errors"][0]
    assert "/proc/voxd-test" in failed[1]["errors"][0]
    assert failed[2]["errors"][0].endswith("output.hwm: Input should be less than or equal to 100000")
    assert [e["count"] for e in events(info, "reload")] == [1]
    assert_no_gap(info)
    assert "Traceback" not in err and "ZMQError" not in err


def test_a_sighup_while_the_daemon_starts_is_a_reload_not_a_kill(tmp_path: Path, free_port: int) -> None:
    """Issue 16, class 2: SIGHUP's default action ends a process (status 129), and the daemon installed
    its handler only once running, about 0.5 s after start (``systemctl reload`` during start did it).
    Here the config is a FIFO, so the daemon is provably blocked reading it, before it could have done
    anything else, when the signal comes: it must run, and reload once running."""
    rec = tmp_path / "in.wav"
    make_recording(rec, channels=2, seconds=3.0)
    fifo = tmp_path / "voxd.yaml"
    os.mkfifo(fifo)
    out = tmp_path / "sub"
    run = Running(fifo, free_port, out, seconds=90, wait_audio=False)
    try:
        with open(fifo, "w") as f:  # returns once the daemon opened the FIFO to read its config
            run.daemon.send_signal(signal.SIGHUP)
            time.sleep(0.2)  # the signal is delivered while the daemon waits for the text
            f.write(f"capture: {{type: file, path: {rec}, realtime: true, loop: true}}\n"
                    f"output: {{endpoints: ['tcp://127.0.0.1:{free_port}']}}\nchain: [{{stage: mix}}]\n")
        # the reload re-reads the path: a FIFO again, which this test feeds once more (once the daemon
        # is done with the first reading: then its log says it publishes)
        assert wait_for(lambda: run.count("publishing stream") > 0, 30), "".join(run.lines)
        with open(fifo, "w") as f:
            f.write(f"capture: {{type: file, path: {rec}, realtime: true, loop: true}}\n"
                    f"output: {{endpoints: ['tcp://127.0.0.1:{free_port}']}}\nchain: [{{stage: mix}}]\n")
        run.wait_event("reload")
        run.wait_frames(10)
        info, _ = run.stop()
    finally:
        run.kill()
    assert events(info, "reload")[0]["changed"] == []
    assert_no_gap(info)


def test_a_slow_reload_does_not_starve_the_audio_or_the_watchdog(tmp_path: Path, free_port: int) -> None:
    """Issue 16, class 3: a valid config that takes seconds to parse (here ~250 KB of numbers under a
    scratch key, just under the size bound) was loaded on the main thread: the worker, starved of the
    GIL, fell to a few frames a second and the watchdog pings stopped for the whole parse. The parse now
    runs in a forked child: frames keep arriving every 20 ms or so, and so do the pings."""
    rec = tmp_path / "in.wav"
    make_recording(rec, channels=2, seconds=3.0)
    cfg = tmp_path / "voxd.yaml"
    write_cfg(cfg, rec, free_port, HEAVY)  # many numpy calls per frame: each one waited for the GIL
    with NotifySink() as sink:
        run = Running(cfg, free_port, tmp_path / "sub", seconds=90,
                      env={"NOTIFY_SOCKET": sink.address, "WATCHDOG_USEC": "600000"})
        try:
            run.wait_frames(20)
            pad = "x-pad:\n" + "".join("  - [" + ", ".join(["1.5"] * 80) + "]\n" for _ in range(600))
            write_cfg(cfg, rec, free_port, HEAVY + "  - {stage: gain, db: -6}\n")
            cfg.write_text(pad + cfg.read_text())
            assert 200_000 < cfg.stat().st_size < 256 * 1024
            t0, w0 = time.monotonic(), time.time()
            run.hup(timeout=120)
            t1, w1 = time.monotonic(), time.time()
            run.wait_frames(20)
            info, _ = run.stop()
        finally:
            run.kill()
        pings = [n.mono for n in sink.with_field("WATCHDOG") if t0 <= n.mono <= t1]
    reload_s = t1 - t0
    arrival = np.array(info["arrival"])
    during = arrival[(arrival >= w0) & (arrival <= w1)]  # frames that arrived while the reload ran
    rate = (len(during) - 1) / (during[-1] - during[0])
    print(f"\nreload took {reload_s:.2f} s; meanwhile {rate:.1f} frames/s arrived (real time: 50), the "
          f"longest wait between two {np.diff(during).max():.3f} s; {len(pings)} watchdog pings")
    assert reload_s > 1.0, "the config was meant to take a while to load"
    assert rate > 40 and np.diff(during).max() < 0.5
    assert len(pings) >= int(reload_s / 0.3) - 1, (pings, reload_s)
    assert_no_gap(info)


def test_a_file_source_that_stops_decoding_ends_with_stopping_and_65(tmp_path: Path, free_port: int) -> None:
    """Issue 16, class 5: ``voxd run`` on a truncated FLAC died mid-stream with a LibsndfileError
    traceback (exit 1). Now: the audio that decoded is published, then a ``stopping`` event carrying the
    error and exit status 65, then the daemon exits 65 with one line."""
    data = (ROOT / "demo" / "respeaker4-kitchen.flac").read_bytes()
    src = tmp_path / "truncated.flac"
    src.write_bytes(data[: len(data) // 3])
    cfg = tmp_path / "voxd.yaml"
    cfg.write_text(f"capture: {{type: file, path: {src}, realtime: false}}\n"
                   f"output: {{endpoints: ['tcp://127.0.0.1:{free_port}'], wait_for_subscriber_s: 20}}\n"
                   "chain: [{stage: mix}]\n")
    out = tmp_path / "sub"
    sub = subprocess.Popen([sys.executable, str(ROOT / "tests" / "subscriber.py"), f"tcp://127.0.0.1:{free_port}",
                            str(out), "--until", "stopping"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        daemon = subprocess.run([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert sub.wait(timeout=30) == 0
    finally:
        sub.kill()
    assert daemon.returncode == 65, daemon.stderr
    assert "Traceback" not in daemon.stderr
    last = daemon.stderr.strip().splitlines()[-1]
    assert last.startswith(f"voxd: {src}: cannot read audio: decoding stopped after 2.5"), last
    info = json.loads(Path(f"{out}.json").read_text())
    (stopping,) = events(info, "stopping")
    assert stopping["exit_status"] == 65 and "decoding stopped" in stopping["error"]
    assert len(info["seqs"]) == 127  # 2.54 s of audio in 20 ms frames


def test_reloads_move_the_wyoming_service_and_a_refused_one_leaves_it_where_it_was(
        tmp_path: Path, free_port: int) -> None:
    """Issue 19: ``output.wyoming`` added by a reload starts serving, a changed ``uri`` moves it, and a
    reload refused for another reason (its endpoint is taken) leaves the service on its old address."""
    import asyncio

    from wyoming.client import AsyncClient

    def chunks_from(uri: str) -> int:
        async def read() -> int:
            client = AsyncClient.from_uri(uri)
            await client.connect()
            n = 0
            while n < 5:
                event = await asyncio.wait_for(client.read_event(), 10)
                assert event is not None
                n += event.type == "audio-chunk"
            await client.disconnect()
            return n
        return asyncio.run(read())

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    rec, cfg, run = start(tmp_path, free_port, GAIN0)
    first, second = f"tcp://127.0.0.1:{free()}", f"tcp://127.0.0.1:{free()}"
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    try:
        write_cfg(cfg, rec, free_port, GAIN0, extra=f'  wyoming: {{uri: "{first}"}}\n')
        run.hup()
        assert chunks_from(first) == 5
        write_cfg(cfg, rec, free_port, GAIN0, extra=f'  wyoming: {{uri: "{second}"}}\n')
        run.hup()
        assert chunks_from(second) == 5
        # both the endpoint (taken) and the service change: refused as a whole
        write_cfg(cfg, rec, taken, GAIN0, extra=f'  wyoming: {{uri: "{first}"}}\n')
        run.hup(wait_for_log="reload refused")
        assert chunks_from(second) == 5
        info, err = run.stop()
    finally:
        squatter.close()
        run.kill()
    assert len(events(info, "reload")) == 2 and len(events(info, "reload_failed")) == 1
    assert_no_gap(info)
    assert "Traceback" not in err
