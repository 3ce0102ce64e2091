"""The flush keeps only the blocks of the mapped ephemeral file that coming slices read.

What is measured is the mapping's resident size in ``/proc/self/smaps`` (what
``ru_maxrss`` adds up), at the start of every ``put_sorted`` call of the flush, against
the file's size; and the layer file is the per-value writer's, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pageserver.io import IoContext
from pageserver.layers.batch import check_put_batch
from pageserver.layers.delta_layer import DeltaLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.tenant import inmemory_layer as iml
from pageserver.tenant.inmemory_layer import InMemoryLayer
from tests.helpers.tenant import image, key

TID = TenantId.parse("0123456789abcdef0123456789abcdef")
TLID = TimelineId.parse("fedcba9876543210fedcba9876543210")


def mapped_rss(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (0 if none)."""
    total = 0
    current = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                current = line.rstrip("\n").endswith(path)
            elif current and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.parametrize(("value_size", "mib"), [(100, 8), (8192, 32)])
async def test_flush_keeps_only_a_few_slices_of_the_file_mapped(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value_size: int, mib: int
) -> None:
    """Keys arriving in runs (the ingest bench's pattern: key i % nkeys): a slice's values
    sit in a few places of the file, so the mapping holds a few slices' worth, not the
    file (before, all of it from the first slice on).

    A slice reads ~64 KiB per place here, but what a fault maps is the page cache's
    folio (Linux 6.18 maps a large folio whole on a fault): up to 2 MiB where the file
    was written in large writes (the 8 KiB case: ~4 MiB mapped at most), so the bound is
    a quarter of the file, well above that and well below the file.
    """
    monkeypatch.setattr(iml, "FLUSH_SLICE_BYTES", 256 << 10)
    monkeypatch.setattr(iml, "FLUSH_SLICE_RECORDS", 2048)
    nkeys = 20_000  # ~4 passes over the key space at 100 B: a slice reads ~4 places
    count = (mib << 20) // value_size
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    payload = image(b"\xa5" * value_size)
    rss: list[int] = []
    real_put_sorted = DeltaLayerWriter.put_sorted

    async def put_sorted(self: DeltaLayerWriter, *a: Any) -> None:
        rss.append(mapped_rss(layer.path))
        await real_put_sorted(self, *a)

    try:
        lsn = 10
        for start in range(0, count, 1000):
            recs = [(key(i % nkeys), lsn, payload) for i in range(start, min(count, start + 1000))]
            await layer.put_batch(check_put_batch(recs))
            lsn += 1
        await layer.freeze(lsn)
        size = layer.size
        (tmp_path / "flush").mkdir()
        (tmp_path / "ref").mkdir()
        monkeypatch.setattr(DeltaLayerWriter, "put_sorted", put_sorted)
        info = await layer.write_delta_layer(str(tmp_path / "flush"), TID, TLID)
        after = mapped_rss(layer.path)
        # Unmapped once the flush is done (nothing of it keeps a view of the mapping).
        unmapped = layer.path not in Path("/proc/self/maps").read_text()
        monkeypatch.setattr(DeltaLayerWriter, "put_sorted", real_put_sorted)
        w = DeltaLayerWriter(io_ctx, str(tmp_path / "ref"), TID, TLID, Key.MIN, 10, lsn)
        async with w:
            for part in layer.sorted_entries():
                for i in range(len(part)):
                    off, n = int(part.offs[i]), int(part.lens[i])
                    await w.put_value(
                        part.keys[i : i + 1].tobytes(), int(part.lsns[i]),
                        await layer.read_value(off, n), bool(part.will_init[i]),
                    )  # fmt: skip
            ref = await w.finish(Key.MAX)
    finally:
        await layer.delete()
    digest = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in (info.path, ref.path)]
    assert digest[0] == digest[1]
    assert os.path.basename(info.path) == os.path.basename(ref.path)
    assert size >= mib << 20 and len(rss) > 8 and after == 0 and unmapped
    # Without the release every slice starts with all of the file mapped.
    assert max(rss) <= size // 4, (max(rss), size)


def test_block_plan_marks_first_and_last_reader_of_every_block() -> None:
    """Values across block boundaries and longer than a block: each block's first and
    last reader, and the byte ranges released after each slice (coalesced)."""
    block = 1 << iml._BLOCK_SHIFT
    offs = np.array([0, block - 10, 3 * block + 5, 10], np.int64)
    lens = np.array([10, 20, 3 * block, 5], np.int64)
    size = 7 * block - 100
    plan = iml._BlockPlan(size, 4)
    for j in range(4):
        plan.add(j, offs[j : j + 1], lens[j : j + 1])
    plan.finish()
    # Slice 0 reads block 0, slice 1 blocks 0-1, slice 2 blocks 3-6, slice 3 block 0;
    # nobody reads block 2.
    assert plan.first.tolist() == [0, 1, 4, 2, 2, 2, 2]
    assert plan.last.tolist() == [3, 1, -1, 2, 2, 2, 2]
    released = [plan.released_after(j) for j in range(4)]
    assert released[0] == [(2 * block, 3 * block)]  # read by nobody: released first
    assert released[1] == [(block, 2 * block)]
    assert released[2] == [(3 * block, size)]
    assert released[3] == [(0, block)]
    data = np.zeros(size, np.uint8)
    touched = [sum(plan.prefault(j, data)) for j in range(4)]
    assert touched == [block, block, size - 3 * block, 0]


def test_block_plan_bridges_gaps_already_released_but_not_pending_blocks() -> None:
    """A slice's released blocks are one ``madvise`` range across blocks released after
    earlier slices (or read by nobody), but never across a block a later slice reads."""
    block = 1 << iml._BLOCK_SHIFT
    size = 7 * block
    plan = iml._BlockPlan(size, 4)
    # Block b read by slices reads[b] (block 5: nobody).
    reads = {0: [0, 2], 1: [1], 2: [2], 3: [0, 3], 4: [2], 6: [2]}
    for j in range(4):
        at = [b * block for b, js in reads.items() if j in js]
        plan.add(j, np.array(at, np.int64), np.full(len(at), 100, np.int64))
    plan.finish()
    assert plan.last.tolist() == [2, 1, 2, 3, 2, -1, 2]
    assert plan.released_after(0) == [(5 * block, 6 * block)]
    assert plan.released_after(1) == [(block, 2 * block)]
    # Blocks 0, 2: bridged over block 1 (released after slice 1); 4 and 6: bridged over
    # block 5 (nobody's); block 3 (slice 3 still reads it) splits the two.
    assert plan.released_after(2) == [(0, 3 * block), (4 * block, size)]
    assert plan.released_after(3) == [(3 * block, 4 * block)]


def test_block_plan_never_releases_a_block_a_later_slice_reads() -> None:
    """Random plans (values of every size, partial last blocks, blocks nobody reads): the
    ranges released after slice ``j`` cover every block ``j`` is the last to read, never a
    block a later slice reads, and all of them together the whole file."""
    block = 1 << iml._BLOCK_SHIFT
    rng = np.random.default_rng(23)
    for _ in range(400):
        nblocks = int(rng.integers(1, 40))
        size = max(1, nblocks * block - int(rng.choice([0, 1, block // 2, block - 1])))
        nslices = int(rng.integers(1, 7))
        plan = iml._BlockPlan(size, nslices)
        # Each block's last reader worked out here, one value at a time (not from the
        # plan's own bookkeeping); blocks nobody reads count as released after slice 0.
        released_by = np.zeros(-(-size // block), np.int64)
        for j in range(nslices):
            offs = rng.integers(0, size, int(rng.integers(0, 9))).astype(np.int64)
            lens = np.minimum(rng.choice([0, 1, 100, block, 3 * block], len(offs)), size - offs)
            plan.add(j, offs, lens.astype(np.int64))
            for off, n in zip(offs.tolist(), lens.tolist(), strict=True):
                released_by[off // block : (off + max(n, 1) - 1) // block + 1] = j
        plan.finish()
        covered = np.zeros(len(released_by), np.bool_)
        for j in range(nslices):
            now = np.zeros(len(released_by), np.bool_)
            for a, z in plan.released_after(j):
                assert a % block == 0 and a < z <= size
                now[a // block : -(-z // block)] = True
            assert (released_by[now] <= j).all(), "a block a later slice reads was released"
            assert now[released_by == j].all()
            covered |= now
        assert covered.all()
