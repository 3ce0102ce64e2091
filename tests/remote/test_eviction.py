"""Eviction (SPEC section 10, issue 13 (d)): with ``max_resident_layer_bytes`` the local
layer bytes stay under the limit (plus one layer) during a read workload that keeps
downloading evicted layers again, and every read is correct."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest
import trio

from pageserver import metrics
from pageserver.config import RemoteStorageConfig
from tests.helpers.tenant import TENANT, TIMELINE, Model, manager
from tests.remote.test_attach import check_reads, ingest, rconfig, wait_remote


def local_layer_bytes(tl_dir: Path) -> int:
    total = 0
    for p in tl_dir.iterdir():
        if p.name.startswith("0") and "___temp" not in p.name:
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # evicted meanwhile
                pass
    return total


@pytest.mark.parametrize(
    "engine_kind,remote_conf", [("std-fs", "local_path"), ("trio-uring", "local_path"), ("std-fs", "s3")],
    indirect=True,
)  # fmt: skip
async def test_eviction_keeps_resident_bytes_under_the_limit(
    engine_kind: str, tmp_path: Path, remote_conf: RemoteStorageConfig
) -> None:
    rng = random.Random(9)
    model = Model()
    data = tmp_path / "d"
    tl_dir = data / "tenants" / TENANT / "timelines" / TIMELINE
    cfg = rconfig(remote_conf)
    # First without a limit: ingest a dozen layers and upload them.
    async with manager(engine_kind, data, cfg) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        lsn = 1
        for _ in range(12):
            lsn = await ingest(mgr, model, lsn, 25, rng)
            await mgr.flush(TENANT, TIMELINE)
        dcl = await mgr.flush(TENANT, TIMELINE)
        await wait_remote(mgr, dcl)
        sizes = [hl.file_size for hl in mgr.timeline(TENANT, TIMELINE).layer_map.layers]
    assert len(sizes) >= 12
    largest = max(sizes)
    limit = sum(sorted(sizes)[:4])  # room for about four of them
    cfg = dataclasses.replace(cfg, max_resident_layer_bytes=limit)
    async with manager(engine_kind, data, cfg) as mgr:
        tl = mgr.timeline(TENANT, TIMELINE)
        with trio.fail_after(20):
            while local_layer_bytes(tl_dir) > limit:
                await trio.sleep(0.05)
        peak = 0
        done = False
        evictions0 = metrics.LAYER_EVICTIONS._value.get()
        downloaded0 = metrics.REMOTE_DOWNLOAD_BYTES._value.get()

        async def watch() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, local_layer_bytes(tl_dir))
                st = mgr.status(TENANT)[0]["timelines"][0]["layers"]
                assert st["resident_bytes"] <= limit + largest
                await trio.sleep(0.002)

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            await check_reads(mgr, model, dcl, random.Random(4), n=400)
            done = True
        st = mgr.status(TENANT)[0]["timelines"][0]["layers"]
        assert st["remote_only"] > 0
        assert peak <= limit + largest, (peak, limit, largest)
        touched = sum(1 for hl in tl.layer_map.layers if hl.last_read)
        assert touched > 4  # the workload touched more layers than fit...
        # ... so it downloaded evicted layers again, and evicted others to make room.
        assert metrics.REMOTE_DOWNLOAD_BYTES._value.get() - downloaded0 > limit
        assert metrics.LAYER_EVICTIONS._value.get() - evictions0 > 4
    assert local_layer_bytes(tl_dir) <= limit + largest
    assert not [p for p in os.listdir(tl_dir) if p.endswith("___temp")]
