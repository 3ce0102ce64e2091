"""The trio-uring engine on real files: every operation, errors, batching, backpressure,
CQ overflow, cancellation (including thousands of cancellations of in-flight operations),
end-of-run teardown, and "no Python threads".
"""

from __future__ import annotations

import errno
import gc
import os
import random
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from pageserver.io import TRIO_URING, FileStat, UringEngine
from pageserver.io.uring import _abi
from pageserver.io.uring._ring import Ring
from pageserver.io.uring._trio import UringDriver, current_driver
from pageserver.io.uring.engine import probe_uring, uring_missing_optional_ops
from tests.conftest import require_engine


def require_uring() -> None:
    """Skip when the kernel refuses io_uring; fail instead under PAGESERVER_REQUIRE_URING=1."""
    require_engine(TRIO_URING)


@pytest.fixture(autouse=True)
def _uring_available() -> None:
    require_uring()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


#: ``PF_IO_WORKER`` in a task's flags (``/proc/<pid>/task/<tid>/stat``, field 9).
_PF_IO_WORKER = 0x10


def python_threads_and_tasks() -> tuple[int, set[str]]:
    """Python threads, and OS task names excluding the kernel's io_uring workers.

    A worker is known by its ``PF_IO_WORKER`` flag, not only by its ``iou-*`` name: it is
    created with its parent's name (``python``) and renamed just after, and a listing in
    between (a loaded machine) once counted it as a new thread of ours."""
    names = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as f:
                flags = int(f.read().rsplit(")", 1)[1].split()[6])
        except FileNotFoundError:
            continue
        if not name.startswith("iou-") and not flags & _PF_IO_WORKER:
            names.add(f"{tid}:{name}")
    return threading.active_count(), names


# ---------------------------------------------------------------------------------------
# The ring itself


def test_ring_setup_and_probe() -> None:
    with Ring(8) as ring:
        assert ring.sq_entries == 8
        assert ring.cq_entries == 16
        assert ring.features & _abi.IORING_FEAT_NODROP
        ops = ring.probe()
        for op in (
            _abi.IORING_OP_NOP,
            _abi.IORING_OP_OPENAT,
            _abi.IORING_OP_READ,
            _abi.IORING_OP_WRITE,
            _abi.IORING_OP_FSYNC,
            _abi.IORING_OP_STATX,
            _abi.IORING_OP_CLOSE,
        ):
            assert op in ops
        fd = ring.fd
    assert ring.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_probe_reports_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from pageserver.io.uring import _syscalls
    from pageserver.io.uring import engine as uring_engine

    assert probe_uring() is None
    assert uring_missing_optional_ops() in ([], ["FTRUNCATE"])
    real_setup = _syscalls.io_uring_setup

    def refuse(entries: int, params: int) -> int:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_syscalls, "io_uring_setup", refuse)
    monkeypatch.setattr(uring_engine, "_probe_cache", None)
    reason = probe_uring()
    assert reason is not None and "EPERM" in reason
    assert "seccomp" in reason or "io_uring_disabled" in reason

    def nosys(entries: int, params: int) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(_syscalls, "io_uring_setup", nosys)
    monkeypatch.setattr(uring_engine, "_probe_cache", None)
    assert "ENOSYS" in (probe_uring() or "")

    real_probe = Ring.probe
    monkeypatch.setattr(_syscalls, "io_uring_setup", real_setup)
    monkeypatch.setattr(Ring, "probe", lambda self: real_probe(self) - {_abi.IORING_OP_STATX})
    monkeypatch.setattr(uring_engine, "_probe_cache", None)
    assert probe_uring() == "io_uring lacks required opcodes: STATX"
    monkeypatch.undo()
    uring_engine._probe_cache = None
    assert probe_uring() is None


# ---------------------------------------------------------------------------------------
# Every operation


async def test_every_operation(tmp_path: Path) -> None:
    e = UringEngine()
    assert e.kind == TRIO_URING == "trio-uring"
    assert e.write_behind_depth >= 2
    assert e.runs_jobs_in_thread is False
    p = str(tmp_path / "f")
    fd = await e.open(p, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
    assert os.get_inheritable(fd) is False  # O_CLOEXEC
    assert await e.write_at(fd, b"hello, world", 0) == 12
    assert await e.write_at(fd, bytearray(b"HELLO"), 0) == 5
    assert await e.write_at(fd, memoryview(b"xxWORLDxx")[2:7], 7) == 5  # read-only view
    assert await e.write_at(fd, memoryview(bytearray(b"!")), 12) == 1
    assert await e.write_at(fd, b"", 100) == 0
    buf = bytearray(13)
    assert await e.read_at(fd, buf, 0) == 13
    assert bytes(buf) == b"HELLO, WORLD!"
    view = memoryview(bytearray(10))
    assert await e.read_at(fd, view[2:7], 7) == 5
    assert bytes(view) == b"\0\0WORLD\0\0\0"
    assert await e.read_at(fd, bytearray(10), 100) == 0  # EOF
    st = await e.stat(fd)
    assert st == FileStat(size=13, mode=os.stat(p).st_mode, ino=os.stat(p).st_ino)
    await e.fsync(fd)
    await e.fdatasync(fd)
    await e.set_len(fd, 5)
    assert (await e.stat(fd)).size == 5
    await e.set_len(fd, 8192)
    assert os.stat(p).st_size == 8192
    pending = [await e.submit_write_at(fd, bytes([i]) * 4096, i * 4096) for i in range(4)]
    assert [await pw.result() for pw in pending] == [4096] * 4
    await e.close(fd)
    with open(p, "rb") as f:
        assert f.read() == b"".join(bytes([i]) * 4096 for i in range(4))

    q = str(tmp_path / "g")
    await e.rename(p, q)
    assert not os.path.exists(p) and os.path.exists(q)
    Path(p).write_bytes(b"other")
    await e.rename(p, q)  # replaces
    assert Path(q).read_bytes() == b"other"
    Path(p).write_bytes(b"third")
    with pytest.raises(FileExistsError) as ei:
        await e.rename_noreplace(p, q)
    assert ei.value.filename == p and ei.value.filename2 == q
    assert Path(q).read_bytes() == b"other"
    r = str(tmp_path / "h")
    await e.rename_noreplace(p, r)
    assert Path(r).read_bytes() == b"third"
    await e.unlink(r)
    assert not os.path.exists(r)
    await e.fsync_dir(str(tmp_path))
    await e.aclose()
    await e.aclose()  # idempotent


async def test_set_len_fallback_without_ftruncate_opcode(tmp_path: Path) -> None:
    e = UringEngine()
    e._has_ftruncate = False  # as on a kernel older than 6.9
    p = tmp_path / "t"
    p.write_bytes(b"x" * 100)
    fd = await e.open(str(p), os.O_RDWR)
    await e.set_len(fd, 10)
    await e.close(fd)
    assert p.read_bytes() == b"x" * 10


async def test_same_bytes_as_os_calls(tmp_path: Path) -> None:
    rng = random.Random(7)
    e = UringEngine()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fa = await e.open(a, os.O_CREAT | os.O_RDWR)
    fb = os.open(b, os.O_CREAT | os.O_RDWR)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(1, 20000))
        off = rng.randrange(0, 1 << 20)
        assert await e.write_at(fa, data, off) == os.pwrite(fb, data, off)
    await e.set_len(fa, 900_000)
    os.ftruncate(fb, 900_000)
    await e.close(fa)
    os.close(fb)
    assert Path(a).read_bytes() == Path(b).read_bytes()


# ---------------------------------------------------------------------------------------
# Errors: the same OSError subclasses and errnos as os.*


def _os_error(fn: Callable[[], Any]) -> OSError:
    try:
        fn()
    except OSError as e:
        return e
    raise AssertionError("expected an OSError")


async def test_errors_match_os(tmp_path: Path) -> None:
    e = UringEngine()
    missing = str(tmp_path / "missing")
    existing = tmp_path / "existing"
    existing.write_bytes(b"x")
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    bad = w  # a closed fd number

    async def check(coro: Any, expected: OSError, path: str | None = None) -> None:
        with pytest.raises(OSError) as ei:
            await coro
        assert type(ei.value) is type(expected), (ei.value, expected)
        assert ei.value.errno == expected.errno
        if path is not None:
            assert ei.value.filename == path

    # ENOENT
    await check(
        e.open(missing, os.O_RDONLY), _os_error(lambda: os.open(missing, os.O_RDONLY)), missing
    )
    await check(e.unlink(missing), _os_error(lambda: os.unlink(missing)), missing)
    await check(
        e.rename(missing, str(existing)), _os_error(lambda: os.rename(missing, str(existing)))
    )
    # EEXIST
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
    await check(e.open(str(existing), flags), _os_error(lambda: os.open(str(existing), flags)))
    # EBADF
    await check(e.read_at(bad, bytearray(4), 0), _os_error(lambda: os.pread(bad, 4, 0)))
    await check(e.write_at(bad, b"abcd", 0), _os_error(lambda: os.pwrite(bad, b"abcd", 0)))
    await check(e.fsync(bad), _os_error(lambda: os.fsync(bad)))
    await check(e.fdatasync(bad), _os_error(lambda: os.fdatasync(bad)))
    await check(e.stat(bad), _os_error(lambda: os.fstat(bad)))
    await check(e.set_len(bad, 0), _os_error(lambda: os.ftruncate(bad, 0)))
    await check(e.close(bad), _os_error(lambda: os.close(bad)))
    pw = await e.submit_write_at(bad, b"abcd", 0)
    with pytest.raises(OSError) as ei:
        await pw.result()
    assert ei.value.errno == errno.EBADF
    # EISDIR, ENOTDIR-like cases come from the kernel unchanged too
    fd = await e.open(str(tmp_path), os.O_RDONLY)
    await check(e.read_at(fd, bytearray(4), 0), _os_error(lambda: os.pread(fd, 4, 0)))
    await e.close(fd)
    with pytest.raises(ValueError):
        await e.open(str(tmp_path / "nul\0byte"), os.O_RDONLY)


async def test_enospc_surfaces_as_os_does(tmp_path: Path) -> None:
    assert os.path.exists("/dev/full"), "Linux always has /dev/full"
    e = UringEngine()
    fd = await e.open("/dev/full", os.O_WRONLY)
    with pytest.raises(OSError) as ei:
        await e.write_at(fd, b"x" * 10, 0)
    expected = _os_error(lambda: os.pwrite(fd, b"x" * 10, 0))
    assert type(ei.value) is type(expected) and ei.value.errno == errno.ENOSPC
    await e.close(fd)


# ---------------------------------------------------------------------------------------
# Batching, backpressure, overflow


async def test_submissions_of_one_round_share_an_enter(tmp_path: Path) -> None:
    e = UringEngine()
    fd = await e.open(str(tmp_path / "b"), os.O_CREAT | os.O_RDWR)
    stats = current_driver().stats
    before_enters, before_sub = stats.enters, stats.submitted
    n_tasks, per_task = 100, 5

    async def worker(i: int) -> None:
        for j in range(per_task):
            await e.write_at(fd, bytes([i]) * 512, (i * per_task + j) * 512)

    async with trio.open_nursery() as nursery:
        for i in range(n_tasks):
            nursery.start_soon(worker, i)
    ops = stats.submitted - before_sub
    enters = stats.enters - before_enters
    assert ops == n_tasks * per_task
    assert enters * 10 <= ops, (enters, ops)
    assert stats.max_batch >= n_tasks // 2
    await e.close(fd)
    data = (tmp_path / "b").read_bytes()
    for i in range(n_tasks):
        chunk = data[i * per_task * 512 : (i + 1) * per_task * 512]
        assert chunk == bytes([i]) * (per_task * 512)


async def test_full_sq_waits_for_room(tmp_path: Path) -> None:
    e = UringEngine(sq_entries=8)
    drv = current_driver(sq_entries=8)
    assert drv.ring.sq_entries == 8
    fd = await e.open(str(tmp_path / "s"), os.O_CREAT | os.O_RDWR)
    results: list[int] = []

    async def worker(i: int) -> None:
        results.append(await e.write_at(fd, i.to_bytes(4, "little") * 256, i * 1024))

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(worker, i)
    assert results == [1024] * 300
    assert drv.stats.room_waits > 0
    assert drv.stats.max_batch <= 8
    data = (tmp_path / "s").read_bytes()
    assert all(data[i * 1024 : (i + 1) * 1024] == i.to_bytes(4, "little") * 256 for i in range(300))
    await e.close(fd)


async def test_cq_overflow_loses_nothing() -> None:
    # A driver whose CQ is smaller than what we put in flight, drained only at the end:
    # the kernel must keep the overflow (IORING_FEAT_NODROP) and the drain must fetch it.
    drv = UringDriver(8, cq_entries=8, max_in_flight=10_000)
    try:
        ops = []
        for _ in range(8):
            for _ in range(8):
                ops.append(drv.push(_abi.IORING_OP_NOP, 0, -1, 0, 0, 0, 0, None))
            drv._sq_u32[drv._sq_tail_i] = drv._sq_tail
            submitted = 0
            while submitted < 8:
                r = drv.ring.enter(8 - submitted)
                assert r > 0, r
                submitted += r
            drv._sq_head = drv._sq_u32[drv._sq_head_i]
            drv._unsubmitted = 0
        assert drv._sq_u32[drv.ring.sq_flags_i] & _abi.IORING_SQ_CQ_OVERFLOW
        drv._drain()
        assert all(op.done and op.res == 0 for op in ops)
        assert drv.stats.overflow_flushes >= 1
        assert drv.stats.completed == 64
        assert drv.in_flight == 0
    finally:
        drv.ring.close()


# ---------------------------------------------------------------------------------------
# Cancellation

BLOCK = 4096


def pattern(block: int, gen: int) -> bytes:
    head = block.to_bytes(4, "little") + gen.to_bytes(4, "little")
    body = random.Random(block * 1_000_003 + gen).randbytes(BLOCK - 12)
    return head + body + zlib.crc32(head + body).to_bytes(4, "little")


def valid_block(data: bytes | bytearray, block: int) -> bool:
    if bytes(data[:4]) != block.to_bytes(4, "little"):
        return False
    return zlib.crc32(bytes(data[:-4])) == int.from_bytes(data[-4:], "little")


async def test_thousands_of_cancellations_in_flight(tmp_path: Path) -> None:
    """Reads and writes cancelled at random points never corrupt a file or a buffer."""
    rng = random.Random(1234)
    e = UringEngine(force_async=True)  # ops go to io-wq: still in the kernel when cancelled
    n_blocks = 256
    path = tmp_path / "stress"
    path.write_bytes(b"".join(pattern(b, 0) for b in range(n_blocks)))
    fd = await e.open(str(path), os.O_RDWR)
    drv = current_driver()
    gen = [0] * n_blocks
    checked_reads = 0
    # Buffers of writes, with their expected contents, kept to check they were never
    # written to; read buffers are checked when the read returned.
    write_bufs: list[tuple[bytearray, bytes]] = []

    async def worker(first_block: int, stride: int) -> None:
        nonlocal checked_reads
        block = first_block
        while True:
            if rng.random() < 0.5:
                g = gen[block] + 1
                data = bytearray(pattern(block, g))
                write_bufs.append((data, bytes(data)))
                n = await e.write_at(fd, data, block * BLOCK)
                assert n == BLOCK
                gen[block] = g
            else:
                buf = bytearray(BLOCK)
                n = await e.read_at(fd, buf, block * BLOCK)
                assert n == BLOCK and valid_block(buf, block)
                checked_reads += 1
            block = (block + stride) % n_blocks

    rounds = 0
    deadline = trio.current_time() + 20
    while drv.stats.cancel_in_flight < 1200 and trio.current_time() < deadline:
        rounds += 1
        async with trio.open_nursery() as nursery:
            for t in range(64):
                nursery.start_soon(worker, t, 64)  # disjoint blocks per worker
            for _ in range(rng.randrange(1, 12)):
                await trio.sleep(0)
            if rng.random() < 0.3:
                await trio.sleep(rng.random() * 0.002)
            nursery.cancel_scope.cancel()
        if rounds % 10 == 0:
            gc.collect()
            churn = [bytearray(rng.randrange(1, 9000)) for _ in range(500)]
            del churn
    assert drv.stats.cancel_in_flight >= 1000, drv.stats
    assert drv.stats.cancel_withdrawn > 0
    assert drv.in_flight == 0
    gc.collect()
    churn2 = [os.urandom(BLOCK) for _ in range(2000)]
    del churn2
    for data, expected in write_bufs:
        assert data == expected
    await e.close(fd)
    content = path.read_bytes()
    for b in range(n_blocks):
        blk = content[b * BLOCK : (b + 1) * BLOCK]
        assert valid_block(blk, b), b
        # A write cancelled in the kernel completed and returned normally (gen updated);
        # a write cancelled before submission never happened: the file is exact.
        assert int.from_bytes(blk[4:8], "little") == gen[b], b
    assert checked_reads > 100


async def test_cancelled_open_leaks_no_fd(tmp_path: Path) -> None:
    rng = random.Random(99)
    paths: list[str] = []
    for i in range(16):
        p = tmp_path / f"o{i}"
        p.write_bytes(b"x")
        paths.append(str(p))
    e = UringEngine(force_async=True)
    drv = current_driver()
    await e.close(await e.open(paths[0], os.O_RDONLY))  # the ring's own fd exists now
    before = fd_count()
    got = 0
    cancelled = 0

    async def opener(p: str) -> None:
        nonlocal got, cancelled
        try:
            fd = await e.open(p, os.O_RDONLY)
        except trio.Cancelled:
            cancelled += 1
            raise
        got += 1
        await e.close(fd)

    deadline = trio.current_time() + 10
    while drv.stats.cancel_in_flight < 200 and trio.current_time() < deadline:
        async with trio.open_nursery() as nursery:
            for sp in paths:
                nursery.start_soon(opener, sp)
            for _ in range(rng.randrange(0, 4)):
                await trio.sleep(0)
            nursery.cancel_scope.cancel()
    assert drv.stats.cancel_in_flight >= 200, drv.stats
    assert cancelled > 0 and got > 0
    # discarded fds are closed by CLOSE SQEs nobody waits for: let them complete
    for _ in range(50):
        if drv.in_flight == 0:
            break
        await trio.sleep(0.001)
    assert fd_count() == before


async def test_cancel_before_submission_withdraws_the_op(tmp_path: Path) -> None:
    e = UringEngine()
    p = tmp_path / "w"
    p.write_bytes(b"old!")
    fd = await e.open(str(p), os.O_RDWR)
    drv = current_driver()
    with trio.CancelScope() as scope:
        scope.cancel()
        await e.write_at(fd, b"new!", 0)  # queued, then cancelled before any enter
    assert scope.cancelled_caught
    assert drv.stats.cancel_withdrawn == 1
    await e.close(fd)
    assert p.read_bytes() == b"old!"


async def test_write_behind_result_is_uncancellable(tmp_path: Path) -> None:
    e = UringEngine(force_async=True)
    fd = await e.open(str(tmp_path / "wb"), os.O_CREAT | os.O_RDWR)
    pend = await e.submit_write_at(fd, bytearray(b"z" * 65536), 0)
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await pend.result() == 65536  # waits for the CQE despite the cancel
    # dropped handles: the table keeps the buffer; the write happens anyway
    for i in range(1, 9):
        await e.submit_write_at(fd, bytearray(bytes([i]) * 65536), i * 65536)
    gc.collect()
    while current_driver().in_flight:
        await trio.sleep(0.001)
    await e.close(fd)
    data = (tmp_path / "wb").read_bytes()
    assert data == b"z" * 65536 + b"".join(bytes([i]) * 65536 for i in range(1, 9))


async def test_close_and_unlink_complete_in_cancelled_scope(tmp_path: Path) -> None:
    e = UringEngine()
    p = tmp_path / "c"
    fd = await e.open(str(p), os.O_CREAT | os.O_RDWR)
    before = fd_count()
    with trio.CancelScope() as scope:
        scope.cancel()
        await e.close(fd)
        await e.unlink(str(p))
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert fd_count() == before - 1
    assert not p.exists()


# ---------------------------------------------------------------------------------------
# Lifecycle and threads


def test_run_end_waits_for_in_flight_ops(tmp_path: Path) -> None:
    path = tmp_path / "teardown"
    fds_before = fd_count()
    threads_before = threading.active_count()

    async def main() -> None:
        e = UringEngine(force_async=True)
        fd = await e.open(str(path), os.O_CREAT | os.O_RDWR)
        for i in range(64):
            # never awaited: only the end-of-run teardown waits for these
            await e.submit_write_at(fd, bytearray(bytes([i]) * 16384), i * 16384)
        assert current_driver().in_flight > 0
        # the fd stays open until the run's teardown has waited for the writes
        fds.append(fd)

    fds: list[int] = []
    trio.run(main)
    data = path.read_bytes()
    assert data == b"".join(bytes([i]) * 16384 for i in range(64))
    os.close(fds[0])
    assert fd_count() == fds_before  # the ring fd was closed at the end of the run
    assert threading.active_count() == threads_before


async def test_aclose_mid_run_then_reuse(tmp_path: Path) -> None:
    e = UringEngine(force_async=True)
    fd = await e.open(str(tmp_path / "x"), os.O_CREAT | os.O_RDWR)
    first = current_driver()
    pend = [await e.submit_write_at(fd, b"a" * 4096, i * 4096) for i in range(16)]
    await e.aclose()
    assert first.ring.closed and first.in_flight == 0
    assert [await p.result() for p in pend] == [4096] * 16
    assert await e.write_at(fd, b"b", 0) == 1  # a fresh ring
    assert current_driver() is not first
    await e.close(fd)


def test_one_ring_per_run(tmp_path: Path) -> None:
    drivers: list[UringDriver] = []

    async def main() -> None:
        e = UringEngine()
        await e.close(await e.open(str(tmp_path), os.O_RDONLY))
        drv = current_driver()
        assert current_driver() is drv
        drivers.append(drv)

    trio.run(main)
    trio.run(main)
    assert len(drivers) == 2 and drivers[0] is not drivers[1]
    assert all(d.ring.closed for d in drivers)


_NO_THREADS_CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
import trio
from pageserver.io import UringEngine
from tests.io.test_uring_engine import python_threads_and_tasks as threads_and_tasks

async def main(tmp):
    e = UringEngine()
    await e.close(await e.open(os.path.join(tmp, "warm"), os.O_CREAT | os.O_RDWR))
    count_before, tasks_before = threads_and_tasks()
    seen = []

    async def writer(i):
        fd = await e.open(os.path.join(tmp, f"t{i}"), os.O_CREAT | os.O_RDWR)
        for j in range(64):
            await e.write_at(fd, b"q" * 65536, j * 65536)
            if j % 16 == 0:
                seen.append(threads_and_tasks())
        await e.fsync(fd)
        await e.close(fd)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(writer, i)
    for count, tasks in seen + [threads_and_tasks()]:
        assert count == count_before, (count, count_before)
        assert tasks <= tasks_before, tasks - tasks_before
    assert len(seen) == 16
    await e.aclose()
    print("ok")

trio.run(main, sys.argv[1])
"""


def test_no_python_threads_during_uring_io(tmp_path: Path) -> None:
    """Concurrent uring writes start no thread: no Python thread, no OS task but the
    kernel's ``iou-*`` workers. Run in a fresh interpreter, so that a thread some earlier
    test of this worker process left behind (an object-store client's runtime, a thread
    pool winding down) cannot appear in the count (it did once, as a task named 'python')."""
    import subprocess
    import sys

    require_uring()
    p = subprocess.run(
        [sys.executable, "-c", _NO_THREADS_CHILD, str(tmp_path), str(Path(__file__).resolve().parents[2])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


def test_a_close_where_no_ring_can_be_made_still_closes_the_descriptor(tmp_path: Path) -> None:
    """One context serves two trio runs (the engine's rings belong to runs). A close in
    the second run, which has no ring yet and cannot make one (io_uring_setup needs a
    descriptor: EMFILE at the fd limit), closes the file with a plain close(2); it used to
    raise with the descriptor already dropped from the slot table: leaked for good."""
    import resource

    from pageserver.io import IoContext

    require_engine(TRIO_URING)
    ctx = IoContext(UringEngine(), max_file_descriptors=4, no_sync=True)
    files = []

    async def first_run() -> None:
        vf = await ctx.create(str(tmp_path / "f"))
        await vf.write_all_at(b"x", 0)
        files.append(vf)

    trio.run(first_run)
    fd = next(s.fd for s in ctx.table._slots if s.fd >= 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def second_run() -> None:
        lowest_free = os.open("/dev/null", os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new fd
        try:
            with pytest.raises(OSError):
                os.open("/dev/null", os.O_RDONLY)
            await files[0].close()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        with pytest.raises(OSError) as e:
            os.fstat(fd)
        assert e.value.errno == errno.EBADF
        await ctx.aclose()

    trio.run(second_run)
