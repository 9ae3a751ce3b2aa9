"""The layout's rules, checked on the source: imports go only downward (no cycle, counting
imports inside functions; ``if TYPE_CHECKING:`` ones are for type checkers only), and every
dialect difference lives in ``jobkit/backends/`` (or ``database.py``, which picks one)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jobkit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")
            if "migrations" not in p.relative_to(PACKAGE).parts[:1]}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at module level, in functions and classes, but
    not under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """``module -> {jobkit modules it imports at run time}``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    mod = node.module or ""
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                targets = subs or [mod]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("jobkit"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path(graph: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete cycle inside a component, for the failure message."""
    members = set(comp)
    start = comp[0]
    trail = [start]
    seen = {start}
    node = start
    while True:
        nxt = sorted(graph[node] & members)
        step = next((n for n in nxt if n == start), None) or next(
            (n for n in nxt if n not in seen), nxt[0])
        trail.append(step)
        if step in seen:
            break
        seen.add(step)
        node = step
    return " -> ".join(trail)


def test_the_graph_is_read_correctly() -> None:
    graph = import_graph()
    # A module-level import, a function-level one, and a TYPE_CHECKING one that must not count.
    assert "jobkit.errors" in graph["jobkit.jsonutil"]
    assert "jobkit.runner" in graph["jobkit.cli"] or any(
        "jobkit.runner" in graph[m] for m in graph if m.startswith("jobkit.cli"))
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_at_runtime() -> None:
    graph = import_graph()
    # The package itself re-exports the public names; every other module is below it.
    graph.pop("jobkit")
    for deps in graph.values():
        deps.discard("jobkit")
    found = cycles(graph)
    assert not found, "import cycles (move the shared helper down a layer):\n" + "\n".join(
        _path(graph, c) for c in found)


# A test of which database this is: the dialect's name, a helper named for one, or a URL or
# backend name compared with one.
_DIALECT = re.compile(r"dialect\.name|\bis_postgres\b|\bis_sqlite\b"
                      r"|startswith\(\s*[\"'](sqlite|postgres)"
                      r"|[=!]=\s*[\"'](sqlite|postgresql)[\"']|[\"'](sqlite|postgresql)[\"']\s*[=!]=")
#: urls.py only names the URL a user probably meant, before any backend is chosen.
_ALLOWED = {Path("database.py"), Path("urls.py")}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(
    p.relative_to(PACKAGE)))
def test_dialect_differences_live_in_the_backends(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] == "backends" or rel in _ALLOWED:
        return
    hits = [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if _DIALECT.search(line)]
    assert not hits, "a dialect test outside jobkit/backends/:\n" + "\n".join(hits)
