"""The real ``voxd run`` talking to a test-owned ``NOTIFY_SOCKET`` (path and abstract name).

- ``READY=1`` only after the first published frame: a probe stage holds the first frame for 1.5 s and
  records when it let it go; READY must come later (not when the source merely started).
- ``STOPPING=1`` after SIGTERM, then exit 0.
- With ``WATCHDOG_USEC`` set, ``WATCHDOG=1`` pings come while frames flow and stop when the worker
  stalls (the probe stage sleeps forever after N frames), so systemd would kill the service.
- ``RELOADING=1`` + ``MONOTONIC_USEC`` then ``READY=1`` around a SIGHUP reload, valid or not.
- Every notification comes from the daemon's main PID (what ``NotifyAccess=main`` requires).

The probe stage is a plugin written to a temporary directory at test time (a package plus a
``.dist-info`` with its ``voxd`` entry point) and put on the daemon's ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_recording
from tests.notify_sink import Notification, NotifySink

PROBE = '''
"""Test-only stage: holds the first frame, or stalls for good after N frames; marks both in files."""

from __future__ import annotations

import time
from pathlib import Path

from voxd.hookspecs import hookimpl
from voxd.stage import Stage, StageParams


class ProbeParams(StageParams):
    marker_dir: str
    hold_first_s: float = 0.0
    stall_after: int | None = None


class NotifyProbe(Stage):
    kind = "notify_probe"
    Params = ProbeParams

    def open(self, ctx):
        self.count = 0

    def _mark(self, name):
        # CLOCK_MONOTONIC is system-wide: the test compares it with its own time.monotonic()
        (Path(self.params.marker_dir) / name).write_text(repr(time.monotonic()))

    def process(self, frame):
        if self.count == 0 and self.params.hold_first_s > 0:
            time.sleep(self.params.hold_first_s)
            self._mark("first")
        self.count += 1
        if self.params.stall_after is not None and self.count > self.params.stall_after:
            self._mark("stall")
            while True:  # a hung stage: the worker never comes back
                time.sleep(3600)
        return frame


@hookimpl
def voxd_register_stages(registry):
    registry.add(NotifyProbe)
'''


@pytest.fixture(scope="module")
def probe_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("probe-site")
    (site / "voxd_notify_probe").mkdir()
    (site / "voxd_notify_probe" / "__init__.py").write_text(PROBE)
    info = site / "voxd_notify_probe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: voxd-notify-probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[voxd]\nnotify_probe = voxd_notify_probe\n")
    return site


@pytest.fixture(params=["path", "abstract"])
def sink(request: pytest.FixtureRequest) -> Iterator[NotifySink]:
    with NotifySink(abstract=request.param == "abstract") as s:
        yield s


class Daemon:
    """``python -m voxd run --config CFG`` with NOTIFY_SOCKET (and more) in its environment."""

    def __init__(self, tmp: Path, probe_site: Path, sink: NotifySink, port: int, probe: str,
                 env: dict[str, str] | None = None) -> None:
        rec = tmp / "rec.wav"
        make_recording(rec, channels=2, seconds=1.0)
        self.markers = tmp / "markers"
        self.markers.mkdir()
        self.cfg = tmp / "run.yaml"
        self.cfg.write_text(
            f"capture: {{type: file, path: {rec}, realtime: true, loop: true}}\n"
            f"chain:\n  - {{stage: notify_probe, marker_dir: '{self.markers}', {probe}}}\n"
            "  - {stage: mix}\n"
            f"output: {{endpoints: ['tcp://127.0.0.1:{port}']}}\n")
        full_env = {**os.environ, "NOTIFY_SOCKET": sink.address, **(env or {}),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(probe_site), os.environ.get("PYTHONPATH"))
                                                  if p)}
        full_env.pop("WATCHDOG_PID", None)
        if "WATCHDOG_USEC" not in (env or {}):
            full_env.pop("WATCHDOG_USEC", None)
        self.log = tmp / "daemon.log"
        self.started = time.monotonic()
        with self.log.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(self.cfg)],
                                         cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=err)

    def marker(self, name: str, timeout: float = 30.0) -> float:
        """The monotonic time the probe wrote in marker ``name`` (waits for it)."""
        path = self.markers / name
        deadline = time.monotonic() + timeout
        while not path.exists() or not path.read_text():
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no '{name}' marker: {self.stderr()}"
            time.sleep(0.02)
        return float(path.read_text())

    def stderr(self) -> str:
        return self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _from_daemon(sink: NotifySink, d: Daemon) -> None:
    strangers = [(n.pid, n.raw) for n in sink.received if n.pid != d.proc.pid]
    assert strangers == [], "notifications must come from the main PID (NotifyAccess=main)"


def _wait(sink: NotifySink, d: Daemon, key: str, after: float = float("-inf"),
          timeout: float = 30.0) -> Notification:
    note = sink.wait_field(key, "1", timeout=timeout, after=after)
    assert note is not None, f"no {key}=1 (got {[n.raw for n in sink.received]}): {d.stderr()}"
    return note


def test_ready_after_the_first_frame_and_stopping_on_sigterm(tmp_path: Path, probe_path: Path,
                                                              sink: NotifySink, free_port: int) -> None:
    d = Daemon(tmp_path, probe_path, sink, free_port, "hold_first_s: 1.5")
    try:
        ready = _wait(sink, d, "READY")
        first = d.marker("first")
        assert ready.mono > first, (f"READY=1 came {first - ready.mono:.3f} s before the first frame "
                                    "left the chain: it must wait for the first published frame")
        status = sink.wait_for(lambda n: bool(n.fields.get("STATUS")), timeout=5)
        assert status is not None, "a one-line STATUS= summary"
        assert sink.with_field("STOPPING") == []

        time.sleep(0.5)
        sigterm = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        stopping = _wait(sink, d, "STOPPING", after=sigterm, timeout=5)
        assert d.proc.wait(timeout=5) == 0, d.stderr()
        assert stopping.mono - sigterm < 2.0
        assert time.monotonic() - sigterm < 5.0
        _from_daemon(sink, d)
    finally:
        d.kill()


def test_watchdog_pings_stop_when_the_worker_stalls(tmp_path: Path, probe_path: Path, sink: NotifySink,
                                                    free_port: int) -> None:
    timeout_s = 0.5  # WATCHDOG_USEC: pings every 0.25 s while frames flow
    d = Daemon(tmp_path, probe_path, sink, free_port, "stall_after: 200",  # 2 s of 10 ms chain frames
               env={"WATCHDOG_USEC": str(int(timeout_s * 1e6))})
    try:
        ready = _wait(sink, d, "READY")
        stall = d.marker("stall")
        time.sleep(4 * timeout_s)  # four watchdog timeouts after the stall
        assert d.proc.poll() is None, d.stderr()
        pings = sink.with_field("WATCHDOG")
        flowing = [n for n in pings if ready.mono <= n.mono < stall]
        assert len(flowing) >= 3, f"pings while frames flow: {len(flowing)} in {stall - ready.mono:.2f} s"
        # one check after the stall may still see the last frames (up to a period plus the main
        # loop's wake-up interval later); after that, none for 2.5 watchdog timeouts
        late = [round(n.mono - stall, 3) for n in pings if n.mono > stall + timeout_s + 0.25]
        assert late == [], f"WATCHDOG=1 after the worker stalled (s after the stall): {late}"
        _from_daemon(sink, d)
    finally:
        d.kill()


def test_reload_sends_reloading_then_ready(tmp_path: Path, probe_path: Path, sink: NotifySink,
                                           free_port: int) -> None:
    d = Daemon(tmp_path, probe_path, sink, free_port, "hold_first_s: 0")
    try:
        _wait(sink, d, "READY")
        for text in (d.cfg.read_text(), "chain: [{stage: no_such_stage}]\n"):  # a good reload, a bad one
            d.cfg.write_text(text)
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGHUP)
            reloading = _wait(sink, d, "RELOADING", after=t0, timeout=10)
            usec = int(reloading.fields["MONOTONIC_USEC"])
            assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            # READY=1 again whether the new config was taken or refused: the service keeps running
            _wait(sink, d, "READY", after=reloading.mono, timeout=15)
            assert d.proc.poll() is None, d.stderr()
        _from_daemon(sink, d)
    finally:
        d.kill()
