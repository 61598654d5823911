"""A JSON Schema (draft 2020-12) of the config file, for editors and ``voxd schema``.

``chain`` items are a ``oneOf`` over the installed stage kinds: each alternative is that stage's
``Params`` schema plus ``stage`` (a ``const``), ``name`` and ``on_error``.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from voxd.config.model import CAPTURE_TYPES, SECTIONS, ChainEntry
from voxd.plugins import Plugins, load_plugins

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema(plugins: Plugins | None = None) -> dict[str, Any]:
    """The schema of a config file with the stages of ``plugins`` (default: :func:`load_plugins`)."""
    plugins = load_plugins() if plugins is None else plugins
    kinds = {kind: cls for kind in plugins.registry.kinds() if (cls := plugins.registry.get(kind))}
    models: list[type[BaseModel]] = [*CAPTURE_TYPES.values(), *SECTIONS.values(), ChainEntry]
    models += [cls.Params for cls in kinds.values() if cls.Params not in models]
    # One call for every model, so that pydantic gives same-named models of different plugins
    # distinct $defs names.
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return refs[(model, "validation")]

    def body(model: type[BaseModel]) -> dict[str, Any]:
        found: dict[str, Any] = defs[ref(model)["$ref"].rsplit("/", 1)[1]]
        return found

    entry = defs.pop(ref(ChainEntry)["$ref"].rsplit("/", 1)[1])["properties"]  # inlined in each stage
    stages = [_stage_schema(kind, cls, body(cls.Params), entry) for kind, cls in kinds.items()]
    properties = {
        "capture": {"oneOf": [ref(m) for m in CAPTURE_TYPES.values()], "description": "Audio source."},
        "processing": ref(SECTIONS["processing"]),
        "array": {"anyOf": [ref(SECTIONS["array"]), {"type": "null"}]},
        "chain": {
            "type": ["array", "null"],
            "description": "Stages in processing order.",
            # No stage installed: only an empty chain is valid (an empty oneOf is not allowed).
            "items": {"oneOf": stages} if stages else False,
        },
        "output": ref(SECTIONS["output"]),
        "log": ref(SECTIONS["log"]),
    }
    return {
        "$schema": DIALECT,
        "title": "voxd configuration",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "$defs": defs,
    }


def _stage_schema(kind: str, cls: type, params: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """One ``oneOf`` alternative: the stage's params next to ``stage``/``name``/``on_error``.

    The params schema is copied rather than referenced: its ``additionalProperties: false`` would
    reject the entry keys in an ``allOf``.
    """
    out = copy.deepcopy(params)
    out["title"] = kind
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    if doc and "description" not in out:
        out["description"] = " ".join(doc.split())
    stage = {"const": kind, "description": entry["stage"].get("description", "Stage kind.")}
    out["properties"] = {"stage": stage, "name": entry["name"], "on_error": entry["on_error"],
                         **out.get("properties", {})}
    out["required"] = ["stage", *out.get("required", [])]
    out["type"] = "object"
    out["additionalProperties"] = False
    return out
