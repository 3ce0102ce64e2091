"""The flush (merge_steps, put_sorted, the mapped file's block plan) against the
per-value writer, on random layers: byte-identical delta layers, for random key spaces
(one relation, wide keys, equal last 8 bytes, NUL-ending keys, a single key: a hot key
cut into slices by LSN), value sizes, replaced (key, lsn) pairs and step sizes; and no
slice reads a range of the mapped file already released. Adopted from an independent
review of the flush."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pageserver.io import IoContext
from pageserver.layers import delta_layer
from pageserver.layers.batch import check_put_batch
from pageserver.tenant import ephemeral_file as ef
from pageserver.tenant import inmemory_layer as iml
from pageserver.tenant.inmemory_layer import Entries, InMemoryLayer
from tests.helpers.tenant import assert_flush_equals_per_value_writer, image, key, pg_rec

#: More seeds: FLUSH_DIFF_SEEDS=200 (run with both engines, as every test).
SEEDS = int(os.environ.get("FLUSH_DIFF_SEEDS", "20"))


def keyspace(rnd: random.Random, kind: str, n: int) -> list[bytes]:
    if kind == "relation":
        return [key(i)[:14] + rnd.getrandbits(32).to_bytes(4, "big") for i in range(n)]
    if kind == "wide":
        return [bytes([rnd.randrange(0, 0x7F)]) + rnd.randbytes(17) for _ in range(n)]
    if kind == "sametail":  # equal last 8 bytes, different first 10
        tails = [rnd.randbytes(8) for _ in range(3)]
        return [bytes([rnd.randrange(0x7F)]) + rnd.randbytes(9) + rnd.choice(tails) for _ in range(n)]
    if kind == "nul":
        return [bytes(10) + bytes(7) + bytes([i % 4]) if i % 2 else bytes([1]) + bytes(9) + i.to_bytes(8, "big") for i in range(n)]
    return [key(i)[:9] + bytes([i % 3]) + rnd.randbytes(8) for i in range(n)]


UNIFORM: list[int] = []


def value(rnd: random.Random) -> bytes:
    if UNIFORM:
        n = UNIFORM[0]
        return image(rnd.randbytes(n - 12)) if rnd.random() < 0.5 else pg_rec(rnd.randbytes(n - 17), rnd.random() < 0.5)
    c = rnd.random()
    if c < 0.3:
        return image(rnd.randbytes(rnd.choice((0, 1, 115, 116, 117, 114, 200, 5000, 70000 if rnd.random() < 0.05 else 50))))
    return pg_rec(rnd.randbytes(rnd.choice((0, 110, 111, 112, 100, 3))), will_init=rnd.random() < 0.5)


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_flush_vs_per_value_writer(io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rnd = random.Random(seed)
    UNIFORM.clear()
    if seed % 2:
        UNIFORM.append(rnd.choice((17, 127, 128, 129, 100, 8204)))
    kind = rnd.choice(["relation", "wide", "sametail", "nul", "mixed"])
    monkeypatch.setattr(iml, "FLUSH_SLICE_RECORDS", rnd.choice((16, 100, 700, 3000, 16384)))
    monkeypatch.setattr(iml, "FLUSH_SLICE_BYTES", rnd.choice((4096, 65536, 1 << 20, 4 << 20)))
    monkeypatch.setattr(iml, "_BLOCK_SHIFT", rnd.choice((12, 13, 16)))
    monkeypatch.setattr(iml, "_BLOCK_BYTES", 1 << iml._BLOCK_SHIFT)
    monkeypatch.setattr(iml, "PREFAULT_BYTES", rnd.choice((4096, 1 << 16, 4 << 20)))
    monkeypatch.setattr(iml, "_SPLIT_RUNS_PER_STEP", rnd.choice((1, 3, 8)))
    monkeypatch.setattr(delta_layer, "SORTED_INDEX_RECORDS", rnd.choice((7, 300, 8192)))
    monkeypatch.setattr(delta_layer, "SORTED_CHUNK_RECORDS", rnd.choice((5, 700, 4096)))
    monkeypatch.setattr(delta_layer, "SORTED_WRITE_BYTES", rnd.choice((4096, 65536, 2 << 20)))
    monkeypatch.setattr(delta_layer, "SORTED_CHUNK_BYTES", rnd.choice((1000, 65536, 512 << 10)))
    released: list[tuple[int, int]] = []
    bad: list[Any] = []
    real_release = ef.MappedFile.release

    def release(self: Any, ranges: list[tuple[int, int]]) -> None:
        for a, z in ranges:
            assert a % 4096 == 0, (a, z)
        released.extend(ranges)
        real_release(self, ranges)

    monkeypatch.setattr(ef.MappedFile, "release", release)
    real_merge = iml.merge_steps

    def merge(runs: list[Entries], *a: Any) -> Iterator[Entries | None]:
        for part in real_merge(runs, *a):
            if part is not None and released:
                offs = part.offs
                ends = part.offs + part.lens
                for s, e in released:
                    hit = (offs < e) & (ends > s)
                    if hit.any():
                        bad.append((s, e))
            yield part

    monkeypatch.setattr(iml, "merge_steps", merge)
    space = keyspace(rnd, kind, rnd.choice((1, 3, 50, 2000)))
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    model: dict[bytes, dict[int, bytes]] = {}
    lsn = 10
    try:
        nb = rnd.choice((1, 2, 10, 40))
        for _ in range(nb):
            batch = []
            for _ in range(rnd.choice((1, 5, 300, 2000))):
                lsn += rnd.choice((0, 0, 1, 3))
                k = rnd.choice(space)
                v = value(rnd)
                batch.append((k, lsn, v))
                model.setdefault(k, {})[lsn] = v
            await layer.put_batch(check_put_batch(batch))
        await layer.freeze(lsn + 1)
        await assert_flush_equals_per_value_writer(io_ctx, layer, model, lsn + 1, tmp_path)
        assert not bad, bad[:5]
    finally:
        await layer.delete()
