"""``IoContext``: the engine and the VirtualFile table, handed to everything above.

One object instead of process globals, so that a single test process can run the whole
suite on both engines (and the daemon still resolves its engine exactly once).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pageserver.io import offload
from pageserver.io.crashsafe import crashsafe_overwrite
from pageserver.io.engine import IoEngine
from pageserver.io.virtual_file import FATAL_ERRNOS, SlotTable, VirtualFile, fatal_io_error

T = TypeVar("T")


class IoContext:
    """Where file I/O starts: open files, directory operations, offloaded jobs.

    It owns the engine it is given: :meth:`aclose` closes the engine too.
    """

    def __init__(
        self, engine: IoEngine, max_file_descriptors: int = 100, no_sync: bool = False
    ) -> None:
        self.engine = engine
        self.table = SlotTable(engine, max_file_descriptors)
        self.no_sync = no_sync

    @property
    def engine_kind(self) -> str:
        return self.engine.kind

    def __repr__(self) -> str:
        return f"<IoContext engine={self.engine.kind} fds={self.table.size} no_sync={self.no_sync}>"

    # -- files ------------------------------------------------------------------------

    async def open_with_flags(self, path: str, flags: int, mode: int = 0o644) -> VirtualFile:
        return await VirtualFile.open_with_flags(
            self.table, path, flags, mode, no_sync=self.no_sync
        )

    async def open(self, path: str) -> VirtualFile:
        """Open an existing file read-only."""
        return await self.open_with_flags(path, os.O_RDONLY)

    async def open_rw(self, path: str) -> VirtualFile:
        return await self.open_with_flags(path, os.O_RDWR)

    async def create(self, path: str) -> VirtualFile:
        """Create or truncate ``path`` for reading and writing."""
        return await self.open_with_flags(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)

    async def create_new(self, path: str) -> VirtualFile:
        """Create ``path``, failing with ``FileExistsError`` if it exists."""
        return await self.open_with_flags(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)

    # -- directory operations ---------------------------------------------------------------

    async def rename(self, src: str, dst: str) -> None:
        await self.engine.rename(src, dst)

    async def rename_noreplace(self, src: str, dst: str) -> None:
        await self.engine.rename_noreplace(src, dst)

    async def unlink(self, path: str) -> None:
        await self.engine.unlink(path)

    async def remove_tree(self, path: str, *, first: str | None = None) -> None:
        """Remove the directory ``path`` and everything under it (a detached tenant, a
        leftover of a half-created one), as one job: under std-fs in a worker thread,
        under trio-uring on the loop with every unlink and rmdir an io_uring operation.
        ``shutil.rmtree`` on the loop blocked it for as long as the file system took to
        free the files' extents (a detached tenant's layers: hundreds of MiB each).
        A missing ``path`` is not an error; symlinks are removed, never followed.

        ``first``: the name of an entry of ``path`` removed before anything else, durably
        (the directory fsynced after it, ``no_sync`` or not): the file whose absence tells
        a later start that the directory is garbage, whatever else is left of it."""
        await self.run_job(_remove_tree, self, path, first)

    async def fsync_dir(self, path: str, *, force: bool = False) -> None:
        """Make a directory's entries (renames, creations) durable."""
        if self.no_sync and not force:
            return
        try:
            # A blocking fsync under std-fs: through the offload helper like any job.
            await self.run_job(self.engine.fsync_dir, path)
        except OSError as e:
            if e.errno in FATAL_ERRNOS:
                fatal_io_error("fsync", path, e)
            raise

    async def crashsafe_overwrite(self, path: str, content: bytes) -> None:
        """Replace ``path`` with ``content`` durably (temp file, fsync, rename, directory
        fsync), as one job: a worker thread under std-fs, the loop under trio-uring, so
        tenant config, timeline metadata and generation files never block the loop."""
        await self.run_job(crashsafe_overwrite, self, path, content)

    # -- jobs ---------------------------------------------------------------------------------

    async def run_job(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a layer-writing job: in one worker thread under std-fs, on the loop otherwise."""
        return await offload.run_job(self.engine, fn, *args)

    async def aclose(self) -> None:
        """Close every descriptor, then the engine (end of a test, daemon shutdown).

        The context owns its engine's lifetime: whoever made the context closes it, and
        with it the engine. (Engine ``aclose`` is idempotent, so closing the engine once
        more afterwards is harmless.)
        """
        await self.table.close_all()
        await self.engine.aclose()


async def _remove_tree(ctx: IoContext, path: str, first: str | None) -> None:
    """:meth:`IoContext.remove_tree`'s job: depth first, files with ``engine.unlink``,
    then each emptied directory with ``engine.rmdir``; an entry gone meanwhile is fine.

    Listing a directory stays a plain ``scandir`` (io_uring has no ``getdents``): a few
    syscalls per directory, where the time of a removal is in the unlinks. Once started
    it runs to its end (cleanup_shield), and an entry that cannot be listed or removed
    does not stop it: everything else goes, then the first error is raised (what is left
    is only what could not be removed; ``shutil.rmtree`` with ``onerror`` would do the
    same). ``first`` is the exception: if it cannot be removed, nothing else is."""
    engine = ctx.engine
    with offload.cleanup_shield():
        if os.path.islink(path):
            raise OSError(f"not removing {path}: a symbolic link, not a directory")
        if first is not None:
            try:
                await engine.unlink(os.path.join(path, first))
            except FileNotFoundError:
                pass
            else:
                # Through the context: an EIO here is fatal, as for every directory fsync.
                await ctx.fsync_dir(path, force=True)
        errors: list[OSError] = []
        await _remove_entries(engine, path, errors)
        if errors:
            raise errors[0]


async def _remove_entries(engine: IoEngine, path: str, errors: list[OSError]) -> None:
    try:
        with os.scandir(path) as it:
            entries = [(e.path, e.is_dir(follow_symlinks=False)) for e in it]
    except FileNotFoundError:
        return
    except OSError as e:
        errors.append(e)
        return
    for entry, is_dir in entries:
        if is_dir:
            await _remove_entries(engine, entry, errors)
        else:
            await _remove_one(engine.unlink, entry, errors)
    await _remove_one(engine.rmdir, path, errors)


async def _remove_one(
    remove: Callable[[str], Awaitable[None]], path: str, errors: list[OSError]
) -> None:
    """``remove(path)``; gone already is fine, any other error is kept for the end."""
    try:
        await remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        errors.append(e)
