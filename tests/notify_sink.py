"""A test-owned systemd notify socket: what ``NOTIFY_SOCKET`` points at when systemd is not there.

:class:`NotifySink` binds an ``AF_UNIX`` ``SOCK_DGRAM`` socket (a filesystem path, or an abstract name
``@voxd-test-<random>``), receives datagrams on a thread and keeps each one with its arrival time and
the sender's PID (``SO_PASSCRED``, as systemd checks ``NotifyAccess=``).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Notification:
    """One datagram: its fields, raw text, sender PID and arrival time (``time.monotonic()`` and
    ``time.time()``, seconds)."""

    fields: dict[str, str]
    raw: str
    pid: int
    mono: float
    wall: float


class NotifySink:
    """Receive notifications on a private socket; ``address`` is the value for ``NOTIFY_SOCKET``.

    ``abstract``: bind an abstract name (``@voxd-test-<random>``) instead of a path in a fresh
    temporary directory (kept short: ``sun_path`` holds 108 bytes).
    """

    def __init__(self, abstract: bool = False) -> None:
        self._dir: str | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            self.address = f"@voxd-test-{os.urandom(6).hex()}"
            self.sock.bind(b"\0" + self.address[1:].encode())
        else:
            self._dir = tempfile.mkdtemp(prefix="voxd-n")
            self.address = str(Path(self._dir) / "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.received: list[Notification] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        creds = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, creds)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, type_, payload in ancdata:
                if level == socket.SOL_SOCKET and type_ == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
            text = data.decode(errors="replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            note = Notification(fields, text, pid, time.monotonic(), time.time())
            with self._cond:
                self.received.append(note)
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[Notification], bool], timeout: float) -> Notification | None:
        """The first notification (received so far or within ``timeout`` s) that matches, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for note in self.received:
                    if pred(note):
                        return note
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait_field(self, key: str, value: str = "1", timeout: float = 10.0,
                   after: float = float("-inf")) -> Notification | None:
        """The first notification with ``key=value`` that arrived after monotonic time ``after``."""
        return self.wait_for(lambda n: n.fields.get(key) == value and n.mono > after, timeout)

    def with_field(self, key: str, value: str = "1") -> list[Notification]:
        """Every notification received so far that has ``key=value``."""
        with self._cond:
            return [n for n in self.received if n.fields.get(key) == value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NotifySink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
