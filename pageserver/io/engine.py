"""The io engine interface and the ``std-fs`` engine.

An io engine is the one place where file-system syscalls happen. Everything above it
(``VirtualFile``, the buffered writer, layer writers, the timeline) receives an engine
*object* and awaits its methods; nothing outside ``pageserver.io`` asks which engine it
holds. Two implementations exist:

``std-fs`` (this module)
    Plain blocking syscalls (``os.pread``, ``os.pwrite``, ``os.fsync``...). The
    coroutines never suspend, which is what lets the conditional-offload helper
    (:mod:`pageserver.io.offload`) run a whole layer-writing job in one worker thread by
    driving its coroutine with ``send(None)``: the analogue of Neon's
    ``spawn_blocking(|| block_on(...))``.

``trio-uring`` (:mod:`pageserver.io.uring.engine`)
    Every operation is an io_uring submission awaited on the trio loop.

Why an object rather than a process-global switch: one test process runs the whole suite
on both engines, and the daemon resolves its engine exactly once (config, environment
override, probe) in :func:`resolve_engine`.

Cancellation under ``std-fs``: a job running in a worker thread cannot be interrupted by
trio. The offload helper gives it a cancel flag instead, which every data operation of
this engine checks before it starts (:func:`pageserver.io.offload.raise_if_job_cancelled`).
``close`` and ``unlink`` do not check it: they are what the job's clean-up needs.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pageserver.io import _jobstate

STD_FS = "std-fs"
TRIO_URING = "trio-uring"
ENGINE_ALIASES = {"tokio-epoll-uring": TRIO_URING}
ENGINE_KINDS = (STD_FS, TRIO_URING)


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

    async def fsync_dir(self, path: str) -> None:
        """Make a directory's entries durable: open it read-only, fsync, close."""
        fd = await self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await self.fsync(fd)
        finally:
            await self.close(fd)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources (the uring engine's rings). Idempotent."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}>"


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


class StdFsEngine(IoEngine):
    """Blocking syscalls. The coroutines never suspend (see module docstring)."""

    kind = STD_FS
    runs_jobs_in_thread = True

    async def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        _jobstate.raise_if_job_cancelled()
        return os.open(path, flags | os.O_CLOEXEC, mode)

    async def read_at(self, fd: int, buf: bytearray | memoryview, offset: int) -> int:
        _jobstate.raise_if_job_cancelled()
        return os.preadv(fd, [buf], offset)

    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        _jobstate.raise_if_job_cancelled()
        return os.pwrite(fd, data, offset)

    async def fsync(self, fd: int) -> None:
        _jobstate.raise_if_job_cancelled()
        os.fsync(fd)

    async def fdatasync(self, fd: int) -> None:
        _jobstate.raise_if_job_cancelled()
        os.fdatasync(fd)

    async def stat(self, fd: int) -> FileStat:
        st = os.fstat(fd)
        return FileStat(size=st.st_size, mode=st.st_mode, ino=st.st_ino)

    async def set_len(self, fd: int, length: int) -> None:
        _jobstate.raise_if_job_cancelled()
        os.ftruncate(fd, length)

    async def close(self, fd: int) -> None:
        os.close(fd)

    async def rename(self, src: str, dst: str) -> None:
        _jobstate.raise_if_job_cancelled()
        os.rename(src, dst)

    async def rename_noreplace(self, src: str, dst: str) -> None:
        _jobstate.raise_if_job_cancelled()
        rename_noreplace_sync(src, dst)

    async def unlink(self, path: str) -> None:
        os.unlink(path)


def normalize_engine_kind(value: str) -> str:
    """Map a configured engine name to its canonical kind, or raise ``ValueError``."""
    kind = ENGINE_ALIASES.get(value, value)
    if kind not in ENGINE_KINDS:
        raise ValueError(
            f"unknown io engine {value!r}: expected one of "
            f"{', '.join(ENGINE_KINDS + tuple(ENGINE_ALIASES))} or 'auto'"
        )
    return kind


def tool_engine() -> IoEngine:
    """The engine of offline tools (``layer dump``/``ls``): plain blocking reads.

    A one-shot command reading a few pages gains nothing from a ring it would have to
    set up and tear down, and must work where the kernel refuses io_uring.
    """
    return StdFsEngine()


def create_engine(kind: str) -> IoEngine:
    """Create an engine of the given (possibly aliased) kind, without probing."""
    kind = normalize_engine_kind(kind)
    if kind == STD_FS:
        return StdFsEngine()
    from pageserver.io.uring.engine import UringEngine

    return UringEngine()


REQUIRE_URING_ENV_VAR = "PAGESERVER_REQUIRE_URING"


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run on this machine (the message says why)."""


def uring_refusal_reason() -> str | None:
    """Why io_uring cannot be used here, or None if the probe succeeded."""
    try:
        from pageserver.io.uring.engine import probe_uring
    except ImportError as e:  # pragma: no cover - the module is part of the package
        return f"the trio-uring engine is not available: {e}"
    return probe_uring()


def uring_required() -> bool:
    return os.environ.get(REQUIRE_URING_ENV_VAR, "") not in ("", "0")


def resolve_engine(configured: str) -> tuple[IoEngine, str | None]:
    """Choose the daemon's engine once: returns it and, for a fallback, the warning.

    ``auto`` takes trio-uring when the probe succeeds and falls back to std-fs, naming the
    reason; with ``PAGESERVER_REQUIRE_URING=1`` the fallback is an error instead. An
    explicitly configured ``trio-uring`` that the kernel refuses is always an error.
    """
    if configured == "auto":
        reason = uring_refusal_reason()
        if reason is None:
            return create_engine(TRIO_URING), None
        if uring_required():
            raise EngineUnavailable(
                f"io_uring refused ({reason}) and {REQUIRE_URING_ENV_VAR}=1 is set"
            )
        return StdFsEngine(), f"io_uring unavailable, falling back to std-fs: {reason}"
    kind = normalize_engine_kind(configured)
    if kind == TRIO_URING:
        reason = uring_refusal_reason()
        if reason is not None:
            raise EngineUnavailable(f"virtual_file_io_engine = trio-uring, but {reason}")
    return create_engine(kind), None
