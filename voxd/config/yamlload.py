"""YAML with a line number for every value, and duplicate keys as errors.

PyYAML's ``SafeLoader`` composes the document into nodes (which carry their marks); we then build
plain Python data ourselves so that each value's line can be recorded by path, duplicate keys can be
reported (PyYAML silently keeps the last one), and mapping keys stay the text the user typed (plain
``yaml.safe_load`` would turn a key ``on:`` into ``True``).

Building is also where a hostile document is stopped. An alias is a reference to an anchored node, so
nine levels of ten aliases each ("billion laughs") compose into a few hundred nodes but expand into a
billion values; PyYAML has no limit of its own. Here every value built counts, aliases included, and a
document that expands beyond :data:`MAX_VALUES` values, or nests deeper than :data:`MAX_DEPTH` levels
(the composer and the builder recurse per level), is a :class:`YamlSyntaxError`. Callers also bound
the text itself (:data:`voxd.config.load.MAX_CONFIG_BYTES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import yaml

from voxd.config.sources import Path

MERGE_TAG = "tag:yaml.org,2002:merge"

#: Values a document may expand to (every scalar, list and mapping built, each alias use counting
#: again). A real config has a few hundred.
MAX_VALUES = 100_000
#: Levels of nesting (lists and mappings inside each other, aliases expanded). Configs use about 5.
MAX_DEPTH = 64


class YamlSyntaxError(Exception):
    """The text is not YAML. ``line`` is 1-based; ``problem`` is PyYAML's one-line explanation."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"{line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass
class Parsed:
    """A built document: ``data``, the 1-based ``lines`` of each path, and ``issues``: problems found
    while building (duplicate keys...) as ``(line, path, message)``."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    issues: list[tuple[int, Path, str]] = field(default_factory=list)


def parse_yaml(text: str) -> Parsed:
    """Parse one YAML document. An empty document gives ``data=None``.

    Raises :class:`YamlSyntaxError` when the text is not (single-document) YAML.
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = _Loader(text)  # checks the characters: may raise ReaderError
        node = loader.get_single_node()
        out = Parsed(None)
        if node is not None:
            out.data = _Builder(loader, out).build(node, (), node.start_mark.line + 1)
        return out
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if problem.startswith("but ") and exc.context:  # "but found another document" needs its context
            problem = f"{exc.context}, {problem}"
        raise YamlSyntaxError(mark.line + 1 if mark else 1, problem) from None
    except yaml.reader.ReaderError as exc:  # a control character or bad encoding: no mark, a position
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise YamlSyntaxError(line, f"unacceptable character #x{exc.character:04x}: {exc.reason}") from None
    finally:
        if loader is not None:
            loader.dispose()


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` whose composer refuses to nest deeper than :data:`MAX_DEPTH` (it recurses once
    per level: ``[[[[...`` 5000 deep would end in a RecursionError)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    """Turns composed nodes into dicts, lists and scalars, recording lines and problems in ``out``."""

    def __init__(self, loader: yaml.SafeLoader, out: Parsed) -> None:
        self.loader = loader
        self.out = out
        self.active: set[int] = set()  # nodes being built: an alias back into one is a cycle
        self.count = 0  # values built so far, aliases expanded
        self.depth = 0

    def build(self, node: yaml.Node, path: Path, line: int) -> Any:
        """Build ``node`` found at ``path``; ``line`` is where it is named (its key's line for a
        mapping value, so that errors point at ``key:`` rather than the first line of its body)."""
        self.count += 1
        if self.count > MAX_VALUES:
            raise YamlSyntaxError(line, f"the document expands to more than {MAX_VALUES} values (aliases "
                                        "of aliases?); a config needs far fewer")
        if len(path) > MAX_DEPTH:
            raise YamlSyntaxError(line, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
        self.out.lines[path] = line
        if id(node) in self.active:
            self.out.issues.append((line, path, "yaml: recursive alias"))
            return None
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as exc:  # an unknown tag such as !!python/name
                self.out.issues.append((line, path, f"yaml: {exc.problem}"))
                return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = enumerate(node.value)
                return [self.build(item, (*path, i), item.start_mark.line + 1) for i, item in items]
            return self._mapping(cast(yaml.MappingNode, node), path, line)  # the composer's third kind
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Path, line: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges = [v for k, v in node.value if k.tag == MERGE_TAG]
        # ``<<: *defaults`` keys come first so that the mapping's own keys override them (YAML merge
        # semantics); among several merged mappings the earlier one wins.
        sources = [m for v in merges for m in (v.value if isinstance(v, yaml.SequenceNode) else [v])]
        for src in reversed(sources):
            merged = self.build(src, path, src.start_mark.line + 1)
            if isinstance(merged, dict):
                result.update(merged)
            else:
                self.out.issues.append((src.start_mark.line + 1, path, "yaml: '<<' must merge a mapping"))
        self.out.lines[path] = line  # building the merged mappings recorded their own line here
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.out.issues.append((key_line, path, "keys must be plain words, not lists or mappings"))
                continue
            key: str = key_node.value
            if key in first_line:
                self.out.issues.append(
                    (key_line, (*path, key), f"duplicate key (first at line {first_line[key]})"))
            else:
                first_line[key] = key_line
            result[key] = self.build(value_node, (*path, key), key_line)
        return result

