"""Fuzzing the config loader over the real schema (issue 16, classes 1 and 7).

What a config file or ``--set`` can do is bounded: the loader answers every input with a
:class:`~voxd.config.LoadedConfig` or a :class:`~voxd.errors.ConfigError` whose lines name the file (or
the override), never another exception, never a runaway allocation; and a config that loads builds a
chain that opens and processes audio. The trees are drawn from the installed plugins' own JSON Schema
(``voxd schema``), with values at, just past and far past each declared bound.

The derandomized CI profile (tests/conftest.py) makes a failure reproduce; a developer's run draws new
examples each time.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from voxd.chain import build_chain
from voxd.config import config_json_schema, load_config_text
from voxd.config.model import CAPTURE_TYPES, SECTIONS
from voxd.config.yamlload import YamlSyntaxError, parse_yaml
from voxd.errors import ConfigError
from voxd.pipeline import Pipeline
from voxd.plugins import load_plugins
from voxd.sources.base import Block

PLUGINS = load_plugins()
SCHEMA = config_json_schema(PLUGINS)
DEFS: dict[str, Any] = SCHEMA["$defs"]
FILE = "fuzz.yaml"


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = DEFS[node["$ref"].rsplit("/", 1)[1]]
    return node


def numeric_leaves(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every ``number``/``integer`` schema node below ``node``, with its JSON path."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") in ("number", "integer"):
            out.append((path, node))
        for key, value in node.items():
            out += numeric_leaves(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += numeric_leaves(value, f"{path}[{i}]")
    return out


# ------------------------------------------------------------------------------ ranges (class 7)
def test_every_number_in_the_schema_has_a_range() -> None:
    """Every numeric parameter of the core and of every installed plugin has a lower and an upper bound
    (``window_ms: 2e12`` asked for 233 TiB; ``hwm`` and ``wait_for_subscriber_s`` overflowed in run)."""
    unbounded = [
        path for path, node in numeric_leaves(SCHEMA)
        if not ({"minimum", "exclusiveMinimum"} & node.keys()
                and {"maximum", "exclusiveMaximum"} & node.keys())
        and "enum" not in node and "const" not in node
    ]
    assert not unbounded, unbounded


def _non_finite(prop: dict[str, Any]) -> Any:
    """A value shaped like ``prop`` (number, list of numbers, list of lists...) holding a NaN, or None."""
    prop = resolve(prop)
    for alt in prop.get("anyOf", []):
        if (value := _non_finite(alt)) is not None:
            return value
    if prop.get("type") == "number":
        return math.nan
    if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
        inner = _non_finite(prop["items"])
        return None if inner is None else [inner] * max(1, prop.get("minItems", 1))
    return None


MODELS: list[type[BaseModel]] = [*CAPTURE_TYPES.values(), *SECTIONS.values()]
MODELS += [cls.Params for kind in PLUGINS.registry.kinds() if (cls := PLUGINS.registry.get(kind))]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_non_finite_numbers_are_rejected_by_every_model(model: type[BaseModel]) -> None:
    properties = model.model_json_schema(ref_template="#/$defs/{model}").get("properties", {})
    for name, prop in properties.items():
        for value in (_non_finite(prop), ):
            if value is None:
                continue
            for bad in (value, _replace(value, math.inf)):
                with pytest.raises(ValidationError) as info:
                    model.model_validate({name: bad}, context={"rate": 16000})
                assert any(e["loc"][:1] == (name,) and e["type"] != "missing" for e in info.value.errors()), \
                    (model.__name__, name, bad, info.value.errors())


def _replace(value: Any, new: float) -> Any:
    return [_replace(v, new) for v in value] if isinstance(value, list) else new


# ------------------------------------------------------------------------------- trees (class 1, 7)
HOSTILE = st.sampled_from([math.nan, math.inf, -math.inf, 10**40, -(10**40), 2**63, -1, 0, 1e308, "", "x",
                           [], {}, None, True, [[1]], {"a": 1}])


def bounds(node: dict[str, Any], past: bool) -> list[Any]:
    """Values at a numeric node's declared bounds (``past``: just beyond them, and far beyond)."""
    out: list[Any] = []
    for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if key in node:
            b = node[key]
            step = 1 if node.get("type") == "integer" else max(abs(b) * 1e-6, 1e-6)
            inward = step if "inimum" in key else -step
            if past:
                out += [b - inward, b * 1000 if b else -1000] if "xclusive" not in key else [b]
            else:
                out += [b] if "xclusive" not in key else [b + inward]
    return out or [0, 1, -1]


@st.composite
def value_for(draw: st.DrawFn, node: dict[str, Any], depth: int = 0, noisy: bool = True) -> Any:
    """A value for the schema ``node``: mostly plausible (default, enum, a bound), sometimes just past
    a bound, sometimes hostile (wrong type, NaN, huge)."""
    node = resolve(node)
    if "const" in node:  # the stage kind: kept, so that the entry's own params get exercised
        return node["const"]
    # 0 is Hypothesis's favourite draw and where it shrinks to: make it the plausible case
    roll = draw(st.integers(0, 19 if noisy else 15))
    if roll == 19:
        return draw(HOSTILE)
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives:
        return draw(value_for(draw(st.sampled_from(alternatives)), depth, noisy))
    if "enum" in node:
        return draw(st.sampled_from(node["enum"]))
    if "default" in node and roll < 9:
        return node["default"]
    kind = node.get("type")
    if kind in ("number", "integer"):
        value = draw(st.sampled_from(bounds(node, past=roll >= 16)))
        return int(value) if kind == "integer" and isinstance(value, float) and value.is_integer() else value
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "null":
        return None
    if kind == "string":
        return draw(st.sampled_from(["x", "tcp://127.0.0.1:7700", "ipc:///tmp/voxd-fuzz", "", "a" * 300]))
    if kind == "array" and isinstance(node.get("items"), dict) and depth < 4:
        lo, hi = node.get("minItems", 0), min(node.get("maxItems", 6), 6)
        n = draw(st.integers(lo, max(lo, hi)))
        return [draw(value_for(node["items"], depth + 1, noisy)) for _ in range(n)]
    if kind == "object" or "properties" in node:
        return draw(section(node, depth + 1, noisy))
    return draw(HOSTILE)


@st.composite
def section(draw: st.DrawFn, node: dict[str, Any], depth: int = 0, noisy: bool = True) -> dict[str, Any]:
    """A mapping with a random subset of ``node``'s properties (the required ones usually present)."""
    node = resolve(node)
    out: dict[str, Any] = {}
    required = set(node.get("required", []))
    for name, prop in node.get("properties", {}).items():
        if name in required or draw(st.integers(0, 4 if noisy else 9)) == 4:
            out[name] = draw(value_for(prop, depth, noisy))
    return out


BY_KIND = {s["properties"]["stage"]["const"]: s for s in SCHEMA["properties"]["chain"]["items"]["oneOf"]}
#: stage kinds in an order that satisfies their side-value requirements (vad first, noise before the
#: suppressors and the beamformer, agc last); the fuzzer keeps a random subset of it
ORDER = ["highpass", "vad", "noise", "doa", "beamform", "wiener", "spectral_subtraction", "denoise",
         "mix", "gain", "passthrough_stft", "agc"]
NEEDS = {"noise": {"vad"}, "doa": {"vad"}, "beamform": {"vad", "noise", "doa"}, "wiener": {"vad", "noise"},
         "spectral_subtraction": {"vad", "noise"}, "agc": {"vad"}}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A config tree: sections and a chain of 0-4 stages drawn from the schema; usually the 4-mic
    geometry (so that the array stages can build on 4 channels)."""
    tree: dict[str, Any] = {"capture": {"type": "file", "path": "in.wav", "realtime": False}}
    # half the trees hold only plausible values (defaults, enums, in-range bounds): those exercise the
    # chains that load; the other half also values past the bounds and of the wrong type
    noisy = draw(st.booleans())
    for key in ("processing", "output", "log"):
        if draw(st.integers(0, 2)) == 2:
            tree[key] = draw(value_for(SCHEMA["properties"][key], 0, noisy))
    tree["array"] = ({"preset": "respeaker-4mic-hat"} if draw(st.integers(0, 5)) < 5 else
                     draw(value_for(SCHEMA["properties"]["array"], 0, noisy)))
    if draw(st.integers(0, 9)) < 9:  # usually in an order whose side values are provided in time
        chosen = {k for k in ORDER if draw(st.integers(0, 2)) == 0}
        for k in list(chosen):
            chosen |= NEEDS.get(k, set())
        kinds = [k for k in ORDER if k in chosen and k in BY_KIND]
    else:
        kinds = draw(st.lists(st.sampled_from(sorted(BY_KIND)), min_size=1, max_size=4))
    tree["chain"] = [draw(section(BY_KIND[k], 0, noisy)) for k in kinds]
    for entry in tree["chain"]:
        if not noisy or draw(st.integers(0, 3)) < 3:
            entry.pop("name", None)  # mostly the default names: explicit ones often clash
    if draw(st.integers(0, 9)) == 9:
        tree[draw(st.sampled_from(["x-pad", "chain", "typo"]))] = draw(HOSTILE)
    return tree


OVERRIDE_PATHS = ["processing.hop_ms", "chain.0.db", "output.hwm", "chain", "x-a", "chain.9", "",
                  "output.frame_ms.x", "log.level"]
OVERRIDE_VALUES = ["5", "1e40", ".nan", "[1, 2]", "{a: b}", "'", "", "*x"]
OVERRIDES = st.lists(st.tuples(st.sampled_from(OVERRIDE_PATHS), st.sampled_from(OVERRIDE_VALUES))
                     .map(lambda pv: f"{pv[0]}={pv[1]}") | st.text(max_size=20), max_size=2)


@given(configs(), st.sampled_from([4, 4, 4, 1, 2, 6]), st.sampled_from([[], [], [], []]) | OVERRIDES)
@settings(max_examples=150)
def test_any_config_loads_or_fails_with_located_lines(tree: dict[str, Any], channels: int,
                                                      overrides: list[str]) -> None:
    """Load, build, open and run two blocks: ConfigError (every line located) or working audio."""
    text = yaml.safe_dump(tree, allow_unicode=True)
    try:
        loaded = load_config_text(text, FILE, overrides, plugins=PLUGINS)
        chain = build_chain(loaded, channels)
    except ConfigError as e:
        assert e.lines and all(line.startswith((f"{FILE}:", "--set ")) for line in e.lines), e.lines
        event("config error")
        return
    event(f"chain of {len(chain.stages())} stages ran")
    cfg = loaded.config
    from voxd.runtime import open_chain

    open_chain(loaded, chain)
    try:
        out_frame = max(1, round(chain.in_format.rate * cfg.output.frame_ms / 1000))
        pipe = Pipeline(chain, cfg.processing.rate, out_frame)
        rng = np.random.default_rng(0)
        n = cfg.processing.hop_samples * 3
        frames = []
        for _ in range(2):
            frames += pipe.push(Block(rng.standard_normal((channels, n)).astype(np.float32) * 0.1, 0.0))
        frames += pipe.flush()
        for f in frames:
            assert np.isfinite(f.samples).all()
        assert not [(s.name, s.errors) for s in chain.stages() if s.errors]
    finally:
        chain.close()


# ---------------------------------------------------------------------------------- YAML (class 1)
@st.composite
def alias_documents(draw: st.DrawFn) -> str:
    """Anchored lists and mappings that reference earlier anchors: a random DAG, often exponential."""
    lines = []
    for i in range(draw(st.sampled_from([14, 8, 3]))):
        count = draw(st.sampled_from([12, 5, 1, 0]))
        refs = [f"*a{i - 1 - draw(st.integers(0, min(i - 1, 3)))}" for _ in range(count)] if i else []
        items = refs + [str(v) for v in draw(st.lists(st.integers(0, 9), max_size=3))]
        if draw(st.booleans()):
            lines.append(f"x-a{i}: &a{i} [{', '.join(items)}]")
        else:
            lines.append(f"x-a{i}: &a{i} {{{', '.join(f'k{j}: {v}' for j, v in enumerate(items))}}}")
    if draw(st.booleans()):
        lines.append("chain: " + "[" * draw(st.integers(1, 200)) + "]" * draw(st.integers(0, 200)))
    return "\n".join(lines) + "\n"


@given(alias_documents())
@settings(max_examples=50)
def test_yaml_parse_is_bounded(text: str) -> None:
    """Any document parses or raises YamlSyntaxError (alias expansion and depth are bounded), in well
    under a second (an unbounded parser runs out of memory on the exponential ones)."""
    t0 = time.process_time()
    try:
        parse_yaml(text)
    except YamlSyntaxError as e:
        assert "\n" not in e.problem
    assert time.process_time() - t0 < 2.0
