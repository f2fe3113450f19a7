"""The package's import graph, read with ast: no circles, and graph/ imports nothing above itself.

What counts as an edge (decided here, once):

* every import of an onnxprune module, at module level, inside a function
  (deferred) or under ``if TYPE_CHECKING:`` — a deferred import still ties the
  two modules together, it only hides the circle until the call;
* ``from pkg import name`` where ``name`` is a submodule is an edge to that
  submodule, otherwise to ``pkg`` itself (its ``__init__``);
* importing ``a.b.c`` also runs the ``__init__`` of ``a.b``: an edge, except
  to the importer's own packages (Python initialises those first, so an
  ``__init__`` that re-exports its submodules is no circle).

graph/ may import ``onnxprune.errors`` (a leaf that imports nothing of ours)
and nothing else outside graph/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnxprune"
LEAVES = {"onnxprune.errors"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(module: str, path: Path) -> set[str]:
    """The onnxprune modules ``module`` names in its imports (anywhere in the file)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "onnxprune")
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else (node.module or "")
            if base.split(".")[0] != "onnxprune":
                continue
            subs = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
            out |= subs
            if len(subs) < len(node.names):
                out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for target in _targets(module, path):
            parts = target.split(".")
            edges.add(target)
            edges.update(".".join(parts[:i]) for i in range(1, len(parts))
                         if not module.startswith(".".join(parts[:i]) + "."))
        graph[module] = {t for t in edges if t in MODULES and t != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_graph_imports_nothing_above_it():
    graph = import_graph()
    above = {m: sorted(t for t in ts if not t.startswith("onnxprune.graph") and t not in LEAVES)
             for m, ts in graph.items() if m.startswith("onnxprune.graph")}
    assert {m: ts for m, ts in above.items() if ts} == {}
    for leaf in LEAVES:
        assert graph[leaf] == set()


@pytest.mark.parametrize("graph, want", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_circles_finds_exactly_the_loops(graph, want):
    assert circles(graph) == want


def test_deferred_and_package_imports_are_edges():
    graph = import_graph()
    assert "onnxprune.graph.session" in graph["onnxprune.graph.depth"]  # imported inside a function
    assert "onnxprune.passes" in graph["onnxprune.sparsity.passes"]  # imports passes.base: runs passes/__init__
    assert "onnxprune.sparsity" not in graph["onnxprune.sparsity.passes"]  # its own package: initialised first
