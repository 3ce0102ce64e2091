"""Programs run as subprocesses by the crash tests (``python -m tests.helpers.children MODE ...``).

They read failpoints from ``PAGESERVER_FAILPOINTS`` and the engine from
``PAGESERVER_VIRTUAL_FILE_IO_ENGINE``, exactly as the daemon does.
"""

from __future__ import annotations

import os
import sys

import trio

from pageserver import failpoints
from pageserver.io import IoContext, create_engine
from pageserver.logging import configure_logging


def _engine_kind() -> str:
    return os.environ.get("PAGESERVER_VIRTUAL_FILE_IO_ENGINE", "std-fs")


async def crashsafe_loop(path: str, first: int, last: int) -> None:
    """Overwrite ``path`` with versions first..last; each version is one repeated byte.

    Prints ``wrote N`` after each durable overwrite so the parent knows which versions
    may be on disk.
    """
    engine = create_engine(_engine_kind())
    ctx = IoContext(engine, no_sync=True)
    for version in range(first, last + 1):
        content = bytes([version % 256]) * (100_000 + version)
        await ctx.crashsafe_overwrite(path, content)
        print(f"wrote {version}", flush=True)
    await ctx.aclose()  # closes the engine too


async def fsync_once(path: str) -> None:
    """Write and fsync a data file (no_sync off), counting failpoint hits on stderr."""
    original = failpoints._fire

    def counting(name: str) -> failpoints.Action | None:
        sys.stderr.write(f"HIT {name}\n")
        sys.stderr.flush()
        return original(name)

    failpoints._fire = counting  # type: ignore[assignment]
    engine = create_engine(_engine_kind())
    ctx = IoContext(engine, no_sync=False)
    vf = await ctx.create(path)
    await vf.write_all_at(b"data", 0)
    await vf.sync_all()
    print("fsync returned", flush=True)


async def open_once(path: str, mode: str) -> None:
    """Open ``path`` for writing (``rw``: create) or reading (``ro``) through VirtualFile."""
    ctx = IoContext(create_engine(_engine_kind()), no_sync=True)
    try:
        vf = await (ctx.create(path) if mode == "rw" else ctx.open(path))
        await vf.close()
        print("opened", flush=True)
    finally:
        await ctx.aclose()


def ingest_value(lsn: int) -> bytes:
    """Deterministic record payload for LSN ``lsn`` (the crash tests model it)."""
    from pageserver.layers.value import Image, encode_value

    return encode_value(Image(lsn.to_bytes(8, "big") * 12))


def ingest_key(lsn: int) -> bytes:
    return bytes(14) + (lsn % 97).to_bytes(4, "big")


async def ingest(data_dir: str, count: int, compact: bool = False) -> None:
    """Create tenant/timeline if needed, then put records 1..count, reporting dcl.

    With ``compact``, background compaction runs every 50 ms with low thresholds, so a
    kill lands in the middle of merges and image creation too.
    """
    from pageserver.config import PageserverConfig, TenantConfig
    from pageserver.errors import AlreadyExists
    from pageserver.tenant.manager import TenantManager

    tenant, timeline = "ab" * 16, "cd" * 16
    tenant_config = TenantConfig(checkpoint_distance=30_000)
    if compact:
        tenant_config = TenantConfig(
            checkpoint_distance=30_000,
            compaction_threshold=3,
            image_creation_threshold=2,
            compaction_period=0.05,
        )
    cfg = PageserverConfig(no_sync=False, tenant_config=tenant_config)
    engine = create_engine(_engine_kind())
    ctx = IoContext(engine, no_sync=False)
    async with TenantManager.open(ctx, data_dir, cfg) as mgr:
        try:
            await mgr.create_tenant(tenant)
            await mgr.create_timeline(tenant, timeline, 0)
        except AlreadyExists:
            pass
        last_dcl = -1
        start = mgr.status()[0]["timelines"][0]["last_record_lsn"] + 1
        for lsn in range(start, count + 1):
            res = await mgr.put(tenant, timeline, [(ingest_key(lsn), lsn, ingest_value(lsn))])
            if res.disk_consistent_lsn != last_dcl:
                last_dcl = res.disk_consistent_lsn
                print(f"dcl {last_dcl}", flush=True)
        print(f"flushed {await mgr.flush(tenant, timeline)}", flush=True)


def main() -> None:
    configure_logging()
    mode = sys.argv[1]
    if mode == "crashsafe":
        trio.run(crashsafe_loop, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "ingest":
        trio.run(ingest, sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["compact"])
    elif mode == "fsync":
        trio.run(fsync_once, sys.argv[2])
    elif mode == "open":
        trio.run(open_once, sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
