"""The package's import graph: no cycles (lazy imports included), and nothing imports ``medclass.cli``.

The graph is read from the source with :mod:`ast` (``python tests/test_layering.py`` prints it as
``module -> imports`` lines and lists any cycle). Every ``import`` counts, also one inside a function: a
lazy import only hides a cycle until someone imports the other module first. Importing ``a.b.c`` runs the
packages ``a`` and ``a.b`` too, so those are edges as well, except for packages the importing module is
already inside (a submodule importing its sibling does not re-run its own package).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "medclass"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imported(name: str, tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """The medclass modules that importing ``name`` runs (directly named ones and their packages)."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            subs = {f"{stem}.{alias.name}" for alias in node.names} & modules.keys()
            targets.update(subs)  # `from pkg import submodule` needs the submodule, not what pkg defines
            if len(subs) < len(node.names):
                targets.add(stem)
    ran = {t for t in targets if t in modules}  # named: an edge even to the module's own package
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    for target in targets:  # run on the way: the packages above a named module, unless already running
        parts = target.split(".")
        ran.update(
            p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in modules and p not in own
        )
    return ran


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``module -> the medclass modules importing it runs``, for every module under ``root``."""
    modules = _modules(root)
    return {
        name: _imported(name, ast.parse(path.read_text(encoding="utf-8")), modules) - {name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from medclass.a.inner import x\n")
    (pkg / "a" / "inner.py").write_text("x = 1\n")
    (pkg / "b.py").write_text("def f():\n    from medclass.a import inner\n")
    (pkg / "c.py").write_text("from . import b\n")
    graph = import_graph(pkg)
    assert graph["medclass.b"] == {"medclass.a", "medclass.a.inner"}
    assert graph["medclass.c"] == {"medclass.b"}
    assert graph["medclass.a.inner"] == set()  # a submodule does not re-run its own package
    assert cycles(graph) == []
    (pkg / "a" / "inner.py").write_text("def g():\n    import medclass.c\n")  # lazy, still a cycle
    assert cycles(import_graph(pkg)) == [["medclass.a", "medclass.a.inner", "medclass.b", "medclass.c"]]
    (pkg / "a" / "inner.py").write_text("from medclass.a import y\n")  # the package imports it back
    assert cycles(import_graph(pkg)) == [["medclass.a", "medclass.a.inner"]]


def test_no_import_cycle_in_medclass() -> None:
    assert cycles(import_graph()) == []


def test_nothing_imports_cli() -> None:
    graph = import_graph()
    offenders = {
        name: sorted(t for t in targets if t == "medclass.cli" or t.startswith("medclass.cli."))
        for name, targets in graph.items()
        if not name.startswith("medclass.cli") and name not in ("medclass.__main__",)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


if __name__ == "__main__":
    g = import_graph()
    for module in sorted(g):
        print(f"{module} -> {', '.join(sorted(g[module])) or '-'}")
    found = cycles(g)
    print(f"\n{len(found)} import cycle(s)")
    for component in found:
        print("  " + " <-> ".join(component))
    sys.exit(1 if found else 0)
