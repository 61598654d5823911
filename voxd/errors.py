"""Expected errors and their exit statuses.

An expected error prints one line (no traceback) and exits with its documented status; anything else
is a bug and keeps its traceback. Statuses follow ``sysexits.h`` where one fits.
"""

from __future__ import annotations

EX_USAGE = 64  # bad command line
EX_DATAERR = 65  # bad input data (an unreadable audio file)
EX_NOINPUT = 66  # an input file does not exist
EX_UNAVAILABLE = 69  # a device or endpoint is unavailable
EX_CANTCREAT = 73  # an output file cannot be written
EX_SOFTWARE = 70  # a stage failed with on_error: fail
EX_CONFIG = 78  # the configuration is invalid


class VoxdError(Exception):
    """An expected failure with a one-line message and an exit status."""

    exit_status: int = EX_SOFTWARE

    def __init__(self, message: str, exit_status: int | None = None) -> None:
        super().__init__(message)
        if exit_status is not None:
            self.exit_status = exit_status


class ConfigError(VoxdError):
    """One or more configuration problems, each already formatted as ``file:line: path: message``."""

    exit_status = EX_CONFIG

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class InputError(VoxdError):
    """An input file is missing or cannot be decoded."""

    exit_status = EX_NOINPUT


class FormatError(Exception):
    """Raised by a stage's ``negotiate`` when it cannot take the format it is offered; the chain builder
    turns it into a :class:`ConfigError` line pointing at the chain entry (a build-time error)."""


class StageError(VoxdError):
    """A stage failed at run time and its ``on_error`` policy is ``fail``."""

    exit_status = EX_SOFTWARE
