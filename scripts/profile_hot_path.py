#!/usr/bin/env python3
"""Per-record cost of each step of the ingest hot path, in process (no socket).

    python scripts/profile_hot_path.py [--records 1000000] [--keys 100000] [--value-size 100]
                                       [--engine std-fs] [--batch 1000]

Steps, each timed over all records and printed in microseconds per record:

* ``decode``: ``msgpack.unpackb`` of the ``put`` frames (what the server's framer does);
* ``parse+check``: ``parse_request`` of the same frames (decode, field checks, the one batch
  check), for the ``records`` form and, where the wire has it, the columnar form;
* ``put``: ``TenantManager.put`` of the checked batches (ephemeral append + index), no roll;
* ``flush``: ``TenantManager.flush`` of the whole layer (sort, blobs, B-tree, writes).

The frames are built before any clock starts. Run it before and after a change to the hot
path, on a quiet machine (figures are CPU time of one core; other load inflates them).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--engine", default="std-fs")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()

    import msgpack
    import trio

    from pageserver.client.feed import FeedGenerator
    from pageserver.config import PageserverConfig
    from pageserver.io import IoContext, create_engine
    from pageserver.logging import configure_logging
    from pageserver.tenant.manager import TenantManager
    from pageserver.wire import encode_request, parse_request

    configure_logging("kv", 30)
    tenant, timeline = "ab" * 16, "cd" * 16
    gen = FeedGenerator(count=args.records, keys=args.keys, value_size=args.value_size)
    recs = [gen.record(i) for i in range(args.records)]
    batches = [recs[i : i + args.batch] for i in range(0, len(recs), args.batch)]
    n = len(recs)
    del recs
    frames = [
        encode_request("put", tenant_id=tenant, timeline_id=timeline, records=b)[4:]
        for b in batches
    ]
    col_frames: list[bytes] = []
    try:
        from pageserver.layers.batch import PutColumns  # the columnar form, where it exists

        col_frames = [
            encode_request(
                "put", tenant_id=tenant, timeline_id=timeline,
                **PutColumns.from_records(b).wire_fields(),
            )[4:]
            for b in batches
        ]  # fmt: skip
    except ImportError:
        pass
    del batches
    out: dict[str, float] = {}

    def timed(name: str, fn, *a):  # type: ignore[no-untyped-def]
        gc.collect()
        t0 = time.process_time()
        r = fn(*a)
        out[name] = (time.process_time() - t0) / n * 1e6
        return r

    timed("decode (records form)", lambda: [msgpack.unpackb(f, use_list=False) for f in frames])
    parsed = timed("parse+check (records form)", lambda: [parse_request(f) for f in frames])
    if col_frames:
        timed("decode (columnar form)", lambda: [msgpack.unpackb(f) for f in col_frames])
        parsed = timed("parse+check (columnar form)", lambda: [parse_request(f) for f in col_frames])
    frames, col_frames = [], []
    gc.collect()

    async def run() -> None:
        engine = create_engine(args.engine)
        ctx = IoContext(engine, no_sync=True)
        d = tempfile.mkdtemp(dir=args.dir)
        try:
            async with TenantManager.open(ctx, d, PageserverConfig(no_sync=True, metrics_addr="")) as mgr:
                await mgr.create_tenant(
                    tenant, {"checkpoint_distance": 1 << 40, "checkpoint_timeout": "24h"}
                )
                await mgr.create_timeline(tenant, timeline)
                t0 = time.process_time()
                w0 = time.perf_counter()
                for req in parsed:
                    await mgr.put(tenant, timeline, req.records)
                out["put (append + index)"] = (time.process_time() - t0) / n * 1e6
                out["put wall"] = (time.perf_counter() - w0) / n * 1e6
                t0 = time.process_time()
                w0 = time.perf_counter()
                await mgr.flush(tenant, timeline)
                out["flush (cpu, all threads)"] = (time.process_time() - t0) / n * 1e6
                out["flush wall"] = (time.perf_counter() - w0) / n * 1e6
        finally:
            await ctx.aclose()
            shutil.rmtree(d, ignore_errors=True)

    trio.run(run)
    print(f"{n} records x {args.value_size} B, {args.keys} keys, batches of {args.batch}, {args.engine}")
    for name, us in out.items():
        print(f"  {name:32s} {us:7.3f} us/record")


if __name__ == "__main__":
    main()
