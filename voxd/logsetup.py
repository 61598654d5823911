"""Log priorities for the journal: the sd-daemon ``<N>`` prefix on each line voxd logs to stderr.

Under systemd, ``voxd run``'s stderr is a stream socket to journald, and without more every line would be
stored at the unit's ``SyslogLevel=`` (info): ``journalctl -p warning`` would find nothing. journald reads a
``<N>`` in front of a line as that line's syslog priority and removes it (``SyslogLevelPrefix=``, on by
default; sd-daemon(3)), so :func:`journal_priorities` puts one in front of every line the root logger's
stderr handlers write: DEBUG ``<7>``, INFO ``<6>``, WARNING ``<4>``, ERROR ``<3>``, CRITICAL ``<2>``
(a level between INFO and WARNING is ``<5>``, notice). journald splits the stream into entries at each
newline (and NUL), so a multi-line record — a traceback, a config error with its lines — gets the prefix
on each of its lines, and every line keeps the record's priority.

It does so only when stderr really is the journal, as systemd.exec(5) says to tell: ``$JOURNAL_STREAM``
is ``DEVICE:INODE`` of the stream systemd connected, and it must equal ``fstat(2)``'s device and inode
(the variable alone is inherited by children whose stderr is something else). Anywhere else — a
terminal, a file, ``StandardError=append:...``, a pipe — the output is unchanged.

Not covered: what is written to stderr without the logging module (faulthandler's stack dumps, an
uncaught traceback, the command line's one-line errors) keeps the unit's default priority.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

JOURNAL_STREAM = "JOURNAL_STREAM"

# syslog(3) priorities, sd-daemon(3)'s SD_* prefixes
LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG = 2, 3, 4, 5, 6, 7

_LINE_BREAK = re.compile(r"(\n|\x00)")  # where journald's stdout stream ends an entry


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a :mod:`logging` level: CRITICAL and above 2, ERROR 3, WARNING 4, above
    INFO 5 (notice), INFO 6, below INFO 7 (debug)."""
    if levelno >= logging.CRITICAL:
        return LOG_CRIT
    if levelno >= logging.ERROR:
        return LOG_ERR
    if levelno >= logging.WARNING:
        return LOG_WARNING
    if levelno > logging.INFO:
        return LOG_NOTICE
    if levelno == logging.INFO:
        return LOG_INFO
    return LOG_DEBUG


def prefix_lines(text: str, priority: int) -> str:
    """``text`` with ``<priority>`` in front of each of its lines (a line ends at a newline or a NUL,
    as journald sees it); the line breaks themselves are kept."""
    prefix = f"<{priority}>"
    parts = _LINE_BREAK.split(text)  # text, break, text, break, ..., text
    parts[::2] = [prefix + p for p in parts[::2]]
    return "".join(parts)


class JournalFormatter(logging.Formatter):
    """Wraps a handler's formatter: its output, with the record's syslog priority on each line."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner if inner is not None else logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return prefix_lines(self.inner.format(record), syslog_priority(record.levelno))


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether ``fd`` (stderr) is the stream systemd connected to the journal: ``$JOURNAL_STREAM``
    (``DEVICE:INODE``, decimal) names exactly this file (systemd.exec(5), "Environment Variables Set or
    Propagated by the Service Manager")."""
    value = (os.environ if environ is None else environ).get(JOURNAL_STREAM, "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:  # no stderr at all
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _writes_to_fd(handler: logging.Handler, fd: int) -> bool:
    if not isinstance(handler, logging.StreamHandler):
        return False
    try:
        return bool(handler.stream.fileno() == fd)
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed stream
        return False


def journal_priorities(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """If stderr is the journal (:func:`stderr_is_journal`), make every stream handler of the root
    logger that writes to it prefix its lines with their syslog priority (:class:`JournalFormatter`).
    Call once logging is configured; calling again changes nothing. Returns whether stderr is the
    journal (False: nothing was changed)."""
    if not stderr_is_journal(environ, fd):
        return False
    for handler in logging.getLogger().handlers:
        if _writes_to_fd(handler, fd) and not isinstance(handler.formatter, JournalFormatter):
            handler.setFormatter(JournalFormatter(handler.formatter))
    return True
