"""voxd.logsetup: the ``<N>`` priority prefixes journald reads, and when they are written (issue 19).

The formatter and the detection here, in-process and with a real stderr in a child process, and ``voxd
run`` itself with its stderr standing in for the journal stream. journald itself reading them (``journalctl
-p warning``) is checked under a real systemd in tests/test_systemd_real.py.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ROOT, make_recording
from voxd.logsetup import (
    JOURNAL_STREAM,
    JournalFormatter,
    journal_priorities,
    prefix_lines,
    stderr_is_journal,
    syslog_priority,
)

FORMAT = "%(levelname)s %(name)s: %(message)s"  # voxd.cli's
PREFIX = re.compile(r"<([0-7])>")
BREAK = re.compile(r"\n|\x00")


def stream_id(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("voxd.test", level, __file__, 1, msg, None, exc_info)


@pytest.fixture
def root_handlers() -> Iterator[logging.Logger]:
    """The root logger, its handlers put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        yield root
    finally:
        root.handlers[:] = saved


# ------------------------------------------------------------------------------------------ formatter
@pytest.mark.parametrize(("level", "priority"), [
    (logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2),
    (5, 7), (25, 5), (35, 4), (45, 3), (60, 2)])
def test_priorities_of_the_logging_levels(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


def test_each_line_of_a_multiline_record_gets_the_prefix() -> None:
    fmt = JournalFormatter(logging.Formatter(FORMAT))
    assert fmt.format(record(logging.WARNING, "one")) == "<4>WARNING voxd.test: one"
    assert fmt.format(record(logging.ERROR, "a\nb\n")) == "<3>ERROR voxd.test: a\n<3>b\n<3>"
    out = fmt.format(record(logging.ERROR, "failed", exc=True))  # with its traceback
    lines = out.split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), out
    assert lines[0] == "<3>ERROR voxd.test: failed" and lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-2:] == ["<3>ValueError: bad", "<3>value"]
    # journald also ends a line at a NUL; a prefix in the message itself is only text
    assert prefix_lines("a\x00b", 6) == "<6>a\x00<6>b"
    assert prefix_lines("<3>x", 6) == "<6><3>x"
    assert JournalFormatter().format(record(logging.INFO, "plain")) == "<6>plain"


@given(msg=st.text(), level=st.integers(min_value=0, max_value=100), exc=st.booleans())
def test_any_message_and_level_gives_prefixed_lines_with_the_text_intact(msg: str, level: int,
                                                                          exc: bool) -> None:
    inner = logging.Formatter(FORMAT)
    rec = record(level, msg, exc)
    plain = inner.format(rec)
    out = JournalFormatter(inner).format(rec)
    want = f"<{syslog_priority(level)}>"
    assert syslog_priority(level) in (2, 3, 4, 5, 6, 7)
    lines = BREAK.split(out)
    assert all(line.startswith(want) for line in lines), (out, want)
    assert BREAK.findall(out) == BREAK.findall(plain)  # the same line breaks...
    assert [line[len(want):] for line in lines] == BREAK.split(plain)  # ...and the same text between them
    assert msg in "".join(re.split(r"(?:^|(?<=[\n\x00]))<[0-7]>", out))


# ------------------------------------------------------------------------------------------ detection
def test_stderr_is_the_journal_only_when_device_and_inode_match(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        fd = a.fileno()
        assert stderr_is_journal({JOURNAL_STREAM: stream_id(fd)}, fd)
        assert not stderr_is_journal({JOURNAL_STREAM: stream_id(b.fileno())}, fd)  # another file
        for value in ("", "1", ":", "1:", ":2", "x:y", "1:2:3", " 1:2", f"{stream_id(fd)}\n"):
            assert not stderr_is_journal({JOURNAL_STREAM: value}, fd), value
        assert not stderr_is_journal({}, fd)
        ident = stream_id(fd)
    assert not stderr_is_journal({JOURNAL_STREAM: ident}, fd)  # closed


def test_journal_priorities_wraps_the_root_handlers_on_that_stream_once(
        tmp_path: Path, root_handlers: logging.Logger) -> None:
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "other").open("w") as other:
        on_journal = logging.StreamHandler(journal)
        on_journal.setFormatter(logging.Formatter(FORMAT))
        elsewhere = logging.StreamHandler(other)
        memory = logging.StreamHandler(io.StringIO())  # no fileno
        root_handlers.handlers[:] = [on_journal, elsewhere, memory]
        env = {JOURNAL_STREAM: stream_id(journal.fileno())}
        assert not journal_priorities({}, journal.fileno())
        assert not journal_priorities({JOURNAL_STREAM: stream_id(other.fileno())}, journal.fileno())
        assert not isinstance(on_journal.formatter, JournalFormatter)
        assert journal_priorities(env, journal.fileno())
        assert isinstance(on_journal.formatter, JournalFormatter)
        wrapped = on_journal.formatter
        assert journal_priorities(env, journal.fileno())
        assert on_journal.formatter is wrapped  # not wrapped twice
        assert not isinstance(elsewhere.formatter, JournalFormatter)
        assert not isinstance(memory.formatter, JournalFormatter)
        log = logging.getLogger("voxd.test")
        log.warning("careful\nreally")
        on_journal.flush()
        elsewhere.flush()
    assert (tmp_path / "journal").read_text() == "<4>WARNING voxd.test: careful\n<4>really\n"
    assert (tmp_path / "other").read_text() == "careful\nreally\n"


CHILD = """
import logging, sys
from voxd.logsetup import journal_priorities
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
print(journal_priorities())
log = logging.getLogger("voxd.child")
log.info("info")
log.warning("warn")
log.error("err\\nmore")
"""


@pytest.mark.parametrize("journal", [True, False])
def test_a_process_whose_stderr_is_the_journal_stream(tmp_path: Path, journal: bool) -> None:
    """A real fd 2: JOURNAL_STREAM names it (as systemd sets it), or names another file (inherited by a
    process whose stderr was redirected): prefixes in the first case only."""
    err, decoy = tmp_path / "stderr", tmp_path / "decoy"
    decoy.touch()
    with err.open("w") as f:
        env = {**os.environ, JOURNAL_STREAM: stream_id(f.fileno()) if journal else
               f"{os.stat(decoy).st_dev}:{os.stat(decoy).st_ino}"}
        r = subprocess.run([sys.executable, "-c", CHILD], stderr=f, stdout=subprocess.PIPE, text=True,
                           env=env, cwd=ROOT, timeout=60, check=True)
    assert r.stdout.strip() == str(journal)
    lines = err.read_text().splitlines()
    plain = ["INFO voxd.child: info", "WARNING voxd.child: warn", "ERROR voxd.child: err", "more"]
    prefixes = ["<6>", "<4>", "<3>", "<3>"] if journal else [""] * 4
    assert lines == [p + line for p, line in zip(prefixes, plain, strict=True)]


def test_voxd_run_prefixes_its_log_lines_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """The daemon turns it on itself: ``voxd run`` on a short file, its stderr standing in for the
    journal stream (JOURNAL_STREAM names it). Every line has a prefix, INFO lines ``<6>``."""
    rec = tmp_path / "in.wav"
    make_recording(rec, channels=1, seconds=0.5)
    cfg = tmp_path / "voxd.yaml"
    cfg.write_text(f"capture: {{type: file, path: {rec}}}\noutput: {{endpoints: ['inproc://logsetup']}}\n"
                   "chain:\n  - {stage: gain, db: 0}\n")
    err = tmp_path / "stderr"
    with err.open("w") as f:
        env = {**os.environ, JOURNAL_STREAM: stream_id(f.fileno())}
        env.pop("NOTIFY_SOCKET", None)
        r = subprocess.run([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], stderr=f,
                           stdout=subprocess.DEVNULL, env=env, cwd=ROOT, timeout=120, check=False)
    text = err.read_text()
    assert r.returncode == 0, text
    lines = text.splitlines()
    assert any(line.startswith("<6>INFO voxd.daemon: audio flowing") for line in lines), text
    assert any(line.startswith("<6>INFO voxd.daemon: end of stream") for line in lines), text
    assert all(PREFIX.match(line) for line in lines), text


@pytest.mark.parametrize("journal", [True, False])
def test_voxd_run_fatal_errors_reach_the_journal_as_errors(tmp_path: Path, journal: bool) -> None:
    """The lines ``voxd`` prints when it exits on an expected error (a config error, an endpoint it
    cannot bind) are not log records: they get ``<3>`` themselves when stderr is the journal."""
    cfg = tmp_path / "voxd.yaml"
    cfg.write_text("capture: {type: file, path: missing.wav}\nchain:\n  - {stage: gain, dbb: 0}\n")
    err = tmp_path / "stderr"
    with err.open("w") as f:
        env = {**os.environ, JOURNAL_STREAM: stream_id(f.fileno()) if journal else "0:0"}
        r = subprocess.run([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], stderr=f,
                           stdout=subprocess.DEVNULL, env=env, cwd=ROOT, timeout=120, check=False)
    lines = err.read_text().splitlines()
    assert r.returncode == 78 and lines, lines
    assert all(line.startswith("<3>") == journal for line in lines), lines
    assert any("dbb" in line for line in lines), lines
