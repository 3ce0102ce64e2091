"""Engine parity and where a flush's syscalls run."""

from __future__ import annotations

import threading
from pathlib import Path

import trio

from pageserver.config import PageserverConfig
from pageserver.io import IoContext
from pageserver.tenant.manager import TenantManager
from tests.conftest import require_engine
from tests.helpers.recording import (
    RecordingEngine,
    Ticker,
    count_thread_calls,
    no_new_python_threads,
)
from tests.helpers.tenant import TENANT, TIMELINE, config, image, key, manager, trec


async def run_workload(engine_kind: str, data_dir: Path) -> None:
    cfg = config(checkpoint_distance=20_000)  # checkpoint_timeout stays 10 min: no time rolls
    async with manager(engine_kind, data_dir, cfg) as mgr:
        await mgr.create_tenant(TENANT, {"compaction_threshold": 5})
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=7)
        for lsn in range(8, 600):
            recs = [(key(lsn * 3 % 101), lsn, image(bytes([lsn % 251]) * (lsn % 300)))]
            if lsn % 5 == 0:
                recs.append((key(lsn % 13), lsn, trec(f"a{lsn}")))
            await mgr.put(TENANT, TIMELINE, recs)
            if lsn % 150 == 0:
                await mgr.flush(TENANT, TIMELINE)
    async with manager(engine_kind, data_dir, cfg) as mgr:
        for lsn in range(600, 800):
            await mgr.put(TENANT, TIMELINE, [(key(lsn % 50), lsn, image(lsn.to_bytes(4, "big") * 500))])


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "pageserver.toml"
    }


async def test_byte_identical_layer_files(tmp_path: Path) -> None:
    require_engine("trio-uring")
    await run_workload("std-fs", tmp_path / "a")
    await run_workload("trio-uring", tmp_path / "b")  # manager() asserts the engine kind
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert sum(1 for name in a if "__" in name) >= 10
    for name in a:
        assert a[name] == b[name], name


async def test_std_fs_flush_is_one_thread_call(tmp_path: Path) -> None:
    engine = RecordingEngine()
    ctx = IoContext(engine, no_sync=False)
    cfg = PageserverConfig(no_sync=False)
    async with TenantManager.open(ctx, tmp_path, cfg) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        for lsn in range(1, 6001):
            # 8000 B values: ~48 MiB of layer, written in gathers of up to 1 MiB.
            await mgr.put(TENANT, TIMELINE, [(key(lsn % 400), lsn, image(b"p" * 8000))])
        engine.calls.clear()
        loop_thread = threading.get_ident()
        ticker = Ticker()
        with count_thread_calls() as thread_calls:
            async with trio.open_nursery() as n:
                n.start_soon(ticker.run)
                t0 = trio.current_time()
                await mgr.flush(TENANT, TIMELINE)
                elapsed = trio.current_time() - t0
                ticker.stop()
    ticks, max_gap = ticker.ticks, ticker.max_gap
    assert thread_calls == [1]
    # The flush job: writes and fsync of the layer's temp file. (Freezing writes the
    # ephemeral file's tail on the loop, as ingest does.) The frozen ephemeral file is
    # mapped, not read (EphemeralFile.map_all): its pages are touched by the job's thread,
    # which the engine does not see; any read of it still counts as the job's.
    job_calls = [
        c for c in engine.calls
        if "___temp" in c[2] or (c[0] == "read" and "ephemeral-" in c[2])
    ]  # fmt: skip
    layer_writes = [c for c in job_calls if c[0] == "write"]
    assert len(layer_writes) >= 20  # ~48 MiB of layer in gathers of up to 1 MiB
    assert any(c[0] == "fsync" for c in job_calls)
    assert all(c[1] != loop_thread for c in job_calls if c[0] == "read")
    flush_threads = {tid for _op, tid, _p in job_calls}
    assert len(flush_threads) == 1 and loop_thread not in flush_threads, [(c[0], c[1] == loop_thread, c[2].rsplit("/", 1)[-1]) for c in job_calls if c[1] == loop_thread][:5]
    assert ticks >= 5, (ticks, elapsed)
    assert max_gap < max(0.25, elapsed * 0.6), (max_gap, elapsed)
    await ctx.aclose()


async def test_uring_flush_starts_no_thread(tmp_path: Path) -> None:
    require_engine("trio-uring")
    async with manager("trio-uring", tmp_path) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        for lsn in range(1, 2001):
            await mgr.put(TENANT, TIMELINE, [(key(lsn % 300), lsn, image(b"q" * 2000))])
        with no_new_python_threads():
            await mgr.flush(TENANT, TIMELINE)
        assert mgr.status()[0]["timelines"][0]["layers"]["l0"] == 1
