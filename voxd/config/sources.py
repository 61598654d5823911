"""Where every value of a config came from: a file line or a ``--set`` override.

Each place in the config tree is a *path*: a tuple of mapping keys (str) and list indices (int), e.g.
``("chain", 2, "cutoff_hz")``. A :class:`SourceMap` remembers an :class:`Origin` per path so that
any error, however late it is found (the chain builder checks formats after loading), can be
reported as ``file:line: chain.2.cutoff_hz: message`` or ``--set chain.2.cutoff_hz=9: ...``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Key = str | int
Path = tuple[Key, ...]


def dotted(path: Sequence[Key]) -> str:
    """``("chain", 2, "cutoff_hz")`` -> ``chain.2.cutoff_hz``; the empty path reads ``(top level)``."""
    return ".".join(str(p) for p in path) if path else "(top level)"


@dataclass(frozen=True, order=True)
class Origin:
    """Where a value came from. ``rank`` sorts errors: file lines in line order, then overrides in
    command-line order; ``text`` is the prefix printed before the path (``cfg.yaml:12``)."""

    rank: tuple[int, int]
    text: str

    @classmethod
    def line(cls, filename: str, line: int) -> Origin:
        """A 1-based line of ``filename``."""
        return cls((0, line), f"{filename}:{line}")

    @property
    def in_file(self) -> bool:
        """True for a line of the config file, False for a ``--set`` override."""
        return self.rank[0] == 0

    @classmethod
    def override(cls, arg: str, n: int) -> Origin:
        """The ``n``-th ``--set`` argument, ``arg`` being its ``PATH=VALUE`` text."""
        return cls((1, n), f"--set {arg}")


@dataclass(frozen=True, order=True)
class Problem:
    """One formatted error line with the origin it sorts by."""

    origin: Origin
    text: str


class SourceMap:
    """Origins by path, with fallback to the nearest recorded ancestor.

    The root falls back to line 1 of the file, so ``where`` always has an answer.
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._origins: dict[Path, Origin] = {}

    def set(self, path: Path, origin: Origin) -> None:
        """Record ``origin`` for ``path`` (replacing an earlier one)."""
        self._origins[path] = origin

    def replace_subtree(self, path: Path, origin: Origin) -> None:
        """``path`` got a new value (an override): forget the origins of what it replaced."""
        n = len(path)
        for p in [p for p in self._origins if len(p) > n and p[:n] == path]:
            del self._origins[p]
        self._origins[path] = origin

    def forget(self, path: Path) -> None:
        """``path`` and everything below it left the tree: forget their origins."""
        n = len(path)
        for p in [p for p in self._origins if p[:n] == path]:
            del self._origins[p]

    def origin(self, path: Iterable[Key]) -> Origin:
        """The origin of ``path`` or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self._origins:
                return self._origins[p]
            p = p[:-1]
        return self._origins.get((), Origin.line(self.filename, 1))

    def where(self, path: Iterable[Key]) -> str:
        """``file:line`` or ``--set PATH=VALUE`` for ``path``."""
        return self.origin(path).text

    def problem(self, path: Sequence[Key], message: str) -> Problem:
        """An error about ``path``: ``ORIGIN: PATH: MESSAGE``."""
        origin = self.origin(path)
        return Problem(origin, f"{origin.text}: {dotted(path)}: {message}")
