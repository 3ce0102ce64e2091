"""End to end: the real daemon and the real CLI as subprocesses, on each io engine.

* create a tenant and a timeline, ``feed`` 100,000 records through the CLI, ``flush``, read
  random keys at random LSNs against a model of the (deterministic) generator, SIGTERM
  (exit 0), restart, read again;
* ``feed`` while the daemon is SIGKILLed and restarted in the middle: the feed reconnects
  and resends, and after its final flush every record is readable.

The daemons come from the pytest plugin users get (:mod:`pageserver.testing.plugin`):
``pageserver_daemon`` runs each test once per engine, already started, and stops it at
teardown; these tests stop and restart it themselves.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time

import pytest
import trio

from pageserver.client import Client, ConnectionLost
from pageserver.client.feed import FeedGenerator, run_feed
from tests.helpers.daemon import PAGESERVER, Daemon, FeedModel

COUNT = 100_000
KEYS = 2000


async def _check_reads(addr: str, model: FeedModel, samples: list[tuple[int, int]]) -> None:
    async with await Client.connect(addr) as c:
        tenants = (await c.status())["tenants"]
        t = tenants[0]["tenant_id"]
        tl = tenants[0]["timelines"][0]["timeline_id"]
        bad = []
        for k, lsn in samples:
            got = await c.get(t, tl, FeedGenerator.key(k), lsn)
            want = model.expected(k, lsn)
            if got != want:
                bad.append((k, lsn, got[:40] if got else got, want[:40] if want else want))
        assert not bad, f"{len(bad)} of {len(samples)} reads differ, e.g. {bad[:3]}"


def _create(d: Daemon) -> tuple[str, str]:
    t = d.cli("tenant", "create").stdout.strip()
    tl = d.cli("timeline", "create", t).stdout.strip()
    assert len(t) == 32 and len(tl) == 32
    return t, tl


async def test_feed_flush_read_restart(pageserver_daemon: Daemon, pageserver_engine: str) -> None:
    d, engine_kind = pageserver_daemon, pageserver_engine
    t, tl = _create(d)
    gen = FeedGenerator(
        count=COUNT, keys=KEYS, value_size=48, kind="test", start_lsn=100, records_per_lsn=4
    )
    t0 = time.perf_counter()
    out = d.cli(
        "feed",
        t,
        tl,
        "--json",
        "--count",
        str(COUNT),
        "--keys",
        str(KEYS),
        "--value-size",
        "48",
        "--kind",
        "test",
        "--start-lsn",
        "100",
        "--records-per-lsn",
        "4",
    )
    elapsed = time.perf_counter() - t0
    summary = json.loads(out.stdout)
    assert summary["records"] == COUNT and summary["reconnects"] == 0
    print(
        f"\n{engine_kind}: feed of {COUNT} records: {summary['records_per_s']} records/s "
        f"over the socket ({elapsed:.2f}s with process start)"
    )
    model = FeedModel(gen)
    async with await Client.connect(d.addr) as c:
        assert await c.flush(t, tl) == model.last_lsn
        status = await c.status()
    assert status["io_engine"] == engine_kind
    tl_status = status["tenants"][0]["timelines"][0]
    assert tl_status["last_record_lsn"] == model.last_lsn
    assert tl_status["layers"]["l0"] > 3, "checkpoint_distance should have rolled layers"

    rng = random.Random(1)
    samples = model.samples(rng, 400) + [(k, model.last_lsn) for k in range(0, KEYS, 7)]
    await _check_reads(d.addr, model, samples)
    # The human output of get for one sample, through the CLI.
    k, lsn = samples[0]
    want = model.expected(k, lsn)
    got = d.cli("get", t, tl, FeedGenerator.key(k).hex(), str(lsn), "--hex")
    assert got.stdout.strip() == (want.hex() if want is not None else "")

    assert d.stop(signal.SIGTERM) == 0
    assert "pageserver stopped" in d.log()
    d.start()
    await _check_reads(d.addr, model, samples)
    assert d.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize(
    "stop,per_lsn",
    # SIGTERM with 7 records per LSN and 500-record batches: the graceful stop flushes at
    # an LSN boundary, and a batch must never have split that LSN (else the resend would
    # find the rest of it "durable" and skip it).
    [("sigkill", 1), ("sigterm", 7)],
)
async def test_feed_survives_sigkill_and_restart(
    pageserver_daemon: Daemon, stop: str, per_lsn: int
) -> None:
    d = pageserver_daemon
    t, tl = _create(d)
    gen = FeedGenerator(
        count=COUNT, keys=KEYS, value_size=64, kind="image", start_lsn=1, records_per_lsn=per_lsn
    )
    last_lsn = gen.lsn_of(COUNT - 1)
    feed = subprocess.Popen(
        [
            PAGESERVER,
            "feed",
            t,
            tl,
            "-D",
            d.data_dir,
            "--json",
            "--flush",
            "--count",
            str(COUNT),
            "--keys",
            str(KEYS),
            "--value-size",
            "64",
            "--start-lsn",
            "1",
            "--records-per-lsn",
            str(per_lsn),
            "--batch",
            "500",
            "--retry-timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Kill once part of the stream went through and some of it is already durable.
        async with await Client.connect(d.addr) as c:
            with trio.fail_after(60):
                while True:
                    st = await c.timeline_status(t, tl)
                    if st["disk_consistent_lsn"] > last_lsn // 5:
                        break
                    await trio.sleep(0.005)
        assert st["last_record_lsn"] < last_lsn, "feed finished before the stop"
        stop_dcl = None
        if stop == "sigkill":
            d.kill()
        else:
            assert d.stop(signal.SIGTERM) == 0
            flushed = re.findall(r"disk_consistent_lsn=(\d+)", d.log())
            stop_dcl = int(flushed[-1])
        await trio.sleep(0.3)
        d.start()
        stdout, stderr = feed.communicate(timeout=120)
    finally:
        if feed.poll() is None:
            feed.kill()
    assert feed.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["reconnects"] >= 1, summary
    assert "reconnecting" in stderr
    model = FeedModel(gen)
    assert summary["disk_consistent_lsn"] == model.last_lsn == summary["last_record_lsn"]
    rng = random.Random(2)
    # Every key at the last LSN, plus random older versions.
    samples = [(k, model.last_lsn) for k in range(KEYS)] + model.samples(rng, 300)
    if stop_dcl is not None:
        # Every record of the LSNs around the graceful stop's flush point, each read at
        # its own LSN: a record lost there (an LSN split across two puts) shows up here.
        samples += [
            (gen.key_index(i), gen.lsn_of(i))
            for i in range(COUNT)
            if stop_dcl - 1 <= gen.lsn_of(i) <= stop_dcl + 1
        ]
    await _check_reads(d.addr, model, samples)
    assert d.stop(signal.SIGTERM) == 0


def test_bind_error_is_one_line_and_exit_1(tmp_path: object) -> None:
    import os
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = Daemon("std-fs")
        try:
            with open(os.path.join(d.data_dir, "pageserver.toml"), "w") as f:
                f.write(f'listen_addr = "127.0.0.1:{port}"\nmetrics_addr = ""\n')
            p = subprocess.run(
                [PAGESERVER, "run", "-D", d.data_dir], capture_output=True, text=True, timeout=60
            )
        finally:
            d.cleanup()
    assert p.returncode == 1
    last = p.stderr.splitlines()[-1]
    assert last == f"pageserver: cannot listen on 127.0.0.1:{port}: Address already in use"


async def test_feed_flush_after_a_crash_sends_again_what_the_crash_lost(
    pageserver_daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every put acknowledged, then the daemon is SIGKILLed before the flush: what it had
    only in memory is gone, and the feed's reconnect must send it again before flushing.
    It used to go straight to the flush (everything had been acknowledged once) and
    report success with last_record_lsn 0 and nothing durable."""
    d = pageserver_daemon
    t, tl = _create(d)
    gen = FeedGenerator(count=5000, keys=300, value_size=64, start_lsn=1)
    last = gen.lsn_of(gen.count - 1)
    real_flush = Client.flush
    crashed: list[int] = []

    async def crash_first(self: Client, tenant_id: str, timeline_id: str) -> int:
        if not crashed:
            async with await Client.connect(d.addr) as c:
                assert (await c.timeline_status(t, tl))["last_record_lsn"] == last
            crashed.append(1)
            d.kill()
            d.start()
            raise ConnectionLost("the daemon was killed before the flush")
        return await real_flush(self, tenant_id, timeline_id)

    monkeypatch.setattr(Client, "flush", crash_first)
    with trio.fail_after(120):
        stats = await run_feed(d.addr, None, t, tl, gen, flush=True, retry_timeout=30)
    assert crashed and stats.reconnects == 1
    assert stats.last_record_lsn == last and stats.disk_consistent_lsn == last
    async with await Client.connect(d.addr) as c:
        for i in (0, gen.count // 2, gen.count - 1):
            k = gen.key_index(i)
            newest = max(j for j in range(gen.count) if gen.key_index(j) == k)
            assert await c.get(t, tl, gen.key(k), last) == gen.payload(newest)
