"""The ``std-fs`` io engine: plain blocking syscalls.

The coroutines of :class:`StdFsEngine` never suspend (``os.pread``, ``os.pwrite``,
``os.fsync``... run to completion before the ``await`` returns). That is what lets the
conditional-offload helper (:mod:`pageserver.io.offload`) run a whole layer-writing job
in one worker thread by driving its coroutine with ``send(None)``: the analogue of Neon's
``spawn_blocking(|| block_on(...))``.

Cancellation under ``std-fs``: a job running in a worker thread cannot be interrupted by
trio. The offload helper gives it a cancel flag instead, which every data operation of
this engine checks before it starts (:func:`pageserver.io._jobstate.raise_if_job_cancelled`).
``close`` and ``unlink`` do not check it: they are what the job's clean-up needs.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from pageserver.io._jobstate import raise_if_job_cancelled
from pageserver.io.engine import STD_FS, DoneIo, FileStat, IoEngine, PendingIo
from pageserver.io.gather import IOV_MAX, Gather

# --------------------------------------------------------------------------------------
# renameat2(RENAME_NOREPLACE): Python's ``os`` does not expose it.

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # dlopen(NULL): the C library the interpreter already has loaded. (find_library
        # would run ``ldconfig -p`` in a child process to find the same thing.)
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def rename_noreplace_sync(src: str, dst: str) -> None:
    """``renameat2(src, dst, RENAME_NOREPLACE)``; falls back to ``link`` + ``unlink``.

    The fallback covers file systems (and old kernels) that answer ``EINVAL``/``ENOSYS``:
    ``link`` fails with ``EEXIST`` just the same, and leaves the file under both names
    for a moment, which is harmless for layer files (a crash there leaves a complete
    temp file, deleted at startup, beside the complete final one).
    """
    libc = _load_libc()
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        res = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if res == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), src, None, dst)
    os.link(src, dst)
    os.unlink(src)


# --------------------------------------------------------------------------------------
# sync_file_range: Python's ``os`` does not expose it either.

#: ``SYNC_FILE_RANGE_WRITE`` (linux/fs.h): start writeback of the range's dirty pages, and
#: nothing else. The ``WAIT_BEFORE``/``WAIT_AFTER`` flags would wait for the I/O and, worse,
#: consume a writeback error the later fsync must report; we never pass them.
SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Callable[[int, int, int, int], int] | None = None


def sync_file_range_write(fd: int, offset: int, nbytes: int) -> None:
    """``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``; raises ``OSError``.

    Through ctypes, which drops the GIL for the call: the kernel may block briefly while
    it queues the I/O (a congested device), and other Python threads run meanwhile.
    """
    global _sync_file_range
    fn = _sync_file_range
    if fn is None:
        cfn = getattr(_load_libc(), "sync_file_range", None)
        if cfn is None:  # pragma: no cover - every Linux libc has it (glibc 2.6, musl)
            raise OSError(errno.ENOSYS, "sync_file_range is not in this C library")
        cfn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        cfn.restype = ctypes.c_int
        _sync_file_range = fn = cfn
    if fn(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# --------------------------------------------------------------------------------------
# pwritev of an iovec array: ``os.pwritev`` takes Python buffers, one object per piece.

_pwritev: Callable[[int, int, int, int], int] | None = None


def pwritev_iov(fd: int, gather: Gather, offset: int) -> int:
    """``pwritev(fd, iov, count, offset)`` of a :class:`~pageserver.io.gather.Gather`'s
    array as it is (at most ``IOV_MAX`` pieces; the count written, maybe short).

    Through ctypes, which drops the GIL for the call: the kernel's copy of the pieces is
    the only one, and the event loop's thread runs meanwhile.
    """
    global _pwritev
    fn = _pwritev
    if fn is None:
        cfn = _load_libc().pwritev
        cfn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
        cfn.restype = ctypes.c_ssize_t
        _pwritev = fn = cfn
    while True:
        n = fn(fd, gather.address, min(gather.count, IOV_MAX), offset)
        if n >= 0:
            return n
        err = ctypes.get_errno()
        if err != errno.EINTR:  # retried, as os.pwrite does (PEP 475)
            raise OSError(err, os.strerror(err))


class StdFsEngine(IoEngine):
    """Blocking syscalls. The coroutines never suspend (see module docstring)."""

    kind = STD_FS
    runs_jobs_in_thread = True

    async def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        raise_if_job_cancelled()
        return os.open(path, flags | os.O_CLOEXEC, mode)

    async def read_at(self, fd: int, buf: bytearray | memoryview, offset: int) -> int:
        raise_if_job_cancelled()
        return os.preadv(fd, [buf], offset)

    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        raise_if_job_cancelled()
        return os.pwrite(fd, data, offset)

    async def write_gather_at(self, fd: int, gather: Gather, offset: int) -> int:
        raise_if_job_cancelled()
        return pwritev_iov(fd, gather, offset)

    async def fsync(self, fd: int) -> None:
        raise_if_job_cancelled()
        os.fsync(fd)

    async def fdatasync(self, fd: int) -> None:
        raise_if_job_cancelled()
        os.fdatasync(fd)

    async def submit_writeback(self, fd: int, offset: int, nbytes: int) -> PendingIo:
        raise_if_job_cancelled()
        sync_file_range_write(fd, offset, nbytes)
        return DoneIo(0)

    async def stat(self, fd: int) -> FileStat:
        st = os.fstat(fd)
        return FileStat(size=st.st_size, mode=st.st_mode, ino=st.st_ino)

    async def set_len(self, fd: int, length: int) -> None:
        raise_if_job_cancelled()
        os.ftruncate(fd, length)

    async def close(self, fd: int) -> None:
        os.close(fd)

    async def rename(self, src: str, dst: str) -> None:
        raise_if_job_cancelled()
        os.rename(src, dst)

    async def rename_noreplace(self, src: str, dst: str) -> None:
        raise_if_job_cancelled()
        rename_noreplace_sync(src, dst)

    async def unlink(self, path: str) -> None:
        os.unlink(path)

    async def rmdir(self, path: str) -> None:
        os.rmdir(path)
