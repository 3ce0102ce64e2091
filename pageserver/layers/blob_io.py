"""Blobs: length-prefixed byte strings packed back to back (SPEC section 4).

Header forms (Neon's ``blob_io.rs``):

- ``len < 128``: one byte ``len``;
- otherwise four bytes, big-endian ``u32``: the top nibble holds compression bits
  (``0x8`` uncompressed, ``0x9`` zstd), the low 28 bits the stored length.

The writer appends header and data with a single buffered-writer call per blob: the
per-blob cost is what bounds layer-write speed in Python. The reader goes through
:class:`PagedReader`, which keeps a read-ahead window so that iterating a layer in file
order costs one large read per window rather than one read per blob.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

import zstandard

if TYPE_CHECKING:
    from pageserver.io.buffered_writer import BufferedWriter
    from pageserver.io.virtual_file import VirtualFile

PAGE_SZ: Final = 8192
MAX_BLOB_LEN: Final = 0x0FFF_FFFF
BYTE_UNCOMPRESSED: Final = 0x80
BYTE_ZSTD: Final = 0x90
LEN_COMPRESSION_BIT_MASK: Final = 0xF0
#: Neon's zstd encoder runs at the library default level.
ZSTD_LEVEL: Final = 3

COMPRESSION_DISABLED: Final = "disabled"
COMPRESSION_ZSTD: Final = "zstd"
COMPRESSION_KINDS: Final = (COMPRESSION_DISABLED, COMPRESSION_ZSTD)

_U32 = struct.Struct(">I")


class BlobError(ValueError):
    """A blob that cannot be written (too large) or read (bad header, bad offset)."""


def encode_blob_header(data_len: int, compression_bits: int = BYTE_UNCOMPRESSED) -> bytes:
    """The header for a blob whose *stored* data is ``data_len`` bytes.

    ``compression_bits`` other than uncompressed always uses the 4-byte form, as Neon
    does for compressed images (it only compresses blobs of 128 bytes or more, and the
    compressed length may be shorter than 128).
    """
    if data_len < 0 or data_len > MAX_BLOB_LEN:
        raise BlobError(f"blob too large ({data_len} bytes)")
    if data_len < 128 and compression_bits == BYTE_UNCOMPRESSED:
        return bytes((data_len,))
    if compression_bits not in (BYTE_UNCOMPRESSED, BYTE_ZSTD):
        raise BlobError(f"invalid compression bits {compression_bits:#x}")
    return _U32.pack(data_len | (compression_bits << 24))


def decode_blob_header(buf: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """Decode a header at the start of ``buf``: ``(header_len, data_len, compression_bits)``."""
    if not buf:
        raise BlobError("zero-length blob header")
    first = buf[0]
    if first < 0x80:
        return 1, first, BYTE_UNCOMPRESSED
    if len(buf) < 4:
        raise BlobError("blob header too short")
    (word,) = _U32.unpack_from(buf, 0)
    bits = first & LEN_COMPRESSION_BIT_MASK
    if bits not in (BYTE_UNCOMPRESSED, BYTE_ZSTD):
        raise BlobError(f"invalid compression bits {bits:#x}")
    return 4, word & MAX_BLOB_LEN, bits


def compress_image(data: bytes | bytearray | memoryview) -> bytes | None:
    """The zstd frame for ``data`` if it is smaller than ``data``, else ``None``."""
    compressed: bytes = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(bytes(data))
    return compressed if len(compressed) < len(data) else None


def decompress(data: bytes) -> bytes:
    """Decompress a zstd frame; works for frames without a content-size field too."""
    try:
        out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError as e:
        raise BlobError(f"invalid zstd blob: {e}") from None
    return out


class BlobWriter:
    """Appends blobs to a :class:`BufferedWriter`; returns each blob's absolute offset."""

    __slots__ = ("_bw", "_compress")

    def __init__(self, bw: BufferedWriter, compression: str = COMPRESSION_DISABLED) -> None:
        if compression not in COMPRESSION_KINDS:
            raise ValueError(f"unknown image_compression {compression!r}")
        self._bw = bw
        self._compress = compression == COMPRESSION_ZSTD

    @property
    def offset(self) -> int:
        return self._bw.offset

    async def write_blob(self, data: bytes | bytearray | memoryview) -> int:
        """Append one blob (compressed if enabled, 128 bytes or more, and smaller)."""
        n = len(data)
        if n < 128:
            return await self._bw.write(bytes((n,)) + data)
        if n > MAX_BLOB_LEN:
            raise BlobError(f"blob too large ({n} bytes)")
        if self._compress:
            compressed = compress_image(data)
            if compressed is not None:
                return await self._bw.write(
                    _U32.pack(len(compressed) | (BYTE_ZSTD << 24)) + compressed
                )
        return await self._bw.write(_U32.pack(n | 0x8000_0000) + data)


class PagedReader:
    """Reads a layer file through a :class:`VirtualFile`.

    Two caches, for the two access patterns: B-tree pages are kept in a small LRU of whole
    pages (lookups revisit the root and inner pages); blob data is served from a
    read-ahead window so sequential iteration does one large read per window.
    """

    def __init__(
        self,
        file: VirtualFile,
        file_size: int,
        window: int = 256 * 1024,
        cache_pages: int = 64,
    ) -> None:
        self.file = file
        self.file_size = file_size
        self._window_size = window
        self._win = b""
        self._win_start = 0
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._cache_pages = cache_pages

    async def read_page(self, blk: int) -> bytes:
        page = self._pages.get(blk)
        if page is not None:
            self._pages.move_to_end(blk)
            return page
        offset = blk * PAGE_SZ
        if offset + PAGE_SZ > self.file_size or blk < 0:
            raise BlobError(f"block {blk} is outside the file ({self.file_size} bytes)")
        page = await self.file.read_exact_at(PAGE_SZ, offset)
        self._pages[blk] = page
        if len(self._pages) > self._cache_pages:
            self._pages.popitem(last=False)
        return page

    async def read_at(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset``, through the read-ahead window."""
        rel = offset - self._win_start
        if 0 <= rel and rel + n <= len(self._win):
            return self._win[rel : rel + n]
        if offset < 0 or offset + n > self.file_size:
            raise BlobError(f"read of {n} bytes at {offset} is outside the file")
        if n >= self._window_size:
            return await self.file.read_exact_at(n, offset)
        start = offset - offset % PAGE_SZ
        size = min(max(self._window_size, offset + n - start), self.file_size - start)
        self._win = await self.file.read_exact_at(size, start)
        self._win_start = start
        rel = offset - start
        return self._win[rel : rel + n]

    async def read_blob(self, offset: int) -> bytes:
        """Read the blob at ``offset``, decompressing zstd blobs."""
        first = await self.read_at(offset, 1)
        if first[0] < 0x80:
            return await self.read_at(offset + 1, first[0])
        hdr_len, data_len, bits = decode_blob_header(await self.read_at(offset, 4))
        data = await self.read_at(offset + hdr_len, data_len)
        if bits == BYTE_ZSTD:
            return decompress(data)
        return data

    async def read_blob_raw(self, offset: int) -> tuple[int, int, bytes]:
        """``(header_len, compression_bits, stored bytes)`` without decompressing (dump)."""
        first = await self.read_at(offset, 1)
        if first[0] < 0x80:
            return 1, BYTE_UNCOMPRESSED, await self.read_at(offset + 1, first[0])
        hdr_len, data_len, bits = decode_blob_header(await self.read_at(offset, 4))
        return hdr_len, bits, await self.read_at(offset + hdr_len, data_len)
