"""VirtualFile: the bounded slot table, eviction, reopen, pinning, short I/O, metrics."""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from pathlib import Path

import pytest
import trio

from pageserver import failpoints
from pageserver.io import IoContext, StdFsEngine, UnexpectedEof, create_engine
from pageserver.metrics import IO_OPERATION_SECONDS


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def op_count(op: str) -> float:
    for metric in IO_OPERATION_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("operation") == op:
                return sample.value
    return 0.0


async def small_ctx(engine_kind: str, fds: int) -> IoContext:
    return IoContext(create_engine(engine_kind), max_file_descriptors=fds, no_sync=True)


async def test_200_files_through_8_slots(engine_kind: str, tmp_path: Path) -> None:
    ctx = await small_ctx(engine_kind, 8)
    try:
        # Warm up (the uring engine creates its ring lazily) before taking the baseline.
        warm = await ctx.create(str(tmp_path / "warm"))
        await warm.write_all_at(b"x", 0)
        await warm.close()
        baseline = open_fd_count()
        files = [await ctx.create(str(tmp_path / f"f{i}")) for i in range(200)]
        expected: dict[int, bytearray] = {i: bytearray() for i in range(200)}
        max_seen = 0
        done = False

        async def watch() -> None:
            nonlocal max_seen
            while not done:
                max_seen = max(max_seen, open_fd_count())
                await trio.sleep(0)

        completed = [0] * 200

        async def worker(seed: int) -> None:
            # Each worker appends to its own files (i % 16 == seed), so the completed
            # prefix of every file is exact; it reads any file's completed prefix.
            rng = random.Random(seed)
            mine = [i for i in range(200) if i % 16 == seed]
            for _ in range(150):
                i = rng.choice(mine)
                chunk = bytes([rng.randrange(256)]) * rng.randrange(1, 300)
                off = len(expected[i])
                expected[i] += chunk
                await files[i].write_all_at(chunk, off)
                completed[i] = off + len(chunk)
                j = rng.randrange(200)
                n = completed[j]
                if n:
                    assert await files[j].read_exact_at(n, 0) == bytes(expected[j][:n])
                assert ctx.table.open_fd_count() <= 8

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as workers:
                for s in range(16):
                    workers.start_soon(worker, s)
            done = True
        for i, vf in enumerate(files):
            data = await vf.read_exact_at(len(expected[i]), 0) if expected[i] else b""
            assert data == bytes(expected[i])
            assert (tmp_path / f"f{i}").read_bytes() == bytes(expected[i])
        # Bound plus a fixed baseline (the watcher's listdir fd, a little slack).
        assert max_seen <= baseline + 8 + 2, (max_seen, baseline)
        assert ctx.table.reopen_count > 0
    finally:
        await ctx.aclose()


async def test_reads_race_with_writes_see_written_prefix(engine_kind: str, tmp_path: Path) -> None:
    """Concurrent readers of a file that is being appended see exactly the bytes written."""
    ctx = await small_ctx(engine_kind, 4)
    try:
        files = [await ctx.create(str(tmp_path / f"g{i}")) for i in range(12)]
        written = [0] * 12

        def pattern(i: int, off: int, n: int) -> bytes:
            return bytes((i * 7 + k) % 251 for k in range(off, off + n))

        async def writer(i: int) -> None:
            for _ in range(20):
                n = 97
                await files[i].write_all_at(pattern(i, written[i], n), written[i])
                written[i] += n

        async def reader(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(60):
                i = rng.randrange(12)
                n = written[i]
                if n:
                    assert await files[i].read_exact_at(n, 0) == pattern(i, 0, n)
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(writer, i)
            for s in range(6):
                nursery.start_soon(reader, s)
    finally:
        await ctx.aclose()


async def test_create_new_survives_eviction(engine_kind: str, tmp_path: Path) -> None:
    ctx = await small_ctx(engine_kind, 2)
    try:
        path = tmp_path / "new"
        vf = await ctx.create_new(str(path))
        await vf.write_all_at(b"hello", 0)
        others = [await ctx.create(str(tmp_path / f"o{i}")) for i in range(5)]
        for o in others:
            await o.write_all_at(b"o", 0)
        assert vf._slot is None or vf._slot.owner is not vf  # it was evicted
        before = ctx.table.reopen_count
        # Reopen must strip O_EXCL (else EEXIST) and O_TRUNC (else "hello" is lost).
        await vf.write_all_at(b" world", 5)
        assert ctx.table.reopen_count == before + 1
        assert await vf.read_exact_at(11, 0) == b"hello world"
        assert path.read_bytes() == b"hello world"
        with pytest.raises(FileExistsError):
            await ctx.create_new(str(path))
    finally:
        await ctx.aclose()


async def test_no_reopen_churn_when_files_fit(engine_kind: str, tmp_path: Path) -> None:
    ctx = await small_ctx(engine_kind, 8)
    try:
        before = op_count("open-after-replace")
        files = [await ctx.create(str(tmp_path / f"h{i}")) for i in range(8)]
        for rnd in range(50):
            for vf in files:
                await vf.write_all_at(bytes([rnd]), rnd)
                assert await vf.read_exact_at(1, rnd) == bytes([rnd])
        assert ctx.table.reopen_count == 0
        assert op_count("open-after-replace") == before
    finally:
        await ctx.aclose()


async def test_inflight_slot_not_stolen_by_loop_tasks(engine_kind: str, tmp_path: Path) -> None:
    """With one slot, a task whose write is in flight keeps its fd until it finishes."""
    ctx = await small_ctx(engine_kind, 1)
    try:
        a = await ctx.create(str(tmp_path / "a"))
        b_path = str(tmp_path / "b")
        order: list[str] = []
        failpoints.configure({"virtual-file-write": "sleep(150)"})

        async def write_a() -> None:
            await a.write_all_at(b"A" * 100, 0)
            order.append("a-done")

        async def open_b() -> None:
            await trio.sleep(0.03)  # a's write is in flight (sleeping inside its pin)
            order.append("b-start")
            failpoints.clear()
            b = await ctx.create(b_path)
            order.append("b-opened")
            await b.write_all_at(b"B" * 10, 0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_a)
            nursery.start_soon(open_b)
        assert order == ["b-start", "a-done", "b-opened"]
        assert (tmp_path / "a").read_bytes() == b"A" * 100
        assert Path(b_path).read_bytes() == b"B" * 10
    finally:
        await ctx.aclose()


async def test_inflight_slot_not_stolen_by_worker_thread(engine_kind: str, tmp_path: Path) -> None:
    """A worker thread (offloaded job) and loop tasks share one slot safely."""
    ctx = await small_ctx(engine_kind, 1)
    try:
        a = await ctx.create(str(tmp_path / "a"))
        b = await ctx.create(str(tmp_path / "b"))
        failpoints.configure({"virtual-file-write": "sleep(2)"})

        async def job(vf_count: int) -> int:
            for k in range(vf_count):
                await a.write_all_at(bytes([k % 256]) * 64, k * 64)
            return vf_count

        async def loop_side() -> None:
            for k in range(30):
                await b.write_all_at(bytes([k]) * 32, k * 32)
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop_side)
            assert await ctx.run_job(job, 40) == 40
        assert (tmp_path / "a").read_bytes() == b"".join(bytes([k]) * 64 for k in range(40))
        assert (tmp_path / "b").read_bytes() == b"".join(bytes([k]) * 32 for k in range(30))
    finally:
        await ctx.aclose()


async def test_plain_thread_waits_on_condition(tmp_path: Path) -> None:
    """A thread with no trio run waits on the Condition while the loop holds the pin."""
    ctx = IoContext(StdFsEngine(), max_file_descriptors=1, no_sync=True)
    a = await ctx.create(str(tmp_path / "a"))
    slot = await ctx.table.pin(a)  # the loop holds the only slot
    result: list[str] = []

    def thread_body() -> None:
        async def go() -> None:
            vf = await ctx.create(str(tmp_path / "t"))
            await vf.write_all_at(b"thread", 0)
            await vf.close()

        from pageserver.io import drive_to_completion

        drive_to_completion(go())
        result.append("done")

    t = threading.Thread(target=thread_body)
    t.start()
    await trio.sleep(0.1)
    assert result == []  # blocked: the only slot is pinned
    ctx.table.unpin(slot)
    await trio.to_thread.run_sync(t.join)
    assert result == ["done"]
    assert (tmp_path / "t").read_bytes() == b"thread"
    await ctx.aclose()


async def test_read_exact_at_eof_and_metadata(io_ctx: IoContext, tmp_path: Path) -> None:
    vf = await io_ctx.create(str(tmp_path / "e"))
    await vf.write_all_at(b"0123456789", 0)
    assert await vf.read_exact_at(4, 3) == b"3456"
    with pytest.raises(UnexpectedEof):
        await vf.read_exact_at(5, 8)
    assert (await vf.metadata()).size == 10
    await vf.set_len(4)
    assert (await vf.metadata()).size == 4
    await vf.sync_all()
    await vf.sync_data()
    await vf.close()
    with pytest.raises(FileNotFoundError):
        await io_ctx.open(str(tmp_path / "missing"))


class ShortWriteEngine(StdFsEngine):
    """Writes and reads at most 3 bytes per call, like a pathological kernel could."""

    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        return os.pwrite(fd, memoryview(data)[:3], offset)

    async def read_at(self, fd: int, buf: bytearray | memoryview, offset: int) -> int:
        return os.preadv(fd, [memoryview(buf)[:3]], offset)


async def test_short_io_loops(tmp_path: Path) -> None:
    ctx = IoContext(ShortWriteEngine(), max_file_descriptors=4, no_sync=True)
    vf = await ctx.create(str(tmp_path / "s"))
    payload = bytes(range(256)) * 4
    await vf.write_all_at(payload, 10)
    assert (tmp_path / "s").read_bytes()[10:] == payload
    assert await vf.read_exact_at(len(payload), 10) == payload
    await ctx.aclose()


async def test_metrics_count_operations(io_ctx: IoContext, tmp_path: Path) -> None:
    before = {op: op_count(op) for op in ("open", "write", "read", "fsync", "metadata", "close")}
    vf = await io_ctx.create(str(tmp_path / "m"))
    await vf.write_all_at(b"abc", 0)
    await vf.read_exact_at(3, 0)
    await vf.sync_all()  # no_sync: not counted as fsync
    await vf.metadata()
    await vf.close()
    assert op_count("open") == before["open"] + 1
    assert op_count("write") == before["write"] + 1
    assert op_count("read") == before["read"] + 1
    assert op_count("metadata") == before["metadata"] + 1
    assert op_count("close") == before["close"] + 1
    assert op_count("fsync") == before["fsync"]


async def test_fsync_counted_when_sync_enabled(engine_kind: str, tmp_path: Path) -> None:
    ctx = IoContext(create_engine(engine_kind), max_file_descriptors=4, no_sync=False)
    try:
        before = op_count("fsync")
        vf = await ctx.create(str(tmp_path / "f"))
        await vf.write_all_at(b"x", 0)
        await vf.sync_all()
        await vf.sync_data()
        assert op_count("fsync") == before + 2
        t0 = time.monotonic()
        await ctx.fsync_dir(str(tmp_path))
        assert time.monotonic() - t0 < 10
    finally:
        await ctx.aclose()


async def test_write_behind_depth_is_the_engines(io_ctx: IoContext, tmp_path: Path) -> None:
    vf = await io_ctx.create(str(tmp_path / "d"))
    assert vf.write_behind_depth == io_ctx.engine.write_behind_depth
    assert vf.write_behind_depth == (4 if io_ctx.engine_kind == "trio-uring" else 1)
    await vf.close()


async def test_context_aclose_closes_its_engine(engine_kind: str, tmp_path: Path) -> None:
    """The context owns its engine: ``ctx.aclose()`` closes descriptors and the engine (the
    run's ring under trio-uring); closing the engine once more afterwards is harmless."""
    engine = create_engine(engine_kind)
    ctx = IoContext(engine, no_sync=True)
    vf = await ctx.create(str(tmp_path / "c"))
    await vf.write_all_at(b"abc", 0)
    assert ctx.table.open_fd_count() == 1
    if engine_kind == "trio-uring":
        assert engine.ring_stats() is not None  # type: ignore[attr-defined]
    await ctx.aclose()
    assert ctx.table.open_fd_count() == 0
    if engine_kind == "trio-uring":
        assert engine.ring_stats() is None  # type: ignore[attr-defined]
    await engine.aclose()
    await engine.aclose()
    assert (tmp_path / "c").read_bytes() == b"abc"


async def test_map_readonly_outlives_the_slot(engine_kind: str, tmp_path: Path) -> None:
    """A read-only mapping of a VirtualFile (the flush's view of a frozen ephemeral file)
    shows the file's bytes and stays valid after the slot is evicted and reused; it keeps
    no descriptor of its own (the slot table's bound holds), and goes with its last view."""
    ctx = await small_ctx(engine_kind, 2)
    try:
        data = bytes(range(256)) * 1000
        vf = await ctx.create(str(tmp_path / "f"))
        await vf.write_all_at(data, 0)
        mapping = await vf.map_readonly(len(data) - 3)
        # Descriptors of the file: its VirtualFile slot's, no other.
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:
                pass  # listdir's own descriptor
        assert sum(path == str(tmp_path / "f") for path in fds) == 1, fds
        view = mapping.array()
        for i in range(4):  # evict vf's slot, reuse its fd number
            await (await ctx.create(str(tmp_path / f"o{i}"))).write_all_at(b"x", 0)
        assert view.tobytes() == data[:-3]
        assert bytes(view[1000:1010]) == data[1000:1010]
        assert not view.flags.writeable
        maps = Path("/proc/self/maps").read_text
        assert str(tmp_path / "f") in maps()
        del mapping
        assert str(tmp_path / "f") in maps()  # the view still holds it
        tail = view[-10:]
        del view
        assert bytes(tail) == data[-13:-3]
        del tail
        gc.collect()
        assert str(tmp_path / "f") not in maps()  # unmapped with its last view
    finally:
        await ctx.aclose()
