"""Downloading a layer file on demand, and reading one for upload (SPEC section 10).

Both move *layer files*, so both go through VirtualFile and the configured io engine, as a
layer-writing job (``ctx.run_job``: one worker thread under std-fs, io_uring submissions
on the loop under trio-uring). Only the network request runs in the backend's thread.

A download: fetch the object (its size must equal the index's ``file_size``, else nothing
is written), write ``<final>.<n>.___temp`` (O_EXCL), fsync it, check its size again,
rename it to the final name without replacing, fsync the directory. Any failure removes
the temp file, so a failed or short download never leaves a file under a final name (and
startup removes ``*.___temp`` leftovers of a crash).

Before anything is written the object gets the checks startup gives a local layer file
(:func:`check_downloaded_layer`): structure and summary, the summary against the name, and
one walk of the B-tree's internal nodes (levels, no node reached twice, children inside
the file). A damaged or hostile object (an index whose nodes form a cycle or a DAG, say)
is a :class:`~pageserver.layers.common.LayerFileError` naming the layer, and is never
written: a layer downloaded on demand is not trusted more than one found at startup.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from pageserver.errors import PageserverError
from pageserver.io import TEMP_SUFFIX, IoContext, cleanup_shield, cooperative_checkpoint
from pageserver.layers.blob_io import PAGE_SZ, BlobError
from pageserver.layers.common import LayerFileError, check_structure, index_key_size
from pageserver.layers.disk_btree import BtreeError, DiskBtreeReader
from pageserver.layers.layer_name import LayerNameError, parse_layer_name
from pageserver.layers.validate import check_summary_matches_name

#: Bytes per write (and per read) of a layer transfer.
CHUNK = 1 << 20

_temp_seq = itertools.count()


class DownloadSizeMismatch(PageserverError):
    """An object whose size differs from the index's ``file_size`` (nothing is written)."""


async def write_downloaded_layer(ctx: IoContext, final_path: str, data: bytes, file_size: int) -> None:
    """The job: ``data`` to a temp file, fsync, size check, rename to ``final_path``."""
    if len(data) != file_size:
        raise DownloadSizeMismatch(
            f"{os.path.basename(final_path)}: downloaded {len(data)} bytes, index says {file_size}"
        )
    await check_downloaded_layer(final_path, data)
    tmp = f"{final_path}.{next(_temp_seq):x}{TEMP_SUFFIX}"
    vf = await ctx.create_new(tmp)
    renamed = False
    try:
        view = memoryview(data)
        for off in range(0, len(view), CHUNK):
            await vf.write_all_at(view[off : off + CHUNK], off)
            await cooperative_checkpoint()
        await vf.sync_all()
        size = (await vf.metadata()).size
        if size != file_size:
            raise DownloadSizeMismatch(
                f"{os.path.basename(final_path)}: wrote {size} bytes, index says {file_size}"
            )
        await vf.close()
        # The commit step: once the rename is issued it is completed (shielded on the loop),
        # so a cancelled read cannot leave a whole file under the final name that the
        # layer map still calls remote-only (every later download would then collide).
        with cleanup_shield():
            await ctx.rename_noreplace(tmp, final_path)
            renamed = True
            await ctx.fsync_dir(os.path.dirname(final_path))
    finally:
        if not renamed:
            with cleanup_shield():
                await vf.close()
                try:
                    await ctx.unlink(tmp)
                except FileNotFoundError:
                    pass


async def check_downloaded_layer(final_path: str, data: bytes) -> None:
    """Startup's checks of a layer file (``validate_layer_file``), on the downloaded bytes
    in memory: :class:`LayerFileError` naming ``final_path`` if they fail."""
    try:
        name = parse_layer_name(os.path.basename(final_path))
    except LayerNameError as e:
        raise LayerFileError(f"{final_path}: {e}") from None
    view = memoryview(data)
    summary = check_structure(final_path, len(data), bytes(view[:PAGE_SZ]))
    check_summary_matches_name(final_path, name, summary)

    async def read_page(blk: int) -> bytes:
        await cooperative_checkpoint()
        return bytes(view[blk * PAGE_SZ : (blk + 1) * PAGE_SZ])

    index = DiskBtreeReader(
        read_page, summary.index_start_blk, summary.index_root_blk, index_key_size(summary)
    )
    try:
        await index.check(len(data) // PAGE_SZ)
    except (BtreeError, BlobError) as e:
        raise LayerFileError(f"{final_path}: downloaded layer's B-tree index: {e}") from None


async def read_layer_file(ctx: IoContext, path: str) -> memoryview:
    """The job: a whole local layer file, for an upload (read in place, no copies).

    Into ``numpy.empty``, not ``bytearray(size)``: CPython zero-fills a new bytearray, one
    pass over the whole layer holding the GIL (256 MiB: ~110 ms, on the event loop under
    trio-uring) for bytes the reads overwrite at once. Fresh memory of that size is mapped
    lazily, so its pages are faulted in by the reads themselves: in the kernel's copy,
    with the GIL released (std-fs) or in an io_uring worker (trio-uring).
    """
    vf = await ctx.open(path)
    try:
        size = (await vf.metadata()).size
        view = np.empty(size, np.uint8).data
        for off in range(0, size, CHUNK):
            await vf.read_exact_at_into(view[off : off + CHUNK], off)
            await cooperative_checkpoint()
        return view
    finally:
        with cleanup_shield():
            await vf.close()
