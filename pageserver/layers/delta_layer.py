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
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from pageserver.io import IoContext, VirtualFile
from pageserver.io.offload import cooperative_checkpoint
from pageserver.layers.blob_io import MAX_BLOB_LEN, BlobError, PagedReader
from pageserver.layers.common import LayerFileError, LayerFileWriter, LayerInfo, open_layer_file
from pageserver.layers.disk_btree import DiskBtreeBuilder, DiskBtreeReader
from pageserver.layers.key import KEY_SIZE, Key, Lsn, TenantId, TimelineId
from pageserver.layers.layer_name import DeltaLayerName
from pageserver.layers.summary import DeltaSummary
from pageserver.layers.value import Value, encode_value, value_will_init

DELTA_KEY_SIZE: Final = KEY_SIZE + 8
_HDR4 = struct.Struct(">I")
_LSN = struct.Struct(">Q")
#: How many values between cooperative checkpoints (under trio-uring the job is on the loop).
CHECKPOINT_EVERY: Final = 1024


def delta_key(key: bytes, lsn: int) -> bytes:
    return key + _LSN.pack(lsn)


class DeltaLayerWriter:
    """Writes one delta layer. Values must come in strictly increasing (key, lsn) order.

    ``lsn_end`` (exclusive) may be given here or to :meth:`finish`. Use as an async
    context manager, or call :meth:`abandon` on every path that does not reach
    :meth:`finish`; any error inside the writer's own methods abandons it already.
    """

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
        self.tenant_id = tenant_id
        self.timeline_id = timeline_id
        self.key_start = Key(key_start)
        self.lsn_start = Lsn(lsn_start)
        self.lsn_end = None if lsn_end is None else Lsn(lsn_end)
        end = "XXX" if lsn_end is None else f"{lsn_end:016X}"
        self._file = LayerFileWriter(
            ctx, timeline_dir, f"{self.key_start}-XXX__{self.lsn_start:016X}-{end}"
        )
        self._tree = DiskBtreeBuilder(DELTA_KEY_SIZE)
        #: The buffered writer's bound ``write``, once the file is open.
        self._write: Callable[[bytes], Awaitable[int]] | None = None
        self._max_lsn = -1
        self._last_key = b""
        self.num_entries = 0

    @property
    def temp_path(self) -> str:
        return self._file.temp_path

    @property
    def size_estimate(self) -> int:
        """Bytes the file would have if finished now (values + index so far + summary)."""
        bw = self._file.bw
        values = bw.offset if bw is not None else 8192
        return values + 8192 * (len(self._tree.pages) + 1)

    async def __aenter__(self) -> DeltaLayerWriter:
        return self

    async def __aexit__(self, et: object, e: object, tb: object) -> None:
        if not self._file.done:
            await self.abandon()

    async def put_value(
        self,
        key: bytes,
        lsn: int,
        value: bytes | bytearray | memoryview | Value,
        will_init: bool | None = None,
    ) -> None:
        """Append a value (encoded bytes, or a Value object, which is encoded here)."""
        try:
            write = self._write
            if write is None:
                write = self._write = (await self._file.open()).write
            if not isinstance(value, bytes | bytearray | memoryview):
                will_init = value.will_init
                value = encode_value(value)
            elif will_init is None:
                will_init = value_will_init(value)
            if lsn < self.lsn_start:
                raise ValueError(f"lsn {lsn} below the layer's start {self.lsn_start}")
            n = len(value)
            if n < 128:
                off = await write(bytes((n,)) + value)
            elif n <= MAX_BLOB_LEN:
                off = await write(_HDR4.pack(n | 0x8000_0000) + value)
            else:
                raise BlobError(f"blob too large ({n} bytes)")
            self._tree.append(key + _LSN.pack(lsn), (off << 1) | will_init)
            if lsn > self._max_lsn:
                self._max_lsn = lsn
            self.num_entries += 1
            if not self.num_entries % CHECKPOINT_EVERY:
                await cooperative_checkpoint()
        except BaseException:
            await self._file.abandon()
            raise

    async def put_values(
        self, entries: Sequence[tuple[bytes, int, bytes]]
    ) -> None:
        """Append many already-encoded values (the flush path's batch form)."""
        for key, lsn, raw in entries:
            await self.put_value(key, lsn, raw)

    async def finish(self, key_end: Key, lsn_end: int | None = None) -> LayerInfo:
        """Write index and summary, fsync, and rename to the final name."""
        try:
            if lsn_end is None:
                lsn_end = self.lsn_end
            elif self.lsn_end is not None and lsn_end != self.lsn_end:
                raise ValueError("lsn_end differs from the one given at creation")
            if lsn_end is None:
                raise ValueError("lsn_end must be given at creation or to finish()")
            if self.num_entries == 0:
                raise ValueError("refusing to write an empty delta layer")
            last_key = self._tree_last_key()
            if key_end <= last_key or key_end <= self.key_start:
                raise ValueError(f"key_end {Key(key_end)} is not above the last key {last_key}")
            if lsn_end <= self._max_lsn:
                raise ValueError(f"lsn_end {lsn_end} is not above the last lsn {self._max_lsn}")
            name = DeltaLayerName(self.key_start, Key(key_end), self.lsn_start, Lsn(lsn_end))
            if self._write is None:  # pragma: no cover - num_entries > 0 implies open
                await self._file.open()

            def make_summary(index_start_blk: int, root_blk: int) -> DeltaSummary:
                return DeltaSummary(
                    self.tenant_id, self.timeline_id, name.key_start, name.key_end,
                    name.lsn_start, name.lsn_end, index_start_blk, root_blk,
                )  # fmt: skip

            summary, size = await self._file.finish(self._tree, make_summary, str(name))
        except BaseException:
            await self._file.abandon()
            raise
        assert self._file.final_path is not None
        return LayerInfo(self._file.final_path, name, summary, size, self.num_entries)

    def _tree_last_key(self) -> Key:
        return Key(self._tree._last_key[:KEY_SIZE])

    async def abandon(self) -> None:
        """Delete the temp file (or the renamed file, if finishing failed after the rename)."""
        await self._file.abandon()


class DeltaLayer:
    """A delta layer file opened for reading."""

    def __init__(self, path: str, vf: VirtualFile, reader: PagedReader, summary: DeltaSummary):
        self.path = path
        self._vf = vf
        self._reader = reader
        self.summary = summary
        self.file_size = reader.file_size
        self.index = DiskBtreeReader(
            reader.read_page, summary.index_start_blk, summary.index_root_blk, DELTA_KEY_SIZE
        )

    @classmethod
    async def open(cls, ctx: IoContext, path: str) -> DeltaLayer:
        vf, reader, summary = await open_layer_file(ctx, path)
        if not isinstance(summary, DeltaSummary):
            await vf.close()
            raise LayerFileError(f"{path}: an image layer, not a delta layer")
        return cls(path, vf, reader, summary)

    async def close(self) -> None:
        await self._vf.close()

    async def __aenter__(self) -> DeltaLayer:
        return self

    async def __aexit__(self, et: object, e: object, tb: object) -> None:
        await self.close()

    @property
    def key_range(self) -> tuple[Key, Key]:
        return self.summary.key_start, self.summary.key_end

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
        refs: list[tuple[int, int]] = []
        it = self.index.iter(delta_key(key, end - 1), forward=False)
        done = False
        while not done:
            batch = await it.next_batch()
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
        return [(Lsn(lsn), await read_blob(ref >> 1)) for lsn, ref in refs]

    def iter_index(self, start_key: bytes = Key.MIN) -> DeltaIndexIterator:
        """``(key, lsn, blob offset, will_init)`` from ``start_key``, in (key, lsn) order."""
        return DeltaIndexIterator(self, start_key, with_values=False)

    def iter_all(self, start_key: bytes = Key.MIN) -> DeltaIndexIterator:
        """``(key, lsn, offset, will_init, value bytes)`` in (key, lsn) order."""
        return DeltaIndexIterator(self, start_key, with_values=True)

    async def load_all(self) -> list[tuple[Key, Lsn, bytes]]:
        """Every entry as ``(key, lsn, encoded value)`` (tests, dump, small layers)."""
        out: list[tuple[Key, Lsn, bytes]] = []
        it = self.iter_all()
        while batch := await it.next_batch():
            out.extend((k, lsn, v) for k, lsn, _o, _w, v in batch)
        return out


DeltaEntry = tuple[Key, Lsn, int, bool, bytes]


class DeltaIndexIterator:
    """Iterates a delta layer in file order, a leaf page at a time."""

    def __init__(self, layer: DeltaLayer, start_key: bytes, with_values: bool) -> None:
        self._layer = layer
        self._it = layer.index.iter(delta_key(start_key, 0), forward=True)
        self._with_values = with_values
        self._pending: list[DeltaEntry] = []
        self._pos = 0

    def __aiter__(self) -> DeltaIndexIterator:
        return self

    async def __anext__(self) -> DeltaEntry:
        if self._pos >= len(self._pending):
            self._pending = await self.next_batch()
            self._pos = 0
            if not self._pending:
                raise StopAsyncIteration
        e = self._pending[self._pos]
        self._pos += 1
        return e

    async def next_batch(self) -> list[DeltaEntry]:
        batch = await self._it.next_batch()
        unpack = _LSN.unpack_from
        read_blob = self._layer._reader.read_blob
        out: list[DeltaEntry] = []
        for dk, ref in batch:
            value = await read_blob(ref >> 1) if self._with_values else b""
            out.append((Key(dk[:KEY_SIZE]), Lsn(unpack(dk, KEY_SIZE)[0]), ref >> 1, bool(ref & 1), value))
        return out
