"""``--set PATH=VALUE`` overrides, applied to the parsed tree before validation.

``PATH`` is dotted (``chain.2.attenuation_limit_db``, ``array.positions``); a numeric segment indexes
a list. ``VALUE`` is YAML (``[[0.04,0,0],[0,0.04,0]]``, ``false``, ``loud``). Missing mapping keys
are created; indexing past the end of a list is an error. Every value an override puts in the tree
gets the override as its origin, so a later validation error names the ``--set`` instead of a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voxd.config.sources import Key, Origin, Path, Problem, SourceMap, dotted
from voxd.config.suggest import kind_of
from voxd.config.yamlload import YamlSyntaxError, parse_yaml


@dataclass(frozen=True)
class Override:
    """One parsed ``--set``: ``keys`` as typed (digits resolve to list indices when applied)."""

    arg: str
    keys: tuple[str, ...]
    value: Any
    origin: Origin


def parse_overrides(args: Sequence[str]) -> tuple[list[Override], list[Problem]]:
    """Parse every ``PATH=VALUE``; malformed ones become problems, the rest are returned in order."""
    parsed: list[Override] = []
    problems: list[Problem] = []
    for n, arg in enumerate(args):
        origin = Origin.override(arg, n)
        path, eq, text = arg.partition("=")
        keys = tuple(path.strip().split("."))
        if not eq or not all(keys):
            problems.append(Problem(origin, f"{origin.text}: expected PATH=VALUE"))
            continue
        try:
            doc = parse_yaml(text)
        except YamlSyntaxError as exc:
            problems.append(Problem(origin, f"{origin.text}: yaml: {exc.problem}"))
            continue
        # Problems inside the value (a duplicate key in a flow mapping) are reported against the path
        # they would land on; line numbers inside a one-line value mean nothing.
        for _line, sub, message in doc.issues:
            message = message.split(" (first at line")[0]
            where = dotted(keys + tuple(map(str, sub)))
            problems.append(Problem(origin, f"{origin.text}: {where}: {message}"))
        parsed.append(Override(arg, keys, doc.data, origin))
    return parsed, problems


def apply_overrides(tree: dict[str, Any], overrides: Sequence[Override], sources: SourceMap) -> list[Problem]:
    """Set each override's value into ``tree`` in place, recording origins; returns the problems."""
    problems: list[Problem] = []
    for ov in overrides:
        error = _apply(tree, ov, sources)
        if error:
            problems.append(Problem(ov.origin, f"{ov.origin.text}: {error}"))
    return problems


def _apply(tree: dict[str, Any], ov: Override, sources: SourceMap) -> str | None:
    """Apply one override; returns ``PATH: message`` when it cannot be applied."""
    node: Any = tree
    path: Path = ()
    for i, raw in enumerate(ov.keys):
        last = i == len(ov.keys) - 1
        key: Key
        if isinstance(node, dict):
            key = raw
            if not last and node.get(key) is None:
                # Create the missing (or empty: ``array:``) mapping the rest of the path goes into.
                node[key] = {}
                sources.replace_subtree((*path, key), ov.origin)
        elif isinstance(node, list):
            if not raw.isdigit():
                return f"{dotted(path)}: is a list; '{raw}' is not an index"
            key = int(raw)
            if key >= len(node):
                n = f"{len(node)} entr{'y' if len(node) == 1 else 'ies'}"
                return f"{dotted((*path, key))}: index {key} is past the end of the list ({n})"
        else:
            return f"{dotted(path)}: is {kind_of(node)}, it has no key '{raw}'"
        path = (*path, key)
        if last:
            node[key] = ov.value
            sources.replace_subtree(path, ov.origin)
        else:
            node = node[key]
    return None
