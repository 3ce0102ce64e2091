"""Shared fixtures: every I/O test runs on both engines through ``engine_kind``/``io_ctx``.

The trio-uring parameter skips only where the kernel refuses io_uring, and fails instead
when ``PAGESERVER_REQUIRE_URING=1`` (CI), so a refusal can never pass silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from pageserver import failpoints
from pageserver.io import (
    ENGINE_KINDS,
    TRIO_URING,
    IoContext,
    create_engine,
    uring_refusal_reason,
    uring_required,
)
from pageserver.logging import configure_logging

# Tests log at WARNING and above (the daemon subprocesses configure their own logging).
configure_logging("kv", logging.WARNING)

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def require_engine(kind: str) -> None:
    """Skip (or, under PAGESERVER_REQUIRE_URING=1, fail) if ``kind`` cannot run here."""
    if kind != TRIO_URING:
        return
    reason = uring_refusal_reason()
    if reason is None:
        return
    if uring_required():
        pytest.fail(f"io_uring refused but PAGESERVER_REQUIRE_URING=1: {reason}")
    pytest.skip(f"io_uring refused by this kernel: {reason}")


@pytest.fixture(params=ENGINE_KINDS)
def engine_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    require_engine(kind)
    return kind


@pytest.fixture
async def io_ctx(engine_kind: str) -> AsyncIterator[IoContext]:
    """An IoContext on each engine, with ``no_sync`` (tests about fsync make their own)."""
    engine = create_engine(engine_kind)
    assert engine.kind == engine_kind  # never a silent fallback
    ctx = IoContext(engine, max_file_descriptors=100, no_sync=True)
    try:
        yield ctx
    finally:
        await ctx.aclose()  # closes the engine too


@pytest.fixture(autouse=True)
def _reset_failpoints() -> Iterator[None]:
    failpoints.clear()
    yield
    failpoints.clear()


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared is not present")
    return SHARED_DIR
