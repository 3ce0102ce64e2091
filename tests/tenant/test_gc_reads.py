"""GC against the read path (found in review): layouts and interleavings where a read at or
above the cutoff could walk into a layer GC removed. Real layer files, both engines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from pageserver.config import PageserverConfig, TenantConfig
from pageserver.errors import LsnTooOld
from pageserver.tenant import timeline as timeline_mod
from pageserver.tenant.layer_map import HistoricLayer
from tests.helpers.tenant import TENANT, TIMELINE, image, key, manager, pg_rec


def cfg(**kw: Any) -> PageserverConfig:
    base: dict[str, Any] = dict(
        checkpoint_distance=1 << 20, compaction_threshold=100, image_creation_threshold=2,
        compaction_period=3600.0, gc_horizon=0, gc_period=0.0,
    )  # fmt: skip
    base.update(kw)
    return PageserverConfig(no_sync=True, tenant_config=TenantConfig(**base))


async def put_flush(mgr: Any, lsn: int, recs: list[tuple[bytes, bytes]]) -> None:
    await mgr.put(TENANT, TIMELINE, [(k, lsn, v) for k, v in recs])
    await mgr.flush(TENANT, TIMELINE)


def pause_reads_of(layer: HistoricLayer) -> tuple[trio.Event, trio.Event]:
    """Make the next read that opens ``layer`` wait (inside the walk) until released."""
    entered, release = trio.Event(), trio.Event()
    orig = layer.delta

    async def paused(ctx: Any) -> Any:
        entered.set()
        await release.wait()
        return await orig(ctx)

    layer.delta = paused  # type: ignore[method-assign]
    return entered, release


async def test_l1_across_an_image_reads_down_to_the_image(engine_kind: str, tmp_path: Path) -> None:
    """An L1 merged from L0s on both sides of an image outranks the image in the search;
    the read takes from it only the records above the image and goes on at the image, so
    GC may remove what lies below the image."""
    a, b = key(2), key(1)
    async with manager(engine_kind, tmp_path, cfg(checkpoint_distance=3000, compaction_threshold=4, gc_horizon=1)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await put_flush(mgr, 1, [(b, image(b"b1")), (a, image(b"a1"))])
        for lsn in (2, 3, 4):
            await put_flush(mgr, lsn, [(b, image(b"b%d" % lsn))])
        await mgr.compact(TENANT, TIMELINE)  # L1 [1,5), image @4
        for lsn in (5, 6):
            await put_flush(mgr, lsn, [(b, image(b"b%d" % lsn))])
        await mgr.compact(TENANT, TIMELINE)  # image @6 above the L0s 5, 6
        for lsn in (7, 8):
            await put_flush(mgr, lsn, [(b, image(b"b%d" % lsn))])
        await mgr.compact(TENANT, TIMELINE)  # L1 [5,9) across the image @6; image @8
        tl = mgr.timeline(TENANT, TIMELINE)
        spans = [
            lay for lay in tl.layer_map.layers if lay.is_delta and lay.lsn_start <= 6 < lay.lsn_end - 1
        ]
        assert spans, "the layout under test: an L1 across the image at 6"
        before = {(k, at): await mgr.get(TENANT, TIMELINE, k, at) for k in (a, b) for at in (7, 8)}
        h_before = await mgr.get_history(TENANT, TIMELINE, a, 7)
        r = await mgr.gc(TENANT, TIMELINE)
        assert r.gc_cutoff_lsn == 7 and r.layers_removed > 0
        after = {(k, at): await mgr.get(TENANT, TIMELINE, k, at) for k in (a, b) for at in (7, 8)}
        assert after == before and before[(a, 7)] == b"a1"
        h_after = await mgr.get_history(TENANT, TIMELINE, a, 7)
        assert (h_after.image, h_after.image_lsn) == (b"a1", 6) == (h_before.image, h_before.image_lsn)


async def test_read_in_flight_above_cutoff_across_compaction_and_gc(
    engine_kind: str, tmp_path: Path
) -> None:
    """A read already below where compaction then writes an image never sees that image:
    GC waits for it before removing the layers under the image."""
    a, b = key(1), key(2)
    async with manager(engine_kind, tmp_path, cfg()) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await put_flush(mgr, 1, [(a, image(b"a1"))])
        await put_flush(mgr, 2, [(b, image(b"b2"))])
        await put_flush(mgr, 3, [(b, image(b"b3"))])
        tl = mgr.timeline(TENANT, TIMELINE)
        entered, release = pause_reads_of(next(lay for lay in tl.layer_map.layers if lay.lsn_start == 2))
        result: dict[str, Any] = {}

        async def read() -> None:
            result["v"] = await mgr.get(TENANT, TIMELINE, a, 3)

        async def gc() -> None:
            result["gc"] = await mgr.gc(TENANT, TIMELINE)

        async with trio.open_nursery() as n:
            n.start_soon(read)
            with trio.fail_after(10):
                await entered.wait()  # the read is in the L0 [2,3); next it needs [1,2)
            await mgr.compact(TENANT, TIMELINE)  # an image at 3
            n.start_soon(gc)
            await trio.sleep(0.3)
            assert "gc" not in result, "GC must wait for the read that began before it"
            release.set()
        assert result["v"] == b"a1"
        assert result["gc"].layers_removed > 0
        assert await mgr.get(TENANT, TIMELINE, a, 3) == b"a1"


async def test_read_in_flight_below_the_new_cutoff(engine_kind: str, tmp_path: Path) -> None:
    """A read that passed its cutoff check before GC raised the cutoff past its LSN."""
    a, b = key(1), key(2)
    async with manager(engine_kind, tmp_path, cfg()) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await put_flush(mgr, 1, [(a, image(b"a1"))])
        await put_flush(mgr, 2, [(b, image(b"b2"))])
        await put_flush(mgr, 3, [(b, image(b"b3"))])
        await mgr.compact(TENANT, TIMELINE)  # image at 3
        await put_flush(mgr, 4, [(b, image(b"b4"))])
        tl = mgr.timeline(TENANT, TIMELINE)
        entered, release = pause_reads_of(next(lay for lay in tl.layer_map.layers if lay.lsn_start == 2))
        result: dict[str, Any] = {}

        async def read() -> None:
            result["v"] = await mgr.get(TENANT, TIMELINE, a, 2)

        async with trio.open_nursery() as n:
            n.start_soon(read)
            with trio.fail_after(10):
                await entered.wait()
            n.start_soon(lambda: mgr.gc(TENANT, TIMELINE))  # cutoff 4 > 2
            await trio.sleep(0.2)
            release.set()
        assert result["v"] == b"a1"
        with pytest.raises(LsnTooOld):
            await mgr.get(TENANT, TIMELINE, a, 2)
        assert await mgr.get(TENANT, TIMELINE, a, 4) == b"a1"


async def test_gc_gives_up_on_a_stuck_read_and_removes_next_time(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timeline_mod, "READ_DRAIN_TIMEOUT", 0.2)
    a, b = key(1), key(2)
    async with manager(engine_kind, tmp_path, cfg()) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        for lsn in (1, 2, 3):
            await put_flush(mgr, lsn, [(a if lsn == 1 else b, image(b"v%d" % lsn))])
        await mgr.compact(TENANT, TIMELINE)
        tl = mgr.timeline(TENANT, TIMELINE)
        files = set(os.listdir(tl.dir))
        entered, release = pause_reads_of(next(lay for lay in tl.layer_map.layers if lay.lsn_start == 2))
        result: dict[str, Any] = {}

        async def read() -> None:  # at 2, below the image at 3: it walks the L0 [2,3)
            result["v"] = await mgr.get(TENANT, TIMELINE, a, 2)

        async with trio.open_nursery() as n:
            n.start_soon(read)
            with trio.fail_after(10):
                await entered.wait()
            stuck = await mgr.gc(TENANT, TIMELINE)
            assert stuck.layers_removed == 0 and set(os.listdir(tl.dir)) == files
            release.set()
        assert result["v"] == b"v1"
        again = await mgr.gc(TENANT, TIMELINE)
        assert again.layers_removed > 0
        assert await mgr.get(TENANT, TIMELINE, a, 3) == b"v1"


async def test_restart_keeps_an_l1_gc_kept_from_a_thinned_merge(engine_kind: str, tmp_path: Path) -> None:
    """GC removes the L1 files of a merge one by one (keeping one that holds a key no image
    has); at restart the thinned group is not mistaken for an interrupted merge."""
    a = key(0)

    def big(lsn: int) -> list[tuple[bytes, bytes]]:
        return [(key(i), image(bytes([lsn]) * 500)) for i in range(1, 20)]

    c = cfg(checkpoint_distance=3000, compaction_threshold=2)
    async with manager(engine_kind, tmp_path, c) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await put_flush(mgr, 1, [(a, image(b"a1")), *big(1)])
        await put_flush(mgr, 2, [(a, pg_rec(b"wal")), *big(2)])
        await mgr.compact(TENANT, TIMELINE)  # L1 files over [1,3); image @2 without a
        await put_flush(mgr, 3, big(3))
        await put_flush(mgr, 4, big(4))
        await mgr.compact(TENANT, TIMELINE)  # L1 files over [3,5); image @4 without a
        h0 = await mgr.get_history(TENANT, TIMELINE, a, 4)
        r = await mgr.gc(TENANT, TIMELINE)
        assert r.layers_removed > 0
        kept = sorted(str(lay.name) for lay in mgr.timeline(TENANT, TIMELINE).layer_map.layers)
        assert await mgr.get_history(TENANT, TIMELINE, a, 4) == h0
    async with manager(engine_kind, tmp_path, c) as mgr:
        assert sorted(str(lay.name) for lay in mgr.timeline(TENANT, TIMELINE).layer_map.layers) == kept
        assert await mgr.get_history(TENANT, TIMELINE, a, 4) == h0
        assert h0.image == b"a1"


async def test_cutoff_never_above_disk_consistent_lsn(engine_kind: str, tmp_path: Path) -> None:
    """Records received but not flushed: the cutoff stops at disk_consistent_lsn, so after
    a restart (last_record_lsn back at disk_consistent_lsn) reads still work."""
    k = key(1)
    async with manager(engine_kind, tmp_path, cfg(), flush_on_exit=False) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await put_flush(mgr, 5, [(k, image(b"x"))])
        await mgr.put(TENANT, TIMELINE, [(k, 9, image(b"y"))])
        r = await mgr.gc(TENANT, TIMELINE)
        assert r.gc_cutoff_lsn == 5
    async with manager(engine_kind, tmp_path, cfg()) as mgr:
        st = mgr.status()[0]["timelines"][0]
        assert (st["last_record_lsn"], st["gc_cutoff_lsn"]) == (5, 5)
        assert await mgr.get(TENANT, TIMELINE, k, 5) == b"x"
