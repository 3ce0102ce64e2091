"""The timeline ``metadata`` file (SPEC section 3): its name, its format and its I/O.

One small JSON object, ``{"disk_consistent_lsn", "format_version", "start_lsn"}`` with
sorted keys and a trailing newline, always replaced with the crash-safe overwrite. A
timeline directory without it is what a crash during timeline creation leaves behind.
Only what this module decodes is trusted: anything else is :class:`CorruptLayer`, which
stops startup naming the file.
"""

from __future__ import annotations

import json
import os

from pageserver.errors import CorruptLayer
from pageserver.io import IoContext

METADATA_FILE = "metadata"
METADATA_FORMAT_VERSION = 1


def encode_metadata(disk_consistent_lsn: int, start_lsn: int) -> bytes:
    return (
        json.dumps(
            {
                "format_version": METADATA_FORMAT_VERSION,
                "disk_consistent_lsn": disk_consistent_lsn,
                "start_lsn": start_lsn,
            },
            sort_keys=True,
        ).encode()
        + b"\n"
    )


def decode_metadata(path: str, raw: bytes) -> tuple[int, int]:
    """``(disk_consistent_lsn, start_lsn)``; raises :class:`CorruptLayer` naming ``path``."""
    try:
        data = json.loads(raw)
        if data.get("format_version") != METADATA_FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {data.get('format_version')!r}")
        dcl, start = data["disk_consistent_lsn"], data["start_lsn"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (dcl, start)):
            raise ValueError("LSNs must be unsigned integers")
        return dcl, start
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptLayer(f"{path}: invalid timeline metadata: {e}") from None


def metadata_path(timeline_dir: str) -> str:
    return os.path.join(timeline_dir, METADATA_FILE)


async def write_metadata(
    ctx: IoContext, timeline_dir: str, disk_consistent_lsn: int, start_lsn: int
) -> None:
    """Replace the timeline's metadata file (crash-safe overwrite)."""
    await ctx.crashsafe_overwrite(
        metadata_path(timeline_dir), encode_metadata(disk_consistent_lsn, start_lsn)
    )


async def read_metadata(ctx: IoContext, timeline_dir: str) -> tuple[int, int]:
    """``(disk_consistent_lsn, start_lsn)`` of the timeline in ``timeline_dir``."""
    path = metadata_path(timeline_dir)
    vf = await ctx.open(path)
    try:
        raw = await vf.read_exact_at((await vf.metadata()).size, 0)
    finally:
        await vf.close()
    return decode_metadata(path, raw)
