"""Timeline rules: put (SPEC section 5), get/get_history, rolling, restart, validation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from pageserver.errors import (
    AlreadyExists,
    BadRequest,
    BadValue,
    CorruptLayer,
    InvalidId,
    LsnOutOfOrder,
    RedoFailed,
    RedoUnsupported,
    TenantNotFound,
    TimelineNotFound,
)
from tests.helpers.tenant import (
    TENANT,
    TIMELINE,
    config,
    image,
    key,
    leftover_files,
    manager,
    pg_rec,
    trec,
)


def tl_dir(data_dir: Path) -> Path:
    return data_dir / "tenants" / TENANT / "timelines" / TIMELINE


async def make(engine_kind: str, data_dir: Path, start_lsn: int = 100, **cfg: float) -> None:
    async with manager(engine_kind, data_dir, config(**cfg)) as mgr:  # type: ignore[arg-type]
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=start_lsn)


async def test_put_rules(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path)
    async with manager(engine_kind, tmp_path) as mgr:
        r = await mgr.put(TENANT, TIMELINE, [(key(1), 101, image(b"a")), (key(2), 101, image(b"b"))])
        assert (r.last_record_lsn, r.disk_consistent_lsn, r.skipped) == (101, 100, 0)
        # At or below disk_consistent_lsn: skipped and counted.
        r = await mgr.put(TENANT, TIMELINE, [(key(3), 99, image(b"x")), (key(3), 100, image(b"y")), (key(3), 102, image(b"c"))])
        assert (r.last_record_lsn, r.skipped) == (102, 2)
        assert await mgr.get(TENANT, TIMELINE, key(3), 102) == b"c"
        # Going backwards within a batch.
        with pytest.raises(LsnOutOfOrder):
            await mgr.put(TENANT, TIMELINE, [(key(1), 110, image(b"z")), (key(1), 105, image(b"z"))])
        # Below last_record_lsn (but above dcl): the batch fails, nothing applied.
        with pytest.raises(LsnOutOfOrder):
            await mgr.put(TENANT, TIMELINE, [(key(5), 120, image(b"ok")), (key(5), 120, image(b"ok2")), (key(1), 101, image(b"old"))][2:] + [(key(5), 130, image(b"no"))])
        assert await mgr.get(TENANT, TIMELINE, key(5), 102) is None
        # Whole-batch validation: a bad value anywhere rejects everything.
        with pytest.raises(BadValue):
            await mgr.put(TENANT, TIMELINE, [(key(6), 103, image(b"fine")), (key(6), 104, b"\x00\x00\x00\x07")])
        with pytest.raises(BadValue):  # will_init without clear
            await mgr.put(TENANT, TIMELINE, [(key(6), 103, trec("x", will_init=True))])
        with pytest.raises(BadRequest, match="key"):
            await mgr.put(TENANT, TIMELINE, [(b"\x01" * 17, 103, image(b"x"))])
        with pytest.raises(BadRequest, match="Key.MAX"):
            await mgr.put(TENANT, TIMELINE, [(b"\xff" * 18, 103, image(b"x"))])
        assert await mgr.get(TENANT, TIMELINE, key(6), 102) is None
        # Same (key, lsn) twice in the open layer: the second replaces the first.
        await mgr.put(TENANT, TIMELINE, [(key(7), 103, image(b"first"))])
        await mgr.put(TENANT, TIMELINE, [(key(7), 103, image(b"second"))])
        assert await mgr.get(TENANT, TIMELINE, key(7), 103) == b"second"
        hist = await mgr.get_history(TENANT, TIMELINE, key(7), 103)
        assert hist.image == b"second" and hist.image_lsn == 103 and hist.records == []


async def test_get_rules_and_history(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path)
    async with manager(engine_kind, tmp_path) as mgr:
        await mgr.put(TENANT, TIMELINE, [
            (key(1), 101, image(b"base")),
            (key(1), 102, trec("+1")),
            (key(2), 102, trec("orphan")),
            (key(3), 102, pg_rec(b"wal", will_init=True)),
            (key(4), 103, trec("x", clear=True, will_init=True)),
            (key(4), 104, trec("y", only_if="x")),
            (key(4), 105, trec("z", only_if="nope")),
            (key(5), 105, image(b"old")),
        ])  # fmt: skip
        await mgr.flush(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [
            (key(1), 106, trec("+2")),
            (key(5), 106, trec("new", clear=True, will_init=True)),
        ])  # fmt: skip
        assert await mgr.get(TENANT, TIMELINE, key(1), 100) is None
        assert await mgr.get(TENANT, TIMELINE, key(1), 101) == b"base"
        assert await mgr.get(TENANT, TIMELINE, key(1), 105) == b"base+1"
        assert await mgr.get(TENANT, TIMELINE, key(1), 106) == b"base+1+2"
        assert await mgr.get(TENANT, TIMELINE, key(9), 106) is None
        with pytest.raises(RedoFailed):
            await mgr.get(TENANT, TIMELINE, key(2), 106)
        with pytest.raises(RedoUnsupported):
            await mgr.get(TENANT, TIMELINE, key(3), 106)
        assert await mgr.get(TENANT, TIMELINE, key(4), 104) == b"xy"
        with pytest.raises(RedoFailed):
            await mgr.get(TENANT, TIMELINE, key(4), 105)
        with pytest.raises(BadRequest, match="last_record_lsn"):
            await mgr.get(TENANT, TIMELINE, key(1), 107)
        h = await mgr.get_history(TENANT, TIMELINE, key(1), 106)
        assert (h.image, h.image_lsn) == (b"base", 101)
        assert h.records == [(102, trec("+1")), (106, trec("+2"))]
        h = await mgr.get_history(TENANT, TIMELINE, key(4), 105)
        assert h.image is None and h.image_lsn is None
        assert [lsn for lsn, _ in h.records] == [103, 104, 105]
        h = await mgr.get_history(TENANT, TIMELINE, key(9), 106)
        assert (h.image, h.image_lsn, h.records) == (None, None, [])
        # A will_init record above an image: the records start at it (a read needs no
        # more), and the image is still the newest one at or below lsn (SPEC section 5).
        assert await mgr.get(TENANT, TIMELINE, key(5), 106) == b"new"
        h = await mgr.get_history(TENANT, TIMELINE, key(5), 106)
        assert (h.image, h.image_lsn) == (b"old", 105)
        assert h.records == [(106, trec("new", clear=True, will_init=True))]


async def test_tenant_and_timeline_errors(engine_kind: str, tmp_path: Path) -> None:
    async with manager(engine_kind, tmp_path) as mgr:
        with pytest.raises(TenantNotFound):
            await mgr.create_timeline(TENANT, TIMELINE)
        await mgr.create_tenant(TENANT.upper(), {"checkpoint_distance": 1000, "checkpoint_timeout": "5m"})
        with pytest.raises(AlreadyExists):
            await mgr.create_tenant(TENANT)
        with pytest.raises(TimelineNotFound):
            await mgr.get(TENANT, TIMELINE, key(1), 1)
        for bad in ("..", "a/b", "g" * 32, "ab" * 15, "", "../" + "0" * 29):
            with pytest.raises(InvalidId):
                await mgr.create_tenant(bad)
        assert os.listdir(tmp_path / "tenants") == [TENANT]
        with pytest.raises(BadRequest, match="checkpoint_distanse"):
            await mgr.set_tenant_config(TENANT, {"checkpoint_distanse": 1})
        eff = await mgr.set_tenant_config(TENANT, {"compaction_threshold": 4})
        assert eff["compaction_threshold"] == 4 and eff["checkpoint_distance"] == 268435456
        await mgr.create_timeline(TENANT, TIMELINE, 5)
        with pytest.raises(AlreadyExists):
            await mgr.create_timeline(TENANT, TIMELINE, 5)
    text = (tmp_path / "tenants" / TENANT / "config-v1").read_text()
    assert text.startswith(
        "# This file contains a specific per-tenant's config.\n#  It is read in case of pageserver restart.\n"
    )
    # Neon's layout: a blank line, then the overrides in a [tenant_config] table.
    assert text.split("\n")[2:4] == ["", "[tenant_config]"]
    assert "compaction_threshold = 4" in text and "checkpoint_distance" not in text
    async with manager(engine_kind, tmp_path) as mgr:
        assert mgr.effective_config(TENANT)["compaction_threshold"] == 4
        assert mgr.status()[0]["timelines"][0]["disk_consistent_lsn"] == 5
    # A file with the keys at the top level (written before the table) loads the same.
    header = "".join(text.splitlines(keepends=True)[:2])
    (tmp_path / "tenants" / TENANT / "config-v1").write_text(header + "compaction_threshold = 7\n")
    async with manager(engine_kind, tmp_path) as mgr:
        assert mgr.effective_config(TENANT)["compaction_threshold"] == 7


async def test_rolls_at_checkpoint_distance_and_restart(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path, config(checkpoint_distance=2000)) as mgr:
        for lsn in range(1, 301):
            await mgr.put(TENANT, TIMELINE, [(key(lsn % 17), lsn, image(bytes([lsn % 256]) * 50))])
        dcl = await mgr.flush(TENANT, TIMELINE)
        assert dcl == 300
        layers = mgr.status()[0]["timelines"][0]["layers"]
        assert layers["l0"] >= 5
    names = sorted(os.listdir(tl_dir(tmp_path)))
    assert not leftover_files(names)
    # Consecutive, non-overlapping LSN ranges covering 1..300.
    ranges = sorted(
        (int(n.split("__")[1].split("-")[0], 16), int(n.split("__")[1].split("-")[1], 16))
        for n in names if "__" in n
    )
    assert ranges[0][0] == 1 and ranges[-1][1] == 301
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    async with manager(engine_kind, tmp_path) as mgr:
        for lsn in (1, 17, 150, 299, 300):
            k = lsn % 17
            assert await mgr.get(TENANT, TIMELINE, key(k), lsn) == bytes([lsn % 256]) * 50


async def test_quiet_timeline_is_not_rolled_by_time(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path, config(checkpoint_timeout=0.1)) as mgr:
        await mgr.put(TENANT, TIMELINE, [(key(1), 5, image(b"t"))])
        await trio.sleep(0.5)
        # No boundary passed: LSN 5 may still get records, so nothing was frozen.
        assert mgr.status()[0]["timelines"][0]["disk_consistent_lsn"] == 0
        await mgr.put(TENANT, TIMELINE, [(key(2), 5, image(b"u"))])
        # The next LSN passes the boundary; the old layer (past the timeout) rolls there.
        await mgr.put(TENANT, TIMELINE, [(key(3), 6, image(b"v"))])
        with trio.fail_after(10):
            while mgr.status()[0]["timelines"][0]["disk_consistent_lsn"] < 5:
                await trio.sleep(0.02)
        r = await mgr.put(TENANT, TIMELINE, [(key(4), 5, image(b"durable already"))])
        assert r.skipped == 1
        assert await mgr.get(TENANT, TIMELINE, key(2), 6) == b"u"


async def test_restart_cleans_up_and_validates(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path) as mgr:
        await mgr.put(TENANT, TIMELINE, [(key(1), 10, image(b"v10"))])
        await mgr.flush(TENANT, TIMELINE)
    d = tl_dir(tmp_path)
    (layer,) = [p for p in d.iterdir() if "__" in p.name]
    # Leftovers of a crash: a temp file, an ephemeral file, and a future layer.
    (d / "x.1.___temp").write_bytes(b"partial")
    (d / "ephemeral-7").write_bytes(b"junk")
    future = d / layer.name.replace("__0000000000000001-000000000000000B", "__000000000000000B-0000000000000014")
    shutil.copy(layer, future)
    # And of crash-safe overwrites above the timeline (config-v1, node_id, generation).
    tenant_dir = tmp_path / "tenants" / TENANT
    others = [tenant_dir / "config-v1.___temp", tmp_path / "tenants" / "x.___temp", tmp_path / "node_id.___temp"]
    for other in others:
        other.write_bytes(b"partial")
    async with manager(engine_kind, tmp_path) as mgr:
        assert await mgr.get(TENANT, TIMELINE, key(1), 10) == b"v10"
    assert sorted(p.name for p in d.iterdir()) == sorted(["metadata", layer.name])
    assert [p for p in others if p.exists()] == []
    assert (tenant_dir / "config-v1").is_file()
    # A corrupt layer stops startup, naming it.
    data = bytearray(layer.read_bytes())
    data[0] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(CorruptLayer, match=layer.name):
        async with manager(engine_kind, tmp_path):
            pass
    layer.write_bytes(bytes(data[:-100]))
    with pytest.raises(CorruptLayer, match="multiple of 8192"):
        async with manager(engine_kind, tmp_path):
            pass


async def test_concurrent_puts_never_interleave(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path, config(checkpoint_distance=5000)) as mgr:
        next_lsn = 1
        errors = 0

        async def client(c: int) -> None:
            nonlocal next_lsn, errors
            for _ in range(40):
                lsn = next_lsn
                next_lsn += 1
                batch = [(key(c * 100 + i), lsn, image(bytes([c]) * 30)) for i in range(20)]
                try:
                    await mgr.put(TENANT, TIMELINE, batch)
                except LsnOutOfOrder:
                    errors += 1
                await trio.sleep(0)

        async with trio.open_nursery() as n:
            for c in range(4):
                n.start_soon(client, c)
        await mgr.flush(TENANT, TIMELINE)
        last = mgr.status()[0]["timelines"][0]["last_record_lsn"]
        # Every batch is all-or-nothing: each client's keys at a given LSN are all there.
        for lsn in range(1, last + 1, 7):
            present = [await mgr.get(TENANT, TIMELINE, key(c * 100 + i), lsn) is not None for c in range(4) for i in range(20)]
            for c in range(4):
                chunk = present[c * 20 : (c + 1) * 20]
                assert all(chunk) or not any(chunk)


async def test_backpressure_waits_for_flush(engine_kind: str, tmp_path: Path) -> None:
    from pageserver import failpoints
    from pageserver.tenant.timeline import MAX_FROZEN_LAYERS

    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path, config(checkpoint_distance=1000)) as mgr:
        tl = mgr.timeline(TENANT, TIMELINE)
        failpoints.configure({"flush-before-dcl-update": "sleep(150)"})
        max_frozen = 0
        t0 = trio.current_time()
        for lsn in range(1, 61):
            await mgr.put(TENANT, TIMELINE, [(key(lsn), lsn, image(b"b" * 200))])
            max_frozen = max(max_frozen, len(tl.frozen))
        elapsed = trio.current_time() - t0
        # ~12 layers of ~5 records; each flush takes >= 150 ms, and puts had to wait.
        assert max_frozen <= MAX_FROZEN_LAYERS
        assert elapsed >= 0.15 * (12 - MAX_FROZEN_LAYERS - 1)
        failpoints.clear()
        assert await mgr.flush(TENANT, TIMELINE) == 60
        for lsn in (1, 30, 60):
            assert await mgr.get(TENANT, TIMELINE, key(lsn), 60) == b"b" * 200


async def test_reads_open_only_layers_that_matter(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path, config(checkpoint_distance=300)) as mgr:
        for lsn in range(1, 401):
            await mgr.put(TENANT, TIMELINE, [(key(lsn % 10), lsn, image(bytes([lsn % 256]) * 100))])
        await mgr.flush(TENANT, TIMELINE)
    async with manager(engine_kind, tmp_path) as mgr:
        tl = mgr.timeline(TENANT, TIMELINE)
        assert len(tl.layer_map.layers) >= 100
        # Key 3's newest image is at 393: only the few layers above it are opened, and
        # nothing older than the one holding it (L0 layers span every key).
        assert await mgr.get(TENANT, TIMELINE, key(3), 400) == bytes([393 % 256]) * 100
        opened = [layer for layer in tl.layer_map.layers if layer._reader is not None]
        assert 1 <= len(opened) <= 5
        assert all(layer.lsn_end > 393 for layer in opened)
        t0 = trio.current_time()
        for lsn in range(10, 401, 3):
            k = lsn % 10
            assert await mgr.get(TENANT, TIMELINE, key(k), lsn) == bytes([lsn % 256]) * 100
        assert trio.current_time() - t0 < 20


async def test_checkpoint_timeout_never_cuts_an_lsn(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path, config(checkpoint_timeout=0.3)) as mgr:
        # Keep sending records of one LSN past the timeout: no roll may split LSN 5.
        for i in range(12):
            await mgr.put(TENANT, TIMELINE, [(key(i), 5, image(b"same lsn"))])
            await trio.sleep(0.05)
        assert mgr.status()[0]["timelines"][0]["disk_consistent_lsn"] == 0
        # The first record above it passes the boundary: the old layer rolls there.
        await mgr.put(TENANT, TIMELINE, [(key(99), 6, image(b"next"))])
        with trio.fail_after(10):
            while mgr.status()[0]["timelines"][0]["disk_consistent_lsn"] < 5:
                await trio.sleep(0.02)
        assert mgr.status()[0]["timelines"][0]["disk_consistent_lsn"] == 5
        for i in range(12):
            assert await mgr.get(TENANT, TIMELINE, key(i), 6) == b"same lsn"


async def test_lsn_max_is_rejected(engine_kind: str, tmp_path: Path) -> None:
    await make(engine_kind, tmp_path, start_lsn=0)
    async with manager(engine_kind, tmp_path) as mgr:
        with pytest.raises(BadRequest, match="2\\^64-1"):
            await mgr.put(TENANT, TIMELINE, [(key(1), 2**64 - 1, image(b"x"))])
        with pytest.raises(BadRequest, match="start_lsn"):
            await mgr.create_timeline(TENANT, "ab" * 16, start_lsn=2**64 - 1)
        await mgr.put(TENANT, TIMELINE, [(key(1), 2**64 - 2, image(b"top"))])
        assert await mgr.flush(TENANT, TIMELINE) == 2**64 - 2
        assert await mgr.get(TENANT, TIMELINE, key(1), 2**64 - 2) == b"top"


async def test_max_resident_layer_bytes_without_remote_storage_is_said_to_be_ignored(
    engine_kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only uploaded layers can be evicted: without ``[remote_storage]`` the bound is
    ignored, and the log says so (it was silently accepted)."""
    import dataclasses

    cfg = dataclasses.replace(config(), max_resident_layer_bytes=4096)
    capsys.readouterr()
    async with manager(engine_kind, tmp_path, cfg):
        pass
    err = capsys.readouterr().err
    assert "max_resident_layer_bytes is ignored without [remote_storage]" in err
    async with manager(engine_kind, tmp_path, config()):
        pass
    assert "max_resident_layer_bytes" not in capsys.readouterr().err
