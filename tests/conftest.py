"""Shared fixtures: running the real ``voxd`` command, test recordings, free ports, outside plugins."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, settings

# Hypothesis profiles. The fuzzers (tests/test_fuzz_*.py) ask for a number of examples with their own
# @settings; the profile decides whether those examples are random (a developer's run, "dev", which
# keeps finding new cases) or the same every time (CI: "ci", derandomized, so that a failure seen in
# CI reproduces on any machine with the same code). No example database in CI: a fresh clone has none,
# and the derandomized runs need none. `HYPOTHESIS_PROFILE=NAME` picks one explicitly.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# make_virtual_mic: a real PortAudio input device; install_build: tests/test_install.py's wheel and venv,
# built in the background from the session's first test
pytest_plugins = ["tests.virtual_mic", "tests.install_build"]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def run_voxd(*args: str, env: dict[str, str] | None = None, cwd: Path | str | None = None,
             timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    """Run ``python -m voxd ARGS`` (the installed package, as a user would) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "voxd", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=timeout, check=False, **kw)


@pytest.fixture
def voxd() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_voxd


def run_with_subscriber(cfg: Path, endpoint: str, out: Path, until: str = "end_of_stream") -> dict:
    """Start a subscriber process (tests/subscriber.py) on ``endpoint``, run ``voxd run --config cfg``
    to its end, and return what the subscriber recorded (``OUT.json``; payloads in ``OUT.pcm``)."""
    import json

    cmd = [sys.executable, str(ROOT / "tests" / "subscriber.py"), endpoint, str(out), "--until", until]
    sub = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        daemon = run_voxd("run", "--config", str(cfg), timeout=60)
        assert daemon.returncode == 0, daemon.stderr
        assert sub.wait(timeout=60) == 0
    finally:
        sub.kill()
    return json.loads(Path(f"{out}.json").read_text())


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_recording(path: Path, channels: int = 4, seconds: float = 2.0, rate: int = 16000,
                   seed: int = 0) -> np.ndarray:
    """A test recording: a chirp on every channel (small per-channel delays), noise and a DC offset.

    Returns the int16 samples written, ``(n, channels)``.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    sig = np.stack([0.3 * np.sin(2 * np.pi * (200 + 900 * t) * (t - 0.0002 * c)) for c in range(channels)], 1)
    x = sig + 0.05 * rng.standard_normal(sig.shape) + 0.02
    pcm = np.clip(np.rint(x * 32767), -32768, 32767).astype(np.int16)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return pcm


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "array.wav"
    make_recording(path)
    return path


@pytest.fixture(scope="session")
def outside_plugins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Install the fixture plugin distributions (their own pyproject and entry points) with pip into a
    private target directory, and return the environment that makes them visible to ``voxd``.

    pip --target rather than the shared venv so the broken plugin never leaks into other tests.
    """
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--no-index", "--target", str(target),
                    str(FIXTURES / "voxd-extra-plugin"), str(FIXTURES / "voxd-broken-plugin")],
                   check=True, capture_output=True, text=True, timeout=300)
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
