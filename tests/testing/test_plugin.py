"""The pytest plugin as users get it: installed through the ``pytest11`` entry point and run
from a test project outside this tree (a temporary directory with nothing but a test file,
no conftest, no configuration).

Each case runs ``python -m pytest`` in such a directory and checks the outcome of every test
in it: both engines pass; a failing test's report carries the daemon's log; a daemon that
ignores SIGTERM is SIGKILLed after the timeout and the teardown says so; ``@pytest.mark.pageserver``
reaches the daemon; a kernel refusing io_uring skips (or, under PAGESERVER_REQUIRE_URING=1,
fails) only the trio-uring runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from xml.etree import ElementTree

import pytest

from pageserver.io import REQUIRE_URING_ENV_VAR, uring_required
from pageserver.testing import plugin as plugin_module
from pageserver.testing import require_engine_reason

URING_REASON = require_engine_reason("trio-uring")
REPO = Path(__file__).resolve().parents[2]


def run_project(
    directory: Path, test_source: str, env: dict[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """Write ``test_user.py`` into ``directory`` and run pytest there as a user would."""
    (directory / "test_user.py").write_text(textwrap.dedent(test_source), encoding="utf-8")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PYTHONPATH", "COV_", "HYPOTHESIS"))
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={directory / 'tmp'}",
            f"--junitxml={directory / 'report.xml'}",
            *args,
        ],
        cwd=directory,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def outcomes(directory: Path) -> dict[str, str]:
    """test id -> PASSED/FAILED/SKIPPED/ERROR (an error in setup or teardown), from the
    junit XML report of the run in ``directory``."""
    got: dict[str, str] = {}
    for case in ElementTree.parse(directory / "report.xml").getroot().iter("testcase"):
        test_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = "PASSED"
        for tag, name in (("skipped", "SKIPPED"), ("failure", "FAILED"), ("error", "ERROR")):
            if tag in kinds:
                outcome = name
        got[test_id] = outcome
    return got


def test_the_plugin_is_installed_as_a_pytest11_entry_point() -> None:
    [ep] = [ep for ep in entry_points(group="pytest11") if ep.value == "pageserver.testing.plugin"]
    assert ep.name == "pageserver"
    assert ep.load() is plugin_module


USER_TESTS = """
    '''A user's regression test, run on both io engines by the installed plugin.'''
    import pytest

    from pageserver.layers.value import Image, TestRecord, encode_value

    KEY = bytes.fromhex("000000067F000040000000400100000000AB")
    KEY2 = bytes.fromhex("000000067F000040000000400100000000AC")


    def test_plugin_comes_from_the_installed_package(pytestconfig):
        plugin = pytestconfig.pluginmanager.get_plugin("pageserver")
        assert plugin.__name__ == "pageserver.testing.plugin"


    def test_put_flush_get(pageserver_engine, pageserver_daemon, pageserver_client, pageserver_timeline):
        t, tl = pageserver_timeline.tenant_id, pageserver_timeline.timeline_id
        assert pageserver_client.server_info["io_engine"] == pageserver_engine
        assert pageserver_client.status()["io_engine"] == pageserver_engine
        r = pageserver_client.put(t, tl, [
            (KEY, 10, encode_value(Image(b"hello"))),
            (KEY2, 10, encode_value(TestRecord("a", clear=True, will_init=True))),
            (KEY2, 11, encode_value(TestRecord("b"))),
        ])
        assert r["last_record_lsn"] == 11
        assert pageserver_client.flush(t, tl) == 11
        [layer] = pageserver_timeline.layer_files()
        assert layer.parent == pageserver_timeline.path and layer.stat().st_size > 8192
        assert pageserver_client.get(t, tl, KEY, 10) == b"hello"
        assert pageserver_client.get(t, tl, KEY, 9) is None
        assert pageserver_client.get(t, tl, KEY2, 11) == b"ab"
        out = pageserver_daemon.cli("get", t, tl, KEY2.hex(), "10").stdout
        assert out == "a\\n"


    @pytest.mark.trio
    async def test_async_client(pageserver_engine, pageserver_async_client, pageserver_timeline):
        c = pageserver_async_client
        assert c.server_info["io_engine"] == pageserver_engine
        t, tl = pageserver_timeline.tenant_id, pageserver_timeline.timeline_id
        await c.put(t, tl, [(KEY, 5, encode_value(Image(b"x" * 100)))])
        assert await c.get(t, tl, KEY, 5) == b"x" * 100
        assert await c.flush(t, tl) == 5
"""


def readme_example() -> str:
    """The example test of README's section "Testing your changes on both engines"."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Testing your changes on both engines") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_a_project_outside_the_tree_runs_its_test_on_both_engines(tmp_path: Path) -> None:
    assert not str(tmp_path).startswith(str(REPO))
    # one test file: ours plus the README's example, which must keep working as written
    p = run_project(tmp_path, textwrap.dedent(USER_TESTS) + "\n\n" + readme_example())
    assert sorted(f.name for f in tmp_path.iterdir()) == ["report.xml", "test_user.py", "tmp"]
    got = outcomes(tmp_path)
    uring = "PASSED" if URING_REASON is None else "SKIPPED"
    assert got == {
        "test_user.py::test_roundtrip[std-fs]": "PASSED",
        "test_user.py::test_roundtrip[trio-uring]": uring,
        "test_user.py::test_plugin_comes_from_the_installed_package": "PASSED",
        "test_user.py::test_put_flush_get[std-fs]": "PASSED",
        "test_user.py::test_put_flush_get[trio-uring]": uring,
        "test_user.py::test_async_client[std-fs]": "PASSED",
        "test_user.py::test_async_client[trio-uring]": uring,
    }, p.stdout + p.stderr
    assert p.returncode == 0


FAILING_TESTS = """
    import os
    import signal

    import pytest

    std_fs = pytest.mark.parametrize("pageserver_engine", ["std-fs"], indirect=True)


    @std_fs
    def test_fails(pageserver_daemon):
        assert pageserver_daemon.running
        assert 1 == 2, "the user's assertion"


    @std_fs
    @pytest.mark.pageserver(stop_timeout=1)
    def test_daemon_ignores_sigterm(pageserver_daemon):
        os.kill(pageserver_daemon.proc.pid, signal.SIGSTOP)


    @std_fs
    def test_daemon_crashes(pageserver_daemon):
        os.kill(pageserver_daemon.proc.pid, signal.SIGKILL)
        pageserver_daemon.proc.wait()


    @std_fs
    @pytest.mark.pageserver(
        transport="tcp", metrics=False, tenant_config={"checkpoint_distance": 123456}
    )
    def test_marker_options(pageserver_daemon, pageserver_client, pageserver_timeline):
        assert pageserver_daemon.addr.startswith("127.0.0.1:")
        assert pageserver_daemon.metrics_port is None
        effective = pageserver_client.request(
            "tenant_config", tenant_id=pageserver_timeline.tenant_id, config={}
        )["config"]
        assert effective["checkpoint_distance"] == 123456


    def test_factory_two_daemons(pageserver_daemon_factory):
        a = pageserver_daemon_factory("std-fs")
        b = pageserver_daemon_factory("std-fs", transport="tcp")
        assert a.addr != b.addr and a.running and b.running
        a.stop()  # stopped by the test: teardown only cleans up
"""


def test_failures_carry_the_daemon_log_and_teardown_escalates(tmp_path: Path) -> None:
    p = run_project(tmp_path, FAILING_TESTS)
    got = outcomes(tmp_path)
    assert got == {
        "test_user.py::test_fails[std-fs]": "FAILED",
        "test_user.py::test_daemon_ignores_sigterm[std-fs]": "ERROR",
        "test_user.py::test_daemon_crashes[std-fs]": "ERROR",
        "test_user.py::test_marker_options[std-fs]": "PASSED",
        "test_user.py::test_factory_two_daemons": "PASSED",
    }, p.stdout + p.stderr
    out = p.stdout
    # The failing test's report: the assertion, then the daemon's log as a section.
    fails = out[out.index("_ test_fails[std-fs] _") :]
    assert "the user's assertion" in fails
    section = fails[fails.index("pageserver daemon log (std-fs, call)") :]
    assert "event='pageserver ready'" in section and "io_engine='std-fs'" in section
    # The stuck daemon: SIGTERM, 1 s, SIGKILL; the teardown error says so, with the log.
    stuck = out[out.index("ERROR at teardown of test_daemon_ignores_sigterm[std-fs]") :]
    assert "did not stop within 1s of SIGTERM and was SIGKILLed" in stuck
    assert "pageserver daemon log (std-fs, teardown)" in stuck
    crashed = out[out.index("ERROR at teardown of test_daemon_crashes[std-fs]") :]
    assert "pageserver daemon (std-fs) had already exited (status -9) before teardown" in crashed
    # Nothing is left running.
    ps = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert ps.stdout == ""


REFUSING_CONFTEST = """
    import pageserver.testing.plugin as plugin

    plugin.require_engine_reason = lambda engine: (
        "io_uring_setup: EPERM (simulated)" if engine == "trio-uring" else None
    )
"""
ENGINE_ONLY_TEST = """
    def test_engine(pageserver_engine):
        assert pageserver_engine in ("std-fs", "trio-uring")
"""


@pytest.mark.parametrize("required", ["", "1"], ids=["not-required", "required"])
def test_a_kernel_refusing_io_uring_skips_unless_required(tmp_path: Path, required: str) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(REFUSING_CONFTEST), encoding="utf-8")
    p = run_project(tmp_path, ENGINE_ONLY_TEST, {REQUIRE_URING_ENV_VAR: required}, "-rs")
    got = outcomes(tmp_path)
    assert got["test_user.py::test_engine[std-fs]"] == "PASSED", p.stdout
    if required:
        assert got["test_user.py::test_engine[trio-uring]"] == "ERROR", p.stdout
        assert (
            f"io_uring refused but {REQUIRE_URING_ENV_VAR}=1: io_uring_setup: EPERM (simulated)"
            in p.stdout
        )
        assert p.returncode == 1
    else:
        assert got["test_user.py::test_engine[trio-uring]"] == "SKIPPED", p.stdout
        assert "io_uring refused by this kernel: io_uring_setup: EPERM (simulated)" in p.stdout
        assert p.returncode == 0


def test_this_kernel_and_the_ci_setting_agree() -> None:
    """Where CI requires io_uring, the real probe must say yes (the plugin would fail)."""
    if uring_required():
        assert URING_REASON is None
