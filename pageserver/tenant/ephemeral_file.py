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

import os

import numpy as np
import numpy.typing as npt

from pageserver.io import BufferedWriter, IoContext, VirtualFile, cleanup_shield

_PREFIX = "ephemeral-"
#: Chunk size of :meth:`EphemeralFile.read_all`'s sequential reads.
_READ_ALL_CHUNK = 4 << 20


class EphemeralFile:
    def __init__(self, ctx: IoContext, path: str, vf: VirtualFile) -> None:
        self.ctx = ctx
        self.path = path
        self._vf = vf
        self._writer = BufferedWriter(vf)
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
        """Append ``data``; the offset it starts at."""
        return await self._writer.write(data)

    async def finish(self) -> None:
        """Write the tail and wait for every write; no appends after this."""
        await self._writer.finish()
        self._finished = True

    async def read(self, offset: int, length: int) -> bytes:
        if not self._finished:
            return await self._writer.read_at(offset, length)
        return await self._vf.read_exact_at(length, offset)

    async def read_all(self) -> npt.NDArray[np.uint8]:
        """The whole (finished) file, in large sequential reads.

        Into ``np.empty``, not ``bytearray(size)``: a bytearray is zeroed first, one memset
        of the whole layer (plus its page faults) while holding the GIL (115-444 ms for a
        full layer, a stall of the loop wherever the flush runs). An untouched allocation
        of that size is fresh anonymous memory; its pages are faulted in by the reads
        themselves, in the kernel, a chunk at a time.
        """
        size = self.size
        data = np.empty(size, np.uint8)
        view = data.data
        pos = 0
        while pos < size:
            n = min(_READ_ALL_CHUNK, size - pos)
            await self._vf.read_exact_at_into(view[pos : pos + n], pos)
            pos += n
        return data

    async def delete(self) -> None:
        """Close and remove the file (shielded: this is clean-up)."""
        with cleanup_shield():
            try:
                await self._writer.abandon()
            finally:
                await self._vf.close()
                try:
                    await self.ctx.unlink(self.path)
                except FileNotFoundError:
                    pass
