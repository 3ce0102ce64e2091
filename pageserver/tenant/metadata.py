"""The timeline ``metadata`` file (SPEC section 3): its name, its format and its I/O.

One small JSON object, ``{"disk_consistent_lsn", "format_version", "gc_cutoff_lsn",
"start_lsn"}`` with sorted keys and a trailing newline, always replaced with the
crash-safe overwrite. A timeline directory without it is what a crash during timeline
creation leaves behind. Only what this module decodes is trusted: anything else is
:class:`CorruptLayer`, which stops startup naming the file.

``gc_cutoff_lsn`` (SPEC section 11) came later than the other fields: a file without it
is read as ``gc_cutoff_lsn = start_lsn`` (nothing was ever collected), so data
directories written before GC existed still start.

The file is written by the flush (a new ``disk_consistent_lsn``) and by GC (a new
``gc_cutoff_lsn``), each writing both fields: the timeline serialises the two writers
(its metadata lock), so neither can put back the other's older value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pageserver.errors import CorruptLayer
from pageserver.io import IoContext

METADATA_FILE = "metadata"
METADATA_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class TimelineMetadata:
    disk_consistent_lsn: int
    start_lsn: int
    gc_cutoff_lsn: int


def encode_metadata(meta: TimelineMetadata) -> bytes:
    return (
        json.dumps(
            {
                "format_version": METADATA_FORMAT_VERSION,
                "disk_consistent_lsn": meta.disk_consistent_lsn,
                "start_lsn": meta.start_lsn,
                "gc_cutoff_lsn": meta.gc_cutoff_lsn,
            },
            sort_keys=True,
        ).encode()
        + b"\n"
    )


def decode_metadata(path: str, raw: bytes) -> TimelineMetadata:
    """The file's fields; raises :class:`CorruptLayer` naming ``path``."""
    try:
        data = json.loads(raw)
        if data.get("format_version") != METADATA_FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {data.get('format_version')!r}")
        dcl, start = data["disk_consistent_lsn"], data["start_lsn"]
        cutoff = data.get("gc_cutoff_lsn", start)
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (dcl, start, cutoff)
        ):
            raise ValueError("LSNs must be unsigned integers")
        if cutoff < start:
            raise ValueError(f"gc_cutoff_lsn {cutoff} is below start_lsn {start}")
        return TimelineMetadata(dcl, start, cutoff)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptLayer(f"{path}: invalid timeline metadata: {e}") from None


def metadata_path(timeline_dir: str) -> str:
    return os.path.join(timeline_dir, METADATA_FILE)


async def write_metadata(ctx: IoContext, timeline_dir: str, meta: TimelineMetadata) -> None:
    """Replace the timeline's metadata file (crash-safe overwrite)."""
    await ctx.crashsafe_overwrite(metadata_path(timeline_dir), encode_metadata(meta))


async def read_metadata(ctx: IoContext, timeline_dir: str) -> TimelineMetadata:
    """The metadata of the timeline in ``timeline_dir``."""
    path = metadata_path(timeline_dir)
    vf = await ctx.open(path)
    try:
        raw = await vf.read_exact_at((await vf.metadata()).size, 0)
    finally:
        await vf.close()
    return decode_metadata(path, raw)
