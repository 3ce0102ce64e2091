"""The in-memory layer: recent records of a timeline, before they reach a delta layer.

Values live in the layer's :class:`~pageserver.tenant.ephemeral_file.EphemeralFile`, not
in Python objects; this class keeps only the index. It maps each key to a ``bytearray`` of
packed fixed-size entries ``(lsn u64, offset u64, len u32, will_init u8)`` in LSN order. A
Python tuple of ints per record would cost ~150 bytes; a packed entry costs 21, which is
what keeps ingest of millions of small records inside the memory budget.

Lifecycle: *open* (accepting puts) -> *frozen* (``end_lsn`` set, tail written to the file,
read-only) -> flushed into an L0 delta layer by the timeline's flush task -> deleted.

Reads of the open layer are served by the ephemeral file's buffered writer, which holds the
tail still in memory. The flush of a frozen layer reads the whole ephemeral file in large
sequential reads (one frozen layer is at most about ``checkpoint_distance`` bytes) and
then emits values in (key, lsn) order from memory: one value per ``pread`` would make the
flush cost a syscall per record.
"""

from __future__ import annotations

import heapq
import struct
import time
from array import array
from collections.abc import Iterable, Iterator

import trio

from pageserver.io import IoContext, cooperative_checkpoint
from pageserver.layers.batch import CheckedBatch
from pageserver.layers.common import LayerInfo
from pageserver.layers.delta_layer import DeltaLayerWriter
from pageserver.layers.key import KEY_SIZE, Key, TenantId, TimelineId
from pageserver.tenant.ephemeral_file import EphemeralFile

_ENTRY = struct.Struct("<QQIB")
ENTRY_SIZE = _ENTRY.size
_unpack_entry = _ENTRY.unpack_from
_pack_entry = _ENTRY.pack

#: Keys per chunk when sorting a frozen layer's index (a few milliseconds per chunk).
_SORT_CHUNK = 16_384
_MERGE_CHECKPOINT_EVERY = 4096


class InMemoryLayer:
    def __init__(self, ctx: IoContext, file: EphemeralFile, start_lsn: int) -> None:
        self.ctx = ctx
        self._file = file
        self.start_lsn = start_lsn
        #: Exclusive end, set when frozen.
        self.end_lsn: int | None = None
        #: Highest LSN of any record, -1 while empty.
        self.max_lsn = -1
        self.index: dict[bytes, bytearray] = {}
        #: The frozen layer's index once the flush sorted it (see ``sort_index``).
        self._sorted: SortedIndex | None = None
        self.num_records = 0
        self.created_at = time.monotonic()
        #: Reads in progress; the ephemeral file is deleted only once none is left.
        self.readers = 0
        self._no_readers: trio.Event | None = None

    @classmethod
    async def create(cls, ctx: IoContext, timeline_dir: str, seq: int, start_lsn: int) -> InMemoryLayer:
        return cls(ctx, await EphemeralFile.create(ctx, timeline_dir, seq), start_lsn)

    @property
    def path(self) -> str:
        """The ephemeral file's path."""
        return self._file.path

    @property
    def size(self) -> int:
        """Bytes of values appended so far (what ``checkpoint_distance`` compares with)."""
        return self._file.size

    @property
    def broken(self) -> BaseException | None:
        """The error that made the ephemeral file unusable (``check_usable``), or None.

        A full disk does not: the append that failed is refused, what was appended before
        stays (in memory until it can be written), and appends go on once there is space
        (see :mod:`pageserver.io`'s buffered writer).
        """
        return self._file.broken

    @property
    def is_empty(self) -> bool:
        return self.num_records == 0

    @property
    def frozen(self) -> bool:
        return self.end_lsn is not None

    # -- writes (open layer only, under the timeline's write lock) ------------------------

    async def put_batch(self, batch: CheckedBatch) -> None:
        """Append a checked, LSN-ordered batch (its values are one contiguous buffer).

        All values are appended first; the index is updated only after every append
        succeeded, so a failing write leaves the index (and so every read) unchanged. The
        orphaned bytes at the file's tail are harmless.
        """
        assert self.end_lsn is None, "put into a frozen layer"
        self.check_usable()
        # One append for the whole batch: a single copy into the writer instead of an
        # await per record; offsets follow from the batch's value offsets.
        base = await self._file.append(batch.value_buffer())
        offs = (batch.starts - batch.starts[0] + base).tolist()
        lens = (batch.ends - batch.starts).tolist()
        lsns = batch.lsns.tolist()
        index = self.index
        pack = _pack_entry
        for i, (lsn, off, n, will_init) in enumerate(zip(lsns, offs, lens, batch.will_init.tolist(), strict=True)):
            key = batch.key(i)
            entry = pack(lsn, off, n, will_init)
            entries = index.get(key)
            if entries is None:
                index[key] = bytearray(entry)
                self.num_records += 1
            elif _unpack_entry(entries, len(entries) - ENTRY_SIZE)[0] == lsn:
                # A second value for the same (key, lsn) replaces the first.
                entries[-ENTRY_SIZE:] = entry
            else:
                entries += entry
                self.num_records += 1
            if lsn > self.max_lsn:
                self.max_lsn = lsn

    def check_usable(self) -> None:
        """Raise if an earlier write to the ephemeral file failed.

        Only an error the writer cannot recover from (not a full disk) does: the file's
        state is then unknown, so the layer can neither take more records nor be flushed:
        its records (received, never reported durable) are given up, and the timeline
        refuses writes until a restart.
        """
        if self.broken is not None:
            raise OSError(
                getattr(self.broken, "errno", None) or 5,
                f"{self.path}: a write to the in-memory layer failed earlier ({self.broken!r})",
            )

    async def freeze(self, end_lsn: int) -> None:
        """Stop accepting puts; write the tail so that the flush can read the file.

        ``end_lsn`` is set only once every write has completed, when the ephemeral file
        also switches its reads to the file: until then they keep going through the
        writer (which serves bytes still in memory), never to a file whose tail is not
        written yet.
        """
        assert self.end_lsn is None
        assert end_lsn > self.max_lsn
        self.check_usable()
        await self._file.finish()  # after a full disk: raises, and may be called again
        self.end_lsn = end_lsn

    # -- reads ----------------------------------------------------------------------------

    def entries_for(self, key: bytes, below_lsn: int) -> Iterator[tuple[int, int, int, bool]]:
        """``(lsn, offset, len, will_init)`` of ``key`` with lsn < ``below_lsn``, newest first."""
        # Read ``index`` before ``_sorted``: the flush (possibly in a worker thread) sets
        # ``_sorted`` first and then replaces ``index``, so whoever sees the new, empty
        # ``index`` also sees ``_sorted``.
        index = self.index
        sorted_index = self._sorted
        entries = sorted_index.get(key) if sorted_index is not None else index.get(key)
        if entries is None:
            return
        pos = len(entries) - ENTRY_SIZE
        while pos >= 0:
            lsn, off, n, w = _unpack_entry(entries, pos)
            if lsn < below_lsn:
                yield lsn, off, n, bool(w)
            pos -= ENTRY_SIZE

    async def sort_index(self) -> SortedIndex:
        """Replace the dict index of a frozen layer by a sorted, packed one.

        The dict costs ~170 bytes per distinct key (key object, dict slot, bytearray); the
        sorted form costs the 18 key bytes, the 21-byte entries and an 8-byte start offset.
        Done at the start of the flush, which needs the keys sorted anyway, so that a
        layer being flushed does not hold two indexes' worth of memory beside the open
        layer. Reads switch over atomically (one attribute assignment).
        """
        if self._sorted is None:
            self._sorted = await SortedIndex.build(self.index)
            old, self.index = self.index, {}
            # Free the dict's millions of small objects in steps, not in one stall.
            while old:
                for _ in range(min(len(old), _MERGE_CHECKPOINT_EVERY)):
                    old.popitem()
                await cooperative_checkpoint()
        return self._sorted

    async def read_value(self, offset: int, length: int) -> bytes:
        return await self._file.read(offset, length)

    # -- flush ----------------------------------------------------------------------------

    async def write_delta_layer(
        self, timeline_dir: str, tenant_id: TenantId, timeline_id: TimelineId
    ) -> LayerInfo:
        """Write this frozen layer as an L0 delta layer (runs inside ``ctx.run_job``)."""
        assert self.end_lsn is not None
        index = await self.sort_index()
        data = await self._file.read_all()
        writer = DeltaLayerWriter(
            self.ctx, timeline_dir, tenant_id, timeline_id, Key.MIN, self.start_lsn, self.end_lsn
        )
        async with writer:
            put = writer.put_value
            unpack = _unpack_entry
            for key, entries in index.items():
                for pos in range(0, len(entries), ENTRY_SIZE):
                    lsn, off, n, w = unpack(entries, pos)
                    await put(key, lsn, data[off : off + n], bool(w))
            info = await writer.finish(Key.MAX)
        return info

    def release_reader(self) -> None:
        self.readers -= 1
        if self.readers == 0 and self._no_readers is not None:
            self._no_readers.set()

    async def delete(self) -> None:
        """Close and remove the ephemeral file (after the flush, or at shutdown).

        Waits for reads still using the file: a ``get`` that took its snapshot of the
        in-memory layers before the flush finished may still be reading this one.
        """
        while self.readers:
            self._no_readers = trio.Event()
            await self._no_readers.wait()
        await self._file.delete()


class SortedIndex:
    """An immutable key -> packed entries map over three flat buffers, in key order."""

    __slots__ = ("_keys", "_starts", "_entries", "_n")

    def __init__(self, keys: bytes, starts: array[int], entries: bytes) -> None:
        self._keys = keys
        self._starts = starts
        self._entries = entries
        self._n = len(starts) - 1

    @classmethod
    async def build(cls, index: dict[bytes, bytearray]) -> SortedIndex:
        """Sort in small chunks and merge, yielding between steps.

        One ``sorted()`` of a full layer's keys (millions of them) is a single C call of a
        second or more: on the loop (trio-uring) it would stall every connection, and in a
        worker thread (std-fs) it would hold the GIL as long. Chunks of ``_SORT_CHUNK``
        keys sort in a few milliseconds each; the k-way merge is per-key Python work that
        checkpoints (and lets the GIL go) as the rest of the flush does.
        """
        keys = list(index)
        chunks: list[list[bytes]] = []
        for i in range(0, len(keys), _SORT_CHUNK):
            chunk = keys[i : i + _SORT_CHUNK]
            chunk.sort()
            chunks.append(chunk)
            await cooperative_checkpoint()
        del keys
        merged: Iterable[bytes] = heapq.merge(*chunks) if len(chunks) > 1 else chunks[0] if chunks else []
        # Append straight into two growing buffers (no list of millions of parts to join
        # and then free in one go: each of those is a long C call too).
        key_buf = bytearray()
        entry_buf = bytearray()
        starts = array("Q", [0])
        for n, key in enumerate(merged, 1):
            key_buf += key
            entry_buf += index[key]
            starts.append(len(entry_buf))
            if not n % _MERGE_CHECKPOINT_EVERY:
                await cooperative_checkpoint()
        del merged
        for chunk in chunks:  # drop the key references a chunk at a time
            chunk.clear()
            await cooperative_checkpoint()
        return cls(bytes(key_buf), starts, bytes(entry_buf))

    def __len__(self) -> int:
        return self._n

    def get(self, key: bytes) -> bytes | None:
        keys = self._keys
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) // 2
            k = keys[mid * KEY_SIZE : (mid + 1) * KEY_SIZE]
            if k < key:
                lo = mid + 1
            elif k > key:
                hi = mid
            else:
                return self._entries[self._starts[mid] : self._starts[mid + 1]]
        return None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        keys, starts, entries = self._keys, self._starts, self._entries
        for i in range(self._n):
            yield keys[i * KEY_SIZE : (i + 1) * KEY_SIZE], entries[starts[i] : starts[i + 1]]
