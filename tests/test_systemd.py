"""The systemd service files: ``systemd-analyze verify`` is silent, the sandbox rates "OK" (exposure
2.0 or lower), the sysusers entry makes a ``voxd`` user in ``audio``, the unit agrees with voxd (exit
statuses, command line), and ``make install-service DESTDIR=...`` lays the files out.

Needs the Debian package ``systemd`` (``make test`` installs it: ``DEB_PACKAGES``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from voxd.errors import EX_CONFIG, EX_DATAERR, EX_USAGE

UNIT = ROOT / "systemd" / "voxd.service"
SYSUSERS = ROOT / "systemd" / "voxd.sysusers.conf"
EXEC_PATH = "/usr/bin/voxd"  # the unit's ExecStart binary: make install links it to the venv's voxd
MAX_EXPOSURE = 2.0  # systemd-analyze security: 2.0 and below is "OK"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install the Debian package 'systemd' (make test does)"
    return path


def _env() -> dict[str, str]:
    # plain, untranslated output without colours or a pager, whatever the caller's terminal says
    return {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """``[Section] Key=Value`` lines of a unit file: section -> key -> values in order (keys repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(section, {}).setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    """``systemd-analyze verify`` warns (rc 0) about unknown keys, so any output at all fails.

    verify also checks that ExecStart's binary exists, and /usr/bin/voxd exists only after
    ``make install``: the test verifies a copy whose ExecStart runs this environment's ``voxd``
    console script instead; that path is the only difference (asserted).
    """
    voxd_bin = Path(sys.executable).parent / "voxd"
    assert os.access(voxd_bin, os.X_OK), f"{voxd_bin}: voxd is not installed in this environment"
    text = UNIT.read_text()
    copy = re.sub(rf"^ExecStart={re.escape(EXEC_PATH)} ", f"ExecStart={voxd_bin} ", text, flags=re.M)
    changed = [(a, b) for a, b in zip(text.splitlines(), copy.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].startswith(f"ExecStart={EXEC_PATH} "), changed
    (tmp_path / "voxd.service").write_text(copy)
    r = subprocess.run([_tool("systemd-analyze"), "verify", str(tmp_path / "voxd.service")],
                       capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_sandbox_exposure_is_ok() -> None:
    r = subprocess.run([_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(UNIT)],
                       capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120, check=False)
    out = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for voxd\.service:\s*([0-9.]+)\s+(\w+)", out)
    assert r.returncode == 0 and m, out
    assert float(m.group(1)) <= MAX_EXPOSURE and m.group(2) == "OK", out


def test_unit_agrees_with_voxd() -> None:
    """The settings the daemon relies on, and an ExecStart that voxd's command line accepts."""
    from voxd.cli import build_parser

    settings = unit_settings(UNIT.read_text())
    svc = {k: v[-1] for k, v in settings["Service"].items()}
    # exits that do not get better by restarting: failed, no restart loop
    assert svc["RestartPreventExitStatus"].split() == [str(s) for s in (EX_USAGE, EX_DATAERR, EX_CONFIG)]
    unit = {k: v[-1] for k, v in settings["Unit"].items()}
    assert int(unit["StartLimitBurst"]) >= 2 and int(unit["StartLimitIntervalSec"]) > 0  # others: not forever
    assert svc["Restart"] == "on-failure"
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert 0 < float(svc["WatchdogSec"]) <= 30
    assert float(svc["TimeoutStopSec"]) >= 2  # voxd stops within 2 s of SIGTERM
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["User"] == "voxd" and svc["SupplementaryGroups"] == "audio"
    assert svc["RuntimeDirectory"] == "voxd" and svc["ConfigurationDirectory"] == "voxd"
    argv = svc["ExecStart"].split()
    assert argv[0] == EXEC_PATH and argv[-1] == "/etc/voxd/voxd.yaml"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/voxd/voxd.yaml"


def _table(path: Path) -> dict[str, list[str]]:
    """An /etc/passwd or /etc/group file: name -> its ``:``-separated fields."""
    return {f[0]: f for f in (line.split(":") for line in path.read_text().splitlines())}


def test_sysusers_makes_a_voxd_user_in_audio(tmp_path: Path) -> None:
    """Applied to an empty root that already has Debian's ``audio`` group (GID 29)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "group").write_text("root:x:0:\naudio:x:29:pulse\n")
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    r = subprocess.run([_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)],
                       capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    # only the "Creating ..." progress lines: a malformed line would be reported (and skipped) here
    assert all(line.startswith("Creating ") for line in (r.stdout + r.stderr).splitlines()), r.stderr
    users, groups = _table(tmp_path / "etc" / "passwd"), _table(tmp_path / "etc" / "group")
    voxd = users["voxd"]
    assert 0 < int(voxd[2]) < 1000 and voxd[3] == groups["voxd"][2]  # a system user with its own group
    assert voxd[6].endswith("nologin")
    assert groups["audio"][2] == "29" and set(groups["audio"][3].split(",")) == {"pulse", "voxd"}


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("bindir", [None, "/usr/local/bin"])
def test_make_install_service_layout(tmp_path: Path, bindir: str | None) -> None:
    """``make install-service DESTDIR=...`` (the part of ``make install`` without the venv)."""
    extra = [f"BINDIR={bindir}"] if bindir else []
    r = _make("install-service", f"DESTDIR={tmp_path}", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    unit = tmp_path / "etc/systemd/system/voxd.service"
    expected = UNIT.read_text()
    if bindir:
        expected = expected.replace(f"ExecStart={EXEC_PATH} ", f"ExecStart={bindir}/voxd ")
    assert unit.read_text() == expected
    assert (tmp_path / "usr/lib/sysusers.d/voxd.conf").read_text() == SYSUSERS.read_text()
    assert (tmp_path / "usr/share/doc/voxd/README.md").is_file()
    config = tmp_path / "etc/voxd/voxd.yaml"
    assert config.read_text() == (ROOT / "config" / "default.yaml").read_text()
    assert oct(unit.stat().st_mode & 0o777) == "0o644"

    config.write_text("# the admin's own\n")  # a second install keeps the admin's config
    r = _make("install-service", f"DESTDIR={tmp_path}", *extra)
    assert r.returncode == 0 and "keeping" in r.stdout, r.stdout + r.stderr
    assert config.read_text() == "# the admin's own\n"

    r = _make("uninstall", f"DESTDIR={tmp_path}", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not unit.exists() and not (tmp_path / "usr/lib/sysusers.d/voxd.conf").exists()
    assert config.read_text() == "# the admin's own\n"  # the config is never removed
