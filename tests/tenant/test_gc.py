"""Garbage collection (SPEC section 11): the cutoff, the removal rule, reads around it.

Every test runs on both engines (the ``engine_kind`` fixture) with real layer files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from pageserver.config import PageserverConfig, TenantConfig
from pageserver.errors import LsnTooOld, RedoUnsupported
from pageserver.layers.key import Key
from pageserver.layers.layer_name import parse_layer_name
from pageserver.tenant.gc import next_cutoff, plan
from pageserver.tenant.layer_map import HistoricLayer
from tests.helpers.tenant import TENANT, TIMELINE, Model, image, key, manager, pg_rec, trec


def cfg(horizon: int = 100, distance: int = 3000, threshold: int = 4, images: int = 2) -> PageserverConfig:
    return PageserverConfig(
        no_sync=True,
        tenant_config=TenantConfig(
            checkpoint_distance=distance,
            compaction_threshold=threshold,
            image_creation_threshold=images,
            compaction_period=3600.0,
            gc_horizon=horizon,
            gc_period=0.0,
        ),
    )


def tl_dir(data_dir: Path) -> Path:
    return data_dir / "tenants" / TENANT / "timelines" / TIMELINE


def layer_files(data_dir: Path) -> set[str]:
    return {n for n in os.listdir(tl_dir(data_dir)) if "__" in n}


async def ingest(mgr, model: Model, lsns: range, nkeys: int = 30) -> None:  # type: ignore[no-untyped-def]
    """Each LSN writes one key: an image every fifth LSN (and for a key's first record),
    test-redo records otherwise; a flush and a compaction every 25 LSNs (L1 merges every
    few flushes, images every other generation)."""
    for lsn in lsns:
        k = key(lsn * 7 % nkeys)
        if lsn % 5 == 0 or not model.history.get(k):
            v = image(bytes([lsn % 251]) * (40 + lsn % 100))
        else:
            v = trec(f"+{lsn}")
        await mgr.put(TENANT, TIMELINE, [(k, lsn, v)])
        model.put(k, lsn, v)
        if lsn % 25 == 0:
            await mgr.flush(TENANT, TIMELINE)
            await mgr.compact(TENANT, TIMELINE)


def timeline_status(mgr) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return mgr.status()[0]["timelines"][0]  # type: ignore[no-any-return]


async def wait_for_cutoff(mgr, lsn: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Wait until a background GC pass has moved the cutoff to ``lsn``."""
    with trio.fail_after(timeout):
        while timeline_status(mgr)["gc_cutoff_lsn"] != lsn:
            await trio.sleep(0.05)


# -- the rule, on names ------------------------------------------------------------------------


def hl(text: str) -> HistoricLayer:
    name = parse_layer_name(text)
    return HistoricLayer(name, f"/nonexistent/{text}", 8192)


FULL = f"{Key.MIN}-{Key.MAX}"


def delta(lo: int, hi: int, keys: str = FULL) -> HistoricLayer:
    return hl(f"{keys}__{lo:016X}-{hi:016X}")


def img(lsn: int, keys: str = FULL) -> HistoricLayer:
    return hl(f"{keys}__{lsn:016X}")


def test_next_cutoff_never_goes_back_nor_below_start_nor_above_dcl() -> None:
    assert next_cutoff(0, 1000, 100, 0, 1000) == 900
    assert next_cutoff(950, 1000, 100, 0, 1000) == 950  # never back
    assert next_cutoff(0, 50, 100, 10, 50) == 10  # never below start_lsn
    assert next_cutoff(0, 1000, 0, 0, 1000) == 1000  # horizon 0: up to last_record_lsn
    assert next_cutoff(0, 1000, 0, 0, 600) == 600  # not above disk_consistent_lsn


def test_plan_removal_rule() -> None:
    d1 = delta(1, 11)  # records 1..10
    d2 = delta(11, 21)  # records 11..20
    i10 = img(10)
    i20 = img(20)
    d3 = delta(21, 31)
    layers = [d1, d2, i10, i20, d3]
    # Cutoff 15: d1 ends at 11 <= 16 and image 20 is above the cutoff, image 10 is below
    # the delta's end (10 < 11): nothing stands above d1 inside [11, 15].
    assert plan(layers, 15) == []
    # Cutoff 20: d1 (covered by image 20), d2 (end 21 <= 21, image 20 >= 21? no) ...
    got = {str(c.layer.name) for c in plan(layers, 20)}
    assert got == {str(d1.name), str(i10.name)}
    # Cutoff 30: d2 (end 21, image 20 < 21 does not count, nothing else) stays; the image at
    # the cutoff itself stays (reads at the cutoff use it).
    got = {str(c.layer.name) for c in plan(layers, 30)}
    assert got == {str(d1.name), str(i10.name)}
    # An image that covers only part of an L0's key range does not make it removable.
    half = f"{Key.MIN}-{Key.from_int(1 << 64)}"
    assert plan([delta(1, 11), img(12, half)], 40) == []
    # Nor do two halves together (SPEC section 11: *an* image over the whole key range) ...
    other = f"{Key.from_int(1 << 64)}-{Key.MAX}"
    assert plan([d1, img(12, half), img(13, other)], 40) == []
    # ... but they do cover an L1 (a narrower delta) that spans the middle.
    l1 = delta(1, 11, f"{Key.from_int(1)}-{Key.from_int(1 << 65)}")
    got = {str(c.layer.name) for c in plan([l1, img(12, half), img(13, other)], 40)}
    assert got == {str(l1.name)}


# -- a timeline ----------------------------------------------------------------------------------


async def test_gc_removes_layers_and_keeps_reads_at_or_above_cutoff(
    engine_kind: str, tmp_path: Path
) -> None:
    model = Model()
    async with manager(engine_kind, tmp_path, cfg(horizon=100)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await ingest(mgr, model, range(1, 501))
        before = layer_files(tmp_path)
        bytes_before = sum(os.path.getsize(tl_dir(tmp_path) / n) for n in before)
        r = await mgr.gc(TENANT, TIMELINE)
        assert r.gc_cutoff_lsn == 400
        after = layer_files(tmp_path)
        assert r.layers_removed == len(before - after) > 0
        assert not (after - before)
        assert sum(os.path.getsize(tl_dir(tmp_path) / n) for n in after) < bytes_before
        st = timeline_status(mgr)
        assert st["gc_cutoff_lsn"] == 400
        # Every read at or above the cutoff is what the model says; below it: lsn_too_old.
        for at in (400, 401, 450, 500):
            for i in range(30):
                assert await mgr.get(TENANT, TIMELINE, key(i), at) == model.get(key(i), at), (i, at)
        for at in (0, 1, 399):
            with pytest.raises(LsnTooOld):
                await mgr.get(TENANT, TIMELINE, key(1), at)
            with pytest.raises(LsnTooOld):
                await mgr.get_history(TENANT, TIMELINE, key(1), at)
        # A second pass at the same cutoff finds nothing more.
        again = await mgr.gc(TENANT, TIMELINE)
        assert (again.layers_removed, again.gc_cutoff_lsn) == (0, 400)
        metadata = json.loads((tl_dir(tmp_path) / "metadata").read_bytes())
        assert metadata["gc_cutoff_lsn"] == 400

    # After a restart the cutoff has not gone back and the reads are the same.
    async with manager(engine_kind, tmp_path, cfg(horizon=100)) as mgr:
        assert timeline_status(mgr)["gc_cutoff_lsn"] == 400
        with pytest.raises(LsnTooOld):
            await mgr.get(TENANT, TIMELINE, key(1), 399)
        for i in range(30):
            assert await mgr.get(TENANT, TIMELINE, key(i), 400) == model.get(key(i), 400)
            assert await mgr.get(TENANT, TIMELINE, key(i), 500) == model.get(key(i), 500)
        # A larger horizon later never moves the cutoff back.
        await mgr.set_tenant_config(TENANT, {"gc_horizon": 10_000, "gc_period": "0s"})
        assert (await mgr.gc(TENANT, TIMELINE)).gc_cutoff_lsn == 400


async def test_gc_without_images_removes_nothing(engine_kind: str, tmp_path: Path) -> None:
    model = Model()
    async with manager(engine_kind, tmp_path, cfg(horizon=0, images=1000)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await ingest(mgr, model, range(1, 201))
        await mgr.flush(TENANT, TIMELINE)
        before = layer_files(tmp_path)
        r = await mgr.gc(TENANT, TIMELINE)
        assert (r.layers_removed, r.gc_cutoff_lsn) == (0, 200)
        assert layer_files(tmp_path) == before
        for i in range(30):
            assert await mgr.get(TENANT, TIMELINE, key(i), 200) == model.get(key(i), 200)


async def test_key_left_out_of_image_keeps_its_deltas(engine_kind: str, tmp_path: Path) -> None:
    """A key image creation could not materialise (a Postgres record) is not in the image,
    so a read of it walks below the image: GC must keep the deltas holding it."""
    a, b = key(1), key(2)
    async with manager(engine_kind, tmp_path, cfg(horizon=0, threshold=100, images=2)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await mgr.put(TENANT, TIMELINE, [(a, 1, image(b"a1")), (b, 1, image(b"b1"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [(a, 2, pg_rec(b"wal")), (b, 2, image(b"b2"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)  # image at 2 without ``a``
        await mgr.put(TENANT, TIMELINE, [(b, 3, image(b"b3"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [(b, 4, image(b"b4"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)  # image at 4 without ``a``
        assert timeline_status(mgr)["layers"]["image"] == 2
        h_before = await mgr.get_history(TENANT, TIMELINE, a, 4)
        r = await mgr.gc(TENANT, TIMELINE)
        assert r.gc_cutoff_lsn == 4
        # The name rule alone would remove both L0s below the image at 4 (and the older
        # image); the key check keeps what ``a`` needs.
        h_after = await mgr.get_history(TENANT, TIMELINE, a, 4)
        assert (h_after.image, h_after.image_lsn, h_after.records) == (
            h_before.image, h_before.image_lsn, h_before.records,
        )  # fmt: skip
        assert h_after.image == b"a1"
        with pytest.raises(RedoUnsupported):
            await mgr.get(TENANT, TIMELINE, a, 4)
        assert await mgr.get(TENANT, TIMELINE, b, 4) == b"b4"


async def test_background_gc_runs_every_period(engine_kind: str, tmp_path: Path) -> None:
    model = Model()
    async with manager(engine_kind, tmp_path, cfg(horizon=50)) as mgr:
        await mgr.create_tenant(TENANT, {"gc_horizon": 50, "gc_period": "100ms"})
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await ingest(mgr, model, range(1, 201))
        await mgr.flush(TENANT, TIMELINE)
        await wait_for_cutoff(mgr, 150, timeout=20)


async def test_a_shorter_gc_period_applies_at_once(engine_kind: str, tmp_path: Path) -> None:
    """``gc_period`` from 1h to 100ms: the background pass does not first wait out the hour."""
    model = Model()
    async with manager(engine_kind, tmp_path, cfg(horizon=50)) as mgr:
        await mgr.create_tenant(TENANT, {"gc_horizon": 50, "gc_period": "1h"})
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await ingest(mgr, model, range(1, 101))
        await mgr.flush(TENANT, TIMELINE)
        await trio.sleep(1.2)
        assert timeline_status(mgr)["gc_cutoff_lsn"] == 0
        await mgr.set_tenant_config(TENANT, {"gc_horizon": 50, "gc_period": "100ms"})
        await wait_for_cutoff(mgr, 50, timeout=10)


async def test_stale_metadata_without_cutoff_still_loads(engine_kind: str, tmp_path: Path) -> None:
    """A data directory written before GC existed (no gc_cutoff_lsn in metadata) starts,
    with the cutoff at start_lsn."""
    async with manager(engine_kind, tmp_path, cfg()) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=5)
        await mgr.put(TENANT, TIMELINE, [(key(1), 6, image(b"x"))])
        await mgr.flush(TENANT, TIMELINE)
    path = tl_dir(tmp_path) / "metadata"
    data = json.loads(path.read_bytes())
    del data["gc_cutoff_lsn"]
    path.write_text(json.dumps(data))
    async with manager(engine_kind, tmp_path, cfg()) as mgr:
        assert timeline_status(mgr)["gc_cutoff_lsn"] == 5
        assert await mgr.get(TENANT, TIMELINE, key(1), 6) == b"x"
