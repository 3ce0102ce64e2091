"""A large ``put`` is applied in steps (cut at LSN boundaries), so other tasks run between
them; the records are all there afterwards, and one LSN is never split."""

from __future__ import annotations

import gc
from pathlib import Path

import trio

from pageserver.daemon import freeze_startup_heap
from pageserver.tenant import timeline as timeline_mod
from tests.helpers.tenant import TENANT, TIMELINE, image, key, manager


async def test_large_put_yields_between_steps(engine_kind: str, tmp_path: Path) -> None:
    n = 8 * timeline_mod.PUT_STEP_RECORDS
    # Two records per LSN: a step may only end where the LSN changes.
    recs = [(key(i % 5000), 100 + i // 2, image(b"v%d" % i)) for i in range(n)]
    async with manager(engine_kind, tmp_path) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        seen: list[int] = []
        done = False

        async def watch() -> None:
            tl = mgr.timeline(TENANT, TIMELINE)
            while not done:
                lsn = tl.last_record_lsn
                if lsn >= 100 and lsn not in seen:
                    seen.append(lsn)
                    # Both records of that LSN were applied (the step ended at a boundary).
                    k, _lsn, v = recs[2 * (lsn - 100) + 1]
                    assert await mgr.get(TENANT, TIMELINE, k, lsn) == v[12:]
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(0)
            res = await mgr.put(TENANT, TIMELINE, recs)
            done = True
        assert res.last_record_lsn == 100 + (n - 1) // 2
        assert len([x for x in seen if x < res.last_record_lsn]) >= 2, seen
        for i in (0, 1, n // 3, n - 2, n - 1):
            k, lsn, v = recs[i]
            last_of_key = max(j for j in range(i, n, 5000) if recs[j][1] <= res.last_record_lsn)
            assert await mgr.get(TENANT, TIMELINE, k, res.last_record_lsn) == recs[last_of_key][2][12:]
            assert await mgr.get(TENANT, TIMELINE, k, lsn) == v[12:]


def test_freeze_startup_heap_moves_objects_to_the_permanent_generation() -> None:
    before = gc.get_freeze_count()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
