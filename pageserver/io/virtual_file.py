"""VirtualFile: file handles multiplexed over a bounded table of file descriptors.

A pageserver may have far more layer files than it may keep open. Each ``VirtualFile``
remembers its path and open flags; the real descriptor lives in one of
``max_file_descriptors`` slots of a :class:`SlotTable`. When every slot is taken, the
clock ("second chance") algorithm picks a victim: the hand sweeps the slots, clearing
each slot's ``recently_used`` bit, and takes the first slot whose bit was already clear.
The victim's descriptor is closed; its ``VirtualFile`` notices on its next operation
that the slot now belongs to somebody else and reopens its path, with
``O_CREAT``/``O_EXCL``/``O_TRUNC`` stripped (the file exists by then, and must not be
truncated a second time).

Pinning. The dangerous moment is between reading ``slot.fd`` and the kernel finishing
the operation on it: if the slot were evicted in between, the descriptor number could be
closed and reused by an unrelated ``open``, and a write would land in the wrong file.
So every operation *pins* its slot (a counter changed under a ``threading.Lock``) for
its whole duration, including the wait for an io_uring completion, and eviction skips
pinned slots.

Who uses the table. Many trio tasks share one table; under the ``std-fs`` engine so do
the worker threads that run layer flushes (see :mod:`pageserver.io.offload`). Hence the
``threading.Lock`` rather than a trio lock, and two ways to wait when every slot is
pinned: a worker thread (no event loop) waits on a ``threading.Condition``; a task on
the loop parks on a ``trio.Event`` that whoever unpins sets through the run's
``TrioToken``. A task on the loop must never block on the Condition: under trio-uring,
pins are held across awaits, so the holder could never run to release them.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import structlog
import trio

from pageserver import failpoints, metrics
from pageserver.io.engine import FileStat, IoEngine
from pageserver.io.gather import Gather
from pageserver.io.mapping import FileMapping, map_readonly_fd
from pageserver.io.offload import on_trio_loop

if TYPE_CHECKING:
    from pageserver.io.engine import PendingIo

log = structlog.get_logger("pageserver.io")

T = TypeVar("T")

#: Errors of a write or fsync that leave the file's state unknown. Retrying an fsync after
#: such an error can report success for data that never reached the disk ("fsyncgate"),
#: so the only safe reaction is to stop the process and recover from durable state.
FATAL_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.EACCES})
#: The same for an open that may write (a new layer, the ephemeral file, a crash-safe
#: temp): EIO or EROFS there means the file system stopped taking writes (an ext4 that shut
#: down answers every open so). Going on would only make every put and flush fail, and a
#: flush retry for ever; abort and recover from durable state, as for a failed write.
#: (EACCES is a configuration problem, not an unknown state: it propagates.)
FATAL_OPEN_ERRNOS = frozenset({errno.EIO, errno.EROFS})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

_REOPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_TRUNC


class UnexpectedEof(EOFError):
    """A read at an offset found fewer bytes than asked for before the end of the file."""


def fatal_io_error(op: str, path: str, exc: OSError) -> None:
    """Log an unrecoverable I/O error and abort the process. Never returns."""
    log.critical("fatal io error, aborting", op=op, path=path, errno=exc.errno, error=str(exc))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.abort()


class _Slot:
    __slots__ = ("fd", "owner", "recently_used", "pins")

    def __init__(self) -> None:
        self.fd = -1
        self.owner: VirtualFile | None = None
        self.recently_used = False
        self.pins = 0


class SlotTable:
    """The bounded descriptor table shared by every VirtualFile of one :class:`IoContext`."""

    def __init__(self, engine: IoEngine, size: int) -> None:
        if size < 1:
            raise ValueError("max_file_descriptors must be at least 1")
        self.engine = engine
        self.size = size
        self._slots = [_Slot() for _ in range(size)]
        self._hand = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._loop_waiters: list[tuple[trio.lowlevel.TrioToken, trio.Event]] = []
        #: Count of reopens after eviction, for tests (mirrors the metric).
        self.reopen_count = 0

    # -- waiting for the table to change ------------------------------------------------

    def _notify_locked(self) -> None:
        """Wake everybody waiting for a slot to be unpinned or an open to finish."""
        self._cond.notify_all()
        if self._loop_waiters:
            waiters, self._loop_waiters = self._loop_waiters, []
            for token, event in waiters:
                try:
                    token.run_sync_soon(event.set)
                except trio.RunFinishedError:
                    pass

    async def _wait_locked_released(self, still_needed: Callable[[], bool]) -> None:
        """Wait until the table changes, if ``still_needed()`` (checked under the lock)."""
        if not on_trio_loop():
            with self._lock:
                if still_needed():
                    self._cond.wait(timeout=1.0)
            return
        event = trio.Event()
        entry = (trio.lowlevel.current_trio_token(), event)
        with self._lock:
            if not still_needed():
                return
            self._loop_waiters.append(entry)
        try:
            await event.wait()
        finally:
            with self._lock:
                if entry in self._loop_waiters:
                    self._loop_waiters.remove(entry)

    # -- pinning --------------------------------------------------------------------------

    async def pin(self, vf: VirtualFile) -> _Slot:
        """Return ``vf``'s slot pinned, reopening the file if its slot was taken."""
        while True:
            with self._lock:
                slot = vf._slot
                if slot is not None and slot.owner is vf:
                    if slot.fd >= 0:
                        slot.pins += 1
                        slot.recently_used = True
                        return slot
                    # Another task is (re)opening this file right now: wait for it.
                    victim = None
                else:
                    victim = self._find_victim_locked()
                    if victim is not None:
                        old_fd, old_owner = victim.fd, victim.owner
                        if old_owner is not None:
                            old_owner._slot = None
                        victim.owner = vf
                        victim.fd = -1
                        victim.pins = 1
                        victim.recently_used = True
                        vf._slot = victim
            if victim is None:
                await self._wait_locked_released(
                    lambda: (vf._slot is not None and vf._slot.owner is vf and vf._slot.fd < 0)
                    or (
                        (vf._slot is None or vf._slot.owner is not vf)
                        and all(s.pins for s in self._slots)
                    )
                )
                continue
            return await self._fill(victim, vf, old_fd)

    async def _fill(self, slot: _Slot, vf: VirtualFile, old_fd: int) -> _Slot:
        """Close the victim's old descriptor and open ``vf`` into the reserved slot."""
        try:
            if old_fd >= 0:
                t0 = time.perf_counter()
                try:
                    await self.engine.close(old_fd)
                except OSError as e:  # pragma: no cover - close of a valid fd
                    log.warning("close of evicted fd failed", error=str(e))
                metrics.OP_SECONDS["close-by-replace"].observe(time.perf_counter() - t0)
                metrics.VIRTUAL_FILE_OPEN_SLOTS.dec()
            reopen = vf._opened_once
            flags = vf._flags & ~_REOPEN_STRIP if reopen else vf._flags
            t0 = time.perf_counter()
            await failpoints.failpoint("virtual-file-open")
            fd = await self.engine.open(vf.path, flags, vf._mode)
            op = "open-after-replace" if reopen else "open"
            metrics.OP_SECONDS[op].observe(time.perf_counter() - t0)
            metrics.VIRTUAL_FILE_OPEN_SLOTS.inc()
        except BaseException as e:
            with self._lock:
                if slot.owner is vf:
                    slot.owner = None
                    vf._slot = None
                slot.fd = -1
                slot.pins = 0
                slot.recently_used = False
                self._notify_locked()
            if isinstance(e, OSError) and e.errno in FATAL_OPEN_ERRNOS and vf._flags & _WRITE_FLAGS:
                fatal_io_error("open", vf.path, e)
            raise
        with self._lock:
            slot.fd = fd
            if reopen:
                self.reopen_count += 1
            vf._opened_once = True
            self._notify_locked()
        return slot

    def _find_victim_locked(self) -> _Slot | None:
        slots = self._slots
        n = self.size
        hand = self._hand
        for _ in range(2 * n + 1):
            slot = slots[hand]
            hand = (hand + 1) % n
            if slot.pins:
                continue
            if slot.recently_used and slot.owner is not None:
                slot.recently_used = False
                continue
            self._hand = hand
            return slot
        self._hand = hand
        return None

    def pin_if_open(self, vf: VirtualFile) -> _Slot | None:
        """``vf``'s slot pinned if it holds an open descriptor now, else None: never opens,
        never waits, never raises (for :meth:`VirtualFile.start_writeback`)."""
        with self._lock:
            slot = vf._slot
            if slot is not None and slot.owner is vf and slot.fd >= 0:
                slot.pins += 1
                return slot
        return None

    def unpin(self, slot: _Slot) -> None:
        with self._lock:
            slot.pins -= 1
            if slot.pins == 0:
                self._notify_locked()

    async def release(self, vf: VirtualFile) -> None:
        """Close ``vf``'s descriptor, waiting for operations in flight on it to finish."""
        while True:
            with self._lock:
                slot = vf._slot
                if slot is None or slot.owner is not vf:
                    vf._slot = None
                    return
                if slot.pins == 0 and slot.fd >= 0:
                    fd = slot.fd
                    slot.fd = -1
                    slot.owner = None
                    slot.recently_used = False
                    vf._slot = None
                    break
            await self._wait_locked_released(
                lambda: vf._slot is not None
                and vf._slot.owner is vf
                and (vf._slot.pins > 0 or vf._slot.fd < 0)
            )
        t0 = time.perf_counter()
        try:
            await self.engine.close(fd)
        finally:
            metrics.OP_SECONDS["close"].observe(time.perf_counter() - t0)
            metrics.VIRTUAL_FILE_OPEN_SLOTS.dec()
            with self._lock:
                self._notify_locked()

    def open_fd_count(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots if s.fd >= 0)

    async def close_all(self) -> None:
        """Close every descriptor (context shutdown).

        The caller's operations must have finished, but a slot may still be pinned by
        one nobody awaits: a writeback hint (:meth:`VirtualFile.start_writeback`) under
        trio-uring holds its pin until its CQE comes. So pinned slots are taken too, and
        :meth:`release` waits for their pins to drop; skipping them leaked the fd.
        """
        while True:
            with self._lock:
                busy = [s for s in self._slots if s.owner is not None]
            if not busy:
                return
            for slot in busy:
                owner = slot.owner
                if owner is not None:
                    await self.release(owner)


class VirtualFile:
    """A file handle whose descriptor may be closed and reopened behind its back.

    Create one through :class:`pageserver.io.IoContext` (``ctx.open``, ``ctx.create_new``
    ...). All operations are positional (``*_at``): there is no file cursor to restore
    after a reopen.
    """

    __slots__ = ("path", "_table", "_flags", "_mode", "_slot", "_opened_once", "_no_sync")

    def __init__(self, table: SlotTable, path: str, flags: int, mode: int, no_sync: bool) -> None:
        self.path = path
        self._table = table
        self._flags = flags
        self._mode = mode
        self._slot: _Slot | None = None
        self._opened_once = False
        self._no_sync = no_sync

    @classmethod
    async def open_with_flags(
        cls, table: SlotTable, path: str, flags: int, mode: int = 0o644, *, no_sync: bool = False
    ) -> VirtualFile:
        vf = cls(table, os.fspath(path), flags, mode, no_sync)
        slot = await table.pin(vf)  # opens now, so that errors (ENOENT, EEXIST) surface here
        table.unpin(slot)
        return vf

    def __repr__(self) -> str:
        return f"<VirtualFile {self.path!r}>"

    @property
    def no_sync(self) -> bool:
        """Whether fsyncs of this file are skipped (the context's ``no_sync``)."""
        return self._no_sync

    @property
    def write_behind_depth(self) -> int:
        """How many writes to this file may be in flight at once (its engine's depth)."""
        return self._table.engine.write_behind_depth

    # -- reads ------------------------------------------------------------------------------

    async def read_exact_at_into(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill ``buf`` from ``offset``; a short file raises :class:`UnexpectedEof`."""
        table = self._table
        engine = table.engine
        view = memoryview(buf).cast("B")
        total = len(view)
        done = 0
        slot = await table.pin(self)
        t0 = time.perf_counter()
        try:
            while done < total:
                n = await engine.read_at(slot.fd, view[done:], offset + done)
                if n == 0:
                    raise UnexpectedEof(
                        f"{self.path}: wanted {total} bytes at offset {offset}, file ended after {done}"
                    )
                done += n
        finally:
            table.unpin(slot)
            metrics.OP_SECONDS["read"].observe(time.perf_counter() - t0)
            metrics.BYTES_READ.inc(done)

    async def read_exact_at(self, n: int, offset: int) -> bytes:
        buf = bytearray(n)
        await self.read_exact_at_into(buf, offset)
        return bytes(buf)

    # -- writes -----------------------------------------------------------------------------

    async def write_all_at(self, data: bytes | bytearray | memoryview | Gather, offset: int) -> None:
        """Write all of ``data`` at ``offset``, looping over short writes. A
        :class:`~pageserver.io.gather.Gather` is written with vectored writes."""
        table = self._table
        slot = await table.pin(self)
        try:
            view = data if isinstance(data, Gather) else memoryview(data).cast("B")
            await self._write_rest(slot, view, 0, offset)
        finally:
            table.unpin(slot)

    async def _write_rest(
        self, slot: _Slot, view: memoryview | Gather, done: int, offset: int
    ) -> None:
        engine = self._table.engine
        total = len(view)
        start = done
        t0 = time.perf_counter()
        try:
            while done < total:
                await failpoints.failpoint("virtual-file-write")
                if isinstance(view, Gather):
                    n = await engine.write_gather_at(slot.fd, view.tail(done), offset + done)
                else:
                    n = await engine.write_at(slot.fd, view[done:], offset + done)
                if n == 0:
                    raise OSError(errno.EIO, f"{self.path}: write returned 0 bytes")
                done += n
        except OSError as e:
            if e.errno in FATAL_ERRNOS:
                fatal_io_error("write", self.path, e)
            raise
        finally:
            metrics.OP_SECONDS["write"].observe(time.perf_counter() - t0)
            metrics.BYTES_WRITTEN.inc(done - start)

    async def start_write_all_at(
        self, data: bytes | bytearray | memoryview | Gather, offset: int
    ) -> PendingWrite:
        """Start writing ``data`` at ``offset``; ``await (…).wait()`` finishes it.

        The slot stays pinned until the kernel is done with the write (the engine calls
        back on completion), so the descriptor cannot be evicted and reused under it;
        ``data`` must stay unmodified until ``wait()`` returned, which the caller must
        always do (the buffered writer does, also on error and cancellation). A
        :class:`~pageserver.io.gather.Gather` goes out as one vectored write.
        """
        table = self._table
        # Before the pin: a ``data`` that cannot be cast would otherwise leave the slot
        # pinned for good (and a close waiting for it forever).
        view = data if isinstance(data, Gather) else memoryview(data).cast("B")
        slot = await table.pin(self)
        try:
            await failpoints.failpoint("virtual-file-write")
            if isinstance(view, Gather):
                pending = await table.engine.submit_write_gather_at(slot.fd, view, offset)
            else:
                pending = await table.engine.submit_write_at(slot.fd, view, offset)
        except BaseException as e:
            table.unpin(slot)
            if isinstance(e, OSError) and e.errno in FATAL_ERRNOS:
                fatal_io_error("write", self.path, e)
            raise
        pending.add_done_callback(lambda: table.unpin(slot))
        return PendingWrite(self, view, offset, pending)

    async def start_writeback(self, offset: int, nbytes: int) -> None:
        """Start writing ``[offset, offset + nbytes)`` back to the disk; do not wait for it.

        A hint (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, see
        :meth:`IoEngine.submit_writeback`): it makes the final fsync shorter by having the
        disk work while the file is still being produced, and promises nothing. So an error
        (``EINVAL`` or ``ESPIPE`` from a file system or file that does not support it,
        ``EIO``...) is ignored here: never retried, never fatal. That is safe because
        without a ``WAIT`` flag the call leaves a writeback error recorded for the
        file's next fsync, which is the durability point and aborts on it as always.
        A no-op under ``no_sync`` (nothing durable is promised there). The slot stays
        pinned until the kernel is done with the request, as for a write in flight.

        Also a no-op when the file holds no descriptor now (its slot was taken since the
        caller's write): the hint is skipped rather than the file reopened for it. A
        reopen would cost an open and a close (and evict another file) for a hint, and
        it can fail (EMFILE, the ``virtual-file-open`` failpoint; EIO/EROFS/EACCES even
        abort in :meth:`SlotTable.pin`): that would fail the caller's write after its
        bytes were written, which a hint must never do. The skipped range is left to the
        kernel and the fsync, as without hints.
        """
        if self._no_sync:
            return
        table = self._table
        slot = table.pin_if_open(self)
        if slot is None:
            return
        try:
            pending = await table.engine.submit_writeback(slot.fd, offset, nbytes)
        except OSError as e:
            table.unpin(slot)
            log.debug("writeback hint failed", path=self.path, errno=e.errno)
            return
        except BaseException:
            table.unpin(slot)
            raise
        # The result is never awaited: the unpin runs when the CQE comes (trio-uring) or
        # at once (std-fs, which ran the syscall above).
        pending.add_done_callback(lambda: table.unpin(slot))

    # -- durability and metadata ----------------------------------------------------------------

    async def _sync(self, data_only: bool, force: bool) -> None:
        if self._no_sync and not force:
            return
        table = self._table
        slot = await table.pin(self)
        t0 = time.perf_counter()
        try:
            await failpoints.failpoint("virtual-file-fsync")
            if data_only:
                await table.engine.fdatasync(slot.fd)
            else:
                await table.engine.fsync(slot.fd)
        except OSError as e:
            # Never retry: after a failed fsync the kernel may have dropped the dirty pages
            # and a second fsync would report success for data that is gone.
            if e.errno in FATAL_ERRNOS:
                fatal_io_error("fsync", self.path, e)
            raise
        finally:
            table.unpin(slot)
            metrics.OP_SECONDS["fsync"].observe(time.perf_counter() - t0)

    async def sync_all(self, *, force: bool = False) -> None:
        """fsync; a no-op under ``no_sync`` unless ``force`` (crash-safe overwrite)."""
        await self._sync(False, force)

    async def sync_data(self, *, force: bool = False) -> None:
        await self._sync(True, force)

    async def metadata(self) -> FileStat:
        table = self._table
        slot = await table.pin(self)
        t0 = time.perf_counter()
        try:
            return await table.engine.stat(slot.fd)
        finally:
            table.unpin(slot)
            metrics.OP_SECONDS["metadata"].observe(time.perf_counter() - t0)

    async def map_readonly(self, length: int) -> FileMapping:
        """The first ``length`` bytes of the file, mapped read-only (``length`` > 0).

        For reading a large file whose pages are in the page cache in an order other than
        the file's (the flush of a frozen ephemeral file): the mapping shares the page
        cache's pages, so nothing is copied and no fresh memory is zeroed, where reading
        into a buffer would do both. The mapping stays valid after the slot is reused
        (it holds its own reference to the file, and no descriptor: see
        :mod:`pageserver.io.mapping`); it goes with the last reference to it. Touching a
        page that is not cached is a disk read in the page fault (by whichever thread
        touches it).
        """
        table = self._table
        slot = await table.pin(self)
        try:
            return map_readonly_fd(slot.fd, length)
        finally:
            table.unpin(slot)

    async def set_len(self, length: int) -> None:
        table = self._table
        slot = await table.pin(self)
        try:
            await table.engine.set_len(slot.fd, length)
        finally:
            table.unpin(slot)

    async def close(self) -> None:
        """Close the descriptor (if it is open). The handle must not be used afterwards."""
        await self._table.release(self)


class PendingWrite:
    """A write started by :meth:`VirtualFile.start_write_all_at`."""

    __slots__ = ("_vf", "_view", "_offset", "_pending", "_done")

    def __init__(
        self, vf: VirtualFile, view: memoryview | Gather, offset: int, pending: PendingIo
    ) -> None:
        self._vf = vf
        self._view = view
        self._offset = offset
        self._pending = pending
        self._done = False

    async def wait(self) -> None:
        """Wait for the write to complete (finishing a short write); idempotent."""
        if self._done:
            return
        self._done = True
        vf = self._vf
        try:
            n = await self._pending.result()
            if n == 0 and len(self._view):
                raise OSError(errno.EIO, f"{vf.path}: write returned 0 bytes")
        except OSError as e:
            if e.errno in FATAL_ERRNOS:
                fatal_io_error("write", vf.path, e)
            raise
        metrics.BYTES_WRITTEN.inc(n)
        if n < len(self._view):
            # The slot was released when the kernel completed the short write: the rest
            # goes through an ordinary (pinning) write.
            view = self._view
            rest = view.tail(n) if isinstance(view, Gather) else view[n:]
            await vf.write_all_at(rest, self._offset + n)
