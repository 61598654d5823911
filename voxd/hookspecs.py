"""The public plugin API of voxd: hook specifications.

A plugin is an importable module (or object) that implements one or more of these hooks, marked with
:data:`hookimpl`, and is announced through an entry point in the group ``voxd``::

    # pyproject.toml of a plugin distribution
    [project.entry-points.voxd]
    myplugin = "my_package.voxd_plugin"

    # my_package/voxd_plugin.py
    from voxd.hookspecs import hookimpl

    @hookimpl
    def voxd_register_stages(registry):
        registry.add(MyStage)

The entry point's name is the plugin's name (what ``voxd plugins`` shows and what
``VOXD_DISABLE_PLUGINS`` blocks). voxd's own stages in ``plugins/`` are registered the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from voxd.registry import StageRegistry

PROJECT = "voxd"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator that marks a plugin function as a voxd hook implementation.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def voxd_register_stages(registry: StageRegistry) -> None:
    """Register stage types.

    Called once per plugin at start-up, before any configuration is read. Call
    ``registry.add(StageClass)`` for each :class:`voxd.stage.Stage` subclass the plugin provides; the
    class's ``kind`` is the name a config uses in ``chain: [{stage: KIND, ...}]``. Registering a kind
    that another plugin already registered is an error recorded against the later plugin.

    Must not open devices or do slow work: it runs for ``voxd check`` and ``voxd plugins`` too.
    Return value is ignored.
    """
