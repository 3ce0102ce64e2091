"""The flush's steps are bounded by size, not measured by time: under trio-uring the job
runs on the event loop, and everything between two checkpoints is one step that every
other task waits for. Each piece of work the flush does (merging a slice of the runs,
extending the B-tree, packing and writing values) is counted, and between two
checkpoints there must be at most one piece, of bounded records and bytes (a write's
bytes are what it hands to the buffered writer; under trio-uring submitting a larger
write costs the loop's thread more, ~0.05 ms for 512 KiB and ~0.12 ms for 2 MiB, so they
count)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pageserver.io import IoContext
from pageserver.layers import blob_io, delta_layer
from pageserver.layers.batch import KEY_DTYPE, check_put_batch
from pageserver.layers.blob_io import BlobWriter
from pageserver.layers.delta_layer import DeltaLayer
from pageserver.layers.disk_btree import DiskBtreeBuilder
from pageserver.layers.key import TenantId, TimelineId
from pageserver.tenant import inmemory_layer as iml
from pageserver.tenant.ephemeral_file import MappedFile
from pageserver.tenant.inmemory_layer import Entries, InMemoryLayer
from tests.helpers.tenant import frozen_layer, image, key, pg_rec

TID = TenantId.parse("0123456789abcdef0123456789abcdef")
TLID = TimelineId.parse("fedcba9876543210fedcba9876543210")

Piece = tuple[str, int, int]  # (what, records, value bytes)


@pytest.mark.parametrize("payload", [3, 100, 3000, 8192])
async def test_no_flush_step_does_more_than_one_bounded_piece(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: int
) -> None:
    # 3-byte images (encoded: 16 bytes): a byte bound alone would let 512 KiB / 17 B =
    # ~30k values into one step, where the gather costs ~50 ns a value however short.
    # The packing path at every size (large values are otherwise written as gathers,
    # which test_large_values_are_written_as_bounded_gathers covers).
    monkeypatch.setattr(delta_layer, "GATHER_MIN_MEAN_BYTES", 1 << 62)
    rnd = random.Random(payload)
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    records = 60_000 if payload < 1000 else 6000
    keys = [key(i) for i in range(records // 3)]
    lsn = 10
    for _ in range(records // 1000):
        batch = []
        for _ in range(1000):
            lsn += 1
            batch.append((rnd.choice(keys), lsn, image(rnd.randbytes(payload))))
        await layer.put_batch(check_put_batch(batch))
    await layer.freeze(lsn + 1)

    steps: list[list[Piece]] = [[]]

    async def checkpoint() -> None:
        steps.append([])

    real_pack = blob_io.pack_blobs

    def pack(
        data: Any, offs: npt.NDArray[np.int64], lens: npt.NDArray[np.int64], **kw: Any
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        steps[-1].append(("values", len(lens), int(lens.sum())))
        return real_pack(data, offs, lens, **kw)

    real_extend = DiskBtreeBuilder.extend_sorted

    def extend(self: DiskBtreeBuilder, keys: Any, values: Any, **kw: Any) -> None:
        steps[-1].append(("index", len(values), 0))
        real_extend(self, keys, values, **kw)

    real_write = BlobWriter.write_packed

    async def write_packed(self: BlobWriter, packed: Any) -> int:
        steps[-1].append(("write", 0, len(packed)))
        return await real_write(self, packed)

    real_write_gather = BlobWriter.write_gather

    async def write_gather(self: BlobWriter, gather: Any) -> int:
        # Large values are written from where they are (no packing): one piece, the write.
        steps[-1].append(("write", 0, len(gather)))
        return await real_write_gather(self, gather)

    real_merge = iml.merge_steps

    def merge(runs: list[Entries], *a: Any) -> Iterator[Entries | None]:
        for part in real_merge(runs, *a):
            # A None ends a step: its work is what the hooks below recorded, or, if none,
            # the merge's own (choosing the splitters).
            if part is not None or not steps[-1]:
                steps[-1].append(("merge", 0 if part is None else len(part), 0))
            yield part

    real_order = iml._slice_order

    def order(keys: Any, lo: bytes, hi: bytes) -> npt.NDArray[np.intp]:
        steps[-1].append(("sort", len(keys), 0))
        return real_order(keys, lo, hi)

    real_plan_add = iml._BlockPlan.add

    def plan_add(self: iml._BlockPlan, j: int, offs: Any, lens: Any) -> None:
        steps[-1].append(("plan", len(offs), 0))
        real_plan_add(self, j, offs, lens)

    real_prefault = iml._BlockPlan.prefault

    def prefault(self: iml._BlockPlan, j: int, data: Any) -> Iterator[int]:
        for n in real_prefault(self, j, data):
            steps[-1].append(("prefault", 0, n))
            yield n

    monkeypatch.setattr(delta_layer, "cooperative_checkpoint", checkpoint)
    monkeypatch.setattr(iml, "cooperative_checkpoint", checkpoint)
    monkeypatch.setattr(delta_layer, "pack_blobs", pack)
    monkeypatch.setattr(DiskBtreeBuilder, "extend_sorted", extend)
    monkeypatch.setattr(BlobWriter, "write_packed", write_packed)
    monkeypatch.setattr(BlobWriter, "write_gather", write_gather)
    monkeypatch.setattr(iml, "merge_steps", merge)
    monkeypatch.setattr(iml, "_slice_order", order)
    monkeypatch.setattr(iml._BlockPlan, "add", plan_add)
    monkeypatch.setattr(iml._BlockPlan, "prefault", prefault)
    try:
        info = await layer.write_delta_layer(str(tmp_path), TID, TLID)
    finally:
        await layer.delete()

    work = [s for s in steps if s]
    # One piece per step; a block's write goes with the packing of its last piece.
    assert [s for s in work if len(s) > 1 and [p[0] for p in s] != ["values", "write"]][:3] == []
    pieces = [p for s in work for p in s]
    bound = {
        # A slice is cut by sampled splitter keys: about FLUSH_SLICE_RECORDS, not exactly.
        "merge": 2 * iml.FLUSH_SLICE_RECORDS,
        "sort": 2 * iml.FLUSH_SLICE_RECORDS,
        "plan": 2 * iml.FLUSH_SLICE_RECORDS,
        "prefault": 0,
        "index": delta_layer.SORTED_INDEX_RECORDS,
        "values": delta_layer.SORTED_CHUNK_RECORDS,
        "write": 0,
    }
    assert [p for p in pieces if p[1] > bound[p[0]]] == []
    # Bytes: a block ends before the first value that would take it past SORTED_WRITE_BYTES.
    assert max(p[2] for p in pieces if p[0] == "write") <= delta_layer.SORTED_WRITE_BYTES + payload + 20
    # A step packs SORTED_CHUNK_BYTES of blobs at most (one value can be larger alone).
    assert max(p[2] for p in pieces if p[0] == "values") <= delta_layer.SORTED_CHUNK_BYTES + payload + 20
    written = sum(p[1] for p in pieces if p[0] == "values")
    assert written == sum(p[1] for p in pieces if p[0] == "index") == info.num_entries
    # Prefault: the pages of whole 64 KiB blocks, up to PREFAULT_BYTES of them a step.
    assert max(p[2] for p in pieces if p[0] == "prefault") <= iml.PREFAULT_BYTES
    assert sum(p[2] for p in pieces if p[0] == "prefault") >= layer.size
    assert {p[0] for p in pieces} == {"merge", "sort", "plan", "prefault", "index", "values", "write"}
    async with await DeltaLayer.open(io_ctx, info.path) as dl:
        assert len(await dl.load_all()) == written


async def test_packed_pieces_are_bounded_in_bytes_with_mixed_value_sizes(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 KiB images on a few keys among ~100 B records: a piece is cut by bytes as well as
    by count, so no step packs more than SORTED_CHUNK_BYTES of blobs unless it is one
    value (pieces equal in count carried up to 1.7 MB here). (The packing path for every
    block: those of mostly large values are otherwise written as gathers.)"""
    monkeypatch.setattr(delta_layer, "GATHER_MIN_MEAN_BYTES", 1 << 62)

    def record(rnd: random.Random) -> tuple[int, bytes]:
        k = rnd.randrange(20_000)
        return k, image(rnd.randbytes(8192)) if k < 1000 else pg_rec(rnd.randbytes(100))

    layer = await frozen_layer(io_ctx, str(tmp_path), random.Random(0), 40, 1000, record)
    pieces: list[tuple[int, int]] = []
    real_pack = blob_io.pack_blobs

    def pack(
        data: Any, offs: npt.NDArray[np.int64], lens: npt.NDArray[np.int64], **kw: Any
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        pieces.append((len(lens), int(blob_io.blob_sizes(lens).sum())))
        return real_pack(data, offs, lens, **kw)

    monkeypatch.setattr(delta_layer, "pack_blobs", pack)
    try:
        info = await layer.write_delta_layer(str(tmp_path), TID, TLID)
    finally:
        await layer.delete()
    assert sum(c for c, _ in pieces) == info.num_entries == 40_000
    assert [p for p in pieces if p[1] > delta_layer.SORTED_CHUNK_BYTES and p[0] > 1] == []
    assert max(c for c, _ in pieces) <= delta_layer.SORTED_CHUNK_RECORDS
    # Large pieces are packed here: the bound above is reached, not trivially met.
    assert max(b for _, b in pieces) > delta_layer.SORTED_CHUNK_BYTES // 2


def record_sort_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the number of keys of every slice sort of the flush's merge."""
    sizes: list[int] = []
    real = iml._slice_order

    def order(keys: Any, lo: bytes, hi: bytes) -> npt.NDArray[np.intp]:
        sizes.append(len(keys))
        return real(keys, lo, hi)

    monkeypatch.setattr(iml, "_slice_order", order)
    return sizes


def _sorted_run(rnd: random.Random, n: int, space: list[bytes], first_off: int) -> Entries:
    keys = np.array([rnd.choice(space) for _ in range(n)], KEY_DTYPE)
    lsns = np.arange(first_off, first_off + n, dtype=np.uint64)
    offs = np.arange(first_off, first_off + n, dtype=np.int64)
    return Entries(keys, lsns, offs, np.ones(n, np.int64), np.zeros(n, np.bool_)).sorted()


@pytest.mark.parametrize("nruns", [2, 40, 150])
def test_splitter_sample_is_bounded_by_slices_and_runs(
    monkeypatch: pytest.MonkeyPatch, nruns: int
) -> None:
    """The one sort of the splitter sample is of ~16 keys per slice plus one per run,
    however large the layer: with a sample of 8 keys per slice from every run it grew
    with slices x runs (the square of the layer; 5M records -> 383k samples, one sort)."""
    rnd = random.Random(nruns)
    space = [key(i) for i in range(5000)]
    runs = []
    total = 0
    for _ in range(nruns):
        n = rnd.randrange(500, 2500)
        runs.append(_sorted_run(rnd, n, space, total))
        total += n
    slice_records = 64
    nslices = -(-total // slice_records)
    sorts = record_sort_sizes(monkeypatch)
    items = iml.merge_steps(runs, slice_records)
    steps_before_first_slice = 0
    first: Entries | None = None
    for first in items:
        if first is not None:
            break
        steps_before_first_slice += 1
    assert first is not None
    # Before the first slice: the sample's sort, then the first slice's sort.
    sample_sort = sorts[0]
    assert len(sorts) == 2
    assert sample_sort <= iml._SAMPLES_PER_SLICE * nslices + nruns, (sample_sort, nslices, nruns)
    # The sampling and the search for the splitters are steps of a few runs each.
    per_step = iml._SPLIT_RUNS_PER_STEP
    assert steps_before_first_slice == 2 * -(-nruns // per_step) + 1 + 1
    rest = [p for p in items if p is not None]
    assert len(first) + sum(len(p) for p in rest) <= total
    # And the splitters still cut even slices: runs of one key distribution sampled at
    # the same phase gave the same quantiles (150 runs: slices of ~10x slice_records).
    assert max(len(p) for p in [first, *rest]) <= 2 * slice_records


async def test_slices_of_large_values_are_cut_by_bytes(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6000 8 KiB images (~47 MiB) at the default FLUSH_SLICE_BYTES: every slice of the
    merge holds about that many value bytes (at most twice: slices are cut by sampled
    splitters), never the whole layer, so the mapping holds a few slices' pages at once."""
    rnd = random.Random(5)
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    lsn = 10
    keys = [key(i) for i in range(3000)]
    for _ in range(6):
        batch = []
        for _ in range(1000):
            lsn += 1
            batch.append((rnd.choice(keys), lsn, image(rnd.randbytes(8192))))
        await layer.put_batch(check_put_batch(batch))
    await layer.freeze(lsn + 1)
    assert layer.size > 2 * iml.FLUSH_SLICE_BYTES
    slice_bytes: list[int] = []
    real_merge = iml.merge_steps

    def merge(runs: list[Entries], *a: Any) -> Iterator[Entries | None]:
        for part in real_merge(runs, *a):
            if part is not None:
                slice_bytes.append(int(part.lens.sum()))
            yield part

    monkeypatch.setattr(iml, "merge_steps", merge)
    try:
        await layer.write_delta_layer(str(tmp_path), TID, TLID)
    finally:
        await layer.delete()
    assert len(slice_bytes) >= 3
    assert max(slice_bytes) <= 2 * iml.FLUSH_SLICE_BYTES, sorted(slice_bytes)[-3:]


async def _flush_sort_sizes(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pick: Any
) -> list[int]:
    """Flush 120k 1-byte images with keys ``pick(rnd, i)``; the sizes of every sort."""
    sizes = record_sort_sizes(monkeypatch)
    rnd = random.Random(1)
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    lsn = 10
    try:
        for b in range(120):
            batch = []
            for i in range(1000):
                lsn += 1
                batch.append((pick(rnd, b * 1000 + i), lsn, image(b"x")))
            await layer.put_batch(check_put_batch(batch))
        await layer.freeze(lsn + 1)
        await layer.write_delta_layer(str(tmp_path), TID, TLID)
    finally:
        await layer.delete()
    return sizes


async def test_flush_sorts_no_more_than_about_a_slice(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120k records in slices of 1024: no sort of the flush (the splitter sample's
    included) is of much more than a slice (the sample was ~8 * nslices keys a run:
    ~7.5k)."""
    monkeypatch.setattr(iml, "FLUSH_SLICE_RECORDS", 1024)
    keys = [key(i) for i in range(50_000)]
    sizes = await _flush_sort_sizes(io_ctx, tmp_path, monkeypatch, lambda rnd, i: rnd.choice(keys))
    assert max(sizes) <= 2 * 1024, sorted(sizes)[-3:]


async def test_a_hot_key_is_cut_into_slices(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half of 120k records on one key: the splitters are (key, lsn) pairs, so the key's
    records are cut by LSN into slices of about FLUSH_SLICE_RECORDS (with key splitters
    they made one slice of ~60k records: one sort, one gather, one plan step each)."""
    keys = [key(i) for i in range(50_000)]
    sizes = await _flush_sort_sizes(
        io_ctx, tmp_path, monkeypatch, lambda rnd, i: keys[7] if i % 2 else rnd.choice(keys)
    )
    assert max(sizes) <= 2 * iml.FLUSH_SLICE_RECORDS, sorted(sizes)[-3:]


async def test_mapping_release_is_cut_into_steps(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a slice, the blocks it is the last to read are released at most
    ``_RELEASE_RANGES_PER_STEP`` ranges (``madvise`` calls) a step: keys arriving in
    passes over the key space (the bench's pattern) leave a slice's blocks in one place
    per pass, so a slice releases several ranges (at 8 KiB in the daemon, the last slices
    of a layer released 400-530 ranges in one 1.5-3.5 ms step)."""
    monkeypatch.setattr(iml, "FLUSH_SLICE_RECORDS", 2048)
    monkeypatch.setattr(iml, "_BLOCK_SHIFT", 12)
    monkeypatch.setattr(iml, "_BLOCK_BYTES", 1 << 12)
    monkeypatch.setattr(iml, "_RELEASE_RANGES_PER_STEP", 3)
    nkeys, passes = 3000, 6
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    payload = image(b"\x5a" * 100)
    lsn = 10
    for start in range(0, nkeys * passes, 1000):
        recs = [(key(i % nkeys), lsn, payload) for i in range(start, start + 1000)]
        await layer.put_batch(check_put_batch(recs))
        lsn += 1
    await layer.freeze(lsn)
    size = layer.size

    steps: list[list[int]] = [[]]
    released: list[tuple[int, int]] = []

    async def checkpoint() -> None:
        steps.append([])

    real_release = MappedFile.release

    def release(self: Any, ranges: list[tuple[int, int]]) -> None:
        steps[-1].append(len(ranges))
        released.extend(ranges)
        real_release(self, ranges)

    monkeypatch.setattr(iml, "cooperative_checkpoint", checkpoint)
    monkeypatch.setattr(delta_layer, "cooperative_checkpoint", checkpoint)
    monkeypatch.setattr(MappedFile, "release", release)
    try:
        info = await layer.write_delta_layer(str(tmp_path), TID, TLID)
    finally:
        await layer.delete()
    calls = [s for s in steps if s]
    assert all(len(s) == 1 and s[0] <= 3 for s in calls), calls
    nslices = -(-nkeys * passes // 2048)
    assert len(calls) > nslices  # some slice's release took more than one step
    # Every block goes once its last reader is written: the whole file is released (a
    # range may also bridge blocks released before: _BlockPlan's own test).
    covered = np.zeros(size, np.bool_)
    for a, z in released:
        covered[a:z] = True
    assert covered.all()
    async with await DeltaLayer.open(io_ctx, info.path) as dl:
        assert len(await dl.load_all()) == nkeys * passes


@pytest.mark.parametrize("mixed", [False, True])
async def test_large_values_are_written_as_bounded_gathers(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mixed: bool
) -> None:
    """Blocks of large values go out as gathers (nothing packed in this process), one
    write of at most GATHER_WRITE_BYTES (plus one value) per step; with small values mixed
    in, blocks whose blobs average less than GATHER_MIN_MEAN_BYTES are packed as before
    (write steps of at most GATHER_WRITE_BYTES for gathers), and the mapping's pages a
    slice read are dropped only after its gathers were written.
    Either way the layer holds every value (byte identity with the per-value writer is
    test_inmemory_flush_merge's)."""

    def record(rnd: random.Random) -> tuple[int, bytes]:
        k = rnd.randrange(5000)
        small = mixed and k < 1500  # a key range of small values: blocks of them
        return k, pg_rec(rnd.randbytes(100)) if small else image(rnd.randbytes(8192))

    layer = await frozen_layer(io_ctx, str(tmp_path), random.Random(7), 8, 500, record)
    steps: list[list[Piece]] = [[]]

    async def checkpoint() -> None:
        steps.append([])

    real_gather = BlobWriter.write_gather
    real_pack = blob_io.pack_blobs

    events: list[str] = []
    real_wait = BlobWriter.wait_written
    real_release = MappedFile.release

    async def write_gather(self: BlobWriter, gather: Any) -> int:
        assert gather.count == 2 * (gather.count // 2) <= 2 * 1024  # header + value each
        steps[-1].append(("gather", gather.count // 2, len(gather)))
        events.append("gather")
        return await real_gather(self, gather)

    async def wait_written(self: BlobWriter) -> None:
        await real_wait(self)
        events.append("waited")

    def release(self: MappedFile, ranges: list[tuple[int, int]]) -> None:
        events.append("release")
        real_release(self, ranges)

    def pack(
        data: Any, offs: npt.NDArray[np.int64], lens: npt.NDArray[np.int64], **kw: Any
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        steps[-1].append(("values", len(lens), int(blob_io.blob_sizes(lens).sum())))
        return real_pack(data, offs, lens, **kw)

    monkeypatch.setattr(delta_layer, "cooperative_checkpoint", checkpoint)
    monkeypatch.setattr(BlobWriter, "write_gather", write_gather)
    monkeypatch.setattr(BlobWriter, "wait_written", wait_written)
    monkeypatch.setattr(MappedFile, "release", release)
    monkeypatch.setattr(delta_layer, "pack_blobs", pack)
    try:
        info = await layer.write_delta_layer(str(tmp_path), TID, TLID)
    finally:
        await layer.delete()
    # The mapping's pages are dropped only once the gathers reading them are written.
    assert "release" in events
    pending = False
    for e in events:
        pending = (pending or e == "gather") and e != "waited"
        assert not (e == "release" and pending), events
    pieces = [p for s in steps for p in s]
    gathers = [p for p in pieces if p[0] == "gather"]
    packed = [p for p in pieces if p[0] == "values"]
    assert gathers
    assert max(b for _, _, b in gathers) <= delta_layer.GATHER_WRITE_BYTES + 8192 + 20
    assert all(b >= blob_io.GATHER_MIN_MEAN_BYTES * n for _, n, b in gathers)
    assert [s for s in steps if any(p[0] == "gather" for p in s) and len(s) > 1] == []
    assert sum(n for _, n, _ in gathers) + sum(n for _, n, _ in packed) == info.num_entries
    assert bool(packed) is mixed
