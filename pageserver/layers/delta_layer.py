"""Delta layers: every (key, lsn) -> Value of a key range and LSN range (SPEC section 4).

File: summary (magic ``0x5A61``) at 0; Value blobs from 8192 in (key, lsn) order; a
B-tree with 26-byte keys (``key ++ lsn as u64 BE``) whose values are
``blob_offset << 1 | will_init``; the ``will_init`` bit lets a reader find where
reconstruction starts without reading the values.

Writing runs inside offloaded jobs (``ctx.run_job``), so :class:`DeltaLayerWriter` uses
no trio primitive; it yields under trio-uring with ``cooperative_checkpoint``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt

from pageserver.io import IoContext, cooperative_checkpoint
from pageserver.layers.blob_io import (
    BYTE_UNCOMPRESSED,
    BYTE_ZSTD,
    GATHER_MIN_MEAN_BYTES,
    LEN_COMPRESSION_BIT_MASK,
    MAX_BLOB_LEN,
    PAGE_SZ,
    SHORT_BLOB_LEN,
    BlobError,
    BlobWriter,
    blob_sizes,
    decompress,
    gather_blobs,
    pack_blobs,
)
from pageserver.layers.common import (
    DELTA_KEY_SIZE,
    BatchIterator,
    LayerFileError,
    LayerInfo,
    OpenLayerFile,
    reading_layer,
)
from pageserver.layers.disk_btree import BtreeError, Node
from pageserver.layers.key import KEY_SIZE, MAX_LSN, Key, Lsn, TenantId, TimelineId
from pageserver.layers.layer_name import DeltaLayerName, layer_name_text
from pageserver.layers.summary import DeltaSummary
from pageserver.layers.value import Value, encode_value, value_will_init
from pageserver.layers.value_check import validate_value
from pageserver.layers.writer import LayerWriter, resolve_end

_LSN = struct.Struct(">Q")
#: Staged entries before a hand-over to the B-tree builder (and of the blobs to the
#: buffered writer, also after ``blob_io.STAGING_BYTES``); also where the job yields under
#: trio-uring, where it runs on the loop.
STAGING_ENTRIES: Final = 2048
#: Blob bytes per block of :meth:`DeltaLayerWriter.put_sorted`: values packed into one
#: array and handed to the buffered writer in one write. The writer takes the block's
#: whole buffers without copying them (``borrow``, one write of them all), and copies what
#: tops up its current buffer and what is left over, about one buffer (256 KiB) per block.
#: 2 MiB rather than 512 KiB: fewer, larger writes and a quarter of the per-block copies
#: and calls. Measured in process (30k x 8 KiB flushes, alternating runs): trio-uring
#: 810-880 -> 1,280-1,390 MiB/s, std-fs 1,000 -> 1,170-1,210 MiB/s; 100 B layers +5-15%.
#: Writing the same 2 MiB block as eight 256 KiB writes kept only a third of that gain.
#: The price, under trio-uring: submitting a larger buffered write costs the loop more
#: (measured on its thread: ~0.05 ms for 512 KiB, ~0.12 ms for 2 MiB; the copy itself is
#: an io-wq worker's), so the step that writes a block is longer; the in-process ticker's
#: p99 during an 8 KiB flush went from 0.8-1.1 to 1.1-1.3 ms.
SORTED_WRITE_BYTES: Final = 2 << 20
#: Blob bytes per block written as a gather (values of GATHER_MIN_MEAN_BYTES or more on
#: average: no packing, the kernel copies each value from where it is; see
#: :mod:`pageserver.io.gather`). Smaller than SORTED_WRITE_BYTES because the copy now
#: reads the mapped ephemeral file, faulting its pages in, so a block's copy is longer,
#: and under trio-uring the io-wq worker that makes it, woken by the submission, often
#: runs on the loop's CPU and preempts it (2 CPUs): daemon 60k x 8 KiB, 1 ms ticker p99
#: during the flush 0.8-1.5 ms before gathers, 2.0-2.6 with 2 MiB gathers, 0.9-1.8 with
#: 1 MiB, 0.8-1.4 with 512 KiB; durable rec/s ~74-76k before, ~83k with 1 MiB, ~78k with
#: 512 KiB (alternating runs, same minutes).
GATHER_WRITE_BYTES: Final = 1 << 20
#: Values packed per step, at most: a block of more is packed in pieces, a step each, the
#: last one with the block's write. Gathering values scattered over the frozen layer
#: costs ~50 ns each however short (cache and TLB misses), so a block of 100-byte values
#: (~20k) is five steps of ~0.2-0.3 ms.
SORTED_CHUNK_RECORDS: Final = 4096
#: Blob bytes packed per step, at most (the other bound of a piece; a single larger value
#: is a piece of its own): a 2 MiB block of 8 KiB values (256) in one piece was one ~1 ms
#: gather followed in the same step by the block's write; the in-process ticker's p99
#: during a flush was 1.7-2.1 ms.
SORTED_CHUNK_BYTES: Final = 512 << 10
#: Index entries per step of :meth:`DeltaLayerWriter.put_sorted` (~40 ns each).
SORTED_INDEX_RECORDS: Final = 8192
_NEW, _OPEN, _CLOSED = 0, 1, 2


def delta_key(key: bytes, lsn: int) -> bytes:
    """The index key of a delta layer entry: ``key ++ lsn`` (u64 big-endian)."""
    return key + _LSN.pack(lsn)


_KEY_INTS: Final = np.dtype([("a", ">u8"), ("b", ">u8"), ("c", ">u2")])
#: A delta layer's index key: ``key ++ lsn`` (u64 big-endian).
_DELTA_KEY: Final = np.dtype([("key", f"S{KEY_SIZE}"), ("lsn", ">u8")])


def first_not_above(keys: npt.NDArray[np.bytes_], lsns: npt.NDArray[np.uint64]) -> int | None:
    """The first ``i`` whose (key, lsn) is not above entry ``i - 1``'s, or None if they
    strictly increase. Keys compared as three integers (the 18 bytes big-endian): about
    3x faster than comparing them as ``S18`` strings, whose loop walks the leading NULs
    of real keys byte by byte."""
    n = len(lsns)
    if n < 2:
        return None
    ints = keys.view(_KEY_INTS)
    above = np.zeros(n - 1, np.bool_)
    equal = np.ones(n - 1, np.bool_)
    for field in ("a", "b", "c"):
        x = ints[field].astype(np.uint64)
        above |= equal & (x[1:] > x[:-1])
        equal &= x[1:] == x[:-1]
    above |= equal & (lsns[1:] > lsns[:-1])
    return None if above.all() else int(np.argmin(above)) + 1


class DeltaLayerWriter(LayerWriter):
    """Writes one delta layer. Values must come in strictly increasing (key, lsn) order.

    ``lsn_end`` (exclusive) may be given here or to :meth:`finish`. Use as an async
    context manager, or call :meth:`abandon` on every path that does not reach
    :meth:`finish`; any error inside the writer's own methods abandons it already.
    """

    KIND = "delta"

    def __init__(
        self,
        ctx: IoContext,
        timeline_dir: str,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        key_start: Key,
        lsn_start: int,
        lsn_end: int | None = None,
    ) -> None:
        key_start = Key(key_start)
        self.lsn_start = Lsn(lsn_start)
        self.lsn_end = None if lsn_end is None else Lsn(lsn_end)
        super().__init__(
            ctx, timeline_dir, tenant_id, timeline_id, key_start,
            layer_name_text(key_start, None, (self.lsn_start, self.lsn_end)), DELTA_KEY_SIZE,
        )  # fmt: skip
        # Staging: the blob writer packs the values (``stage_blob``) and hands them to the
        # buffered writer in large appends; their B-tree entries wait beside them and go
        # to the builder in one ``extend`` call. Per value that leaves a few appends.
        self._state = _NEW
        self._staged_keys: list[bytes] = []
        self._staged_refs: list[int] = []
        self._max_lsn = -1
        # Just below (key_start, 0), so that the order check also rejects keys below
        # the layer's key range.
        ks = self.key_start.to_int()
        self._last_dk = b"" if ks == 0 else delta_key(Key.from_int(ks - 1), MAX_LSN)

    @property
    def size_estimate(self) -> int:
        """Bytes the file would have if finished now (values + index so far + summary)."""
        values_end = PAGE_SZ if self._blobs is None else self._blobs.offset
        return values_end + PAGE_SZ * (len(self._tree.pages) + 1)

    async def _open_staging(self) -> BlobWriter:
        if self._state != _NEW:
            raise RuntimeError("this delta layer writer is already finished or abandoned")
        blobs = await self._open()
        self._state = _OPEN
        return blobs

    def _stage(
        self, key: bytes, lsn: int, value: bytes | bytearray | memoryview | Value,
        will_init: bool | None,
    ) -> bool:  # fmt: skip
        """Stage one value; True when the staging area should be flushed."""
        if type(value) is not bytes:
            if isinstance(value, bytearray | memoryview):
                value = bytes(value)
            else:
                assert not isinstance(value, bytes)
                will_init = value.will_init
                value = encode_value(value)
        if will_init is None:
            will_init = value_will_init(value)
        if lsn < self.lsn_start:
            raise ValueError(f"lsn {lsn} below the layer's start {self.lsn_start}")
        dk = key + _LSN.pack(lsn)  # delta_key(), inline: once per value
        if dk <= self._last_dk or len(dk) != DELTA_KEY_SIZE:
            raise ValueError(
                f"(key, lsn) ({bytes(key).hex()}, {lsn}) is not above the previous one "
                f"(or below the layer's key start), or the key is not {KEY_SIZE} bytes"
            )
        blobs = self._blobs
        assert blobs is not None
        off = blobs.stage_blob(value)
        self._last_dk = dk
        self._staged_keys.append(dk)
        self._staged_refs.append((off << 1) | will_init)
        if lsn > self._max_lsn:
            self._max_lsn = lsn
        self.num_entries += 1
        return blobs.staging_full or len(self._staged_keys) >= STAGING_ENTRIES

    async def _flush_staging(self) -> None:
        assert self._blobs is not None
        await self._blobs.flush()
        self._tree.extend(self._staged_keys, self._staged_refs)
        self._staged_keys = []
        self._staged_refs = []
        await cooperative_checkpoint()

    async def put_value(
        self,
        key: bytes,
        lsn: int,
        value: bytes | bytearray | memoryview | Value,
        will_init: bool | None = None,
    ) -> None:
        """Append one value: encoded bytes (``will_init`` read from them unless given),
        or a Value object, which is encoded here."""
        try:
            if self._state != _OPEN:
                await self._open_staging()
            if self._stage(key, lsn, value, will_init):
                await self._flush_staging()
        except BaseException:
            await self._file.abandon()
            self._state = _CLOSED
            raise

    async def put_values(
        self, entries: Iterable[tuple[bytes, int, bytes | bytearray | memoryview | Value]]
    ) -> None:
        """Append many values in order: the batch form of :meth:`put_value`, with one
        coroutine call per batch instead of per value."""
        try:
            if self._state != _OPEN:
                await self._open_staging()
            stage = self._stage
            for key, lsn, value in entries:
                if stage(key, lsn, value, None):
                    await self._flush_staging()
        except BaseException:
            await self._file.abandon()
            self._state = _CLOSED
            raise

    async def put_sorted(
        self,
        keys: npt.NDArray[np.bytes_],
        lsns: npt.NDArray[np.uint64],
        data: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
        offs: npt.NDArray[np.int64],
        lens: npt.NDArray[np.int64],
        will_init: npt.NDArray[np.bool_],
    ) -> None:
        """Append entries given as columns, in strictly increasing (key, lsn) order: key
        ``i`` (``S18``), LSN ``i``, value ``data[offs[i]:offs[i] + lens[i]]`` (encoded).

        The flush's path: the same file as :meth:`put_value` per entry, built with array
        operations: the order checked once (:func:`first_not_above`), the B-tree fed by
        :meth:`~pageserver.layers.disk_btree.DiskBtreeBuilder.extend_sorted` with the
        offsets the blobs will have, then the blobs packed by
        :func:`~pageserver.layers.blob_io.pack_blobs` a chunk at a time; each piece is one
        step of bounded size (:data:`SORTED_INDEX_RECORDS`, :data:`SORTED_WRITE_BYTES`,
        :data:`SORTED_CHUNK_RECORDS`, :data:`SORTED_CHUNK_BYTES`), with a checkpoint after
        it under trio-uring. Blocks of large values (:data:`~pageserver.layers.blob_io.
        GATHER_MIN_MEAN_BYTES` on average) are not packed: each is one gathered write of
        up to :data:`GATHER_WRITE_BYTES` straight from ``data``
        (:func:`~pageserver.layers.blob_io.gather_blobs`), and before returning the call
        waits for those writes, so that ``data``'s memory is the caller's again.
        """
        n = len(lsns)
        try:
            if self._state != _OPEN:
                await self._open_staging()
            if not n:
                return
            blobs = self._blobs
            assert blobs is not None
            if blobs.compresses:
                view = data.data if isinstance(data, np.ndarray) else memoryview(data)
                stage = self._stage
                for i, (lsn, off, ln, w) in enumerate(
                    zip(lsns.tolist(), offs.tolist(), lens.tolist(), will_init.tolist(), strict=True)
                ):
                    if stage(keys[i : i + 1].tobytes(), lsn, bytes(view[off : off + ln]), w):
                        await self._flush_staging()
                return
            dks = np.empty(n, _DELTA_KEY)
            dks["key"] = keys
            dks["lsn"] = lsns
            dk2d = dks.view(np.uint8).reshape(n, DELTA_KEY_SIZE)
            if int(lsns.min()) < self.lsn_start:
                raise ValueError(f"lsn {int(lsns.min())} below the layer's start {self.lsn_start}")
            bad = 0 if dk2d[0].tobytes() <= self._last_dk else first_not_above(keys, lsns)
            if bad is not None:
                raise ValueError(
                    f"(key, lsn) ({keys[bad : bad + 1].tobytes().hex()}, {int(lsns[bad])}) is not "
                    "above the previous one (or below the layer's key start)"
                )
            await self._flush_staging()  # values staged one by one before go first
            # Where each blob will be: packed back to back from the blob writer's offset
            # (``write_packed`` appends exactly there). So the index is built first, a
            # step of up to SORTED_INDEX_RECORDS entries at a time, and the values follow.
            sizes = blob_sizes(lens)
            ends = np.cumsum(sizes)
            first = blobs.offset
            refs = ends - sizes
            refs += first
            refs <<= 1
            refs |= will_init
            for start in range(0, n, SORTED_INDEX_RECORDS):
                end = min(n, start + SORTED_INDEX_RECORDS)
                self._tree.extend_sorted(dk2d[start:end], refs[start:end].view(np.uint64), ordered=True)
                await cooperative_checkpoint()
            # Values: blocks of about SORTED_WRITE_BYTES, each packed in pieces of at most
            # SORTED_CHUNK_RECORDS values and SORTED_CHUNK_BYTES of blobs (one larger value
            # is a piece of its own), cut greedily at the block's equal shares of both
            # (whole values: 255 of 8 KiB make 63+63+63+63+3), a step each, the last one
            # with the block's write.
            src = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
            gathered = False
            start = 0
            while start < n:
                base = int(ends[start - 1]) if start else 0
                stop = max(start + 1, int(ends.searchsorted(base + SORTED_WRITE_BYTES, "right")))
                size = int(ends[stop - 1]) - base
                count = stop - start
                gstop = max(start + 1, int(ends.searchsorted(base + GATHER_WRITE_BYTES, "right")))
                gsize = int(ends[gstop - 1]) - base
                if gsize >= GATHER_MIN_MEAN_BYTES * (gstop - start) and src.flags.c_contiguous:
                    # Large values: the next GATHER_WRITE_BYTES are written from where they
                    # are, the kernel making the only copy (pageserver.io.gather).
                    stop = gstop
                    gather = gather_blobs(src, offs[start:stop], lens[start:stop])
                    at = await blobs.write_gather(gather)
                    assert at == first + base, "blobs not where the index says"
                    gathered = True
                    await cooperative_checkpoint()
                    start = stop
                    continue
                block = np.empty(size, np.uint8)
                per_count = -(-count // -(-count // SORTED_CHUNK_RECORDS))
                per_bytes = -(-size // -(-size // SORTED_CHUNK_BYTES))
                a = start
                while True:
                    done = int(ends[a - 1]) if a else 0
                    by_bytes = int(ends.searchsorted(done + per_bytes, "right"))
                    b = min(stop, a + per_count, max(a + 1, by_bytes))
                    pack_blobs(
                        data, offs[a:b], lens[a:b], out=block[done - base : int(ends[b - 1]) - base]
                    )
                    if b == stop:
                        break
                    await cooperative_checkpoint()
                    a = b
                at = await blobs.write_packed(block)
                assert at == first + base, "blobs not where the index says"
                await cooperative_checkpoint()
                start = stop
            if gathered:
                # The kernel reads the values from ``data`` until these writes complete:
                # the caller may drop those pages from its mapping once this returns (the
                # flush does, slice by slice); faulted in again by a late write, they
                # would stay mapped to the end.
                await blobs.wait_written()
            self._last_dk = dk2d[n - 1].tobytes()
            self._max_lsn = max(self._max_lsn, int(lsns.max()))
            self.num_entries += n
        except BaseException:
            await self._file.abandon()
            self._state = _CLOSED
            raise

    async def finish(self, key_end: Key, lsn_end: int | None = None) -> LayerInfo:
        """Write index and summary, fsync, and rename to the final name."""
        try:
            lsn_end = resolve_end(lsn_end, self.lsn_end, "lsn_end")
            self._check_not_empty()
            if self._state != _OPEN:
                raise RuntimeError("this delta layer writer is already finished or abandoned")
            await self._flush_staging()
            self._check_key_end(key_end, Key(self._last_dk[:KEY_SIZE]))
            if lsn_end <= self._max_lsn:
                raise ValueError(f"lsn_end {lsn_end} is not above the last lsn {self._max_lsn}")
            name = DeltaLayerName(self.key_start, Key(key_end), self.lsn_start, Lsn(lsn_end))

            def make_summary(index_start_blk: int, root_blk: int) -> DeltaSummary:
                return DeltaSummary(
                    self.tenant_id, self.timeline_id, name.key_start, name.key_end,
                    name.lsn_start, name.lsn_end, index_start_blk, root_blk,
                )  # fmt: skip

            return await self._write_out(name, make_summary)
        except BaseException:
            await self._file.abandon()
            raise
        finally:
            self._state = _CLOSED

    async def abandon(self) -> None:
        """Delete the temp file (or the renamed file, if finishing failed after the rename)."""
        self._state = _CLOSED
        await self._file.abandon()


class DeltaLayer(OpenLayerFile[DeltaSummary]):
    """A delta layer file opened for reading."""

    SUMMARY = DeltaSummary

    @property
    def lsn_range(self) -> tuple[Lsn, Lsn]:
        return self.summary.lsn_start, self.summary.lsn_end

    async def get_values_reconstruct_data(
        self, key: bytes, lsn_range: tuple[int, int]
    ) -> list[tuple[Lsn, bytes]]:
        """Values of ``key`` with ``lsn_range[0] <= lsn < lsn_range[1]``, newest first.

        Stops after the first ``will_init`` value (inclusive): older values cannot
        matter for reconstruction. Values are the encoded bytes (decode with
        :func:`pageserver.layers.value.decode_value`).
        """
        start, end = lsn_range
        if end <= start or end <= 0:
            return []
        with reading_layer(self.path):
            return await self._values(key, start, end)

    async def _values(self, key: bytes, start: int, end: int) -> list[tuple[Lsn, bytes]]:
        refs: list[tuple[int, int]] = []
        it = self.index.iter(delta_key(key, end - 1), forward=False)
        done = False
        want = 8  # most keys have few versions in one layer; grow for those with many
        while not done:
            batch = await it.next_batch(want)
            want = min(want * 4, 1024)
            if not batch:
                break
            for dk, ref in batch:
                if dk[:KEY_SIZE] != key:
                    done = True
                    break
                lsn = _LSN.unpack_from(dk, KEY_SIZE)[0]
                if lsn < start:
                    done = True
                    break
                refs.append((lsn, ref))
                if ref & 1:
                    done = True
                    break
        read_blob = self._reader.read_blob
        out = [(Lsn(lsn), await read_blob(ref >> 1)) for lsn, ref in refs]
        # The read path looks into these values (image or will_init?): a damaged one must
        # be an error naming this file, not an IndexError in the reconstruction.
        for lsn, raw in out:
            why = validate_value(raw, ingest=False)  # the encoding, not ingest rules
            if why is not None:
                raise LayerFileError(f"{self.path}: corrupt value at lsn {lsn}: {why}")
        return out

    def iter_index(self, start_key: bytes = Key.MIN) -> DeltaIndexIterator:
        """``(key, lsn, blob offset, will_init)`` from ``start_key``, in (key, lsn) order."""
        return DeltaIndexIterator(self, start_key, with_values=False)

    def iter_all(self, start_key: bytes = Key.MIN) -> DeltaIndexIterator:
        """``(key, lsn, offset, will_init, value bytes)`` in (key, lsn) order."""
        return DeltaIndexIterator(self, start_key, with_values=True)

    def iter_index_columns(self) -> DeltaIndexColumns:
        """The whole index in (key, lsn) order as arrays, a leaf page at a time."""
        return DeltaIndexColumns(self)

    async def read_values(
        self, offsets: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The values (stored bytes, decompressed if zstd: what :meth:`iter_all` returns)
        of the blobs at ``offsets`` (a run of entries, in file order) as
        ``(buffer, start in it, length)`` per offset: one read of the span they cover.

        The batch form of reading entries' values: headers decoded with array operations.
        """
        with reading_layer(self.path):
            return await self._read_values(offsets)

    async def _read_values(
        self, offsets: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        n = len(offsets)
        if not n:
            return np.empty(0, np.uint8), np.empty(0, np.int64), np.empty(0, np.int64)
        size = self.file_size
        lo, hi = int(offsets.min()), int(offsets.max())
        if lo < 0 or hi >= size:
            raise BlobError(f"blob offset outside the file ({size} bytes)")
        reader = self._reader
        raw = await reader.read_at(lo, min(hi + 4, size) - lo)
        buf = np.frombuffer(raw, np.uint8)
        rel = offsets - lo
        first = buf[rel]
        hlen = np.where(first < SHORT_BLOB_LEN, 1, 4).astype(np.int64)
        lens = first.astype(np.int64)
        long = np.flatnonzero(hlen == 4)
        bits = np.empty(0, np.int64)
        if len(long):
            at = rel[long]
            if int(at.max()) + 4 > len(buf):
                raise BlobError("blob header too short")
            word = (
                (buf[at].astype(np.int64) << 24) | (buf[at + 1].astype(np.int64) << 16)
                | (buf[at + 2].astype(np.int64) << 8) | buf[at + 3].astype(np.int64)
            )  # fmt: skip
            bits = (word >> 24) & LEN_COMPRESSION_BIT_MASK
            if not np.isin(bits, (BYTE_UNCOMPRESSED, BYTE_ZSTD)).all():
                raise BlobError("invalid compression bits")
            lens[long] = word & MAX_BLOB_LEN
        starts = rel + hlen
        end = int((starts + lens).max())
        if end > len(buf):
            if lo + end > size:
                raise BlobError(f"read of a blob outside the file ({size} bytes)")
            grown = bytearray(raw)
            grown += await reader.read_at(lo + len(buf), end - len(buf))
            buf = np.frombuffer(grown, np.uint8)
        if len(long) and bool((bits == BYTE_ZSTD).any()):
            zstd = set(long[bits == BYTE_ZSTD].tolist())
            view = buf.data
            parts = []
            for i, (s, ln) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
                parts.append(decompress(bytes(view[s : s + ln])) if i in zstd else bytes(view[s : s + ln]))
                if i % 64 == 63:
                    # Decompression is CPU work: under trio-uring this runs on the loop.
                    await cooperative_checkpoint()
            lens = np.fromiter(map(len, parts), np.int64, n)
            starts = np.cumsum(lens) - lens
            buf = np.frombuffer(b"".join(parts), np.uint8)
        return buf, starts, lens

    async def load_all(self) -> list[tuple[Key, Lsn, bytes]]:
        """Every entry as ``(key, lsn, encoded value)`` (tests, dump, small layers)."""
        out: list[tuple[Key, Lsn, bytes]] = []
        it = self.iter_all()
        while batch := await it.next_batch():
            out.extend((k, lsn, v) for k, lsn, _o, _w, v in batch)
        return out


DeltaEntry = tuple[Key, Lsn, int, bool, bytes]


class DeltaIndexIterator(BatchIterator[DeltaEntry]):
    """Iterates a delta layer in file order, a leaf page at a time."""

    def __init__(self, layer: DeltaLayer, start_key: bytes, with_values: bool) -> None:
        super().__init__()
        self._layer = layer
        self._it = layer.index.iter(delta_key(start_key, 0), forward=True)
        self._with_values = with_values

    async def next_batch(self) -> list[DeltaEntry]:
        with reading_layer(self._layer.path):
            return await self._next_batch()

    async def _next_batch(self) -> list[DeltaEntry]:
        batch = await self._it.next_batch()
        unpack = _LSN.unpack_from
        read_blob = self._layer._reader.read_blob
        out: list[DeltaEntry] = []
        for dk, ref in batch:
            value = await read_blob(ref >> 1) if self._with_values else b""
            out.append((Key(dk[:KEY_SIZE]), Lsn(unpack(dk, KEY_SIZE)[0]), ref >> 1, bool(ref & 1), value))
        return out


class DeltaIndexColumns:
    """A delta layer's whole index in order, a leaf page at a time, as arrays:
    ``(index keys, refs)``: ``(n, 26)`` bytes ``key ++ lsn`` (big-endian) and ``uint64``
    ``blob_offset << 1 | will_init``; None at the end.

    The batch form of :meth:`DeltaLayer.iter_index` (no Python object per entry), with the
    same checks as the B-tree's iterator (each child's level and key range, through
    :meth:`~pageserver.layers.disk_btree.DiskBtreeReader.descend`, and keys strictly
    increasing across the whole scan).
    """

    def __init__(self, layer: DeltaLayer) -> None:
        self._layer = layer
        self._stack: list[tuple[Node, int, bytes | None, bytes | None]] = []
        self._started = False
        self._last: bytes | None = None

    async def next_batch(self) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint64]] | None:
        with reading_layer(self._layer.path):
            return await self._next_batch()

    async def _next_batch(self) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint64]] | None:
        index = self._layer.index
        if not self._started:
            self._started = True
            self._stack.append((await index.root(), 0, None, None))
        while self._stack:
            node, i, lo, hi = self._stack.pop()
            if node.level == 0:
                return self._leaf(node)
            if i + 1 < node.n:
                self._stack.append((node, i + 1, lo, hi))
            child, clo, chi = await index.descend(node, i, lo, hi)
            self._stack.append((child, 0, clo, chi))
        return None

    def _leaf(self, node: Node) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint64]]:
        n, plen, slen = node.n, node.plen, node.slen
        if plen + slen != DELTA_KEY_SIZE:
            raise BtreeError(f"corrupt B-tree node: key size {plen + slen} != {DELTA_KEY_SIZE}")
        keys = np.empty((n, DELTA_KEY_SIZE), np.uint8)
        keys[:, :plen] = np.frombuffer(node.prefix, np.uint8)
        keys[:, plen:] = np.frombuffer(node.page, np.uint8, n * slen, node.keys_off).reshape(n, slen)
        v8 = np.zeros((n, 8), np.uint8)
        v8[:, 8 - 5 :] = np.frombuffer(node.page, np.uint8, n * 5, node.vals_off).reshape(n, 5)
        refs = v8.view(">u8").ravel().astype(np.uint64)
        flat = keys.view(f"S{DELTA_KEY_SIZE}").ravel()
        first = keys[0].tobytes()
        if (n > 1 and not bool((flat[1:] > flat[:-1]).all())) or (
            self._last is not None and first <= self._last
        ):
            raise BtreeError("corrupt B-tree: keys out of order in a forward scan")
        self._last = keys[n - 1].tobytes()
        return keys, refs
