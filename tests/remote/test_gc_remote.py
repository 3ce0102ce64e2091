"""GC with remote storage (SPEC sections 10 and 11): an index without the removed layers is
uploaded before their objects are deleted, the index carries ``latest_gc_cutoff_lsn``, and a
pageserver attaching the tenant after the disk is lost keeps the cutoff."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from pageserver.config import RemoteStorageConfig
from pageserver.errors import LsnTooOld, StaleGeneration
from pageserver.layers.key import Lsn
from pageserver.remote.local_fs import LocalPathStorage
from tests.helpers.tenant import TENANT, TIMELINE, Model, manager
from tests.remote.conftest import listing
from tests.remote.test_attach import ingest, rconfig, wait_remote
from tests.remote.test_upload_queue import RecordingStorage, check_ordering

PREFIX = f"tenants/{TENANT}/timelines/{TIMELINE}/"


def gc_config(remote: RemoteStorageConfig, horizon: int):  # type: ignore[no-untyped-def]
    cfg = rconfig(remote)
    return dataclasses.replace(
        cfg,
        tenant_config=dataclasses.replace(
            cfg.tenant_config, gc_horizon=horizon, gc_period=0.0, image_creation_threshold=2
        ),
    )


def read_index(remote: RemoteStorageConfig, seaweed: object, gen: int) -> dict[str, object]:
    key = f"{PREFIX}index_part.json-{gen:08x}"
    if remote.local_path is not None:
        return json.loads((Path(remote.local_path) / key).read_bytes())  # type: ignore[no-any-return]
    return json.loads(seaweed.read(f"{remote.prefix_in_bucket}/{key}"))  # type: ignore[attr-defined,no-any-return]


async def build(mgr, model: Model, rng: random.Random) -> int:  # type: ignore[no-untyped-def]
    """Rounds of ingest, flush and compaction: L1s and several images."""
    lsn = 1
    for _ in range(8):
        lsn = await ingest(mgr, model, lsn, 40, rng)
        await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)
    return lsn


async def test_gc_uploads_the_index_before_deleting_and_attach_keeps_the_cutoff(
    engine_kind: str, tmp_path: Path, remote_conf: RemoteStorageConfig, request: pytest.FixtureRequest
) -> None:
    seaweed = request.getfixturevalue("seaweedfs") if remote_conf.bucket_name is not None else None
    cfg = gc_config(remote_conf, horizon=40)
    rng = random.Random(3)
    model = Model()
    async with manager(engine_kind, tmp_path / "a", cfg) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await build(a, model, rng)
        dcl = await a.flush(TENANT, TIMELINE)
        await wait_remote(a, dcl)
        client = a.timeline(TENANT, TIMELINE).remote
        # Compaction's deletions come after its index: wait for them too.
        assert client is not None and await client.wait_drained()
        before = listing(remote_conf, seaweed)
        r = await a.gc(TENANT, TIMELINE)
        cutoff = r.gc_cutoff_lsn
        assert cutoff == dcl - 40 and r.layers_removed > 0
        assert await client.wait_drained()
        after = listing(remote_conf, seaweed)
    index = read_index(remote_conf, seaweed, 1)
    meta = index["metadata_bytes"]
    assert isinstance(meta, dict) and meta["latest_gc_cutoff_lsn"] == str(Lsn(cutoff))
    layers = index["layer_metadata"]
    assert isinstance(layers, dict)
    # Every layer the index names is in the bucket with its size; the removed ones are gone.
    for name, m in layers.items():
        assert after[f"{PREFIX}{name}-{m['generation']:08x}"] == m["file_size"]
    gone = {k for k in before if k.startswith(PREFIX) and "index_part" not in k} - set(after)
    assert len(gone) == r.layers_removed

    # Lose the disk: a fresh pageserver attaches and keeps the cutoff.
    async with manager(engine_kind, tmp_path / "b", cfg) as b:
        await b.attach_tenant(TENANT)
        st = b.status(TENANT)[0]["timelines"][0]
        assert st["gc_cutoff_lsn"] == cutoff
        with pytest.raises(LsnTooOld):
            await b.get(TENANT, TIMELINE, next(iter(model.history)), cutoff - 1)
        for k in model.history:
            for at in (cutoff, (cutoff + dcl) // 2, dcl):
                assert await b.get(TENANT, TIMELINE, k, at) == model.get(k, at), (k.hex(), at)


async def test_gc_deletions_follow_the_upload_order(engine_kind: str, tmp_path: Path) -> None:
    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    rng = random.Random(5)
    model = Model()
    async with manager(engine_kind, tmp_path / "d", gc_config(remote, horizon=20)) as mgr:
        rec = RecordingStorage(LocalPathStorage(str(tmp_path / "remote")))
        mgr.remote_storage = rec
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        await build(mgr, model, rng)
        dcl = await mgr.flush(TENANT, TIMELINE)
        await wait_remote(mgr, dcl)
        client = mgr.timeline(TENANT, TIMELINE).remote
        assert client is not None and await client.wait_drained()
        _, deletions_before = check_ordering(rec.ops)
        r = await mgr.gc(TENANT, TIMELINE)
        assert r.layers_removed > 0
        assert await client.wait_drained()
        # check_ordering fails if a deletion came before an index without the object.
        _, deletions = check_ordering(rec.ops)
        assert deletions - deletions_before == r.layers_removed


async def test_gc_on_a_stale_attachment_deletes_nothing(engine_kind: str, tmp_path: Path) -> None:
    """A newer generation exists elsewhere: GC is refused (fence, never delete)."""
    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    rng = random.Random(9)
    model = Model()
    async with manager(engine_kind, tmp_path / "d", gc_config(remote, horizon=10)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        await build(mgr, model, rng)
        tl = mgr.timeline(TENANT, TIMELINE)
        files = sorted(p.name for p in Path(tl.dir).iterdir())
        assert tl.remote is not None
        tl.remote.tenant.mark_stale(tl.remote.generation + 1)
        with pytest.raises(StaleGeneration):
            await tl.gc()
        assert sorted(p.name for p in Path(tl.dir).iterdir()) == files


async def test_read_starting_while_gc_waits_never_needs_a_doomed_download(
    engine_kind: str, tmp_path: Path
) -> None:
    """GC waits for an older read; meanwhile eviction runs and a new read walks down into a
    layer GC is about to remove. The doomed layers stay pinned (resident) until they leave
    the layer map, so the new read never has to download one whose object GC deletes
    (found in review: it failed with "no index names it")."""
    import trio

    from pageserver.config import PageserverConfig, TenantConfig
    from tests.helpers.tenant import image, key

    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    cfg = PageserverConfig(
        no_sync=True, remote_storage=remote,
        tenant_config=TenantConfig(
            checkpoint_distance=1 << 20, compaction_threshold=100, image_creation_threshold=2,
            compaction_period=0.0, gc_horizon=0, gc_period=0.0,
        ),
    )  # fmt: skip
    a, b, missing = key(1), key(2), key(3)
    async with manager(engine_kind, tmp_path / "d", cfg) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        for lsn in (1, 2):
            await mgr.put(TENANT, TIMELINE, [(a, lsn, image(b"a%d" % lsn)), (b, lsn, image(b"b"))])
            await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)  # an image at 2 over the L0s [1,2) [2,3)
        await mgr.put(TENANT, TIMELINE, [(a, 3, image(b"a3"))])
        await mgr.flush(TENANT, TIMELINE)
        tl = mgr.timeline(TENANT, TIMELINE)
        assert tl.remote is not None and await tl.remote.wait_drained()
        top = next(lay for lay in tl.layer_map.layers if lay.is_delta and lay.lsn_start == 3)
        entered, release = trio.Event(), trio.Event()
        orig_delta = top.delta

        async def paused(ctx: object) -> object:
            entered.set()
            await release.wait()
            return await orig_delta(ctx)  # type: ignore[arg-type]

        top.delta = paused  # type: ignore[assignment,method-assign]
        gc_done = trio.Event()
        downloads: list[str] = []
        orig_dl = tl.layer_map.downloader
        assert orig_dl is not None

        async def slow_download(hl: object) -> None:
            downloads.append(str(hl.name))  # type: ignore[attr-defined]
            if hl.lsn_start == 1:  # type: ignore[attr-defined]
                with trio.move_on_after(3):
                    await gc_done.wait()  # racing GC's index upload and deletion
            await orig_dl(hl)  # type: ignore[arg-type]

        res: dict[str, object] = {}
        async with trio.open_nursery() as n:

            async def old_read() -> None:
                res["old"] = await mgr.get(TENANT, TIMELINE, a, 3)

            async def do_gc() -> None:
                res["gc"] = await mgr.gc(TENANT, TIMELINE)
                assert tl.remote is not None
                await tl.remote.wait_drained()
                gc_done.set()

            async def new_read() -> None:
                res["new"] = await mgr.get(TENANT, TIMELINE, missing, 3)

            n.start_soon(old_read)
            with trio.fail_after(10):
                await entered.wait()
            top.delta = orig_delta  # type: ignore[method-assign]
            n.start_soon(do_gc)
            await trio.sleep(0.3)  # GC has planned and waits for old_read
            assert "gc" not in res
            await mgr._evict_down_to(0)
            tl.layer_map.downloader = slow_download
            n.start_soon(new_read)
            await trio.sleep(0.3)
            release.set()
        assert res["old"] == b"a3" and res["new"] is None
        assert res["gc"].layers_removed > 0  # type: ignore[attr-defined]
        assert not any("__0000000000000001-0000000000000002" in d for d in downloads), downloads
