"""The source interface shared by files and live devices.

A source delivers :class:`Block` objects to the worker thread through :meth:`Source.read`. A live
device fills a bounded queue from its driver callback and ``read`` pops from it (waiting at most
``timeout`` seconds); a file reads its next block, pacing itself to real time when asked. Either way
the worker never sees the difference, and a block always says when its first sample was captured.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxd.frame import Flags


@dataclass(slots=True)
class Block:
    """Samples from a source: float32 ``(channels, n)`` at the source rate, nominal full scale +-1.

    ``t``: capture time of the first sample (Unix seconds); ``flags``: ``DISCONTINUITY`` when samples
    were lost before this block.
    """

    samples: np.ndarray
    t: float
    flags: Flags = Flags.NONE


@dataclass
class SourceInfo:
    """What a source is: its rate (Hz) and channel count, and a name for messages."""

    rate: int
    channels: int
    name: str
    counters: dict[str, int] = field(default_factory=dict)


class Source(ABC):
    """An opened audio source. ``rate`` and ``channels`` are valid after :meth:`open`."""

    rate: int
    channels: int
    name: str

    @abstractmethod
    def open(self) -> None:
        """Open the file or device; raise :class:`~voxd.errors.VoxdError` with a one-line reason."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start delivering (a device starts its stream; a file starts its real-time clock). Called
        once, after :meth:`open`, when the consumer is ready."""

    @abstractmethod
    def read(self, timeout: float) -> Block | None:
        """The next block, or None when none arrived within ``timeout`` seconds or the source ended."""

    @property
    def exhausted(self) -> bool:
        """True once a finite source has delivered its last block."""
        return False

    @property
    def counters(self) -> dict[str, int]:
        """Source counters for the stats topic (overruns, drops...)."""
        return {}

    def take_events(self) -> list[tuple[str, dict[str, Any]]]:
        """Events since the last call, as ``(type, fields)`` (``device_lost``, ``overrun``...)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the file or device."""
