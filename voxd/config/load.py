"""Loading a config file: parse, apply overrides, validate every section, collect every error."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from voxd.config.issues import validation_issues
from voxd.config.model import (
    CAPTURE_TYPES,
    SECTIONS,
    TOP_LEVEL_KEYS,
    FileCapture,
    OutputConfig,
    ProcessingConfig,
    StageSpec,
    VoxdConfig,
)
from voxd.config.overrides import apply_overrides, parse_overrides
from voxd.config.sources import Key, Origin, Path, Problem, SourceMap, dotted
from voxd.config.stages import resolve_chain
from voxd.config.suggest import did_you_mean, kind_of, unknown_key
from voxd.config.yamlload import YamlSyntaxError, parse_yaml
from voxd.errors import ConfigError
from voxd.plugins import Plugins, load_plugins

Issue = tuple[Path, str]

#: top-level keys starting with this are ignored: a place for YAML anchors (``x-hp: &hp {...}``),
#: as in docker-compose files
SCRATCH_PREFIX = "x-"

#: Largest config file read (bytes). Real configs are a few KB; the bound keeps a reload's parse short
#: (PyYAML is pure Python: up to several seconds per MiB) and a mistaken path (a recording, /dev/zero)
#: harmless.
MAX_CONFIG_BYTES = 256 * 1024


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with the origin of each of its values.

    ``config``: the :class:`VoxdConfig`; ``path``: the file as given; ``raw``: the parsed tree with
    the overrides applied; ``sources``: where each value came from.
    """

    config: VoxdConfig
    path: str
    raw: dict[str, Any]
    sources: SourceMap

    def where(self, path: Iterable[Key]) -> str:
        """``FILE:LINE`` (or ``--set X=Y``) of ``path``, or of its nearest ancestor in the file."""
        return self.sources.where(path)

    def error(self, path: Iterable[Key], message: str) -> str:
        """A complete error line: ``FILE:LINE: PATH: MESSAGE``."""
        return self.sources.problem(tuple(path), message).text


def load_config(path: str, overrides: Sequence[str] = (), plugins: Plugins | None = None) -> LoadedConfig:
    """Load and validate the config file ``path`` with ``--set`` ``overrides`` applied.

    ``plugins`` defaults to :func:`voxd.plugins.load_plugins`. Raises :class:`ConfigError` listing
    every problem, in line order.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # never more: a FIFO or /dev/zero ends here too
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror or exc}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: cannot read config: larger than {MAX_CONFIG_BYTES // 1024} KiB (a "
                           "config is a few KB: is this the right file?)"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot read config: not UTF-8 text (byte {exc.start})"]) from None
    return load_config_text(text, path, overrides, plugins)


def load_config_text(
    text: str, filename: str, overrides: Sequence[str] = (), plugins: Plugins | None = None
) -> LoadedConfig:
    """:func:`load_config` for text already read; ``filename`` is used in error lines."""
    try:
        doc = parse_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError([f"{filename}:{exc.line}: yaml: {exc.problem}"]) from None
    sources = SourceMap(filename)
    for p, line in doc.lines.items():
        sources.set(p, Origin.line(filename, line))
    problems = [Problem(Origin.line(filename, line), f"{filename}:{line}: {dotted(p)}: {msg}")
                for line, p, msg in doc.issues]
    tree = {} if doc.data is None else doc.data
    if not isinstance(tree, dict):
        line = doc.lines.get((), 1)
        raise ConfigError([f"{filename}:{line}: (top level): must be a mapping of sections, got "
                           f"{kind_of(tree)}"])
    parsed, override_problems = parse_overrides(overrides)
    problems += override_problems + apply_overrides(tree, parsed, sources)

    config, issues = _validate(tree, load_plugins() if plugins is None else plugins)
    problems += [sources.problem(p, msg) for p, msg in issues]
    if problems or config is None:
        raise ConfigError([p.text for p in sorted(problems, key=lambda p: p.origin.rank)])
    config = _capture_path_from(config, sources, os.path.dirname(filename))
    # The scratch keys served the YAML anchors; nothing reads them now. Dropped, with their lines, so
    # that a LoadedConfig stays small (a reload sends it between processes).
    for key in [k for k in tree if k.startswith(SCRATCH_PREFIX)]:
        del tree[key]
        sources.forget((key,))
    return LoadedConfig(config, filename, tree, sources)


def _capture_path_from(config: VoxdConfig, sources: SourceMap, base: str) -> VoxdConfig:
    """``config`` with a relative ``capture.path`` written in the file joined to ``base``, the file's
    directory: a config means the same recording wherever it is run from (a unit's config in /etc/voxd
    runs with the working directory /). A path given with ``--set`` stays relative to the working
    directory, where the shell that typed it is; an absolute path is kept as it is."""
    cap = config.capture
    if not base or not isinstance(cap, FileCapture) or cap.path is None or os.path.isabs(cap.path):
        return config
    if not sources.origin(("capture", "path")).in_file:  # --set capture.path=... (or capture={...})
        return config
    return dataclasses.replace(config, capture=cap.model_copy(update={"path": os.path.join(base, cap.path)}))


def _validate(tree: dict[str, Any], plugins: Plugins) -> tuple[VoxdConfig | None, list[Issue]]:
    """Validate each section on its own so that one bad section does not hide another's errors."""
    issues: list[Issue] = [
        ((key,), unknown_key(key, TOP_LEVEL_KEYS))
        for key in tree
        if key not in TOP_LEVEL_KEYS and not key.startswith(SCRATCH_PREFIX)
    ]
    capture = _capture(tree.get("capture"), issues)
    sections: dict[str, Any] = {}
    for key, model in SECTIONS.items():
        raw = tree.get(key)
        if key == "array" and raw is None:  # the one optional section
            sections[key] = None
            continue
        sections[key] = _section(key, model, {} if raw is None else raw, issues)
    processing: ProcessingConfig | None = sections["processing"]
    chain, chain_issues = resolve_chain(tree.get("chain"), plugins, processing.rate if processing else None)
    issues += chain_issues
    output: OutputConfig | None = sections["output"]
    if output is not None:
        issues += _output_checks(output, processing, chain if not chain_issues else None)
    if issues:
        return None, issues
    # No issues means every section validated (a failed one always adds at least one issue).
    assert capture is not None and processing is not None and output is not None
    return VoxdConfig(capture, processing, sections["array"], output, sections["log"], chain), []


def _section(key: str, model: type[BaseModel], raw: Any, issues: list[Issue]) -> Any:
    """Validate one section with ``model``; errors go to ``issues`` (prefixed by ``key``), returns None."""
    if not isinstance(raw, dict):
        issues.append(((key,), f"must be a mapping, got {kind_of(raw)}"))
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        issues += [((key, *p), m) for p, m in validation_issues(exc, raw, model)]
        return None


def _capture(raw: Any, issues: list[Issue]) -> Any:
    """The capture model is picked by ``type`` here (no pydantic union, so no union tag in paths)."""
    raw = {} if raw is None else raw
    kind = raw.get("type", "file") if isinstance(raw, dict) else "file"
    if not isinstance(kind, str) or kind not in CAPTURE_TYPES:
        types = list(CAPTURE_TYPES)
        issues.append((("capture", "type"), f"unknown capture type '{kind}'{did_you_mean(str(kind), types)}; "
                                             f"available: {', '.join(types)}"))
        return None
    return _section("capture", CAPTURE_TYPES[kind], raw, issues)


def _output_checks(output: OutputConfig, processing: ProcessingConfig | None,
                   chain: list[StageSpec] | None) -> list[Issue]:
    """Rules linking ``output`` to other sections (checked only when those are valid)."""
    issues: list[Issue] = []
    if processing is not None:
        n = processing.rate * output.frame_ms / 1000
        if abs(n - round(n)) > 1e-6:
            issues.append((("output", "frame_ms"), f"{output.frame_ms:g} ms is not a whole number of "
                           f"samples at {processing.rate} Hz"))
    if chain is not None:
        names = [s.name for s in chain]
        for i, tap in enumerate(output.taps):
            if tap not in names:
                issues.append((("output", "taps", i), f"no stage named '{tap}' in the chain"
                               f"{did_you_mean(tap, names)}; names: {', '.join(names) or '(none)'}"))
    return issues
