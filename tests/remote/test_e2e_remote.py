"""Lose the disk, end to end (SPEC section 10, issue 13 (a)): the real daemon and CLI.

Daemon A ingests a deterministic ``feed``, flushes, waits for ``remote_consistent_lsn``,
is SIGKILLed and its data directory deleted. Daemon B, on another (empty) data directory
with the same ``[remote_storage]``, runs ``pageserver tenant attach``: every record at or
below the uploaded ``disk_consistent_lsn`` reads back equal to the model, and ingest
resumes (the same ``feed`` run again skips what is durable and sends the rest).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest

from pageserver.client import Client
from pageserver.client.feed import FeedGenerator
from pageserver.config import RemoteStorageConfig
from tests.helpers.daemon import FeedModel, metric_value
from tests.remote.helpers import RemoteDaemon

KEYS = 1500
FEED = ["--keys", str(KEYS), "--value-size", "64", "--kind", "test", "--records-per-lsn", "3"]


def feed_args(t: str, tl: str, count: int) -> list[str]:
    return ["feed", t, tl, "--json", "--count", str(count), *FEED, "--flush", "--no-progress"]


def generator(count: int) -> FeedGenerator:
    return FeedGenerator(
        count=count, keys=KEYS, value_size=64, kind="test", start_lsn=1, records_per_lsn=3
    )


async def check_reads(addr: str, t: str, tl: str, model: FeedModel, upto: int, n: int) -> None:
    rng = random.Random(upto)
    async with await Client.connect(addr) as c:
        bad = []
        for _ in range(n):
            k, lsn = rng.randrange(KEYS), rng.randint(1, upto)
            got = await c.get(t, tl, FeedGenerator.key(k), lsn)
            if got != model.expected(k, lsn):
                bad.append((k, lsn))
        assert not bad, f"{len(bad)} of {n} reads differ, e.g. {bad[:3]}"


# Each engine and each backend once (the in-process test in test_attach.py runs all four
# combinations); a daemon pair is the slow part of this suite.
@pytest.mark.parametrize(
    "engine_kind,remote_conf",
    [("std-fs", "local_path"), ("trio-uring", "s3")],
    indirect=True,
)
async def test_lose_the_disk_then_attach_on_a_fresh_daemon(
    engine_kind: str, remote_conf: RemoteStorageConfig
) -> None:
    a = RemoteDaemon(engine_kind, remote_conf, checkpoint_distance=128 * 1024)
    b = RemoteDaemon(engine_kind, remote_conf, checkpoint_distance=128 * 1024)
    try:
        a.start()
        with a.client() as c:
            t = c.create_tenant(None, None)
            tl = c.create_timeline(t, None, 0)
        out = json.loads(a.cli(*feed_args(t, tl, 8_000)).stdout)
        dcl = out["disk_consistent_lsn"]
        assert dcl == generator(8_000).lsn_of(7_999)
        st = a.wait_remote_consistent(dcl)
        assert st["layers"]["l0"] + st["layers"]["delta"] >= 3
        assert a.status()["tenants"][0]["generation"] == 1
        a.kill()
        shutil.rmtree(a.data_dir)

        b.start()
        t0 = time.perf_counter()
        attach = b.cli("tenant", "attach", t)
        attach_s = time.perf_counter() - t0
        assert "generation 2" in attach.stdout and tl in attach.stdout, attach.stdout
        st = b.timeline_status()
        assert st["disk_consistent_lsn"] == dcl and st["last_record_lsn"] == dcl
        assert st["remote_consistent_lsn"] >= dcl
        assert st["layers"]["resident_bytes"] == 0 and st["layers"]["remote_only"] >= 3
        model = FeedModel(generator(8_000))
        await check_reads(b.addr, t, tl, model, dcl, 300)
        assert b.timeline_status()["layers"]["resident_bytes"] > 0
        # Ingest resumes: the same stream, longer; what is durable is skipped.
        out = json.loads(b.cli(*feed_args(t, tl, 12_000)).stdout)
        assert out["records"] == 12_000
        model = FeedModel(generator(12_000))
        await check_reads(b.addr, t, tl, model, out["disk_consistent_lsn"], 200)
        b.wait_remote_consistent(out["disk_consistent_lsn"])
        rcl = metric_value(b.scrape(), "pageserver_remote_consistent_lsn", {"tenant_id": t})
        assert rcl == out["disk_consistent_lsn"]
        human = b.cli("status", t).stdout
        assert "generation 2" in human and "remote_consistent_lsn" in human, human
        print(f"\nattach of {st['layers']['remote_only']} layers through the CLI: {attach_s:.2f}s")
        # Detach waits for the uploads and removes the local copy.
        b.cli("tenant", "detach", t)
        assert b.status()["tenants"] == []
        assert not (b.timeline_path(t, tl)).exists()
    finally:
        a.cleanup()
        b.cleanup()


@pytest.mark.parametrize("remote_conf", ["local_path"], indirect=True)
def test_graceful_stop_waits_for_the_upload_queue(remote_conf: RemoteStorageConfig) -> None:
    d = RemoteDaemon("std-fs", remote_conf, checkpoint_distance=64 * 1024)
    try:
        d.start()
        with d.client() as c:
            t = c.create_tenant(None, None)
            tl = c.create_timeline(t, None, 0)
            for lsn in range(1, 200):
                c.put(t, tl, [(FeedGenerator.key(k), lsn, b"\0\0\0\0" + (8).to_bytes(8, "big") + b"x" * 8) for k in range(20)])
        # SIGTERM: flush the open layer, upload it and its index, exit 0.
        assert d.stop() == 0
        index = Path(remote_conf.local_path or "") / f"tenants/{t}/timelines/{tl}/index_part.json-00000001"
        assert json.loads(index.read_bytes())["disk_consistent_lsn"] == f"0/{199:X}"
    finally:
        d.cleanup()
