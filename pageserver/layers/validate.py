"""Startup validation of layer files (SPEC section 3).

A layer that fails validation stops startup with a message naming it, so every check
raises :class:`~pageserver.layers.common.LayerFileError` whose message starts with the
path. Checks: the name parses; size is a multiple of 8192 (and holds a summary and at
least one more page); magic and format version; index start and root blocks inside the
file; the summary's kind, key range and LSN range equal the name's; optionally, the
tenant and timeline ids are the directory's.

The B-tree's internal nodes are walked once (:meth:`DiskBtreeReader.check`: levels, no
node twice, children inside the file); leaves are not read. A file whose index is garbage
or has a cycle would otherwise only fail on the first ``get`` (a cycle used to hang it).
"""

from __future__ import annotations

import os

from pageserver.io import IoContext
from pageserver.layers.blob_io import PAGE_SZ, BlobError
from pageserver.layers.common import LayerFileError, open_index, open_layer_file, run_cleanup
from pageserver.layers.disk_btree import BtreeError
from pageserver.layers.key import TenantId, TimelineId
from pageserver.layers.layer_name import DeltaLayerName, LayerName, LayerNameError, parse_layer_name
from pageserver.layers.summary import DeltaSummary, ImageSummary, Summary


def check_summary_matches_name(path: str, name: LayerName, summary: Summary) -> None:
    got: tuple[int, ...]
    want: tuple[int, ...]
    if isinstance(name, DeltaLayerName):
        if not isinstance(summary, DeltaSummary):
            raise LayerFileError(f"{path}: named as a delta layer but holds an image layer")
        got = (summary.lsn_start, summary.lsn_end)
        want = (name.lsn_start, name.lsn_end)
    else:
        if not isinstance(summary, ImageSummary):
            raise LayerFileError(f"{path}: named as an image layer but holds a delta layer")
        got = (summary.lsn,)
        want = (name.lsn,)
    if (summary.key_start, summary.key_end) != (name.key_start, name.key_end):
        raise LayerFileError(
            f"{path}: summary key range {summary.key_start}-{summary.key_end} differs from "
            f"the file name's {name.key_start}-{name.key_end}"
        )
    if got != want:
        raise LayerFileError(
            f"{path}: summary LSN range {_fmt(got)} differs from the file name's {_fmt(want)}"
        )


def _fmt(t: tuple[int, ...]) -> str:
    return "..".join(f"{x:X}" for x in t)


async def validate_layer_file(
    ctx: IoContext,
    path: str,
    *,
    tenant_id: TenantId | None = None,
    timeline_id: TimelineId | None = None,
) -> tuple[LayerName, Summary, int]:
    """Validate one layer file; return its parsed name, summary and size."""
    path = os.fspath(path)
    try:
        name = parse_layer_name(os.path.basename(path))
    except LayerNameError as e:
        raise LayerFileError(f"{path}: {e}") from None
    vf, reader, summary = await open_layer_file(ctx, path)
    try:
        check_summary_matches_name(path, name, summary)
        if tenant_id is not None and summary.tenant_id != tenant_id:
            raise LayerFileError(f"{path}: belongs to tenant {summary.tenant_id}, not {tenant_id}")
        if timeline_id is not None and summary.timeline_id != timeline_id:
            raise LayerFileError(
                f"{path}: belongs to timeline {summary.timeline_id}, not {timeline_id}"
            )
        try:
            await open_index(reader, summary).check(reader.file_size // PAGE_SZ)
        except (BtreeError, BlobError) as e:
            raise LayerFileError(f"{path}: B-tree index: {e}") from None
        return name, summary, reader.file_size
    finally:
        await run_cleanup(vf.close)
