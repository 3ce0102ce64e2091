"""Early writeback of files that will be fsync'd: ``sync_file_range(SYNC_FILE_RANGE_WRITE)``.

Observed, not assumed: the operation reaches the kernel on both engines (its results on a
real file, a pipe and a closed fd; under std-fs the syscall in strace, from the job's
worker thread; and, on a loop-mounted ext4 through ``/proc/kpageflags``, the hinted pages are
no longer dirty while those of an unhinted file still are). The buffered writer issues it for every
completed 8 MiB range once that range is on disk, only with ``will_fsync`` and never under
``no_sync`` or for the ephemeral file; its errors never fail a write or a layer, and the
layer bytes do not change.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import re
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from pageserver.io import (
    TRIO_URING,
    BufferedWriter,
    IoContext,
    IoEngine,
    PendingIo,
    StdFsEngine,
    UringEngine,
    VirtualFile,
    create_engine,
)
from pageserver.io.buffered_writer import WRITEBACK_BYTES
from pageserver.layers import writer as layer_writer
from pageserver.layers.delta_layer import DeltaLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.layers.value import Image, encode_value
from pageserver.tenant.ephemeral_file import EphemeralFile
from tests.helpers.fs import small_ext4
from tests.io._strace import strace_script

MIB = 1 << 20
LAYER_BUF = 256 * 1024
W = WRITEBACK_BYTES


def make_ctx(kind: str, *, no_sync: bool, engine: IoEngine | None = None) -> IoContext:
    engine = engine if engine is not None else create_engine(kind)
    assert engine.kind == kind
    return IoContext(engine, max_file_descriptors=16, no_sync=no_sync)


async def writeback_result(engine: IoEngine, fd: int, offset: int, nbytes: int) -> int:
    """Start the writeback and wait for its result (std-fs raises at the start, trio-uring
    from ``result()``: both surface here)."""
    return await (await engine.submit_writeback(fd, offset, nbytes)).result()


@pytest.fixture
def hints(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Record (path, offset, nbytes) of every writeback the writer starts."""
    issued: list[tuple[str, int, int]] = []
    original = VirtualFile.start_writeback

    async def spy(self: VirtualFile, offset: int, nbytes: int) -> None:
        issued.append((self.path, offset, nbytes))
        return await original(self, offset, nbytes)

    monkeypatch.setattr(VirtualFile, "start_writeback", spy)
    return issued


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (offset, nbytes) of every ``submit_writeback`` reaching either engine."""
    calls: list[tuple[int, int]] = []

    def make_spy(
        orig: Callable[[IoEngine, int, int, int], Awaitable[PendingIo]],
    ) -> Callable[[IoEngine, int, int, int], Awaitable[PendingIo]]:
        async def spy(self: IoEngine, fd: int, offset: int, nbytes: int) -> PendingIo:
            calls.append((offset, nbytes))
            return await orig(self, fd, offset, nbytes)

        return spy

    classes: tuple[type[IoEngine], ...] = (StdFsEngine, UringEngine)
    for cls in classes:
        monkeypatch.setattr(cls, "submit_writeback", make_spy(cls.submit_writeback))
    return calls


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ from page to page (a misplaced range would show)."""
    block = bytes((i * 7 + seed) % 251 for i in range(8192))
    return (block * (n // 8192 + 1))[:n]


def round_up(n: int, page: int = mmap.PAGESIZE) -> int:
    return -(-n // page) * page


def expected_ranges(
    start: int, completed: int, buf: int = LAYER_BUF, page: int = mmap.PAGESIZE
) -> list[tuple[int, int]]:
    """The hints of a writer appending from ``start`` in whole buffers, of which the
    first ``completed`` are written: from ``start`` rounded up to a page (bytes below it
    belong to a page the owner writes later), a range each time the page-aligned written
    end is 8 MiB past the last one."""
    frm = round_up(start, page)
    out = []
    for n in range(1, completed + 1):
        end = (start + n * buf) // page * page
        if end - frm >= W:
            out.append((frm, end - frm))
            frm = end
    return out


# -- the engine operation -----------------------------------------------------------------


async def test_writeback_op_reaches_the_kernel(engine_kind: str, tmp_path: Path) -> None:
    """0 on a regular file (also with ``nbytes`` 0: to the end); ``ESPIPE`` on a pipe, which
    is sync_file_range's own answer (a write to a pipe succeeds, an fsync says EINVAL); and
    ``EBADF`` on a closed descriptor. Under trio-uring these are CQE results."""
    engine = create_engine(engine_kind)
    try:
        fd = await engine.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
        assert await engine.write_at(fd, pattern(MIB), 0) == MIB
        assert await writeback_result(engine, fd, 0, MIB) == 0
        assert await writeback_result(engine, fd, 4096, 0) == 0
        await engine.close(fd)
        r, w = os.pipe()
        try:
            with pytest.raises(OSError) as e:
                await writeback_result(engine, w, 0, 4096)
            assert e.value.errno == errno.ESPIPE
        finally:
            os.close(r)
            os.close(w)
        closed = os.open(str(tmp_path / "f"), os.O_RDONLY)
        os.close(closed)
        with pytest.raises(OSError) as e:
            await writeback_result(engine, closed, 0, 4096)
        assert e.value.errno == errno.EBADF
    finally:
        await engine.aclose()


def _page_states(path: str, length: int) -> tuple[int, int]:
    """(pages dirty or under writeback, pages) of the file's first ``length`` bytes, from
    the kernel's own page flags: the file is mapped (reading a page does not dirty it),
    ``/proc/self/pagemap`` gives each page's frame, ``/proc/kpageflags`` its flags."""
    page = mmap.PAGESIZE
    n = length // page
    kpf_dirty, kpf_writeback = 1 << 4, 1 << 8
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            base = ctypes.addressof(anchor)
            for i in range(n):
                mm[i * page]  # fault the page in, read-only
            with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
                pm.seek(base // page * 8)
                entries = struct.unpack(f"{n}Q", pm.read(8 * n))
                busy = 0
                for entry in entries:
                    pfn = entry & ((1 << 55) - 1)
                    assert entry >> 63 and pfn, "page not present, or frames hidden from us"
                    kf.seek(pfn * 8)
                    (flags,) = struct.unpack("Q", kf.read(8))
                    busy += bool(flags & (kpf_dirty | kpf_writeback))
        finally:
            del anchor
            mm.close()
    finally:
        os.close(fd)
    return busy, n


#: sync_file_range flags (linux/fs.h).
SFR_WAIT_BEFORE, SFR_WRITE, SFR_WAIT_AFTER = 1, 2, 4


def _sync_file_range(path: str, nbytes: int, flags: int) -> None:
    """``sync_file_range`` of the first ``nbytes`` of ``path`` on a fresh descriptor."""
    libc = ctypes.CDLL(None, use_errno=True)
    sfr = libc.sync_file_range
    sfr.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    sfr.restype = ctypes.c_int
    fd = os.open(path, os.O_RDONLY)
    try:
        if sfr(fd, 0, nbytes, flags) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


#: Attempts of :func:`test_hinted_pages_are_written_back` before it gives up: a ``sync``
#: elsewhere on the machine (another test, the flusher) may write the control file back
#: in the middle of one, which then proves nothing.
HINT_ATTEMPTS = 3


@pytest.fixture
def ext4_dir() -> Iterator[Path]:
    """A directory on a fresh loop-mounted ext4 whose page flags show writeback (checked
    on a probe file: written, it is dirty; after ``sync_file_range(WRITE | WAIT_BEFORE |
    WAIT_AFTER)`` it is clean). Not the test's own directory: on tmpfs there is no
    writeback, and on overlayfs the call reaches the overlay's empty mapping, not the real
    file's pages. Fails (never skips) where the mount or ``/proc/kpageflags`` is refused:
    the tests run as root."""
    assert os.access("/proc/kpageflags", os.R_OK), (
        "/proc/kpageflags is not readable (tests run as root)"
    )
    with small_ext4(128) as mnt:
        probe = str(mnt / "probe")
        with open(probe, "wb") as f:
            f.write(pattern(MIB))
        before = _page_states(probe, MIB)
        _sync_file_range(probe, MIB, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER)
        after = _page_states(probe, MIB)
        os.unlink(probe)
        assert before[0] > 0 and after[0] == 0, (
            "the page flags show no writeback for sync_file_range on a loop ext4 (dirty pages"
            f" of a probe before/after WRITE|WAIT: {before[0]}/{after[0]} of {after[1]})"
        )
        yield mnt


async def test_hinted_pages_are_written_back(engine_kind: str, ext4_dir: Path) -> None:
    """The observable effect, without waiting for anything by the clock: once the writer
    is done and the file closed (which waits for the hints' completions), the hinted
    ranges are clean after ``sync_file_range(SYNC_FILE_RANGE_WAIT_BEFORE)`` -- that waits
    for writeback already under way and starts none -- while the same bytes written
    without hints are still dirty. On a loop ext4 (``ext4_dir``); tried again, up to
    :data:`HINT_ATTEMPTS` times, when something else wrote the unhinted control back."""
    for attempt in range(HINT_ATTEMPTS):
        hinted_busy, control_busy, total = await _hinted_and_control(
            engine_kind, ext4_dir / str(attempt)
        )
        if control_busy >= total // 2:
            break
        # Something else (the flusher: dirty memory above the background threshold, a
        # sync) wrote back too, and a clean hinted file would prove nothing.
    else:
        pytest.fail(
            f"the unhinted file was written back anyway in {HINT_ATTEMPTS} attempts"
            f" ({control_busy}/{total} dirty in the last)"
        )
    assert hinted_busy == 0, f"{hinted_busy}/{total} hinted pages still dirty or in writeback"


async def _hinted_and_control(engine_kind: str, where: Path) -> tuple[int, int, int]:
    """Write the same bytes with and without hints into ``where``: dirty (or in writeback)
    pages of the hinted file and of the unhinted control, and the pages counted."""
    where.mkdir()
    ctx = make_ctx(engine_kind, no_sync=False)
    paths = {}
    try:
        for will_fsync in (False, True):
            path = str(where / f"f-{will_fsync}")
            vf = await ctx.create_new(path)
            bw = BufferedWriter(vf, LAYER_BUF, will_fsync=will_fsync)
            chunk = pattern(8192)
            for _ in range((2 * W + 3 * MIB) // len(chunk)):
                await bw.write(chunk)
            await bw.finish()
            # Waits for the pins of writes and hints: every hint's sync_file_range(WRITE)
            # has returned (std-fs: before finish did; trio-uring: its CQE has come).
            await vf.close()
            paths[will_fsync] = path
    finally:
        await ctx.aclose()
    # On both files alike: the control shows that the call itself wrote nothing back.
    for path in paths.values():
        _sync_file_range(path, 2 * W, SFR_WAIT_BEFORE)
    hinted_busy, total = _page_states(paths[True], 2 * W)
    control_busy, _ = _page_states(paths[False], 2 * W)
    for path in paths.values():
        os.unlink(path)  # room for another attempt
    return hinted_busy, control_busy, total


# -- the buffered writer ------------------------------------------------------------------


async def test_every_completed_range_is_hinted_once_written(
    engine_kind: str, tmp_path: Path, hints: list[tuple[str, int, int]]
) -> None:
    """A layer-shaped file (from 8192, 256 KiB buffers): a hint per whole 8 MiB written,
    each covering bytes already in the file, none for the tail (the fsync's job)."""
    ctx = make_ctx(engine_kind, no_sync=False)
    path = str(tmp_path / "layer")
    model = bytearray()
    seen: list[tuple[int, int]] = []
    try:
        vf = await ctx.create_new(path)
        bw = BufferedWriter(vf, LAYER_BUF, start_offset=8192, will_fsync=True)
        chunk = pattern(8192, 3)
        for _ in range(44 * MIB // 8192):
            await bw.write(chunk)
            model += chunk
            for _path, off, n in hints[len(seen) :]:
                # At the moment of the hint: the range is in the file already.
                with open(path, "rb") as f:
                    f.seek(off)
                    assert f.read(n) == model[off - 8192 : off - 8192 + n]
                seen.append((off, n))
        await bw.write(b"t" * 5000)
        end = await bw.finish()
        await vf.sync_all()
        await vf.close()
    finally:
        await ctx.aclose()
    assert end == 8192 + 44 * MIB + 5000
    # 44 MiB: five ranges under both engines (trio-uring's up to three writes in flight at
    # the end are completed by finish, which hints no more); with 4 KiB pages exactly
    # (8192 + k * W, W).
    assert [(o, n) for _p, o, n in hints] == expected_ranges(8192, 44 * MIB // LAYER_BUF - 3)
    assert len(hints) == 5
    assert {p for p, _o, _n in hints} == {path}


async def test_borrowed_writes_are_hinted_in_page_aligned_contiguous_ranges(
    engine_kind: str, tmp_path: Path, hints: list[tuple[str, int, int]]
) -> None:
    """Large borrowed appends (the flush's packed blobs) move the written offset by more
    than a buffer: ranges may be larger than 8 MiB, but stay contiguous, page-aligned, at
    least 8 MiB, and cover everything but the last 8 MiB and the writes still in flight."""
    ctx = make_ctx(engine_kind, no_sync=False)
    path = str(tmp_path / "b")
    sizes = [100, 12 * MIB + 77, 5000, 3 * MIB, 20 * MIB + 1, 8192, 9 * MIB]
    try:
        vf = await ctx.create_new(path)
        bw = BufferedWriter(vf, LAYER_BUF, start_offset=8192, will_fsync=True)
        model = bytearray()
        for i, n in enumerate(sizes):
            data = pattern(n, i)
            await bw.write(data, borrow=True)
            model += data
        # Then 2 MiB of small appends: the large writes are completed by then (trio-uring
        # keeps at most three writes in flight), so the end of what was hinted is known.
        for _ in range(2 * MIB // 8192):
            data = pattern(8192, 1)
            await bw.write(data)
            model += data
        await bw.finish()
        await vf.close()
    finally:
        await ctx.aclose()
    assert Path(path).read_bytes()[8192:] == model
    ranges = [(o, n) for _p, o, n in hints]
    assert ranges and ranges[0][0] == round_up(8192)
    for (o1, n1), (o2, _n2) in zip(ranges, ranges[1:], strict=False):
        assert o1 + n1 == o2
    assert all(n >= W and (o + n) % mmap.PAGESIZE == 0 for o, n in ranges)
    last_end = ranges[-1][0] + ranges[-1][1]
    assert last_end > 8192 + len(model) - W - 4 * LAYER_BUF


@pytest.mark.parametrize("page", [mmap.PAGESIZE, 64 * 1024], ids=["native", "64k"])
async def test_first_range_never_covers_the_page_below_start_offset(
    engine_kind: str,
    tmp_path: Path,
    hints: list[tuple[str, int, int]],
    monkeypatch: pytest.MonkeyPatch,
    page: int,
) -> None:
    """The page holding bytes below ``start_offset`` is the owner's to write later (a
    layer's summary at 0, written at finish): the first hinted range starts at
    ``start_offset`` rounded *up* to a page. With 64 KiB pages (aarch64, ppc64) and a
    layer's 8192, rounding down would cover page 0, the summary's page."""
    from pageserver.io import buffered_writer

    monkeypatch.setattr(buffered_writer, "_PAGE_SIZE", page)
    monkeypatch.setattr(buffered_writer, "_PAGE_MASK", ~(page - 1))
    start = 8192 if page > 8192 else page + 100
    ctx = make_ctx(engine_kind, no_sync=False)
    try:
        vf = await ctx.create_new(str(tmp_path / "p"))
        bw = BufferedWriter(vf, LAYER_BUF, start_offset=start, will_fsync=True)
        for _ in range(20 * MIB // 8192):
            await bw.write(pattern(8192))
        await bw.finish()
        await vf.close()
    finally:
        await ctx.aclose()
    ranges = [(o, n) for _p, o, n in hints]
    assert ranges and ranges[0][0] == round_up(start, page) > start
    assert (
        ranges == expected_ranges(start, len(ranges) * W // LAYER_BUF + 1, page=page)[: len(ranges)]
    )


@pytest.mark.parametrize(
    ("no_sync", "will_fsync"), [(True, True), (False, False)], ids=["no_sync", "default"]
)
async def test_no_hint_under_no_sync_or_by_default(
    engine_kind: str,
    tmp_path: Path,
    engine_calls: list[tuple[int, int]],
    no_sync: bool,
    will_fsync: bool,
) -> None:
    ctx = make_ctx(engine_kind, no_sync=no_sync)
    try:
        vf = await ctx.create_new(str(tmp_path / "n"))
        bw = BufferedWriter(vf, LAYER_BUF, will_fsync=will_fsync)
        await bw.write(pattern(3 * W), borrow=True)
        for _ in range(W // 8192 * 2):
            await bw.write(pattern(8192))
        await bw.finish()
        await vf.close()
        # The engine can do it; the writer did not ask.
        fd = await ctx.engine.open(str(tmp_path / "n"), os.O_RDONLY)
        assert await writeback_result(ctx.engine, fd, 0, 0) == 0
        await ctx.engine.close(fd)
    finally:
        await ctx.aclose()
    assert engine_calls == [(0, 0)]


async def test_no_hint_for_the_ephemeral_file(
    engine_kind: str, tmp_path: Path, engine_calls: list[tuple[int, int]]
) -> None:
    """The ephemeral file is never fsync'd (deleted after the flush): even with syncs on,
    writing it back would only double every ingested byte's disk traffic."""
    ctx = make_ctx(engine_kind, no_sync=False)
    try:
        eph = await EphemeralFile.create(ctx, str(tmp_path), 1)
        batch = pattern(MIB)
        for _ in range(3 * W // MIB):
            await eph.append(batch)
        await eph.append(b"tail")
        await eph.finish()
        assert await eph.read(2 * W + 5, 10) == batch[5:15]
        await eph.delete()
    finally:
        await ctx.aclose()
    assert engine_calls == []


# -- errors are a hint's: ignored -----------------------------------------------------------


class FailedHint(PendingIo):
    """What trio-uring's handle does for a CQE with a negative result."""

    def __init__(self, err: int) -> None:
        self._err = err

    async def result(self) -> int:
        raise OSError(self._err, os.strerror(self._err))

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        fn()


class _FailingHint:
    """Mixed into a real engine: its writeback hint fails, at the start (std-fs's shape:
    the syscall raised) or in the result (trio-uring's: the CQE carried ``-err``). The
    other operations are the engine's own."""

    err = errno.EIO
    at_start = True
    attempts = 0

    async def submit_writeback(self, fd: int, offset: int, nbytes: int) -> PendingIo:
        self.attempts += 1
        if self.at_start:
            raise OSError(self.err, os.strerror(self.err))
        return FailedHint(self.err)


class _FailingHintStdFs(_FailingHint, StdFsEngine):
    pass


class _FailingHintUring(_FailingHint, UringEngine):
    pass


def failing_hint_engine(kind: str, err: int, at_start: bool) -> _FailingHint:
    engine = _FailingHintUring() if kind == TRIO_URING else _FailingHintStdFs()
    engine.err, engine.at_start = err, at_start
    return engine


def as_engine(engine: _FailingHint) -> IoEngine:
    assert isinstance(engine, IoEngine)
    return engine


@pytest.mark.parametrize("at_start", [True, False], ids=["raised", "result"])
@pytest.mark.parametrize("err", [errno.EINVAL, errno.EIO], ids=["EINVAL", "EIO"])
async def test_hint_errors_never_fail_the_write(
    engine_kind: str, tmp_path: Path, err: int, at_start: bool
) -> None:
    """EINVAL (a file system without it) and even EIO (fatal for a write or an fsync) are
    ignored: the hint promises nothing, and a real writeback error stays recorded for the
    fsync, which reports it. The descriptor is released as usual."""
    engine = failing_hint_engine(engine_kind, err, at_start)
    ctx = make_ctx(engine_kind, no_sync=False, engine=as_engine(engine))
    path = str(tmp_path / "e")
    data = pattern(3 * W + 2 * MIB + 12345)
    try:
        vf = await ctx.create_new(path)
        bw = BufferedWriter(vf, LAYER_BUF, will_fsync=True)
        for i in range(0, len(data), 8192):
            await bw.write(data[i : i + 8192])
        assert await bw.finish() == len(data)
        await vf.sync_all()
        await vf.close()
        assert ctx.table.open_fd_count() == 0
    finally:
        await ctx.aclose()
    assert engine.attempts == 3
    assert Path(path).read_bytes() == data


async def test_no_reopen_for_a_hint_so_a_failing_open_never_fails_the_write(
    engine_kind: str, tmp_path: Path, engine_calls: list[tuple[int, int]]
) -> None:
    """Between a write and its hint another file may take the writer's slot. The hint is
    then skipped, not made by reopening the file: a reopen can fail (EMFILE here, through
    the ``virtual-file-open`` failpoint), and that failed the write whose bytes were
    already written. Every other hint is made; the file is complete."""
    from pageserver import failpoints

    ctx = IoContext(create_engine(engine_kind), max_file_descriptors=2, no_sync=False)
    path = str(tmp_path / "w")
    data = pattern(3 * W + 2 * MIB + 12345)
    skipped = 0
    original = VirtualFile.start_writeback

    async def evict_then_hint(self: VirtualFile, offset: int, nbytes: int) -> None:
        nonlocal skipped
        if offset == 0:  # the first hint: take the slot away, make every open fail
            # Under trio-uring later writes may still be in flight, and they pin the slot
            # (it cannot be evicted) until their completions come: wait for those first.
            with trio.fail_after(10):
                while self._slot is not None and self._slot.owner is self and self._slot.pins:
                    await trio.sleep(0.001)
            others = [await ctx.create_new(str(tmp_path / f"o{i}")) for i in range(3)]
            assert self._slot is None or self._slot.owner is not self, "not evicted"
            for o in others:
                await o.close()
            reopens = ctx.table.reopen_count
            failpoints.configure({"virtual-file-open": "return(24)"})  # EMFILE
            try:
                await original(self, offset, nbytes)
            finally:
                failpoints.clear()
            assert ctx.table.reopen_count == reopens
            skipped += 1
            return
        await original(self, offset, nbytes)

    try:
        vf = await ctx.create_new(path)
        bw = BufferedWriter(vf, LAYER_BUF, will_fsync=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(VirtualFile, "start_writeback", evict_then_hint)
            for i in range(0, len(data), 8192):
                await bw.write(data[i : i + 8192])
        assert await bw.finish() == len(data)
        await vf.sync_all()
        await vf.close()
    finally:
        failpoints.clear()
        await ctx.aclose()
    assert skipped == 1
    assert [o for o, _n in engine_calls] == [W, 2 * W]
    assert Path(path).read_bytes() == data


async def test_aclose_closes_a_file_with_a_hint_in_flight(engine_kind: str, tmp_path: Path) -> None:
    """Nobody awaits a hint: under trio-uring its pin is released only when its CQE comes.
    Closing the context right after one (an abandoned layer, shutdown) still closes the
    file's descriptor: ``close_all`` waits for that pin instead of skipping the slot."""
    ctx = make_ctx(engine_kind, no_sync=False)
    path = str(tmp_path / "h")
    try:
        vf = await ctx.create_new(path)
        await vf.write_all_at(pattern(MIB), 0)
        slot = vf._slot
        assert slot is not None
        fd = slot.fd
        await vf.start_writeback(0, MIB)
        # No checkpoint since the hint: under trio-uring its CQE cannot have been reaped,
        # so this is the case the test is about; std-fs ran the syscall and unpinned.
        assert slot.pins == (1 if engine_kind == TRIO_URING else 0)
    finally:
        await ctx.aclose()
    assert ctx.table.open_fd_count() == 0
    assert slot.pins == 0
    try:
        still = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        still = None
    assert still != path


def _layer_rows() -> list[tuple[Key, int, bytes]]:
    # ~24 MiB of 8 KiB images: three writeback ranges, and a tail.
    return [
        (Key.from_int(i * 7), 100 + i % 3, encode_value(Image(pattern(8192, i % 251))))
        for i in range(3000)
    ]


async def _write_layer(ctx: IoContext, d: Path, rows: list[tuple[Key, int, bytes]]) -> bytes:
    tenant, timeline = TenantId(bytes(range(16))), TimelineId(bytes(range(16, 32)))

    async def job() -> str:
        w = DeltaLayerWriter(ctx, str(d), tenant, timeline, rows[0][0], 100, 200)
        for k, lsn, v in rows:
            await w.put_value(k, lsn, v)
        return (await w.finish(Key(rows[-1][0]).next())).path

    return Path(await ctx.run_job(job)).read_bytes()


async def test_layer_with_failing_hints_is_byte_identical(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta layer written with the hint on (and every hint failing) is complete and has
    the same bytes as one written without it. The layer writer is made to ask for the
    hint here (``will_fsync=True``) whether or not its call site does yet."""
    rows = _layer_rows()
    plain = make_ctx(engine_kind, no_sync=True)
    (tmp_path / "plain").mkdir()
    (tmp_path / "hinted").mkdir()
    try:
        expected = await _write_layer(plain, tmp_path / "plain", rows)
    finally:
        await plain.aclose()
    monkeypatch.setattr(
        layer_writer, "BufferedWriter", functools.partial(BufferedWriter, will_fsync=True)
    )
    engine = failing_hint_engine(engine_kind, errno.EIO, at_start=engine_kind != TRIO_URING)
    hinted = make_ctx(engine_kind, no_sync=False, engine=as_engine(engine))
    try:
        got = await _write_layer(hinted, tmp_path / "hinted", rows)
    finally:
        await hinted.aclose()
    assert engine.attempts >= 2
    assert got == expected


# -- where it runs: strace -------------------------------------------------------------------

CHILD = r"""
import sys, trio
from pageserver.io import BufferedWriter, IoContext, create_engine

async def main() -> None:
    ctx = IoContext(create_engine(sys.argv[1]), no_sync=False)
    assert ctx.engine.kind == sys.argv[1], ctx.engine.kind

    async def job() -> None:
        vf = await ctx.create_new(sys.argv[2])
        w = BufferedWriter(vf, 256 * 1024, start_offset=8192, will_fsync=True)
        chunk = b"\xcd" * 8192
        for _ in range(20 * 128):
            await w.write(chunk)
        await w.finish()
        await vf.sync_all()
        await vf.close()

    await ctx.run_job(job)
    await ctx.aclose()

trio.run(main)
"""


def strace_child(kind: str, tmp_path: Path) -> list[tuple[int, str, str]]:
    """(thread id, syscall, arguments) of the child's calls, in order."""
    out = tmp_path / f"{kind}.strace"
    target = tmp_path / f"{kind}.bin"
    strace_script(
        CHILD, [kind, str(target)], "execve,sync_file_range,pwrite64,fsync,io_uring_enter", out, 120
    )
    assert target.stat().st_size == 8192 + 20 * MIB
    calls = []
    for line in out.read_text().splitlines():
        # "<tid> name(args) = result", or "<tid> name(args <unfinished ...>" when another
        # thread's call came in between (its "<... resumed>" half has no name to match).
        m = re.match(r"(\d+)\s+(\w+)\((.*?)(?:\)\s+=.*| <unfinished \.\.\.>)$", line)
        if m:
            calls.append((int(m.group(1)), m.group(2), m.group(3)))
    return calls


def test_std_fs_hints_from_the_jobs_worker_thread(tmp_path: Path) -> None:
    calls = strace_child("std-fs", tmp_path)
    main_tid = next(tid for tid, name, _ in calls if name == "execve")
    sfr = [(tid, args) for tid, name, args in calls if name == "sync_file_range"]
    writers = {tid for tid, name, _ in calls if name == "pwrite64"}
    assert [re.sub(r"^\d+, ", "", args) for _tid, args in sfr] == [
        f"{o}, {n}, SYNC_FILE_RANGE_WRITE" for o, n in expected_ranges(8192, 20 * 4)
    ]
    assert {tid for tid, _ in sfr} == writers and main_tid not in writers
    names = [name for _tid, name, _ in calls if name in ("sync_file_range", "fsync")]
    assert names == ["sync_file_range", "sync_file_range", "fsync"]


def test_trio_uring_hints_without_a_syscall(tmp_path: Path) -> None:
    """Under trio-uring the hint is an SQE (run by the kernel's io-wq worker), never a
    blocking syscall of the loop's thread."""
    from tests.io.test_uring_engine import require_uring

    require_uring()
    calls = strace_child(TRIO_URING, tmp_path)
    names = {name for _tid, name, _ in calls}
    assert "io_uring_enter" in names
    assert not names & {"sync_file_range", "pwrite64", "fsync"}, names
    assert len({tid for tid, name, _ in calls if name == "io_uring_enter"}) == 1
