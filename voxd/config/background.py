"""Loading a config off the daemon's audio path: in a forked child process.

A reload's parse is pure Python (PyYAML, the builder in :mod:`voxd.config.yamlload`): done on a thread
of the daemon it would hold the GIL, and the worker thread, which releases and re-takes the GIL around
every numpy call, would wait for it each time — a valid 50 MB config once took 43 s to load on the main
thread while publishing fell to 6 frames a second. So the daemon forks: the child (a copy-on-write
image of the daemon with every module already imported, so it starts in milliseconds) loads and
validates the config, sends the result back pickled through a pipe and exits; the parent only polls
the pipe. The child touches nothing the daemon's other threads may hold (no ZeroMQ socket, no audio
device, no logging), and a child that does not answer within ``timeout_s`` is killed.

Size and expansion are bounded too (:data:`voxd.config.load.MAX_CONFIG_BYTES`,
:data:`voxd.config.yamlload.MAX_VALUES`), so a reload takes seconds at most.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import time
from collections.abc import Sequence

from voxd.config.load import LoadedConfig, load_config
from voxd.errors import ConfigError

#: How long a reload may take to load and validate its config before the child is killed (s).
LOAD_TIMEOUT_S = 60.0


class BackgroundLoad:
    """``load_config(path, overrides)`` running in a forked child; call :meth:`poll` until it answers.

    Create it on the thread that will poll it. :meth:`cancel` kills the child (a stop request during a
    reload). The answer is the :class:`LoadedConfig`, or the config's error lines (a list of str).
    """

    def __init__(self, path: str, overrides: Sequence[str], timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.path = path
        self._deadline = time.monotonic() + timeout_s
        self._timeout_s = timeout_s
        self._buf = bytearray()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: load, answer, leave without running the parent's exit handlers
            status = 1
            try:
                os.close(read_fd)
                status = _child(path, tuple(overrides), write_fd)
            finally:
                os._exit(status)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._pid: int | None = pid
        self._fd: int | None = read_fd

    def poll(self) -> LoadedConfig | list[str] | None:
        """The answer once the child has sent it (and exited), else None. Never raises."""
        if self._fd is None:
            raise RuntimeError("poll() after the answer was taken")
        try:
            while chunk := os.read(self._fd, 1 << 16):
                self._buf += chunk
        except BlockingIOError:  # nothing more yet
            if time.monotonic() < self._deadline:
                return None
            self.cancel()
            return [f"{self.path}: loading the config took longer than {self._timeout_s:g} s: refused"]
        except OSError as exc:
            self.cancel()
            return [f"{self.path}: reading the config loader's answer failed: {exc}"]
        # end of file: the child has written everything and exited (or died)
        status = self._reap()
        os.close(self._fd)
        self._fd = None
        try:
            kind, value = pickle.loads(bytes(self._buf))
        except Exception:
            return [f"{self.path}: the config loader died ({_describe(status)}) before answering"]
        return value if kind == "ok" else list(value)

    def cancel(self) -> None:
        """Kill the child and forget it (idempotent)."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):  # already gone: reaped just below
                os.kill(self._pid, signal.SIGKILL)
            self._reap()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _reap(self) -> int | None:
        if self._pid is None:
            return None
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        return status


def _describe(status: int | None) -> str:
    if status is None:
        return "no status"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _child(path: str, overrides: tuple[str, ...], fd: int) -> int:
    """Runs in the forked child: returns its exit status."""
    # systemd (KillMode=control-group) or a terminal's ^C reach the child too: die at once, quietly;
    # the parent's Python handlers, copied here, would only set flags nobody reads
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        answer: tuple[str, object] = ("ok", load_config(path, overrides))
    except ConfigError as exc:
        answer = ("error", list(exc.lines))
    except BaseException as exc:  # a bug in a plugin's validator, MemoryError...: refused, reported
        answer = ("error", [f"{path}: loading failed: {type(exc).__name__}: {exc}"])
    try:
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # a value that cannot cross a process boundary (a plugin's own object)
        data = pickle.dumps(("error", [f"{path}: loading failed: {type(exc).__name__}: {exc}"]))
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return 0
