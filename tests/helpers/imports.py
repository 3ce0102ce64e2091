"""The import checker behind ``tests/test_architecture.py`` (see ``docs/ARCHITECTURE.md``).

It reads every module of a package tree with :mod:`ast` (nothing is imported or run), resolves
each ``import``/``from ... import`` (relative ones against the importing module's package) to a
module name, and checks the result against the rules of the layout:

``room``
    a part of the package imports a part it may not (the table :data:`MAY_IMPORT`);
``io-facade``
    a module outside ``<package>/io/`` imports a submodule of ``<package>.io`` (``engine``,
    ``uring``, ``_jobstate``, ...) instead of the package ``<package>.io`` itself;
``cycle``
    an import that lies on a cycle of the module-level import graph;
``missing-module``
    an import of a ``<package>.*`` module that is not in the tree (a stale import after a move);
``unknown-part``
    a module in a part (subpackage or top-level module) the table does not know.

Where an import sits decides what it counts for:

* module level (including ``try``/``if`` blocks and class bodies): every rule;
* inside a function (``def``/``async def``): the room, io-facade and missing-module rules, not
  the cycle rule (it runs after every module is loaded); :func:`deferred_cycle_imports` lists
  the function-level imports that would close a cycle if they moved to module level;
* under ``if TYPE_CHECKING:``: the room, io-facade and missing-module rules, not the cycle rule
  (it never runs).

The cycle graph also has the implicit edges of package initialisation: importing
``pkg.io.engine`` first runs ``pkg/io/__init__.py``, so a module outside ``pkg.io`` that imports
``pkg.io.engine`` also depends on ``pkg.io``. A module inside ``pkg.io`` gets no such implicit
edge (its package is already being initialised when it runs), but ``from pkg.io import X`` in
``pkg.io.x`` is an edge to ``pkg.io`` like any other: it reads a half-run ``__init__``.

Everything is a pure function of (source root, package name), so the tests run it on fixture
trees as well as on the real package.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "ALL_PARTS",
    "ENTRY_POINTS",
    "LEAVES",
    "MAY_IMPORT",
    "ROOMS",
    "ROOT",
    "Import",
    "Violation",
    "check_package",
    "deferred_cycle_imports",
    "format_violations",
    "may_import",
    "part_of",
    "render_table",
    "scan_package",
]

# --------------------------------------------------------------------------------------------
# The rules: who may import whom. ``docs/ARCHITECTURE.md`` shows this table; a test keeps the
# two equal.
# --------------------------------------------------------------------------------------------

#: The rooms: subpackages that hold one stage of the data flow each.
ROOMS: Final = ("wire", "server", "client", "tenant", "remote", "layers", "io")
#: Shared top-level modules every part may import; they import only each other.
LEAVES: Final = ("errors", "logging", "metrics", "failpoints", "addresses")
#: Programs: they may import anything, and nothing but another entry point imports them.
ENTRY_POINTS: Final = ("cli", "daemon", "bench", "testing")
#: The package's own ``__init__``: importable by all, imports nothing of the package.
ROOT: Final = "__init__"
#: Every part the table knows, in the order of the table.
ALL_PARTS: Final = (*ROOMS, "config", *LEAVES, *ENTRY_POINTS)

_LEAF_SET: Final = frozenset(LEAVES)
_EVERYTHING: Final = frozenset(ALL_PARTS)

#: part -> the other parts it may import (a part may always import itself and the root).
MAY_IMPORT: Final[Mapping[str, frozenset[str]]] = {
    # the protocol, sans-IO: no io, tenant, server, client
    "wire": _LEAF_SET | {"config", "layers"},
    # trio listeners and dispatch: everything below it, never the client
    "server": _LEAF_SET | {"config", "io", "layers", "tenant", "wire"},
    # speaks the wire protocol; no server, tenant or files of its own
    "client": _LEAF_SET | {"config", "layers", "wire"},
    # no server, wire, client
    "tenant": _LEAF_SET | {"config", "io", "layers", "remote"},
    # object storage, indexes, uploads, downloads: no tenant, server, wire, client
    "remote": _LEAF_SET | {"config", "io", "layers"},
    # no tenant, server, wire, client
    "layers": _LEAF_SET | {"config", "io"},
    # the foundation: no layers, tenant, server, wire, client (nor config, which imports io)
    "io": _LEAF_SET,
    # reading a config names the engine kinds and the temp suffix
    "config": _LEAF_SET | {"io"},
    # errors is the bottom: it imports nothing of the package
    "errors": frozenset(),
    "logging": _LEAF_SET,
    "metrics": _LEAF_SET,
    "failpoints": _LEAF_SET,
    "addresses": _LEAF_SET,
    "cli": _EVERYTHING,
    "daemon": _EVERYTHING,
    "bench": _EVERYTHING,
    # the pytest plugin and compare-engines: any room, but it runs the daemon (and the CLI)
    # as subprocesses, so it needs none of the other programs
    "testing": _EVERYTHING - {"cli", "daemon", "bench"},
    ROOT: frozenset(),
}


def may_import(importer_part: str, imported_part: str) -> bool:
    """Whether a module of ``importer_part`` may import a module of ``imported_part``."""
    if importer_part == imported_part or imported_part == ROOT:
        return True
    return imported_part in MAY_IMPORT.get(importer_part, frozenset())


# --------------------------------------------------------------------------------------------
# Reading the tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module of one import statement, resolved to a module name."""

    importer: str
    #: the module the statement loads: ``from a.b import c`` is ``a.b.c`` when ``a/b/c.py`` (or
    #: ``a/b/c/__init__.py``) is in the tree, else ``a.b``; ``import a.b.c`` is ``a.b.c``.
    imported: str
    line: int
    #: inside a ``def``/``async def``
    function_level: bool
    #: under ``if TYPE_CHECKING:``
    type_checking: bool

    @property
    def runs_at_import(self) -> bool:
        """Whether the statement runs when the importing module is loaded."""
        return not (self.function_level or self.type_checking)


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken rule: ``importer`` (line ``line``) imports ``imported``; ``rule`` is one of
    room, io-facade, cycle, missing-module, unknown-part (deferred-cycle: information only)."""

    rule: str
    importer: str
    imported: str
    line: int
    function_level: bool = False
    type_checking: bool = False
    detail: str = ""

    def __str__(self) -> str:
        where = ""
        if self.function_level:
            where = " [function-level]"
        elif self.type_checking:
            where = " [TYPE_CHECKING]"
        text = f"{self.rule}: {self.importer}:{self.line} imports {self.imported}{where}"
        return f"{text} -- {self.detail}" if self.detail else text


@dataclass(frozen=True, slots=True)
class _Module:
    name: str
    path: Path
    is_package: bool


def _modules(root: Path, package: str) -> dict[str, _Module]:
    pkg_dir = root.joinpath(*package.split("."))
    if not (pkg_dir / "__init__.py").is_file():
        raise FileNotFoundError(f"{pkg_dir} is not a package (no __init__.py)")
    found: dict[str, _Module] = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(pkg_dir)
        if "__pycache__" in rel.parts:
            continue
        parts = [*package.split("."), *rel.parts[:-1]]
        is_package = rel.name == "__init__.py"
        if not is_package:
            parts.append(rel.stem)
        name = ".".join(parts)
        found[name] = _Module(name, path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return False


class _Collector(ast.NodeVisitor):
    def __init__(self, module: _Module, known: Mapping[str, _Module]) -> None:
        self.module = module
        self.known = known
        self.function_depth = 0
        self.type_checking_depth = 0
        self.imports: list[Import] = []

    # -- context --------------------------------------------------------------------------

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self.type_checking_depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self.type_checking_depth -= 1
        for stmt in node.orelse:  # the ``else`` of ``if TYPE_CHECKING`` runs
            self.visit(stmt)

    # -- statements -----------------------------------------------------------------------

    def _add(self, imported: str, line: int) -> None:
        self.imports.append(
            Import(
                importer=self.module.name,
                imported=imported,
                line=line,
                function_level=self.function_depth > 0,
                type_checking=self.type_checking_depth > 0,
            )
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._base(node)
        if base is None or base == "__future__":
            return
        targets: list[str] = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            target = sub if alias.name != "*" and sub in self.known else base
            if target not in targets:
                targets.append(target)
        for target in targets:
            self._add(target, node.lineno)

    def _base(self, node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module
        package = (
            self.module.name if self.module.is_package else self.module.name.rpartition(".")[0]
        )
        parts = package.split(".")
        if node.level - 1 >= len(parts):
            return None  # above the top of the tree: Python refuses it, nothing to check
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, node.module] if node.module else parts)


def scan_package(root: Path, package: str) -> tuple[list[str], list[Import]]:
    """All module names of ``root/<package>`` and all their imports (of any module)."""
    known = _modules(root, package)
    imports: list[Import] = []
    for module in known.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        collector = _Collector(module, known)
        collector.visit(tree)
        imports.extend(collector.imports)
    return sorted(known), imports


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def part_of(module: str, package: str) -> str | None:
    """The part of the package a module belongs to (``None`` outside the package).

    ``pkg.tenant.timeline`` -> ``tenant``; ``pkg.config`` -> ``config``; ``pkg`` -> ``__init__``.
    """
    if module == package:
        return ROOT
    if not module.startswith(package + "."):
        return None
    return module[len(package) + 1 :].split(".", 1)[0]


def _resolve_known(imported: str, known: set[str]) -> str | None:
    """The tree module an import loads: the name itself or, for ``import a.b.c`` of a
    non-module ``c``, the nearest enclosing module."""
    name = imported
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _graph_edges(
    imports: Iterable[Import], known: set[str], package: str
) -> dict[tuple[str, str], Import]:
    """(importer, imported) -> first import statement making the edge, tree modules only, with
    the implicit edges to the packages an import initialises (see the module docstring)."""
    edges: dict[tuple[str, str], Import] = {}
    for imp in imports:
        if not _inside(imp.imported, package):
            continue
        target = _resolve_known(imp.imported, known)
        if target is None:
            continue
        chain = [target]
        parent = target.rpartition(".")[0]
        while parent and _inside(parent, package):
            chain.append(parent)
            parent = parent.rpartition(".")[0]
        for node in chain:
            if node == imp.importer:
                continue
            if node != target and _inside(imp.importer, node):
                continue  # implicit: the importer's own packages are initialised before it runs
            edges.setdefault((imp.importer, node), imp)
    return edges


def _sccs(nodes: Iterable[str], succ: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, i = work[-1]
            children = succ.get(node, [])
            if i < len(children):
                work[-1] = (node, i + 1)
                child = children[i]
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                out.append(sorted(comp))
    return out


def _shortest_path(
    src: str, dst: str, succ: Mapping[str, list[str]], within: set[str]
) -> list[str]:
    prev: dict[str, str] = {}
    queue = deque([src])
    seen = {src}
    while queue:
        node = queue.popleft()
        if node == dst:
            path = [dst]
            while path[-1] != src:
                path.append(prev[path[-1]])
            return path[::-1]
        for child in succ.get(node, []):
            if child in within and child not in seen:
                seen.add(child)
                prev[child] = node
                queue.append(child)
    raise AssertionError(f"no path {src} -> {dst} inside its own component")


def _successors(edges: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    succ: dict[str, list[str]] = {}
    for u, v in sorted(edges):
        succ.setdefault(u, []).append(v)
    return succ


def _describe(cycle: list[str], edges: Mapping[tuple[str, str], Import]) -> str:
    steps: list[str] = []
    for u, v in zip(cycle, cycle[1:], strict=False):
        imp = edges[(u, v)]
        via = "" if imp.imported == v else f" (loading {imp.imported} runs {v})"
        steps.append(f"{u}:{imp.line}{via}")
    return " -> ".join([*steps, cycle[-1]])


def _cycles(
    nodes: list[str], edges: Mapping[tuple[str, str], Import]
) -> list[tuple[list[str], list[str]]]:
    """One shortest cycle per strongly connected component that has one: (cycle, component).

    The cycle starts and ends at the component's first module (by name).
    """
    succ = _successors(edges)
    found: list[tuple[list[str], list[str]]] = []
    for comp in _sccs(nodes, succ):
        if len(comp) < 2:
            continue  # no self-edges in the graph, so a lone module is not a cycle
        members = set(comp)
        start = comp[0]
        best: list[str] | None = None
        for v in succ.get(start, []):
            if v in members:
                cycle = [start, *_shortest_path(v, start, succ, members)]
                if best is None or len(cycle) < len(best):
                    best = cycle
        assert best is not None
        found.append((best, comp))
    return found


def check_package(root: Path, package: str = "pageserver") -> list[Violation]:
    """Every rule violation of the package ``root/<package>``, sorted by module and line."""
    names, imports = scan_package(root, package)
    known = set(names)
    io_package = f"{package}.io"
    violations: list[Violation] = []

    for name in names:
        part = part_of(name, package)
        if part is not None and part not in MAY_IMPORT:
            violations.append(
                Violation(
                    "unknown-part",
                    name,
                    name,
                    0,
                    detail=f"part {part!r} is not in the table (tests/helpers/imports.py)",
                )
            )

    for imp in imports:
        if not _inside(imp.imported, package):
            continue

        def add(rule: str, detail: str, imp: Import = imp) -> None:
            violations.append(
                Violation(
                    rule,
                    imp.importer,
                    imp.imported,
                    imp.line,
                    imp.function_level,
                    imp.type_checking,
                    detail,
                )
            )

        if imp.imported not in known:
            add("missing-module", "no such module in the tree")
        src = part_of(imp.importer, package)
        dst = part_of(imp.imported, package)
        assert src is not None and dst is not None
        if src in MAY_IMPORT and not may_import(src, dst):
            add("room", f"{src} may not import {dst}")
        if imp.imported.startswith(io_package + ".") and not _inside(imp.importer, io_package):
            add("io-facade", f"import from {io_package} (its __init__), not its submodules")

    edges = _graph_edges((i for i in imports if i.runs_at_import), known, package)
    for cycle, comp in _cycles(names, edges):
        first = edges[(cycle[0], cycle[1])]
        detail = "cycle: " + _describe(cycle, edges)
        others = sorted(set(comp) - set(cycle))
        if others:
            detail += f" (same knot: {', '.join(others)})"
        violations.append(Violation("cycle", cycle[0], cycle[1], first.line, detail=detail))

    violations.sort(key=lambda v: (v.importer, v.line, v.rule, v.imported))
    return violations


def deferred_cycle_imports(root: Path, package: str = "pageserver") -> list[Violation]:
    """Function-level imports that would close an import cycle if they ran at module level.

    Not violations (they run after every module is loaded); reported so that the cycles they
    stand for stay visible. Rule name ``deferred-cycle``.
    """
    names, imports = scan_package(root, package)
    known = set(names)
    module_level = _graph_edges((i for i in imports if i.runs_at_import), known, package)
    with_deferred = _graph_edges((i for i in imports if not i.type_checking), known, package)
    succ = _successors(with_deferred)
    component: dict[str, int] = {}
    for i, comp in enumerate(_sccs(names, succ)):
        component.update(dict.fromkeys(comp, i))
    out: list[Violation] = []
    for (u, v), imp in with_deferred.items():
        if (u, v) in module_level or component[u] != component[v]:
            continue
        members = {m for m, c in component.items() if c == component[u]}
        cycle = [u, *_shortest_path(v, u, succ, members)]
        out.append(
            Violation(
                "deferred-cycle",
                u,
                v,
                imp.line,
                function_level=imp.function_level,
                detail="would close: " + _describe(cycle, with_deferred),
            )
        )
    out.sort(key=lambda v: (v.importer, v.line, v.imported))
    return out


def format_violations(violations: Iterable[Violation]) -> str:
    """One violation a line, grouped by rule."""
    by_rule: dict[str, list[Violation]] = {}
    for v in violations:
        by_rule.setdefault(v.rule, []).append(v)
    lines: list[str] = []
    for rule in sorted(by_rule):
        lines.append(f"{rule} ({len(by_rule[rule])}):")
        lines.extend(f"  {v}" for v in by_rule[rule])
    return "\n".join(lines)


def render_table() -> str:
    """:data:`MAY_IMPORT` as the markdown table of ``docs/ARCHITECTURE.md``."""
    header = "| importer \\ imports | " + " | ".join(ALL_PARTS) + " |"
    rule = "|---|" + "|".join(":-:" for _ in ALL_PARTS) + "|"
    rows = [header, rule]
    for src in ALL_PARTS:
        cells = ["·" if src == dst else ("✓" if may_import(src, dst) else "✗") for dst in ALL_PARTS]
        rows.append(f"| **{src}** | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.helpers.imports [--table] [ROOT [PACKAGE]]``: print the violations
    (and the function-level imports closing cycles) of ROOT/PACKAGE, or the table."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--table"]:
        print(render_table())
        return 0
    root = Path(args[0]) if args else Path(__file__).resolve().parents[2]
    package = args[1] if len(args) > 1 else "pageserver"
    violations = check_package(root, package)
    deferred = deferred_cycle_imports(root, package)
    print(format_violations(violations) if violations else "no violations")
    if deferred:
        print("\nfor information:\n" + format_violations(deferred))
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
