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
from voxd.registry import StageRegistry

__all__ = ["DISABLE_ENV", "PluginInfo", "Plugins", "StageRegistry", "disabled_names", "load_plugins"]

DISABLE_ENV = "VOXD_DISABLE_PLUGINS"


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
        before = set(registry.kinds())
        try:
            with registry.registering(impl.plugin_name):
                impl.function(registry=registry)
        except Exception as exc:
            info.status, info.error = "failed", _error_text(exc)
            for kind in set(registry.kinds()) - before:  # half-registered plugins leave nothing behind
                registry.remove(kind)
    for info in infos.values():
        info.stages = registry.stages_of(info.name)
    return Plugins(registry, sorted(infos.values(), key=lambda p: p.name))
