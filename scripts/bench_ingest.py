#!/usr/bin/env python3
"""Ingest straight into a timeline (no socket): records/s, MiB/s and peak RSS, per engine.

    python scripts/bench_ingest.py --records 1000000 --value-size 100
    python scripts/bench_ingest.py --gib 2 --value-size 8192

Each engine runs in a fresh subprocess so that peak RSS (``ru_maxrss``) is per engine.
The timeline uses the default ``checkpoint_distance`` (256 MiB), so the figure includes
layer rolls and flushes (and the final flush) in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(args: argparse.Namespace) -> None:
    import trio

    from pageserver.config import PageserverConfig
    from pageserver.io import IoContext, create_engine
    from pageserver.layers.value import Image, encode_value
    from pageserver.logging import configure_logging
    from pageserver.tenant.manager import TenantManager

    configure_logging("kv", 30)
    tenant, timeline = "ab" * 16, "cd" * 16
    value_size = args.value_size
    count = args.records or (int(args.gib * 2**30) // value_size)
    batch = args.batch
    nkeys = args.keys

    async def main() -> dict[str, float]:
        engine = create_engine(args.engine)
        ctx = IoContext(engine, no_sync=args.no_sync)
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            async with TenantManager.open(ctx, d, PageserverConfig(no_sync=args.no_sync)) as mgr:
                await mgr.create_tenant(tenant)
                await mgr.create_timeline(tenant, timeline)
                payload = encode_value(Image(b"\xa5" * value_size))
                # Keys are made per batch, not kept: the benchmark must not hold memory of
                # its own that would be counted as the server's (10M keys are ~600 MiB).
                prefix = bytes(14)
                t0 = time.perf_counter()
                lsn = 1
                done = 0
                while done < count:
                    n = min(batch, count - done)
                    recs = [
                        (prefix + ((done + i) % nkeys).to_bytes(4, "big"), lsn, payload)
                        for i in range(n)
                    ]
                    await mgr.put(tenant, timeline, recs)
                    done += n
                    lsn += 1
                t_ingest = time.perf_counter() - t0
                await mgr.flush(tenant, timeline)
                t_total = time.perf_counter() - t0
                layers = mgr.status()[0]["timelines"][0]["layers"]
        await ctx.aclose()  # closes the engine too
        return {
            "records": count,
            "ingest_s": t_ingest,
            "total_s": t_total,
            "records_per_s": count / t_total,
            "mib_per_s": count * value_size / t_total / 2**20,
            "l0_layers": layers["l0"],
        }

    result = trio.run(main)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=0)
    p.add_argument("--gib", type=float, default=0.25)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000, help="records per put (one LSN per put)")
    p.add_argument("--keys", type=int, default=100_000, help="distinct keys")
    p.add_argument("--engines", default="std-fs,trio-uring")
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help="where to put the data dir (default: $TMPDIR)")
    p.add_argument("--sync", dest="no_sync", action="store_false", help="really fsync")
    args = p.parse_args()
    if args.engine:
        child(args)
        return
    rows = []
    for engine in args.engines.split(","):
        cmd = [sys.executable, __file__, "--engine", engine] + [
            a for a in sys.argv[1:] if not a.startswith("--engines")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"{engine} failed")
        rows.append((engine, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"{'engine':<11} {'records':>10} {'rec/s':>10} {'MiB/s':>8} {'total s':>8} {'peak RSS MiB':>13} {'L0':>4}")
    for engine, r in rows:
        print(
            f"{engine:<11} {r['records']:>10} {r['records_per_s']:>10.0f} {r['mib_per_s']:>8.1f} "
            f"{r['total_s']:>8.2f} {r['peak_rss_mib']:>13.0f} {r['l0_layers']:>4}"
        )
    if len(rows) == 2:
        print(f"ratio {rows[1][0]}/{rows[0][0]} records/s: {rows[1][1]['records_per_s'] / rows[0][1]['records_per_s']:.2f}")


if __name__ == "__main__":
    main()
