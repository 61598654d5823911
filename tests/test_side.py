"""The side-value vocabulary (``voxd.side``): every key a first-party stage reads or writes is declared
there once, no module spells a declared name as a bare string, declarations are checked, and
``docs/side-values.md`` shows exactly what is declared."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from voxd import side
from voxd.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]


def test_every_key_of_a_first_party_stage_is_declared():
    registry = load_plugins(disable=()).registry
    declared = {str(k): k for k in side.declared()}
    for kind in registry.kinds():
        cls = registry.get(kind)
        assert cls is not None
        params = cls.Params.model_validate(_minimal_params(kind))
        keys = {*cls.requires, *cls.provides, *cls.required_keys(params), *cls.provided_keys(params)}
        for key in keys:
            assert isinstance(key, side.SideKey) and declared.get(key) is key, (kind, key)


def _minimal_params(kind: str) -> dict[str, object]:
    return {"select": {"channels": [0]}}.get(kind, {})


def _bare_names(path: Path) -> list[tuple[int, str]]:
    """String constants equal to a declared name, outside docstrings and keyword arguments (labels)."""
    names = {str(k) for k in side.declared()}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.keyword)}
    for n in ast.walk(tree):  # attribute names in __slots__ are not side keys
        slots = any(isinstance(t, ast.Name) and t.id == "__slots__" for t in getattr(n, "targets", ()))
        if isinstance(n, ast.Assign) and slots:
            skip.update(id(c) for c in ast.walk(n.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and n.value in names and id(n) not in skip]


# voxd/wire.py: the wire format's own header field ``speech`` (a protocol field, not the side key)
SOURCES = sorted(p for p in [*(ROOT / "voxd").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
                 if p.name != "side.py" and p != ROOT / "voxd" / "wire.py")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_spells_a_declared_name(path):
    assert _bare_names(path) == []


def test_declarations_are_checked():
    again = side.declare("speech", dtype="bool", wire=True, provider="vad",
                         description=side.SPEECH.description)
    assert again is side.SPEECH
    with pytest.raises(ValueError, match="already declared"):
        side.declare("speech", dtype="float", wire=True, provider="other", description="x")
    with pytest.raises(ValueError, match="only scalars"):
        side.declare("test.array", dtype="float32", shape="(bins,)", wire=True, provider="t", description="x")
    with pytest.raises(ValueError, match="watched"):
        side.declare("test.watched", dtype="float", wire=False, watched=True, provider="t", description="x")
    with pytest.raises(AttributeError):
        side.SPEECH.unit = "dB"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(side.DOA_DEG)) is side.DOA_DEG


def test_wire_and_watched_keys():
    assert side.watched_names() == {"speech_prob", "doa_deg", "level_dbfs", "agc_gain_db", "aec.erle_db",
                                    "aec.delay_ms", "aec.active", "aec.doubletalk"}
    assert not side.on_wire("noise.psd") and side.on_wire("doa_deg") and side.on_wire("not.declared")


def test_the_documented_table_is_the_declared_one():
    doc = (ROOT / "docs" / "side-values.md").read_text(encoding="utf-8")
    assert side.markdown_table() in doc
