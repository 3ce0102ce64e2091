"""The flush's merge of the in-memory layer's runs gives exactly what the merge it replaced
gave (kept below as the reference: ``lexsort`` of every slice, ``S18`` comparisons to drop
replaced values), slice for slice and column for column; and a whole flush of many leaves,
slices and chunks is byte-identical to the per-value writer, on both engines."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pageserver.io import IoContext
from pageserver.layers import blob_io, delta_layer
from pageserver.layers.batch import KEY_DTYPE, check_put_batch
from pageserver.tenant import inmemory_layer as iml
from pageserver.tenant.inmemory_layer import Entries, InMemoryLayer, sorted_slices
from tests.helpers.tenant import assert_flush_equals_per_value_writer, image, key

# -- the reference: the merge as it was before the integer sort keys ---------------------------

_KEY_INTS = np.dtype([("a", ">u8"), ("b", ">u8"), ("c", ">u2")])


def _ref_sorted(e: Entries) -> Entries:
    ints = e.keys.view(_KEY_INTS)
    order = np.lexsort((ints["c"], ints["b"], ints["a"]))
    return Entries(e.keys[order], e.lsns[order], e.offs[order], e.lens[order], e.will_init[order])


def _ref_dedup(e: Entries) -> Entries:
    if len(e) < 2:
        return e
    dup = (e.keys[1:] == e.keys[:-1]) & (e.lsns[1:] == e.lsns[:-1])
    if not dup.any():
        return e
    keep = np.ones(len(e), np.bool_)
    keep[:-1] = ~dup
    return e.take(np.flatnonzero(keep))


def reference_sorted_slices(runs: list[Entries], slice_records: int) -> Iterator[Entries]:
    runs = [r for r in runs if len(r)]
    total = sum(len(r) for r in runs)
    if not total:
        return
    if len(runs) == 1:
        whole = _ref_dedup(runs[0])
        for start in range(0, len(whole), slice_records):
            yield whole.part(start, start + slice_records)
        return
    nslices = -(-total // slice_records)
    splitters: list[tuple[bytes, int]] = []
    if nslices > 1:
        # One stride over the whole layer (~16 samples per slice in all), (key, lsn) pairs.
        stride = -(-total // (16 * nslices))
        # Run i starts at phase i * stride // nruns (runs of one key distribution would
        # otherwise all give the same quantiles).
        sample = sorted(
            (k.ljust(18, b"\0"), int(x))
            for i, r in enumerate(runs)
            for k, x in zip(
                r.keys[i * stride // len(runs) :: stride].tolist(),
                r.lsns[i * stride // len(runs) :: stride].tolist(),
                strict=True,
            )
        )
        pick = np.linspace(0, len(sample), nslices + 1)[1:-1].astype(np.int64)
        for i in pick.tolist():
            if not splitters or splitters[-1] != sample[i]:
                splitters.append(sample[i])
    bounds = []
    for r in runs:
        pairs = [(k.ljust(18, b"\0"), int(x)) for k, x in zip(r.keys.tolist(), r.lsns.tolist(), strict=True)]
        bounds.append([0, *(bisect.bisect_left(pairs, sp) for sp in splitters), len(r)])
    for j in range(len(splitters) + 1):
        parts = [r.part(int(b[j]), int(b[j + 1])) for r, b in zip(runs, bounds, strict=True)]
        part = Entries.concat([p for p in parts if len(p)] or parts[:1])
        if len(part):
            yield _ref_dedup(_ref_sorted(part))


# -- random runs, as the in-memory layer makes them ---------------------------------------------


def _keyspace(rnd: random.Random, kind: str, nkeys: int) -> list[bytes]:
    if kind == "relation":  # one relation: keys share all but their last 4 bytes
        return [key(i)[:14] + rnd.getrandbits(32).to_bytes(4, "big") for i in range(nkeys)]
    if kind == "wide":  # keys differ from the first byte on: the general (lexsort) path
        return [rnd.randbytes(18) for _ in range(nkeys)]
    if kind == "nul":  # NUL-ending keys differing only there (S18 arrays drop trailing NULs)
        return [bytes(16) + bytes([0, i % 3]) if i % 2 else key(i)[:10] + bytes(8) for i in range(nkeys)]
    if kind == "hot":  # half the records on one key: slices cut inside it, by LSN
        return [key(7)] * nkeys + [key(i) for i in range(nkeys)]
    # mixed: a few relations, so some slices share 10 bytes and some straddle two heads
    return [key(i)[:9] + bytes([i % 3]) + rnd.randbytes(8) for i in range(nkeys)]


def _runs(rnd: random.Random, kind: str, nruns: int, nkeys: int) -> list[Entries]:
    space = _keyspace(rnd, kind, nkeys)
    runs = []
    lsn = 0
    off = 0
    for _ in range(nruns):
        n = rnd.randint(0, 3000)
        keys = np.array([space[rnd.randrange(len(space))] for _ in range(n)], KEY_DTYPE)
        lsns = np.empty(n, np.uint64)
        for i in range(n):  # arrival order is LSN order; a (key, lsn) repeats now and then
            lsn += rnd.choice((0, 0, 1, 5))
            lsns[i] = lsn
        offs = np.arange(off, off + n, dtype=np.int64)
        off += n
        lens = np.array([rnd.randint(0, 300) for _ in range(n)], np.int64)
        will_init = np.array([rnd.random() < 0.3 for _ in range(n)], np.bool_)
        runs.append(_ref_sorted(Entries(keys, lsns, offs, lens, will_init)))  # a stable sort
    return runs


@pytest.mark.parametrize("kind", ["relation", "wide", "nul", "mixed", "hot"])
@pytest.mark.parametrize("seed", range(4))
def test_merge_equals_the_reference_merge(kind: str, seed: int) -> None:
    rnd = random.Random(f"{kind}-{seed}")
    runs = _runs(rnd, kind, nruns=rnd.choice((1, 2, 7, 14)), nkeys=rnd.choice((5, 300, 20000)))
    for slice_records in (100, 1000, 1 << 20):
        got = list(sorted_slices(runs, slice_records))
        want = list(reference_sorted_slices(runs, slice_records))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.keys.tobytes() == w.keys.tobytes()
            for col in ("lsns", "offs", "lens", "will_init"):
                assert getattr(g, col).tolist() == getattr(w, col).tolist(), col


# -- a whole flush ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value_sizes",
    # The last two: blocks mostly (or all) of large values, written as gathers.
    [(100,), (3, 100, 200, 8192), (100, 8192, 8192, 8192), (5000, 16384)],
)
async def test_large_flush_is_byte_identical_to_the_per_value_writer(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value_sizes: tuple[int, ...]
) -> None:
    """~24k records over 6k keys of one relation (hundreds of B-tree leaves, written
    whole from the batches and across them), small slices and chunks so that every step
    boundary falls inside keys, leaves and pages (and gathered blocks are small)."""
    monkeypatch.setattr(iml, "FLUSH_SLICE_RECORDS", 3000)
    monkeypatch.setattr(delta_layer, "SORTED_INDEX_RECORDS", 1100)
    monkeypatch.setattr(delta_layer, "SORTED_CHUNK_RECORDS", 700)
    monkeypatch.setattr(delta_layer, "GATHER_WRITE_BYTES", 200_000)
    gathers: list[int] = []
    real_gather = blob_io.gather_blobs

    def gather(*a: Any) -> Any:
        g = real_gather(*a)
        gathers.append(len(g))
        return g

    monkeypatch.setattr(delta_layer, "gather_blobs", gather)
    slices: list[int] = []
    real_merge = iml.merge_steps

    def merge(runs: list[Entries], *a: Any) -> Iterator[Entries | None]:
        for part in real_merge(runs, *a):
            if part is not None:
                slices.append(len(part))
            yield part

    monkeypatch.setattr(iml, "merge_steps", merge)
    rnd = random.Random(len(value_sizes))
    keys = sorted({key(rnd.randrange(1 << 20)) for _ in range(6000)})
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    model: dict[bytes, dict[int, bytes]] = {}
    lsn = 10
    try:
        for _ in range(24):
            batch = []
            for _ in range(1000):
                lsn += rnd.choice((0, 1))
                k = rnd.choice(keys)
                v = image(rnd.randbytes(rnd.choice(value_sizes)))
                batch.append((k, lsn, v))
                model.setdefault(k, {})[lsn] = v  # a (key, lsn) put again: the last wins
            await layer.put_batch(check_put_batch(batch))
        await layer.freeze(lsn + 1)
        info = await assert_flush_equals_per_value_writer(io_ctx, layer, model, lsn + 1, tmp_path)
        assert info.file_size > 60 * 8192  # many index pages
        # The slices really are small (the flush reads FLUSH_SLICE_RECORDS when it runs):
        # ~24k records in slices of ~3000 (fewer records where 8 KiB values fill
        # FLUSH_SLICE_BYTES first, which they do not here).
        assert len(slices) >= 6 and max(slices) <= 2 * 3000, slices
        # Gathers where blocks average 4 KiB or more, and only there.
        assert (len(gathers) > 10) is (sum(value_sizes) / len(value_sizes) > 4096), gathers
    finally:
        await layer.delete()
