#!/usr/bin/env python3
"""``get`` latency on a large open (and then frozen) in-memory layer, in process.

    python scripts/bench_inmemory_get.py [--records 1000000] [--keys 100000] [--gets 20000]
                                         [--engine std-fs] [--batch 1000]

Fills one open layer of a timeline (no roll: checkpoint_distance is huge) with ``--records``
images of 100 bytes in ``--batch``-record puts, then times ``Timeline.get`` of random keys
at the last LSN (what the index lookup in the sorted runs plus the tail costs, and the
value read from the ephemeral file), prints p50/p99/max. A frozen layer's index is the same
structure (its tail sorted into one more run). Also prints the index's
run count and the time per put.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--gets", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--engine", default="std-fs")
    args = ap.parse_args()

    import trio

    from pageserver.client.feed import FeedGenerator
    from pageserver.config import PageserverConfig
    from pageserver.io import IoContext, create_engine
    from pageserver.layers.batch import PutColumns, check_put_columns
    from pageserver.logging import configure_logging
    from pageserver.tenant.manager import TenantManager

    configure_logging("kv", 30)
    tenant, timeline = "ab" * 16, "cd" * 16
    gen = FeedGenerator(count=args.records, keys=args.keys, value_size=100)

    def pct(xs: list[float], q: float) -> float:
        s = sorted(xs)
        return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1e6

    async def timed_gets(mgr: TenantManager, last: int, label: str) -> None:
        rng = random.Random(7)
        lat = []
        for _ in range(args.gets):
            k = gen.key(rng.randrange(args.keys))
            t0 = time.perf_counter()
            v = await mgr.get(tenant, timeline, k, last)
            lat.append(time.perf_counter() - t0)
            assert v is not None
        print(
            f"  get ({label}): p50 {pct(lat, 50):.1f} us  p99 {pct(lat, 99):.1f} us  "
            f"max {max(lat) * 1e6:.1f} us  ({args.gets} gets)"
        )

    async def run() -> None:
        ctx = IoContext(create_engine(args.engine), no_sync=True)
        d = tempfile.mkdtemp()
        try:
            async with TenantManager.open(ctx, d, PageserverConfig(no_sync=True, metrics_addr="")) as mgr:
                await mgr.create_tenant(
                    tenant, {"checkpoint_distance": 1 << 40, "checkpoint_timeout": "24h"}
                )
                await mgr.create_timeline(tenant, timeline)
                batches = []
                for i in range(0, args.records, args.batch):
                    recs = [gen.record(j) for j in range(i, min(args.records, i + args.batch))]
                    batches.append(check_put_columns(**PutColumns.from_records(recs).wire_fields()))
                t0 = time.perf_counter()
                for b in batches:
                    await mgr.put(tenant, timeline, b)
                put_s = time.perf_counter() - t0
                tl = mgr.timeline(tenant, timeline)
                layer = tl.open_layer
                assert layer is not None
                last = gen.lsn_of(args.records - 1)
                print(
                    f"{args.records} records in one open layer ({args.keys} keys, batches of "
                    f"{args.batch}, {args.engine}): put {put_s / args.records * 1e6:.2f} us/record, "
                    f"{layer.num_runs} sorted runs"
                )
                await timed_gets(mgr, last, "open layer")
                # The index lookup alone (no value read): the sorted runs and the tail.
                rng = random.Random(8)
                lat = []
                for _ in range(args.gets):
                    k = gen.key(rng.randrange(args.keys))
                    t0 = time.perf_counter()
                    layer.entries_for(k, last + 1)
                    lat.append(time.perf_counter() - t0)
                print(
                    f"  index lookup: p50 {pct(lat, 50):.1f} us  p99 {pct(lat, 99):.1f} us  "
                    f"max {max(lat) * 1e6:.1f} us"
                )
        finally:
            await ctx.aclose()
            shutil.rmtree(d, ignore_errors=True)

    trio.run(run)


if __name__ == "__main__":
    main()
