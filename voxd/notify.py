"""The systemd notify protocol (``sd_notify(3)``), spoken directly over ``NOTIFY_SOCKET``.

A service with ``Type=notify`` tells systemd how it is doing by sending small ``KEY=VALUE`` datagrams
(newline separated) to the ``AF_UNIX`` ``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET``: a filesystem
path, or an abstract name written with a leading ``@``. Implemented here with the standard library
only (no python-systemd), following systemd's ``man/notify-selfcontained-example.py``.

What voxd sends:

- ``READY=1`` once audio flows (after the first published frame), with a one-line ``STATUS=``;
- ``WATCHDOG=1`` every half watchdog timeout, but only while the worker's frame counter advances
  (:class:`WatchdogPinger`): a stalled pipeline stops the pings and systemd kills and restarts it;
- ``RELOADING=1`` + ``MONOTONIC_USEC=`` when a SIGHUP reload starts, then ``READY=1`` when it is done
  (whether the new config was taken or refused: the service is running either way);
- ``STOPPING=1`` when a stop was asked (SIGTERM/SIGINT).

Outside systemd (``NOTIFY_SOCKET`` unset) every call is a cheap no-op. Sending never raises: a lost
notification must not stop the audio, so failures are logged at DEBUG and counted
(:attr:`Notifier.failures`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("voxd.notify")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(name: str) -> str | bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, or None when it is not usable.

    ``/path`` is a filesystem socket; ``@name`` an abstract one (Linux: a leading NUL byte instead of
    the ``@``). Other forms (e.g. ``vsock:``, systemd 253+ for VMs) are not supported: None.
    """
    if name.startswith("/"):
        return name
    if name.startswith("@") and len(name) > 1:
        return b"\0" + name[1:].encode()
    return None


def watchdog_timeout_s(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within (``WatchdogSec=``), in seconds, or None.

    Read from ``WATCHDOG_USEC`` (microseconds). ``WATCHDOG_PID``, when set, names the process the
    watchdog is meant for: if it is not this process (``pid``, default :func:`os.getpid`) the value was
    inherited from a parent and is ignored, as ``sd_watchdog_enabled(3)`` does. Ping at least every
    half of this (the usual period, :class:`WatchdogPinger`).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get(WATCHDOG_PID)
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def _clean(value: object) -> str:
    # One datagram is a list of KEY=VALUE lines: a newline inside a value (a multi-line status, an error
    # message) would end it early and could forge another field.
    return " ".join(str(value).splitlines())


class Notifier:
    """Sends notifications to systemd; a no-op when ``address`` is None (not started by systemd).

    ``address``: the ``NOTIFY_SOCKET`` value (``/path`` or ``@abstract``). ``watchdog_s``: the watchdog
    timeout in seconds (None: no watchdog). Usually built with :meth:`from_env`. Safe to use from any
    thread: each message is one datagram.
    """

    def __init__(self, address: str | None = None, watchdog_s: float | None = None) -> None:
        self.address = address
        self._target = socket_address(address) if address else None
        if address and self._target is None:
            log.debug("%s=%r is not a path or @abstract name: notifications disabled", NOTIFY_SOCKET, address)
        self.watchdog_s = watchdog_s
        self.failures = 0  # sends that did not go out (socket gone, full, refused)
        self.sent = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, unset: bool = False) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` describes (a no-op one when unset), with the watchdog timeout
        from ``$WATCHDOG_USEC``/``$WATCHDOG_PID``.

        ``unset``: remove the three variables from :data:`os.environ` afterwards so child processes do
        not notify in our name (``sd_notify``'s ``unset_environment``); off by default, as there.
        """
        env = os.environ if environ is None else environ
        notifier = cls(env.get(NOTIFY_SOCKET) or None, watchdog_timeout_s(env))
        if unset:
            for key in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
                os.environ.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere (started by systemd with ``Type=notify``)."""
        return self._target is not None

    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout in seconds (``WatchdogSec=``), or None when systemd set no watchdog.
        Pings must come at least this often; :class:`WatchdogPinger` sends one every half of it."""
        return self.watchdog_s if self.enabled else None

    def send(self, *lines: str, **fields: object) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines: ``send(READY=1, STATUS="...")`` or raw
        ``send("READY=1")``. Returns True when it went out; never raises (failures are counted)."""
        if self._target is None:
            return False
        parts = [_clean(line) for line in lines] + [f"{key}={_clean(value)}" for key, value in fields.items()]
        data = "\n".join(parts).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # sendto each time (no connect): systemd may re-create its socket (daemon-reexec)
                self._sock.sendto(data, self._target)
            except OSError as exc:
                self.failures += 1
                log.debug("notify %r to %s failed: %s", data[:80], self.address, exc)
                return False
            self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up or a reload finished), with an optional one-line ``STATUS=``."""
        return self.send(READY=1, **({"STATUS": status} if status is not None else {}))

    def status(self, text: str) -> bool:
        """``STATUS=`` one line shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive ping. Prefer :class:`WatchdogPinger`, which pings only while the
        pipeline makes progress."""
        return self.send(WATCHDOG=1)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (``CLOCK_MONOTONIC`` now, microseconds), which systemd
        uses to match the reload it asked for; follow with :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        extra = {"STATUS": status} if status is not None else {}
        return self.send(RELOADING=1, MONOTONIC_USEC=usec, **extra)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutting down (a stop was asked)."""
        return self.send(STOPPING=1, **({"STATUS": status} if status is not None else {}))

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class WatchdogPinger:
    """Feeds systemd's watchdog only while the pipeline makes progress.

    Every ``period_s`` (default: half the watchdog timeout) it reads ``progress()`` (e.g. the worker's
    count of published frames) and sends ``WATCHDOG=1`` only if the value changed since the previous
    check. When the worker stalls (a stage hangs, a deadlock), pings stop and systemd kills the
    service after ``WatchdogSec`` (and ``Restart=on-failure`` starts it again): between a stall and the
    kill there are at most ``period_s + WatchdogSec`` seconds.

    Drive it either from a loop that already wakes often (call :meth:`poll`, cheap when not due), or
    with its own thread (:meth:`start` / :meth:`stop`). Disabled (both no-ops) when the notifier has
    no watchdog. ``clock``: monotonic seconds (for tests).
    """

    def __init__(self, notifier: Notifier, progress: Callable[[], int], period_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        timeout = notifier.watchdog_interval_s()
        self.notifier = notifier
        self.progress = progress
        self.period_s = period_s if period_s is not None else (timeout / 2 if timeout else None)
        self.clock = clock
        self.pings = 0  # WATCHDOG=1 sent
        self.stalled_checks = 0  # checks that found no progress (pings withheld)
        self._last: int | None = None
        self._next_due = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a watchdog to feed."""
        return self.notifier.enabled and self.period_s is not None and self.period_s > 0

    def poll(self) -> bool:
        """Check progress if a period has passed since the previous check, and ping if it advanced.
        Returns True when a ping was sent. Call it at least every ``period_s / 2`` or so."""
        if not self.enabled:
            return False
        assert self.period_s is not None
        now = self.clock()
        if now < self._next_due:
            return False
        # a late call (a long pause) does not bunch checks up: next one a full period from now
        self._next_due = max(self._next_due + self.period_s, now + self.period_s / 2)
        return self._check()

    def _check(self) -> bool:
        value: int | None
        try:
            value = self.progress()
        except Exception as exc:  # a broken progress source is a stall, not a crash of the main loop
            log.debug("watchdog progress check failed: %s", exc)
            value = self._last
        if value is None or value == self._last:
            self.stalled_checks += 1
            if self._last is not None:
                log.debug("watchdog: no progress since the last check (%s); not pinging", value)
            return False
        self._last = value
        self.pings += 1
        return self.notifier.watchdog()

    def start(self) -> WatchdogPinger:
        """Run the checks on a daemon thread (``voxd-watchdog``) until :meth:`stop`; no-op when disabled."""
        if self.enabled and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="voxd-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread started by :meth:`start` (pings end with it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert self.period_s is not None
        while not self._stop.wait(max(0.0, self._next_due - self.clock())):
            self.poll()
