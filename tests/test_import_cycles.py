"""The project's modules import each other without cycles (read statically, nothing is imported).

Every ``import`` and ``from ... import`` counts, function-level ones included: an import hidden
inside a function still ties the two modules together, it only defers the failure. Imports under
``if TYPE_CHECKING:`` count too: a module annotated with a type of a module that uses it cannot
make that import real without failing ("partially initialized module"), so the two are one unit.
A submodule's implicit import of its parent packages is left out (``attnbench.variants.layer`` runs
``variants/__init__.py`` first, which re-exports it); an explicit ``from attnbench.variants import build``
inside the package does count.

Modules loaded by name are read too (``by_name=True``): ``import_module("a.b")`` with a literal, and
a registry's ``package="a.b"`` (it imports every module of that package on its first lookup). Folders
are checked as well as files: a folder depends on another when any module in it imports one there.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "variants")


def _module_name(path: Path) -> str:
    """The name a module imports by: the repository's folders are installed under ``attnbench``."""
    parts = ["attnbench", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, *, type_checking: bool = True) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` (with ``type_checking=False``: except those under ``if TYPE_CHECKING:``)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _loaded_by_name(tree: ast.AST) -> list[str]:
    """Module names loaded by name: ``import_module("x")``'s literal and any call's ``package="x"`` keyword."""
    names = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        args = [*node.args[:1]] if func == "import_module" else []
        args += [k.value for k in node.keywords if k.arg == "package"]
        names += [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` is or lies in
    (``attnbench.variants.layer.Step`` -> ``attnbench.variants.layer``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(*, by_name: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports (TYPE_CHECKING included); with ``by_name``, also those it
    loads by name (a package loaded by name: the package and every module directly in it)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        if by_name:
            for name in _loaded_by_name(tree):
                if name in modules and name != module:
                    graph[module].add(name)
                    graph[module] |= {m for m in modules if m.rpartition(".")[0] == name} - {module}
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != module:
                    graph[module].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative DFS, colours white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    return None


def _folder(module: str, modules: dict[str, Path]) -> str:
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Folder -> the folders its modules import; a folder and the folders inside it are one (a package
    re-exporting its submodules is no cycle)."""
    modules = _modules()
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        a = _folder(module, modules)
        out.setdefault(a, set())
        for target in targets:
            b = _folder(target, modules)
            out.setdefault(b, set())
            if not (a == b or a.startswith(b + ".") or b.startswith(a + ".")):
                out[a].add(b)
    return out


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_imports_nothing_above_it() -> None:
    # variants.core: step and plan types, the family protocol, the registries' machinery; and the modules
    # they stand on (not moved, so that branches editing them merge): shape, cache and its views, masks,
    # cost records, kernel protocols.
    graph = import_graph(by_name=False)
    above = tuple(f"attnbench.{m}" for m in ("variants.families", "variants.impls", "variants.layer",
                                             "variants.implementation", "harness"))
    leaves = tuple(f"attnbench.variants.{m}" for m in ("shape", "cache", "cache_view", "quant", "mask", "cost",
                                                       "kernel"))
    for module in (m for m in graph if m.startswith("attnbench.variants.core") or m in leaves):
        reached, todo = set(), [module]
        while todo:
            for nxt in graph[todo.pop()] - reached:
                reached.add(nxt)
                todo.append(nxt)
        assert not {m for m in reached if m.startswith(above)}, (module, sorted(m for m in reached if m.startswith(above)))


# Folder cycles that remain, each with what removes it (issue 20 items 5 and 6; the case runner's and the
# report's reorganisation): a new one fails, and one that is gone must leave this list.
KNOWN_FOLDER_CYCLES: set[frozenset[str]] = set()  # none left; a new one fails below


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Every strongly connected component of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return out


def test_folders_have_no_cycles_but_the_known_ones() -> None:
    found = set(cycles(folder_graph(import_graph())))
    assert found - KNOWN_FOLDER_CYCLES == set(), "new folder cycle(s): " + "; ".join(
        " <-> ".join(sorted(c)) for c in found - KNOWN_FOLDER_CYCLES)
    assert KNOWN_FOLDER_CYCLES - found == set(), "gone: remove from KNOWN_FOLDER_CYCLES: " + "; ".join(
        " <-> ".join(sorted(c)) for c in KNOWN_FOLDER_CYCLES - found)


def test_the_checker_sees_function_level_imports_and_cycles() -> None:
    # The checker itself must be able to fail: a hand-made cycle through a function-level import.
    tree = ast.parse("def f():\n    from attnbench.variants.layer import x\n"
                     "if TYPE_CHECKING:\n    import attnbench.harness\n")
    names = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in _imports(tree)]
    assert names == ["attnbench.variants.layer", "attnbench.harness"]
    names = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
             for n in _imports(tree, type_checking=False)]
    assert names == ["attnbench.variants.layer"]
    tree = ast.parse("importlib.import_module('a.b')\nR = Registry('x', package='c.d')\nimport_module(name)\n")
    assert _loaded_by_name(tree) == ["a.b", "c.d"]
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [frozenset({"a", "b"})]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # and the real graph has edges (an empty graph would pass trivially)
    graph = import_graph()
    assert "attnbench.variants.cache" in graph["attnbench.variants.layer"]
    assert "attnbench.variants" in graph["attnbench.harness.studies.lowrank.study"]


# Plugin discovery: a registry imports every module of a package by name on its first lookup, and those
# modules import what the registry's users import (a family imports the layer, the layer resolves names in
# the registry). These loads close cycles that only the discovery's laziness keeps from failing; no other
# module may load by name into a cycle. (issue 20: to remove, plugins would export an attribute the
# registry collects, and the layer would take implementations, not names.)
KNOWN_DISCOVERY = ("attnbench.variants.registry", "attnbench.variants.core.families",
                   "attnbench.variants.convert.method", "attnbench.variants.hf_peer",
                   "attnbench.harness.report.figures")


def test_by_name_loads_close_no_cycle_but_plugin_discovery() -> None:
    static, by_name = import_graph(), import_graph(by_name=True)
    # the loads are seen
    assert by_name["attnbench.variants.core.families"] - static["attnbench.variants.core.families"]
    trimmed = {m: targets if m not in KNOWN_DISCOVERY else static[m] for m, targets in by_name.items()}
    cycle = find_cycle(trimmed)
    assert cycle is None, "import cycle through a load by name: " + " -> ".join(cycle)
    remaining = cycles(by_name)
    assert all(set(KNOWN_DISCOVERY) & c for c in remaining), remaining
