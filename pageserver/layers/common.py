"""What the delta and image layer readers share, and what the rest of the server sees.

Shared types: :class:`LayerInfo` (what a finished writer reports, what the timeline keeps
in its layer map), :class:`LayerFileError`, and :func:`run_cleanup` (clean-up that a
cancellation cannot interrupt, for readers and writers alike). Reading: open a file and
check what can be checked without its name (:func:`open_layer_file`), the index of a layer
(:func:`index_key_size`, :data:`DELTA_KEY_SIZE`), and the bases of the two readers
(:class:`OpenLayerFile`, :class:`BatchIterator`).

The writing protocol (temp file, rename, finish checks) is in :mod:`.writer`, which only
the two writers import. This module keeps its name because the tenant layer imports
:class:`LayerInfo` and :class:`LayerFileError` from it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, Self, TypeVar

import zstandard

from pageserver.errors import CorruptLayer
from pageserver.io import IoContext, VirtualFile, cleanup_shield
from pageserver.layers.blob_io import PAGE_SZ, PagedReader
from pageserver.layers.disk_btree import DiskBtreeReader
from pageserver.layers.key import KEY_SIZE, Key
from pageserver.layers.layer_name import LayerName
from pageserver.layers.summary import DeltaSummary, Summary, SummaryError, parse_summary

S = TypeVar("S", bound=Summary)

#: A delta layer's index key: ``key ++ lsn`` (u64 big-endian); an image layer's is the key.
DELTA_KEY_SIZE: Final = KEY_SIZE + 8


def index_key_size(summary: Summary) -> int:
    """The B-tree key size of the layer whose summary this is."""
    return DELTA_KEY_SIZE if isinstance(summary, DeltaSummary) else KEY_SIZE


def open_index(reader: PagedReader, summary: Summary) -> DiskBtreeReader:
    """The B-tree index of an open layer file."""
    return DiskBtreeReader(
        reader.read_page, summary.index_start_blk, summary.index_root_blk, index_key_size(summary)
    )


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


class LayerFileError(CorruptLayer):
    """Not a (valid) layer file; the message starts with the path and says what is wrong.

    A :class:`~pageserver.errors.CorruptLayer`, so a read that finds one answers the
    client with this message (code ``internal``) rather than a Python error's repr.
    """


#: What reading a damaged layer file can raise below the layer readers: parsing errors of
#: our own (BtreeError, BlobError and SummaryError are ValueErrors), slicing and struct
#: errors, a short read (EOFError), zstd's errors.
_CORRUPTION_ERRORS = (ValueError, IndexError, struct.error, EOFError, OverflowError, zstandard.ZstdError)


@contextmanager
def reading_layer(path: str) -> Iterator[None]:
    """Around a layer reader's public read: damage found below it becomes a
    :class:`LayerFileError` naming ``path`` (the one place this translation happens)."""
    try:
        yield
    except LayerFileError:
        raise
    except _CORRUPTION_ERRORS as e:
        raise LayerFileError(f"{path}: corrupt layer file: {e}") from e


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

    Subclasses set ``SUMMARY`` (the summary class they accept).
    """

    SUMMARY: ClassVar[type[Summary]]

    def __init__(self, path: str, vf: VirtualFile, reader: PagedReader, summary: S) -> None:
        self.path = path
        self._vf = vf
        self._reader = reader
        self.summary = summary
        self.file_size = reader.file_size
        self.index = open_index(reader, summary)

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
