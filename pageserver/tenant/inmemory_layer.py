"""The in-memory layer: recent records of a timeline, before they reach a delta layer.

Values live in the layer's :class:`~pageserver.tenant.ephemeral_file.EphemeralFile`, not
in Python objects: a ``put`` batch's values (one contiguous buffer, SPEC section 5's
columnar batch) are appended with one call. This class keeps the index, as numpy arrays
(no Python object per record).

**The index** is a list of *sorted runs* plus an unsorted *tail*, each a set of columns
``key`` (``S18``), ``lsn`` (``uint64``), ``offset``/``len`` (``int64``, into the ephemeral
file), ``will_init`` (bool):

- a batch's records go to the tail (arrays of :data:`RUN_RECORDS` slots); when the tail is
  full it is sorted into a run. A run is sorted by key, *stably* (``np.lexsort`` over the
  key as three integers), and records arrive in (LSN, arrival) order, so a run is in
  (key, LSN, arrival) order;
- runs are merged as they grow, :data:`FANIN` runs of one size into one run of the next,
  up to :data:`MAX_MERGE_RECORDS` (a merge is one ``lexsort`` of a few milliseconds on the
  loop; larger merges would stall it), so an open layer of N records has about
  ``N / MAX_MERGE_RECORDS + 3`` runs (34 for 1M records);
- ``get`` (:meth:`InMemoryLayer.entries_for`) scans the tail with one vector compare and
  binary-searches each run (``searchsorted`` on the sorted keys): 1-2 us per run, tens of
  us on a 1M-record open layer (``scripts/bench_inmemory_get.py`` measures it);
- the flush (:meth:`InMemoryLayer.write_delta_layer`) merges the runs a *(key, lsn)
  range* at a time (:func:`sorted_slices`): splitter (key, lsn) pairs sampled from the
  runs cut them into slices of about :data:`FLUSH_SLICE_RECORDS` (a hot key's records
  too, by LSN); each slice gathers its part of every run and
  is sorted by one stable sort (:func:`_slice_order`: of one ``uint64`` per key when the
  slice's keys share their first 10 bytes, as keys of one relation do; else a ``lexsort``),
  so no step sorts the whole layer (the sorts release the GIL under std-fs's worker
  thread; under trio-uring the job checkpoints between the steps of :func:`merge_steps`).

Same (key, LSN) twice: the later value replaces the earlier one. Both stay in the index
(and their bytes in the file); a read takes the newest, and the flush keeps the last of
each (key, LSN) of the sorted order (:func:`_dedup`).

Readers take a snapshot of the index (the run list and the tail's length) without an
await, and puts publish a batch's index entries in one step after its values are
appended, so a read sees a batch whole or not at all; merges replace runs by one
equivalent run, also in one step.

Lifecycle: *open* (accepting puts) -> *frozen* (``end_lsn`` set, tail written to the file
and sorted into a run, read-only) -> flushed into an L0 delta layer by the timeline's flush
task -> deleted.

Reads of the open layer are served by the ephemeral file's buffered writer, which holds the
tail still in memory. The flush maps the whole frozen ephemeral file read-only
(:meth:`~pageserver.tenant.ephemeral_file.EphemeralFile.map_all`: the page cache's own
pages, no copy) and gathers values in (key, lsn) order from it: one value per ``pread``
would make the flush cost a syscall per record, and reading the file into a buffer costs
a copy of the layer (and, for a ``bytearray``, a memset of it under the GIL).

Every page of the mapping the gather touches counts in the process's RSS until it is
unmapped (page-cache pages, shared and reclaimable, but ``ru_maxrss`` and a container's
memory limit count them): left mapped, a 256 MiB layer added 256 MiB to the peak of every
flush, as the old whole-layer ``bytearray`` did. So the flush keeps mapped only the
64 KiB blocks of the file between the first and the last slice that read them
(:class:`_BlockPlan`, worked out a slice per step once the slices are cut): a block is
faulted in just before its first slice and released (``MADV_DONTNEED``: the pages stay
cached, nothing is read twice) after its last; and a slice holds about
:data:`FLUSH_SLICE_BYTES` of values at the layer's mean value size (it is cut by records:
large values among many small ones make a slice of more bytes). When the file holds a
slice's values close together (keys arriving in runs, large values) the mapping holds a
few slices' worth of pages; when every block holds keys of every slice (small values in
random key order) the first slice faults in the whole file and nothing goes before the
end, as before.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import trio

from pageserver.io import IoContext, cooperative_checkpoint
from pageserver.layers.batch import KEY_DTYPE, BoolArray, CheckedBatch, I64Array, KeyArray, U64Array
from pageserver.layers.common import LayerInfo
from pageserver.layers.delta_layer import DeltaLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.tenant.ephemeral_file import EphemeralFile, MappedFile

#: Records of the unsorted tail; a full tail is sorted into a run.
RUN_RECORDS: Final = 4096
#: Runs of one size merged into one run of the next.
FANIN: Final = 2
#: No merge makes a run larger than this: a merge is one step on the event loop (a
#: ``lexsort`` of 32k records takes about 2.5 ms on the development VM, 64k about 5).
MAX_MERGE_RECORDS: Final = RUN_RECORDS * FANIN**3
#: Records per key-range slice of the flush's merge (one ``lexsort`` each).
FLUSH_SLICE_RECORDS: Final = 16384
#: Runs sampled, or searched for the splitters, per step of the flush's merge (~30-45 us
#: a run of 32k records).
_SPLIT_RUNS_PER_STEP: Final = 8
#: Splitter samples per slice of the flush's merge, from the whole layer: ~16 * nslices +
#: nruns keys, one sort (~0.4 ms for an 8.9M-record layer). With runs sampled at spread
#: phases (``merge_steps``), 74 runs of 32k in slices of 16k: the largest slice ~20k
#: records with 16, ~23k with 8, ~18k with 32.
_SAMPLES_PER_SLICE: Final = 16
#: Value bytes per slice of the flush (fewer records when values are large): about the
#: pages of the mapped ephemeral file a slice brings in before they can be released
#: (module docstring). 16384 records of 8 KiB would be 128 MiB. 16 MiB rather than 4:
#: each slice is a merge step, a block plan and a ``put_sorted`` of its own, and with
#: 8 KiB values (2048 a slice instead of 512) in-process flushes ran at 1,220-1,360
#: instead of 1,000-1,180 MiB/s on both engines (alternating runs), for ~12 MiB more
#: of the mapping held at once; 32 MiB gained nothing more that was steady.
FLUSH_SLICE_BYTES: Final = 16 << 20
#: Blocks of the mapped ephemeral file faulted in and released together: the kernel maps
#: a file's cached pages 64 KiB-aligned, 64 KiB at a time on a fault (fault-around), so a
#: smaller unit would only be mapped again by a neighbour's fault.
_BLOCK_SHIFT: Final = 16
_BLOCK_BYTES: Final = 1 << _BLOCK_SHIFT
#: Byte ranges of the mapping released (one ``madvise`` each) per step of the flush. A
#: call costs ~4 us in the daemon (zapping page-table entries of a mapping that other
#: threads of the process share, the io_uring workers, takes a TLB shootdown on the other
#: CPU). When keys arrive in random order a block holds values of several slices and its
#: last reader is the latest of them, so the last slices of a flush are the last readers
#: of most blocks, scattered between blocks a later slice still reads: at 8 KiB (8 values
#: a block) 400-530 one-block ranges after each of a flush's last slices, steps of
#: 1.5-3.5 ms on the loop under trio-uring (the daemon ticker's p99 during the flush).
#: 64 ranges is ~0.3-0.4 ms.
_RELEASE_RANGES_PER_STEP: Final = 64

_KEY_INTS: Final = np.dtype([("a", ">u8"), ("b", ">u8"), ("c", ">u2")])
#: A key as its first 10 bytes and its last 8 as a big-endian integer (``_slice_order``).
_KEY_HEAD: Final = 10
_KEY_TAIL: Final = np.dtype([("head", f"V{_KEY_HEAD}"), ("tail", ">u8")])
#: The same 18 bytes as native integers: for equality only (no byte swap; ~4x faster
#: than comparing ``S18`` strings).
_KEY_INTS_EQ: Final = np.dtype([("a", "=u8"), ("b", "=u8"), ("c", "=u2")])


@dataclass(frozen=True, slots=True)
class Entries:
    """Index columns of some records (a run, the tail, a flush slice)."""

    keys: KeyArray
    lsns: U64Array
    offs: I64Array
    lens: I64Array
    will_init: BoolArray

    def __len__(self) -> int:
        return len(self.lsns)

    def take(self, order: npt.NDArray[np.intp]) -> Entries:
        # ``np.take`` rather than ``a[order]``: the same result, without fancy indexing's
        # set-up (~1.5x faster on a 16k-record slice's keys).
        return Entries(
            np.take(self.keys, order), np.take(self.lsns, order), np.take(self.offs, order),
            np.take(self.lens, order), np.take(self.will_init, order),
        )  # fmt: skip

    def part(self, start: int, end: int) -> Entries:
        return Entries(
            self.keys[start:end], self.lsns[start:end], self.offs[start:end],
            self.lens[start:end], self.will_init[start:end],
        )  # fmt: skip

    @staticmethod
    def concat(parts: list[Entries]) -> Entries:
        if len(parts) == 1:
            return parts[0]
        return Entries(
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.lsns for p in parts]),
            np.concatenate([p.offs for p in parts]),
            np.concatenate([p.lens for p in parts]),
            np.concatenate([p.will_init for p in parts]),
        )

    def sorted(self) -> Entries:
        """Sorted by key, stably (records of a key keep their order)."""
        return self.take(key_order(self.keys))


def key_order(keys: KeyArray) -> npt.NDArray[np.intp]:
    """The stable sort order of 18-byte keys: ``lexsort`` of the key as three big-endian
    integers (much faster than sorting ``S18`` strings, and it releases the GIL)."""
    ints = keys.view(_KEY_INTS)
    return np.lexsort((ints["c"], ints["b"], ints["a"]))


def _rows(e: Entries, at: slice | npt.NDArray[np.intp]) -> list[tuple[int, int, int, bool]]:
    """``(lsn, offset, len, will_init)`` of the records ``at`` of ``e``, as Python values."""
    return list(
        zip(
            e.lsns[at].tolist(), e.offs[at].tolist(), e.lens[at].tolist(),
            e.will_init[at].tolist(), strict=True,
        )  # fmt: skip
    )


#: Bytes of the mapped frozen layer whose pages one step faults in, before the slice that
#: first reads them (``_BlockPlan.prefault``). The gather of a slice touches pages all over
#: the file (a slice takes a key range from every run, and a run's values lie in arrival
#: order), so without this a gather step took the page faults of those pages (the first
#: slices: ~700 faults on a 45 MB layer, with the kernel's fault-around; 1.2-2.4 ms) in one
#: step of several milliseconds on the loop under trio-uring. The faults cost the same in
#: steps of this size.
PREFAULT_BYTES: Final = 4 << 20


def _dedup(e: Entries) -> Entries:
    """Keep the last of each run of equal (key, lsn) in a sorted ``e`` (replaced values)."""
    if len(e) < 2:
        return e
    # LSNs first (integers; neighbours rarely share one unless they are the same key and a
    # replaced value), keys only where they do.
    same = np.flatnonzero(e.lsns[1:] == e.lsns[:-1])
    if not len(same):
        return e
    ints = e.keys.view(_KEY_INTS_EQ)
    dup = same[ints[same] == ints[same + 1]]
    if not len(dup):
        return e
    keep = np.ones(len(e), np.bool_)
    keep[dup] = False
    return e.take(np.flatnonzero(keep))


def _slice_order(keys: KeyArray, lo: bytes, hi: bytes) -> npt.NDArray[np.intp]:
    """The stable sort order of ``keys``, all of them between ``lo`` and ``hi``.

    When ``lo`` and ``hi`` share their first 10 bytes, so does every key between them,
    and the last 8 order the keys: one ``uint64`` each, sorted by a stable ``argsort``,
    which for 64-bit integers is a timsort: it finds the sorted parts the slice is made
    of (one per run of the layer) and merges them, ~3x faster than ``key_order``'s
    ``lexsort`` of three columns. Keys of one relation (Neon's field1-field5) differ only
    in their last 4 bytes, so a flush slice nearly always takes this path.
    """
    if lo[:_KEY_HEAD] == hi[:_KEY_HEAD]:
        return np.argsort(keys.view(_KEY_TAIL)["tail"].astype(np.uint64), kind="stable")
    return key_order(keys)


@dataclass(frozen=True, slots=True)
class _Run:
    entries: Entries
    level: int


def _level(n: int) -> int:
    level = 0
    size = RUN_RECORDS * FANIN
    while n >= size:
        level += 1
        size *= FANIN
    return level


class InMemoryLayer:
    def __init__(self, ctx: IoContext, file: EphemeralFile, start_lsn: int) -> None:
        self.ctx = ctx
        self._file = file
        self.start_lsn = start_lsn
        #: Exclusive end, set when frozen.
        self.end_lsn: int | None = None
        #: Highest LSN of any record, -1 while empty.
        self.max_lsn = -1
        #: Sorted runs, oldest first (see the module docstring).
        self._runs: list[_Run] = []
        #: The unsorted tail: ``_tail_n`` records in arrays of ``RUN_RECORDS`` slots.
        self._tail = Entries(
            np.empty(RUN_RECORDS, KEY_DTYPE), np.empty(RUN_RECORDS, np.uint64),
            np.empty(RUN_RECORDS, np.int64), np.empty(RUN_RECORDS, np.int64),
            np.empty(RUN_RECORDS, np.bool_),
        )  # fmt: skip
        self._tail_n = 0
        #: Runs were added since the merge rule was last checked.
        self._merge_due = False
        #: Records put (a replaced value counts twice).
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

    @property
    def num_runs(self) -> int:
        """Sorted runs of the index (the tail not counted)."""
        return len(self._runs)

    # -- writes (open layer only, under the timeline's write lock) ------------------------

    async def put_batch(self, batch: CheckedBatch) -> None:
        """Append a checked, LSN-ordered batch (its values are one contiguous buffer):
        :meth:`append_values`, then :meth:`publish`."""
        await self.publish(await self.append_values(batch))

    async def append_values(self, batch: CheckedBatch) -> Entries:
        """Append the batch's values to the file; its index entries, not yet published.

        The index is updated only by :meth:`publish`, after every append of the batch
        succeeded, so a failing write leaves the index (and so every read) unchanged: the
        orphaned bytes at the file's tail are harmless. (A large ``put`` appends all of
        its steps before publishing any: ``Timeline._apply``.)
        """
        assert self.end_lsn is None, "put into a frozen layer"
        self.check_usable()
        if not len(batch):
            return Entries(batch.keys, batch.lsns, batch.starts, batch.starts, batch.will_init)
        # One append for the whole batch: a single copy into the writer instead of an
        # await per record; offsets follow from the batch's value offsets.
        base = await self._file.append(batch.value_buffer())
        return Entries(
            batch.keys, batch.lsns, batch.starts - (int(batch.starts[0]) - base),
            batch.ends - batch.starts, batch.will_init,
        )  # fmt: skip

    async def publish(self, new: Entries) -> None:
        """Index appended records (LSN-ordered, after this layer's): readers see them in
        one step; merging runs afterwards yields between merges. No I/O: cannot fail."""
        assert self.end_lsn is None, "put into a frozen layer"
        m = len(new)
        if not m:
            return
        self._add(new)
        self.num_records += m
        self.max_lsn = max(self.max_lsn, int(new.lsns[-1]))
        while self._merge_step():
            await cooperative_checkpoint()

    def _add(self, new: Entries) -> None:
        """Index ``new`` (no await: readers see all of it or none)."""
        tail, tn = self._tail, self._tail_n
        m = len(new)
        if tn + m < RUN_RECORDS:
            for dst, src in zip(
                (tail.keys, tail.lsns, tail.offs, tail.lens, tail.will_init),
                (new.keys, new.lsns, new.offs, new.lens, new.will_init),
                strict=True,
            ):
                dst[tn : tn + m] = src
            self._tail_n = tn + m
            return
        # The tail filled up: it and the batch become runs of RUN_RECORDS (the rest of a
        # large batch one run), and the tail restarts with what is left over.
        whole = Entries.concat([tail.part(0, tn), new]) if tn else new
        cut = len(whole) - len(whole) % RUN_RECORDS
        runs = list(self._runs)
        for start in range(0, cut, MAX_MERGE_RECORDS):
            part = whole.part(start, min(cut, start + MAX_MERGE_RECORDS))
            runs.append(_Run(part.sorted(), _level(len(part))))
        rest = whole.part(cut, len(whole))
        # Fresh tail arrays: a reader may still hold a view of the old ones.
        fresh = Entries(
            np.empty(RUN_RECORDS, KEY_DTYPE), np.empty(RUN_RECORDS, np.uint64),
            np.empty(RUN_RECORDS, np.int64), np.empty(RUN_RECORDS, np.int64),
            np.empty(RUN_RECORDS, np.bool_),
        )  # fmt: skip
        r = len(rest)
        for dst, src in zip(
            (fresh.keys, fresh.lsns, fresh.offs, fresh.lens, fresh.will_init),
            (rest.keys, rest.lsns, rest.offs, rest.lens, rest.will_init),
            strict=True,
        ):
            dst[:r] = src
        # Publish: runs, tail and its length together (no await in between).
        self._runs = runs
        self._tail = fresh
        self._tail_n = r
        self._merge_due = True

    def _merge_step(self) -> bool:
        """Merge the oldest ``FANIN`` consecutive runs of one level whose merge stays
        within ``MAX_MERGE_RECORDS``; whether it merged."""
        if not self._merge_due:
            return False
        runs = self._runs
        for i in range(len(runs) - FANIN + 1):
            window = runs[i : i + FANIN]
            level = window[0].level
            if any(r.level != level for r in window):
                continue
            total = sum(len(r.entries) for r in window)
            if total > MAX_MERGE_RECORDS:
                continue
            # Oldest first, then a stable sort by key: records of a key stay in arrival
            # order. Published in one step (a reader sees the old runs or the merged one).
            merged = Entries.concat([r.entries for r in window]).sorted()
            self._runs = [*runs[:i], _Run(merged, max(level + 1, _level(total))), *runs[i + FANIN :]]
            return True
        self._merge_due = False
        return False

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
        written yet. The index's tail becomes a run: the frozen index is immutable.
        """
        assert self.end_lsn is None
        assert end_lsn > self.max_lsn
        self.check_usable()
        await self._file.finish()  # after a full disk: raises, and may be called again
        if self._tail_n:
            tail = self._tail.part(0, self._tail_n)
            self._runs = [*self._runs, _Run(tail.sorted(), 0)]
            self._tail_n = 0
        self.end_lsn = end_lsn

    # -- reads ----------------------------------------------------------------------------

    def entries_for(self, key: bytes, below_lsn: int) -> list[tuple[int, int, int, bool]]:
        """``(lsn, offset, len, will_init)`` of ``key`` with lsn < ``below_lsn``, newest
        first; of a (key, lsn) put twice only the newest."""
        runs, tail, tn = self._runs, self._tail, self._tail_n  # one snapshot, no await
        # Newest first: the tail, then the runs newest to oldest; each part in arrival
        # order, which within a key is LSN order.
        found: list[list[tuple[int, int, int, bool]]] = []
        # As a one-element array: numpy converts a bytes argument anew on every call.
        kq = np.frombuffer(key, KEY_DTYPE)
        if tn:
            ints = tail.keys[:tn].view(_KEY_INTS_EQ)
            q = kq.view(_KEY_INTS_EQ)[0]
            hit = np.flatnonzero((ints["c"] == q["c"]) & (ints["b"] == q["b"]) & (ints["a"] == q["a"]))
            if len(hit):
                found.append(_rows(tail, hit))
        for run in reversed(runs):
            e = run.entries
            lo = int(e.keys.searchsorted(kq, "left")[0])
            if lo < len(e.keys) and e.keys[lo : lo + 1].tobytes() == key:
                hi = int(e.keys.searchsorted(kq, "right")[0])
                found.append(_rows(e, slice(lo, hi)))
        out: list[tuple[int, int, int, bool]] = []
        last_lsn = -1
        for rows in found:
            for row in reversed(rows):
                lsn = row[0]
                if lsn >= below_lsn or lsn == last_lsn:
                    continue
                out.append(row)
                last_lsn = lsn
        return out

    async def read_value(self, offset: int, length: int) -> bytes:
        return await self._file.read(offset, length)

    # -- flush ----------------------------------------------------------------------------

    def sorted_entries(self) -> Iterator[Entries]:
        """The frozen layer's index in (key, lsn) order, one key-range slice at a time,
        without replaced values."""
        assert self.end_lsn is not None
        return sorted_slices([r.entries for r in self._runs])

    async def write_delta_layer(
        self, timeline_dir: str, tenant_id: TenantId, timeline_id: TimelineId
    ) -> LayerInfo:
        """Write this frozen layer as an L0 delta layer (runs inside ``ctx.run_job``)."""
        assert self.end_lsn is not None
        mapped = await self._file.map_all()
        try:
            writer = DeltaLayerWriter(
                self.ctx, timeline_dir, tenant_id, timeline_id, Key.MIN, self.start_lsn,
                self.end_lsn,
            )  # fmt: skip
            # Mean value size from the file (replaced values included: an estimate).
            slice_records = FLUSH_SLICE_BYTES * max(1, self.num_records) // max(1, self.size)
            slice_records = max(16, min(FLUSH_SLICE_RECORDS, slice_records))
            async with writer:
                for part in merge_steps([r.entries for r in self._runs], slice_records, mapped):
                    # Every item of the merge is a step of its own (put_sorted yields
                    # after each of its steps, the last one included).
                    await cooperative_checkpoint()
                    if part is not None:
                        await writer.put_sorted(
                            part.keys, part.lsns, mapped.data, part.offs, part.lens, part.will_init
                        )
                info = await writer.finish(Key.MAX)
        finally:
            mapped.close()
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


def sorted_slices(runs: list[Entries], slice_records: int | None = None) -> Iterator[Entries]:
    """Merge key-sorted runs (oldest first) into (key, lsn) order, a (key, lsn) range at
    a time.

    Splitter (key, lsn) pairs sampled from the runs cut the (key, lsn) space; every record
    of a (key, lsn) falls in one slice (a key's records may span slices, in LSN order: a
    hot key does not make one huge slice), which gathers its part of each run (oldest run
    first) and sorts it stably by key, so records of a key stay in arrival order, which is
    (lsn, arrival) order; then of a (key, lsn) the last one is kept. A plain generator
    (the flush job may run in a worker thread, where async generators are not available).
    """
    return (part for part in merge_steps(runs, slice_records) if part is not None)


def merge_steps(
    runs: list[Entries], slice_records: int | None = None, mapped: MappedFile | None = None
) -> Iterator[Entries | None]:
    """:func:`sorted_slices`' work cut into steps: each item is a slice, or None where a
    step ends without one (after the splitters are chosen, and between sorting a slice
    and gathering it in that order), so that the flush can checkpoint after every item:
    each is about half a millisecond of work for slices of :data:`FLUSH_SLICE_RECORDS`
    (``slice_records``, read when called).

    With ``mapped`` (the flush: the mapped file the runs' offsets point into), it also
    keeps only the pages the coming slices read mapped (module docstring): a
    :class:`_BlockPlan` built one slice per step once the slices are cut, then before
    each slice the blocks it is the first to read are faulted in (steps of
    :data:`PREFAULT_BYTES`), and once the consumer asks for the next item (it has
    written the slice) those it is the last to read are released (steps of
    :data:`_RELEASE_RANGES_PER_STEP` ranges).
    """
    if slice_records is None:
        slice_records = FLUSH_SLICE_RECORDS
    runs = [r for r in runs if len(r)]
    total = sum(len(r) for r in runs)
    if not total:
        return
    merged = len(runs) == 1
    if merged:
        # One run is sorted already: its slices need no sort, only the replaced values
        # dropped (a single run is at most MAX_MERGE_RECORDS plus the tail: one step).
        runs = [_dedup(runs[0])]
        cuts = np.arange(0, len(runs[0]), slice_records, dtype=np.int64)
        bounds = [np.concatenate((cuts, [len(runs[0])]))]
    else:
        # Choosing the splitters is cut into steps of a few runs each (sampling them,
        # then finding the splitters in them: ~30-45 us a run) and one sort of the
        # sample (~16 * nslices + nruns keys): a 2.4M-record layer (~70 runs) took ~8 ms
        # as one step.
        nslices = -(-total // slice_records)
        splitters = np.empty(0, KEY_DTYPE)
        if nslices > 1:
            # _SAMPLES_PER_SLICE per slice in all: one stride for the whole layer, so a run
            # gives samples in proportion to its records, <= 16 * nslices + nruns. (A
            # stride per run, 8 * nslices samples from each, made the sample grow with
            # the square of the layer: 5M records, ~300 slices, ~150 runs -> 383k samples,
            # a 16 ms sort in one step.)
            # Each run starts at its own phase, spread over the stride: runs of the same key
            # distribution (the usual case) sampled from 0 would all give the same
            # quantiles, ~len(run) / stride of them, and with many runs the splitters
            # clumped (74 runs of 32k: 16 samples a run, slices of up to 72k records).
            stride = -(-total // (_SAMPLES_PER_SLICE * nslices))
            samples = []
            sample_lsns = []
            for k in range(0, len(runs), _SPLIT_RUNS_PER_STEP):
                group = [
                    (r, (k + i) * stride // len(runs))
                    for i, r in enumerate(runs[k : k + _SPLIT_RUNS_PER_STEP])
                ]
                samples.append(np.concatenate([r.keys[p::stride] for r, p in group]))
                sample_lsns.append(np.concatenate([r.lsns[p::stride] for r, p in group]))
                yield None
            # Splitters are (key, lsn) pairs, not keys: a hot key (half the records on one
            # key) made one slice of all its records, unbounded by slice_records and so
            # by FLUSH_SLICE_BYTES. In (key, lsn) order: by LSN first, then a stable sort
            # by key (ordered like a slice: every sample lies between the runs' first and
            # last keys; equal keys are equal bytes, so the order statistics are the same
            # whichever sort finds them; only those are gathered).
            all_lsns = np.concatenate(sample_lsns)
            by_lsn = np.argsort(all_lsns, kind="stable")
            sample = np.take(np.concatenate(samples), by_lsn)
            slsns = np.take(all_lsns, by_lsn)
            lo = min(r.keys[:1].tobytes() for r in runs)
            hi = max(r.keys[-1:].tobytes() for r in runs)
            order = _slice_order(sample, lo, hi)
            pick = order[np.linspace(0, len(sample), nslices + 1)[1:-1].astype(np.int64)]
            splitters = np.take(sample, pick)
            split_lsns = np.take(slsns, pick)
            if len(splitters) > 1:
                new = (splitters[1:] != splitters[:-1]) | (split_lsns[1:] != split_lsns[:-1])
                keep = np.concatenate(([True], new))
                splitters, split_lsns = splitters[keep], split_lsns[keep]
            yield None
        else:
            split_lsns = np.empty(0, np.uint64)
        bounds = []
        for k in range(0, len(runs), _SPLIT_RUNS_PER_STEP):
            bounds.extend(
                np.concatenate(([0], _cut(r, splitters, split_lsns), [len(r)]))
                for r in runs[k : k + _SPLIT_RUNS_PER_STEP]
            )
            yield None
    nslices = len(bounds[0]) - 1
    plan: _BlockPlan | None = None
    if mapped is not None and len(mapped.data):
        plan = _BlockPlan(len(mapped.data), nslices)
        at: list[list[int]] = [b.tolist() for b in bounds]
        for j in range(nslices):
            # One array of the slice's offsets (and lengths) from every run: the plan's
            # work is then a few operations on ~slice_records values, not a few per run
            # (a 2.4M-record layer has ~70 runs: that was ~0.4 ms of call overhead a slice).
            spans = [(r, c[j], c[j + 1]) for r, c in zip(runs, at, strict=True) if c[j] < c[j + 1]]
            if spans:
                plan.add(
                    j, np.concatenate([r.offs[a:z] for r, a, z in spans]),
                    np.concatenate([r.lens[a:z] for r, a, z in spans]),
                )  # fmt: skip
            yield None
        plan.finish()
    for j in range(nslices):
        if plan is not None:
            assert mapped is not None
            for _ in plan.prefault(j, mapped.data):
                yield None
        if merged:
            b = bounds[0]
            yield runs[0].part(int(b[j]), int(b[j + 1]))
        else:
            parts = [r.part(int(b[j]), int(b[j + 1])) for r, b in zip(runs, bounds, strict=True)]
            parts = [p for p in parts if len(p)]
            if parts:
                part = Entries.concat(parts)
                lo = min(p.keys[:1].tobytes() for p in parts)
                hi = max(p.keys[-1:].tobytes() for p in parts)
                order = _slice_order(part.keys, lo, hi)
                yield None
                yield _dedup(part.take(order))
        if plan is not None:
            assert mapped is not None
            ranges = plan.released_after(j)
            for k in range(0, len(ranges), _RELEASE_RANGES_PER_STEP):
                mapped.release(ranges[k : k + _RELEASE_RANGES_PER_STEP])
                yield None


def _cut(run: Entries, keys: KeyArray, lsns: U64Array) -> npt.NDArray[np.intp]:
    """Where each splitter (``keys[i]``, ``lsns[i]``), in (key, lsn) order, cuts ``run``
    (sorted by key, then LSN): its first record not below the splitter, so all records of
    a (key, lsn) (a replaced value and its replacement) fall in one slice.

    The key's first record is found by ``searchsorted``; only the splitters whose key the
    run holds look further: the end of their key (a second ``searchsorted``, of those
    only), then the LSN within it by a binary search run for them all at once (a vector
    step per halving, over the splitters still searching): as many steps as the log of
    the run's most repeated splitter key.
    """
    lo = run.keys.searchsorted(keys, "left")
    last = len(run) - 1
    # Bytes compared as a (n, 18) uint8 array: ~4x faster than S18 or a structured view.
    at_lo = np.take(run.keys, np.minimum(lo, last)).view(np.uint8).reshape(-1, KEY_DTYPE.itemsize)
    held = np.flatnonzero((at_lo == keys.view(np.uint8).reshape(at_lo.shape)).all(axis=1))
    if not len(held):
        return lo
    a = lo[held]
    z = run.keys.searchsorted(keys[held], "right")
    want = lsns[held]
    # Fixed arrays, a few operations per halving: a finished search (a == z) stays put.
    searching = a < z
    while searching.any():
        mid = (a + z) >> 1
        below = (np.take(run.lsns, np.minimum(mid, last)) < want) & searching
        a = np.where(below, mid + 1, a)
        z = np.where(below | ~searching, z, mid)
        searching = a < z
    lo[held] = a
    return lo


class _BlockPlan:
    """Which slices of a flush read each :data:`_BLOCK_BYTES` block of the mapped file:
    the first (it faults the block in) and the last (the block is released after it).

    A value marks the block it starts in, the one it ends in, and any strictly between
    (a value longer than a block: only it reads those). Built a slice at a time in slice
    order, so a block's last reader is simply the last slice to write it (every index of
    one assignment gets the same value: repeated indices are harmless), and its first
    the minimum with what is there. Replaced values count as read (they are dropped only
    after the sort): at worst a block stays mapped a little longer. A block no slice
    reads is never faulted in (the kernel's fault-around stays within a 64 KiB-aligned
    window), and counts as released after slice 0.
    """

    def __init__(self, size: int, nslices: int) -> None:
        self.size = size
        self.nslices = nslices
        nblocks = -(-size >> _BLOCK_SHIFT)
        self.first = np.full(nblocks, nslices, np.int64)
        self.last = np.full(nblocks, -1, np.int64)
        #: Each block's last reader, ``last`` with blocks nobody reads released after 0.
        self._released_by: npt.NDArray[np.int64] = np.empty(0, np.int64)
        self._by_first: npt.NDArray[np.intp] = np.empty(0, np.intp)
        self._first_starts: npt.NDArray[np.intp] = np.empty(0, np.intp)
        self._by_last: npt.NDArray[np.intp] = np.empty(0, np.intp)
        self._last_starts: npt.NDArray[np.intp] = np.empty(0, np.intp)

    def add(self, j: int, offs: I64Array, lens: I64Array) -> None:
        """Mark the blocks of the values (``offs``, ``lens``) slice ``j`` reads (slices in
        increasing order)."""
        first, last = self.first, self.last
        lo = offs >> _BLOCK_SHIFT
        hi = (offs + np.maximum(lens, 1) - 1) >> _BLOCK_SHIFT
        # Most values lie in one block (all but ~0.2% at 100 B, ~12% at 8 KiB): the
        # blocks values end in, and any between, only for those that cross one.
        cross = np.flatnonzero(hi != lo)
        blocks = np.concatenate((lo, hi[cross])) if len(cross) else lo
        last[blocks] = j
        first[blocks] = np.minimum(first[blocks], j)
        for i in cross[hi[cross] - lo[cross] > 1].tolist():
            inner = slice(int(lo[i]) + 1, int(hi[i]))
            last[inner] = j
            first[inner] = np.minimum(first[inner], j)

    def finish(self) -> None:
        """Order the blocks by first and by last reader (a few thousand: one sort each)."""
        last = np.where(self.last < 0, 0, self.last)
        self._released_by = last
        slices = np.arange(self.nslices + 1)
        self._by_last = np.argsort(last, kind="stable")
        self._last_starts = np.searchsorted(last[self._by_last], slices)
        self._by_first = np.argsort(self.first, kind="stable")
        self._first_starts = np.searchsorted(self.first[self._by_first], slices)

    def _ranges(self, blocks: npt.NDArray[np.intp], j: int) -> list[tuple[int, int]]:
        """Byte ranges of ``blocks`` (sorted, released after slice ``j``), coalesced
        across every gap in which no block is still to be read.

        A gap of blocks released after earlier slices is bridged: ``MADV_DONTNEED`` over
        pages no longer mapped costs next to nothing, while each call costs a TLB flush on
        every CPU running a thread of the process (the io_uring workers too): ~7 us. With
        keys in random order the blocks a slice is the last to read lie scattered between
        blocks released before, so at 8 KiB a flush of 235 MiB made ~2,900 calls with only
        neighbours coalesced.
        """
        if not len(blocks):
            return []
        # Blocks some later slice still reads, counted up to each block: a gap between
        # two of ``blocks`` holds one exactly when the count differs at its ends (the
        # ends themselves are released now, so they do not count).
        pending = np.cumsum(self._released_by > j)
        cut = np.flatnonzero(pending[blocks[1:]] != pending[blocks[:-1]]) + 1
        firsts = blocks[np.concatenate(([0], cut))].tolist()
        lasts = blocks[np.concatenate((cut - 1, [len(blocks) - 1]))].tolist()
        return [
            (a << _BLOCK_SHIFT, min(self.size, (b + 1) << _BLOCK_SHIFT))
            for a, b in zip(firsts, lasts, strict=True)
        ]

    def released_after(self, j: int) -> list[tuple[int, int]]:
        """Byte ranges no slice after ``j`` reads."""
        # Blocks of one last reader are in increasing order (a stable sort of ``last``).
        return self._ranges(self._by_last[self._last_starts[j] : self._last_starts[j + 1]], j)

    def prefault(self, j: int, data: npt.NDArray[np.uint8]) -> Iterator[int]:
        """Touch every page of the blocks slice ``j`` is the first to read, yielding the
        bytes touched after each :data:`PREFAULT_BYTES` (see :data:`PREFAULT_BYTES`)."""
        blocks = self._by_first[self._first_starts[j] : self._first_starts[j + 1]]
        if not len(blocks):
            return
        blocks = np.sort(blocks)
        per_step = max(1, PREFAULT_BYTES >> _BLOCK_SHIFT)
        pages = np.arange(0, _BLOCK_BYTES, mmap.PAGESIZE, dtype=np.int64)
        for start in range(0, len(blocks), per_step):
            at = ((blocks[start : start + per_step, None] << _BLOCK_SHIFT) + pages).ravel()
            data[at[at < len(data)]].max()
            group = blocks[start : start + per_step]
            yield int(np.minimum(len(data), (group + 1) << _BLOCK_SHIFT).sum() - (group << _BLOCK_SHIFT).sum())
