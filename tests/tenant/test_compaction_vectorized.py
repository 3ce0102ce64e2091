"""The batch-wise L0 -> L1 merge writes exactly the files of the per-record merge it
replaced (kept below as the reference): same names, same bytes, on both engines."""

from __future__ import annotations

import hashlib
import heapq
import os
import random
from pathlib import Path

import pytest

from pageserver.io import IoContext, cleanup_shield, cooperative_checkpoint
from pageserver.layers.common import LayerInfo
from pageserver.layers.delta_layer import DeltaEntry, DeltaLayer, DeltaLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.layers.value import Image, PostgresRecord, TestRecord, encode_value
from pageserver.tenant import compaction
from pageserver.tenant.compaction import merge_l0_layers

TENANT = TenantId(bytes(range(16)))
TIMELINE = TimelineId(bytes(range(16, 32)))


# -- the reference: the per-record merge as it was before the batch-wise one -------------------


async def reference_merge_l0_layers(
    ctx: IoContext,
    timeline_dir: str,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    paths: list[str],
    target_size: int,
) -> list[LayerInfo]:
    """Merge L0 delta files into L1 files (an offloaded job). On error, removes its output."""
    readers: list[DeltaLayer] = []
    infos: list[LayerInfo] = []
    writer: DeltaLayerWriter | None = None
    try:
        for path in paths:
            readers.append(await DeltaLayer.open(ctx, path))
        lsn_start = min(r.lsn_range[0] for r in readers)
        lsn_end = max(r.lsn_range[1] for r in readers)
        iters = [r.iter_all() for r in readers]
        heap: list[tuple[bytes, int, int]] = []
        state: list[tuple[list[DeltaEntry], int]] = []
        for idx, it in enumerate(iters):
            batch = await it.next_batch()
            state.append((batch, 0))
            if batch:
                heap.append((batch[0][0], batch[0][1], idx))
        heapq.heapify(heap)
        last_key: bytes | None = None
        n = 0
        while heap:
            key, lsn, idx = heapq.heappop(heap)
            batch, pos = state[idx]
            entry = batch[pos]
            pos += 1
            if pos == len(batch):
                batch, pos = await iters[idx].next_batch(), 0
            state[idx] = (batch, pos)
            if batch:
                heapq.heappush(heap, (batch[pos][0], batch[pos][1], idx))
            if writer is None:
                writer = DeltaLayerWriter(
                    ctx, timeline_dir, tenant_id, timeline_id, Key(key), lsn_start, lsn_end
                )
            elif key != last_key and writer.size_estimate >= target_size:
                infos.append(await writer.finish(Key(key)))
                writer = DeltaLayerWriter(
                    ctx, timeline_dir, tenant_id, timeline_id, Key(key), lsn_start, lsn_end
                )
            await writer.put_value(key, lsn, entry[4], entry[3])
            last_key = key
            n += 1
            if not n % 1024:
                await cooperative_checkpoint()
        if writer is not None:
            infos.append(await writer.finish(Key.MAX))
            writer = None
        return infos
    except BaseException:
        with cleanup_shield():
            if writer is not None:
                await writer.abandon()
            for info in infos:
                try:
                    await ctx.unlink(info.path)
                except FileNotFoundError:
                    pass
        raise
    finally:
        with cleanup_shield():
            for r in readers:
                await r.close()


# -- random L0 sets ------------------------------------------------------------------------------


def _random_value(rnd: random.Random, big: float) -> bytes:
    kind = rnd.random()
    if kind < big:
        return encode_value(Image(rnd.randbytes(rnd.randint(8193, 40000))))
    if kind < 0.45:
        return encode_value(Image(rnd.randbytes(rnd.choice([0, 1, 100, 115, 116, 127, 500, 8192]))))
    if kind < 0.75:
        return encode_value(PostgresRecord(rnd.random() < 0.3, rnd.randbytes(rnd.randint(0, 300))))
    if rnd.random() < 0.5:
        return encode_value(TestRecord("+" * rnd.randint(0, 200), True, True, None))
    return encode_value(TestRecord(f"+{rnd.randint(0, 10**6)}", False, False, None))


def _random_keys(rnd: random.Random, n: int) -> list[bytes]:
    keys: set[bytes] = set()
    while len(keys) < n:
        shape = rnd.random()
        if shape < 0.2:  # trailing NUL bytes (numpy's S dtype strips those from scalars)
            k = rnd.randbytes(rnd.randint(1, 17)).ljust(18, b"\0")
        elif shape < 0.3:
            k = bytes(17) + bytes([rnd.randint(0, 3)])  # near Key.MIN
        else:
            k = bytes([0]) + rnd.randbytes(3) + bytes(10) + rnd.randbytes(4)
        if k != b"\xff" * 18:
            keys.add(k)
    return sorted(keys)


async def _write_l0s(ctx: IoContext, d: str, rnd: random.Random, nfiles: int, nkeys: int,
                     per_file: int, big: float, hot: bool) -> list[str]:  # fmt: skip
    keys = _random_keys(rnd, nkeys)
    paths = []
    lsn = rnd.randint(1, 1000)
    for _ in range(nfiles):
        start = lsn
        recs: list[tuple[bytes, int, bytes]] = []
        for _ in range(rnd.randint(1, per_file)):
            k = keys[0] if hot and rnd.random() < 0.5 else rnd.choice(keys)
            recs.append((k, lsn, _random_value(rnd, big)))
            lsn += rnd.choice([1, 1, 1, 2, 50])
        recs.sort(key=lambda r: (r[0], r[1]))
        async with DeltaLayerWriter(ctx, d, TENANT, TIMELINE, Key.MIN, start) as w:
            for k, lsn_, v in recs:
                await w.put_value(k, lsn_, v)
            info = await w.finish(Key.MAX, lsn + rnd.randint(0, 3))
        lsn = info.name.lsn_end + rnd.choice([0, 0, 10])  # type: ignore[union-attr]
        paths.append(info.path)
    rnd.shuffle(paths)  # the order given does not matter
    return paths


def _digests(infos: list[LayerInfo]) -> list[tuple[str, int, str]]:
    out = []
    for info in infos:
        with open(info.path, "rb") as f:
            out.append((os.path.basename(info.path), info.num_entries, hashlib.sha256(f.read()).hexdigest()))
    return out


# (nfiles, nkeys, records per file (max), share of values > 8 KiB, hot key, target sizes)
CASES = [
    (1, 5, 20, 0.0, False, [0, 10**9]),
    (3, 40, 300, 0.05, False, [0, 8192, 16384, 16385, 30000, 100000]),
    (5, 300, 3000, 0.0, False, [20000, 150000, 400000, 10**9]),
    (4, 2000, 6000, 0.0, False, [300000, 700000]),
    (6, 100, 1500, 0.2, True, [0, 50000, 500000, 10**9]),
    (2, 8, 2500, 0.0, True, [8192, 40000, 200000]),
    (3, 500, 400, 0.5, False, [60000, 1 << 20]),
]


@pytest.mark.parametrize("small_slices", [False, True])
async def test_merge_is_byte_identical_to_the_per_record_merge(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_slices: bool
) -> None:
    if small_slices:  # many slices: slice boundaries inside keys, runs and files
        monkeypatch.setattr(compaction, "SLICE_RECORDS", 700)
        monkeypatch.setattr(compaction, "SLICE_BYTES", 70000)
    for seed, (nfiles, nkeys, per_file, big, hot, targets) in enumerate(CASES):
        rnd = random.Random(seed * 2 + small_slices)
        case = tmp_path / f"case{seed}"
        inputs = case / "l0"
        inputs.mkdir(parents=True)
        paths = await _write_l0s(io_ctx, str(inputs), rnd, nfiles, nkeys, per_file, big, hot)
        for target in targets:
            ref_dir, new_dir = case / f"ref{target}", case / f"new{target}"
            ref_dir.mkdir()
            new_dir.mkdir()
            ref = await reference_merge_l0_layers(io_ctx, str(ref_dir), TENANT, TIMELINE, paths, target)
            new = await merge_l0_layers(io_ctx, str(new_dir), TENANT, TIMELINE, paths, target)
            assert _digests(new) == _digests(ref), (seed, target)
            assert sorted(os.listdir(new_dir)) == sorted(os.listdir(ref_dir))
            if target == 0:
                assert len(ref) == len({k for p in paths for k in await _keys(io_ctx, p)})


async def _keys(ctx: IoContext, path: str) -> set[bytes]:
    async with await DeltaLayer.open(ctx, path) as layer:
        return {bytes(k) for k, _l, _v in await layer.load_all()}


async def test_many_output_files_across_staging_runs(io_ctx: IoContext, tmp_path: Path) -> None:
    """Enough records that the per-record writer extended its index many times before a
    cut (runs of 2048 entries and of 256 KiB), and target sizes near every run's end."""
    rnd = random.Random(99)
    inputs = tmp_path / "l0"
    inputs.mkdir()
    paths = await _write_l0s(io_ctx, str(inputs), rnd, 4, 3000, 9000, 0.01, False)
    for target in [260000, 262144, 270000, 600000, 1 << 20]:
        ref_dir, new_dir = tmp_path / f"ref{target}", tmp_path / f"new{target}"
        ref_dir.mkdir()
        new_dir.mkdir()
        ref = await reference_merge_l0_layers(io_ctx, str(ref_dir), TENANT, TIMELINE, paths, target)
        new = await merge_l0_layers(io_ctx, str(new_dir), TENANT, TIMELINE, paths, target)
        assert len(ref) > 1
        assert _digests(new) == _digests(ref), target


async def test_error_removes_the_output(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(5)
    inputs = tmp_path / "l0"
    inputs.mkdir()
    paths = await _write_l0s(io_ctx, str(inputs), rnd, 3, 200, 2000, 0.0, False)
    out = tmp_path / "out"
    out.mkdir()
    calls = 0
    real = DeltaLayer.read_values

    async def failing(self: DeltaLayer, offsets):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 6:
            raise OSError("injected")
        return await real(self, offsets)

    monkeypatch.setattr(compaction, "SLICE_RECORDS", 700)
    monkeypatch.setattr(DeltaLayer, "read_values", failing)
    with pytest.raises(OSError, match="injected"):
        await merge_l0_layers(io_ctx, str(out), TENANT, TIMELINE, paths, 20000)
    assert os.listdir(out) == []


async def test_target_equal_to_an_estimate(io_ctx: IoContext, tmp_path: Path) -> None:
    """Targets that the writer's ``size_estimate`` meets exactly at some key boundary (the
    rule is ``>=``): recorded by writing the merged records one by one."""
    rnd = random.Random(7)
    inputs = tmp_path / "l0"
    inputs.mkdir()
    paths = await _write_l0s(io_ctx, str(inputs), rnd, 3, 400, 3000, 0.02, False)
    records = []
    for p in paths:
        async with await DeltaLayer.open(io_ctx, p) as layer:
            records.extend(await layer.load_all())
    records.sort(key=lambda r: (r[0], r[1]))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    estimates = []
    async with DeltaLayerWriter(io_ctx, str(scratch), TENANT, TIMELINE, Key.MIN, 0) as w:
        last = None
        for k, lsn, v in records:
            if last is not None and k != last:
                estimates.append(w.size_estimate)
            await w.put_value(k, lsn, v)
            last = k
    targets = sorted({estimates[len(estimates) * j // 5] for j in range(1, 5)})
    for target in targets:
        ref_dir, new_dir = tmp_path / f"ref{target}", tmp_path / f"new{target}"
        ref_dir.mkdir()
        new_dir.mkdir()
        ref = await reference_merge_l0_layers(io_ctx, str(ref_dir), TENANT, TIMELINE, paths, target)
        new = await merge_l0_layers(io_ctx, str(new_dir), TENANT, TIMELINE, paths, target)
        assert len(ref) > 1
        assert _digests(new) == _digests(ref), target
