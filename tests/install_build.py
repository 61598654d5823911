"""The wheel and the fresh venv of tests/test_install.py, built in the background from the start of the
session (a pytest plugin: tests/conftest.py loads it).

Building them is most of that module's time (``pip wheel`` a few seconds, a new venv and ``pip install
voxd-*.whl`` 30-40 s, nearly all of it CPU), and nothing else in the suite needs them. So when a session
has tests of tests/test_install.py, the :func:`install_build` fixture (autouse, session scope) starts
the build in a thread at the session's first test, at ``nice 19``: it uses the CPU the other tests leave
idle (many of them wait on real-time audio) and gives way to them when they want it. The module's
fixtures then wait for the steps they need (:meth:`InstallBuild.wheel`, :meth:`InstallBuild.venv`);
from that moment the build runs at normal priority where the system allows (root: CI), as it did when
the fixtures built it themselves, and each step's time limit counts from then. What is built, and how,
is unchanged: a copy of what a wheel build reads, ``pip wheel --no-deps --no-build-isolation``, then
``python -m venv`` and that venv's ``pip install voxd-*.whl``, with no PYTHONPATH or VIRTUAL_ENV.

The build stops (SIGSTOP) while a test with a virtual microphone runs (:data:`PAUSE_FOR`): their real-time
audio is timed against the wall clock, and the two CPUs of a small machine are not independent (a busy
one slows its sibling, whatever the niceness): the live echo test with a separate reference device lost
2 dB of ERLE, below its floor, once in four runs with the build beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what a wheel build reads (pyproject.toml, setup.py and the package-data they name)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "voxd", "plugins", "config", "systemd")
#: the niceness of the build while nobody waits for it
BACKGROUND_NICE = 19
#: the build is stopped while a test that uses this fixture runs
PAUSE_FOR = "make_virtual_mic"


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH and VIRTUAL_ENV: what a device owner's shell has."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


class InstallBuild:
    """The wheel (``dist/voxd-*.whl``) and a fresh venv with it installed, built by a thread."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.src = tmp_path_factory.mktemp("src")
        self.dist = tmp_path_factory.mktemp("dist")
        self.env_dir = tmp_path_factory.mktemp("venv")
        self.timings: dict[str, float] = {}  # step -> seconds
        self._wheel: Path | None = None
        self._wheel_done = threading.Event()
        self._venv_done = threading.Event()
        self._failure: str | None = None  # the first step that failed, and why
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._urgent_since: float | None = None  # when a fixture started waiting
        self._stopped = False
        self._paused = False
        self._thread = threading.Thread(target=self._build, name="install-build", daemon=True)

    # -------------------------------------------------------------------------------- the thread
    def start(self) -> InstallBuild:
        self._thread.start()
        return self

    def _build(self) -> None:
        try:
            t0 = time.monotonic()
            for name in BUILD_INPUTS:
                path = ROOT / name
                if path.is_dir():
                    shutil.copytree(path, self.src / name,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    shutil.copy2(path, self.src / name)
            self._step("pip wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps",
                                     "--no-build-isolation", "-q", "-w", str(self.dist), str(self.src)],
                       self.src, timeout=300)
            (whl,) = self.dist.glob("voxd-*.whl")
            self._wheel = whl
            self.timings["wheel"] = time.monotonic() - t0
        except Exception as e:  # reported by the fixture that waits
            self._fail(f"wheel: {type(e).__name__}: {e}")
        finally:
            self._wheel_done.set()
        try:
            if self._wheel is None:
                return
            t0 = time.monotonic()
            self._step("python -m venv", [sys.executable, "-m", "venv", str(self.env_dir)], self.env_dir,
                       timeout=120)
            self._step("pip install", [str(self.env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
                                       str(self._wheel)], self.env_dir, timeout=600)
            self.timings["venv"] = time.monotonic() - t0
        except Exception as e:
            self._fail(f"venv: {type(e).__name__}: {e}")
        finally:
            self._venv_done.set()

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why

    def _step(self, what: str, cmd: list[str], cwd: Path, timeout: float) -> None:
        """Run ``cmd`` (its own process group, niced while nobody waits); raise if it fails, or runs
        ``timeout`` s past its start or past the moment a fixture started waiting, whichever is later."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("stopped")
            background = self._urgent_since is None
            prefix = ["nice", "-n", str(BACKGROUND_NICE)] if background and shutil.which("nice") else []
            self._proc = subprocess.Popen([*prefix, *cmd], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True)
            proc = self._proc
            if self._paused:
                self._signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    since = self._urgent_since
                    if since is not None and time.monotonic() - max(since, started) > timeout:
                        self._kill(proc)
                        raise RuntimeError(f"{what}: no result {timeout} s after the test asked for it"
                                           ) from None
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode != 0:
            raise RuntimeError(f"{what}: exit {proc.returncode}\n{err}{out}")

    def _signal(self, sig: int) -> None:
        """``sig`` to the running step's process group (with the lock held)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def pause(self) -> None:
        with self._lock:
            if self._urgent_since is None and not self._paused:
                self._paused = True
                self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        with self._lock:
            if self._paused:
                self._paused = False
                self._signal(signal.SIGCONT)

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()

    # ---------------------------------------------------------------------------- the fixtures' side
    def _hurry(self) -> None:
        """Someone waits: the build (and every later step) at normal priority, and the time limits on."""
        self.resume()
        with self._lock:
            if self._urgent_since is None:
                self._urgent_since = time.monotonic()
            if self._proc is not None and self._proc.poll() is None:
                # lowering the niceness needs CAP_SYS_NICE (root, as CI runs): else it finishes niced
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PGRP, self._proc.pid, 0)

    def _wait(self, done: threading.Event) -> float:
        t0 = time.monotonic()
        if not done.is_set():
            self._hurry()
            done.wait()
        return time.monotonic() - t0

    def wheel(self) -> Path:
        waited = self._wait(self._wheel_done)
        assert self._wheel is not None, self._failure
        self._print("wheel", waited, f"{self._wheel.name}, {self._wheel.stat().st_size / 1e6:.2f} MB")
        return self._wheel

    def venv(self) -> Path:
        waited = self._wait(self._venv_done)
        assert self._failure is None, self._failure
        self._print("venv", waited, f"fresh venv + pip install {self._wheel.name if self._wheel else ''}")
        return self.env_dir

    def _print(self, step: str, waited: float, what: str) -> None:
        print(f"{what}: built in {self.timings.get(step, float('nan')):.1f} s in the background "
              f"(waited {waited:.1f} s for it)")

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._signal(signal.SIGKILL)
        self._thread.join(timeout=30)


_build: InstallBuild | None = None  # this session's, while it runs
_live: list[bool] = [False]  # whether the test running now uses PAUSE_FOR


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """Stop the build for the whole of a test (setup to teardown) that uses :data:`PAUSE_FOR`."""
    _live[0] = PAUSE_FOR in getattr(item, "fixturenames", ())
    if _build is not None and _live[0]:
        _build.pause()
    try:
        return (yield)
    finally:
        if _build is not None:
            _build.resume()
        _live[0] = False


@pytest.fixture(scope="session", autouse=True)
def install_build(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstallBuild | None]:
    """The background build, started at the session's first test when tests/test_install.py has tests
    in this session (None otherwise)."""
    global _build
    if not any(item.path.name == "test_install.py" for item in request.session.items):
        yield None
        return
    _build = InstallBuild(tmp_path_factory)
    if _live[0]:  # the session's first test is a live one
        _build.pause()
    _build.start()
    try:
        yield _build
    finally:
        _build.stop()
        _build = None
