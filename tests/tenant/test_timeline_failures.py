"""Timelines under I/O errors and slow disks (regressions found in review)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from pageserver import failpoints
from pageserver.errors import ShuttingDown
from tests.helpers.fs import fill, small_tmpfs
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


async def test_full_disk_in_the_open_layer_is_survived_without_restart(
    engine_kind: str, tmp_path: Path
) -> None:
    """Issue 11.4: ENOSPC in the ephemeral write rejects the call that hit it, keeps every
    acknowledged record, and writes go on once there is space (it used to break the
    timeline until a restart)."""
    async with manager(engine_kind, tmp_path) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=100)
        await mgr.put(TENANT, TIMELINE, [(key(1), 101, image(b"durable"))])
        assert await mgr.flush(TENANT, TIMELINE) == 101
        await mgr.put(TENANT, TIMELINE, [(key(2), 102, image(b"acknowledged"))])
        failpoints.configure({"virtual-file-write": "return(28)"})  # the disk is full
        with pytest.raises(OSError):
            await mgr.flush(TENANT, TIMELINE)
        # Still full: a put that needs the disk is refused; reads see everything acknowledged.
        with pytest.raises(OSError):
            await mgr.put(TENANT, TIMELINE, [(key(3), 103, image(b"y" * 70_000))])
        assert await mgr.get(TENANT, TIMELINE, key(2), 102) == b"acknowledged"
        assert await mgr.get(TENANT, TIMELINE, key(1), 101) == b"durable"
        failpoints.clear()  # space is back
        await mgr.put(TENANT, TIMELINE, [(key(3), 103, image(b"x"))])
        assert await mgr.flush(TENANT, TIMELINE) == 103
        assert await mgr.get(TENANT, TIMELINE, key(2), 103) == b"acknowledged"
        assert await mgr.get(TENANT, TIMELINE, key(3), 103) == b"x"
    # Graceful stop completed; a restart keeps everything.
    async with manager(engine_kind, tmp_path) as mgr:
        st = mgr.status()[0]["timelines"][0]
        assert st["disk_consistent_lsn"] == st["last_record_lsn"] == 103
        assert await mgr.get(TENANT, TIMELINE, key(2), 103) == b"acknowledged"
        assert await mgr.get(TENANT, TIMELINE, key(1), 101) == b"durable"


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


async def test_real_full_tmpfs_rejects_then_resumes(engine_kind: str) -> None:
    """A real full file system (a 4 MiB tmpfs), not a failpoint: ingest until a put is
    refused, free space, go on; every acknowledged record reads back, also after a
    restart."""
    with small_tmpfs("4m") as mnt:
        data = mnt / "d"
        model: dict[bytes, tuple[int, bytes]] = {}
        async with manager(engine_kind, data) as mgr:
            await mgr.create_tenant(TENANT)
            await mgr.create_timeline(TENANT, TIMELINE, start_lsn=100)
            filler = mnt / "filler"
            fill(filler)
            lsn = 101
            refused = 0
            for i in range(400):  # 400 x 3 KB is far more than the room left
                value = bytes([i % 251]) * 3000
                try:
                    await mgr.put(TENANT, TIMELINE, [(key(i), lsn, image(value))])
                except OSError as e:
                    assert e.errno == 28, e
                    refused += 1
                    if refused >= 3:
                        break
                    continue
                model[key(i)] = (lsn, value)
                lsn += 1
            assert refused >= 3, "the disk never filled"
            for k, (at, value) in model.items():  # acknowledged: readable while full
                assert await mgr.get(TENANT, TIMELINE, k, at) == value
            filler.unlink()
            for i in range(400, 420):
                value = bytes([i % 251]) * 3000
                await mgr.put(TENANT, TIMELINE, [(key(i), lsn, image(value))])
                model[key(i)] = (lsn, value)
                lsn += 1
            assert await mgr.flush(TENANT, TIMELINE) == lsn - 1
        async with manager(engine_kind, data) as mgr:
            for k, (_at, value) in model.items():
                assert await mgr.get(TENANT, TIMELINE, k, lsn - 1) == value


async def test_a_large_put_refused_by_a_full_disk_applies_nothing_and_can_be_resent(
    engine_kind: str,
) -> None:
    """A ``put`` of more than ``PUT_STEP_RECORDS`` records is applied in steps; when a
    later step's append meets a full disk (a real tmpfs), none of the batch is applied
    (the earlier steps' records used to stay, be flushed later, and make the resend of the
    same batch ``lsn_out_of_order``). Where the put itself meets the full disk (writes
    that complete before the reply), ``last_record_lsn`` has not moved and the same batch
    is accepted once there is space; either way every record ends up durable."""
    from pageserver.tenant.timeline import PUT_STEP_RECORDS

    n = 3 * PUT_STEP_RECORDS
    batch = [(key(i % 500), 101 + i, image(b"%08d" % i * 7)) for i in range(n)]  # ~3.3 MB
    with small_tmpfs("16m") as mnt:
        data = mnt / "d"
        async with manager(engine_kind, data, config(checkpoint_distance=1 << 30)) as mgr:
            await mgr.create_tenant(TENANT)
            await mgr.create_timeline(TENANT, TIMELINE, start_lsn=100)
            filler = mnt / "filler"
            # Room for the first step's values (~1.1 MB), not for the whole batch.
            os.truncate(filler, fill(filler) - (2 << 20))
            try:
                await mgr.put(TENANT, TIMELINE, batch)
                refused = False
            except OSError as e:
                assert e.errno == 28, e
                refused = True
            if refused:
                st = mgr.status()[0]["timelines"][0]
                assert st["last_record_lsn"] == 100, st
            filler.unlink()
            if refused:
                result = await mgr.put(TENANT, TIMELINE, batch)  # the same batch again
                assert result.skipped == 0 and result.last_record_lsn == 100 + n
            assert await mgr.flush(TENANT, TIMELINE) == 100 + n
            for i in (0, PUT_STEP_RECORDS - 1, PUT_STEP_RECORDS, n - 1):
                assert await mgr.get(TENANT, TIMELINE, key(i % 500), 101 + i) == b"%08d" % i * 7
        async with manager(engine_kind, data) as mgr:
            for i in (0, PUT_STEP_RECORDS + 1, n - 1):
                assert await mgr.get(TENANT, TIMELINE, key(i % 500), 101 + i) == b"%08d" % i * 7
