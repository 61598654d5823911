"""Plugin discovery and the stage registry.

Plugins are found through entry points in the group ``voxd`` (see :mod:`voxd.hookspecs`). Each one is
loaded in isolation: a plugin that fails to import, or whose hook raises, is recorded with its error
and its stages are simply absent; that becomes fatal only when a config names one of the missing
stages (the config error then lists the failed plugins and why). ``VOXD_DISABLE_PLUGINS=a,b`` blocks
plugins by entry-point name.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from voxd import hookspecs
from voxd.stage import Stage

DISABLE_ENV = "VOXD_DISABLE_PLUGINS"


class StageRegistry:
    """Stage kinds by name, each remembered with the plugin that registered it."""

    def __init__(self) -> None:
        self._stages: dict[str, type[Stage]] = {}
        self._owner: dict[str, str] = {}
        self._plugin = "<direct>"

    def add(self, stage_cls: type[Stage]) -> None:
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

    def get(self, kind: str) -> type[Stage] | None:
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


@dataclass
class PluginInfo:
    """What ``voxd plugins`` shows for one plugin. ``status``: ``ok``, ``failed`` or ``disabled``."""

    name: str
    target: str
    version: str
    status: str = "ok"
    error: str | None = None
    stages: list[str] = field(default_factory=list)


@dataclass
class Plugins:
    """The outcome of plugin loading: the registry plus one :class:`PluginInfo` per plugin."""

    registry: StageRegistry
    infos: list[PluginInfo]

    def failed(self) -> list[PluginInfo]:
        """Plugins that did not load (import error or a raising hook)."""
        return [p for p in self.infos if p.status == "failed"]


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def disabled_names(value: str | None = None) -> set[str]:
    """Plugin names blocked by ``VOXD_DISABLE_PLUGINS`` (comma or space separated)."""
    raw = os.environ.get(DISABLE_ENV, "") if value is None else value
    return {n.strip() for n in raw.replace(" ", ",").split(",") if n.strip()}


def load_plugins(
    disable: Iterable[str] | None = None, extra: Iterable[tuple[str, Any]] = ()
) -> Plugins:
    """Discover, import and register every plugin in the ``voxd`` entry-point group.

    ``disable``: names to block (default: from ``VOXD_DISABLE_PLUGINS``); ``extra``: ``(name, module)``
    pairs registered as if they had entry points (for embedding and tests).
    """
    blocked = disabled_names() if disable is None else set(disable)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = StageRegistry()
    infos: dict[str, PluginInfo] = {}

    eps = sorted(md.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name)
    for ep in eps:
        version = ep.dist.version if ep.dist is not None else "?"
        info = infos.setdefault(ep.name, PluginInfo(ep.name, ep.value, version))
        if ep.name in blocked:
            info.status = "disabled"
            info.error = f"blocked by {DISABLE_ENV}"
            continue
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the daemon down
            info.status, info.error = "failed", _error_text(exc)
    for name, obj in extra:
        info = infos.setdefault(name, PluginInfo(name, getattr(obj, "__name__", repr(obj)), "-"))
        if name in blocked:
            info.status, info.error = "disabled", f"blocked by {DISABLE_ENV}"
            continue
        try:
            pm.register(obj, name=name)
        except Exception as exc:
            info.status, info.error = "failed", _error_text(exc)

    # Call each plugin's hook on its own so that a raising hook fails only that plugin and every
    # registered kind is attributed to the plugin that registered it.
    for impl in pm.hook.voxd_register_stages.get_hookimpls():
        info = infos[impl.plugin_name]
        registry._plugin = impl.plugin_name
        before = set(registry.kinds())
        try:
            impl.function(registry=registry)
        except Exception as exc:
            info.status, info.error = "failed", _error_text(exc)
            for kind in set(registry.kinds()) - before:  # half-registered plugins leave nothing behind
                del registry._stages[kind], registry._owner[kind]
    registry._plugin = "<direct>"
    for info in infos.values():
        info.stages = registry.stages_of(info.name)
    return Plugins(registry, sorted(infos.values(), key=lambda p: p.name))
