"""Installable as a device owner expects (issue 19, acceptance 3): the wheel, installed alone into a fresh
venv, with no repository around it, lists the shipped configs, writes one and ``voxd check``s it.

The wheel is built from a copy of what a build reads (so the checkout gets no build/ or egg-info), then
``pip install voxd-*.whl`` into a new venv takes its dependencies from the package index as on a device
(PyAudio builds from source where pip has no wheel of it: gcc, python3-dev and portaudio19-dev, which
``make`` installs; README "Install with pip"). Every voxd command then runs from a directory outside the
repository, with the venv's own ``voxd``. About 40-90 s, most of it pip: tests/install_build.py builds
the wheel and the venv in the background from the session's first test, so a full run rarely waits.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.install_build import InstallBuild, clean_env
from voxd.commands.configs import SHIPPED, SYSTEMD_FILES

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def wheel(install_build: InstallBuild) -> Path:
    """``pip wheel --no-deps`` of a copy of what a build reads (tests/install_build.py)."""
    return install_build.wheel()


@pytest.fixture(scope="module")
def venv(install_build: InstallBuild) -> Path:
    """A fresh venv with the wheel and what it depends on, nothing else (tests/install_build.py)."""
    return install_build.venv()


def test_the_wheel_holds_the_shipped_configs_and_the_systemd_files(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    configs = {n.removeprefix("voxd_data/config/").removesuffix(".yaml") for n in names
               if n.startswith("voxd_data/config/")}
    assert configs == set(SHIPPED)  # demo.yaml (the repository's recording) stays out
    for name in SHIPPED:
        data = zipfile.ZipFile(wheel).read(f"voxd_data/config/{name}.yaml")
        assert data == (ROOT / "config" / f"{name}.yaml").read_bytes()
    assert {f"voxd_data/systemd/{f}" for f in SYSTEMD_FILES.values()} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "demo/", "config/", "train/"))]


def test_a_fresh_venv_lists_writes_and_checks_a_config(venv: Path, tmp_path: Path) -> None:
    voxd = str(venv / "bin" / "voxd")
    device = tmp_path / "etc-voxd"  # nowhere near the repository
    device.mkdir()
    located = _run([str(venv / "bin" / "python"), "-c", "import voxd, voxd_data.config as c; "
                    "print(voxd.__file__); print(list(c.__path__)[0])"], cwd=device, timeout=60)
    assert located.returncode == 0, located.stderr
    assert all(line.startswith(str(venv)) for line in located.stdout.split()), located.stdout

    listed = _run([voxd, "config", "list"], cwd=device, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[: len(SHIPPED)]] == list(SHIPPED)

    # as the README says it, in a shell
    shown = _run(["bash", "-c", f"{voxd} config show respeaker-4mic-hat > voxd.yaml"], cwd=device, timeout=60)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert (device / "voxd.yaml").read_bytes() == (ROOT / "config" / "respeaker-4mic-hat.yaml").read_bytes()

    checked = _run([voxd, "check", "voxd.yaml"], cwd=device, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == ("voxd.yaml: ok: 4 ch in, 1 ch out at 16000 Hz; delay 10 ms; chain: vad -> stft "
                              "-> noise -> doa -> beamform -> wiener -> istft\n")

    unit = _run([voxd, "config", "unit"], cwd=device, timeout=60)
    assert unit.stdout == (ROOT / "systemd" / "voxd.service").read_text()


def test_every_shipped_config_checks_from_the_wheel_or_names_its_extra(venv: Path, tmp_path: Path) -> None:
    """The configs need nothing but the wheel (and libspeexdsp1 for the aec stage), except the two that
    say they need the dfn3 extra: those fail with one line naming it."""
    voxd = str(venv / "bin" / "voxd")
    for name, description in SHIPPED.items():
        shown = _run([voxd, "config", "show", name], cwd=tmp_path, timeout=60)
        assert shown.returncode == 0, shown.stderr
        (tmp_path / f"{name}.yaml").write_text(shown.stdout)
        r = _run([voxd, "check", f"{name}.yaml"], cwd=tmp_path, timeout=120)
        if "voxd[dfn3]" in description:
            assert r.returncode == 78 and "Traceback" not in r.stderr, (name, r.stderr)
            assert "voxd[dfn3]" in r.stderr, (name, r.stderr)
        else:
            assert r.returncode == 0, (name, r.stderr)
