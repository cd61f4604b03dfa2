"""No import cycle among sdsim modules, counting every import statement the code can run.

The graph is built from the source (not from ``sys.modules``), so an import inside a function
counts as much as one at the top of a module: a cycle that only works because one side imports
late is still a cycle. Edges:

* ``import a.b.c`` and ``from a.b.c import name`` point to ``a.b.c``; ``from a.b import c``
  points to ``a.b.c`` when ``c`` is a submodule;
* importing a module first runs the ``__init__`` of every package above it, so the edge also goes
  to each of those packages, except the importer's own enclosing packages (they are already being
  initialised when the importer runs; reading a name from one of them still counts);
* relative imports are resolved against the importing module;
* imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sdsim"


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, outside ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` under ``root`` it imports (rules: module docstring)."""
    files = {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    packages = {n for n, p in files.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        own = set(_ancestors(name))
        here = name if name in packages else name.rsplit(".", 1)[0]
        targets: set[str] = set()  # what the statement reads: modules, or a package's names
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in files else base)
        edges: set[str] = set()
        for t in targets:
            if t not in files:
                continue
            edges.add(t)
            # the packages above it run first, unless they enclose the importer
            edges.update(a for a in _ancestors(t) if a not in own)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan; the graph has ~80 nodes, recursion is fine
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in components:
        members = set(comp)
        start = comp[0]
        # breadth-first search for the shortest way back to the start inside the component
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = prev.get(v)
        cycles.append([*path, start])
    return cycles


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from p.a import f\n",
        "a.py": "def f():\n    from .b import g\n    return g\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p import a\n",
        "c.py": "from p.sub import d\nimport p.e\n",
        "e.py": "from . import c\n",
        "sub/__init__.py": "from ..a import f\n",
        "sub/d.py": "from p.sub import X\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    g = import_graph(tmp_path, "p")
    assert g["p"] == {"p.a"}
    assert g["p.a"] == {"p.b"}  # inside a function, relative
    assert g["p.b"] == set()  # TYPE_CHECKING only
    # a submodule; its package's __init__ runs first; the importer's own package does not count
    assert g["p.c"] == {"p.sub.d", "p.sub", "p.e"}
    assert g["p.e"] == {"p.c"}  # `from . import c`: the submodule
    assert g["p.sub"] == {"p.a"}  # two dots up
    assert g["p.sub.d"] == {"p.sub"}  # a name read from the enclosing package counts
    assert find_cycles(g) == [["p.c", "p.e", "p.c"]]
    # sdsim itself: its __init__ imports the simulation at module level
    assert "sdsim.simulation" in import_graph()["sdsim"]


def test_cycle_finder_reports_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def design_layers() -> dict[str, int]:
    """Module (or package) -> its layer's index in docs/design.md's layer table (top row 0)."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text.split("| layer | modules | holds |", 1)[1].split("\n\n", 1)[0]
    layers: dict[str, int] = {}
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("|---")]
    for i, row in enumerate(rows):
        cell = row.split("|")[2]
        for name in cell.replace("`", "").split(","):
            name = name.strip().rstrip("/")
            if name:
                layers[f"{PACKAGE}.{name}"] = i
    return layers


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    while module:
        if module in layers:
            return layers[module]
        module = module.rpartition(".")[0]
    return None


def test_imports_follow_the_design_layers() -> None:
    # docs/design.md promises that a module imports only from its own layer or the ones above it;
    # every sdsim module must be in the table, so a new module is placed on purpose
    layers = design_layers()
    graph = import_graph()
    unplaced = sorted(m for m in graph if m != PACKAGE and _layer_of(m, layers) is None)
    assert not unplaced, f"modules missing from docs/design.md's layer table: {unplaced}"
    upward = []
    for module, targets in graph.items():
        here = _layer_of(module, layers)
        if here is None:  # the package's own __init__: the public API, above every layer
            continue
        for t in targets:
            there = _layer_of(t, layers)
            if there is not None and there > here:
                upward.append(f"{module} (layer {here}) imports {t} (layer {there})")
    assert not upward, "imports against docs/design.md's layers:\n" + "\n".join(sorted(upward))
