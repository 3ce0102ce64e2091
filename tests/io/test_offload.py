"""Conditional offload: one thread call per job under std-fs, the loop under trio-uring."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from pageserver import failpoints
from pageserver.io import (
    BufferedWriter,
    IoContext,
    JobSuspendedError,
    StdFsEngine,
    cleanup_shield,
    cooperative_checkpoint,
    create_engine,
    on_trio_loop,
)
from tests.helpers.recording import (
    RecordingEngine,
    Ticker,
    count_thread_calls,
    no_new_python_threads,
)


async def write_file_job(ctx: IoContext, path: str, mib: int) -> int:
    """A layer-writer-shaped job: temp file, buffered writes, fsync, clean-up on failure."""
    vf = await ctx.create_new(path)
    writer = BufferedWriter(vf)
    try:
        chunk = b"\xab" * 8192
        for _ in range(mib * 128):
            await writer.write(chunk)
            await cooperative_checkpoint()
        n = await writer.finish()
        await vf.sync_all(force=True)
    except BaseException:
        with cleanup_shield():
            await writer.abandon()
            await vf.close()
            await ctx.unlink(path)
        raise
    await vf.close()
    return n


async def test_std_fs_job_runs_in_one_worker_thread(tmp_path: Path) -> None:
    engine = RecordingEngine()
    ctx = IoContext(engine, no_sync=False)
    with count_thread_calls() as thread_calls:
        n = await ctx.run_job(write_file_job, ctx, str(tmp_path / "f"), 4)
    assert n == 4 << 20
    assert thread_calls == [1]
    assert len(engine.threads) >= 64 + 2  # open, 64 writes of 64 KiB, fsync
    assert len(set(engine.threads)) == 1
    assert engine.threads[0] != threading.get_ident()
    assert (tmp_path / "f").stat().st_size == 4 << 20
    await ctx.aclose()


async def test_loop_keeps_ticking_during_long_job(engine_kind: str, tmp_path: Path) -> None:
    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    try:
        # Each 64 KiB write pauses 2 ms: a job of ~64 writes takes well over 100 ms.
        failpoints.configure({"virtual-file-write": "sleep(2)"})
        ticker = Ticker()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run)
            t0 = trio.current_time()
            await ctx.run_job(write_file_job, ctx, str(tmp_path / "g"), 4)
            elapsed = trio.current_time() - t0
            ticker.stop()
        ticks, max_gap = ticker.ticks, ticker.max_gap
        assert elapsed > 0.1
        assert ticks >= 20, (ticks, elapsed)
        # Generous: the GIL switch interval and a noisy machine; a blocked loop would
        # show a gap as long as the whole job.
        assert max_gap < elapsed * 0.5, (max_gap, elapsed)
    finally:
        await ctx.aclose()


async def test_cancelled_job_cleans_up_before_caller_returns(engine_kind: str, tmp_path: Path) -> None:
    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    try:
        failpoints.configure({"virtual-file-write": "sleep(5)"})
        path = tmp_path / "cancelled.___temp"
        with trio.move_on_after(0.05) as scope:
            await ctx.run_job(write_file_job, ctx, str(path), 64)
        assert scope.cancelled_caught
        # The caller came back only after the job stopped and removed its temp file.
        assert not path.exists()
        assert [p.name for p in tmp_path.iterdir()] == []
        assert threading.active_count() >= 1
    finally:
        await ctx.aclose()


async def test_job_that_suspends_is_a_clear_error(tmp_path: Path) -> None:
    ctx = IoContext(StdFsEngine(), no_sync=True)
    cleaned = []

    class RawYield:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield "suspend-me"

    async def suspending_job() -> None:
        try:
            await RawYield()
        finally:
            cleaned.append("raw")

    async def trio_primitive_job() -> None:
        try:
            await trio.sleep(0.01)
        finally:
            cleaned.append("trio")

    with pytest.raises(JobSuspendedError, match="tried to suspend"):
        await ctx.run_job(suspending_job)
    # trio itself refuses first: there is no trio run in the worker thread.
    with pytest.raises(RuntimeError):
        await ctx.run_job(trio_primitive_job)
    assert cleaned == ["raw", "trio"]


async def test_job_result_and_errors_propagate(io_ctx: IoContext, tmp_path: Path) -> None:
    async def ok(x: int) -> int:
        return x * 2

    async def fails() -> None:
        await io_ctx.open(str(tmp_path / "nope"))

    assert await io_ctx.run_job(ok, 21) == 42
    with pytest.raises(FileNotFoundError):
        await io_ctx.run_job(fails)


async def test_uring_jobs_start_no_python_thread(tmp_path: Path) -> None:
    from tests.conftest import require_engine

    require_engine("trio-uring")
    ctx = IoContext(create_engine("trio-uring"), no_sync=True)
    try:
        assert ctx.engine.kind == "trio-uring"
        with no_new_python_threads():
            await ctx.run_job(write_file_job, ctx, str(tmp_path / "u"), 8)
    finally:
        await ctx.aclose()


async def test_on_trio_loop_only_on_the_loop(io_ctx: IoContext) -> None:
    """The one test of "may I use trio here?": true on the loop (and in a trio-uring job),
    false in a std-fs job's worker thread and in any plain thread."""

    async def job() -> bool:
        return on_trio_loop()

    assert on_trio_loop()
    assert await io_ctx.run_job(job) == (io_ctx.engine_kind == "trio-uring")
    assert await trio.to_thread.run_sync(on_trio_loop) is False


async def test_sleep_failpoint_in_a_job_sleeps_on_the_right_side(
    io_ctx: IoContext, tmp_path: Path
) -> None:
    """The failpoint's own loop test agrees with io's: a ``sleep`` inside a std-fs job (no
    trio run in its thread) blocks the thread, on the loop it is ``trio.sleep``."""
    failpoints.configure({"virtual-file-write": "sleep(30)"})

    async def job() -> None:
        vf = await io_ctx.create(str(tmp_path / "f"))
        await vf.write_all_at(b"x", 0)
        await vf.close()

    t0 = trio.current_time()
    await io_ctx.run_job(job)
    assert trio.current_time() - t0 >= 0.025
    assert failpoints.hits("virtual-file-write") == 1


async def test_std_fs_never_fsyncs_on_the_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenant config, timeline metadata, flush, compaction and GC:
    under std-fs every fsync runs in a worker thread (the crash-safe overwrite and the
    directory fsync offload themselves), none on the event loop's thread."""
    import os

    from pageserver.config import PageserverConfig, TenantConfig
    from tests.helpers.tenant import TENANT, TIMELINE, image, key, manager

    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.get_ident() == loop_thread:
            on_loop.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    cfg = PageserverConfig(
        tenant_config=TenantConfig(compaction_threshold=2, image_creation_threshold=1, gc_horizon=0)
    )
    async with manager("std-fs", tmp_path, cfg) as mgr:
        monkeypatch.setattr(os, "fsync", fsync)
        await mgr.create_tenant(TENANT)
        await mgr.set_tenant_config(TENANT, {"gc_horizon": 0, "compaction_threshold": 2})
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        for lsn in range(1, 4):
            await mgr.put(TENANT, TIMELINE, [(key(1), lsn, image(b"v"))])
            await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)
        await mgr.gc(TENANT, TIMELINE)
        monkeypatch.undo()
    assert on_loop == []
