"""The layout rules of docs/ARCHITECTURE.md, enforced on the real package, and the checker
(tests/helpers/imports.py) tested on small fixture trees."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers.imports import (
    ALL_PARTS,
    LEAVES,
    ROOMS,
    Import,
    Violation,
    check_package,
    deferred_cycle_imports,
    format_violations,
    may_import,
    render_table,
    scan_package,
)

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ARCHITECTURE.md"

# ---------------------------------------------------------------------------------------------
# The real package
# ---------------------------------------------------------------------------------------------


def test_the_package_keeps_the_layout_rules() -> None:
    violations = check_package(REPO, "pageserver")
    # A cycle closed by a function-level import is still a cycle between modules (the two
    # the issue measured, engine <-> uring engine and timeline <-> compaction, were such):
    # it fails too, listed apart because the cure is the same but the symptom differs.
    deferred = deferred_cycle_imports(REPO, "pageserver")
    if violations or deferred:
        pytest.fail(
            f"{len(violations)} layout violation(s) (rules: docs/ARCHITECTURE.md):\n"
            + format_violations(violations)
            + (
                "\n\nfunction-level imports that close a cycle:\n" + format_violations(deferred)
                if deferred
                else ""
            ),
            pytrace=False,
        )


def test_the_doc_shows_the_checkers_table() -> None:
    table = render_table()
    assert table in DOC.read_text(encoding="utf-8"), (
        "docs/ARCHITECTURE.md's import table differs from tests/helpers/imports.py; "
        "regenerate it with `python -m tests.helpers.imports --table`:\n" + table
    )


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("wire", {"io", "tenant", "server", "client"}),
        ("layers", {"tenant", "server", "wire", "client"}),
        ("io", {"layers", "tenant", "server", "wire", "client"}),
        ("tenant", {"server", "wire", "client"}),
        ("failpoints", set(ROOMS)),
        ("metrics", set(ROOMS)),
        ("errors", set(ALL_PARTS) - {"errors"}),
    ],
)
def test_the_table_holds_the_layout_rules(importer: str, forbidden: set[str]) -> None:
    assert {part for part in forbidden if may_import(importer, part)} == set()


def test_leaves_are_usable_by_every_part_and_entry_points_by_none_but_entry_points() -> None:
    for part in ALL_PARTS:
        for leaf in LEAVES:
            if part != "errors":
                assert may_import(part, leaf), (part, leaf)
        for entry in ("cli", "daemon", "bench"):
            assert may_import(part, entry) == (part in ("cli", "daemon", "bench")), (part, entry)
    for entry in ("cli", "daemon", "bench"):
        assert all(may_import(entry, part) for part in ALL_PARTS)


# ---------------------------------------------------------------------------------------------
# Fixture trees
# ---------------------------------------------------------------------------------------------

#: A small tree with every part, using only what the table allows; it has one function-level
#: import that would close a cycle (io.engine <-> io.uring.engine), as the real engine selection.
_CLEAN: dict[str, str] = {
    "pageserver/__init__.py": '"""root"""\n',
    "pageserver/errors.py": "class PageserverError(Exception): ...\n",
    "pageserver/logging.py": "from pageserver.errors import PageserverError\n",
    "pageserver/metrics.py": "",
    "pageserver/addresses.py": "",
    "pageserver/failpoints.py": "from pageserver import metrics\n",
    "pageserver/config.py": "from pageserver.io import TEMP_SUFFIX\n",
    "pageserver/io/__init__.py": (
        "from pageserver.io.crashsafe import TEMP_SUFFIX\n"
        "from pageserver.io.engine import IoEngine\n"
    ),
    "pageserver/io/_jobstate.py": "",
    "pageserver/io/engine.py": """
        from pageserver.errors import PageserverError
        from pageserver.io import _jobstate
        class IoEngine: ...
        def select() -> None:
            from pageserver.io.uring.engine import UringEngine
    """,
    "pageserver/io/crashsafe.py": """
        from pageserver import failpoints
        from .engine import IoEngine
        TEMP_SUFFIX = ".___temp"
    """,
    "pageserver/io/uring/__init__.py": "",
    "pageserver/io/uring/engine.py": "from pageserver.io.engine import IoEngine\n",
    "pageserver/layers/__init__.py": "",
    "pageserver/layers/key.py": "from pageserver.errors import PageserverError\n",
    "pageserver/layers/batch.py": "from .key import Key\n",
    "pageserver/layers/blob_io.py": """
        from typing import TYPE_CHECKING
        from pageserver.io import IoEngine
        if TYPE_CHECKING:
            from pageserver.io import TEMP_SUFFIX
    """,
    "pageserver/wire/__init__.py": "from . import _framing\n",
    "pageserver/wire/_framing.py": "from pageserver.layers.batch import check\n",
    "pageserver/tenant/__init__.py": "",
    "pageserver/remote/__init__.py": "",
    "pageserver/remote/storage.py": """
        from pageserver.io import IoEngine
        from pageserver.layers import key
    """,
    "pageserver/tenant/timeline.py": """
        from pageserver import config
        from pageserver.io import IoEngine
        from pageserver.layers import key
    """,
    "pageserver/server/__init__.py": "",
    "pageserver/server/server.py": """
        from pageserver.addresses import parse
        from pageserver.tenant.timeline import Timeline
        from pageserver.wire import _framing
    """,
    "pageserver/client/__init__.py": "from pageserver.client._client import Client\n",
    "pageserver/client/_client.py": "from pageserver.wire._framing import frame\n",
    "pageserver/daemon.py": "from pageserver.server.server import Server\n",
    "pageserver/cli.py": """
        def main() -> None:
            from pageserver import daemon
    """,
    "pageserver/bench/__init__.py": "",
    "pageserver/bench/harness.py": "from pageserver.client import Client\n",
}
CLEAN = {path: textwrap.dedent(src).lstrip("\n") for path, src in _CLEAN.items()}


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path -> source) under ``root``; returns ``root``."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
    return root


def check(tmp_path: Path, extra: dict[str, str] | None = None) -> list[Violation]:
    """The violations of the clean tree plus (or with replaced) ``extra`` files."""
    return check_package(make_tree(tmp_path, {**CLEAN, **(extra or {})}), "pageserver")


def test_clean_tree_has_no_violations(tmp_path: Path) -> None:
    assert check(tmp_path) == []


def test_a_function_level_import_closing_a_cycle_is_reported_not_a_violation(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path, CLEAN)
    assert check_package(root, "pageserver") == []
    [deferred] = deferred_cycle_imports(root, "pageserver")
    assert (deferred.rule, deferred.importer, deferred.imported, deferred.line) == (
        "deferred-cycle",
        "pageserver.io.engine",
        "pageserver.io.uring.engine",
        5,
    )
    assert deferred.function_level
    assert "pageserver.io.uring.engine:1 -> pageserver.io.engine" in deferred.detail


def test_scan_resolves_absolute_relative_and_package_imports(tmp_path: Path) -> None:
    names, imports = scan_package(make_tree(tmp_path, CLEAN), "pageserver")
    assert "pageserver" in names and "pageserver.io.uring" in names
    assert "pageserver.io.uring.engine" in names
    got = {(i.importer, i.imported) for i in imports}
    # relative from a module: its package
    assert ("pageserver.layers.batch", "pageserver.layers.key") in got
    assert ("pageserver.io.crashsafe", "pageserver.io.engine") in got
    # relative from a package __init__: the package itself; the name is a submodule
    assert ("pageserver.wire", "pageserver.wire._framing") in got
    # `from pkg import name`: the submodule when there is one, else the package
    assert ("pageserver.tenant.timeline", "pageserver.config") in got
    assert ("pageserver.tenant.timeline", "pageserver.io") in got
    # where the statements sit
    [select] = [i for i in imports if i.imported == "pageserver.io.uring.engine"]
    assert select == Import("pageserver.io.engine", "pageserver.io.uring.engine", 5, True, False)
    [hint] = [i for i in imports if i.importer == "pageserver.layers.blob_io" and i.line == 4]
    assert hint.type_checking and not hint.function_level and not hint.runs_at_import


# -- room -------------------------------------------------------------------------------------

#: a module of each part to import in a probe (the package ``pageserver.io``, never a submodule)
TARGET = {
    "wire": "pageserver.wire._framing",
    "server": "pageserver.server.server",
    "client": "pageserver.client._client",
    "tenant": "pageserver.tenant.timeline",
    "remote": "pageserver.remote.storage",
    "layers": "pageserver.layers.key",
    "io": "pageserver.io",
    "config": "pageserver.config",
    "logging": "pageserver.logging",
    "cli": "pageserver.cli",
    "daemon": "pageserver.daemon",
    "bench": "pageserver.bench.harness",
}

FORBIDDEN = [
    *[("wire", p) for p in ("io", "tenant", "server", "client")],
    *[("layers", p) for p in ("tenant", "server", "wire", "client")],
    *[("io", p) for p in ("layers", "tenant", "server", "wire", "client", "config")],
    *[("tenant", p) for p in ("server", "wire", "client")],
    *[("remote", p) for p in ("tenant", "server", "wire", "client")],
    ("server", "client"),
    *[("client", p) for p in ("server", "tenant", "io")],
    *[("config", p) for p in ("tenant", "layers", "wire")],
    *[(p, "cli") for p in ("wire", "server", "tenant", "layers", "io", "config")],
    *[(p, "daemon") for p in ("server", "tenant")],
    ("client", "bench"),
]


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_room_rule_fires_on_a_forbidden_import_in_a_subpackage(
    tmp_path: Path, importer: str, imported: str
) -> None:
    target = TARGET[imported]
    if importer in ROOMS:
        path, module = f"pageserver/{importer}/probe.py", f"pageserver.{importer}.probe"
    else:
        path, module = f"pageserver/{importer}.py", f"pageserver.{importer}"
    source = CLEAN.get(path, "") + f"import {target}\n"
    line = source.count("\n")
    got = check_package(make_tree(tmp_path, {**CLEAN, path: source}), "pageserver")
    rooms = [v for v in got if v.rule == "room"]
    assert rooms == [
        Violation("room", module, target, line, detail=f"{importer} may not import {imported}")
    ]


@pytest.mark.parametrize("leaf", ["failpoints", "metrics", "logging", "addresses", "errors"])
@pytest.mark.parametrize("room", ROOMS)
def test_leaves_may_not_import_rooms_not_even_in_a_function(
    tmp_path: Path, leaf: str, room: str
) -> None:
    source = f"def f() -> None:\n    import {TARGET[room]}\n"
    got = check(tmp_path, {f"pageserver/{leaf}.py": source})
    assert got == [
        Violation(
            "room",
            f"pageserver.{leaf}",
            TARGET[room],
            2,
            function_level=True,
            detail=f"{leaf} may not import {room}",
        )
    ]


def test_errors_imports_nothing_of_the_package(tmp_path: Path) -> None:
    got = check(tmp_path, {"pageserver/errors.py": "from pageserver import logging\n"})
    assert [(v.rule, v.detail) for v in got if v.rule == "room"] == [
        ("room", "errors may not import logging")
    ]


def test_wire_importing_tenant(tmp_path: Path) -> None:
    got = check(tmp_path, {"pageserver/wire/x.py": "from pageserver.tenant import timeline\n"})
    assert got == [
        Violation(
            "room",
            "pageserver.wire.x",
            "pageserver.tenant.timeline",
            1,
            detail="wire may not import tenant",
        )
    ]


def test_room_rule_resolves_relative_imports(tmp_path: Path) -> None:
    got = check(
        tmp_path,
        {
            "pageserver/wire/x.py": "from ..tenant import timeline\nfrom ..server.server import Server\n",
            "pageserver/layers/sub/deep.py": "from ... import tenant\nfrom ...layers import key\n",
        },
    )
    assert [(v.importer, v.imported, v.line) for v in got] == [
        ("pageserver.layers.sub.deep", "pageserver.tenant", 1),
        ("pageserver.wire.x", "pageserver.tenant.timeline", 1),
        ("pageserver.wire.x", "pageserver.server.server", 2),
    ]
    assert {v.rule for v in got} == {"room"}


def test_room_rule_counts_type_checking_imports(tmp_path: Path) -> None:
    source = """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pageserver.tenant.timeline import Timeline
        else:
            from pageserver.server import server
    """
    got = check(tmp_path, {"pageserver/layers/x.py": source})
    assert [(v.imported, v.line, v.type_checking) for v in got] == [
        ("pageserver.tenant.timeline", 3, True),
        ("pageserver.server.server", 5, False),
    ]


# -- io-facade ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "statement", "imported"),
    [
        (
            "pageserver/tenant/x.py",
            "from pageserver.io.engine import IoEngine",
            "pageserver.io.engine",
        ),
        ("pageserver/tenant/x.py", "import pageserver.io.uring", "pageserver.io.uring"),
        (
            "pageserver/layers/x.py",
            "from pageserver.io import _jobstate",
            "pageserver.io._jobstate",
        ),
        (
            "pageserver/layers/x.py",
            "from pageserver.io.uring import engine",
            "pageserver.io.uring.engine",
        ),
        # entry points may import any room, but not behind io's facade
        (
            "pageserver/daemon.py",
            "from pageserver.io.uring.engine import U",
            "pageserver.io.uring.engine",
        ),
        ("pageserver/cli.py", "import pageserver.io.engine as e", "pageserver.io.engine"),
        ("pageserver/bench/x.py", "from ..io.engine import IoEngine", "pageserver.io.engine"),
        (
            "pageserver/config.py",
            "from pageserver.io.crashsafe import TEMP_SUFFIX",
            "pageserver.io.crashsafe",
        ),
    ],
)
def test_io_facade_fires_on_an_io_submodule_outside_io(
    tmp_path: Path, path: str, statement: str, imported: str
) -> None:
    source = CLEAN.get(path, "") + statement + "\n"
    got = check_package(make_tree(tmp_path, {**CLEAN, path: source}), "pageserver")
    assert [(v.rule, v.imported, v.line) for v in got] == [
        ("io-facade", imported, source.count("\n"))
    ]


def test_io_facade_counts_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    source = """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pageserver.io.engine import IoEngine
        def f() -> None:
            import pageserver.io.uring.engine
    """
    got = check(tmp_path, {"pageserver/tenant/x.py": source})
    assert [(v.rule, v.line, v.type_checking, v.function_level) for v in got] == [
        ("io-facade", 3, True, False),
        ("io-facade", 5, False, True),
    ]


def test_io_may_import_its_own_submodules(tmp_path: Path) -> None:
    source = "from pageserver.io.uring.engine import UringEngine\nimport pageserver.io.engine\n"
    assert check(tmp_path, {"pageserver/io/select.py": source}) == []


# -- cycle -------------------------------------------------------------------------------------


def test_two_module_cycle(tmp_path: Path) -> None:
    got = check(
        tmp_path,
        {
            "pageserver/tenant/a.py": "from pageserver.tenant import b\n",
            "pageserver/tenant/b.py": "import os\nfrom pageserver.tenant.a import A\n",
        },
    )
    assert got == [
        Violation(
            "cycle",
            "pageserver.tenant.a",
            "pageserver.tenant.b",
            1,
            detail="cycle: pageserver.tenant.a:1 -> pageserver.tenant.b:2 -> pageserver.tenant.a",
        )
    ]


def test_three_module_cycle(tmp_path: Path) -> None:
    got = check(
        tmp_path,
        {
            "pageserver/layers/a.py": "from . import b\n",
            "pageserver/layers/b.py": "from .c import C\n",
            "pageserver/layers/c.py": "import pageserver.layers.a\n",
        },
    )
    assert [(v.rule, v.importer, v.imported, v.detail) for v in got] == [
        (
            "cycle",
            "pageserver.layers.a",
            "pageserver.layers.b",
            "cycle: pageserver.layers.a:1 -> pageserver.layers.b:1 -> pageserver.layers.c:1"
            " -> pageserver.layers.a",
        )
    ]


def test_one_report_per_knot_of_cycles(tmp_path: Path) -> None:
    got = check(
        tmp_path,
        {
            "pageserver/layers/a.py": "from . import b, c\n",
            "pageserver/layers/b.py": "from . import a\n",
            "pageserver/layers/c.py": "from . import a\n",
        },
    )
    assert [(v.rule, v.importer, v.imported) for v in got] == [
        ("cycle", "pageserver.layers.a", "pageserver.layers.b")
    ]
    assert got[0].detail.endswith("(same knot: pageserver.layers.c)")


def test_type_checking_import_does_not_make_a_cycle(tmp_path: Path) -> None:
    assert (
        check(
            tmp_path,
            {
                "pageserver/tenant/a.py": "from pageserver.tenant.b import B\n",
                "pageserver/tenant/b.py": (
                    "import typing\nif typing.TYPE_CHECKING:\n    from pageserver.tenant.a import A\n"
                ),
            },
        )
        == []
    )


def test_function_level_import_does_not_make_a_cycle_but_is_reported(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {
            **CLEAN,
            "pageserver/tenant/a.py": "from pageserver.tenant.b import B\n",
            "pageserver/tenant/b.py": "async def f() -> None:\n    from pageserver.tenant import a\n",
        },
    )
    assert check_package(root, "pageserver") == []
    got = [v for v in deferred_cycle_imports(root, "pageserver") if "tenant" in v.importer]
    assert [(v.importer, v.imported, v.line, v.function_level) for v in got] == [
        ("pageserver.tenant.b", "pageserver.tenant.a", 2, True)
    ]


def test_loading_a_submodule_runs_its_packages_init(tmp_path: Path) -> None:
    # daemon -> bench.harness also runs bench/__init__, which imports daemon: a real cycle
    # (both directions are allowed by the table: entry points may import each other)
    got = check(
        tmp_path,
        {
            "pageserver/daemon.py": "from pageserver.bench.harness import run\n",
            "pageserver/bench/__init__.py": "from pageserver import daemon\n",
        },
    )
    assert [(v.rule, v.importer, v.imported) for v in got] == [
        ("cycle", "pageserver.bench", "pageserver.daemon")
    ]
    assert "pageserver.daemon:1 (loading pageserver.bench.harness runs pageserver.bench)" in (
        got[0].detail
    )


def test_a_room_module_importing_its_own_packages_init_is_a_cycle(tmp_path: Path) -> None:
    # io/__init__ imports io.crashsafe; crashsafe reading names from the half-run io/__init__
    source = CLEAN["pageserver/io/crashsafe.py"] + "from pageserver.io import IoEngine\n"
    got = check(tmp_path, {"pageserver/io/crashsafe.py": source})
    assert [(v.rule, v.importer, v.imported) for v in got] == [
        ("cycle", "pageserver.io", "pageserver.io.crashsafe")
    ]


def test_a_leaf_importing_io_closes_a_cycle_through_ios_init(tmp_path: Path) -> None:
    # as failpoints importing pageserver.io._jobstate while io.crashsafe imports failpoints
    got = check(tmp_path, {"pageserver/failpoints.py": "from pageserver.io import _jobstate\n"})
    assert sorted(v.rule for v in got) == ["cycle", "io-facade", "room"]


# -- missing-module, unknown-part ----------------------------------------------------------------


def test_missing_module(tmp_path: Path) -> None:
    got = check(
        tmp_path,
        {
            "pageserver/tenant/x.py": "from pageserver.tenant.gone import G\nimport pageserver.wire.gone\n",
        },
    )
    assert [(v.rule, v.imported, v.line) for v in got] == [
        ("missing-module", "pageserver.tenant.gone", 1),
        ("missing-module", "pageserver.wire.gone", 2),
        ("room", "pageserver.wire.gone", 2),
    ]


def test_unknown_part(tmp_path: Path) -> None:
    got = check(tmp_path, {"pageserver/newroom/x.py": "", "pageserver/newroom/__init__.py": ""})
    assert {(v.rule, v.importer) for v in got} == {
        ("unknown-part", "pageserver.newroom"),
        ("unknown-part", "pageserver.newroom.x"),
    }
