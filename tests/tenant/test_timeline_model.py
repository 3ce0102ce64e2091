"""Model-based test: random puts, flushes, rolls, compactions, GC passes and restarts
against a dict model.

GC (SPEC section 11) runs with a small ``gc_horizon`` at random points: after every step,
each read at or above the timeline's ``gc_cutoff_lsn`` equals the model and each read below
it answers ``lsn_too_old``; after a restart (graceful or a crash) the cutoff has not gone
back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pageserver.config import PageserverConfig, TenantConfig
from pageserver.errors import LsnTooOld
from pageserver.tenant.manager import TenantManager
from tests.helpers.tenant import TENANT, TIMELINE, Model, config, image, key, manager, trec


def timeline_status(mgr: TenantManager) -> dict:  # type: ignore[type-arg]
    return mgr.status()[0]["timelines"][0]  # type: ignore[no-any-return]


async def check_read(mgr: TenantManager, model: Model, k: int, at: int, cutoff: int) -> None:
    """A read at ``at``: the model's value at or above ``cutoff``, ``lsn_too_old`` below."""
    if at < cutoff:
        with pytest.raises(LsnTooOld):
            await mgr.get(TENANT, TIMELINE, key(k), at)
    else:
        assert await mgr.get(TENANT, TIMELINE, key(k), at) == model.get(key(k), at), (k, at, cutoff)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
async def test_model(engine_kind: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    data_dir = Path(tmp_path_factory.mktemp("model"))
    model = Model()
    # Small checkpoint_distance: layers roll every few records.
    base = config(checkpoint_distance=data.draw(st.sampled_from([40, 300, 5000]), "distance"))
    cfg = dataclasses.replace(
        base,
        tenant_config=dataclasses.replace(
            base.tenant_config,
            compaction_threshold=data.draw(st.sampled_from([2, 3, 5]), "compaction_threshold"),
            image_creation_threshold=data.draw(st.sampled_from([2, 3]), "image_threshold"),
            compaction_period=3600.0,
            # A horizon of a few LSNs (the steps below advance 0-3 LSNs per record): GC
            # moves the cutoff close behind last_record_lsn and removes layers below images.
            gc_horizon=data.draw(st.sampled_from([0, 3, 20, 60]), "gc_horizon"),
            gc_period=0.0,
        ),
    )
    lsn = 10
    dcl = 10
    cutoff = 10  # the highest gc_cutoff_lsn seen (start_lsn before any GC)
    nkeys = data.draw(st.integers(2, 12), "nkeys")

    async def read_all(mgr: TenantManager, at: int) -> None:
        for k in range(nkeys):
            await check_read(mgr, model, k, at, cutoff)

    async with manager(engine_kind, data_dir, cfg) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=10)
    restarts = data.draw(st.integers(1, 3), "restarts")
    for _round in range(restarts):
        crash = data.draw(st.booleans(), "crash")
        async with manager(engine_kind, data_dir, cfg, flush_on_exit=not crash) as mgr:
            st_ = timeline_status(mgr)
            # Background flushes of rolled layers may have made more durable than the
            # last explicit flush; never less.
            assert dcl <= st_["disk_consistent_lsn"] <= lsn
            dcl = st_["disk_consistent_lsn"]
            assert st_["last_record_lsn"] == dcl
            # The cutoff never goes back across a restart, crash or not (it is durable
            # before GC removes anything), and never lies above what is durable: after a
            # crash, the LSNs up to dcl are readable from the cutoff on.
            assert st_["gc_cutoff_lsn"] == cutoff <= dcl
            # After a restart, everything at or below dcl is there, nothing above it.
            model.truncate_above(dcl)
            lsn = dcl
            await read_all(mgr, dcl)
            if cutoff > 10:
                await read_all(mgr, cutoff - 1)  # lsn_too_old
            steps = data.draw(st.integers(1, 20), "steps")
            for _ in range(steps):
                action = data.draw(
                    st.sampled_from(["put", "put", "put", "put", "flush", "flush", "get", "compact", "compact", "gc", "gc"])
                )
                if action == "put":
                    batch: list[tuple[bytes, int, bytes]] = []
                    for _r in range(data.draw(st.integers(1, 8))):
                        lsn += data.draw(st.integers(0, 3)) if batch else data.draw(st.integers(1, 3))
                        kb = key(data.draw(st.integers(0, nkeys - 1)))
                        kind = data.draw(st.sampled_from(["image", "append", "init"]))
                        if kind == "image" or not model.history.get(kb):
                            v = image(data.draw(st.binary(max_size=40)))
                        elif kind == "init":
                            v = trec(data.draw(st.text("ab", max_size=5)), clear=True, will_init=True)
                        else:
                            v = trec(data.draw(st.text("xyz", max_size=5)))
                        batch.append((kb, lsn, v))
                    res = await mgr.put(TENANT, TIMELINE, batch)
                    assert res.skipped == 0
                    for kb, lsn_, v in batch:
                        model.put(kb, lsn_, v)
                    assert res.last_record_lsn == lsn
                elif action == "compact":
                    await mgr.compact(TENANT, TIMELINE)
                elif action == "flush":
                    dcl = await mgr.flush(TENANT, TIMELINE)
                    assert dcl == lsn
                elif action == "gc":
                    horizon = cfg.tenant_config.gc_horizon
                    # last_record_lsn - horizon, never back; never above what is durable
                    # (a background flush of rolled layers may make more durable meanwhile).
                    dcl_before = timeline_status(mgr)["disk_consistent_lsn"]
                    r = await mgr.gc(TENANT, TIMELINE)
                    want = max(cutoff, min(lsn - horizon, dcl_before))
                    assert want <= r.gc_cutoff_lsn <= max(cutoff, lsn - horizon), (r, cutoff, lsn, dcl_before)
                    assert r.gc_cutoff_lsn <= timeline_status(mgr)["disk_consistent_lsn"] or r.gc_cutoff_lsn == cutoff
                    cutoff = r.gc_cutoff_lsn
                    assert timeline_status(mgr)["gc_cutoff_lsn"] == cutoff
                    # Right at the cutoff (the lowest readable LSN) and just below it.
                    await read_all(mgr, cutoff)
                    if cutoff > 10:
                        await read_all(mgr, cutoff - 1)
                else:
                    at = 10 + data.draw(st.integers(0, 1000)) * (lsn - 10) // 1000
                    await read_all(mgr, at)
            for at in sorted({10, dcl, lsn, (dcl + lsn) // 2, cutoff}):
                if at <= lsn:
                    await read_all(mgr, at)
            # A graceful stop flushes what is left; a "crash" keeps only what was durable.
            if not crash:
                dcl = lsn
    async with manager(engine_kind, data_dir, cfg) as mgr:
        st_ = timeline_status(mgr)
        final_dcl = st_["disk_consistent_lsn"]
        assert dcl <= final_dcl <= lsn
        assert st_["gc_cutoff_lsn"] == cutoff
        dcl = final_dcl
        model.truncate_above(dcl)
        lsn = dcl
        for at in sorted({*range(10, lsn + 1, max(1, (lsn - 10) // 10)), cutoff}):
            if at <= lsn:
                await read_all(mgr, at)


async def test_l0_below_an_image_merged_later_keeps_what_reads_need(engine_kind: str, tmp_path: Path) -> None:
    """Found by the GC steps above: an image at LSN ``x`` made while an L0 holding records
    at ``x`` was still unmerged; GC then removed the L0 below the image, and the next L0
    merge made an L1 from ``x`` to above it. A read after that L1 went on *below* the L1's
    start, past the image, into the removed L0: ``a`` read back as absent at the cutoff.
    (A read takes from such an L1 only the records above the image, then the image.)"""
    a, b = key(1), key(2)
    cfg = PageserverConfig(
        no_sync=True,
        tenant_config=TenantConfig(
            checkpoint_distance=3000, compaction_threshold=3, image_creation_threshold=2,
            compaction_period=3600.0, gc_horizon=0, gc_period=0.0,
        ),
    )  # fmt: skip
    async with manager(engine_kind, tmp_path, cfg) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=10)
        await mgr.put(TENANT, TIMELINE, [(a, 11, image(b"a"))])
        await mgr.flush(TENANT, TIMELINE)  # L0 [11, 12)
        await mgr.put(TENANT, TIMELINE, [(b, 12, image(b"x"))])
        await mgr.flush(TENANT, TIMELINE)  # L0 [12, 13)
        await mgr.compact(TENANT, TIMELINE)  # two L0s: no merge; an image at 12
        layers = timeline_status(mgr)["layers"]
        assert (layers["l0"], layers["delta"], layers["image"]) == (2, 0, 1)
        await mgr.put(TENANT, TIMELINE, [(b, 13, image(b"y"))])
        await mgr.flush(TENANT, TIMELINE)  # L0 [13, 14)
        await mgr.gc(TENANT, TIMELINE)  # cutoff 13
        await mgr.put(TENANT, TIMELINE, [(a, 14, trec("b"))])
        await mgr.flush(TENANT, TIMELINE)  # L0 [14, 15)
        # Three L0s at least: merged into L1s over [12 or 11, 15), across the image at 12.
        await mgr.compact(TENANT, TIMELINE)
        assert timeline_status(mgr)["layers"]["l0"] == 0
        for at in (13, 14):
            assert await mgr.get(TENANT, TIMELINE, a, at) == (b"a" if at == 13 else b"ab"), at
            assert await mgr.get(TENANT, TIMELINE, b, at) == b"y"
        await mgr.gc(TENANT, TIMELINE)  # cutoff 14
        assert await mgr.get(TENANT, TIMELINE, a, 14) == b"ab"
        assert await mgr.get(TENANT, TIMELINE, b, 14) == b"y"
