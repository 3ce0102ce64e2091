"""Blobs: length-prefixed byte strings packed back to back (SPEC section 4).

Header forms (Neon's ``blob_io.rs``):

- ``len < 128``: one byte ``len``;
- otherwise four bytes, big-endian ``u32``: the top nibble holds compression bits
  (``0x8`` uncompressed, ``0x9`` zstd), the low 28 bits the stored length.

This module is the one codec of blob headers (:func:`encode_blob_header`,
:func:`decode_blob_header`) and holds the one :class:`BlobWriter`, used by both the delta
and the image layer writer. The per-blob cost is what bounds layer-write speed in Python,
so the writer has two ways in: :meth:`BlobWriter.stage_blob` packs a blob into a staging
buffer without any I/O (the delta writer's hot loop; the staged bytes go to the buffered
writer in large appends by :meth:`BlobWriter.flush`), and :meth:`BlobWriter.write_blob`
appends one blob with a single buffered-writer call (the image writer). The reader goes
through :class:`PagedReader`, which keeps a read-ahead window so that iterating a layer
in file order costs one large read per window rather than one read per blob.

:data:`PAGE_SZ` is the one page size of layer files: the summary page, where blobs start,
B-tree nodes (:mod:`.summary` and :mod:`.disk_btree` import it from here).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
import zstandard

from pageserver.config import DEFAULT_MAX_FRAME_BYTES, IMAGE_COMPRESSION_KINDS
from pageserver.io import Gather

if TYPE_CHECKING:
    from pageserver.io import BufferedWriter, VirtualFile

#: The page size of layer files (Neon's ``PAGE_SZ``, Postgres' ``BLCKSZ``).
PAGE_SZ: Final = 8192
MAX_BLOB_LEN: Final = 0x0FFF_FFFF
BYTE_UNCOMPRESSED: Final = 0x80
BYTE_ZSTD: Final = 0x90
LEN_COMPRESSION_BIT_MASK: Final = 0xF0
#: Blobs shorter than this have the one-byte header form (uncompressed only).
SHORT_BLOB_LEN: Final = 0x80
#: Neon compresses only images of at least this many bytes.
MIN_COMPRESS_LEN: Final = 128
#: Staged blob bytes before :class:`BlobWriter` asks for a hand-over to the buffered writer.
STAGING_BYTES: Final = 256 * 1024
#: Neon's zstd encoder runs at the library default level.
ZSTD_LEVEL: Final = 3

#: ``image_compression``'s values; their one home is the config (IMAGE_COMPRESSION_KINDS).
COMPRESSION_KINDS: Final = IMAGE_COMPRESSION_KINDS
COMPRESSION_DISABLED: Final = COMPRESSION_KINDS[0]
COMPRESSION_ZSTD: Final = COMPRESSION_KINDS[1]

_U32 = struct.Struct(">I")
#: The one-byte headers, prebuilt: a header is encoded once per value written.
_SHORT_HEADERS: Final = tuple(bytes((n,)) for n in range(SHORT_BLOB_LEN))


class BlobError(ValueError):
    """A blob that cannot be written (too large) or read (bad header, bad offset)."""


def encode_blob_header(data_len: int, compression_bits: int = BYTE_UNCOMPRESSED) -> bytes:
    """The header for a blob whose *stored* data is ``data_len`` bytes.

    ``compression_bits`` other than uncompressed always uses the 4-byte form, as Neon
    does for compressed images (it only compresses blobs of 128 bytes or more, and the
    compressed length may be shorter than 128).

    Hot path (once per value written): the short form is the first test.
    :meth:`BlobWriter.stage_blob` repeats that first test inline (the short form's table
    lookup only; everything else comes here), on purpose: measured on 100-byte values,
    calling this function instead costs about 45 ns per value, ~10% of the delta writer's
    per-value staging and ~4% of ``DeltaLayerWriter.put_value`` end to end.
    """
    if data_len < SHORT_BLOB_LEN and compression_bits == BYTE_UNCOMPRESSED and data_len >= 0:
        return _SHORT_HEADERS[data_len]
    if data_len < 0 or data_len > MAX_BLOB_LEN:
        raise BlobError(f"blob too large ({data_len} bytes)")
    if compression_bits not in (BYTE_UNCOMPRESSED, BYTE_ZSTD):
        raise BlobError(f"invalid compression bits {compression_bits:#x}")
    return _U32.pack(data_len | (compression_bits << 24))


def blob_header_len(first_byte: int) -> int:
    """How many bytes the header starting with ``first_byte`` has (1 or 4)."""
    return 1 if first_byte < SHORT_BLOB_LEN else 4


def decode_blob_header(
    buf: bytes | bytearray | memoryview, pos: int = 0
) -> tuple[int, int, int]:
    """Decode a header at ``buf[pos:]``: ``(header_len, data_len, compression_bits)``."""
    if len(buf) <= pos:
        raise BlobError("zero-length blob header")
    first = buf[pos]
    if blob_header_len(first) == 1:
        return 1, first, BYTE_UNCOMPRESSED
    if len(buf) < pos + 4:
        raise BlobError("blob header too short")
    (word,) = _U32.unpack_from(buf, pos)
    bits = first & LEN_COMPRESSION_BIT_MASK
    if bits not in (BYTE_UNCOMPRESSED, BYTE_ZSTD):
        raise BlobError(f"invalid compression bits {bits:#x}")
    return 4, word & MAX_BLOB_LEN, bits


def compress_image(data: bytes | bytearray | memoryview) -> bytes | None:
    """The zstd frame for ``data`` if it is smaller than ``data``, else ``None``."""
    compressed: bytes = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(bytes(data))
    return compressed if len(compressed) < len(data) else None


#: The most a compressed blob may decompress to: the largest value a ``put`` can carry
#: (a value travels inside one frame of at most ``max_frame_bytes``, default 16 MiB). A blob
#: that declares or produces more is corruption: without the bound a 64 KiB zstd bomb made a
#: read allocate gigabytes and stall the loop for seconds. (A daemon configured with a larger
#: ``max_frame_bytes`` could store larger images than this reads back; it is not raised with
#: the config because the layer tools read files without one.)
MAX_DECOMPRESSED_BYTES: Final = DEFAULT_MAX_FRAME_BYTES
#: Output chunk of the streamed decompression.
_DECOMPRESS_CHUNK = 1 << 20


def decompress(data: bytes, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress a zstd frame of at most ``limit`` bytes, streamed, never allocating more.

    Works for frames without a content-size field too (Neon's streaming encoder writes
    none): the output is read a chunk at a time and refused as soon as it passes ``limit``.
    """
    try:
        declared = zstandard.frame_content_size(data)
        if declared > limit:
            raise BlobError(f"zstd blob declares {declared} bytes, more than any value ({limit})")
        parts: list[bytes] = []
        total = 0
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while chunk := reader.read(_DECOMPRESS_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise BlobError(f"zstd blob decompresses to more than any value ({limit} bytes)")
                parts.append(chunk)
    except zstandard.ZstdError as e:
        raise BlobError(f"invalid zstd blob: {e}") from None
    return b"".join(parts)


def blob_sizes(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Bytes each uncompressed blob of ``lengths`` takes (header included)."""
    return lengths + np.where(lengths < SHORT_BLOB_LEN, 1, 4)


#: Equal-length values below :data:`_SLICE_COPY_MIN` bytes are copied as rows of a 2-D view
#: (one gather, one scatter) when a length has at least this many values; rarer lengths
#: are copied one slice at a time.
_ROW_COPY_MIN = 16
#: Values of at least this many bytes are copied one slice assignment each, straight into
#: place, even when many share a length. numpy's row gather moves every byte twice (into
#: a temporary of the gathered rows, then into the strided destination); for large values
#: the Python step per value costs less than that second pass. Measured on 2 MiB blocks
#: from a mapped file (the flush's case): per-value slices over the row gather 0.9x at
#: 2 KiB, 1.2x at 3 KiB, 1.4x at 4 KiB, 1.6x at 8 KiB, 1.8x at 16 KiB.
_SLICE_COPY_MIN = 4096


def pack_blobs(
    data: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint8] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Uncompressed blobs of ``data[offsets[i]:offsets[i] + lengths[i]]``, back to back:
    ``(the bytes, where each blob starts in them)``. Byte for byte what
    :meth:`BlobWriter.stage_blob` writes for the same values, for a whole batch at once:
    headers are written with array operations, and values of one length with one gather
    and one scatter of rows (the delta flush's path; a per-byte gather or a loop per value
    would cost more than the rest of the flush), except values of :data:`_SLICE_COPY_MIN`
    bytes or more, copied one slice each (fewer bytes moved, for few Python steps).

    ``out``: pack into this array (exactly :func:`blob_sizes` bytes in all) instead of a
    new one, e.g. a part of a larger block written at once."""
    n = len(lengths)
    if not n:
        return np.empty(0, np.uint8) if out is None else out, np.empty(0, np.int64)
    longest = int(lengths.max())
    if longest > MAX_BLOB_LEN:
        raise BlobError(f"blob too large ({longest} bytes)")
    src = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    if src.dtype != np.uint8:
        src = src.view(np.uint8)
    if int(lengths.min()) == longest:
        return _pack_equal(src, offsets, longest, out)
    headers, hlen = _blob_headers(lengths)
    sizes = hlen + lengths
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out = _output(out, int(ends[-1]))
    short = hlen == 1
    out[starts[short]] = headers[short, 0]
    if not short.all():
        at = starts[~short]
        for b in range(4):
            out[at + b] = headers[~short, b]
    copy_segments(src, offsets, out, starts + hlen, lengths)
    return out, starts


def _blob_headers(
    lengths: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The uncompressed blob header of each length, for a batch (:func:`encode_blob_header`'s
    rule with array operations): ``(headers, sizes)``, row ``i`` of ``headers`` holding
    header ``i`` in its first ``sizes[i]`` bytes (1 below :data:`SHORT_BLOB_LEN`, else 4:
    the length big-endian with the top bit set)."""
    short = lengths < SHORT_BLOB_LEN
    headers = np.zeros((len(lengths), 4), np.uint8)
    headers[short, 0] = lengths[short]
    if not short.all():
        word = (lengths[~short] | (BYTE_UNCOMPRESSED << 24)).astype(">u4")
        headers[~short] = word.view(np.uint8).reshape(-1, 4)
    return headers, np.where(short, 1, 4)


#: :func:`put_sorted <pageserver.layers.delta_layer.DeltaLayerWriter.put_sorted>` writes a
#: block of values as a :func:`gather_blobs` (no copy in this process) when its blobs
#: average at least this many bytes; smaller ones are packed (:func:`pack_blobs`): a piece
#: per header and per value costs the kernel more than copying small values here.
GATHER_MIN_MEAN_BYTES = 4096


def gather_blobs(
    src: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
) -> Gather:
    """The same bytes as :func:`pack_blobs` (uncompressed blobs of ``src[offsets[i]:]
    [:lengths[i]]``, back to back), as a :class:`~pageserver.io.Gather` of header and
    value pieces: the headers in a small array of their own, the values where they are in
    ``src`` (a contiguous array, e.g. a mapped ephemeral file, that must not change until
    the gather is written). Built with array operations: no step per value. Empty values
    have no piece (only their one-byte header)."""
    n = len(lengths)
    if n:
        if int(lengths.max()) > MAX_BLOB_LEN:
            raise BlobError(f"blob too large ({int(lengths.max())} bytes)")
        if int(lengths.min()) < 0:
            raise BlobError(f"negative blob length {int(lengths.min())}")
    if src.ndim != 1 or not src.flags.c_contiguous:
        raise ValueError("gather_blobs needs a contiguous one-dimensional source")
    if src.dtype != np.uint8:
        src = src.view(np.uint8)
    if n and (int(offsets.min()) < 0 or int((offsets + lengths).max()) > len(src)):
        raise IndexError(f"a value lies outside the source ({len(src)} bytes)")
    headers, hlen = _blob_headers(lengths)
    iov = np.empty((2 * n, 2), np.uint64)
    iov[0::2, 0] = np.uint64(headers.ctypes.data) + 4 * np.arange(n, dtype=np.uint64)
    iov[0::2, 1] = hlen
    iov[1::2, 0] = np.uint64(src.ctypes.data) + offsets.astype(np.uint64)
    iov[1::2, 1] = lengths
    if not lengths.all():
        iov = iov[iov[:, 1] > 0]  # no empty pieces (only the header of an empty value)
    return Gather(iov, (headers, src))


def _output(out: npt.NDArray[np.uint8] | None, size: int) -> npt.NDArray[np.uint8]:
    if out is None:
        return np.empty(size, np.uint8)
    if out.shape != (size,) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous array of {size} bytes")
    return out


def _pack_equal(
    src: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    length: int,
    out: npt.NDArray[np.uint8] | None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """:func:`pack_blobs` of values that all have ``length`` bytes (a layer of one value
    size, e.g. all page images): the blobs are the rows of an ``(n, header + length)``
    array, so the headers are one column assignment and the values one gather into a
    strided view of the rows, with no per-blob offsets, sort or scatter (which cost the
    general path as much again as the gather, the part that touches the values). Values of
    :data:`_SLICE_COPY_MIN` bytes or more are copied into the rows one slice each."""
    n = len(offsets)
    header = encode_blob_header(length)
    size = len(header) + length
    out = _output(out, n * size)
    out.reshape(n, size)[:, : len(header)] = np.frombuffer(header, np.uint8)
    if length >= _SLICE_COPY_MIN:
        _copy_slices(src, offsets.tolist(), out, range(len(header), n * size, size), length)
    elif length:
        item = f"V{length}"
        values = np.ndarray((len(src) - length + 1,), item, src, strides=(1,))
        np.ndarray((n,), item, out, offset=len(header), strides=(size,))[...] = values[offsets]
    return out, np.arange(0, n * size, size, dtype=np.int64)


def copy_segments(
    src: npt.NDArray[np.uint8],
    src_at: npt.NDArray[np.int64],
    dst: npt.NDArray[np.uint8],
    dst_at: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
) -> None:
    """``dst[dst_at[i]:][:lengths[i]] = src[src_at[i]:][:lengths[i]]`` for every ``i``
    (non-overlapping destinations): grouped by length, each common length below
    :data:`_SLICE_COPY_MIN` as one row copy, the rest one slice per value."""
    order = np.argsort(lengths, kind="stable")
    ls = lengths[order]
    cuts = np.flatnonzero(ls[1:] != ls[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(ls)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        length = int(ls[a])
        if length == 0:
            continue
        g = order[a:b]
        if b - a >= _ROW_COPY_MIN and length < _SLICE_COPY_MIN:
            # One fixed-size item per value (a ``V<length>`` view at every byte offset):
            # numpy moves whole items, not bytes.
            item = f"V{length}"
            rows = np.ndarray((len(src) - length + 1,), item, src, strides=(1,))[src_at[g]]
            np.ndarray((len(dst) - length + 1,), item, dst, strides=(1,))[dst_at[g]] = rows
        else:
            _copy_slices(src, src_at[g].tolist(), dst, dst_at[g].tolist(), length)


def _copy_slices(
    src: npt.NDArray[np.uint8],
    src_at: list[int],
    dst: npt.NDArray[np.uint8],
    dst_at: Iterable[int],
    length: int,
) -> None:
    """``dst[d:d + length] = src[s:s + length]`` for each pair: one copy per value. Like
    the row gather, a source range past the end of ``src`` is an ``IndexError``."""
    if src_at and (min(src_at) < 0 or max(src_at) + length > len(src)):
        raise IndexError(f"a value of {length} bytes lies outside the source ({len(src)} bytes)")
    dview = dst.data
    sview = src.data
    for s, d in zip(src_at, dst_at, strict=True):
        dview[d : d + length] = sview[s : s + length]


def check_compression(compression: str) -> bool:
    """Validate an ``image_compression`` setting; whether it compresses."""
    if compression not in COMPRESSION_KINDS:
        raise ValueError(f"unknown image_compression {compression!r}")
    return compression == COMPRESSION_ZSTD


class BlobWriter:
    """Appends blobs to a :class:`BufferedWriter`; each blob's absolute offset is returned.

    The one blob writer of delta and image layers. :meth:`stage_blob` packs header and
    data into a staging buffer (no I/O, no coroutine: the delta writer's per-value path)
    and sets :attr:`staging_full` once :data:`STAGING_BYTES` are staged; :meth:`flush`
    hands the staged bytes to the buffered writer in one append. :meth:`write_blob`
    appends one blob at once (the image writer). With ``compression="zstd"`` a blob of
    :data:`MIN_COMPRESS_LEN` bytes or more is stored zstd-compressed when that is smaller
    (Neon's image compression).
    """

    __slots__ = ("_bw", "_compress", "_staging", "_base", "staging_full")

    def __init__(self, bw: BufferedWriter, compression: str = COMPRESSION_DISABLED) -> None:
        self._compress = check_compression(compression)
        self._bw = bw
        self._staging = bytearray()
        #: Absolute file offset of ``_staging[0]``.
        self._base = bw.offset
        #: Whether :data:`STAGING_BYTES` or more are staged (time to :meth:`flush`). An
        #: attribute rather than a property: the delta writer reads it once per value.
        self.staging_full = False

    @property
    def compresses(self) -> bool:
        """Whether blobs may be stored compressed (``image_compression = "zstd"``)."""
        return self._compress

    @property
    def offset(self) -> int:
        """Absolute offset of the next blob (staged bytes included)."""
        return self._base + len(self._staging)

    def _encode(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[bytes, bytes | bytearray | memoryview]:
        """``(header, stored bytes)`` of one blob: compressed if enabled, long enough and
        smaller for it."""
        header = encode_blob_header(len(data))
        if self._compress and len(data) >= MIN_COMPRESS_LEN:
            compressed = compress_image(data)
            if compressed is not None:
                return encode_blob_header(len(compressed), BYTE_ZSTD), compressed
        return header, data

    def stage_blob(self, data: bytes | bytearray | memoryview) -> int:
        """Pack one blob into the staging buffer; returns its absolute offset."""
        st = self._staging
        off = self._base + len(st)
        if self._compress:
            header, data = self._encode(data)
            st += header
        else:
            # Deliberate hot-path copy of encode_blob_header's first test (see there for
            # the measured cost of the call): the short form inline, the rest delegated.
            n = len(data)
            st += _SHORT_HEADERS[n] if n < SHORT_BLOB_LEN else encode_blob_header(n)
        st += data
        self.staging_full = len(st) >= STAGING_BYTES
        return off

    async def flush(self) -> None:
        """Hand the staged blobs to the buffered writer."""
        if self._staging:
            await self._bw.write(self._staging)
            self._staging = bytearray()
            self.staging_full = False
        self._base = self._bw.offset

    async def write_packed(self, packed: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> int:
        """Append blobs already packed (by :func:`pack_blobs`; the caller lets go of them),
        after any staged blobs; the absolute offset of the first."""
        if self._staging:
            await self.flush()
        # Borrowed: the packed block is not used again, so its whole buffers are written
        # from it directly.
        data = packed.data if isinstance(packed, np.ndarray) else packed
        off: int = await self._bw.write(data, borrow=True)
        self._base = self._bw.offset
        return off

    async def write_gather(self, gather: Gather) -> int:
        """Append blobs given as a gather (by :func:`gather_blobs`), after any staged
        blobs; the absolute offset of the first."""
        if self._staging:
            await self.flush()
        off: int = await self._bw.write_gather(gather)
        self._base = self._bw.offset
        return off

    async def wait_written(self) -> None:
        """:meth:`BufferedWriter.wait_written`: every write in flight completed."""
        await self._bw.wait_written()

    async def write_blob(self, data: bytes | bytearray | memoryview) -> int:
        """Append one blob with one buffered-writer call (after any staged blobs)."""
        if self._staging:
            await self.flush()
        if self._compress:
            header, data = self._encode(data)
        else:
            header = encode_blob_header(len(data))
        blob = header + data
        off: int = await self._bw.write(blob)
        self._base = off + len(blob)
        return off


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

    @staticmethod
    def _check_blob_offset(offset: int) -> None:
        """Blobs start after the summary page (SPEC section 4: leaf offsets are >= 8192):
        an index value pointing into it names a damaged file."""
        if offset < PAGE_SZ:
            raise BlobError(f"blob offset {offset} lies in the summary page (below {PAGE_SZ})")

    async def read_blob(self, offset: int) -> bytes:
        """Read the blob at ``offset``, decompressing zstd blobs."""
        self._check_blob_offset(offset)
        rel = offset - self._win_start
        if 0 <= rel and rel + 4 <= len(self._win):
            # Hot path (iterating in file order): the header is in the read-ahead window,
            # decoded in place without another coroutine call.
            hdr_len, data_len, bits = decode_blob_header(self._win, rel)
        else:
            hdr_len, data_len, bits = await self._read_header(offset)
        data = await self.read_at(offset + hdr_len, data_len)
        if bits == BYTE_ZSTD:
            return decompress(data)
        return data

    async def read_blob_raw(self, offset: int) -> tuple[int, int, bytes]:
        """``(header_len, compression_bits, stored bytes)`` without decompressing."""
        self._check_blob_offset(offset)
        hdr_len, data_len, bits = await self._read_header(offset)
        return hdr_len, bits, await self.read_at(offset + hdr_len, data_len)

    async def _read_header(self, offset: int) -> tuple[int, int, int]:
        head = await self.read_at(offset, 1)
        if blob_header_len(head[0]) > 1:
            head = await self.read_at(offset, 4)
        return decode_blob_header(head)
