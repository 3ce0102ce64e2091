"""Faults (SPEC section 10, issue 13 (c)): the object store goes away and comes back; a
download that fails or has the wrong size; SIGKILL before an index upload or a deletion."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pageserver.config import RemoteStorageConfig
from pageserver.errors import PageserverError, RemoteUnavailable
from pageserver.io import TEMP_SUFFIX
from pageserver.remote.index import IndexPart
from tests.helpers.seaweed import SeaweedFS
from tests.helpers.tenant import TENANT, TIMELINE, Model, manager
from tests.remote._crash_child import replay
from tests.remote.conftest import listing
from tests.remote.test_attach import check_reads, ingest, rconfig, wait_remote

REPO = Path(__file__).resolve().parents[2]
TL_PREFIX = f"tenants/{TENANT}/timelines/{TIMELINE}/"


def s3_conf(w: SeaweedFS, timeout: float = 2.0) -> RemoteStorageConfig:
    return RemoteStorageConfig(
        bucket_name=w.bucket, endpoint=w.endpoint, prefix_in_bucket="faults",
        concurrency_limit=8, timeout=timeout,
    )  # fmt: skip


def assert_index_consistent(objs: dict[str, int], raw: bytes) -> IndexPart:
    """Every layer the index names is in the bucket, under its generation, with its size."""
    index = IndexPart.decode(raw)
    for name, meta in index.layers.items():
        key = f"{TL_PREFIX}{name}-{meta.generation:08x}"
        assert objs.get(key) == meta.file_size, key
    return index


def final_names(tl_dir: Path) -> list[str]:
    return sorted(p.name for p in tl_dir.iterdir() if p.name.startswith("0"))


async def test_store_down_during_uploads_ingest_and_reads_go_on(
    engine_kind: str, tmp_path: Path, private_seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = private_seaweedfs
    for k, v in w.env.items():
        monkeypatch.setenv(k, v)
    conf = s3_conf(w)
    rng = random.Random(2)
    model = Model()
    async with manager(engine_kind, tmp_path / "d", rconfig(conf)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        lsn = await ingest(mgr, model, 1, 40, rng)
        dcl0 = await mgr.flush(TENANT, TIMELINE)
        await wait_remote(mgr, dcl0)
        w.kill()
        # The store is gone: ingest, flushes, compaction and reads go on.
        with trio.fail_after(30):
            for _ in range(3):
                lsn = await ingest(mgr, model, lsn, 40, rng)
                await mgr.flush(TENANT, TIMELINE)
            await mgr.compact(TENANT, TIMELINE)
            dcl = await mgr.flush(TENANT, TIMELINE)
            await check_reads(mgr, model, dcl, random.Random(1), n=200)
        await trio.sleep(1.0)
        st = mgr.status(TENANT)[0]["timelines"][0]
        assert st["remote_consistent_lsn"] == dcl0 < dcl
        w.start()
        # Back: the queue catches up.
        st = await wait_remote(mgr, dcl, timeout=60)
    objs = {k[len("faults/"):]: v for k, v in w.objects("faults/").items()}
    index = assert_index_consistent(objs, w.read(f"faults/{TL_PREFIX}index_part.json-00000001"))
    assert index.disk_consistent_lsn == dcl


async def test_failed_or_short_downloads_leave_no_final_file(
    engine_kind: str, tmp_path: Path, private_seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = private_seaweedfs
    for name, v in w.env.items():
        monkeypatch.setenv(name, v)
    conf = s3_conf(w, timeout=1.0)
    rng = random.Random(4)
    model = Model()
    async with manager(engine_kind, tmp_path / "a", rconfig(conf)) as a:
        await a.create_tenant(TENANT)
        await a.create_timeline(TENANT, TIMELINE)
        lsn = 1
        for _ in range(2):
            lsn = await ingest(a, model, lsn, 40, rng)
            dcl = await a.flush(TENANT, TIMELINE)
        await wait_remote(a, dcl)
    client = w.client()
    keys = sorted(k for k in w.objects(f"faults/{TL_PREFIX}") if "index_part" not in k)
    assert len(keys) == 2
    # One layer object gets the wrong size (a byte more than the index says).
    bad = keys[-1]
    client.put_object(Bucket=w.bucket, Key=bad, Body=w.read(bad) + b"\0")
    tl_dir = tmp_path / "b" / "tenants" / TENANT / "timelines" / TIMELINE
    async with manager(engine_kind, tmp_path / "b", rconfig(conf)) as b:
        await b.attach_tenant(TENANT)
        k = next(iter(model.history))
        with pytest.raises(PageserverError, match="index says"):
            await b.get(TENANT, TIMELINE, k, dcl)
        assert final_names(tl_dir) == []
        assert not [p for p in os.listdir(tl_dir) if p.endswith(TEMP_SUFFIX)]
        # The store goes away: a read that needs a download is remote_unavailable, and
        # leaves nothing behind either.
        w.kill()
        with trio.fail_after(30):
            with pytest.raises(RemoteUnavailable):
                await b.get(TENANT, TIMELINE, k, dcl)
        assert final_names(tl_dir) == []
        assert not [p for p in os.listdir(tl_dir) if p.endswith(TEMP_SUFFIX)]
        # Repaired and back: the read downloads and answers.
        w.start()
        client.put_object(Bucket=w.bucket, Key=bad, Body=w.read(bad)[:-1])
        await check_reads(b, model, dcl, random.Random(3), n=100)
        assert len(final_names(tl_dir)) == 2


@pytest.mark.parametrize("point", ["remote-before-index-upload", "remote-before-delete"])
async def test_sigkill_at_remote_failpoints_loses_nothing(
    engine_kind: str, tmp_path: Path, point: str
) -> None:
    data, remote = tmp_path / "d", tmp_path / "remote"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.remote._crash_child", engine_kind, str(data), str(remote), point],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert steps[0]["step"] == "uploaded" and steps[-1]["step"] != "not killed", steps
    tl_dir = data / "tenants" / TENANT / "timelines" / TIMELINE
    durable = json.loads((tl_dir / "metadata").read_bytes())["disk_consistent_lsn"]
    conf = RemoteStorageConfig(local_path=str(remote), timeout=5.0)
    index_key = f"{TL_PREFIX}index_part.json-00000001"
    if point == "remote-before-delete":
        # (the process may end before compact() returns to print "compacted": the upload
        # round runs as soon as the new layers are scheduled)
        assert durable == steps[0]["dcl"]
        # The crash came after an index naming only the L1s, before any deletion: the
        # L0 objects are all still there.
        index = IndexPart.decode((remote / index_key).read_bytes())
        l0 = "0" * 36 + "-" + "F" * 36 + "__"
        assert index.layers and not [n for n in index.layers if n.startswith(l0)]
        assert len([k for k in listing(conf) if k.startswith(TL_PREFIX + l0)]) >= 3
    else:
        assert durable > steps[0]["dcl"]  # a flush happened, its index upload did not
    model = await replay(4 if point == "remote-before-index-upload" else 3)
    model.truncate_above(durable)
    # Before the restart: the newest index is consistent.
    assert_index_consistent(listing(conf), (remote / index_key).read_bytes())
    async with manager(engine_kind, data, rconfig(conf)) as mgr:
        st = mgr.status(TENANT)[0]
        assert st["generation"] == 2
        assert st["timelines"][0]["disk_consistent_lsn"] == durable
        await check_reads(mgr, model, durable, random.Random(8), n=300)
        await wait_remote(mgr, durable)
        with trio.fail_after(20):
            while not (remote / f"{TL_PREFIX}index_part.json-00000002").exists():
                await trio.sleep(0.05)
            client = mgr.timeline(TENANT, TIMELINE).remote
            assert client is not None and await client.wait_drained()
        # What was not uploaded before the crash is uploaded again.
        index = assert_index_consistent(
            listing(conf), (remote / f"{TL_PREFIX}index_part.json-00000002").read_bytes()
        )
        assert index.disk_consistent_lsn == durable
        local = {p.name.rsplit("-v1-", 1)[0] for p in tl_dir.iterdir() if p.name.startswith("0")}
        assert local == set(index.layers)
