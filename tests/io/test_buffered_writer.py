"""The buffered append writer: full buffers only, offsets, reads of buffered bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pageserver import failpoints
from pageserver.io import BufferedWriter, IoContext, VirtualFile

BUF = 64 * 1024


@pytest.fixture
def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Record (path, offset, length) of every write the writer issues, on any engine."""
    issued: list[tuple[str, int, int]] = []
    original = VirtualFile.start_write_all_at

    async def spy(self: VirtualFile, data: bytes | bytearray | memoryview, offset: int):  # type: ignore[no-untyped-def]
        issued.append((self.path, offset, len(data)))
        return await original(self, data, offset)

    monkeypatch.setattr(VirtualFile, "start_write_all_at", spy)
    return issued


async def test_full_buffers_only_except_last(
    io_ctx: IoContext, tmp_path: Path, record_writes: list[tuple[str, int, int]]
) -> None:
    path = str(tmp_path / "bw")
    vf = await io_ctx.create(path)
    w = BufferedWriter(vf, BUF)
    model = bytearray()
    sizes = [1, 100, 5000, 70_000, 3, 200_000, 17, 65_536, 9]
    for i, n in enumerate(sizes * 5):
        chunk = bytes([i % 251]) * n
        off = await w.write(chunk)
        assert off == len(model)
        model += chunk
    total = await w.finish()
    await vf.close()
    assert total == len(model)
    assert Path(path).read_bytes() == bytes(model)
    writes = [r for r in record_writes if r[0] == path]
    assert [n for _, _, n in writes[:-1]] == [BUF] * (len(writes) - 1)
    assert 0 < writes[-1][2] <= BUF
    assert [o for _, o, _ in writes] == [k * BUF for k in range(len(writes))]


async def test_start_offset_and_padding(io_ctx: IoContext, tmp_path: Path) -> None:
    path = str(tmp_path / "layer")
    vf = await io_ctx.create(path)
    w = BufferedWriter(vf, BUF, start_offset=8192)
    assert await w.write(b"abc") == 8192
    await w.pad_to(8192)
    assert w.offset == 16384
    assert await w.finish() == 16384
    await vf.write_all_at(b"S" * 10, 0)
    await vf.close()
    data = Path(path).read_bytes()
    assert data[8192:8195] == b"abc" and data[8195:16384] == bytes(8189)


async def test_read_back_buffered_and_flushed(io_ctx: IoContext, tmp_path: Path) -> None:
    vf = await io_ctx.create(str(tmp_path / "eph"))
    w = BufferedWriter(vf, BUF)
    model = bytearray()
    for i in range(3000):
        chunk = bytes((i + k) % 256 for k in range(1 + i % 97))
        off = await w.write(chunk)
        model += chunk
        # A fresh append reads back from the buffer, an old one from disk/in-flight.
        assert await w.read_at(off, len(chunk)) == chunk
        if i % 50 == 0:
            lo = (i * 7919) % len(model)
            hi = min(len(model), lo + 150_000)
            assert await w.read_at(lo, hi - lo) == bytes(model[lo:hi])
    assert await w.read_at(0, len(model)) == bytes(model)
    with pytest.raises(EOFError):
        await w.read_at(len(model) - 1, 2)
    await w.finish()
    await vf.close()


@given(chunks=st.lists(st.binary(min_size=0, max_size=150_000), max_size=12))
async def test_random_appends_match_model(
    engine_kind: str, tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes]
) -> None:
    from pageserver.io import create_engine

    for kind in (engine_kind,):
        ctx = IoContext(create_engine(kind), no_sync=True)
        path = str(tmp_path_factory.mktemp("bw") / "f")
        vf = await ctx.create(path)
        w = BufferedWriter(vf, BUF)
        model = bytearray()
        for c in chunks:
            assert await w.write(c) == len(model)
            model += c
        assert await w.finish() == len(model)
        await vf.close()
        assert Path(path).read_bytes() == bytes(model)
        await ctx.aclose()


async def test_buffer_size_minimum(io_ctx: IoContext, tmp_path: Path) -> None:
    vf = await io_ctx.create(str(tmp_path / "x"))
    with pytest.raises(ValueError):
        BufferedWriter(vf, 4096)
    await vf.close()


async def test_full_disk_keeps_appended_bytes_and_resumes(io_ctx: IoContext, tmp_path: Path) -> None:
    """A write error the process survives (ENOSPC) fails the call that hit it; every byte
    appended before stays readable (from memory), and once writes succeed again the file
    holds the whole logical content, the failed buffers written again at their offsets."""
    path = str(tmp_path / "bw")
    vf = await io_ctx.create(path)
    w = BufferedWriter(vf, BUF)
    logical = bytearray()
    a = bytes(range(256)) * 800  # 200 KiB: three full buffers written
    assert await w.write(a) == 0
    logical += a
    failpoints.configure({"virtual-file-write": "return(28)"})
    b = b"\x07" * (5 * BUF)
    for _ in range(3):
        with pytest.raises(OSError) as ei:
            await w.write(b)
        assert ei.value.errno == 28
        assert w.broken is None  # not poisoned: a full disk is survivable
    # Whatever part of the failed calls went in is part of the logical file; nothing
    # before it was lost, and every byte reads back (from memory where not on disk).
    logical += b"\x07" * (w.offset - len(logical))
    assert await w.read_at(0, w.offset) == bytes(logical)
    failpoints.clear()
    c = b"after" * 30_000
    off_c = await w.write(c)
    assert off_c == len(logical)
    logical += c
    assert await w.finish() == len(logical)
    with open(path, "rb") as f:
        assert f.read() == bytes(logical)


def _start_spy(issued: list[tuple[int, int]], sources: list[object]) -> Any:
    """A ``VirtualFile.start_write_all_at`` that notes (offset, length) of each write in
    ``issued`` and, in ``sources``, the object its memory belongs to."""
    original = VirtualFile.start_write_all_at

    async def spy(self: VirtualFile, data: bytes | bytearray | memoryview, offset: int) -> Any:
        issued.append((offset, len(data)))
        sources.append(data.obj if isinstance(data, memoryview) else data)
        return await original(self, data, offset)

    return spy


def _start_failing_once() -> tuple[Any, list[bool]]:
    """A ``VirtualFile.start_write_all_at`` whose next call fails to start (ENOSPC) once
    the returned flag is set (``flag[0] = True``), and the flag."""
    import errno

    original = VirtualFile.start_write_all_at
    fail = [False]

    async def start(self: VirtualFile, data: Any, offset: int) -> Any:
        if fail[0]:
            fail[0] = False
            raise OSError(errno.ENOSPC, "injected: no space")
        return await original(self, data, offset)

    return start, fail


async def _finish_as_model(
    w: BufferedWriter, vf: VirtualFile, model: bytearray, issued: list[tuple[int, int]]
) -> None:
    """Finish and close: the file holds ``model``, written by back-to-back writes."""
    assert await w.finish() == len(model)
    await vf.close()
    assert Path(vf.path).read_bytes() == bytes(model)
    assert [o for o, _ in issued] == [sum(n for _, n in issued[:i]) for i in range(len(issued))]


async def _reads_back(w: BufferedWriter, model: bytearray) -> None:
    """The last 300 KB appended read back as appended (from memory or from the file)."""
    lo = max(0, len(model) - 300_000)
    assert await w.read_at(lo, len(model) - lo) == bytes(model[lo:])


@given(
    chunks=st.lists(
        st.tuples(st.integers(0, 400_000), st.booleans(), st.integers(0, 255)), max_size=12
    )
)
async def test_borrowed_appends_match_model(
    engine_kind: str, tmp_path_factory: pytest.TempPathFactory,
    chunks: list[tuple[int, bool, int]],
) -> None:  # fmt: skip
    """``write(data, borrow=True)`` writes whole buffers straight from ``data``: same file,
    same offsets, reads of bytes in flight served from the borrowed data; writes stay
    whole buffers, one per borrowed run, contiguous."""
    from pageserver.io import create_engine

    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    path = str(tmp_path_factory.mktemp("bw") / "f")
    vf = await ctx.create(path)
    issued: list[tuple[int, int]] = []
    spy = _start_spy(issued, [])
    w = BufferedWriter(vf, BUF)
    model = bytearray()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VirtualFile, "start_write_all_at", spy)
        for n, borrow, fill in chunks:
            c = bytes([fill]) * n
            assert await w.write(c, borrow=borrow) == len(model)
            model += c
            await _reads_back(w, model)
        await _finish_as_model(w, vf, model, issued)
    assert all(n % BUF == 0 for _, n in issued[:-1])
    await ctx.aclose()


@given(
    chunks=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 400_000), st.sampled_from([BUF - 1, BUF, BUF + 1])),
            st.booleans(),
            st.integers(0, 255),
        ),
        max_size=12,
    )
)
async def test_borrowed_appends_without_whole_buffers_are_written_whole(
    engine_kind: str, tmp_path_factory: pytest.TempPathFactory,
    chunks: list[tuple[int, bool, int]],
) -> None:  # fmt: skip
    """``whole_buffers=False`` (the ephemeral file): a borrowed append of a buffer or more
    is one write of exactly its bytes at its offset, after a write of what the current
    buffer held (nothing copied, nothing cut); the rest as with whole buffers. Same file,
    same offsets, reads of bytes in flight served from memory."""
    from pageserver.io import create_engine

    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    path = str(tmp_path_factory.mktemp("bw") / "f")
    vf = await ctx.create(path)
    issued: list[tuple[int, int]] = []
    sources: list[object] = []  # what each write's memory belongs to
    spy = _start_spy(issued, sources)

    w = BufferedWriter(vf, BUF, whole_buffers=False)
    model = bytearray()
    whole: list[tuple[int, int]] = []  # (offset, length) of the borrowed appends >= BUF
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VirtualFile, "start_write_all_at", spy)
        for n, borrow, fill in chunks:
            c = bytes([fill]) * n
            before = len(issued)
            assert await w.write(c, borrow=borrow) == len(model)
            if borrow and n >= BUF:
                whole.append((len(model), n))
                # The partial buffer (if any), then the append itself, as it is: written
                # from the caller's own bytes, not a copy.
                assert issued[-1] == (len(model), n)
                assert sources[-1] is c
                assert len(issued) - before <= 2
            model += c
            await _reads_back(w, model)
        await _finish_as_model(w, vf, model, issued)
    assert all(append in issued for append in whole)
    # Every other write is a whole buffer, or one cut short by a whole append or the end.
    cuts = {o for o, _ in whole} | {len(model)}
    assert all(n == BUF or o + n in cuts for o, n in issued if (o, n) not in whole)
    await ctx.aclose()


@pytest.mark.parametrize("head", [b"head" * 1000, b""])
@pytest.mark.parametrize("whole_buffers", [True, False])
async def test_borrowed_write_on_a_full_disk_is_kept_and_written_again(
    io_ctx: IoContext, tmp_path: Path, whole_buffers: bool, head: bytes
) -> None:
    """A failing borrowed write: the writer keeps what it took (in memory, read back from
    there) and writes it again once there is space. With nothing buffered before it, the
    borrowed write itself is the one that fails."""
    path = str(tmp_path / "bw")
    vf = await io_ctx.create(path)
    w = BufferedWriter(vf, BUF, whole_buffers=whole_buffers)
    logical = bytearray(head)
    await w.write(bytes(logical))
    failpoints.configure({"virtual-file-write": "return(28)"})
    big = bytes(range(256)) * (4 * BUF // 256 + 3)
    with pytest.raises(OSError) as ei:
        await w.write(big, borrow=True)
    assert ei.value.errno == 28 and w.broken is None
    if not head and not whole_buffers:
        assert w.offset == len(big)  # all of it taken, as one unwritten write
    logical += big[: w.offset - len(logical)]
    assert await w.read_at(0, w.offset) == bytes(logical)
    failpoints.clear()
    tail = b"tail" * 50_000
    assert await w.write(tail, borrow=True) == len(logical)
    logical += tail
    assert await w.finish() == len(logical)
    await vf.close()
    assert Path(path).read_bytes() == bytes(logical)


@pytest.mark.parametrize("full_disk", [False, True])
async def test_large_borrowed_writes_start_through_run_job(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_disk: bool
) -> None:  # fmt: skip
    """Given ``run_job``, a borrowed write of at least ``OFFLOAD_MIN_BYTES`` is started
    through it (under std-fs: in the job's worker thread, not on the loop); smaller writes
    are not. Offsets, bytes and the full-disk behaviour (kept, written again) are as without."""
    import threading

    from pageserver.io.buffered_writer import OFFLOAD_MIN_BYTES

    loop_thread = threading.get_ident()
    started: list[tuple[int, bool]] = []  # (length, on the loop's thread)
    original = VirtualFile.start_write_all_at

    async def spy(self: VirtualFile, data: bytes | bytearray | memoryview, offset: int):  # type: ignore[no-untyped-def]
        started.append((len(data), threading.get_ident() == loop_thread))
        # The 4th write: two of ``small``, then ``big``'s top-up buffer, then its run.
        if full_disk and len(data) >= OFFLOAD_MIN_BYTES and len(started) == 4:
            raise OSError(28, "No space left on device (injected)")
        return await original(self, data, offset)

    monkeypatch.setattr(VirtualFile, "start_write_all_at", spy)
    jobs = 0

    async def run_job(fn, *args):  # type: ignore[no-untyped-def]
        nonlocal jobs
        jobs += 1
        return await io_ctx.run_job(fn, *args)

    path = str(tmp_path / "bw")
    vf = await io_ctx.create(path)
    w = BufferedWriter(vf, BUF, run_job=run_job)
    logical = bytearray(b"head" * 1000)
    await w.write(bytes(logical), borrow=True)
    small = bytes(range(256)) * (2 * BUF // 256)  # one topped-up buffer + one borrowed run
    await w.write(small, borrow=True)
    logical += small
    assert jobs == 0
    big = bytes(range(256)) * (OFFLOAD_MIN_BYTES // 256 + 3 * BUF // 256 + 5)
    if full_disk:
        # The top-up buffer is written, the borrowed run fails (in the job) and is kept.
        with pytest.raises(OSError) as ei:
            await w.write(big, borrow=True)
        assert ei.value.errno == 28 and w.broken is None
        logical += big[: w.offset - len(logical)]
        assert await w.read_at(0, w.offset) == bytes(logical)
    else:
        assert await w.write(big, borrow=True) == len(logical)
        logical += big
    assert jobs == 1
    big_starts = [on_loop for n, on_loop in started if n >= OFFLOAD_MIN_BYTES]
    assert len(big_starts) == 1 and all(n >= OFFLOAD_MIN_BYTES for n, on in started if not on)
    assert big_starts[0] is (not io_ctx.engine.runs_jobs_in_thread)
    tail = b"tail" * 50_000
    assert await w.write(tail, borrow=True) == len(logical)
    logical += tail
    assert await w.finish() == len(logical)
    await vf.close()
    assert Path(path).read_bytes() == bytes(logical)


async def test_a_large_unwritten_write_is_written_again_through_run_job(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large borrowed write that failed (full disk) is written again the way it was
    first started: through ``run_job`` (under std-fs in the job's worker thread, not on
    the loop, where a frame-sized pwrite would stall every connection)."""
    import threading

    from pageserver.io.buffered_writer import OFFLOAD_MIN_BYTES

    loop_thread = threading.get_ident()
    rewrites: list[tuple[int, bool]] = []  # (length, on the loop's thread)
    original = VirtualFile.write_all_at

    async def spy(self: VirtualFile, data: Any, offset: int) -> None:
        rewrites.append((len(data), threading.get_ident() == loop_thread))
        await original(self, data, offset)

    jobs = 0

    async def run_job(fn, *args):  # type: ignore[no-untyped-def]
        nonlocal jobs
        jobs += 1
        return await io_ctx.run_job(fn, *args)

    vf = await io_ctx.create(str(tmp_path / "bw"))
    w = BufferedWriter(vf, BUF, run_job=run_job, whole_buffers=False)
    big = bytes(range(256)) * (OFFLOAD_MIN_BYTES // 256 + 7)
    failpoints.configure({"virtual-file-write": "return(28)"})
    with pytest.raises(OSError):
        await w.write(big, borrow=True)
    failpoints.clear()
    assert w.offset == len(big)  # taken, kept as unwritten
    # Still full: the rewrite fails (through run_job too) and the write stays kept.
    jobs = 0
    failpoints.configure({"virtual-file-write": "return(28)"})
    with pytest.raises(OSError) as ei:
        await w.write(b"tail")
    failpoints.clear()
    assert ei.value.errno == 28 and w.broken is None and jobs == 1
    assert await w.read_at(0, len(big)) == big
    jobs = 0
    monkeypatch.setattr(VirtualFile, "write_all_at", spy)
    await w.write(b"tail")  # writes the kept one again first
    assert rewrites == [(len(big), not io_ctx.engine.runs_jobs_in_thread)] and jobs == 1
    assert await w.finish() == len(big) + 4
    await vf.close()
    assert (tmp_path / "bw").read_bytes() == big + b"tail"


async def test_a_write_done_again_behind_one_in_flight_reads_back(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer whose write failed to start (kept unwritten) is written again by the next
    append while an older write may still be in flight (trio-uring's write-behind): its
    bytes are then on disk, in neither list, and read back from the file (they used to be
    read as zeros: a review finding)."""
    from pageserver.io import create_engine

    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    vf = await ctx.create(str(tmp_path / "f"))
    start, fail = _start_failing_once()
    monkeypatch.setattr(VirtualFile, "start_write_all_at", start)
    w = BufferedWriter(vf, BUF)
    a, b, c = b"A" * BUF, b"B" * BUF, b"C" * 10
    await w.write(a)
    fail[0] = True
    with pytest.raises(OSError):
        await w.write(b)
    await w.write(c)  # writes B again first
    assert await w.read_at(0, w.offset) == a + b + c
    assert await w.read_at(BUF, BUF) == b
    assert await w.finish() == 2 * BUF + 10
    await vf.close()
    assert (tmp_path / "f").read_bytes() == a + b + c
    await ctx.aclose()
