"""The systemd notify protocol (voxd.notify) against a test-owned datagram socket, path and abstract."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from tests.notify_sink import NotifySink
from voxd.notify import Notifier, WatchdogPinger, socket_address, watchdog_timeout_s


@pytest.fixture(params=["path", "abstract"])
def sink(request: pytest.FixtureRequest) -> Iterator[NotifySink]:
    with NotifySink(abstract=request.param == "abstract") as s:
        yield s


def test_messages_arrive_with_their_fields(sink: NotifySink) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": sink.address})
    assert n.enabled
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.ready(status="publishing\non tcp://127.0.0.1:7700")  # a newline must not split the datagram
    assert n.status("3 frames")
    assert n.watchdog()
    assert n.reloading()
    assert n.stopping(status="bye")
    assert n.send("X_RAW=1", X_OTHER=2)
    got = sink.wait_for(lambda m: "X_RAW" in m.fields, timeout=5)
    assert got is not None
    notes = sink.received
    assert [m.fields for m in notes[:3]] == [
        {"READY": "1", "STATUS": "publishing on tcp://127.0.0.1:7700"},
        {"STATUS": "3 frames"},
        {"WATCHDOG": "1"},
    ]
    reload_ = notes[3].fields
    assert reload_["RELOADING"] == "1" and set(reload_) == {"RELOADING", "MONOTONIC_USEC"}
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(reload_["MONOTONIC_USEC"]) <= after  # CLOCK_MONOTONIC in microseconds
    assert notes[4].fields == {"STOPPING": "1", "STATUS": "bye"}
    assert notes[5].raw == "X_RAW=1\nX_OTHER=2"
    assert all(m.pid == os.getpid() for m in notes)  # what NotifyAccess=main checks
    assert (n.sent, n.failures) == (6, 0)
    n.close()
    assert n.watchdog()  # a send after close opens a new socket


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for n in (Notifier.from_env(), Notifier.from_env({"NOTIFY_SOCKET": ""}), Notifier()):
        assert not n.enabled
        assert not n.ready("x") and not n.watchdog() and not n.stopping() and not n.reloading()
        assert (n.sent, n.failures) == (0, 0) and n._sock is None  # not even a socket is made
        assert n.watchdog_interval_s() is None


def test_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == b"\0abc"
    assert socket_address("@") is None
    assert socket_address("vsock:2:1234") is None  # systemd 253+ VM form: not supported, disabled
    n = Notifier("vsock:2:1234")
    assert not n.enabled and not n.ready()


def test_from_env_keeps_the_environment_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.enabled and n.watchdog_interval_s() == 4.0 and os.environ["NOTIFY_SOCKET"] == "@x"
    n = Notifier.from_env(unset=True)
    assert n.enabled and n.watchdog_interval_s() == 4.0
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "200000"}, 0.2),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "PID"}, 10.0),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_timeout_parsing(env: dict[str, str], expected: float | None) -> None:
    env = {k: str(os.getpid()) if v == "PID" else v for k, v in env.items()}
    assert watchdog_timeout_s(env) == expected
    n = Notifier.from_env({"NOTIFY_SOCKET": "@unused", **env})
    assert n.watchdog_interval_s() == expected
    assert WatchdogPinger(n, lambda: 0).period_s == (expected / 2 if expected else None)


def test_send_failures_never_raise(tmp_path) -> None:
    gone = Notifier(str(tmp_path / "no-such-socket"))
    assert gone.enabled and not gone.ready() and not gone.watchdog()
    assert gone.failures == 2 and gone.sent == 0
    nobody = Notifier(f"@voxd-test-unbound-{os.urandom(6).hex()}")
    assert not nobody.stopping() and nobody.failures == 1
    with NotifySink() as s:
        n = Notifier(s.address)
        assert n.ready()
    assert not n.watchdog() and n.failures == 1  # the receiver went away mid-run
    too_long = Notifier("/" + "x" * 200)  # longer than sun_path
    assert not too_long.ready() and too_long.failures == 1


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_pinger_pings_only_while_progress_advances(sink: NotifySink) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": sink.address, "WATCHDOG_USEC": "200000"})
    clock, frames = FakeClock(), [0]
    p = WatchdogPinger(n, lambda: frames[0], clock=clock)
    assert p.enabled and p.period_s == 0.1
    clock.t += 0.005  # checks are due at 100.0 + k * 0.1: keep the polls off those instants

    pinged = []
    for _ in range(40):  # 0.4 s in 10 ms steps, frames advancing: checks at 100.0, .1, .2, .3, .4
        frames[0] += 1
        clock.t += 0.01
        pinged.append(p.poll())
    assert sum(pinged) == 5  # once per period, not on every call
    for _ in range(40):  # stalled for 0.4 s = two watchdog timeouts
        clock.t += 0.01
        assert not p.poll()
    frames[0] += 1  # progress again: pings resume at the next check
    clock.t += 0.1
    assert p.poll()
    assert sink.wait_for(lambda m: len(sink.with_field("WATCHDOG")) >= 6, timeout=5) is not None
    assert p.pings == 6 and p.stalled_checks == 4 and len(sink.with_field("WATCHDOG")) == 6


def test_pinger_thread_stops_pinging_when_the_counter_stalls(sink: NotifySink) -> None:
    """Real time: WATCHDOG_USEC=200000 (pings every 0.1 s); the counter advances for 0.6 s, then stalls."""
    n = Notifier.from_env({"NOTIFY_SOCKET": sink.address, "WATCHDOG_USEC": "200000"})
    frames = [0]
    stalled = threading.Event()

    def worker() -> None:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            frames[0] += 1
            time.sleep(0.005)
        stalled.set()

    t = threading.Thread(target=worker)
    pinger = WatchdogPinger(n, lambda: frames[0]).start()
    t.start()
    try:
        assert stalled.wait(5)
        stall_at = time.monotonic()
        time.sleep(0.7)  # three and a half watchdog timeouts
    finally:
        pinger.stop()
        t.join()
    pings = sink.with_field("WATCHDOG")
    assert len([m for m in pings if m.mono < stall_at]) >= 3, "pings while frames flow"
    # the first check after the stall may still see the last frames; then none for > 2 timeouts
    late = [round(m.mono - stall_at, 3) for m in pings if m.mono > stall_at + pinger.period_s + 0.1]
    assert late == [], "no ping more than one period after the stall"


def test_pinger_tolerates_a_raising_progress_source(sink: NotifySink) -> None:
    n = Notifier(sink.address, watchdog_s=0.2)
    clock = FakeClock()

    def broken() -> int:
        raise RuntimeError("worker gone")

    p = WatchdogPinger(n, broken, clock=clock)
    assert not p.poll()  # counted as a stall: no ping, no exception
    assert p.pings == 0 and p.stalled_checks == 1


def test_pinger_is_inert_without_a_watchdog(sink: NotifySink) -> None:
    for n in (Notifier(sink.address), Notifier(None, watchdog_s=1.0)):
        p = WatchdogPinger(n, lambda: 1)
        assert not p.enabled and not p.poll()
        p.start()
        assert p._thread is None
        p.stop()
    assert sink.received == []
