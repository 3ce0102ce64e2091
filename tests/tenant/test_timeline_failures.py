"""Timelines under I/O errors and slow disks (regressions found in review)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from pageserver import failpoints
from pageserver.errors import PageserverError, ShuttingDown
from tests.helpers.tenant import TENANT, TIMELINE, config, image, key, manager


async def test_get_during_a_slow_freeze(engine_kind: str, tmp_path: Path) -> None:
    async with manager(engine_kind, tmp_path) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=100)
        await mgr.put(TENANT, TIMELINE, [(key(i), 101, image(bytes([i]) * 3000)) for i in range(60)])
        failpoints.configure({"virtual-file-write": "sleep(200)"})
        got: dict[int, bytes | None] = {}

        async def do_flush() -> None:
            await mgr.flush(TENANT, TIMELINE)

        async with trio.open_nursery() as n:
            n.start_soon(do_flush)
            await trio.sleep(0.05)  # the freeze is waiting for its tail write
            for i in range(60):
                got[i] = await mgr.get(TENANT, TIMELINE, key(i), 101)
        failpoints.clear()
        assert all(got[i] == bytes([i]) * 3000 for i in range(60))


async def test_failed_write_breaks_timeline_cleanly(engine_kind: str, tmp_path: Path) -> None:
    async with manager(engine_kind, tmp_path) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=100)
        await mgr.put(TENANT, TIMELINE, [(key(1), 101, image(b"durable"))])
        assert await mgr.flush(TENANT, TIMELINE) == 101
        await mgr.put(TENANT, TIMELINE, [(key(2), 102, image(b"lost"))])
        failpoints.configure({"virtual-file-write": "return(28)"})  # the disk is full
        with pytest.raises(OSError):
            await mgr.flush(TENANT, TIMELINE)
        failpoints.clear()
        # Clear refusals, not assertion errors; durable data stays readable.
        with pytest.raises(PageserverError, match="broken"):
            await mgr.put(TENANT, TIMELINE, [(key(3), 103, image(b"x"))])
        with pytest.raises(PageserverError, match="broken"):
            await mgr.flush(TENANT, TIMELINE)
        assert await mgr.get(TENANT, TIMELINE, key(1), 101) == b"durable"
    # Graceful stop completed; a restart starts from the durable state.
    async with manager(engine_kind, tmp_path) as mgr:
        st = mgr.status()[0]["timelines"][0]
        assert st["disk_consistent_lsn"] == st["last_record_lsn"] == 101
        assert await mgr.get(TENANT, TIMELINE, key(2), 101) is None
        await mgr.put(TENANT, TIMELINE, [(key(2), 102, image(b"again"))])
        assert await mgr.flush(TENANT, TIMELINE) == 102


async def test_shutdown_not_blocked_by_backpressured_put(engine_kind: str, tmp_path: Path) -> None:
    async with manager(engine_kind, tmp_path, config(checkpoint_distance=100), flush_on_exit=False) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=100)
        failpoints.configure({"layer-before-rename": "sleep(400)"})  # a very slow flush
        outcome: list[str] = []

        async def writer() -> None:
            try:
                await mgr.put(TENANT, TIMELINE, [(key(i), 101 + i, image(b"x" * 200)) for i in range(4)])
                outcome.append("ok")
            except ShuttingDown:
                outcome.append("shutting_down")

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            await trio.sleep(0.1)  # the put now waits for the flush, holding the lock
            with trio.fail_after(10):
                await mgr.shutdown(flush=False)
        failpoints.clear()
        assert outcome == ["shutting_down"]
