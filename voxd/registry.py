"""The stage registry: stage kinds by name, each with the plugin that registered it.

A plugin's ``voxd_register_stages(registry)`` hook (:mod:`voxd.hookspecs`) receives one; the loader
(:mod:`voxd.plugins`, which re-exports :class:`StageRegistry` where plugins import it) fills it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from voxd.stage import Stage


class StageRegistry:
    """Stage kinds by name, each remembered with the plugin that registered it."""

    def __init__(self) -> None:
        self._stages: dict[str, type[Stage[Any]]] = {}
        self._owner: dict[str, str] = {}
        self._plugin = "<direct>"

    @contextmanager
    def registering(self, plugin: str) -> Iterator[None]:
        """Within the block, :meth:`add` attributes kinds to ``plugin`` (the loader calls each plugin's
        hook inside one); a kind registered outside any block belongs to ``<direct>``."""
        self._plugin = plugin
        try:
            yield
        finally:
            self._plugin = "<direct>"

    def remove(self, kind: str) -> None:
        """Forget ``kind`` (a plugin whose hook failed half way leaves nothing behind)."""
        del self._stages[kind], self._owner[kind]

    def add(self, stage_cls: type[Stage[Any]]) -> None:
        """Register a :class:`~voxd.stage.Stage` subclass under its ``kind``.

        Raises ``TypeError`` for something that is not a Stage subclass with a non-empty ``kind``, and
        ``ValueError`` when another plugin already registered that kind.
        """
        if not (isinstance(stage_cls, type) and issubclass(stage_cls, Stage)) or not stage_cls.kind:
            raise TypeError(f"{stage_cls!r} is not a voxd.stage.Stage subclass with a 'kind'")
        kind = stage_cls.kind
        if kind in self._stages and self._stages[kind] is not stage_cls:
            raise ValueError(f"stage '{kind}' is already registered by plugin '{self._owner[kind]}'")
        self._stages[kind] = stage_cls
        self._owner[kind] = self._plugin

    def get(self, kind: str) -> type[Stage[Any]] | None:
        """The stage class registered as ``kind``, or None."""
        return self._stages.get(kind)

    def kinds(self) -> list[str]:
        """All registered kinds, sorted."""
        return sorted(self._stages)

    def plugin_of(self, kind: str) -> str:
        """Name of the plugin that registered ``kind``."""
        return self._owner[kind]

    def stages_of(self, plugin: str) -> list[str]:
        """Kinds registered by ``plugin``, sorted."""
        return sorted(k for k, owner in self._owner.items() if owner == plugin)
