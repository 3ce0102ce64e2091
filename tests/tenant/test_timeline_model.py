"""Model-based test: random puts, flushes, rolls and restarts against a dict model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.tenant import TENANT, TIMELINE, Model, config, image, key, manager, trec


@settings(max_examples=15, deadline=None)
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
        ),
    )
    lsn = 10
    dcl = 10
    nkeys = data.draw(st.integers(2, 12), "nkeys")
    async with manager(engine_kind, data_dir, cfg) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=10)
    restarts = data.draw(st.integers(1, 3), "restarts")
    for _round in range(restarts):
        crash = data.draw(st.booleans(), "crash")
        async with manager(engine_kind, data_dir, cfg, flush_on_exit=not crash) as mgr:
            st_ = mgr.status()[0]["timelines"][0]
            # Background flushes of rolled layers may have made more durable than the
            # last explicit flush; never less.
            assert dcl <= st_["disk_consistent_lsn"] <= lsn
            dcl = st_["disk_consistent_lsn"]
            assert st_["last_record_lsn"] == dcl
            # After a restart, everything at or below dcl is there, nothing above it.
            model.truncate_above(dcl)
            lsn = dcl
            for k in range(nkeys):
                assert await mgr.get(TENANT, TIMELINE, key(k), dcl) == model.get(key(k), dcl)
            steps = data.draw(st.integers(1, 12), "steps")
            for _ in range(steps):
                action = data.draw(st.sampled_from(["put", "put", "put", "flush", "get", "compact"]))
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
                else:
                    at = 10 + data.draw(st.integers(0, 1000)) * (lsn - 10) // 1000
                    for k in range(nkeys):
                        assert await mgr.get(TENANT, TIMELINE, key(k), at) == model.get(key(k), at), (k, at)
            for at in sorted({10, dcl, lsn, (dcl + lsn) // 2}):
                for k in range(nkeys):
                    assert await mgr.get(TENANT, TIMELINE, key(k), at) == model.get(key(k), at), (k, at)
            # A graceful stop flushes what is left; a "crash" keeps only what was durable.
            if not crash:
                dcl = lsn
    async with manager(engine_kind, data_dir, cfg) as mgr:
        final_dcl = mgr.status()[0]["timelines"][0]["disk_consistent_lsn"]
        assert dcl <= final_dcl <= lsn
        dcl = final_dcl
        model.truncate_above(dcl)
        lsn = dcl
        for at in range(10, lsn + 1, max(1, (lsn - 10) // 10)):
            for k in range(nkeys):
                assert await mgr.get(TENANT, TIMELINE, key(k), at) == model.get(key(k), at), (k, at)
