"""Shared helpers for tenant/timeline tests: keys, values, a reference model."""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from pageserver.config import PageserverConfig, TenantConfig
from pageserver.io import IoContext, create_engine
from pageserver.layers.common import LayerInfo
from pageserver.layers.delta_layer import DeltaLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.layers.value import Image, PostgresRecord, TestRecord, encode_value
from pageserver.tenant.inmemory_layer import InMemoryLayer
from pageserver.tenant.manager import TenantManager

TENANT = "0123456789abcdef0123456789abcdef"
TIMELINE = "fedcba9876543210fedcba9876543210"


def key(i: int) -> bytes:
    return bytes([0]) + struct.pack(">IIIBI", 1663, 1, i // 7, 0, i)


def image(data: bytes) -> bytes:
    return encode_value(Image(data))


def trec(append: str, *, clear: bool = False, will_init: bool = False, only_if: str | None = None) -> bytes:
    return encode_value(TestRecord(append, clear, will_init, only_if))


def pg_rec(data: bytes, will_init: bool = False) -> bytes:
    return encode_value(PostgresRecord(will_init, data))


def config(checkpoint_distance: int = 268435456, checkpoint_timeout: float = 600.0) -> PageserverConfig:
    return PageserverConfig(
        no_sync=True,
        tenant_config=TenantConfig(
            checkpoint_distance=checkpoint_distance, checkpoint_timeout=checkpoint_timeout
        ),
    )


@asynccontextmanager
async def manager(
    engine_kind: str,
    data_dir: Path,
    cfg: PageserverConfig | None = None,
    fds: int = 100,
    *,
    flush_on_exit: bool = True,
) -> AsyncIterator[TenantManager]:
    cfg = cfg or config()
    engine = create_engine(engine_kind)
    assert engine.kind == engine_kind
    ctx = IoContext(engine, max_file_descriptors=fds, no_sync=cfg.no_sync)
    try:
        async with TenantManager.open(ctx, data_dir, cfg, flush_on_exit=flush_on_exit) as mgr:
            yield mgr
    finally:
        await ctx.aclose()  # closes the engine too


def leftover_files(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that no clean stop or restart may leave in a timeline
    directory: temp files (``*.___temp``) and ephemeral files (``ephemeral-*``). Spelled
    as SPEC section 3 spells them, not taken from the server's constants."""
    return [n for n in names if n.endswith("___temp") or n.startswith("ephemeral-")]


class Model:
    """A plain dict model of what ``get`` must return: key -> [(lsn, value bytes)]."""

    def __init__(self) -> None:
        self.history: dict[bytes, list[tuple[int, bytes]]] = {}

    def put(self, k: bytes, lsn: int, value: bytes) -> None:
        hist = self.history.setdefault(k, [])
        if hist and hist[-1][0] == lsn:
            hist[-1] = (lsn, value)
        else:
            hist.append((lsn, value))

    def truncate_above(self, lsn: int) -> None:
        for k in list(self.history):
            self.history[k] = [(lsn_, v) for lsn_, v in self.history[k] if lsn_ <= lsn]

    def get(self, k: bytes, lsn: int) -> bytes | None:
        from pageserver.layers.value import decode_value, materialize

        recs = [v for lsn_, v in self.history.get(k, []) if lsn_ <= lsn]
        if not recs:
            return None
        # Start from the newest will_init record.
        start = 0
        for i in range(len(recs) - 1, -1, -1):
            dv = decode_value(recs[i])
            if dv.will_init:
                start = i
                break
        return materialize(None, [decode_value(v) for v in recs[start:]])


async def assert_flush_equals_per_value_writer(
    io_ctx: IoContext,
    layer: InMemoryLayer,
    model: dict[bytes, dict[int, bytes]],
    lsn_end: int,
    tmp_path: Path,
) -> LayerInfo:
    """Flush the frozen ``layer`` (``write_delta_layer``) and assert its file is byte for
    byte what ``DeltaLayerWriter.put_value`` writes for ``model`` ({key: {lsn: value}}, the
    last arrival of a (key, lsn) kept), from LSN 10 to ``lsn_end``; the flushed layer."""
    tid = TenantId.parse("0123456789abcdef0123456789abcdef")
    tlid = TimelineId.parse("fedcba9876543210fedcba9876543210")
    (tmp_path / "flush").mkdir()
    (tmp_path / "ref").mkdir()
    info = await layer.write_delta_layer(str(tmp_path / "flush"), tid, tlid)
    w = DeltaLayerWriter(io_ctx, str(tmp_path / "ref"), tid, tlid, Key.MIN, 10, lsn_end)
    async with w:
        for k in sorted(model):
            for x in sorted(model[k]):
                await w.put_value(k, x, model[k][x])
        ref = await w.finish(Key.MAX)
    assert Path(info.path).read_bytes() == Path(ref.path).read_bytes()
    return info


async def frozen_layer(
    ctx: IoContext, directory: str, rnd: random.Random, batches: int, per_batch: int,
    record: Callable[[random.Random], tuple[int, bytes]],
) -> InMemoryLayer:  # fmt: skip
    """An in-memory layer starting at LSN 10, fed ``batches`` checked puts of
    ``per_batch`` records (each record its own LSN; ``record(rnd)`` gives its key index
    and encoded value), then frozen."""
    from pageserver.layers.batch import check_put_batch

    layer = await InMemoryLayer.create(ctx, directory, 0, 10)
    lsn = 10
    for _ in range(batches):
        batch = []
        for _ in range(per_batch):
            lsn += 1
            k, v = record(rnd)
            batch.append((key(k), lsn, v))
        await layer.put_batch(check_put_batch(batch))
    await layer.freeze(lsn + 1)
    return layer
