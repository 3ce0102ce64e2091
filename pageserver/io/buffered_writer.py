"""The buffered append writer: the one way bulk data reaches a file.

Used by the ephemeral file of the in-memory layer, the blob writer of delta and image
layers, and the benchmarks. It turns many small appends into writes of whole buffers
(at least 64 KiB; only the last one may be partial, unless the owner asks for large
appends and gathers to go out whole, ``whole_buffers=False``: :meth:`BufferedWriter.write`,
:meth:`BufferedWriter.write_gather`, before which the current buffer goes out as it is),
which is what both engines want: ``std-fs`` pays a syscall per write, ``trio-uring`` a
submission and a completion.

Write-behind. With an engine whose ``write_behind_depth`` is above one (trio-uring), a
full buffer is *submitted* and the writer goes on filling the next buffer while the
kernel writes the previous one; it waits only when ``write_behind_depth`` buffers are
in flight. A buffer in flight is never touched: the writer keeps a small pool of
``bytearray`` buffers and reuses one only after its write completed. With ``std-fs``
(depth one) ``submit`` performs the write before returning, so the same code degrades
to plain synchronous writes without a special case.

Reads. The logical file is the bytes on disk followed by the bytes still in the current
buffer (and in buffers in flight). :meth:`read_at` serves the part that is not yet on
disk from memory, so a reader never sees a hole or stale bytes.

Early writeback. A file its owner will fsync (a layer file: ``will_fsync=True``) is
written into the page cache, and the kernel would start writing it to the disk only when
dirty memory passes ``dirty_background_ratio`` (gigabytes on a big machine) or after
``dirty_expire_centisecs`` (30 s): so the disk sat idle while the file was produced, and
the final fsync then waited for all of it. So, as RocksDB's ``bytes_per_sync`` does, each
completed range of :data:`WRITEBACK_BYTES` is handed to the kernel's writeback at once
(:meth:`VirtualFile.start_writeback`: ``sync_file_range(SYNC_FILE_RANGE_WRITE)``), and the
fsync finds only the last range still dirty. Never waited for, and a hint only: its errors
are ignored (the fsync, the durability point, still reports and aborts on any writeback
error). Not under ``no_sync`` (nothing durable is promised; writing back early would only
spend disk bandwidth), and not for the ephemeral file (never fsync'd; it is deleted after
the flush, and writing it back would double the disk traffic of every ingested byte).
Under std-fs the call runs where the writer runs: inside a layer-writing job, in its
worker thread.

Known limitation: early writeback makes writeback errors happen *before* the owner's
fsync, while the file is still being written, and nothing keeps the file's descriptor
open meanwhile (the slot table may evict it for another file). The kernel keeps an
error no one has seen for the next opener (errseq: the reopened descriptor's fsync still
reports it), but only while the inode stays in memory: were the inode reclaimed with no
descriptor open between the failed writeback and the fsync (memory pressure), the error
would be lost with it and the fsync would succeed. Without hints the same holds for the
kernel's own background writeback, only less often (it starts later). Pinning a
``will_fsync`` writer's slot until the fsync would close that window, but a pin nobody
drops (a writer never finished nor abandoned) would stall every close of that file, and
held slots shrink the table for the others: not done.

Large writes off the loop. Given ``run_job`` (the ephemeral file's writer, which runs on
the event loop), a borrowed write of :data:`OFFLOAD_MIN_BYTES` or more is started through
it: under std-fs the ``pwrite`` of a frame-sized put then runs in a worker thread, not on
the loop; under trio-uring ``run_job`` runs it inline (a submission). A kept write of that
size (below) is written again the same way. Layer writers run inside a job already and get
no ``run_job``.

Failed writes. A write error that reaches the writer is one the process survives (EIO,
EROFS and EACCES abort in :mod:`virtual_file` before they get here): a full disk (ENOSPC,
EDQUOT), say. The buffer whose write failed is kept, in memory, as *unwritten*: reads
still see its bytes, and the next :meth:`write` or :meth:`finish` first writes it again at
its offset (a plain ``pwrite`` of the same bytes, safe to repeat; this is not an fsync
retry, which is never done). So the caller of the failing call gets the error -- an
ingest batch is rejected -- while everything appended before stays intact, and the writer
goes on once the space is back. Only other exceptions (a bug, a cancelled job) make the
writer unusable.
"""

from __future__ import annotations

import mmap
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from pageserver.io.gather import IOV_MAX, Gather
from pageserver.io.virtual_file import PendingWrite, VirtualFile

DEFAULT_BUFFER_SIZE = 64 * 1024
MIN_BUFFER_SIZE = 64 * 1024
#: Borrowed writes at least this large are started through ``run_job`` (module docstring).
OFFLOAD_MIN_BYTES = 256 * 1024
#: A gather's held tail (:meth:`BufferedWriter.write_gather`) is copied instead when it has
#: more pieces than this: with the next gather's it should fit a vectored write (IOV_MAX),
#: and tiny gathers piling up in it (each keeping its owners alive) are bounded.
_HOLD_MAX_PIECES = IOV_MAX // 4

#: With ``will_fsync``, writeback of the file is started every time this many more bytes
#: are written (module docstring). Large enough that the hint costs nothing (one syscall
#: or SQE per 32 buffers of a layer file's 256 KiB) and that the disk gets big sequential
#: requests; small enough that the disk starts early and the final fsync is left at most
#: this much, plus the unfinished tail (~7 ms at the 1.2 GiB/s this VM's disk syncs at).
#: RocksDB's ``bytes_per_sync`` is commonly set to 1 MiB for its SST files; we take 8 MiB
#: because our layer files are written in 256 KiB buffers, and a flush writes hundreds
#: of MiB.
WRITEBACK_BYTES = 8 << 20
#: Writeback ranges end on a page boundary: a page still being filled would be written
#: twice, and a write into a page under writeback may have to wait for that I/O.
_PAGE_SIZE = mmap.PAGESIZE
_PAGE_MASK = ~(_PAGE_SIZE - 1)

#: What :meth:`IoContext.run_job` is: runs ``fn(*args)`` the way the engine runs jobs.
RunJob = Callable[..., Awaitable[Any]]


class BufferedWriter:
    """Append-only writer on top of a :class:`VirtualFile`.

    ``start_offset`` is where the first appended byte goes (layer writers start at 8192,
    after the summary page); offsets reported by :meth:`write` are absolute file offsets.
    ``will_fsync``: the owner fsyncs the file once it is finished (layer files), so its
    writeback is started early, every :data:`WRITEBACK_BYTES` (module docstring). Known
    limitation (module docstring): the file's descriptor is not kept open until the
    fsync, so a writeback error can be lost if its inode is reclaimed in between.
    """

    def __init__(
        self,
        file: VirtualFile,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        start_offset: int = 0,
        run_job: RunJob | None = None,
        *,
        will_fsync: bool = False,
        whole_buffers: bool = True,
    ) -> None:
        if buffer_size < MIN_BUFFER_SIZE:
            raise ValueError(f"buffer_size must be at least {MIN_BUFFER_SIZE}")
        self.file = file
        self.buffer_size = buffer_size
        #: See :meth:`write` (``borrow``).
        self._whole_buffers = whole_buffers
        self._depth = max(1, file.write_behind_depth)
        self._buf = bytearray(buffer_size)
        self._fill = 0
        #: Absolute offset of ``_buf[0]``.
        self._buf_offset = start_offset
        self._free: list[bytearray] = []
        #: Writes in flight, oldest first: (absolute offset, buffer, length, pending).
        self._inflight: deque[tuple[int, bytearray | memoryview | Gather, int, PendingWrite]] = deque()
        self._closed = False
        #: An error that made the writer unusable (see the module docstring).
        self._error: BaseException | None = None
        #: Buffers whose write failed with an OSError, oldest first: (offset, buf, length).
        #: Written again before anything else; served from memory by ``read_at`` meanwhile.
        self._unwritten: list[tuple[int, bytearray | memoryview | Gather, int]] = []
        #: The last gather's bytes past the last whole buffer (less than one), still where
        #: they are: the next gather writes them first, anything else copies them into
        #: the buffer (:meth:`write_gather`, :meth:`_settle`).
        self._carry: Gather | None = None
        #: Starts large borrowed writes (module docstring); None: on the caller's thread.
        self._run_job = run_job
        #: Where the next writeback range starts; -1: no early writeback (module docstring).
        #: Rounded *up* to a page: a page holding bytes below ``start_offset`` is one the
        #: owner writes later (a layer's summary at 0, written by ``finish``; with 64 KiB
        #: pages the first data bytes share that page), so a hint would have it written back
        #: twice, and the summary's write might wait for that I/O.
        self._wb_from = (
            -(-start_offset // _PAGE_SIZE) * _PAGE_SIZE if will_fsync and not file.no_sync else -1
        )

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte appended (= logical file length)."""
        return self._buf_offset + self._fill + (len(self._carry) if self._carry is not None else 0)

    def _settle(self) -> None:
        """Copy a gather's held tail (:meth:`write_gather`) into the current buffer (it is
        less than a buffer, and the buffer is empty while a tail is held): from now on no
        memory of the gather is read. Every entry point but ``write_gather`` does this
        first."""
        carry = self._carry
        if carry is not None:
            self._carry = None
            assert self._fill == 0
            carry.copy_into(0, len(carry), self._buf, 0)
            self._fill = len(carry)

    @property
    def durable_offset(self) -> int:
        """Bytes below this offset have been handed to (and completed by) the kernel."""
        firsts = [self._buf_offset]
        if self._inflight:
            firsts.append(self._inflight[0][0])
        if self._unwritten:
            firsts.append(self._unwritten[0][0])
        return min(firsts)

    @property
    def broken(self) -> BaseException | None:
        """The error that made the writer unusable, or None (a failed write that can be
        written again does not count: see the module docstring)."""
        return self._error

    async def _write_unwritten(self) -> None:
        """Write the buffers whose earlier write failed, oldest first; raises if one fails
        again (it stays unwritten). One of :data:`OFFLOAD_MIN_BYTES` or more (a borrowed
        put of up to a frame, or a full buffer) goes through ``run_job``, as large borrowed
        writes are started: under std-fs, not on the loop."""
        while self._unwritten:
            off, buf, length = self._unwritten[0]
            data = buf if isinstance(buf, Gather) else memoryview(buf)[:length]
            if self._run_job is not None and length >= OFFLOAD_MIN_BYTES:
                await self._run_job(self.file.write_all_at, data, off)
            else:
                await self.file.write_all_at(data, off)
            self._unwritten.pop(0)

    def _check(self) -> None:
        if self._error is not None:
            raise OSError(
                getattr(self._error, "errno", None) or 5,
                f"{self.file.path}: an earlier write failed ({self._error!r}); the writer is unusable",
            )

    async def write(self, data: bytes | bytearray | memoryview, *, borrow: bool = False) -> int:
        """Append ``data``; return the absolute offset where it starts.

        On an error some of ``data`` may have been appended (bytes no offset was handed
        out for); the bytes of earlier calls are kept (see the module docstring).

        ``borrow``: the caller will never change ``data`` (it is immutable, or dropped
        after this call). Then the whole buffers' worth of it beyond what tops up the
        current buffer are written straight from ``data``, in one write, instead of being
        copied into buffers first (the writer keeps a reference for as long as it may
        read or rewrite them). For large appends: the ingest of 8 KiB pages and the flush
        copied every byte once more without it.

        With ``whole_buffers=False`` (the ephemeral file, whose write sizes do not
        matter), a borrowed ``data`` of at least a buffer is not topped up and cut at all:
        the current buffer goes out as it is (if it holds anything), then ``data`` whole,
        in one write. A put of 8 KiB pages (~1 MiB) is then one write and no copy; with
        the top-up, a quarter of its bytes on average were copied into buffers first, and
        it took about two writes. Otherwise every write but the last is a whole buffer.
        """
        if self._error is not None:
            self._check()
        self._settle()
        if self._unwritten:
            await self._write_unwritten()
        start = self._buf_offset + self._fill
        n = len(data)
        room = self.buffer_size - self._fill
        if n <= room and (n < self.buffer_size or self._whole_buffers or not borrow):
            # The hot path: one slice assignment. (Not for a borrowed whole buffer's worth
            # into an empty buffer without ``whole_buffers``: that is written as it is.)
            self._buf[self._fill : self._fill + n] = data
            self._fill += n
            if n == room:
                await self._submit_full()
            return start
        view = memoryview(data).cast("B")
        pos = 0
        if borrow and not self._whole_buffers and n >= self.buffer_size:
            await self._submit_whole(view)
            return start
        if borrow and n - min(room, n) >= self.buffer_size:
            if self._fill:
                self._buf[self._fill : self.buffer_size] = view[:room]
                self._fill = self.buffer_size
                pos = room
                await self._submit_full()
            whole = (n - pos) // self.buffer_size * self.buffer_size
            await self._submit_borrowed(view[pos : pos + whole])
            pos += whole
        while pos < n:
            room = self.buffer_size - self._fill
            take = min(room, n - pos)
            self._buf[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.buffer_size:
                await self._submit_full()
        return start

    async def write_gather(self, gather: Gather) -> int:
        """Append the bytes of ``gather`` (:mod:`pageserver.io.gather`); return the absolute
        offset where they start. Its memory is borrowed: unchanged until the writer no
        longer reads it, which is once :meth:`wait_written` (or :meth:`finish`) returned.

        Cut as a borrowed append is, so that a layer file still gets whole buffers only
        (SPEC section 4): the current buffer topped up from the gather's head (a copy of
        less than a buffer), then the whole buffers' worth after it as one vectored write
        straight from the gather. The rest (less than a buffer) is *held* where it is: the
        next gather writes it first, so a run of gathers (a flush of large values) copies
        nothing but at its two ends; any other call copies it into the buffer first.
        Without ``whole_buffers`` the current buffer goes out as it is, then the gather
        whole. In flight, unwritten or read back, it is handled like a borrowed buffer.

        With ``whole_buffers``, :attr:`offset` and :meth:`read_at` do not cover the gather
        (nor a held tail) until the call returns: not for a file read by another task
        while it is written (the layer writers' files are read once finished; the
        ephemeral file, which is read meanwhile, has no ``whole_buffers``)."""
        if self._error is not None:
            self._check()
        if self._unwritten:
            self._settle()  # (a held tail lies above them; only whole_buffers holds one)
            await self._write_unwritten()
        start = self.offset
        if not len(gather):
            return start
        if not self._whole_buffers:
            await self._submit_whole(gather)
            return start
        try:
            return await self._write_gather_whole(gather, start)
        except OSError:
            raise
        except BaseException as e:
            # Cancelled (a cancelled job's JobCancelled, trio's Cancelled while waiting for
            # a slot or ring room) or a bug halfway through a gather: part of it may be
            # taken and the held tail is gone, so the writer is unusable from here on, as
            # the module docstring says of a cancelled job.
            if self._error is None:
                self._error = e
            raise

    async def _write_gather_whole(self, gather: Gather, start: int) -> int:
        """:meth:`write_gather` with ``whole_buffers``."""
        owners = gather.owners
        held = 0  # bytes of an earlier gather at the front of this one
        if self._carry is not None:
            held = len(self._carry)
            gather = Gather.concat(self._carry, gather)
            self._carry = None
        n = len(gather)
        bs = self.buffer_size
        # The gather is taken whole even when a write fails on the way (a full disk): a
        # failed write keeps its bytes as unwritten, the parts not yet started become
        # unwritten as they are (cut as they would have been written: whole buffers of at
        # most IOV_MAX pieces, so a rewrite is whole buffers too), and the rest is copied
        # into the buffer; then the error is raised. (Only an earlier unwritten write that
        # fails again, at the start, leaves it untaken.)
        err: OSError | None = None
        pos = 0
        if self._fill:
            pos = min(bs - self._fill, n)
            gather.copy_into(0, pos, self._buf, self._fill)
            self._fill += pos
            if self._fill == bs:
                try:
                    await self._submit_full()
                except OSError as e:
                    err = e
        rest = gather.tail(pos)
        whole = (n - pos) // bs * bs if self._fill == 0 else 0
        while whole:
            # One write takes at most IOV_MAX pieces (the kernel's limit: more would be a
            # short write, continued at an offset that is no buffer boundary), so whole
            # buffers' worth of them; a buffer that needs more pieces than that is copied.
            chunk = min(whole, rest.bytes_in(IOV_MAX)) // bs * bs
            part: Gather | bytearray
            if not chunk:
                chunk = bs
                part = bytearray(bs)
                rest.copy_into(0, bs, part, 0)
            else:
                part = rest.head(chunk)
            if err is not None:
                self._unwritten.append((self._buf_offset, part, chunk))
                self._buf_offset += chunk
            elif isinstance(part, bytearray):
                self._buf[:] = part
                self._fill = bs
                try:
                    await self._submit_full()
                except OSError as e:
                    err = e
            else:
                try:
                    await self._submit_borrowed(part)
                except OSError as e:
                    err = e
            rest = rest.tail(chunk)
            whole -= chunk
            pos += chunk
        if pos < n:
            if err is None and self._fill == 0 and rest.count <= _HOLD_MAX_PIECES:
                # Past the earlier tail, the pieces are this gather's: only its owners are
                # kept (a run of gathers does not keep every earlier one alive).
                self._carry = Gather(rest.iov, owners) if pos >= held else rest
            else:
                rest.copy_into(0, n - pos, self._buf, self._fill)
                self._fill += n - pos
        if err is not None:
            raise err
        return start

    async def _submit_whole(self, data: memoryview | Gather) -> None:
        """The current buffer as it is (if it holds anything), then ``data`` (borrowed) in
        one write: a large put or a gather without ``whole_buffers``."""
        if self._fill:
            await self._submit(self._fill)
        await self._submit_borrowed(data)

    async def _submit_full(self) -> None:
        await self._submit(self.buffer_size)

    async def _submit(self, length: int) -> None:
        self._check()
        buf = self._buf
        offset = self._buf_offset
        while len(self._inflight) >= self._depth:
            await self._complete_oldest()
        try:
            pending = await self.file.start_write_all_at(memoryview(buf)[:length], offset)
        except OSError:
            # Not started: the buffer is handed over as unwritten, like a failed write.
            self._unwritten.append((offset, buf, length))
            self._next_buffer(offset + length)
            raise
        self._inflight.append((offset, buf, length, pending))
        self._next_buffer(offset + length)
        if len(self._inflight) >= self._depth:
            # Keep at most ``depth`` writes in flight: with depth one (std-fs) this makes
            # every write complete here, before the buffer is filled again.
            await self._complete_oldest()

    async def _submit_borrowed(self, view: memoryview | Gather) -> None:
        """Write the caller's bytes at the current (empty) buffer's offset, which then
        moves past them. In flight, unwritten or read, they are handled like a buffer,
        except that they never join the pool of buffers."""
        self._check()
        assert self._fill == 0
        offset = self._buf_offset
        while len(self._inflight) >= self._depth:
            await self._complete_oldest()
        try:
            if self._run_job is not None and len(view) >= OFFLOAD_MIN_BYTES:
                pending: PendingWrite = await self._run_job(
                    self.file.start_write_all_at, view, offset
                )
            else:
                pending = await self.file.start_write_all_at(view, offset)
        except OSError:
            self._unwritten.append((offset, view, len(view)))
            self._buf_offset = offset + len(view)
            raise
        self._inflight.append((offset, view, len(view), pending))
        self._buf_offset = offset + len(view)
        if len(self._inflight) >= self._depth:
            await self._complete_oldest()

    def _next_buffer(self, offset: int) -> None:
        self._buf = self._free.pop() if self._free else bytearray(self.buffer_size)
        self._buf_offset = offset
        self._fill = 0

    async def _complete_oldest(self, *, rewrite: bool = True) -> None:
        off, buf, length, pending = self._inflight[0]
        try:
            await pending.wait()
        except OSError:
            # The bytes stay in memory as unwritten (module docstring); the buffer is not
            # reused until they are written. The write may have failed a while ago (the
            # kernel reports write-behind late), so write it again now: if the space is
            # back, the caller never notices; if not, the error goes up.
            self._inflight.popleft()
            self._unwritten.append((off, buf, length))
            self._unwritten.sort(key=lambda u: u[0])
            if not rewrite:
                raise
            await self._write_unwritten()
            return
        except BaseException as e:
            # Anything else (a cancelled job, a bug): the state of the file is unknown, so
            # nothing after it can be trusted: every later write and read raises. The
            # buffer is not reused (``read_at`` may still be reading it).
            self._inflight.popleft()
            if self._error is None:
                self._error = e
            raise
        self._inflight.popleft()
        if buf is not self._buf and type(buf) is bytearray:  # not a borrowed view
            self._free.append(buf)
        if self._wb_from >= 0:
            # Everything below durable_offset is written, none of it is still in memory
            # only (unwritten): start writing back the completed range once it is large.
            end = self.durable_offset & _PAGE_MASK
            if end - self._wb_from >= WRITEBACK_BYTES:
                start, self._wb_from = self._wb_from, end
                await self.file.start_writeback(start, end - start)

    async def wait_written(self) -> None:
        """Wait until every write in flight has completed, and write again what an earlier
        failure left unwritten: the memory of borrowed appends and gathers is then no
        longer read (a caller about to release it, or to drop it from its mapping, waits
        here first). Raises if a write fails (it stays unwritten, as ever)."""
        self._check()
        self._settle()
        await self._drain()
        if self._unwritten:
            await self._write_unwritten()

    async def _drain(self) -> None:
        first_error: BaseException | None = None
        while self._inflight:
            try:
                await self._complete_oldest()
            except BaseException as e:  # keep waiting: the kernel still holds the others
                if first_error is None:
                    first_error = e
        if first_error is not None:
            raise first_error

    async def pad_to(self, alignment: int) -> None:
        """Append zero bytes until :attr:`offset` is a multiple of ``alignment``."""
        rem = self.offset % alignment
        if rem:
            await self.write(bytes(alignment - rem))

    async def finish(self) -> int:
        """Write the last (partial) buffer, wait for all writes; return the file length.

        After an error it may be called again: what failed is written again first.
        """
        self._check()
        self._settle()
        # The fsync that follows writes back what is left: a hint now would only add a
        # syscall (or an SQE racing the fsync's).
        self._wb_from = -1
        if self._unwritten:
            await self._write_unwritten()
        if self._fill:
            await self._submit(self._fill)
        await self._drain()
        self._closed = True
        return self._buf_offset

    async def abandon(self) -> None:
        """Wait for writes in flight without writing more (error and cancellation paths).

        Errors of those writes are swallowed: the caller is already failing and is about
        to delete the file.
        """
        self._wb_from = -1
        self._carry = None
        while self._inflight:
            try:
                await self._complete_oldest(rewrite=False)
            except BaseException:  # noqa: BLE001 - see docstring
                pass
        self._unwritten.clear()
        self._closed = True

    async def read_at(self, offset: int, n: int) -> bytes:
        """Read ``n`` bytes at absolute ``offset`` of the logical file.

        The parts still in memory (the current buffer, buffers in flight) are copied
        *before* any await: a concurrent ``write`` may submit the current buffer, reuse a
        completed one or move ``durable_offset`` while this read waits for the disk. Only
        bytes whose write completed are read from the file, and those never change.
        """
        self._check()
        self._settle()
        end = offset + n
        if end > self.offset:
            raise EOFError(f"read past the end of {self.file.path}: {offset}+{n} > {self.offset}")
        buf_off = self._buf_offset
        if offset >= buf_off:
            # Entirely in the current buffer: the common case for fresh ephemeral data.
            i = offset - buf_off
            return bytes(self._buf[i : i + n])
        out = bytearray(n)
        # Copied in a function of its own: nothing in this frame refers to borrowed memory
        # (a gather, a caller's buffer) across the reads from the file below.
        disk_ranges = self._copy_from_memory(out, offset, end)
        view = memoryview(out)
        for lo, hi in disk_ranges:
            await self.file.read_exact_at_into(view[lo - offset : hi - offset], lo)
        self._check()
        return bytes(out)

    def _copy_from_memory(self, out: bytearray, offset: int, end: int) -> list[tuple[int, int]]:
        """For :meth:`read_at`: copy into ``out`` (the bytes ``[offset, end)``) what only
        memory has -- the writes in flight, the unwritten ones, the current buffer -- and
        return the ranges to read from the file: every other byte below the current buffer
        (its write completed: those bytes never change). Not just what lies below the
        oldest write in flight: a write done again after a failure can complete while an
        older one is still in flight, and its bytes are then in neither list (a review
        found reads of zeros there)."""
        buf_off = self._buf_offset
        in_memory = [(off, buf, length) for off, buf, length, _p in self._inflight]
        in_memory += self._unwritten
        in_memory.sort(key=lambda m: m[0])
        disk_end = min(end, buf_off)
        disk_ranges = []
        pos = offset
        for off, buf, length in in_memory:
            lo = max(offset, off)
            hi = min(end, off + length)
            if lo < hi:
                out[lo - offset : hi - offset] = buf[lo - off : hi - off]
            if pos < min(off, disk_end):
                disk_ranges.append((pos, min(off, disk_end)))
            pos = max(pos, off + length)
        if pos < disk_end:
            disk_ranges.append((pos, disk_end))
        if end > buf_off:
            lo = max(offset, buf_off)
            out[lo - offset :] = self._buf[lo - buf_off : end - buf_off]
        return disk_ranges
