"""Acceptance (issue 8, point 2): systemd/voxd.service under a real systemd.

A private ``systemd --user`` manager runs the unit (copied verbatim; everything a user manager or the
test's file locations need differently is in a drop-in, each setting with its reason). The test starts
the service and sees it active only after audio flows (READY), reloads it (the chain changes, no ``seq``
gap, still ``active``), stalls the worker of a second instance (the fixture plugin's ``sleep`` stage)
and sees the watchdog kill and restart it, stops it within 2 s, and checks that a bad config leaves a
third instance ``failed`` (exit 78) without restarts.
A fourth test (issue 19) gives the manager a private journald and checks with ``journalctl -p warning``
that the service's warnings and errors reach the journal at priorities 4 and 3.

How the manager is contained (this must never leak into the machine):

- cgroups: a user manager treats the cgroup it starts in as its root and moves every process in it into
  ``<root>/init.scope``. Started in the machine's root cgroup, that is every process of the machine. So
  a wrapper first moves itself into a fresh cgroup (``voxd-test-*``) in the hierarchies systemd tracks
  processes in (v1 ``name=systemd`` and/or cgroup2: hybrid and pure v2 layouts), refusing to go on if
  that failed; teardown kills what is left in it, removes it in every hierarchy, and asserts that
  nothing is left and that this process and PID 1 are still where they were.
- mounts: ``unshare --mount --propagation private``; inside, a tmpfs on ``/run/systemd`` with
  ``/run/systemd/system`` (else: "not booted with systemd") and the ``inaccessible`` nodes PID 1 makes
  at boot (the sandbox bind-mounts them over hidden paths; missing: exit 226/NAMESPACE), a tmpfs on
  ``$XDG_RUNTIME_DIR`` (under ``tmp_path``, not ``/run/user``, which ProtectHome= hides), and a pty on
  ``/dev/console`` for the manager's log. All gone with the namespace when the manager exits;
  ``systemctl`` runs in it through ``nsenter``.
- journal: there is none in the namespace (services log to files, ``StandardOutput=append:``) unless a
  test calls ``start_journal``: a ``systemd-journald`` for a namespace of its own (``voxdtest``: its own
  config file, written to the namespace's ``/run/systemd``; no kernel log), socket-activated on
  ``/run/systemd/journal/stdout``, where the manager connects ``StandardOutput=journal`` (given no socket,
  journald would also open the audit netlink socket and set the kernel's audit state). It writes its
  files to ``$LOGS_DIRECTORY`` under ``tmp_path``; tmpfs mounts hide ``/run/log`` and
  ``/var/log/journal`` in the namespace all the same. It is the test process's child, and is stopped
  (SIGTERM) before the cgroups are removed.
- units: ``SYSTEMD_UNIT_PATH`` holds only the test's unit dir and the distribution's user units (for
  ``exit.target``), and the manager starts an empty target: the machine's enabled user units
  (pulseaudio, gpg-agent sockets...) stay out. XDG dirs are all under ``tmp_path``.

Needs root, ``unshare``/``nsenter`` (util-linux) and ``systemd`` (``make test`` installs it). Takes about
40 s: most of it is the stall instance's RestartSec=5 and the daemon start-ups; the journal test 4 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import voxd
from tests.conftest import ROOT, make_recording
from voxd.errors import EX_CONFIG

UNIT = ROOT / "systemd" / "voxd.service"

SYSTEMD_CANDIDATES = (Path("/lib/systemd/systemd"), Path("/usr/lib/systemd/systemd"))
JOURNALD_CANDIDATES = (Path("/lib/systemd/systemd-journald"), Path("/usr/lib/systemd/systemd-journald"))
JOURNAL_NAMESPACE = "voxdtest"  # the private journald's: its own config file, no kernel log
HOME_MASKED = (Path("/root"), Path("/home"), Path("/run/user"))  # what ProtectHome=yes hides
TMP_PRIVATE = (Path("/tmp"), Path("/var/tmp"))  # what PrivateTmp=yes replaces
CG_TRACKING = "name=systemd"  # the v1 hierarchy systemd tracks processes in (hybrid and legacy layouts)

CHAIN_0DB = "  - {stage: select, channels: [0]}\n  - {stage: gain, db: 0}\n"
CHAIN_6DB = "  - {stage: select, channels: [0]}\n  - {stage: gain, db: -6}\n"
STALL_MS = 600_000  # the sleep stage holds each frame this long: a hung worker


# ------------------------------------------------------------------------------------------- helpers
def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, recording: Path, port: int, chain: str, wait_for_subscriber_s: float = 0
                 ) -> None:
    path.write_text(f"""capture: {{type: file, path: {recording}, realtime: true, loop: true}}
output:
  endpoints: ["tcp://127.0.0.1:{port}"]
  frame_ms: 20
  stats_interval_s: 1
  wait_for_subscriber_s: {wait_for_subscriber_s}
chain:
{chain}""")


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _outermost(paths: set[Path]) -> list[Path]:
    return sorted(p for p in paths if not any(q != p and q in p.parents for q in paths))


# ------------------------------------------------------------------------------------------- cgroups
def _cgroup_mounts() -> list[tuple[Path, str, set[str]]]:
    """(mount point, fs type, super options) of the cgroup and cgroup2 mounts here."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fs = post.split()
        if fs and fs[0] in ("cgroup", "cgroup2"):
            out.append((Path(pre.split()[4]), fs[0], set(fs[2].split(",")) if len(fs) > 2 else set()))
    return out


def _own_cgroup(fstype: str, opts: set[str]) -> str | None:
    """This process's cgroup in the hierarchy mounted with ``fstype``/``opts`` (None: not found)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if (fstype == "cgroup2" and hid == "0") or (fstype == "cgroup" and hid != "0"
                                                      and opts & set(ctrls.split(","))):
            return path
    return None


def _procs(tree: Path) -> set[int]:
    pids: set[int] = set()
    for procs in tree.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):  # a cgroup removed while we walk
            pids.update(int(p) for p in procs.read_text().split())
    return pids


class ScratchCgroup:
    """A fresh cgroup for the manager, in every hierarchy systemd tracks processes in."""

    def __init__(self) -> None:
        self.name = f"voxd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        mounts = _cgroup_mounts()
        tracking: dict[str, Path] = {}  # one mount per hierarchy (the same one may be mounted twice)
        for m, fstype, opts in mounts:
            if fstype == "cgroup2" or CG_TRACKING in opts:
                tracking.setdefault(fstype if fstype == "cgroup2" else CG_TRACKING, m)
        assert tracking, (f"no cgroup2 or v1 {CG_TRACKING} hierarchy mounted (have: {mounts}): cannot "
                          "contain a systemd --user manager")
        self.dirs = [m / self.name for m in tracking.values()]

    def create(self) -> None:
        for d in self.dirs:
            d.mkdir()

    def leftovers(self) -> list[Path]:
        return [m / self.name for m, _, _ in _cgroup_mounts() if (m / self.name).exists()]

    def remove(self) -> list[Path]:
        """Kill what is left in the cgroup (all of it started by this test), move stragglers back to our
        own cgroup as run.sh did, and remove it, deepest first, in every hierarchy the manager made it in
        (it may mirror its tree into v1 controller hierarchies). Returns what could not be removed."""
        for mount, fstype, opts in _cgroup_mounts():
            top = mount / self.name
            if not top.is_dir():
                continue
            for _ in range(50):
                pids = _procs(top)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            own = _own_cgroup(fstype, opts)
            home = mount / own.lstrip("/") if own is not None else mount
            home = home if home.is_dir() else mount
            for pid in _procs(top):
                with contextlib.suppress(OSError):
                    (home / "cgroup.procs").write_text(str(pid))
            subdirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*subdirs, top]:
                for _ in range(20):  # a just-killed process may keep a cgroup busy for a moment
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)
        return self.leftovers()


# ------------------------------------------------------------------------------------------- manager
OUTER_SH = """#!/bin/sh
# Usage: outer.sh CGROUP_NAME SYSTEMD PYTHON CONSOLE_TTY RUNTIME_DIR CGROUP_DIR...
# Moves itself (and so everything it starts) into the test's cgroups, and refuses to start the manager
# anywhere else: a user manager would move every process of its starting cgroup into its init.scope.
set -eu
name=$1 systemd=$2 python=$3 console=$4 runtime=$5
shift 5
for d in "$@"; do echo $$ > "$d/cgroup.procs"; done
while IFS=: read -r _ ctrl path; do
  case $ctrl in
    "" | name=systemd)
      case $path in */"$name" | */"$name"/*) ;; *) echo "still in $ctrl:$path" >&2; exit 90;; esac;;
  esac
done < /proc/$$/cgroup
exec unshare --mount --propagation private "${0%/*}/inner.sh" "$systemd" "$python" "$console" "$runtime"
"""

INNER_SH = """#!/bin/sh
# Usage: inner.sh SYSTEMD PYTHON CONSOLE_TTY RUNTIME_DIR, in a private mount namespace. Sets up what
# PID 1 would have, then becomes the manager (exec: the same PID all along, so the test can wait for it).
set -eu
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir /run/systemd/system
# $XDG_RUNTIME_DIR: the manager removes a stopped unit's RuntimeDirectory= only from a tmpfs ("Attempted
# to remove disk file system ..., and we can't allow that")
mount -t tmpfs -o mode=0700 tmpfs "$4"
# the nodes PID 1 makes at boot; the sandbox (ProtectKernelLogs=, InaccessiblePaths=...) mounts them
i=/run/systemd/inaccessible
mkdir -p $i/dir
: > $i/reg
mkfifo $i/fifo
mknod $i/chr c 0 0
mknod $i/blk b 0 0
"$2" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' $i/sock
chmod 0000 $i/dir $i/reg $i/fifo $i/chr $i/blk $i/sock
# A manager logs to /dev/console, which must be a tty (else nothing is written): here the test's pty.
mount --bind "$3" /dev/console
exec "$1" --user --unit=voxd-test.target --log-target=console --log-level=info
"""

JOURNALD_PY = """
# Usage: python journald.py MANAGER_MNT_NS JOURNALD NAMESPACE CONF, run by nsenter in the manager's mount
# namespace. Becomes a private systemd-journald whose stream socket is where the manager connects its
# services' stdout/stderr (/run/systemd/journal/stdout, on the namespace's tmpfs), and whose journal files
# are in $LOGS_DIRECTORY (the test's directory): nothing of the machine's journal is read or written.
import os, socket, subprocess, sys
ns, journald, namespace, conf = sys.argv[1:5]
# only ever in the manager's namespace: everything below writes to /run/systemd and mounts
assert os.stat("/proc/self/ns/mnt").st_ino == int(ns), "not in the manager's mount namespace"
for d in ("/run/log", "/var/log/journal"):  # where a journald writes by default: hidden, in case
    if os.path.isdir(d):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", d], check=True)
os.makedirs(os.environ["RUNTIME_DIRECTORY"])
os.makedirs(f"/run/systemd/journald@{namespace}.conf.d")
with open(f"/run/systemd/journald@{namespace}.conf.d/test.conf", "w") as f:
    f.write(conf)
# Socket activation (LISTEN_FDS): a journald given no socket would also open the kernel's audit netlink
# socket and switch the machine's auditing on or off. It creates its other sockets itself.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(os.path.join(os.environ["RUNTIME_DIRECTORY"], "stdout"))
s.listen(4096)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)  # dup2 onto itself would leave FD_CLOEXEC set
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(journald, [journald, namespace])
"""

# Storage=persistent: straight to $LOGS_DIRECTORY (a namespace instance needs no flush); no forwarding
JOURNALD_CONF = """[Journal]
Storage=persistent
SystemMaxUse=32M
SystemMaxFileSize=8M
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
"""


class UserManager:
    """A ``systemd --user`` manager in its own cgroup and mount namespace, all files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.units = root / "units"
        self.logs = root / "logs"
        self.runtime = root / "rt"
        self.xdg = root / "xdg"
        self.cgroup = ScratchCgroup()
        self.proc: subprocess.Popen[bytes] | None = None
        self._console = self._console_tty = -1
        self._pump = threading.Thread()
        self.manager_log = root / "manager.log"
        self.journald: subprocess.Popen[bytes] | None = None
        self.journal = root / "journal"

    def env(self) -> dict[str, str]:
        # systemctl --user finds the manager at $XDG_RUNTIME_DIR/systemd/private; plain output
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "XDG_RUNTIME_DIR": str(self.runtime), "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "",
                "LC_ALL": "C.UTF-8"}

    def start(self) -> None:
        for d in (self.units, self.logs, self.xdg):
            d.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(mode=0o700)
        # default.target would pull in the machine's enabled user units (pulseaudio, gpg-agent...)
        (self.units / "voxd-test.target").write_text("[Unit]\nDescription=voxd test: nothing to start\n")
        for name, text in (("outer.sh", OUTER_SH), ("inner.sh", INNER_SH)):
            (self.root / name).write_text(text)
            (self.root / name).chmod(0o755)
        systemd = next((p for p in SYSTEMD_CANDIDATES if os.access(p, os.X_OK)), None)
        assert systemd, f"systemd not found at {SYSTEMD_CANDIDATES}: install the Debian package 'systemd'"
        for tool in ("unshare", "nsenter"):
            assert shutil.which(tool), f"{tool} not found: install the Debian package 'util-linux'"
        assert shutil.which("systemctl"), "systemctl not found: install the Debian package 'systemd'"
        # The manager's environment is also its services' default environment: keep it to what it needs.
        env = {**self.env(), "HOME": os.environ.get("HOME", "/root"),
               "XDG_CONFIG_HOME": str(self.xdg / "config"), "XDG_DATA_HOME": str(self.xdg / "data"),
               "XDG_STATE_HOME": str(self.xdg / "state"), "XDG_CACHE_HOME": str(self.xdg / "cache"),
               "SYSTEMD_UNIT_PATH": f"{self.units}:/usr/lib/systemd/user"}
        del env["SYSTEMD_PAGER"]
        # The manager's console: a pty whose output a thread copies to manager.log. (--log-target=kmsg
        # would work too, but rate-limited and into the machine's kernel log.)
        self._console, self._console_tty = os.openpty()
        tty.setraw(self._console_tty)  # no \n -> \r\n, no echo
        self._pump = threading.Thread(target=self._copy_console, name="manager-console", daemon=True)
        self._pump.start()
        self.cgroup.create()
        with self.manager_log.open("ab") as log:  # O_APPEND: shares the file with the console copy
            self.proc = subprocess.Popen(
                [str(self.root / "outer.sh"), self.cgroup.name, str(systemd), sys.executable,
                 os.ttyname(self._console_tty), str(self.runtime), *map(str, self.cgroup.dirs)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return True
            r = self.ctl("is-system-running", check=False, timeout=5)
            return r.stdout.strip() in ("running", "degraded")

        wait_for(up, 20, 0.1)
        assert self.proc.poll() is None, f"the manager exited {self.proc.returncode}:\n{self.log()}"
        state = self.ctl("is-system-running", check=False).stdout.strip()
        assert state in ("running", "degraded"), f"manager: {state}\n{self.log()}"

    def start_journal(self) -> None:
        """A private ``systemd-journald`` for this manager's services (those with ``StandardOutput=journal``
        / ``StandardError=journal``), started in the manager's mount namespace (JOURNALD_PY); its journal
        is the directory :attr:`journal`, read with :meth:`journalctl`. The machine's journal (if it has
        one) is never involved. Stopped by :meth:`stop`."""
        assert self.proc is not None and self.journald is None
        journald = next((p for p in JOURNALD_CANDIDATES if os.access(p, os.X_OK)), None)
        assert journald, f"systemd-journald not found at {JOURNALD_CANDIDATES}"
        assert shutil.which("journalctl"), "journalctl not found: install the Debian package 'systemd'"
        self.journal.mkdir()
        (self.root / "journald.py").write_text(JOURNALD_PY)
        mnt = f"/proc/{self.proc.pid}/ns/mnt"
        assert os.stat(mnt).st_ino != os.stat("/proc/self/ns/mnt").st_ino, "the manager has no namespace"
        env = {"PATH": self.env()["PATH"], "RUNTIME_DIRECTORY": "/run/systemd/journal",
               "LOGS_DIRECTORY": str(self.journal), "SYSTEMD_LOG_TARGET": "console", "LC_ALL": "C.UTF-8"}
        with (self.root / "journald.log").open("ab") as log:
            self.journald = subprocess.Popen(
                ["nsenter", f"--mount={mnt}", "--", sys.executable, str(self.root / "journald.py"),
                 str(os.stat(mnt).st_ino), str(journald), JOURNAL_NAMESPACE, JOURNALD_CONF],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root)
        up = wait_for(lambda: self.journald is not None and (self.journald.poll() is not None or any(
            self.journal.glob("*.journal"))), 20, 0.05)
        assert up and self.journald.poll() is None, \
            f"journald: {self.journald.poll()}\n{(self.root / 'journald.log').read_text(errors='replace')}"

    def journalctl(self, *args: str) -> list[dict[str, str]]:
        """``journalctl --directory=JOURNAL ARGS -o json``: the entries (text fields only)."""
        r = subprocess.run(["journalctl", f"--directory={self.journal}", "--no-pager", "-o", "json", *args],
                           env=self.env(), capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr  # no entries: 0 too
        entries = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        return [{k: v for k, v in e.items() if isinstance(v, str)} for e in entries]

    def systemctl(self, *args: str) -> list[str]:
        # in the manager's mount namespace: systemctl checks /run/systemd/system too (else "offline")
        assert self.proc is not None
        return ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--", "systemctl", "--user", "--no-pager",
                *args]

    def _copy_console(self) -> None:
        with self.manager_log.open("ab") as out:
            while True:
                try:
                    data = os.read(self._console, 65536)
                except OSError:  # EIO: every end of the tty is closed (the manager is gone)
                    break
                if not data:
                    break
                out.write(data.replace(b"\r", b""))
                out.flush()

    def ctl(self, *args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.systemctl(*args), env=self.env(), capture_output=True,
                           text=True, timeout=timeout, check=False)
        assert not check or r.returncode == 0, f"systemctl {' '.join(args)}: {r.returncode} {r.stderr}"
        return r

    def ctl_bg(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.systemctl(*args), env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.ctl("show", *(f"--property={p}" for p in props), unit)
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def log(self, unit: str | None = None) -> str:
        path = self.manager_log if unit is None else self.logs / f"{unit}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> list[str]:
        """Exit the manager (it stops its units), kill it if it does not, then remove its cgroups.
        Returns problems found (for the caller to report)."""
        problems: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.ctl("exit", check=False, timeout=5)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                problems.append("the manager did not exit within 15 s of `systemctl --user exit`: killed")
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.journald is not None and self.journald.poll() is None:
            self.journald.terminate()  # journald closes its files and exits; the namespace goes with it
            try:
                self.journald.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append("the private journald did not exit within 10 s of SIGTERM: killed")
                self.journald.kill()
                self.journald.wait(timeout=5)
        left = self.cgroup.remove()
        if left:
            problems.append(f"cgroups left behind: {left}")
        if self._console_tty >= 0:
            os.close(self._console_tty)  # the copy thread reads what is left, then sees EIO
            self._pump.join(5)
            os.close(self._console)
            self._console_tty = -1
        return problems


# ---------------------------------------------------------------------------------------- unit copies
def service_dropin(config: Path, log: Path, readable: set[Path], extra: str = "") -> str:
    """The test's drop-in for a verbatim copy of systemd/voxd.service: only what a user manager or the
    test's file locations need differently."""
    voxd_bin = Path(sys.executable).parent / "voxd"
    assert os.access(voxd_bin, os.X_OK), f"{voxd_bin}: voxd is not installed in this environment"
    home = _outermost({p for p in readable if _under(p, HOME_MASKED)})
    tmp = _outermost({p for p in readable if _under(p, TMP_PRIVATE)})
    lines = [
        "[Service]",
        "# A user manager runs its services as its own user: it cannot switch to voxd (exit 216/GROUP).",
        "User=", "Group=", "SupplementaryGroups=",
        "# This environment's voxd (make install links /usr/bin/voxd) and the test's config.",
        "ExecStart=", f"ExecStart={voxd_bin} run --config {config}",
        "# No journald in the private namespace (unless a test starts one): to a file the test reads.",
        f"StandardOutput=append:{log}", f"StandardError=append:{log}",
    ]
    if home:
        lines += ["# Python, the venv or the checkout are in a home dir (here: pyenv in /root). ProtectHome=",
                  "# yes masks it and allows no bind beneath; tmpfs: an empty home to bind them into.",
                  "ProtectHome=tmpfs", *(f"BindReadOnlyPaths={p}" for p in home)]
    if tmp:
        lines += ["# The test's files (configs, recording, plugins, the notify socket) are under /tmp:",
                  "# PrivateTmp=yes would hide them; bind them into the private /tmp.",
                  *(f"BindReadOnlyPaths={p}" for p in tmp)]
    return "\n".join(lines) + "\n" + extra


class Services:
    """The unit under test, installed as one or more instances in the manager's unit dir."""

    def __init__(self, mgr: UserManager, readable: set[Path]) -> None:
        self.mgr = mgr
        self.readable = readable
        self.unit_text = UNIT.read_text()

    def install(self, name: str, config: Path, extra: str = "") -> None:
        (self.mgr.units / f"{name}.service").write_text(self.unit_text)  # verbatim
        dropins = self.mgr.units / f"{name}.service.d"
        dropins.mkdir()
        (dropins / "test.conf").write_text(service_dropin(config, self.mgr.logs / f"{name}.log",
                                                          self.readable, extra))
        self.mgr.ctl("daemon-reload")


def _readable_paths(*extra: Path) -> set[Path]:
    """What the service must read: the interpreter (and its prefix), the venv, voxd's sources."""
    return {Path(os.path.realpath(sys.executable)).parent.parent, Path(os.path.realpath(sys.base_prefix)),
            Path(sys.prefix), Path(voxd.__file__).resolve().parent.parent, *extra}


# --------------------------------------------------------------------------------------------- fixture
@pytest.fixture
def user_manager(tmp_path: Path) -> Iterator[UserManager]:
    assert os.geteuid() == 0, "needs root: a private mount namespace and cgroups (CI runs make test as root)"
    before = {"self": Path("/proc/self/cgroup").read_text(), "pid1": Path("/proc/1/cgroup").read_text()}
    mgr = UserManager(tmp_path / "sd")
    mgr.root.mkdir()
    try:
        mgr.start()
        yield mgr
    finally:
        problems = mgr.stop()
        after = {"self": Path("/proc/self/cgroup").read_text(), "pid1": Path("/proc/1/cgroup").read_text()}
        if after != before:
            problems.append(f"cgroups of this process / PID 1 changed: {before} -> {after}")
        assert not problems, problems


class Subscriber:
    """tests/subscriber.py on ``endpoint`` until the daemon's ``stopping`` event; ``frames()`` says how
    many audio frames it has received so far (its ``--progress`` lines)."""

    def __init__(self, endpoint: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "subscriber.py"), endpoint,
                                      str(out), "--until", "stopping", "--seconds", "60", "--progress"],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        assert ready and self.proc.stdout.readline().strip() == "ready", "subscriber did not start"
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def frames(self) -> int:
        counts = [int(line.split()[1]) for line in list(self.lines) if line.startswith("frames ")]
        return counts[-1] if counts else 0

    def result(self, timeout: float = 10) -> dict:
        assert self.proc.wait(timeout=timeout) == 0
        return json.loads(Path(f"{self.out}.json").read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------------------ test
def test_unit_under_a_real_systemd(user_manager: UserManager, tmp_path: Path, free_port: int,
                                   outside_plugins: dict[str, str]) -> None:
    mgr = user_manager
    t_begin = time.monotonic()
    m = re.search(r"^RestartSec=(\d+)$", UNIT.read_text(), re.M)
    assert m, "the unit sets RestartSec= in seconds"
    restart_sec = float(m.group(1))
    files = tmp_path / "files"
    files.mkdir()
    rec = files / "in.wav"
    make_recording(rec, channels=2, seconds=2.0)
    site = Path(outside_plugins["PYTHONPATH"].split(os.pathsep)[0])
    svc = Services(mgr, _readable_paths(files, mgr.runtime, site))
    timings: dict[str, float] = {}

    # -- a bad config: failed (exit 78) and no restart; checked again after RestartSec, at the end
    bad_cfg = files / "bad.yaml"
    write_config(bad_cfg, rec, free_tcp_port(), "  - {stage: no_such_stage}\n")
    svc.install("voxd-bad", bad_cfg)
    r = mgr.ctl("start", "voxd-bad", check=False, timeout=30)
    t_bad = time.monotonic()
    bad_props = ("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    bad = mgr.show("voxd-bad", *bad_props)
    assert r.returncode != 0, "a start with an invalid config must fail"
    assert bad == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": str(EX_CONFIG),
                   "NRestarts": "0"}, (bad, mgr.log("voxd-bad"))
    assert "unknown stage 'no_such_stage'" in mgr.log("voxd-bad")

    # -- start: active only once audio flows
    cfg = files / "voxd.yaml"
    # the daemon waits for a subscriber before its first frame: a window in which it runs, has bound its
    # endpoint, but has no audio yet; the subscriber also gets frame 0
    write_config(cfg, rec, free_port, CHAIN_0DB, wait_for_subscriber_s=20)
    svc.install("voxd", cfg)
    starter = mgr.ctl_bg("start", "voxd")
    sub: Subscriber | None = None
    try:
        assert wait_for(lambda: "publishing stream" in mgr.log("voxd") or starter.poll() is not None, 30), \
            mgr.log("voxd")
        time.sleep(0.5)
        waiting = mgr.show("voxd", "ActiveState", "SubState")
        assert starter.poll() is None, f"start returned before audio flowed: {starter.communicate()}"
        assert waiting == {"ActiveState": "activating", "SubState": "start"}, waiting
        assert "audio flowing" not in mgr.log("voxd")
        t_sub = time.monotonic()
        sub = Subscriber(f"tcp://127.0.0.1:{free_port}", tmp_path / "sub")
        _out, err = starter.communicate(timeout=20)
        t_active = time.monotonic()
        assert starter.returncode == 0, err
        started = mgr.show("voxd", "ActiveState", "SubState", "ExecMainStartTimestampMonotonic",
                           "ActiveEnterTimestampMonotonic", "MainPID")
        assert (started["ActiveState"], started["SubState"]) == ("active", "running"), started
        assert "audio flowing" in mgr.log("voxd")
        exec_us, active_us = int(started["ExecMainStartTimestampMonotonic"]), \
            int(started["ActiveEnterTimestampMonotonic"])
        timings["start: exec -> active (incl. the subscriber wait)"] = (active_us - exec_us) / 1e6
        timings["start: subscriber up -> start returned"] = t_active - t_sub

        # -- reload: the chain changes, no seq gap, still active
        time.sleep(1.0)
        write_config(cfg, rec, free_port, CHAIN_6DB, wait_for_subscriber_s=20)
        t0 = time.monotonic()
        mgr.ctl("reload", "voxd", timeout=15)
        timings["reload: systemctl reload returned"] = time.monotonic() - t0
        assert wait_for(lambda: "reloaded (chain)" in mgr.log("voxd"), 10), mgr.log("voxd")
        timings["reload: -> 'reloaded (chain)' logged"] = time.monotonic() - t0
        assert wait_for(lambda: mgr.show("voxd", "ActiveState")["ActiveState"] == "active", 5)
        after = mgr.show("voxd", "ActiveState", "SubState", "MainPID", "NRestarts")
        assert after == {"ActiveState": "active", "SubState": "running", "MainPID": started["MainPID"],
                         "NRestarts": "0"}, after
        time.sleep(1.0)

        # -- stop within 2 s
        t0 = time.monotonic()
        mgr.ctl("stop", "voxd", timeout=15)
        timings["stop: systemctl stop"] = time.monotonic() - t0
        stopped = mgr.show("voxd", "ActiveState", "Result", "ExecMainStatus")
        assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, stopped
        assert timings["stop: systemctl stop"] < 2.0, timings
        info = sub.result()
    finally:
        if starter.poll() is None:
            starter.kill()
        if sub is not None:
            sub.kill()
    log = mgr.log("voxd")
    seqs = info["seqs"]
    # READY came after audio: the daemon had no subscriber, hence no audio, before t_sub (the start job
    # was still pending then, asserted above), and its first 20 ms frame needs 20 ms of real-time audio
    # after that. Both clocks are CLOCK_MONOTONIC. And that frame 0 reached the subscriber.
    assert active_us / 1e6 >= t_sub + 0.020, (active_us / 1e6, t_sub)
    assert seqs[0] == 0 and info["pts"][0] == 0, (seqs[:5], info["pts"][:5])
    assert seqs == list(range(len(seqs))) and info["gaps"] == 0, "seq gap"
    reloads = [e for e in info["events"] if e["type"] == "reload"]
    assert len(reloads) == 1 and reloads[0]["changed"] == ["chain"], info["events"]
    assert [e["type"] for e in info["events"]][-1] == "stopping"
    # the new chain is in effect: -6 dB after the reload
    frames = np.frombuffer(Path(f"{tmp_path / 'sub'}.pcm").read_bytes(), np.int16).astype(np.float64)
    rms = np.sqrt(np.mean(frames.reshape(len(seqs), -1) ** 2, axis=1))
    i = seqs.index(reloads[0]["seq"])
    assert len(seqs) - i > 30, "audio kept flowing after the reload"
    level = 20 * np.log10(np.median(rms[i + 3:i + 30]) / np.median(rms[max(0, i - 30):i - 2]))
    assert abs(level + 6.0) < 1.0, level
    assert "SIGTERM: stopping" in log and "Traceback" not in log, log

    # -- stall: the watchdog kills the hung worker, Restart= brings it back
    stall_cfg = files / "stall.yaml"
    stall_port = free_tcp_port()
    sleep_chain = "  - {stage: select, channels: [0]}\n  - {stage: sleep, ms: %d}\n"
    write_config(stall_cfg, rec, stall_port, sleep_chain % 0)
    # the fixture plugin's sleep stage (from outside_plugins); 'broken' would only add load errors
    svc.install("voxd-stall", stall_cfg, "# a short watchdog keeps the test short\nWatchdogSec=2\n"
                f"Environment=PYTHONPATH={site} VOXD_DISABLE_PLUGINS=broken\n")
    t0 = time.monotonic()
    mgr.ctl("start", "voxd-stall", timeout=30)
    timings["time to active: systemctl start (stall unit, no subscriber wait)"] = time.monotonic() - t0
    up = mgr.show("voxd-stall", "ActiveState", "ExecMainStartTimestampMonotonic",
                  "ActiveEnterTimestampMonotonic")
    assert up["ActiveState"] == "active", up
    timings["time to active: exec -> READY (stall unit)"] = \
        (int(up["ActiveEnterTimestampMonotonic"]) - int(up["ExecMainStartTimestampMonotonic"])) / 1e6
    time.sleep(0.5)
    write_config(stall_cfg, rec, stall_port, sleep_chain % STALL_MS)
    mgr.ctl("reload", "voxd-stall", timeout=15)
    assert wait_for(lambda: "reloaded (chain)" in mgr.log("voxd-stall"), 10), mgr.log("voxd-stall")
    t_stall = time.monotonic()
    # Result=watchdog is set when the timeout fires (SubState stop-watchdog, SIGABRT sent); auto-restart
    # follows once the process is gone
    dead = wait_for(lambda: mgr.show("voxd-stall", "Result", "SubState") ==
                    {"Result": "watchdog", "SubState": "auto-restart"}, 15)
    assert dead, (mgr.show("voxd-stall", "ActiveState", "SubState", "Result"), mgr.log("voxd-stall"))
    killed = mgr.show("voxd-stall", "ActiveState", "SubState", "ExecMainExitTimestampMonotonic", "NRestarts")
    t_kill = int(killed["ExecMainExitTimestampMonotonic"]) / 1e6
    timings["stall: swap logged -> watchdog kill"] = t_kill - t_stall
    assert killed["SubState"] == "auto-restart" and killed["NRestarts"] == "0", killed
    write_config(stall_cfg, rec, stall_port, sleep_chain % 0)  # the restarted daemon streams again
    restarted = wait_for(lambda: mgr.show("voxd-stall", "ActiveState")["ActiveState"] == "active",
                         restart_sec + 20)
    assert restarted, (mgr.show("voxd-stall", "ActiveState", "SubState", "Result", "NRestarts"),
                       mgr.log("voxd-stall"))
    back = mgr.show("voxd-stall", "NRestarts", "ActiveEnterTimestampMonotonic")
    back_s = int(back["ActiveEnterTimestampMonotonic"]) / 1e6 - t_kill
    timings["stall: watchdog kill -> active again"] = back_s
    assert back["NRestarts"] == "1", back
    assert restart_sec <= back_s < restart_sec + 20, timings
    # pings stop with the worker; the kill comes WatchdogSec after the last one (at most one ping period,
    # 1 s, after the swap): 3 s, plus slack for a loaded machine
    assert timings["stall: swap logged -> watchdog kill"] < 5, timings
    slog = mgr.log("voxd-stall")
    # PYTHONFAULTHANDLER: the SIGABRT dump shows the worker inside the sleep stage
    assert "Fatal Python error: Aborted" in slog and "voxd_extra_plugin" in slog, slog
    t0 = time.monotonic()
    mgr.ctl("stop", "voxd-stall", timeout=15)
    timings["stall unit: systemctl stop"] = time.monotonic() - t0

    # -- the bad config: still failed, never restarted, well after RestartSec
    time.sleep(max(0.0, t_bad + restart_sec + 1.0 - time.monotonic()))
    bad = mgr.show("voxd-bad", *bad_props)
    assert bad == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": str(EX_CONFIG),
                   "NRestarts": "0"}, bad
    timings["total"] = time.monotonic() - t_begin
    print("\nreal systemd timings (s): " + ", ".join(f"{k}: {v:.3f}" for k, v in timings.items()))


def test_a_failed_reload_keeps_the_service_and_a_failing_start_is_not_retried_forever(
        user_manager: UserManager, tmp_path: Path, free_port: int) -> None:
    """Issue 16, acceptance 3, under a real systemd. (1) A reload to an endpoint another process holds:
    the service stays active with the same main PID and no restart, subscribers get ``reload_failed``
    and the old chain's audio without a gap (before: exit 69, and a restart every 5 s into the same
    failure). (2) A start that can only fail (its endpoint is taken for good, exit 69) is restarted,
    but not forever: the unit's StartLimitBurst= ends it in ``failed`` (start-limit-hit)."""
    mgr = user_manager
    files = tmp_path / "files"
    files.mkdir()
    rec = files / "in.wav"
    make_recording(rec, channels=2, seconds=2.0)
    svc = Services(mgr, _readable_paths(files, mgr.runtime))
    squatter = socket.socket()  # holds a port for the whole test
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    sub: Subscriber | None = None
    try:
        cfg = files / "voxd.yaml"
        write_config(cfg, rec, free_port, CHAIN_0DB)
        svc.install("voxd", cfg)
        mgr.ctl("start", "voxd", timeout=30)  # returns once READY: audio flows
        sub = Subscriber(f"tcp://127.0.0.1:{free_port}", tmp_path / "sub")
        started = mgr.show("voxd", "MainPID")["MainPID"]
        assert wait_for(lambda: "audio flowing" in mgr.log("voxd"), 10)
        write_config(cfg, rec, taken, CHAIN_6DB)  # a new chain, and an endpoint that cannot be bound
        mgr.ctl("reload", "voxd", timeout=15)
        assert wait_for(lambda: "reload refused" in mgr.log("voxd"), 30), mgr.log("voxd")
        after = mgr.show("voxd", "ActiveState", "SubState", "MainPID", "NRestarts")
        expected = {"ActiveState": "active", "SubState": "running", "MainPID": started, "NRestarts": "0"}
        assert after == expected, (after, mgr.log("voxd"))
        n = sub.frames()
        assert wait_for(lambda: sub.frames() >= n + 20, 30), "audio goes on after the refused reload"
        mgr.ctl("stop", "voxd", timeout=15)
        info = sub.result()
    finally:
        if sub is not None:
            sub.kill()
    types = [e["type"] for e in info["events"]]
    assert "reload_failed" in types and "reload" not in types and types[-1] == "stopping", types
    failed = next(e for e in info["events"] if e["type"] == "reload_failed")
    assert "Address already in use" in failed["errors"][0], failed
    seqs = info["seqs"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and info["gaps"] == 0
    assert seqs.index(failed["seq"]) < len(seqs) - 10
    assert "Traceback" not in mgr.log("voxd")

    # -- a start that fails the same way every time: retried, then left failed
    bad = files / "taken.yaml"
    write_config(bad, rec, taken, CHAIN_0DB)
    burst = 3
    # the unit's StartLimitBurst=10 and RestartSec=5 would take a minute here: fewer and faster, same rule
    svc.install("voxd-taken", bad, f"RestartSec=0.2\n[Unit]\nStartLimitBurst={burst}\n")
    try:
        mgr.ctl("start", "voxd-taken", check=False, timeout=30)

        def gave_up() -> bool:
            state = mgr.show("voxd-taken", "ActiveState", "SubState")
            return state == {"ActiveState": "failed", "SubState": "failed"}

        props = ("ActiveState", "SubState", "Result", "NRestarts")
        assert wait_for(gave_up, 60), (mgr.show("voxd-taken", *props), mgr.log("voxd-taken"))
        first = mgr.show("voxd-taken", "ActiveState", "NRestarts", "ExecMainStatus")
        time.sleep(1.5)  # many RestartSec=0.2 periods: nothing may happen any more
        later = mgr.show("voxd-taken", "ActiveState", "NRestarts", "ExecMainStatus")
    finally:
        squatter.close()
    assert first == later, (first, later)
    assert first["ActiveState"] == "failed" and first["ExecMainStatus"] == "69", first
    runs = mgr.log("voxd-taken").count("Address already in use")
    print(f"\nthe failing unit ran {runs} times (NRestarts {first['NRestarts']}), then stayed failed")
    assert runs == burst, runs
    assert "Start request repeated too quickly" in mgr.log(), mgr.log()[-2000:]


def test_journal_priorities_under_a_real_systemd(user_manager: UserManager, tmp_path: Path,
                                                 free_port: int) -> None:
    """Issue 19, journald priorities, with a real journald: a private ``systemd-journald``
    (UserManager.start_journal) takes the service's stdout/stderr, as the system's takes a system
    service's. The daemon logs a warning (it dropped samples: a NaN in the recording) and an error (a
    reload to an invalid config, refused; the service runs on). ``journalctl -p warning`` finds the
    warning at PRIORITY=4 and the error at 3 and none of the INFO lines, which are in the journal at 6:
    journald read voxd's ``<N>`` prefixes (SyslogLevelPrefix=, on by default) and removed them.

    The entries are selected by ``_PID=`` (the main PID) rather than ``-u``/``--user-unit``: journald
    derives the unit from the cgroup path, and the manager's is the test's scratch cgroup, which is no
    slice (``_SYSTEMD_CGROUP=/voxd-test-.../app.slice/voxd-journal.service``, no ``_SYSTEMD_UNIT``)."""
    mgr = user_manager
    mgr.start_journal()
    files = tmp_path / "files"
    files.mkdir()
    rec = files / "nan.wav"
    x = 0.1 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    x[8000] = np.nan  # one bad sample per pass of the (looped) recording: a warning every 2 s
    sf.write(rec, np.stack([x, x], 1).astype(np.float32), 16000, subtype="FLOAT")
    svc = Services(mgr, _readable_paths(files, mgr.runtime))
    cfg = files / "voxd.yaml"
    write_config(cfg, rec, free_port, CHAIN_0DB)
    svc.install("voxd-journal", cfg, "# this instance logs to the test's private journald\n"
                "StandardOutput=journal\nStandardError=journal\n")
    t0 = time.monotonic()
    mgr.ctl("start", "voxd-journal", timeout=30)
    pid = mgr.show("voxd-journal", "MainPID")["MainPID"]

    def journal(*args: str) -> list[dict[str, str]]:
        return mgr.journalctl(f"_PID={pid}", "-t", "voxd", *args)

    def logged(text: str) -> bool:
        return any(e.get("MESSAGE", "").startswith(text) for e in journal())

    assert wait_for(lambda: logged("WARNING voxd.daemon: input: 1 block with NaN"), 15, 0.2), journal()
    cfg.write_text(cfg.read_text() + "  - {stage: no_such_stage}\n")
    mgr.ctl("reload", "voxd-journal", timeout=15)
    assert wait_for(lambda: logged("ERROR voxd.daemon: reload refused: "), 15, 0.2), journal()
    assert mgr.show("voxd-journal", "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}
    mgr.ctl("stop", "voxd-journal", timeout=15)
    took = time.monotonic() - t0
    everything, warning, err = journal(), journal("-p", "warning"), journal("-p", "err")
    print(f"\nvoxd in the private journal ({took:.1f} s):\n" + "\n".join(
        f"  PRIORITY={e.get('PRIORITY')} {e.get('MESSAGE')}" for e in everything))

    def messages(entries: list[dict[str, str]], start: str) -> list[tuple[str, str]]:
        return [(e["PRIORITY"], e["MESSAGE"]) for e in entries if e.get("MESSAGE", "").startswith(start)]

    # every line at its level's priority, the prefix gone from the text
    expected = {"INFO": "6", "WARNING": "4", "ERROR": "3"}
    assert everything and all(e.get("PRIORITY") == expected.get(e.get("MESSAGE", "").split(" ")[0])
                              for e in everything), everything
    assert messages(everything, "INFO voxd.daemon: audio flowing")
    assert messages(everything, "INFO voxd.daemon: SIGHUP: reloading")
    assert not messages(everything, "<")
    # -p warning: the warning (4) and the error (3), nothing of the INFO lines
    assert {p for p, _ in messages(warning, "WARNING voxd.daemon: input: ")} == {"4"}, warning
    assert {p for p, _ in messages(warning, "ERROR voxd.daemon: reload refused: ")} == {"3"}, warning
    assert warning and all(int(e["PRIORITY"]) <= 4 for e in warning), warning
    assert not messages(warning, "INFO"), warning
    # -p err: the error alone
    assert messages(err, "ERROR voxd.daemon: reload refused: ") and not messages(err, "WARNING"), err
