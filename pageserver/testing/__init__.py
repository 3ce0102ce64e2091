"""Testing support for users of this pageserver (and for its own tests).

* :class:`Daemon` -- a real ``pageserver run`` subprocess on a temporary data dir, listening
  on a Unix socket or a free TCP port, pinned to one io engine (and checked to really run it:
  never a silent fallback to std-fs), stopped with SIGTERM and then SIGKILL after a timeout.
* :class:`BlockingClient` -- a small synchronous client of the wire protocol (plain sockets,
  the same sans-IO encoders as :class:`pageserver.client.Client`), for tests without trio.
* :mod:`pageserver.testing.plugin` -- the pytest plugin (registered through the ``pytest11``
  entry point, so installing the package is enough): fixtures ``pageserver_engine``,
  ``pageserver_daemon``, ``pageserver_daemon_factory``, ``pageserver_client``,
  ``pageserver_async_client`` and ``pageserver_timeline``.
* :mod:`pageserver.testing.compare` -- ``pageserver compare-engines``.

This package is an entry point of the layout (``docs/ARCHITECTURE.md``): it may import any part
of the package, and no part imports it. Importing it does not import pytest.
"""

from pageserver.testing.blocking import BlockingClient
from pageserver.testing.daemon import (
    Daemon,
    DaemonError,
    StopResult,
    TimelineRef,
    free_tcp_port,
    pageserver_command,
    require_engine_reason,
)

__all__ = [
    "BlockingClient",
    "Daemon",
    "DaemonError",
    "StopResult",
    "TimelineRef",
    "free_tcp_port",
    "pageserver_command",
    "require_engine_reason",
]
