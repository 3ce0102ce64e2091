"""The ``trio-uring`` io engine: every file operation is an io_uring submission.

The binding and the per-run ring live in :mod:`pageserver.io.uring`; this module maps the
:class:`~pageserver.io.engine.IoEngine` methods onto SQEs and turns negative ``cqe.res``
values into the same ``OSError`` subclasses ``os.*`` raises (``OSError(errno, strerror,
filename)`` picks ``FileNotFoundError``, ``FileExistsError``... by itself).

Every method follows the same shape, written out by hand in each (a shared helper costs
an extra coroutine frame per operation, and this is the hot path): find the run's ring
(one ``RunVar`` lookup; the slow path creates the ring or waits for room), pin the memory
the kernel will touch, queue the SQE, park until the CQE. See ``uring/_trio.py`` for what
happens to a task cancelled while parked.

``set_len`` uses ``IORING_OP_FTRUNCATE`` where the kernel has it (Linux 6.9+). On older
kernels it falls back to a plain ``os.ftruncate`` on the event loop: one of the two
blocking syscalls this engine may issue. Truncation is a metadata operation that our
callers use on files they own (to cut off a torn tail), rarely and not on a
latency-critical path, and :func:`probe_uring` reports the fallback as acceptable rather
than refusing the engine for it. The other is ``os.close``, only when the current run has
no ring and none can be made (``io_uring_setup`` needs a descriptor of its own: EMFILE at
the fd limit): a descriptor that cannot be closed through a ring would leak for good
(:meth:`UringEngine.close`, ``_discard_fd``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

import trio

from pageserver.io.engine import TRIO_URING, FileStat, IoEngine, PendingIo
from pageserver.io.gather import IOV_MAX, Gather
from pageserver.io.uring import _abi, _buffers
from pageserver.io.uring._ring import Ring
from pageserver.io.uring._trio import (
    _RUN_DRIVER,
    DEFAULT_SQ_ENTRIES,
    RingStats,
    UringDriver,
    _Op,
    driver_with_room,
    existing_driver,
)

_OP_READ: Final = _abi.IORING_OP_READ
_OP_WRITE: Final = _abi.IORING_OP_WRITE
_OP_WRITEV: Final = _abi.IORING_OP_WRITEV
_OP_FSYNC: Final = _abi.IORING_OP_FSYNC
_OP_SYNC_FILE_RANGE: Final = _abi.IORING_OP_SYNC_FILE_RANGE
_OP_OPENAT: Final = _abi.IORING_OP_OPENAT
_OP_CLOSE: Final = _abi.IORING_OP_CLOSE
_OP_STATX: Final = _abi.IORING_OP_STATX
_OP_RENAMEAT: Final = _abi.IORING_OP_RENAMEAT
_OP_UNLINKAT: Final = _abi.IORING_OP_UNLINKAT
_OP_FTRUNCATE: Final = _abi.IORING_OP_FTRUNCATE
_AT_FDCWD: Final = _abi.AT_FDCWD
_AT_FDCWD_U32: Final = _abi.AT_FDCWD & 0xFFFFFFFF
#: The kernel caps one read/write at MAX_RW_COUNT (INT_MAX rounded down to a page);
#: larger requests come back short, which callers handle anyway.
_MAX_RW: Final = 0x7FFFF000
#: ``sqe->len`` is 32 bits: the most one SYNC_FILE_RANGE can name (page-aligned).
_MAX_SYNC_RANGE: Final = 0xFFFFF000

#: Opcodes the engine cannot do without.
REQUIRED_OPS: Final = (
    _abi.IORING_OP_OPENAT,
    _abi.IORING_OP_READ,
    _abi.IORING_OP_WRITE,
    _abi.IORING_OP_WRITEV,
    _abi.IORING_OP_FSYNC,
    _abi.IORING_OP_STATX,
    _abi.IORING_OP_CLOSE,
    _abi.IORING_OP_RENAMEAT,
    _abi.IORING_OP_UNLINKAT,
)
#: Opcodes used when present, with a documented fallback otherwise.
OPTIONAL_OPS: Final = (_abi.IORING_OP_FTRUNCATE,)

_probe_lock = threading.Lock()
_probe_cache: tuple[str | None, frozenset[int]] | None = None


def _disabled_sysctl() -> str | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip()
    except OSError:
        return None


def _probe() -> tuple[str | None, frozenset[int]]:
    global _probe_cache
    with _probe_lock:
        if _probe_cache is not None:
            return _probe_cache
        reason: str | None = None
        ops: frozenset[int] = frozenset()
        try:
            with Ring(4) as ring:
                ops = ring.probe()
                if not ring.features & _abi.IORING_FEAT_NODROP:
                    reason = "io_uring lacks IORING_FEAT_NODROP (kernel older than 5.5)"
        except OSError as e:
            sysctl = _disabled_sysctl()
            if e.errno == errno.ENOSYS:
                reason = "io_uring_setup: ENOSYS (kernel built without io_uring)"
            elif e.errno == errno.EPERM:
                if sysctl not in (None, "0"):
                    reason = (
                        f"io_uring_setup: EPERM (kernel.io_uring_disabled = {sysctl}; "
                        "1 allows only the io_uring_group, 2 disables io_uring)"
                    )
                else:
                    reason = "io_uring_setup: EPERM (seccomp filter or io_uring_disabled)"
            else:
                reason = f"io_uring_setup failed: {e.strerror or e} (errno {e.errno})"
                if sysctl not in (None, "0"):
                    reason += f"; kernel.io_uring_disabled = {sysctl}"
        if reason is None:
            missing = [_abi.OP_NAMES[o] for o in REQUIRED_OPS if o not in ops]
            if missing:
                reason = "io_uring lacks required opcodes: " + ", ".join(missing)
        _probe_cache = (reason, ops)
        return _probe_cache


def probe_uring() -> str | None:
    """Can this process use the trio-uring engine? ``None`` if yes, else why not.

    Sets up a small ring (which is where ``kernel.io_uring_disabled``, seccomp filters
    and kernels without io_uring refuse us), requires ``IORING_FEAT_NODROP`` and probes
    the opcodes the engine needs. The answer is cached for the process. ``FTRUNCATE`` is
    not required (``set_len`` falls back to ``os.ftruncate``); see
    :func:`uring_missing_optional_ops`.
    """
    return _probe()[0]


def uring_missing_optional_ops() -> list[str]:
    """Names of optional opcodes this kernel lacks (whose fallback will be used)."""
    reason, ops = _probe()
    if reason is not None:
        return []
    return [_abi.OP_NAMES[o] for o in OPTIONAL_OPS if o not in ops]


async def _completed(op: _Op, path: object = None, path2: object = None) -> int:
    """Wait (cancellably: see the class docstring) for ``op``'s CQE: its result, or the
    ``OSError`` of a negative one, naming ``path`` (and ``path2``)."""
    res = await op.driver.wait(op)
    if res < 0:
        raise _err(res, path, path2)
    return res


def _err(res: int, path: object = None, path2: object = None) -> OSError:
    e = -res
    if path2 is not None:
        return OSError(e, os.strerror(e), path, None, path2)
    if path is not None:
        return OSError(e, os.strerror(e), path)
    return OSError(e, os.strerror(e))


class PendingUringWrite(PendingIo):
    """A queued write (or writeback start): ``await result()`` waits, uncancellably, for
    its CQE."""

    __slots__ = ("_op", "_driver")

    def __init__(self, driver: UringDriver, op: _Op) -> None:
        self._driver = driver
        self._op = op

    @property
    def done(self) -> bool:
        return self._op.done

    async def result(self) -> int:
        op = self._op
        res = op.res if op.done else await self._driver.wait_uncancellable(op)
        if res < 0:
            raise _err(res)
        return res

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        op = self._op
        if op.done:
            fn()
        else:
            assert op.callback is None, "one callback per operation"
            op.callback = fn


class UringEngine(IoEngine):
    """io_uring through :mod:`pageserver.io.uring`, awaited on the trio loop.

    The engine object holds no kernel resources: the ring belongs to the trio run
    (created on the first operation, closed when the run ends or by :meth:`aclose`),
    so one engine can serve several runs (tests) and several engines share a run's ring.

    ``force_async`` sets ``IOSQE_ASYNC`` on every operation, making the kernel hand each
    one to an io-wq worker instead of trying it inline first; tests use it to keep
    operations in the kernel's hands long enough to cancel them there.

    Cancellation: data and metadata operations follow trio's rules (see
    ``uring/_trio.py``): cancelled before submission, they never happen and raise
    ``Cancelled``; cancelled in the kernel, they finish and return their result, and
    ``Cancelled`` comes at the next checkpoint. ``close`` and ``unlink`` are the
    exception, as under std-fs (where they ignore a job's cancel flag): they are what
    clean-up code calls from ``except``/``finally`` blocks in an already cancelled scope,
    so they always run to completion, and ``Cancelled`` is left for the next checkpoint.
    """

    kind: ClassVar[str] = TRIO_URING
    write_behind_depth: ClassVar[int] = 4
    runs_jobs_in_thread: ClassVar[bool] = False

    def __init__(self, *, sq_entries: int = DEFAULT_SQ_ENTRIES, force_async: bool = False):
        self._sq_entries = sq_entries
        self._sqe_flags = _abi.IOSQE_ASYNC if force_async else 0
        self._has_ftruncate: bool | None = None

    async def _driver(self) -> UringDriver:
        return await driver_with_room(sq_entries=self._sq_entries)

    async def _cleanup_driver(self) -> UringDriver:
        drv = _RUN_DRIVER.get()
        if drv is not None and drv.has_room():
            return drv
        with trio.CancelScope(shield=True):
            return await self._driver()
        raise AssertionError("unreachable: a shielded scope swallows nothing")

    # -- data ---------------------------------------------------------------------------

    async def read_at(self, fd: int, buf: bytearray | memoryview, offset: int) -> int:
        return await _completed(await self._push_rw(_OP_READ, fd, buf, offset, _buffers.writable))

    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        return await _completed(await self._push_rw(_OP_WRITE, fd, data, offset, _buffers.readable))

    async def submit_write_at(
        self, fd: int, data: bytes | bytearray | memoryview, offset: int
    ) -> PendingIo:
        """Queue a write and return at once; the SQE goes out with this loop tick's batch.

        The in-flight table keeps ``data`` pinned until the CQE, whether or not anyone
        awaits the result, so dropping the handle is memory-safe (the write still
        happens, and the end of the run waits for it). Waiting for room in a full ring
        is the only suspension here, and it is cancellable (nothing was queued).
        """
        op = await self._push_rw(_OP_WRITE, fd, data, offset, _buffers.readable)
        return PendingUringWrite(op.driver, op)

    async def write_gather_at(self, fd: int, gather: Gather, offset: int) -> int:
        return await _completed(await self._push_writev(fd, gather, offset))

    async def submit_write_gather_at(self, fd: int, gather: Gather, offset: int) -> PendingIo:
        """Queue ``IORING_OP_WRITEV`` of the gather's iovec array and return at once, as
        :meth:`submit_write_at` does (the in-flight table keeps ``gather``, and so its
        array and the memory it names, until the CQE)."""
        op = await self._push_writev(fd, gather, offset)
        return PendingUringWrite(op.driver, op)

    async def _ring(self) -> UringDriver:
        """This run's driver, once its ring has room for one more SQE (the wait for room,
        the only suspension before a push, is cancellable: nothing was queued)."""
        drv = _RUN_DRIVER.get()
        if drv is None or not drv.has_room():
            drv = await self._driver()
        return drv

    async def _push_rw(
        self,
        opcode: int,
        fd: int,
        buf: Any,
        offset: int,
        pin: Callable[[Any], tuple[int, object]],
    ) -> _Op:
        """Queue a read or write of ``buf`` (``pin``: how its address is taken and kept
        alive, ``_buffers.writable`` for a read, ``readable`` for a write) at ``offset``;
        at most ``_MAX_RW`` bytes, a short transfer for the caller to continue."""
        n = buf.nbytes if isinstance(buf, memoryview) else len(buf)
        if offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        addr, keep = pin(buf) if n else (0, None)
        drv = await self._ring()
        return drv.push(opcode, self._sqe_flags, fd, offset, addr, min(n, _MAX_RW), 0, keep)

    async def _push_writev(self, fd: int, gather: Gather, offset: int) -> _Op:
        if offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        drv = await self._ring()
        count = min(gather.count, IOV_MAX)
        return drv.push(_OP_WRITEV, self._sqe_flags, fd, offset, gather.address, count, 0, gather)

    async def _fsync(self, fd: int, flags: int) -> None:
        drv = await self._ring()
        await _completed(drv.push(_OP_FSYNC, self._sqe_flags, fd, 0, 0, 0, flags, None))

    async def fsync(self, fd: int) -> None:
        await self._fsync(fd, 0)

    async def fdatasync(self, fd: int) -> None:
        await self._fsync(fd, _abi.IORING_FSYNC_DATASYNC)

    async def submit_writeback(self, fd: int, offset: int, nbytes: int) -> PendingIo:
        """Queue ``IORING_OP_SYNC_FILE_RANGE`` (``SYNC_FILE_RANGE_WRITE``); return at once.

        The kernel always runs this opcode in an io-wq worker (it may block while queueing
        the I/O), so the loop never waits for it, and nobody needs to await the handle:
        the in-flight table keeps the entry until the CQE, like a dropped write-behind
        handle. Not probed: the opcode (Linux 5.2) is older than ``IORING_FEAT_NODROP``
        (5.5), which the engine requires; were it missing, the CQE would carry ``-EINVAL``,
        which a hint's caller ignores. A range beyond ``sqe->len``'s 32 bits is cut to
        what fits (the rest is left to the fsync, as with any hint).
        """
        if offset < 0 or nbytes < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        drv = await self._ring()
        op = drv.push(
            _OP_SYNC_FILE_RANGE,
            self._sqe_flags,
            fd,
            offset,
            0,
            min(nbytes, _MAX_SYNC_RANGE),
            _abi.SYNC_FILE_RANGE_WRITE,
            None,
        )
        return PendingUringWrite(drv, op)

    # -- metadata -----------------------------------------------------------------------

    async def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        """``openat(AT_FDCWD, path, flags | O_CLOEXEC, mode)``.

        Cancellation: if the task is cancelled while the kernel has the open and the open
        succeeds, the new fd is closed (by a CLOSE SQE nobody waits for) and
        ``Cancelled`` is raised: a cancelled open never hands out, or leaks, an fd.
        """
        addr, keep = _buffers.c_path(path)
        drv = await self._ring()
        op = drv.push(
            _OP_OPENAT, self._sqe_flags, _AT_FDCWD, 0, addr, mode, flags | os.O_CLOEXEC, keep
        )
        res = await _completed(op, path)
        if op.cancelled and trio.current_effective_deadline() == float("-inf"):
            # Still effectively cancelled (cancellation is sticky, so this is the normal
            # case): drop the fd, then let the checkpoint raise Cancelled.
            await self._discard_fd(res)
            await trio.lowlevel.checkpoint()
            raise AssertionError("a checkpoint in a cancelled scope must raise Cancelled")
        return res

    async def _discard_fd(self, fd: int) -> None:
        # Room for one SQE is a short, shielded wait; the CQE is not awaited.
        try:
            drv = await self._cleanup_driver()
        except OSError:
            os.close(fd)  # no ring can be made (see close): not leaked instead
            return
        drv.push(_OP_CLOSE, 0, fd, 0, 0, 0, 0, None)

    async def close(self, fd: int) -> None:
        """Close ``fd``; runs to completion even in a cancelled scope (see class doc)."""
        try:
            drv = await self._cleanup_driver()
        except OSError:
            # No ring for this run and none can be made (io_uring_setup needs a descriptor
            # of its own: EMFILE; or memory). The caller has already dropped ``fd`` from
            # its table: left open it would leak for good. A plain close(2) instead, on the
            # loop (a close of a regular file does not wait for its data).
            os.close(fd)
            return
        res = await drv.wait_uncancellable(
            drv.push(_OP_CLOSE, self._sqe_flags, fd, 0, 0, 0, 0, None)
        )
        if res < 0:
            raise _err(res)

    async def stat(self, fd: int) -> FileStat:
        st = _abi.Statx()
        path_addr, path = _buffers.c_path(b"")
        drv = await self._ring()
        op = drv.push(
            _OP_STATX,
            self._sqe_flags,
            fd,
            ctypes.addressof(st),
            path_addr,
            _abi.STATX_BASIC_STATS,
            _abi.AT_EMPTY_PATH,
            (st, path),
        )
        await _completed(op)
        return FileStat(size=st.stx_size, mode=st.stx_mode, ino=st.stx_ino)

    async def set_len(self, fd: int, length: int) -> None:
        if length < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if self._has_ftruncate is None:
            self._has_ftruncate = _abi.IORING_OP_FTRUNCATE in _probe()[1]
        if not self._has_ftruncate:
            # Documented fallback (module docstring): one blocking ftruncate on the loop.
            os.ftruncate(fd, length)
            await trio.lowlevel.checkpoint()
            return
        drv = await self._ring()
        await _completed(drv.push(_OP_FTRUNCATE, self._sqe_flags, fd, length, 0, 0, 0, None))

    async def _rename(self, src: str, dst: str, flags: int) -> None:
        src_addr, src_b = _buffers.c_path(src)
        dst_addr, dst_b = _buffers.c_path(dst)
        drv = await self._ring()
        op = drv.push(
            _OP_RENAMEAT,
            self._sqe_flags,
            _AT_FDCWD,
            dst_addr,
            src_addr,
            _AT_FDCWD_U32,
            flags,
            (src_b, dst_b),
        )
        await _completed(op, src, dst)

    async def rename(self, src: str, dst: str) -> None:
        await self._rename(src, dst, 0)

    async def rename_noreplace(self, src: str, dst: str) -> None:
        await self._rename(src, dst, _abi.RENAME_NOREPLACE)

    async def unlink(self, path: str) -> None:
        """Unlink ``path``; runs to completion even in a cancelled scope (see class doc)."""
        await self._unlinkat(path, 0)

    async def rmdir(self, path: str) -> None:
        """Remove the empty directory ``path``; like :meth:`unlink`, uncancellable."""
        await self._unlinkat(path, _abi.AT_REMOVEDIR)

    async def _unlinkat(self, path: str, flags: int) -> None:
        addr, keep = _buffers.c_path(path)
        drv = await self._cleanup_driver()
        res = await drv.wait_uncancellable(
            drv.push(_OP_UNLINKAT, self._sqe_flags, _AT_FDCWD, 0, addr, 0, flags, keep)
        )
        if res < 0:
            raise _err(res, path)

    # -- lifecycle / introspection -----------------------------------------------------

    async def aclose(self) -> None:
        """Close the current run's ring after its in-flight operations completed.

        Idempotent, and harmless to other users of the run's ring: the next operation
        in this run creates a fresh one. Outside a trio run there is nothing to close.
        """
        try:
            drv = existing_driver()
        except RuntimeError:
            return
        if drv is not None:
            await drv.aclose()

    def ring_stats(self) -> RingStats | None:
        """Counters of the current run's ring, or ``None`` if it has none (yet)."""
        drv = existing_driver()
        return drv.stats if drv is not None else None
