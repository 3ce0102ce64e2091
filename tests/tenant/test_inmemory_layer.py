"""The in-memory layer's array index: sorted runs merged as they grow, an unsorted tail,
reads newest first with the replace rule, and the flush's key-range merge.

The run sizes are shrunk (monkeypatched) so that a few hundred records exercise tails,
runs, merges of every level and multi-slice flushes; a dict model is the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver.io import IoContext
from pageserver.layers.batch import check_put_batch
from pageserver.layers.delta_layer import DeltaLayer, DeltaLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.tenant import inmemory_layer as iml
from pageserver.tenant.inmemory_layer import Entries, InMemoryLayer, sorted_slices
from tests.helpers.tenant import image, key, trec

TID = TenantId.parse("0123456789abcdef0123456789abcdef")
TLID = TimelineId.parse("fedcba9876543210fedcba9876543210")


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iml, "RUN_RECORDS", 8)
    monkeypatch.setattr(iml, "FANIN", 3)
    monkeypatch.setattr(iml, "MAX_MERGE_RECORDS", 8 * 3 * 3)


def _key(i: int) -> bytes:
    # Keys ending in NUL bytes and differing only there are the ones S18 arrays mishandle.
    return key(i) if i % 3 else key(i)[:16] + bytes([0, i % 2])


batches_st = st.lists(
    st.lists(st.tuples(st.integers(0, 15), st.integers(0, 2), st.binary(max_size=12)), min_size=1, max_size=30),
    min_size=1,
    max_size=25,
)


def _build(raw: list[list[tuple[int, int, bytes]]]) -> list[list[tuple[bytes, int, bytes]]]:
    lsn = 10
    out = []
    for batch in raw:
        recs = []
        for k, step, payload in batch:
            lsn += step
            v = image(payload) if k % 2 else trec(payload.hex(), clear=True, will_init=True)
            recs.append((_key(k), lsn, v))
        out.append(recs)
    return out


async def _fill(ctx: IoContext, d: Path, batches: list[list[tuple[bytes, int, bytes]]]) -> InMemoryLayer:
    layer = await InMemoryLayer.create(ctx, str(d), 0, 10)
    for b in batches:
        await layer.put_batch(check_put_batch(b))
    return layer


def _model(batches: list[list[tuple[bytes, int, bytes]]]) -> dict[bytes, list[tuple[int, bytes]]]:
    """key -> [(lsn, value)] oldest first, a (key, lsn) put again replacing the value."""
    m: dict[bytes, list[tuple[int, bytes]]] = {}
    for b in batches:
        for k, lsn, v in b:
            hist = m.setdefault(k, [])
            if hist and hist[-1][0] == lsn:
                hist[-1] = (lsn, v)
            else:
                hist.append((lsn, v))
    return m


async def _reads(layer: InMemoryLayer, k: bytes, below: int) -> list[tuple[int, bytes]]:
    return [(lsn, await layer.read_value(off, n)) for lsn, off, n, _w in layer.entries_for(k, below)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=batches_st, data=st.data())
async def test_reads_and_flush_order_match_a_model(
    small_runs: None, io_ctx: IoContext, tmp_path_factory: pytest.TempPathFactory,
    raw: list[list[tuple[int, int, bytes]]], data: st.DataObject,
) -> None:  # fmt: skip
    d = tmp_path_factory.mktemp("iml")
    batches = _build(raw)
    layer = await _fill(io_ctx, d, batches)
    model = _model(batches)
    last = batches[-1][-1][1]
    try:
        assert layer.num_runs <= len([r for b in batches for r in b]) // 8 + 1
        for _ in range(5):
            below = data.draw(st.integers(10, last + 1))
            for k in range(16):
                kb = _key(k)
                want = [(lsn, v) for lsn, v in reversed(model.get(kb, [])) if lsn < below]
                assert await _reads(layer, kb, below) == want
        await layer.freeze(last + 1)
        for k in range(16):  # frozen: the tail became a run, reads unchanged
            kb = _key(k)
            assert await _reads(layer, kb, last + 1) == [(x, v) for x, v in reversed(model.get(kb, []))]
        flat = [(kb, lsn, v) for kb in sorted(model) for lsn, v in model[kb]]
        got = []
        for part in layer.sorted_entries():
            for i in range(len(part)):
                off, n = int(part.offs[i]), int(part.lens[i])
                got.append((part.keys[i : i + 1].tobytes(), int(part.lsns[i]), await layer.read_value(off, n)))
        assert got == flat
    finally:
        await layer.delete()


def test_sorted_slices_cut_by_key_range() -> None:
    """Many runs and small slices: every (key, lsn)'s records in one slice (a key's may
    span slices, in LSN order), in order, deduplicated."""
    rng = np.random.default_rng(5)
    runs = []
    lsn = 0
    for _r in range(7):
        n = int(rng.integers(1, 400))
        ks = rng.integers(0, 50, n)
        keys = np.array([_key(int(k)) for k in ks], dtype="S18")
        lsns = np.arange(lsn, lsn + n, dtype=np.uint64) // 3  # duplicates (key, lsn) too
        lsn += n
        offs = np.arange(n, dtype=np.int64) + 1000 * _r
        e = Entries(keys, lsns, offs, np.ones(n, np.int64), np.zeros(n, np.bool_))
        runs.append(e.sorted())
    ref: dict[tuple[bytes, int], int] = {}
    for e in runs:  # oldest first: the last (key, lsn) put wins
        for i in range(len(e)):
            ref[(e.keys[i : i + 1].tobytes(), int(e.lsns[i]))] = int(e.offs[i])
    expected = sorted(ref.items())
    got = []
    slice_pairs: list[set[tuple[bytes, int]]] = []
    for part in sorted_slices(runs, slice_records=100):
        part_keys = [part.keys[i : i + 1].tobytes() for i in range(len(part))]
        slice_pairs.append({(k, int(x)) for k, x in zip(part_keys, part.lsns.tolist(), strict=True)})
        got += [((part_keys[i], int(part.lsns[i])), int(part.offs[i])) for i in range(len(part))]
    assert got == expected
    assert len(slice_pairs) > 5
    for a in range(len(slice_pairs)):
        for b in range(a + 1, len(slice_pairs)):
            assert not slice_pairs[a] & slice_pairs[b]


async def test_flush_is_byte_identical_to_the_per_value_writer(
    small_runs: None, io_ctx: IoContext, tmp_path: Path
) -> None:
    batches = _build([[(k * 7 % 16, k % 3, bytes([k]) * (k % 40)) for k in range(i, i + 17)] for i in range(30)])
    layer = await _fill(io_ctx, tmp_path, batches)
    last = batches[-1][-1][1]
    await layer.freeze(last + 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    info = await layer.write_delta_layer(str(tmp_path / "a"), TID, TLID)
    model = _model(batches)
    w = DeltaLayerWriter(io_ctx, str(tmp_path / "b"), TID, TLID, Key.MIN, 10, last + 1)
    async with w:
        for kb in sorted(model):
            for lsn, v in model[kb]:
                await w.put_value(kb, lsn, v)
        ref = await w.finish(Key.MAX)
    assert Path(info.path).read_bytes() == Path(ref.path).read_bytes()
    dl = await DeltaLayer.open(io_ctx, info.path)
    try:
        assert [(bytes(k), int(lsn), v) for k, lsn, v in await dl.load_all()] == [
            (kb, lsn, v) for kb in sorted(model) for lsn, v in model[kb]
        ]
    finally:
        await dl.close()
    await layer.delete()


async def test_merges_keep_the_run_count_small(small_runs: None, io_ctx: IoContext, tmp_path: Path) -> None:
    """Records one at a time: runs merge level by level, capped at MAX_MERGE_RECORDS."""
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    try:
        for i in range(8 * 9 * 4 + 5):
            await layer.put_batch(check_put_batch([(_key(i % 11), 11 + i, image(b"x"))]))
        assert layer.num_runs <= 4 + 2 * 2
        assert [lsn for lsn, _o, _n, _w in layer.entries_for(_key(4), 10**9)] == [
            11 + i for i in range(8 * 9 * 4 + 4, -1, -1) if i % 11 == 4
        ]
    finally:
        await layer.delete()
