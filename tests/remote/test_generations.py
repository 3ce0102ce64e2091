"""Generations and split brain (SPEC section 10, issue 13 (b)).

A holds a tenant; B attaches it (a newer generation) while A keeps running, ingesting and
compacting. A's next index upload or deletion finds B's claim: A becomes stale, refuses
writes with ``stale_generation`` and deletes nothing, so every object B's index names stays
in the bucket; B serves every read; a restarted A drops the tenant.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import trio

from pageserver.config import RemoteStorageConfig
from pageserver.errors import AlreadyExists, NoRemoteStorage, StaleGeneration
from pageserver.remote.generation import claim_generation, list_claims
from pageserver.remote.s3 import open_remote_storage
from tests.helpers.tenant import TENANT, TIMELINE, Model, config, manager
from tests.remote.conftest import listing
from tests.remote.test_attach import check_reads, ingest, rconfig, wait_remote

INDEX = f"tenants/{TENANT}/timelines/{TIMELINE}/index_part.json"


def read_index(conf: RemoteStorageConfig, seaweed: object, gen: int) -> dict[str, object]:
    key = f"tenants/{TENANT}/timelines/{TIMELINE}/index_part.json-{gen:08x}"
    if conf.local_path is not None:
        return json.loads((Path(conf.local_path) / key).read_bytes())  # type: ignore[no-any-return]
    return json.loads(seaweed.read(f"{conf.prefix_in_bucket}/{key}"))  # type: ignore[attr-defined,no-any-return]


def named_objects(index: dict[str, object]) -> dict[str, int]:
    lm = index["layer_metadata"]
    assert isinstance(lm, dict)
    return {
        f"tenants/{TENANT}/timelines/{TIMELINE}/{name}-{meta['generation']:08x}": meta["file_size"]
        for name, meta in lm.items()
    }


@pytest.mark.parametrize("same_node_id", [False, True], ids=["other-node", "cloned-data-dir"])
async def test_split_brain_never_destroys_the_new_holders_data(
    engine_kind: str,
    tmp_path: Path,
    remote_conf: RemoteStorageConfig,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    same_node_id: bool,
) -> None:
    """``cloned-data-dir``: B starts from a copy of A's identity (its ``node_id`` file, as
    a restored snapshot or a cloned VM has): B's claim names A's node id, and A must be
    fenced all the same."""
    seaweed = request.getfixturevalue("seaweedfs") if remote_conf.bucket_name else None
    cfg = rconfig(remote_conf)
    rng = random.Random(3)
    model = Model()
    async with manager(engine_kind, tmp_path / "a", cfg) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE)
        lsn = 1
        for _ in range(4):  # four L0s (compaction_threshold is 3; compaction runs on demand)
            lsn = await ingest(a, model, lsn, 40, rng)
            await a.flush(TENANT, TIMELINE)
        dcl_a = await a.flush(TENANT, TIMELINE)
        await wait_remote(a, dcl_a)
        assert a.status(TENANT)[0]["generation"] == 1

        if same_node_id:
            (tmp_path / "b").mkdir()
            (tmp_path / "b" / "node_id").write_bytes((tmp_path / "a" / "node_id").read_bytes())
        async with manager(engine_kind, tmp_path / "b", cfg) as b:
            assert b.node_id == a.node_id if same_node_id else b.node_id != a.node_id
            gen_b, _ = await b.attach_tenant(TENANT)
            assert gen_b == 2
            with trio.fail_after(20):
                while f"{INDEX}-00000002" not in listing(remote_conf, seaweed):
                    await trio.sleep(0.05)
            index_b = read_index(remote_conf, seaweed, 2)
            protected = named_objects(index_b)
            assert protected

            capsys.readouterr()
            # A does not know yet: it ingests, flushes and compacts (which would delete the
            # L0s that B's index names).
            a_model = Model()
            a_model.history = {k: list(v) for k, v in model.history.items()}
            lsn_a = await ingest(a, a_model, lsn, 40, rng)
            await a.flush(TENANT, TIMELINE)
            result = await a.compact(TENANT, TIMELINE)
            assert result.layers_removed >= 3
            # A's next upload finds B's claim: A becomes stale, logs it and says so.
            with trio.fail_after(20):
                while True:
                    try:
                        await a.put(TENANT, TIMELINE, [])
                    except StaleGeneration as e:
                        assert "generation 2" in str(e)
                        break
                    await trio.sleep(0.05)
            err = capsys.readouterr().err
            assert "level='error' event='stale generation: a newer attachment exists" in err, err
            for op in (
                a.flush(TENANT, TIMELINE),
                a.compact(TENANT, TIMELINE),
                a.get(TENANT, TIMELINE, b"\0" * 18, 1),
            ):
                with pytest.raises(StaleGeneration):
                    await op
            assert a.tenants[next(iter(a.tenants))].remote.stale  # type: ignore[union-attr]
            assert a.tenants[next(iter(a.tenants))].timelines  # still held (not served)
            await trio.sleep(0.5)  # give a wrong deletion every chance to happen
            objs = listing(remote_conf, seaweed)
            for key, size in protected.items():
                assert objs.get(key) == size, f"{key} named by B's index was deleted"
            # A never uploaded an index after B's claim.
            assert read_index(remote_conf, seaweed, 1)["disk_consistent_lsn"] == f"0/{dcl_a:X}"

            # B serves every read (of its history: A's records after the attach are not B's).
            await check_reads(b, model, dcl_a, random.Random(5), n=300)
            lsn_b = await ingest(b, model, dcl_a + 1, 30, rng)
            await b.flush(TENANT, TIMELINE)
            await b.compact(TENANT, TIMELINE)
            await wait_remote(b, lsn_b - 1)
            # The flush's index already covers lsn_b - 1; the compaction's uploads and
            # deletions may still run: the bucket is checked once B's queue is idle.
            tl_b = b.timeline(TENANT, TIMELINE)
            with trio.fail_after(20):
                assert tl_b.remote is not None and await tl_b.remote.wait_drained()
            await check_reads(b, model, lsn_b - 1, random.Random(6), n=300)
            index_b = read_index(remote_conf, seaweed, 2)
            objs = listing(remote_conf, seaweed)
            for key, size in named_objects(index_b).items():
                assert objs.get(key) == size
            # SPEC 10: *every* uploaded index names only objects in the bucket. B's
            # compaction deleted L0s that A's index (generation 1) names: that index went
            # first, and only B's is left.
            indexes = sorted(k for k in objs if k.startswith(INDEX))
            assert indexes == [f"{INDEX}-00000002"], indexes
            # An older generation's index that lands late (a PUT that A started before
            # B's claim, still in flight) goes in B's next round of deletions too.
            await open_remote_storage(remote_conf).put(
                f"{INDEX}-00000001", json.dumps(index_b).encode()
            )
            lsn_b = await ingest(b, model, lsn_b, 10, rng)
            for _ in range(3):
                lsn_b = await ingest(b, model, lsn_b, 10, rng)
                await b.flush(TENANT, TIMELINE)
            assert (await b.compact(TENANT, TIMELINE)).layers_removed
            with trio.fail_after(20):
                assert await tl_b.remote.wait_drained()
            indexes = sorted(k for k in listing(remote_conf, seaweed) if k.startswith(INDEX))
            assert indexes == [f"{INDEX}-00000002"], indexes
            _ = lsn_a

    if same_node_id:
        # A restart cannot tell a copy's claim from its own whose reply was lost (both name
        # this node id): it claims anew, and B would be fenced in turn.
        return
    # A restarts: B's claim is newer, so A drops its local copy and no longer serves it.
    async with manager(engine_kind, tmp_path / "a", cfg) as a2:
        assert a2.status() == []
        assert not (tmp_path / "a" / "tenants" / TENANT).exists()
    storage = open_remote_storage(remote_conf)
    assert await list_claims(storage, TENANT, deadline=None) == [1, 2]


async def test_restart_claims_a_new_generation_and_tenant_create_needs_a_new_tenant(
    tmp_path: Path,
) -> None:
    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    cfg = rconfig(remote)
    async with manager("std-fs", tmp_path / "a", cfg) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE)
    async with manager("std-fs", tmp_path / "a", cfg) as a:
        assert a.status()[0]["generation"] == 2
        await wait_remote(a, 0)
    async with manager("std-fs", tmp_path / "b", cfg) as b:
        with pytest.raises(AlreadyExists):
            await b.create_tenant(TENANT)
        gen, tls = await b.attach_tenant(TENANT)
        assert (gen, tls) == (3, [TIMELINE])
        assert await b.attach_tenant(TENANT) == (3, [TIMELINE])  # idempotent
    # Claims are conditional creates: two claimants never share a number.
    storage = open_remote_storage(remote)
    gens = []

    async def claim(node: str) -> None:
        gens.append(await claim_generation(storage, TENANT, node, deadline=None))

    async with trio.open_nursery() as n:
        for i in range(6):
            n.start_soon(claim, f"node{i}")
    assert sorted(gens) == [4, 5, 6, 7, 8, 9]
    # Also claimants of one node_id (copies of one data directory) claiming at once: the
    # node_id in the claim cannot tell them apart, each call's own nonce does.
    gens.clear()
    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(claim, "same-node")
    assert sorted(gens) == [10, 11, 12, 13]


async def test_attach_without_remote_storage_is_no_remote_storage(tmp_path: Path) -> None:
    async with manager("std-fs", tmp_path, config()) as mgr:
        with pytest.raises(NoRemoteStorage):
            await mgr.attach_tenant(TENANT)
        await mgr.create_tenant(TENANT)
        with pytest.raises(NoRemoteStorage):
            await mgr.detach_tenant(TENANT)
        st = mgr.status()[0]
        assert st["generation"] is None


async def test_a_claim_whose_reply_was_lost_is_recognised_as_ours(tmp_path: Path) -> None:
    """The conditional create succeeds but its reply is lost (a transient error): the
    retried create finds the object, and its nonce says it is this call's own claim."""
    from pageserver.remote.local_fs import LocalPathStorage

    class LostReply(LocalPathStorage):
        lost = 0

        async def create(self, key: str, data: bytes) -> None:
            await super().create(key, data)
            if not self.lost:
                self.lost += 1
                raise ConnectionResetError("the reply was lost")

    storage = LostReply(str(tmp_path / "remote"))
    assert await claim_generation(storage, TENANT, "node", deadline=None) == 1
    assert storage.lost == 1
    assert await list_claims(storage, TENANT, deadline=None) == [1]
