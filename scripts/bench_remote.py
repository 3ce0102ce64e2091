#!/usr/bin/env python3
"""Remote storage figures (issue 13), against a real S3 server (SeaweedFS, started here).

    .venv/bin/python scripts/bench_remote.py [--engine trio-uring] [--mib 64] [--json]

1. **upload MiB/s**: layers written without remote storage, then the pageserver restarted
   with ``[remote_storage]``: startup reconciliation schedules every layer for upload; the
   time until ``remote_consistent_lsn`` reaches ``disk_consistent_lsn`` over the layer bytes.
   Baselines, same bytes, same server: plain ``obstore.put`` of each file, one after another
   and ``concurrency_limit`` at a time (threads).
2. **attach time**: ``tenant_attach`` of tenants with the same layer count and 64x different
   bytes, and with 4x the layer count (attach lists and reads indexes; no layer bytes move).
3. **on-demand download latency**: after an attach, each remote-only layer made resident
   (fetch, write through VirtualFile in a run_job, fsync, rename), one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import obstore  # noqa: E402
import trio  # noqa: E402

from pageserver.config import PageserverConfig, RemoteStorageConfig, TenantConfig  # noqa: E402
from pageserver.io import IoContext, create_engine  # noqa: E402
from pageserver.layers.value import Image, encode_value  # noqa: E402
from pageserver.tenant.manager import TenantManager  # noqa: E402
from tests.helpers.seaweed import SeaweedFS  # noqa: E402

TL = "fedcba9876543210fedcba9876543210"


def key(i: int) -> bytes:
    return bytes([0]) + (1663).to_bytes(4, "big") + (1).to_bytes(4, "big") + (i // 7).to_bytes(4, "big") + b"\0" + i.to_bytes(4, "big")


def config(remote: RemoteStorageConfig | None, layer_bytes: int) -> PageserverConfig:
    return PageserverConfig(
        no_sync=True, remote_storage=remote,
        tenant_config=TenantConfig(checkpoint_distance=layer_bytes, compaction_period=0.0),
    )  # fmt: skip


async def open_mgr(engine: str, data: Path, cfg: PageserverConfig):  # type: ignore[no-untyped-def]
    ctx = IoContext(create_engine(engine), no_sync=True)
    cm = TenantManager.open(ctx, data, cfg)
    mgr = await cm.__aenter__()
    return ctx, cm, mgr


async def close_mgr(ctx: IoContext, cm) -> None:  # type: ignore[no-untyped-def]
    await cm.__aexit__(None, None, None)
    await ctx.aclose()


async def make_layers(
    mgr: TenantManager, tenant: str, total_bytes: int, value_size: int, layer_bytes: int
) -> int:
    await mgr.create_tenant(tenant)
    await mgr.create_timeline(tenant, TL)
    n = max(1, total_bytes // value_size)
    payload = encode_value(Image(os.urandom(value_size)))
    lsn = 1
    # A layer rolls at an LSN boundary: a few LSNs per layer keeps layers near layer_bytes.
    per_lsn = max(1, min(256, layer_bytes // value_size // 8))
    for start in range(0, n, per_lsn):
        batch = [(key(i % 5000), lsn, payload) for i in range(start, min(n, start + per_lsn))]
        # one LSN per batch, distinct keys within it
        batch = list({k: (k, lsn, v) for k, _l, v in batch}.values())
        await mgr.put(tenant, TL, batch)
        lsn += 1
    return await mgr.flush(tenant, TL)


async def wait_rcl(mgr: TenantManager, tenant: str, lsn: int) -> None:
    while True:
        st = mgr.status(tenant)[0]["timelines"][0]
        if st["remote_consistent_lsn"] is not None and st["remote_consistent_lsn"] >= lsn:
            return
        await trio.sleep(0.01)


async def run(args: argparse.Namespace) -> dict[str, object]:
    w = SeaweedFS()
    w.start()
    os.environ.update(w.env)
    root = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    out: dict[str, object] = {"engine": args.engine}
    try:
        remote = RemoteStorageConfig(
            bucket_name=w.bucket, endpoint=w.endpoint, prefix_in_bucket="bench",
            concurrency_limit=args.concurrency, timeout=60.0,
        )  # fmt: skip
        layer_bytes = 8 << 20
        # 1. upload
        data = root / "up"
        ctx, cm, mgr = await open_mgr(args.engine, data, config(None, layer_bytes))
        t_up = "11111111111111111111111111111111"
        dcl = await make_layers(mgr, t_up, args.mib << 20, 8192, layer_bytes)
        await close_mgr(ctx, cm)
        files = sorted((data / "tenants" / t_up / "timelines" / TL).glob("0*"))
        nbytes = sum(f.stat().st_size for f in files)
        t_start = time.perf_counter()
        ctx, cm, mgr = await open_mgr(args.engine, data, config(remote, layer_bytes))
        # (startup validated the layer files and scheduled them; the uploads start now)
        t0 = time.perf_counter()
        await wait_rcl(mgr, t_up, dcl)
        up_s = time.perf_counter() - t0
        with_startup_s = time.perf_counter() - t_start
        await close_mgr(ctx, cm)
        # (the restart renamed each file to its generation's local name)
        files = sorted((data / "tenants" / t_up / "timelines" / TL).glob("0*"))
        blobs = [f.read_bytes() for f in files]
        assert sum(map(len, blobs)) == nbytes
        store = obstore.store.S3Store(
            w.bucket, endpoint=w.endpoint, region="us-east-1", client_options={"allow_http": True},
            access_key_id=w.env["AWS_ACCESS_KEY_ID"], secret_access_key=w.env["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip
        t0 = time.perf_counter()
        for i, b in enumerate(blobs):
            obstore.put(store, f"baseline/seq/{i}", b)
        seq_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda ib: obstore.put(store, f"baseline/par/{ib[0]}", ib[1]), enumerate(blobs)))
        par_s = time.perf_counter() - t0
        mib = nbytes / 2**20
        out["upload"] = {
            "layers": len(files), "mib": round(mib, 1),
            "pageserver_mib_s": round(mib / up_s, 1),
            "obstore_sequential_mib_s": round(mib / seq_s, 1),
            "obstore_parallel_mib_s": round(mib / par_s, 1),
            "pageserver_incl_startup_mib_s": round(mib / with_startup_s, 1),
        }  # fmt: skip
        # 2. attach time, 3. download latency
        attach: list[dict[str, object]] = []
        for label, layers, value_size, per_layer in (
            ("32 layers x 64 KiB", 32, 1024, 64 << 10),
            ("32 layers x 4 MiB", 32, 8192, 4 << 20),
            ("128 layers x 64 KiB", 128, 1024, 64 << 10),
        ):
            tenant = f"{len(attach) + 2:032x}"
            d = root / f"src{len(attach)}"
            ctx, cm, mgr = await open_mgr(args.engine, d, config(remote, per_layer))
            dcl = await make_layers(mgr, tenant, layers * per_layer, value_size, per_layer)
            await wait_rcl(mgr, tenant, dcl)
            nlayers = len(mgr.timeline(tenant, TL).layer_map.layers)
            await close_mgr(ctx, cm)
            # (the source keeps its claim; the attach below takes a newer generation)
            d2 = root / f"dst{len(attach)}"
            ctx, cm, mgr = await open_mgr(args.engine, d2, config(remote, per_layer))
            t0 = time.perf_counter()
            await mgr.attach_tenant(tenant)
            attach_s = time.perf_counter() - t0
            tl = mgr.timeline(tenant, TL)
            lat = []
            for hl in list(tl.layer_map.layers):
                t0 = time.perf_counter()
                await tl.layer_map.make_resident(hl)
                lat.append(time.perf_counter() - t0)
            await close_mgr(ctx, cm)
            lat.sort()
            attach.append({
                "tenant": label, "layers": nlayers,
                "mib": round(sum(hl.file_size for hl in tl.layer_map.layers) / 2**20, 1),
                "attach_ms": round(attach_s * 1000, 1),
                "download_p50_ms": round(statistics.median(lat) * 1000, 1),
                "download_max_ms": round(lat[-1] * 1000, 1),
            })  # fmt: skip
        out["attach"] = attach
    finally:
        w.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    import logging

    from pageserver.logging import configure_logging

    configure_logging("kv", logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="trio-uring")
    p.add_argument("--mib", type=int, default=64, help="layer MiB for the upload figure")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = trio.run(run, args)
    if args.json:
        print(json.dumps(out))
        return
    u = out["upload"]
    assert isinstance(u, dict)
    print(f"engine {out['engine']}")
    print(
        f"upload of {u['layers']} layers, {u['mib']} MiB: pageserver {u['pageserver_mib_s']} MiB/s "
        f"({u['pageserver_incl_startup_mib_s']} MiB/s counting its restart), "
        f"obstore.put sequential {u['obstore_sequential_mib_s']} "
        f"MiB/s, parallel {u['obstore_parallel_mib_s']} MiB/s"
    )
    print(f"{'tenant':24} {'layers':>6} {'MiB':>7} {'attach ms':>10} {'dl p50 ms':>10} {'dl max ms':>10}")
    for a in out["attach"]:  # type: ignore[attr-defined]
        print(
            f"{a['tenant']:24} {a['layers']:>6} {a['mib']:>7} {a['attach_ms']:>10} "
            f"{a['download_p50_ms']:>10} {a['download_max_ms']:>10}"
        )


if __name__ == "__main__":
    main()
