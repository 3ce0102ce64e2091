"""What the delta and image layer writers and readers share.

The writing protocol of SPEC section 4 lives in :class:`LayerFileWriter`: temp file
with ``O_EXCL``, buffered appends from offset 8192, pad, index, summary, fsync, rename
without replacing, fsync the directory; and on any failure (including trio
cancellation and, under std-fs, :class:`~pageserver.io.JobCancelled`) removal of
whatever it created.

Clean-up must not itself be cancelled half-way: on the trio loop it runs in a shielded
cancel scope. In an offloaded worker thread there is no trio run (and no trio primitive
may be used); there the engine's ``close``/``unlink`` ignore the job's cancel flag.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Generic, Self, TypeVar

from pageserver.failpoints import failpoint
from pageserver.io import TEMP_SUFFIX, IoContext, VirtualFile, cleanup_shield
from pageserver.io.buffered_writer import BufferedWriter
from pageserver.layers.blob_io import PAGE_SZ, PagedReader
from pageserver.layers.disk_btree import DiskBtreeBuilder, DiskBtreeReader
from pageserver.layers.key import Key
from pageserver.layers.layer_name import LayerName
from pageserver.layers.summary import Summary, SummaryError, parse_summary

S = TypeVar("S", bound=Summary)

#: Buffered writer size for layer files: large buffers mean few syscalls/submissions.
LAYER_WRITE_BUFFER = 256 * 1024

_temp_counter = itertools.count(1)


def next_temp_disambiguator() -> int:
    """Per-process counter for temp file names (``itertools.count`` is atomic in CPython)."""
    return next(_temp_counter)


def temp_path(timeline_dir: str, stem: str) -> str:
    return os.path.join(timeline_dir, f"{stem}.{next_temp_disambiguator():x}{TEMP_SUFFIX}")


async def run_cleanup(fn: Callable[[], Awaitable[None]]) -> None:
    """Run clean-up to the end even if the caller is being cancelled (``cleanup_shield``)."""
    with cleanup_shield():
        await fn()


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """What a finished writer reports: enough to add the layer to a layer map."""

    path: str
    name: LayerName
    summary: Summary
    file_size: int
    num_entries: int


class LayerFileWriter:
    """The file half of a layer writer: temp file, buffered values, index, summary, rename."""

    def __init__(self, ctx: IoContext, timeline_dir: str, temp_stem: str) -> None:
        self.ctx = ctx
        self.timeline_dir = os.fspath(timeline_dir)
        self.temp_path = temp_path(self.timeline_dir, temp_stem)
        self.final_path: str | None = None
        self.vf: VirtualFile | None = None
        self.bw: BufferedWriter | None = None
        self._created = False
        self._renamed = False
        self.done = False

    async def open(self) -> BufferedWriter:
        try:
            self.vf = await self.ctx.create_new(self.temp_path)
        except FileExistsError:
            raise
        except BaseException:
            # Cancelled or failed after the kernel may have created it: clean up anyway.
            self._created = True
            raise
        self._created = True
        self.bw = BufferedWriter(self.vf, LAYER_WRITE_BUFFER, start_offset=PAGE_SZ)
        return self.bw

    async def finish(self, tree: DiskBtreeBuilder, make_summary: Callable[[int, int], Summary],
                     final_name: str) -> tuple[Summary, int]:
        """Pad, write the index and summary, fsync, rename; returns (summary, file size)."""
        bw, vf = self.bw, self.vf
        assert bw is not None and vf is not None
        await bw.pad_to(PAGE_SZ)
        index_start_blk = bw.offset // PAGE_SZ
        root_blk = tree.finish()
        for page in tree.pages:
            await bw.write(page)
        file_size = await bw.finish()
        summary = make_summary(index_start_blk, root_blk)
        await vf.write_all_at(summary.pack_page(), 0)
        await vf.sync_all()
        # Close before the rename: a VirtualFile reopens by path after eviction, and the
        # temp path is about to disappear.
        self.vf = None
        await vf.close()
        final = os.path.join(self.timeline_dir, final_name)
        await failpoint("layer-before-rename")
        self.final_path = final
        await self.ctx.rename_noreplace(self.temp_path, final)
        self._renamed = True
        await failpoint("layer-after-rename")
        await self.ctx.fsync_dir(self.timeline_dir)
        self.done = True
        return summary, file_size

    async def abandon(self) -> None:
        """Remove everything this writer created. Idempotent; never raises."""
        if self.done:
            return
        self.done = True

        async def cleanup() -> None:
            bw, vf = self.bw, self.vf
            self.bw = self.vf = None
            if bw is not None:
                try:
                    await bw.abandon()
                except BaseException:  # noqa: BLE001 - already failing; keep cleaning
                    pass
            if vf is not None:
                try:
                    await vf.close()
                except OSError:
                    pass
            if not self._created:
                return
            if not self._renamed:
                try:
                    await self.ctx.unlink(self.temp_path)
                    return
                except FileNotFoundError:
                    # The temp name is ours alone: if it is gone, a rename that reported
                    # failure (e.g. cancelled while in flight) did happen.
                    pass
                except OSError:
                    return
            if self.final_path is not None:
                try:
                    await self.ctx.unlink(self.final_path)
                except OSError:
                    pass

        await run_cleanup(cleanup)


async def open_layer_file(ctx: IoContext, path: str) -> tuple[VirtualFile, PagedReader, Summary]:
    """Open a layer file and check what can be checked without its name.

    Size a multiple of 8192, magic, format version, index blocks inside the file.
    Raises :class:`LayerFileError` (the file is closed again).
    """
    vf = await ctx.open(os.fspath(path))
    try:
        size = (await vf.metadata()).size
        summary = check_structure(path, size, await _read_first_page(vf, size))
    except BaseException:
        await run_cleanup(vf.close)
        raise
    return vf, PagedReader(vf, size), summary


async def _read_first_page(vf: VirtualFile, size: int) -> bytes:
    return await vf.read_exact_at(min(size, PAGE_SZ), 0)


class LayerFileError(ValueError):
    """Not a (valid) layer file; the message says what is wrong."""


def check_structure(path: str, size: int, first_page: bytes) -> Summary:
    if size < 2 * PAGE_SZ or size % PAGE_SZ:
        raise LayerFileError(
            f"{path}: size {size} is not a multiple of {PAGE_SZ} of at least two pages, "
            "so not a layer file"
        )
    try:
        summary = parse_summary(first_page)
    except SummaryError as e:
        raise LayerFileError(f"{path}: {e}") from None
    nblocks = size // PAGE_SZ
    if not 1 <= summary.index_start_blk < nblocks:
        raise LayerFileError(
            f"{path}: index start block {summary.index_start_blk} outside the file ({nblocks} blocks)"
        )
    if summary.index_start_blk + summary.index_root_blk >= nblocks:
        raise LayerFileError(
            f"{path}: index root block {summary.index_root_blk} (+{summary.index_start_blk}) "
            f"outside the file ({nblocks} blocks)"
        )
    return summary


class OpenLayerFile(Generic[S]):
    """What the delta and image layer readers share: the open file, its summary, its index.

    Subclasses set ``SUMMARY`` (the summary class they accept) and ``INDEX_KEY_SIZE``.
    """

    SUMMARY: ClassVar[type[Summary]]
    INDEX_KEY_SIZE: ClassVar[int]

    def __init__(self, path: str, vf: VirtualFile, reader: PagedReader, summary: S) -> None:
        self.path = path
        self._vf = vf
        self._reader = reader
        self.summary = summary
        self.file_size = reader.file_size
        self.index = DiskBtreeReader(
            reader.read_page, summary.index_start_blk, summary.index_root_blk, self.INDEX_KEY_SIZE
        )

    @classmethod
    async def open(cls, ctx: IoContext, path: str) -> Self:
        vf, reader, summary = await open_layer_file(ctx, path)
        if not isinstance(summary, cls.SUMMARY):
            await run_cleanup(vf.close)
            raise LayerFileError(f"{path}: a {summary.kind} layer, not a {cls.SUMMARY.kind} layer")
        return cls(path, vf, reader, summary)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self._vf.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: object, e: object, tb: object) -> None:
        await self.close()

    @property
    def key_range(self) -> tuple[Key, Key]:
        return self.summary.key_start, self.summary.key_end


E = TypeVar("E")


class BatchIterator(Generic[E]):
    """An async iterator over entries that subclasses produce a batch (leaf page) at a time.

    ``async for`` yields entries one by one; hot loops call :meth:`next_batch` directly
    (an empty list means the end).
    """

    def __init__(self) -> None:
        self._pending: list[E] = []
        self._pos = 0

    async def next_batch(self) -> list[E]:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> E:
        if self._pos >= len(self._pending):
            self._pending = await self.next_batch()
            self._pos = 0
            if not self._pending:
                raise StopAsyncIteration
        e = self._pending[self._pos]
        self._pos += 1
        return e
