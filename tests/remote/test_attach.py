"""Lose the disk (SPEC section 10): a timeline uploaded to remote storage is attached by a
fresh pageserver on an empty data directory, reads equal the model, ingest resumes."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import pytest
import trio

from pageserver.config import PageserverConfig, RemoteStorageConfig, TenantConfig
from pageserver.tenant.manager import TenantManager
from tests.helpers.tenant import TENANT, TIMELINE, Model, image, key, manager, trec
from tests.remote.conftest import listing


def rconfig(remote: RemoteStorageConfig, **kw: object) -> PageserverConfig:
    return PageserverConfig(
        no_sync=True,
        remote_storage=remote,
        tenant_config=TenantConfig(
            checkpoint_distance=64 * 1024, checkpoint_timeout=600.0, compaction_period=0.0,
            compaction_threshold=3,
        ),
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def wait_remote(mgr: TenantManager, lsn: int, timeout: float = 20.0) -> dict[str, object]:
    with trio.fail_after(timeout):
        while True:
            st = mgr.status(TENANT)[0]["timelines"][0]
            if st["remote_consistent_lsn"] is not None and st["remote_consistent_lsn"] >= lsn:
                return dict(st)
            await trio.sleep(0.02)


async def ingest(mgr: TenantManager, model: Model, first_lsn: int, n: int, rng: random.Random) -> int:
    lsn = first_lsn
    for _ in range(n):
        batch = []
        for i in rng.sample(range(200), rng.randint(1, 20)):
            k = key(i)
            if rng.random() < 0.7 or not model.history.get(k):
                v = image(rng.randbytes(rng.randint(1, 300)))
            else:
                v = trec(f"+{lsn}")
            batch.append((k, lsn, v))
            model.put(k, lsn, v)
        await mgr.put(TENANT, TIMELINE, batch)
        lsn += 1
    return lsn


async def check_reads(mgr: TenantManager, model: Model, upto: int, rng: random.Random, n: int = 300) -> None:
    keys = list(model.history)
    for _ in range(n):
        k = rng.choice(keys)
        lsn = rng.randint(1, upto)
        assert await mgr.get(TENANT, TIMELINE, k, lsn) == model.get(k, lsn), (k.hex(), lsn)


async def test_lose_the_disk_attach_elsewhere(
    engine_kind: str, tmp_path: Path, remote_conf: RemoteStorageConfig, request: object
) -> None:
    seaweed = None
    if remote_conf.bucket_name is not None:
        seaweed = request.getfixturevalue("seaweedfs")  # type: ignore[attr-defined]
    cfg = rconfig(remote_conf)
    rng = random.Random(7)
    model = Model()
    async with manager(engine_kind, tmp_path / "a", cfg, flush_on_exit=False) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE, start_lsn=0)
        lsn = await ingest(a, model, 1, 300, rng)
        dcl = await a.flush(TENANT, TIMELINE)
        await a.compact(TENANT, TIMELINE)
        st = await wait_remote(a, dcl)
        await check_reads(a, model, dcl, random.Random(1))
        # Records after the last upload: lost with the disk (never durable remotely).
        await ingest(a, model.__class__(), lsn, 5, rng)
        gen_a = a.status(TENANT)[0]["generation"]
        assert gen_a == 1
        layers_a = st["layers"]
    # What the bucket holds, seen by an independent client.
    objs = listing(remote_conf, seaweed)
    prefix = f"tenants/{TENANT}/timelines/{TIMELINE}/"
    assert f"tenants/{TENANT}/generations/00000001" in objs
    index_raw = (
        (Path(remote_conf.local_path) / prefix / "index_part.json-00000001").read_bytes()
        if remote_conf.local_path
        else seaweed.read(f"{remote_conf.prefix_in_bucket}/{prefix}index_part.json-00000001")  # type: ignore[union-attr]
    )
    index = json.loads(index_raw)
    assert index["version"] == 15
    assert index["disk_consistent_lsn"] == f"0/{dcl:X}"
    assert index["layer_metadata"]
    for name, meta in index["layer_metadata"].items():
        assert objs[f"{prefix}{name}-{meta['generation']:08x}"] == meta["file_size"]
    assert isinstance(layers_a, dict)

    # A fresh pageserver, another (empty) data directory.
    async with manager(engine_kind, tmp_path / "b", cfg) as b:
        t0 = trio.current_time()
        gen, timelines = await b.attach_tenant(TENANT)
        attach_s = trio.current_time() - t0
        assert gen == 2 and timelines == [TIMELINE]
        st = b.status(TENANT)[0]["timelines"][0]
        assert st["disk_consistent_lsn"] == dcl and st["last_record_lsn"] == dcl
        assert st["layers"]["resident_bytes"] == 0 and st["layers"]["remote_only"] > 0
        model.truncate_above(dcl)
        await check_reads(b, model, dcl, rng)
        assert b.status(TENANT)[0]["timelines"][0]["layers"]["resident_bytes"] > 0
        # Ingest resumes from disk_consistent_lsn.
        lsn2 = await ingest(b, model, dcl + 1, 50, rng)
        dcl2 = await b.flush(TENANT, TIMELINE)
        assert dcl2 == lsn2 - 1
        await check_reads(b, model, dcl2, rng)
        await wait_remote(b, dcl2)
    assert attach_s < 5.0
    assert f"{prefix}index_part.json-00000002" in listing(remote_conf, seaweed)
    _ = dataclasses


async def test_concurrent_reads_of_a_missing_layer_download_it_once(
    engine_kind: str, tmp_path: Path, monkeypatch: object
) -> None:
    from pageserver.remote.timeline_client import RemoteTimelineClient

    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    cfg = rconfig(remote)
    rng = random.Random(5)
    model = Model()
    async with manager(engine_kind, tmp_path / "a", cfg) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE)
        await ingest(a, model, 1, 30, rng)
        dcl = await a.flush(TENANT, TIMELINE)
        await wait_remote(a, dcl)
    calls: list[str] = []
    real = RemoteTimelineClient.download_layer

    async def counting(self: RemoteTimelineClient, name: str, final_path: str) -> None:
        calls.append(name)
        await real(self, name, final_path)

    monkeypatch.setattr(RemoteTimelineClient, "download_layer", counting)  # type: ignore[attr-defined]
    async with manager(engine_kind, tmp_path / "b", cfg) as b:
        await b.attach_tenant(TENANT)
        k = next(iter(model.history))
        results: list[bytes | None] = []

        async def read() -> None:
            results.append(await b.get(TENANT, TIMELINE, k, dcl))

        async with trio.open_nursery() as n:
            for _ in range(20):
                n.start_soon(read)
        assert results == [model.get(k, dcl)] * 20
        assert len(calls) == len(set(calls)) >= 1


async def test_a_read_cancelled_during_the_download_commit_leaves_the_layer_readable(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a reader that gives up while the download's rename/fsync runs used
    to leave a whole file under the final name that the layer map still called remote-only;
    every later read then failed with FileExistsError."""
    from pageserver.io import IoContext

    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    cfg = rconfig(remote)
    rng = random.Random(6)
    model = Model()
    async with manager(engine_kind, tmp_path / "a", cfg) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE)
        await ingest(a, model, 1, 30, rng)
        dcl = await a.flush(TENANT, TIMELINE)
        await wait_remote(a, dcl)
    real_fsync_dir = IoContext.fsync_dir
    slow = {"on": True}

    async def slow_fsync_dir(self: IoContext, path: str, **kw: bool) -> None:
        if slow["on"]:
            if trio.lowlevel.in_trio_task():
                await trio.sleep(0.5)
            else:  # a std-fs job's worker thread
                time.sleep(0.5)
        await real_fsync_dir(self, path, **kw)

    monkeypatch.setattr(IoContext, "fsync_dir", slow_fsync_dir)
    async with manager(engine_kind, tmp_path / "b", cfg) as b:
        await b.attach_tenant(TENANT)
        k = next(iter(model.history))
        with trio.move_on_after(0.2):
            await b.get(TENANT, TIMELINE, k, dcl)
        slow["on"] = False
        with trio.fail_after(20):
            assert await b.get(TENANT, TIMELINE, k, dcl) == model.get(k, dcl)


async def test_a_detach_that_times_out_leaves_the_tenant_taking_writes(
    engine_kind: str, tmp_path: Path, remote_conf: RemoteStorageConfig
) -> None:
    """A detach whose uploads do not finish in time fails with ``remote_unavailable``
    ("retry the detach"), and the tenant goes on as before: puts are refused only while
    the detach waits (they used to answer ``shutting_down`` until a restart or another
    detach), and a compaction asked for meanwhile runs only after it (one that ran
    during the wait queued uploads the detach's last wait, after the shutdown, could
    miss); retried once the store answers, the detach succeeds, and a fresh pageserver
    attaches every record."""
    from pageserver import failpoints
    from pageserver.errors import RemoteUnavailable, ShuttingDown

    # A 1 s timeout: the detach waits 3 s for the uploads; an index upload sleeps 4.5 s.
    cfg = rconfig(dataclasses.replace(remote_conf, timeout=1.0))
    rng = random.Random(11)
    model = Model()
    data = tmp_path / "a"
    async with manager(engine_kind, data, cfg) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE, start_lsn=0)
        lsn = 1
        for _ in range(3):  # three L0s: a compaction is due (compaction_threshold 3)
            lsn = await ingest(a, model, lsn, 15, rng)
            await wait_remote(a, await a.flush(TENANT, TIMELINE))
        lsn = await ingest(a, model, lsn, 20, rng)  # not uploaded yet
        failpoints.configure({"remote-before-index-upload": "sleep(4500)"})
        refused: list[str] = []
        events: list[str] = []

        async def put_meanwhile() -> None:
            await trio.sleep(0.5)  # the detach is waiting for the index upload
            try:
                await a.put(TENANT, TIMELINE, [(key(1), 10_000, image(b"late"))])
            except ShuttingDown as e:
                refused.append(str(e))

        async def compact_meanwhile() -> None:
            await trio.sleep(0.5)
            result = await a.compact(TENANT, TIMELINE)
            events.append(f"compacted {result.layers_removed}")

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(put_meanwhile)
                nursery.start_soon(compact_meanwhile)
                with pytest.raises(RemoteUnavailable, match="retry the detach"):
                    await a.detach_tenant(TENANT)
                events.append("detach failed")
        finally:
            failpoints.clear()
        assert refused and "detached" in refused[0]
        assert events[0] == "detach failed" and events[1] != "compacted 0", events
        assert (data / "tenants" / TENANT).exists() and a.status(TENANT)
        lsn = await ingest(a, model, lsn, 10, rng)  # writes are taken again
        dcl = await a.flush(TENANT, TIMELINE)
        assert dcl == lsn - 1
        await check_reads(a, model, dcl, random.Random(12), n=100)
        with trio.fail_after(30):
            await a.detach_tenant(TENANT)  # retried: the uploads finish now
        assert not (data / "tenants" / TENANT).exists() and a.status() == []
    async with manager(engine_kind, tmp_path / "b", cfg) as b:
        await b.attach_tenant(TENANT)
        await check_reads(b, model, dcl, random.Random(13), n=200)
