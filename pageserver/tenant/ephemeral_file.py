"""The ephemeral file: the append-only file that holds an in-memory layer's values.

Named ``ephemeral-<n>`` in the timeline directory (``n`` is the timeline's sequence
number of in-memory layers). Appends go through the buffered writer, so that reads of an
open layer are served from the tail still in memory; :meth:`EphemeralFile.finish` writes
that tail, after which reads go to the file. The file lives as long as its in-memory
layer: it is deleted once the layer is flushed (or at shutdown). One found at startup is
what a crash left (its records were never reported durable) and is removed
(:meth:`EphemeralFile.is_file_name` is how the timeline's startup scan recognises it).
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import numpy.typing as npt

from pageserver.io import (
    BufferedWriter,
    FileMapping,
    IoContext,
    VirtualFile,
    cleanup_shield,
    cooperative_checkpoint,
)

_PREFIX = "ephemeral-"
#: Bytes dropped per step when a large file is deleted (see :meth:`EphemeralFile.delete`).
_DELETE_STEP = 16 << 20
#: The appends' buffer. Small values (a put of 1000 x 100 B is ~100 KB) are copied into
#: it and written a whole buffer at a time, so its size sets how many writes an ingest
#: makes. Under trio-uring each write is a submission, an io-wq hand-off (an ext4
#: buffered write does not complete inside ``io_uring_enter``: a worker does the copy)
#: and a completion on the loop: ~30 us of the loop's CPU for 64 KiB, ~46 us for 512 KiB,
#: where std-fs does one ``pwrite`` of 64 KiB in 15-24 us. 256 KiB rather than the
#: writer's default 64 KiB: a quarter of the writes.
#: Daemon 1M x 100 B durable ingest, trio-uring / std-fs in the same run, 11 pairs of
#: runs alternating the two sizes: median 0.97 (2 of 11 at or above 1) with 64 KiB, 1.03
#: (9 of 11) with 256 KiB. A put of a buffer or more (8 KiB pages, ~1 MiB) is not
#: copied at all: the writer is made with ``whole_buffers=False``, so such a put is one
#: write straight from the frame (``borrow``), after what the buffer held. With the
#: top-up and the tail copied (a quarter of its bytes) and two writes, a 1 MiB put cost
#: the loop 260-355 us of CPU in-process under trio-uring; 150-166 us without.
#: Memory: up to five buffers (the one being filled and four in flight under trio-uring)
#: stay with the file until it is deleted, frozen too: with a frozen layer being flushed
#: and an open one, up to 2.5 MiB per timeline (640 KiB before; std-fs 1 MiB). Under
#: trio-uring a large put's frame also stays alive while its write is in flight, and the
#: writer notices a completed write only at its next write (or the freeze): up to three
#: frames per open layer (48 MiB at the 16 MiB frame limit), outside the server's frame
#: budget, as the borrowed writes of the top-up scheme already held two.
EPHEMERAL_BUFFER_BYTES = 256 << 10


class EphemeralFile:
    def __init__(self, ctx: IoContext, path: str, vf: VirtualFile) -> None:
        self.ctx = ctx
        self.path = path
        self._vf = vf
        # Large appends (a put step's values) are written through ``ctx.run_job``: under
        # std-fs the pwrite of several MiB then runs in a worker thread, not on the loop.
        self._writer = BufferedWriter(
            vf, EPHEMERAL_BUFFER_BYTES, run_job=ctx.run_job, whole_buffers=False
        )
        #: Set once :meth:`finish` has written everything: reads then go to the file.
        self._finished = False

    @staticmethod
    def file_name(seq: int) -> str:
        return f"{_PREFIX}{seq}"

    @staticmethod
    def is_file_name(name: str) -> bool:
        """Whether a directory entry is an ephemeral file (at startup: a leftover)."""
        return name.startswith(_PREFIX)

    @classmethod
    async def create(cls, ctx: IoContext, timeline_dir: str, seq: int) -> EphemeralFile:
        path = os.path.join(timeline_dir, cls.file_name(seq))
        vf = await ctx.create(path)
        return cls(ctx, path, vf)

    @property
    def broken(self) -> BaseException | None:
        """The error that made the file unusable (not a full disk: see BufferedWriter)."""
        return self._writer.broken

    @property
    def size(self) -> int:
        """Bytes appended so far."""
        return self._writer.offset

    async def append(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` (immutable: a put batch's values); the offset it starts at."""
        return await self._writer.write(data, borrow=True)

    async def finish(self) -> None:
        """Write the tail and wait for every write; no appends after this."""
        await self._writer.finish()
        self._finished = True

    async def read(self, offset: int, length: int) -> bytes:
        if not self._finished:
            return await self._writer.read_at(offset, length)
        return await self._vf.read_exact_at(length, offset)

    async def map_all(self) -> MappedFile:
        """The whole (finished) file, mapped read-only (see :class:`MappedFile`)."""
        assert self._finished, "map_all before finish"
        size = self.size
        if not size:
            return MappedFile(None)
        mapping = await self._vf.map_readonly(size)
        # Pages evicted since they were written are read back by the kernel ahead of the
        # gather (asynchronously), not one page fault at a time.
        mapping.madvise(mmap.MADV_WILLNEED)
        return MappedFile(mapping)

    async def delete(self) -> None:
        """Close and remove the file (shielded: this is clean-up).

        A large file is cut down in steps first: removing a file drops its pages from the
        page cache in the same call (a 256 MiB layer's: ~30 ms in one ``unlink`` on the
        event loop under std-fs); ``ftruncate`` to a shorter length at a time spreads that
        over several loop steps.
        """
        with cleanup_shield():
            try:
                await self._writer.abandon()
                if self._finished:
                    size = self.size
                    while size > _DELETE_STEP:
                        size -= _DELETE_STEP
                        await self._vf.set_len(size)
                        await cooperative_checkpoint()
            except OSError:
                pass  # the unlink below removes it anyway
            finally:
                await self._vf.close()
                try:
                    await self.ctx.unlink(self.path)
                except FileNotFoundError:
                    pass


class MappedFile:
    """A finished ephemeral file mapped read-only: ``data`` is its bytes as a ``uint8`` array.

    The flush reads the values of a frozen layer in key order, i.e. all over the file. It
    used to read the whole file into a ``bytearray(size)`` first: one memset of the whole
    layer while holding the GIL (115-444 ms, a stall of the loop wherever the flush runs),
    then a copy of every byte. The mapping shares the page cache's pages (the file was just
    written, so they are cached): no copy, no zeroing, only minor page faults as the
    values are gathered. ``close`` drops ``data`` first (a mapping with live views cannot
    be closed).
    """

    def __init__(self, mapping: FileMapping | None) -> None:
        self._mapping = mapping
        self.data: npt.NDArray[np.uint8] = (
            mapping.array() if mapping is not None else np.empty(0, np.uint8)
        )

    def release(self, ranges: list[tuple[int, int]]) -> None:
        """Drop the pages of byte ``ranges`` (``(start, end)``, ``start`` page-aligned)
        from this process's mapping: ``MADV_DONTNEED`` on a shared file mapping removes
        only the page-table entries (the pages stay in the page cache, nothing is written),
        so RSS falls, and touching them again is a minor fault that maps the same bytes."""
        mapping = self._mapping
        if mapping is None:
            return
        for start, end in ranges:
            if end > start:
                mapping.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        """Drop this handle's references: the mapping is unmapped with the last of them
        (at once, unless a view is still alive: say, in the traceback of a failed flush,
        or a gather not yet written; then with that view)."""
        self.data = np.empty(0, np.uint8)
        self._mapping = None
