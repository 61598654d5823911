"""The package's structure, checked on its source: no import loops in ``voxd/``, command modules imported
by the CLI alone, leaf modules that stay leaves, and one run assembly (``voxd/runtime.py``).

Every ``import`` counts, wherever it is (module level, inside a function, under ``TYPE_CHECKING``): a
loop that only a lazy import keeps from failing today is still a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "voxd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}


def _imports(name: str) -> set[str]:
    """The voxd modules that ``name`` imports (a ``from X import Y`` of a submodule Y counts as X.Y)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    targets: set[str] = set()
    for target in found:
        if target not in MODULES or target == name:
            continue
        targets.add(target)
        # importing voxd.a.b runs voxd/a/__init__.py first, unless the importer is inside voxd.a
        parts = target.split(".")
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if not name.startswith(parent + ".") and parent != name:
                targets.add(parent)
    return targets


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    assert {"voxd.cli", "voxd.runtime", "voxd.commands.process", "voxd.config.model"} <= set(GRAPH)
    assert "voxd.runtime" in GRAPH["voxd.daemon"] and "voxd.config" in GRAPH["voxd.runtime"]


def test_no_import_loops_in_voxd():
    assert _cycles(GRAPH) == []


def test_only_the_cli_imports_a_command_module():
    offenders = {name: sorted(t for t in targets if t == "voxd.commands" or t.startswith("voxd.commands."))
                 for name, targets in GRAPH.items() if name != "voxd.cli"}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("leaf", ["voxd.geometry", "voxd.side", "voxd.errors"])
def test_leaf_modules_import_nothing_from_voxd(leaf):
    assert GRAPH[leaf] == set()


def _calls(name: str) -> set[str]:
    """Names of the functions and classes called in module ``name`` (``f(...)`` and ``x.f(...)``)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return called


@pytest.mark.parametrize("step, home", [
    ("Pipeline", {"voxd.runtime"}),  # the pipeline is made in the run assembly only
    ("event_emitter", {"voxd.runtime"}),  # stage events -> published frames
    ("mic_positions", {"voxd.runtime", "voxd.chain"}),  # the geometry given to the stages
])
def test_the_run_assembly_exists_once(step, home):
    assert {name for name in MODULES if step in _calls(name)} == home
