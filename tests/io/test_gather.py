"""Gathered writes (``pageserver.io.gather``): the bytes of many pieces of memory written
as one file range, by both engines, through VirtualFile and the buffered writer, with
short writes (more pieces than IOV_MAX), reads of bytes in flight and a full disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pageserver import failpoints
from pageserver.io import BufferedWriter, Gather, IoContext, VirtualFile
from pageserver.io.gather import IOV_MAX
from pageserver.layers.blob_io import MAX_BLOB_LEN, BlobError, gather_blobs, pack_blobs
from tests.helpers.fs import fill, small_tmpfs
from tests.io.test_buffered_writer import _start_failing_once, _start_spy


def pieces_gather(chunks: list[bytes]) -> tuple[Gather, bytes]:
    """A gather of ``chunks`` placed out of order in one array; and their bytes joined."""
    rng = np.random.default_rng(len(chunks))
    order = rng.permutation(len(chunks)).tolist()
    buf = bytearray(b"#")
    at = [0] * len(chunks)
    for i in order:
        at[i] = len(buf)
        buf += chunks[i] + b"!"
    src = np.frombuffer(bytes(buf), np.uint8)
    iov = np.array([[src.ctypes.data + a, len(c)] for a, c in zip(at, chunks, strict=True)], np.uint64)
    return Gather(iov.reshape(-1, 2), (src,)), b"".join(chunks)


@given(
    st.lists(st.integers(0, 40), max_size=30),
    st.integers(0, 2**32 - 1),
    st.integers(0, 1300),
    st.integers(0, 1300),
)
def test_gather_reads_back_and_tails_like_its_bytes(
    sizes: list[int], seed: int, a: int, b: int
) -> None:
    rng = np.random.default_rng(seed)
    chunks = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    g, joined = pieces_gather(chunks)
    assert len(g) == len(joined) and g.tobytes() == joined
    assert g.tail(a).tobytes() == joined[a:]
    assert g[a:b] == joined[a:b]
    if 0 < b <= len(joined):
        assert g.head(b).tobytes() == joined[:b] and len(g.head(b)) == b
        if a < b:
            assert g.tail(a).head(b - a).tobytes() == joined[a:b]
            dst = bytearray(b"\xee" * (b + 3))
            g.copy_into(a, b - a, dst, 3)
            assert dst == b"\xee" * 3 + joined[a:b] + b"\xee" * a
    else:
        with pytest.raises(ValueError):
            g.head(b)


@given(st.lists(st.integers(0, 20_000), min_size=1, max_size=40), st.integers(0, 2**32 - 1))
@example([0, 1, 127, 128, 129, 0], 1)
@example([127] * 3 + [128] * 3, 2)
def test_gather_blobs_are_the_packed_blobs(lengths: list[int], seed: int) -> None:
    """The gathered blobs are byte for byte what pack_blobs packs (headers of 1 and 4
    bytes, empty values, values scattered in the source in another order)."""
    rng = np.random.default_rng(seed)
    values = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    buf = bytearray(b"#" * 3)
    offs = [0] * len(values)
    for i in rng.permutation(len(values)).tolist():
        offs[i] = len(buf)
        buf += values[i] + b"!"
    src = np.frombuffer(bytes(buf), np.uint8)
    o, n = np.array(offs, np.int64), np.array(lengths, np.int64)
    g = gather_blobs(src, o, n)
    assert g.tobytes() == pack_blobs(src, o, n)[0].tobytes()
    assert g.count == len(lengths) + sum(1 for x in lengths if x)  # no empty pieces
    with pytest.raises(IndexError):
        gather_blobs(src, o + len(src), n + 1)


def test_gather_blobs_refuses_what_pack_blobs_refuses() -> None:
    src = np.zeros(10, np.uint8)
    with pytest.raises(BlobError):
        gather_blobs(src, np.zeros(1, np.int64), np.array([MAX_BLOB_LEN + 1], np.int64))
    with pytest.raises(BlobError):
        gather_blobs(src, np.zeros(1, np.int64), np.array([-5], np.int64))


async def test_both_engines_write_a_gather_vectored(io_ctx: IoContext, tmp_path: Path) -> None:
    """The engine writes the pieces where they are: never through the interface's
    fallback, which joins them into one buffer first (the copy gathers exist to avoid)."""

    def joined(self: Gather) -> bytes:
        raise AssertionError("the gather was joined into a buffer to be written")

    g, data = pieces_gather([bytes([i % 251]) * 5000 for i in range(300)])
    vf = await io_ctx.create(str(tmp_path / "v"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Gather, "tobytes", joined)
        await vf.write_all_at(g, 0)
        await (await vf.start_write_all_at(g, len(data))).wait()
    await vf.close()
    assert (tmp_path / "v").read_bytes() == data + data


async def test_a_gather_on_a_really_full_disk_is_kept_and_written_again(engine_kind: str) -> None:
    """A real ENOSPC (a small tmpfs), reported by the kernel for a write in flight: what
    was taken stays readable from memory, and once there is space everything is written
    again at its offset."""
    from pageserver.io import create_engine

    with small_tmpfs("4m") as mnt:
        ctx = IoContext(create_engine(engine_kind), no_sync=True)
        vf = await ctx.create(str(mnt / "f"))
        w = BufferedWriter(vf, 64 * 1024)
        rng = np.random.default_rng(5)
        src = rng.integers(0, 256, 200 * 5007, dtype=np.uint8)
        offs = rng.permutation(200).astype(np.int64) * 5007
        lens = np.full(200, 5000, np.int64)
        filler = mnt / "filler"
        fill(filler)
        os.truncate(filler, filler.stat().st_size - 300 * 1024)  # ~300 KiB left
        model = bytearray()
        err: OSError | None = None
        for k in range(0, 200, 50):
            g = gather_blobs(src, offs[k : k + 50], lens[k : k + 50])
            try:
                assert await w.write_gather(g) == len(model)
            except OSError as e:
                err = e
            model += g.tobytes()
            if err:
                break
        if err is None:
            try:
                await w.wait_written()
            except OSError as e:
                err = e
        assert err is not None and err.errno == 28, err
        assert await w.read_at(0, w.offset) == bytes(model[: w.offset])
        os.unlink(filler)
        await w.wait_written()  # writes what was left unwritten, now that there is space
        assert await w.finish() == len(model)
        await vf.close()
        assert (mnt / "f").read_bytes() == bytes(model)
        await ctx.aclose()


async def test_more_pieces_than_iov_max_are_written_whole(io_ctx: IoContext, tmp_path: Path) -> None:
    """A gather of 3000 pieces: each engine writes IOV_MAX at a time (short writes), and
    VirtualFile writes the rest, synchronously and started (write-behind)."""
    chunks = [bytes([i % 251]) * (1 + i % 7) for i in range(3 * IOV_MAX - 72)]
    g, joined = pieces_gather(chunks)
    vf = await io_ctx.create(str(tmp_path / "a"))
    await vf.write_all_at(g, 5)
    pending = await vf.start_write_all_at(g, 5 + len(joined))
    await pending.wait()
    await vf.close()
    assert (tmp_path / "a").read_bytes() == bytes(5) + joined + joined


@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(0, 200_000), st.integers(0, 255)), max_size=10
    )
)
async def test_gathers_and_appends_match_model(
    engine_kind: str, tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[bool, int, int]]
) -> None:  # fmt: skip
    """``write_gather`` among plain appends: same offsets and file as the joined bytes, and
    every byte readable (from memory while in flight) at every point; the file is written
    in whole buffers only (a multiple of the buffer each, back to back), all but the last
    (SPEC section 4: a layer file's writer writes full buffers only)."""
    from pageserver.io import create_engine

    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    vf = await ctx.create(str(tmp_path_factory.mktemp("g") / "f"))
    buf = 64 * 1024
    w = BufferedWriter(vf, buf)
    issued: list[tuple[int, int]] = []
    mp = pytest.MonkeyPatch()
    mp.setattr(VirtualFile, "start_write_all_at", _start_spy(issued, []))
    model = bytearray()
    keep = []
    for gathered, n, byte in ops:
        chunk = bytes([byte]) * n
        if gathered:
            # Pieces of different bytes: a piece out of place or cut wrong shows.
            parts = [bytes([(byte + i) % 256]) * min(5000, n - 5000 * i) for i in range(-(-n // 5000))]
            g, joined = pieces_gather(parts)
            keep.append(g)
            assert await w.write_gather(g) == len(model)
            model += joined
        else:
            assert await w.write(chunk) == len(model)
            model += chunk
        lo = max(0, len(model) - 150_000)
        assert await w.read_at(lo, len(model) - lo) == bytes(model[lo:])
    assert await w.finish() == len(model)
    mp.undo()
    await vf.close()
    assert Path(vf.path).read_bytes() == bytes(model)
    await ctx.aclose()
    assert [o for o, _ in issued] == [sum(n for _, n in issued[:i]) for i in range(len(issued))]
    assert all(n % buf == 0 for _, n in issued[:-1]), issued


@pytest.mark.parametrize("head", [b"", b"head" * 100])
async def test_a_gather_on_a_full_disk_is_kept_and_written_again(
    io_ctx: IoContext, tmp_path: Path, head: bytes
) -> None:
    """The gather's write fails (ENOSPC): its bytes stay readable from the gather, and it
    is written again at its offset once there is space; nothing is lost or reordered.
    (With bytes buffered before it, their write is the one that fails first.)"""
    vf = await io_ctx.create(str(tmp_path / "f"))
    w = BufferedWriter(vf, 64 * 1024)
    await w.write(head)
    g, joined = pieces_gather([bytes([i]) * 3000 for i in range(200)])
    failpoints.configure({"virtual-file-write": "return(28)"})
    with pytest.raises(OSError) as ei:
        await w.write_gather(g)
    assert ei.value.errno == 28 and w.broken is None
    if not head:
        assert w.offset == len(joined)  # taken whole, kept as an unwritten write
    logical = head + joined[: w.offset - len(head)]
    assert await w.read_at(0, w.offset) == logical
    failpoints.clear()
    if w.offset == len(head):  # the head's partial buffer failed first: nothing taken
        assert await w.write_gather(g) == len(head)
    logical = head + joined
    assert await w.write(b"tail") == len(logical)
    assert await w.finish() == len(logical) + 4
    await vf.close()
    assert (tmp_path / "f").read_bytes() == logical + b"tail"


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02])
async def test_a_flush_of_gathers_cancelled_midway_leaves_nothing(
    io_ctx: IoContext, tmp_path: Path, delay: float
) -> None:
    """Cancelled while its gathers are in flight, a flush of 8 KiB values waits for the
    kernel to be done with the mapped file, removes its temp file and leaves the frozen
    layer whole: a second flush writes the same layer as one never interrupted."""
    import random

    import trio

    from pageserver.layers.key import TenantId, TimelineId
    from tests.helpers.tenant import frozen_layer, image

    tid = TenantId.parse("0123456789abcdef0123456789abcdef")
    tlid = TimelineId.parse("fedcba9876543210fedcba9876543210")
    layer = await frozen_layer(
        io_ctx, str(tmp_path), random.Random(3), 6, 500,
        lambda rnd: (rnd.randrange(3000), image(rnd.randbytes(8192))),
    )  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    try:
        with trio.move_on_after(delay) as scope:
            await io_ctx.run_job(layer.write_delta_layer, str(out), tid, tlid)
        if scope.cancelled_caught:
            assert list(out.iterdir()) == []
        again = tmp_path / "again"
        again.mkdir()
        info = await io_ctx.run_job(layer.write_delta_layer, str(again), tid, tlid)
        if not scope.cancelled_caught:
            assert (out / Path(info.path).name).read_bytes() == Path(info.path).read_bytes()
        assert info.num_entries == 3000
    finally:
        await layer.delete()


@given(sizes=st.lists(st.integers(1, 300_000), min_size=1, max_size=12), seed=st.integers(0, 2**32 - 1))
async def test_a_run_of_gathers_copies_only_its_last_tail(
    engine_kind: str, tmp_path_factory: pytest.TempPathFactory, sizes: list[int], seed: int
) -> None:
    """Back-to-back gathers into an empty buffer: whole buffers only, straight from the
    gathers, each one's tail held for the next; the process copies only the last tail
    (less than a buffer), when the caller waits for the writes. The file is the bytes."""
    from pageserver.io import create_engine

    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    vf = await ctx.create(str(tmp_path_factory.mktemp("run") / "f"))
    buf = 64 * 1024
    w = BufferedWriter(vf, buf)
    rng = np.random.default_rng(seed)
    copied: list[int] = []
    real_copy = Gather.copy_into
    issued: list[tuple[int, int]] = []
    model = bytearray()
    keep = []
    with pytest.MonkeyPatch.context() as mp:

        def counting(self: Gather, start: int, n: int, dst: bytearray, at: int) -> None:
            copied.append(n)
            real_copy(self, start, n, dst, at)

        mp.setattr(Gather, "copy_into", counting)
        mp.setattr(VirtualFile, "start_write_all_at", _start_spy(issued, []))
        for size in sizes:
            parts = [rng.integers(0, 256, min(7000, size - i), dtype=np.uint8).tobytes() for i in range(0, size, 7000)]
            g, joined = pieces_gather(parts)
            keep.append(g)
            assert await w.write_gather(g) == len(model)
            model += joined
            assert w.offset == len(model)
        assert sum(copied) == 0
        await w.wait_written()
        assert sum(copied) == len(model) % buf
        assert await w.read_at(0, len(model)) == bytes(model)
        assert await w.finish() == len(model)
    await vf.close()
    assert Path(vf.path).read_bytes() == bytes(model)
    await ctx.aclose()
    assert [o for o, _ in issued] == [sum(n for _, n in issued[:i]) for i in range(len(issued))]
    assert all(n % buf == 0 for _, n in issued[:-1]), issued


@pytest.mark.parametrize("piece", [10, 100])
async def test_gathers_of_more_than_iov_max_pieces_still_write_whole_buffers(
    engine_kind: str, tmp_path: Path, piece: int
) -> None:
    """One vectored write takes at most IOV_MAX pieces: more would be a short write,
    continued at an offset that is no buffer boundary. So a gather of many small pieces
    goes out as whole buffers' worth of at most IOV_MAX pieces each (100 B pieces), or
    copied a buffer at a time where a buffer needs more pieces than that (10 B)."""
    from pageserver.io import StdFsEngine, UringEngine, create_engine
    from pageserver.io.gather import IOV_MAX

    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    vf = await ctx.create(str(tmp_path / "f"))
    buf = 64 * 1024
    w = BufferedWriter(vf, buf)
    issued: list[tuple[int, int]] = []
    vectored: list[tuple[int, int]] = []  # (offset, pieces) of each vectored write
    model = bytearray()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VirtualFile, "start_write_all_at", _start_spy(issued, []))
        for cls, name in ((StdFsEngine, "write_gather_at"), (UringEngine, "_push_writev")):
            real = getattr(cls, name)

            async def spy(self: Any, fd: int, g: Gather, offset: int, real: Any = real) -> Any:
                vectored.append((offset, g.count))
                return await real(self, fd, g, offset)

            mp.setattr(cls, name, spy)
        for k in range(3):
            g, joined = pieces_gather([bytes([(k * 7 + i) % 256]) * piece for i in range(5000)])
            assert await w.write_gather(g) == len(model)
            model += joined
        assert await w.finish() == len(model)
    await vf.close()
    assert (tmp_path / "f").read_bytes() == bytes(model)
    await ctx.aclose()
    assert [o for o, _ in issued] == [sum(n for _, n in issued[:i]) for i in range(len(issued))]
    assert all(n % buf == 0 for _, n in issued[:-1]), issued
    # Each vectored write is whole: no short write continued mid-buffer. (Pieces of 10 B:
    # 1024 of them are less than a buffer, so everything is copied, nothing vectored.)
    assert bool(vectored) == (piece == 100)
    assert all(c <= IOV_MAX and o % buf == 0 for o, c in vectored), vectored


async def test_a_gather_left_unwritten_is_written_again_in_whole_buffers(
    engine_kind: str, tmp_path: Path
) -> None:
    """A write failing to start halfway through a gather of many pieces: the rest of it is
    kept as it would have been written (whole buffers of at most IOV_MAX pieces), so the
    writes done again later are whole buffers too, never a vectored write cut short
    mid-buffer (a review finding: one entry of 1967 pieces went out in two short writes)."""

    from pageserver.io import create_engine
    from pageserver.io.gather import IOV_MAX

    engine = create_engine(engine_kind)
    vectored: list[tuple[int, int]] = []  # (offset, bytes of the first IOV_MAX pieces)
    for name in ("write_gather_at", "submit_write_gather_at"):
        real = getattr(engine, name)

        async def spy(fd: int, g: Gather, offset: int, real: Any = real) -> Any:
            vectored.append((offset, g.bytes_in(IOV_MAX)))
            return await real(fd, g, offset)

        setattr(engine, name, spy)
    ctx = IoContext(engine, no_sync=True)
    vf = await ctx.create(str(tmp_path / "f"))
    buf = 64 * 1024
    w = BufferedWriter(vf, buf)
    parts = [bytes([i % 251]) * 100 for i in range(3000)]
    g, joined = pieces_gather(parts)
    start, fail = _start_failing_once()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VirtualFile, "start_write_all_at", start)
        await w.write(b"x")
        fail[0] = True
        with pytest.raises(OSError):
            await w.write_gather(g)
        assert w.offset == 1 + len(joined)  # taken whole
        await w.write(b"y")  # writes what was left unwritten first
        assert await w.finish() == 2 + len(joined)
    await vf.close()
    assert (tmp_path / "f").read_bytes() == b"x" + joined + b"y"
    await ctx.aclose()
    assert vectored and all(o % buf == 0 and n % buf == 0 for o, n in vectored), vectored


async def test_a_gather_cancelled_halfway_makes_the_writer_unusable(
    engine_kind: str, tmp_path: Path
) -> None:
    """Cancelled between the writes of one gather (a cancelled job): part of it may be
    taken, so the writer refuses every later call rather than hand out offsets that are
    no longer where the bytes are (a review finding: the held tail was lost and the next
    write got an offset inside the earlier gather)."""
    from pageserver.io import JobCancelled, create_engine

    ctx = IoContext(create_engine(engine_kind), no_sync=True)
    vf = await ctx.create(str(tmp_path / "f"))
    w = BufferedWriter(vf, 64 * 1024)
    g1, _ = pieces_gather([bytes([i]) * 1000 for i in range(100)])  # 100,000 B: a tail held
    await w.write_gather(g1)
    calls = [0]
    original = VirtualFile.start_write_all_at

    async def start(self: VirtualFile, data: Any, offset: int) -> Any:
        calls[0] += 1
        if calls[0] == 1:  # the write of the held tail and the next gather's head
            raise JobCancelled("injected: the caller of this io job was cancelled")
        return await original(self, data, offset)

    g2, _ = pieces_gather([bytes([i % 256]) * 1000 for i in range(300)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VirtualFile, "start_write_all_at", start)
        with pytest.raises(JobCancelled):
            await w.write_gather(g2)
    assert isinstance(w.broken, JobCancelled)
    with pytest.raises(OSError, match="unusable"):
        await w.write(b"more")
    await w.abandon()
    await vf.close()
    await ctx.aclose()
