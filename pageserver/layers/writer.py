"""The writing protocol of layer files, shared by the delta and the image layer writer.

:class:`LayerFileWriter` is the file half (SPEC section 4): temp file ``<stem>.<n:x>``
plus :data:`~pageserver.io.TEMP_SUFFIX` created with ``O_EXCL``, buffered appends from
offset 8192, pad, index, summary, fsync, rename without replacing, fsync the directory;
and on any failure (including trio cancellation and, under std-fs,
:class:`~pageserver.io.JobCancelled`) removal of whatever it created.

:class:`LayerWriter` is what :class:`~pageserver.layers.delta_layer.DeltaLayerWriter` and
:class:`~pageserver.layers.image_layer.ImageLayerWriter` share on top of it: the one
:class:`~pageserver.layers.blob_io.BlobWriter` and the B-tree builder, the async context
manager and :meth:`~LayerWriter.abandon`, and the finish checks both make (the range end
given at creation or to ``finish``, and consistently; no empty layer; ``key_end`` above
the last key written), then writing out under the final name.

Why two modules: :mod:`.common` holds what the *readers* share and what the rest of the
server sees of a layer file (:class:`~pageserver.layers.common.LayerInfo`,
:class:`~pageserver.layers.common.LayerFileError`, the shielded clean-up); this module
holds what only the writers need. The readers never import it.

Clean-up must not itself be cancelled half-way: on the trio loop it runs in a shielded
cancel scope. In an offloaded worker thread there is no trio run (and no trio primitive
may be used); there the engine's ``close``/``unlink`` ignore the job's cancel flag.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import ClassVar, Self, TypeVar

from pageserver.failpoints import failpoint
from pageserver.io import (
    TEMP_SUFFIX,
    BufferedWriter,
    IoContext,
    VirtualFile,
    cooperative_checkpoint,
)
from pageserver.layers.blob_io import COMPRESSION_DISABLED, PAGE_SZ, BlobWriter, check_compression
from pageserver.layers.common import LayerInfo, run_cleanup
from pageserver.layers.disk_btree import DiskBtreeBuilder
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.layers.layer_name import LayerName
from pageserver.layers.summary import Summary

#: Buffered writer size for layer files: large buffers mean few syscalls/submissions.
LAYER_WRITE_BUFFER = 256 * 1024
#: Index pages written per step (~1-2 us of Python and an 8 KiB copy each; the buffered
#: writer yields only when it waits for a write, under trio-uring when 4 are in flight:
#: 800 pages of a 400k-record layer took steps of up to ~2 ms).
INDEX_PAGES_PER_STEP = 64

T = TypeVar("T")

_temp_counter = itertools.count(1)


def next_temp_disambiguator() -> int:
    """Per-process counter for temp file names (``itertools.count`` is atomic in CPython)."""
    return next(_temp_counter)


def temp_path(timeline_dir: str, stem: str) -> str:
    return os.path.join(timeline_dir, f"{stem}.{next_temp_disambiguator():x}{TEMP_SUFFIX}")


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
        # will_fsync: the file is fsync'd when finished, so its writeback starts while it
        # is written (the disk works during the flush instead of all at the final fsync).
        self.bw = BufferedWriter(self.vf, LAYER_WRITE_BUFFER, start_offset=PAGE_SZ, will_fsync=True)
        return self.bw

    async def finish(self, tree: DiskBtreeBuilder, make_summary: Callable[[int, int], Summary],
                     final_name: str) -> tuple[Summary, int]:
        """Pad, write the index and summary, fsync, rename; returns (summary, file size)."""
        bw, vf = self.bw, self.vf
        assert bw is not None and vf is not None
        await bw.pad_to(PAGE_SZ)
        index_start_blk = bw.offset // PAGE_SZ
        root_blk = tree.finish()
        for i, page in enumerate(tree.pages, 1):
            await bw.write(page)
            if not i % INDEX_PAGES_PER_STEP:
                await cooperative_checkpoint()
        file_size = await bw.finish()
        summary = make_summary(index_start_blk, root_blk)
        await vf.write_all_at(summary.pack_page(), 0)
        await vf.sync_all()
        # Close before the rename: a VirtualFile reopens by path after eviction, and the
        # temp path is about to disappear. ``self.vf`` is dropped only once the close
        # returned: a close cancelled while it waits for the slot's pins (a writeback
        # hint still in flight under trio-uring) leaves the file to ``abandon``, which
        # closes it, instead of an open descriptor of a deleted temp file.
        await vf.close()
        self.vf = None
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


def resolve_end(given: T | None, at_creation: T | None, what: str) -> T:
    """The range end a writer finishes with: given at creation or to ``finish()``, not both
    differently (``what`` names it in the error)."""
    if given is None:
        given = at_creation
    elif at_creation is not None and given != at_creation:
        raise ValueError(f"{what} differs from the one given at creation")
    if given is None:
        raise ValueError(f"{what} must be given at creation or to finish()")
    return given


class LayerWriter:
    """What the delta and image layer writers share: file, blobs, index, finish checks.

    Subclasses set ``KIND``, call :meth:`_open` before their first value and, in
    ``finish``, :func:`resolve_end`, :meth:`_check_not_empty`, :meth:`_check_key_end` and
    :meth:`_write_out`. Any error inside the
    writer's own methods abandons it; use it as an async context manager, or call
    :meth:`abandon` on every path that does not reach ``finish``.
    """

    KIND: ClassVar[str]

    def __init__(
        self,
        ctx: IoContext,
        timeline_dir: str,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        key_start: Key,
        temp_stem: str,
        index_key_size: int,
        compression: str = COMPRESSION_DISABLED,
    ) -> None:
        self.tenant_id = tenant_id
        self.timeline_id = timeline_id
        self.key_start = Key(key_start)
        self._compression = compression
        self._file = LayerFileWriter(ctx, timeline_dir, temp_stem)
        self._tree = DiskBtreeBuilder(index_key_size)
        self._blobs: BlobWriter | None = None
        # Validate the compression name now, not at the first value.
        check_compression(compression)
        self.num_entries = 0

    @property
    def temp_path(self) -> str:
        return self._file.temp_path

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: object, e: object, tb: object) -> None:
        if not self._file.done:
            await self.abandon()

    async def _open(self) -> BlobWriter:
        """Create the temp file; the blob writer appending to it."""
        self._blobs = BlobWriter(await self._file.open(), self._compression)
        return self._blobs

    def _check_not_empty(self) -> None:
        if self.num_entries == 0:
            raise ValueError(f"refusing to write an empty {self.KIND} layer")

    def _check_key_end(self, key_end: Key, last_key: Key) -> None:
        """``key_end`` (exclusive) must be above the last key written and the start key."""
        if key_end <= last_key or key_end <= self.key_start:
            raise ValueError(f"key_end {Key(key_end)} is not above the last key {last_key}")

    async def _write_out(
        self, name: LayerName, make_summary: Callable[[int, int], Summary]
    ) -> LayerInfo:
        """Flush the blobs, write index and summary, fsync, rename to ``name``."""
        assert self._blobs is not None
        await self._blobs.flush()
        summary, size = await self._file.finish(self._tree, make_summary, str(name))
        assert self._file.final_path is not None
        return LayerInfo(self._file.final_path, name, summary, size, self.num_entries)

    async def abandon(self) -> None:
        """Delete the temp file (or the renamed file, if finishing failed after the rename)."""
        await self._file.abandon()
