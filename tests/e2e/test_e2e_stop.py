"""A graceful stop whose final flush fails exits 1 (the operator must know)."""

from __future__ import annotations

import os

import pytest

from pageserver.testing.plugin import DaemonFactory

T, TL = "aa" * 16, "bb" * 16
KEY = "00" * 17 + "01"


def test_stop_with_failed_flush_exits_1(
    pageserver_engine: str,
    pageserver_daemon_factory: DaemonFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAGESERVER_FAILPOINTS", "layer-before-rename=return(28)")
    d = pageserver_daemon_factory(pageserver_engine)  # started with the failpoint set
    d.cli("tenant", "create", T)
    d.cli("timeline", "create", T, TL)
    d.cli("put", T, TL, KEY, "5", "--image", "not durable")
    assert d.stop() == 1
    log = d.log()
    assert "flush at shutdown failed" in log
    assert "graceful=False" in log
    # Without the failure the same stop is graceful and exits 0.
    monkeypatch.setenv("PAGESERVER_FAILPOINTS", "")
    d.start()
    d.cli("put", T, TL, KEY, "5", "--image", "durable")
    assert d.stop() == 0
    assert os.listdir(os.path.join(d.data_dir, "tenants", T, "timelines", TL))
