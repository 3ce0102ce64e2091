#!/usr/bin/env python3
"""Micro-benchmark: small and large writes through four paths, in one run.

For 8 KiB and 128 KiB writes (sequential offsets into a fresh file in a temp dir) it
prints per-op latency (mean, p50, p99) and MiB/s for:

* ``pwrite``         direct blocking ``os.pwrite`` in a loop (the floor: one syscall per op)
* ``to_thread``      ``await trio.to_thread.run_sync(os.pwrite, ...)`` one at a time
                     (the std-fs engine's per-op offload pattern, which layer writes avoid)
* ``uring qd=1``     ``await engine.write_at(...)`` one at a time on the trio loop
* ``uring qd=N``     N tasks writing concurrently (default 32): batching at work

Writes land in the page cache (no fsync), so this measures per-op software overhead, not
the disk. Usage: ``scripts/bench_uring_micro.py [--mib 64] [--tasks 32] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pageserver.io import UringEngine, uring_refusal_reason  # noqa: E402

Row = tuple[str, int, int, list[int], float, str]


def summarize(name: str, size: int, lat_ns: list[int], elapsed: float, extra: str = "") -> Row:
    return (name, size, len(lat_ns), lat_ns, elapsed, extra)


def bench_pwrite(path: str, size: int, count: int) -> Row:
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    data = os.urandom(size)
    lat = []
    pc = time.perf_counter_ns
    t0 = time.perf_counter()
    for i in range(count):
        s = pc()
        os.pwrite(fd, data, i * size)
        lat.append(pc() - s)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return summarize("pwrite", size, lat, elapsed)


async def bench_to_thread(path: str, size: int, count: int) -> Row:
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    data = os.urandom(size)
    lat = []
    pc = time.perf_counter_ns
    t0 = time.perf_counter()
    for i in range(count):
        s = pc()
        await trio.to_thread.run_sync(os.pwrite, fd, data, i * size)
        lat.append(pc() - s)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return summarize("to_thread", size, lat, elapsed)


async def bench_uring(path: str, size: int, count: int, tasks: int) -> Row:
    engine = UringEngine()
    fd = await engine.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    data = os.urandom(size)
    lat: list[int] = []
    pc = time.perf_counter_ns
    stats = engine.ring_stats()
    assert stats is not None  # the open above started the run's ring
    enters0, ops0 = stats.enters, stats.submitted

    async def worker(first: int) -> None:
        write_at = engine.write_at
        for i in range(first, count, tasks):
            s = pc()
            await write_at(fd, data, i * size)
            lat.append(pc() - s)

    t0 = time.perf_counter()
    if tasks == 1:
        await worker(0)
    else:
        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(worker, t)
    elapsed = time.perf_counter() - t0
    ops = stats.submitted - ops0
    extra = f"{ops / max(1, stats.enters - enters0):.1f} ops/enter"
    await engine.close(fd)
    await engine.aclose()
    return summarize(f"uring qd={tasks}", size, lat, elapsed, extra)


def print_rows(rows: list[Row]) -> None:
    hdr = f"{'case':<14}{'size':>8}{'ops':>8}{'mean us':>10}{'p50 us':>9}{'p99 us':>9}{'MiB/s':>9}  note"
    print(hdr)
    print("-" * len(hdr))
    for name, size, n, lat, elapsed, extra in rows:
        lat_sorted = sorted(lat)
        p50 = lat_sorted[len(lat_sorted) // 2] / 1000
        p99 = lat_sorted[min(len(lat_sorted) - 1, int(len(lat_sorted) * 0.99))] / 1000
        mean = statistics.fmean(lat) / 1000
        mibs = n * size / elapsed / (1 << 20)
        print(
            f"{name:<14}{size // 1024:>6}Ki{n:>8}{mean:>10.1f}{p50:>9.1f}{p99:>9.1f}"
            f"{mibs:>9.0f}  {extra}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB written per case (max 256)")
    ap.add_argument("--tasks", type=int, default=32, help="concurrent tasks for qd=N")
    ap.add_argument("--dir", default=None, help="directory for the temp files")
    ap.add_argument("--sizes", default="8,128", help="write sizes in KiB, comma-separated")
    args = ap.parse_args()
    mib = max(1, min(args.mib, 256))
    reason = uring_refusal_reason()
    if reason is not None:
        print(f"io_uring unavailable: {reason}", file=sys.stderr)
        return 1
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-uring-") as d:
        path = os.path.join(d, "f")
        for kib in (int(s) for s in args.sizes.split(",")):
            size = kib * 1024
            count = (mib << 20) // size

            rows.append(bench_pwrite(path, size, count))
            os.unlink(path)
            rows.append(trio.run(bench_to_thread, path, size, count))
            os.unlink(path)
            for tasks in (1, args.tasks):
                rows.append(trio.run(bench_uring, path, size, count, tasks))
                os.unlink(path)
    print(f"{mib} MiB per case, page-cache writes (no fsync), python {sys.version.split()[0]}")
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
