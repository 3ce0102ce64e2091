"""The summary page at offset 0 of every layer file (SPEC section 4).

Big-endian: ``u16 magic, u16 format_version, [16] tenant_id, [16] timeline_id,
[18] key_start, [18] key_end``, then ``u64 lsn_start, u64 lsn_end`` (delta) or ``u64 lsn``
(image), then ``u32 index_start_blk, u32 index_root_blk``; zero-padded to 8192.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from pageserver.layers.blob_io import PAGE_SZ
from pageserver.layers.key import ID_SIZE, KEY_SIZE, Key, Lsn, TenantId, TimelineId

STORAGE_FORMAT_VERSION: Final = 3
DELTA_FILE_MAGIC: Final = 0x5A61
IMAGE_FILE_MAGIC: Final = 0x5A60

_HEAD = f">HH{ID_SIZE}s{ID_SIZE}s{KEY_SIZE}s{KEY_SIZE}s"  # magic, version, ids, key range
_DELTA = struct.Struct(_HEAD + "QQII")
_IMAGE = struct.Struct(_HEAD + "QII")
DELTA_SUMMARY_SIZE: Final = _DELTA.size  # 96
IMAGE_SUMMARY_SIZE: Final = _IMAGE.size  # 88


class SummaryError(ValueError):
    """The first page is not a layer summary this code can read."""


@dataclass(frozen=True, slots=True)
class DeltaSummary:
    tenant_id: TenantId
    timeline_id: TimelineId
    key_start: Key
    key_end: Key
    lsn_start: Lsn
    lsn_end: Lsn
    index_start_blk: int
    index_root_blk: int
    magic: int = DELTA_FILE_MAGIC
    format_version: int = STORAGE_FORMAT_VERSION

    kind: ClassVar[str] = "delta"

    def pack_page(self) -> bytes:
        page = bytearray(PAGE_SZ)
        _DELTA.pack_into(
            page, 0, self.magic, self.format_version, self.tenant_id.raw, self.timeline_id.raw,
            self.key_start, self.key_end, self.lsn_start, self.lsn_end,
            self.index_start_blk, self.index_root_blk,
        )  # fmt: skip
        return bytes(page)


@dataclass(frozen=True, slots=True)
class ImageSummary:
    tenant_id: TenantId
    timeline_id: TimelineId
    key_start: Key
    key_end: Key
    lsn: Lsn
    index_start_blk: int
    index_root_blk: int
    magic: int = IMAGE_FILE_MAGIC
    format_version: int = STORAGE_FORMAT_VERSION

    kind: ClassVar[str] = "image"

    def pack_page(self) -> bytes:
        page = bytearray(PAGE_SZ)
        _IMAGE.pack_into(
            page, 0, self.magic, self.format_version, self.tenant_id.raw, self.timeline_id.raw,
            self.key_start, self.key_end, self.lsn, self.index_start_blk, self.index_root_blk,
        )  # fmt: skip
        return bytes(page)


Summary = DeltaSummary | ImageSummary


def parse_summary(page: bytes) -> Summary:
    """Parse the first page; checks magic and format version only."""
    if len(page) < DELTA_SUMMARY_SIZE:
        raise SummaryError("file too short for a layer summary")
    magic, version = struct.unpack_from(">HH", page, 0)
    if magic not in (DELTA_FILE_MAGIC, IMAGE_FILE_MAGIC):
        raise SummaryError(f"bad magic {magic:#06x}: not a delta or image layer")
    if version != STORAGE_FORMAT_VERSION:
        raise SummaryError(
            f"unsupported storage format version {version} (expected {STORAGE_FORMAT_VERSION})"
        )
    if magic == DELTA_FILE_MAGIC:
        _, _, t, tl, ks, ke, ls, le, isb, irb = _DELTA.unpack_from(page, 0)
        return DeltaSummary(
            TenantId(t), TimelineId(tl), Key(ks), Key(ke), Lsn(ls), Lsn(le), isb, irb
        )
    _, _, t, tl, ks, ke, lsn, isb, irb = _IMAGE.unpack_from(page, 0)
    return ImageSummary(TenantId(t), TimelineId(tl), Key(ks), Key(ke), Lsn(lsn), isb, irb)
