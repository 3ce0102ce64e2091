"""The pytest plugin: real pageserver daemons on each io engine, for your regression tests.

Installed with the package (a ``pytest11`` entry point), so nothing needs to be copied or
configured: request the fixtures.

``pageserver_engine``
    ``"std-fs"`` and ``"trio-uring"``: a test that uses it (directly or through the fixtures
    below) runs once per engine. Where the kernel refuses io_uring the trio-uring run is
    skipped, unless ``PAGESERVER_REQUIRE_URING=1`` is set: then it fails, so CI cannot pass
    without having tested io_uring. Pick engines with
    ``@pytest.mark.parametrize("pageserver_engine", ["trio-uring"], indirect=True)``.
``pageserver_daemon``
    a started :class:`~pageserver.testing.Daemon` on that engine, on a temporary data dir
    (under ``tmp_path``) and a Unix socket. ``@pytest.mark.pageserver(**options)`` passes
    options to :class:`~pageserver.testing.Daemon` (``transport="tcp"``,
    ``tenant_config={...}``, ``config={...}``, ``checkpoint_distance=...``, ``metrics=...``),
    plus ``stop_timeout`` (seconds before SIGKILL, default 30) and ``check_stop`` (default
    True: a daemon still running at teardown must stop cleanly on SIGTERM, exit 0).
``pageserver_daemon_factory``
    ``factory(engine, **options)``: more daemons in one test, each torn down like the above.
``pageserver_client``
    a connected :class:`~pageserver.testing.BlockingClient` (synchronous; any test).
``pageserver_async_client``
    a connected trio :class:`pageserver.client.Client` (needs pytest-trio: trio mode or
    ``@pytest.mark.trio``).
``pageserver_timeline``
    a :class:`~pageserver.testing.TimelineRef`: a new tenant and timeline on the daemon
    (``tenant_id``, ``timeline_id``, ``path``, ``layer_files()``).

Teardown sends SIGTERM, then SIGKILL after ``stop_timeout``. When a test fails (in setup,
call or teardown), every daemon log of that test is added to its report as a section
``pageserver daemon log (<engine>, <phase>)``.

With plugin autoloading off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``), load it with
``-p pageserver.testing.plugin`` or ``pytest_plugins = ["pageserver.testing.plugin"]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, Protocol

import pytest

from pageserver.client import Client
from pageserver.io import ENGINE_KINDS, REQUIRE_URING_ENV_VAR, uring_required
from pageserver.testing.blocking import BlockingClient
from pageserver.testing.daemon import Daemon, TimelineRef, require_engine_reason

__all__ = [
    "DaemonFactory",
    "pageserver_async_client",
    "pageserver_client",
    "pageserver_daemon",
    "pageserver_daemon_factory",
    "pageserver_engine",
    "pageserver_timeline",
    "require_engine",
]

#: The daemons a test started (the report hook attaches their logs when it fails).
_DAEMONS = pytest.StashKey[list[Daemon]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pageserver(**options): options of the pageserver_daemon fixture's Daemon "
        "(transport, tenant_config, config, checkpoint_distance, metrics, no_sync, env) and "
        "its teardown (stop_timeout, check_stop)",
    )


def require_engine(engine: str) -> None:
    """Skip the test if ``engine`` cannot run here, or fail it under
    ``PAGESERVER_REQUIRE_URING=1`` (a kernel refusing io_uring must not pass silently)."""
    reason = require_engine_reason(engine)
    if reason is None:
        return
    if uring_required():
        pytest.fail(f"io_uring refused but {REQUIRE_URING_ENV_VAR}=1: {reason}", pytrace=False)
    pytest.skip(f"io_uring refused by this kernel: {reason}")


class DaemonFactory(Protocol):
    """``pageserver_daemon_factory(engine, **options)``: a started daemon."""

    def __call__(self, engine: str, **options: Any) -> Daemon: ...


@pytest.fixture(params=ENGINE_KINDS)
def pageserver_engine(request: pytest.FixtureRequest) -> str:
    """The io engine of this run of the test (every engine by default)."""
    engine: str = request.param
    require_engine(engine)
    return engine


@pytest.fixture
def pageserver_daemon_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonFactory]:
    """Start daemons (``factory(engine, **options)``); all are stopped at teardown."""
    started: list[tuple[Daemon, float, bool]] = []
    request.node.stash.setdefault(_DAEMONS, [])

    def factory(engine: str, **options: Any) -> Daemon:
        require_engine(engine)
        stop_timeout = float(options.pop("stop_timeout", 30.0))
        check_stop = bool(options.pop("check_stop", True))
        root = tmp_path_factory.mktemp(f"pageserver-{engine}")
        daemon = Daemon(engine, root=root, **options)
        started.append((daemon, stop_timeout, check_stop))
        request.node.stash[_DAEMONS].append(daemon)
        daemon.start()
        return daemon

    try:
        yield factory
    finally:
        problems = []
        for daemon, stop_timeout, check_stop in started:
            if daemon.proc is None:
                daemon.cleanup()
                continue
            result = daemon.terminate(stop_timeout)
            daemon.cleanup()
            if check_stop and not result.clean:
                problems.append(
                    f"pageserver daemon ({daemon.engine}) {result.describe(stop_timeout)}"
                )
        if problems:
            pytest.fail("; ".join(problems) + " (its log is in the report)", pytrace=False)


@pytest.fixture
def pageserver_daemon(
    request: pytest.FixtureRequest,
    pageserver_engine: str,
    pageserver_daemon_factory: DaemonFactory,
) -> Daemon:
    """A running daemon on ``pageserver_engine``; options from ``@pytest.mark.pageserver``."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("pageserver"))):
        options.update(marker.kwargs)
    return pageserver_daemon_factory(pageserver_engine, **options)


@pytest.fixture
def pageserver_client(pageserver_daemon: Daemon) -> Iterator[BlockingClient]:
    """A connected blocking client of ``pageserver_daemon``."""
    with pageserver_daemon.client() as client:
        yield client


@pytest.fixture
async def pageserver_async_client(pageserver_daemon: Daemon) -> AsyncIterator[Client]:
    """A connected trio client of ``pageserver_daemon`` (needs pytest-trio)."""
    async with await Client.connect(pageserver_daemon.addr, pageserver_daemon.token) as client:
        yield client


@pytest.fixture
def pageserver_timeline(pageserver_daemon: Daemon) -> TimelineRef:
    """A new tenant and timeline (random ids) on ``pageserver_daemon``."""
    return pageserver_daemon.create_timeline()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the test's daemons to the report of a failed phase."""
    report = yield
    if report.failed:
        for daemon in item.stash.get(_DAEMONS, []):
            report.sections.append(
                (f"pageserver daemon log ({daemon.engine}, {call.when})", daemon.log_text())
            )
    return report
