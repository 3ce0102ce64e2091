"""The io engine interface: what every engine implements and what everything above awaits.

An io engine is the one place where file-system syscalls happen. Everything above it
(``VirtualFile``, the buffered writer, layer writers, the timeline) receives an engine
*object* and awaits its methods; nothing outside ``pageserver.io`` asks which engine it
holds. Two implementations exist, siblings that know this module and not each other:

``std-fs`` (:mod:`pageserver.io.std_fs`)
    Plain blocking syscalls (``os.pread``, ``os.pwrite``, ``os.fsync``...). The
    coroutines never suspend, which is what lets the conditional-offload helper
    (:mod:`pageserver.io.offload`) run a whole layer-writing job in one worker thread by
    driving its coroutine with ``send(None)``: the analogue of Neon's
    ``spawn_blocking(|| block_on(...))``.

``trio-uring`` (:mod:`pageserver.io.uring.engine`)
    Every operation is an io_uring submission awaited on the trio loop.

Which one runs is decided in one place, :mod:`pageserver.io.select` (the only module
that imports both).

Why an object rather than a process-global switch: one test process runs the whole suite
on both engines, and the daemon resolves its engine exactly once (config, environment
override, probe) in :func:`pageserver.io.select.resolve_engine`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pageserver.io.gather import Gather

#: The ``kind`` of each engine (its name in the config and in ``status``).
STD_FS = "std-fs"
TRIO_URING = "trio-uring"


@dataclass(frozen=True, slots=True)
class FileStat:
    """What ``metadata()`` reports: the size, and enough to tell files apart."""

    size: int
    mode: int = 0
    ino: int = 0


class PendingIo(abc.ABC):
    """An operation that was started and whose result is awaited later."""

    @abc.abstractmethod
    async def result(self) -> int:
        """Wait (uncancellably: the kernel may still use the buffer) for the result."""

    @abc.abstractmethod
    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once the kernel is done with the operation (at once if it is).

        Runs on the trio loop (or inline); used to release what the operation pinned
        (its VirtualFile slot) as soon as it completes, even if nobody awaits the result
        for a long time (an idle writer's last write-behind buffer).
        """


class DoneIo(PendingIo):
    __slots__ = ("_value",)

    def __init__(self, value: int) -> None:
        self._value = value

    async def result(self) -> int:
        return self._value

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        fn()


class IoEngine(abc.ABC):
    """The asynchronous file-system interface both engines implement.

    Buffers: ``read_at`` fills a caller-provided writable buffer and returns the byte
    count (a short read is possible, as with ``pread``); ``write_at`` may write fewer
    bytes than given (as ``pwrite``). Loops over short I/O live in ``VirtualFile``.
    Errors are raised as the usual ``OSError`` subclasses with the kernel's errno.
    """

    kind: ClassVar[str]

    #: How many buffered-writer buffers may be in flight at once. ``1`` means writes are
    #: issued and completed one at a time (no write-behind).
    write_behind_depth: ClassVar[int] = 1

    #: Whether layer-writing jobs must leave the event loop (see ``offload``).
    runs_jobs_in_thread: ClassVar[bool] = False

    @abc.abstractmethod
    async def open(self, path: str, flags: int, mode: int = 0o644) -> int: ...

    @abc.abstractmethod
    async def read_at(self, fd: int, buf: bytearray | memoryview, offset: int) -> int: ...

    @abc.abstractmethod
    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int: ...

    @abc.abstractmethod
    async def fsync(self, fd: int) -> None: ...

    @abc.abstractmethod
    async def fdatasync(self, fd: int) -> None: ...

    @abc.abstractmethod
    async def stat(self, fd: int) -> FileStat: ...

    @abc.abstractmethod
    async def set_len(self, fd: int, length: int) -> None: ...

    @abc.abstractmethod
    async def close(self, fd: int) -> None: ...

    @abc.abstractmethod
    async def rename(self, src: str, dst: str) -> None:
        """Rename, replacing ``dst`` if it exists (crash-safe overwrite)."""

    @abc.abstractmethod
    async def rename_noreplace(self, src: str, dst: str) -> None:
        """Rename, failing with ``FileExistsError`` if ``dst`` exists (layers)."""

    @abc.abstractmethod
    async def unlink(self, path: str) -> None: ...

    @abc.abstractmethod
    async def rmdir(self, path: str) -> None:
        """Remove the empty directory ``path`` (``unlinkat(..., AT_REMOVEDIR)``)."""

    async def submit_write_at(
        self, fd: int, data: bytes | bytearray | memoryview, offset: int
    ) -> PendingIo:
        """Start a write and return at once with a handle to await its completion.

        This is what write-behind in the buffered writer is built on. The default does the
        write before returning (engines with ``write_behind_depth == 1``); the uring engine
        queues the submission and returns while the kernel works. The caller must keep
        ``data`` unmodified and the fd open until ``await pending.result()`` returned.
        """
        return DoneIo(await self.write_at(fd, data, offset))

    async def write_gather_at(self, fd: int, gather: Gather, offset: int) -> int:
        """Write ``gather``'s pieces back to back at ``offset`` (one vectored write; it may
        be short, as ``pwritev``: at most :data:`~pageserver.io.gather.IOV_MAX` pieces go
        at once). The default joins the pieces and writes them with :meth:`write_at`, for
        an engine without vectored writes; both engines override it."""
        return await self.write_at(fd, gather.tobytes(), offset)

    async def submit_write_gather_at(self, fd: int, gather: Gather, offset: int) -> PendingIo:
        """:meth:`write_gather_at`, started: the gathered form of :meth:`submit_write_at`
        (the caller keeps ``gather`` and its memory unchanged until the result)."""
        return DoneIo(await self.write_gather_at(fd, gather, offset))

    @abc.abstractmethod
    async def submit_writeback(self, fd: int, offset: int, nbytes: int) -> PendingIo:
        """Start writing ``[offset, offset + nbytes)``'s dirty pages to the disk; do not wait.

        ``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``: the kernel queues
        the writeback and returns (std-fs runs the syscall before returning, in whatever
        thread runs the job; trio-uring queues ``IORING_OP_SYNC_FILE_RANGE`` and returns
        at once, the handle completing when the kernel has queued the I/O). It promises
        nothing about durability: ``fsync`` stays the one durability point. Without a
        ``WAIT`` flag the call does not consume a writeback error either (the kernel keeps
        it for the file's next ``fsync``), so the caller may ignore the result: the
        buffered writer does (a hint). ``nbytes`` 0 means "to the end of the file", as in
        the syscall. An error is raised here (std-fs) or by ``result()`` (trio-uring).
        """

    async def fsync_dir(self, path: str) -> None:
        """Make a directory's entries durable: open it read-only, fsync, close."""
        fd = await self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await self.fsync(fd)
        finally:
            await self.close(fd)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources (the uring engine's rings).

        Idempotent: an :class:`~pageserver.io.IoContext` closes the engine it owns, and a
        caller that closes the engine once more afterwards does no harm.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}>"
