"""Resolving ``chain:`` entries against the installed stage kinds."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from voxd.config.issues import validation_issues
from voxd.config.model import ENTRY_KEYS, ChainEntry, StageSpec
from voxd.config.sources import Path
from voxd.config.suggest import did_you_mean, kind_of
from voxd.plugins import Plugins
from voxd.stage import Stage, StageParams

Issue = tuple[Path, str]


def unknown_stage(kind: str, plugins: Plugins) -> str:
    """``unknown stage 'higpass' (did you mean 'highpass'?); installed: ...; plugins that failed ...``.

    Failed plugins are always listed: we cannot know which kinds a plugin that did not load provides.
    """
    kinds = plugins.registry.kinds()
    msg = f"unknown stage '{kind}'{did_you_mean(kind, kinds)}; installed: {', '.join(kinds) or '(none)'}"
    failed = plugins.failed()
    if failed:
        msg += "; plugins that failed to load: " + ", ".join(f"{p.name} ({p.error})" for p in failed)
    return msg


def resolve_chain(raw: Any, plugins: Plugins, rate: int | None) -> tuple[list[StageSpec], list[Issue]]:
    """Validate every entry of ``chain`` (paths in the issues start with ``"chain"``).

    ``rate`` (Hz, None when ``processing`` is invalid) is given to stage ``Params`` validators as
    ``info.context["rate"]``, so that e.g. a cutoff can be checked against Nyquist.
    """
    if raw is None:  # ``chain:`` with every entry commented out
        return [], []
    if not isinstance(raw, list):
        return [], [(("chain",), f"must be a list of stages, got {kind_of(raw)}")]
    issues: list[Issue] = []
    names_given: list[tuple[int, str | None, str]] = []  # (index, explicit name, kind)
    resolved: dict[int, tuple[ChainEntry, type[Stage[Any]], StageParams]] = {}
    for i, item in enumerate(raw):
        at: Path = ("chain", i)
        if not isinstance(item, dict):
            issues.append((at, f"must be a mapping with a 'stage' key, got {kind_of(item)}"))
            continue
        meta_raw = {k: v for k, v in item.items() if k in ENTRY_KEYS}
        params_raw = {k: v for k, v in item.items() if k not in ENTRY_KEYS}
        name, kind = meta_raw.get("name"), meta_raw.get("stage")
        explicit = name if isinstance(name, str) else None
        names_given.append((i, explicit, kind if isinstance(kind, str) else ""))
        meta: ChainEntry | None = None
        try:
            meta = ChainEntry.model_validate(meta_raw)
        except ValidationError as exc:
            issues += [((*at, *p), m) for p, m in validation_issues(exc, meta_raw, ChainEntry)]
        # Go on with the params even when the name or on_error is bad: every error is reported.
        if not isinstance(kind, str):  # missing or not a string: already reported
            continue
        cls = plugins.registry.get(kind)
        if cls is None:
            issues.append(((*at, "stage"), unknown_stage(kind, plugins)))
            continue
        try:
            params = cls.Params.model_validate(params_raw, context={"rate": rate})
        except ValidationError as exc:
            issues += [((*at, *p), m) for p, m in validation_issues(exc, params_raw, cls.Params, ENTRY_KEYS)]
            continue
        except Exception as exc:  # a bug in a plugin's validator: report it here rather than crash loading
            plugin = plugins.registry.plugin_of(kind)
            issues.append((at, f"stage '{kind}' (plugin '{plugin}') failed validating its parameters: "
                               f"{type(exc).__name__}: {exc}"))
            continue
        if meta is not None:
            resolved[i] = (meta, cls, params)
    names, name_issues = _names(names_given)
    issues += name_issues
    if issues:
        return [], issues
    specs = [
        StageSpec(i, meta.stage, names[i], meta.on_error, params, cls)
        for i, (meta, cls, params) in resolved.items()
    ]
    return specs, []


def _names(entries: list[tuple[int, str | None, str]]) -> tuple[dict[int, str], list[Issue]]:
    """Unique names: explicit ones must not repeat; the others are the kind, then ``kind-2``, ...

    A default name skips any name given explicitly elsewhere in the chain.
    """
    names: dict[int, str] = {}
    issues: list[Issue] = []
    first: dict[str, int] = {}
    for i, name, _ in entries:
        if name is None:
            continue
        if name in first:
            msg = f"duplicate stage name '{name}' (first at chain.{first[name]})"
            issues.append((("chain", i, "name"), msg))
        else:
            first[name] = i
        names[i] = name
    taken = set(first)
    count: dict[str, int] = {}
    for i, name, kind in entries:
        if name is not None:
            continue
        n = count.get(kind, 0) + 1
        while (candidate := kind if n == 1 else f"{kind}-{n}") in taken:
            n += 1
        count[kind] = n
        taken.add(candidate)
        names[i] = candidate
    return names, issues

