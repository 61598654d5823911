"""Pydantic validation errors as short, human ``(path, message)`` pairs.

- Union member tags (``float``, ``literal['auto']``, a discriminator value) are dropped from paths:
  they are not places in the file. Errors that then land on the same path are joined with ``or``.
- ``missing`` is reported on the parent mapping: ``chain.2: missing key 'stage'``.
- ``extra_forbidden`` becomes ``unknown key 'x' (did you mean 'y'?)`` against the model's fields.
- Messages of our own validators lose pydantic's ``Value error, `` prefix.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from voxd.config.model import FIELD_CTX
from voxd.config.sources import Key, Path
from voxd.config.suggest import unknown_key

_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_issues(
    exc: ValidationError, data: Any, model: type[BaseModel], extra_keys: Iterable[str] = ()
) -> list[tuple[Path, str]]:
    """Convert ``exc``, raised validating ``data`` with ``model``, into ``(path, message)`` pairs.

    Paths are relative to ``data``. ``extra_keys`` are further keys accepted at the top of ``data``
    (a chain entry's ``stage``/``name``/``on_error`` next to the stage's params), offered as hints.
    """
    merged: dict[Path, list[str]] = {}  # errors from union members, by the path they land on
    out: list[tuple[Path, str]] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        loc, tagged = _strip_tags(tuple(err["loc"]), data, kind, model)
        ctx = err.get("ctx") or {}
        if kind == "missing" and loc:
            path, msg = loc[:-1], f"missing key '{loc[-1]}'"
        elif kind == "extra_forbidden" and loc:
            names = field_names(model, loc[:-1]) + (list(extra_keys) if len(loc) == 1 else [])
            path, msg = loc, unknown_key(str(loc[-1]), names)
        else:
            path, msg = loc, err["msg"]
            for prefix in _PREFIXES:
                msg = msg.removeprefix(prefix)
            if FIELD_CTX in ctx:
                path = (*path, ctx[FIELD_CTX])
        if tagged:
            if path not in merged:
                merged[path] = []
                out.append((path, ""))  # placeholder keeps the first error's position
            if msg not in merged[path]:
                merged[path].append(msg)
        else:
            out.append((path, msg))
    return [(p, m or " or ".join(merged[p])) for p, m in out]


def _strip_tags(loc: tuple[Key, ...], data: Any, kind: str, model: type[BaseModel]) -> tuple[Path, bool]:
    """Keep the parts of ``loc`` that are places in ``data`` or fields of the model; the others are
    union tags. A field absent from ``data`` is kept too (a missing key, or a checked default).

    Returns the path and whether a tag was dropped.
    """
    out: list[Key] = []
    node = data
    types_at: list[Any] = [model]
    tagged = False
    for part in loc:
        in_dict = isinstance(node, Mapping) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        elif isinstance(part, str) and part in _names_of(types_at):
            node = None
        else:
            tagged = True
            continue
        out.append(part)
        types_at = [t for tp in types_at for t in _step(tp, part)]
    return tuple(out), tagged


def field_names(model: type[BaseModel], loc: Sequence[Key]) -> list[str]:
    """Input keys of the model(s) found at ``loc`` inside ``model`` (for did-you-mean hints)."""
    types_at: list[Any] = [model]
    for part in loc:
        types_at = [t for tp in types_at for t in _step(tp, part)]
    return _names_of(types_at)


def _names_of(types_at: list[Any]) -> list[str]:
    """Input keys of the models among ``types_at`` (and their union members)."""
    names: list[str] = []
    for tp in types_at:
        for t in _members(tp):
            if isinstance(t, type) and issubclass(t, BaseModel):
                names += [f.alias if isinstance(f.alias, str) else n for n, f in t.model_fields.items()]
    return names


def _members(tp: Any) -> list[Any]:
    """``tp`` without ``Annotated``, split into its union members."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def _step(tp: Any, part: Key) -> list[Any]:
    """The type(s) one path segment below ``tp``."""
    out: list[Any] = []
    for t in _members(tp):
        origin, args = get_origin(t), get_args(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            for name, f in t.model_fields.items():
                if part in (name, f.alias):
                    out.append(f.annotation)
        elif isinstance(part, int) and origin in (list, set, frozenset, Sequence) and args:
            out.append(args[0])
        elif isinstance(part, int) and origin is tuple and args:
            out.append(args[0] if len(args) == 2 and args[1] is Ellipsis else args[min(part, len(args) - 1)])
        elif isinstance(part, str) and origin in (dict, Mapping) and len(args) == 2:
            out.append(args[1])
    return out
