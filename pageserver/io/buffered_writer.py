"""The buffered append writer: the one way bulk data reaches a file.

Used by the ephemeral file of the in-memory layer, the blob writer of delta and image
layers, and the benchmarks. It turns many small appends into writes of whole buffers
(at least 64 KiB; only the last one may be partial), which is what both engines want:
``std-fs`` pays a syscall per write, ``trio-uring`` a submission and a completion.

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
"""

from __future__ import annotations

from collections import deque

from pageserver.io.virtual_file import PendingWrite, VirtualFile

DEFAULT_BUFFER_SIZE = 64 * 1024
MIN_BUFFER_SIZE = 64 * 1024


class BufferedWriter:
    """Append-only writer on top of a :class:`VirtualFile`.

    ``start_offset`` is where the first appended byte goes (layer writers start at 8192,
    after the summary page); offsets reported by :meth:`write` are absolute file offsets.
    """

    def __init__(
        self,
        file: VirtualFile,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        start_offset: int = 0,
    ) -> None:
        if buffer_size < MIN_BUFFER_SIZE:
            raise ValueError(f"buffer_size must be at least {MIN_BUFFER_SIZE}")
        self.file = file
        self.buffer_size = buffer_size
        self._depth = max(1, file.write_behind_depth)
        self._buf = bytearray(buffer_size)
        self._fill = 0
        #: Absolute offset of ``_buf[0]``.
        self._buf_offset = start_offset
        self._free: list[bytearray] = []
        #: Writes in flight, oldest first: (absolute offset, buffer, length, pending).
        self._inflight: deque[tuple[int, bytearray, int, PendingWrite]] = deque()
        self._closed = False
        #: The first write error: the writer is unusable after it (see ``_fail``).
        self._error: BaseException | None = None

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte appended (= logical file length)."""
        return self._buf_offset + self._fill

    @property
    def durable_offset(self) -> int:
        """Bytes below this offset have been handed to (and completed by) the kernel."""
        if self._inflight:
            return self._inflight[0][0]
        return self._buf_offset

    def _check(self) -> None:
        if self._error is not None:
            raise OSError(
                getattr(self._error, "errno", None) or 5,
                f"{self.file.path}: an earlier write failed ({self._error!r}); the writer is unusable",
            )

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return the absolute offset where it starts."""
        if self._error is not None:
            self._check()
        start = self._buf_offset + self._fill
        n = len(data)
        room = self.buffer_size - self._fill
        if n <= room:
            # The hot path: one slice assignment.
            self._buf[self._fill : self._fill + n] = data
            self._fill += n
            if n == room:
                await self._submit_full()
            return start
        view = memoryview(data).cast("B")
        pos = 0
        while pos < n:
            room = self.buffer_size - self._fill
            take = min(room, n - pos)
            self._buf[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.buffer_size:
                await self._submit_full()
        return start

    async def _submit_full(self) -> None:
        await self._submit(self.buffer_size)

    async def _submit(self, length: int) -> None:
        self._check()
        buf = self._buf
        offset = self._buf_offset
        while len(self._inflight) >= self._depth:
            await self._complete_oldest()
        pending = await self.file.start_write_all_at(memoryview(buf)[:length], offset)
        self._inflight.append((offset, buf, length, pending))
        if len(self._inflight) >= self._depth:
            # Keep at most ``depth`` writes in flight: with depth one (std-fs) this makes
            # every write complete here, before the buffer is filled again.
            await self._complete_oldest()
        self._buf = self._free.pop() if self._free else bytearray(self.buffer_size)
        self._buf_offset = offset + length
        self._fill = 0

    async def _complete_oldest(self) -> None:
        _off, buf, _length, pending = self._inflight[0]
        try:
            await pending.wait()
        except BaseException as e:
            # A failed write leaves a hole where bytes already handed out (their offsets
            # reported, maybe indexed) should be. Nothing after it can be trusted: every
            # later write and read raises. The buffer is not reused (it may still be
            # ``_buf`` or be read by ``read_at``).
            self._inflight.popleft()
            if self._error is None:
                self._error = e
            raise
        self._inflight.popleft()
        if buf is not self._buf:
            self._free.append(buf)

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
        """Write the last (partial) buffer, wait for all writes; return the file length."""
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
        while self._inflight:
            try:
                await self._complete_oldest()
            except BaseException:  # noqa: BLE001 - see docstring
                pass
        self._closed = True

    async def read_at(self, offset: int, n: int) -> bytes:
        """Read ``n`` bytes at absolute ``offset`` of the logical file.

        The parts still in memory (the current buffer, buffers in flight) are copied
        *before* any await: a concurrent ``write`` may submit the current buffer, reuse a
        completed one or move ``durable_offset`` while this read waits for the disk. Only
        ``[offset, durable_offset)`` is read from the file, and those bytes never change.
        """
        self._check()
        end = offset + n
        if end > self.offset:
            raise EOFError(f"read past the end of {self.file.path}: {offset}+{n} > {self.offset}")
        buf_off = self._buf_offset
        if offset >= buf_off:
            # Entirely in the current buffer: the common case for fresh ephemeral data.
            i = offset - buf_off
            return bytes(self._buf[i : i + n])
        out = bytearray(n)
        disk_end = min(end, self.durable_offset)
        for off, buf, length, _p in self._inflight:
            lo = max(offset, off)
            hi = min(end, off + length)
            if lo < hi:
                out[lo - offset : hi - offset] = buf[lo - off : hi - off]
        if end > buf_off:
            lo = max(offset, buf_off)
            out[lo - offset :] = self._buf[lo - buf_off : end - buf_off]
        if offset < disk_end:
            await self.file.read_exact_at_into(memoryview(out)[: disk_end - offset], offset)
        self._check()
        return bytes(out)
