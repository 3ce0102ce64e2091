#!/usr/bin/env python3
"""Layer-writing benchmark: entries/s and MiB/s of delta layer writes, per engine.

For each engine and value size it writes one delta layer through ``ctx.run_job`` (the
path flushes take) and, as baselines in the same run, the same number of bytes
(a) through the same engine's buffered writer in 1 MiB appends (no per-record work) and
(b) with plain ``os.write`` of 1 MiB chunks from this thread (``fio``-style). Every
variant ends with one fsync unless ``--no-sync``; the layer's directory fsync is included.

    .venv/bin/python scripts/bench_layers.py                 # 1M x 100 B, 100k x 8 KiB
    .venv/bin/python scripts/bench_layers.py --small-entries 200000 --large-entries 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pageserver.io import (  # noqa: E402  # noqa: E402
    STD_FS,
    TRIO_URING,
    BufferedWriter,
    IoContext,
    create_engine,
    uring_refusal_reason,
)
from pageserver.layers.delta_layer import DeltaLayerWriter  # noqa: E402
from pageserver.layers.key import Key, TenantId, TimelineId  # noqa: E402
from pageserver.layers.value import Image, encode_value  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Result:
    engine: str
    case: str
    entries: int
    nbytes: int
    seconds: float

    @property
    def mib_s(self) -> float:
        return self.nbytes / MIB / self.seconds

    @property
    def entries_s(self) -> float:
        return self.entries / self.seconds if self.entries else 0.0


def make_keys(n: int) -> list[bytes]:
    # Realistic-looking relation block keys: long shared prefixes, as in Neon.
    base = Key.from_fields(0, 1663, 16384, 24576, 0, 0)
    b = base.to_int()
    return [(b + i).to_bytes(18, "big") for i in range(n)]


async def write_delta(
    ctx: IoContext, d: str, keys: list[bytes], value: bytes, batched: bool = False
) -> tuple[str, int]:
    async def job() -> tuple[str, int]:
        w = DeltaLayerWriter(
            ctx, d, TenantId(bytes(16)), TimelineId(bytes(16)), Key.MIN, 0x100, 0x200
        )
        if batched:
            batch = 4096
            for i in range(0, len(keys), batch):
                await w.put_values([(k, 0x100, value) for k in keys[i : i + batch]])
        else:
            put = w.put_value
            for k in keys:
                await put(k, 0x100, value, True)
        info = await w.finish(Key.MAX)
        return info.path, info.file_size

    return await ctx.run_job(job)


async def raw_buffered(ctx: IoContext, path: str, nbytes: int) -> None:
    chunk = os.urandom(MIB)

    async def job() -> None:
        vf = await ctx.create_new(path)
        bw = BufferedWriter(vf, 256 * 1024)
        left = nbytes
        while left > 0:
            await bw.write(chunk[: min(left, MIB)])
            left -= MIB
        await bw.finish()
        await vf.sync_all()
        await vf.close()

    await ctx.run_job(job)


def raw_os_write(path: str, nbytes: int, sync: bool) -> None:
    chunk = os.urandom(MIB)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, chunk[: min(left, MIB)])
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


async def bench_engine(
    kind: str, cases: list[tuple[str, int, int]], base: Path, no_sync: bool
) -> list[Result]:
    engine = create_engine(kind)
    ctx = IoContext(engine, no_sync=no_sync)
    out: list[Result] = []
    try:
        for label, n, size in cases:
            keys = make_keys(n)
            value = encode_value(Image(os.urandom(size - 12)))  # size bytes encoded
            d = base / f"{kind}-{label}"
            d.mkdir()
            t0 = time.perf_counter()
            path, file_size = await write_delta(ctx, str(d), keys, value)
            dt = time.perf_counter() - t0
            out.append(Result(kind, f"delta {label}", n, file_size, dt))
            os.unlink(path)
            if size < 1024:
                # The batch API (what a flush of a frozen layer can use).
                t0 = time.perf_counter()
                path, file_size = await write_delta(ctx, str(d), keys, value, batched=True)
                dt = time.perf_counter() - t0
                out.append(Result(kind, f"delta {label} batched", n, file_size, dt))
                os.unlink(path)
            raw = str(d / "raw")
            t0 = time.perf_counter()
            await raw_buffered(ctx, raw, file_size)
            out.append(Result(kind, f"raw buffered {label}", 0, file_size, time.perf_counter() - t0))
            os.unlink(raw)
            if kind == STD_FS:
                t0 = time.perf_counter()
                raw_os_write(raw, file_size, not no_sync)
                dt = time.perf_counter() - t0
                out.append(Result("os.write", f"raw sequential {label}", 0, file_size, dt))
                os.unlink(raw)
            del keys
    finally:
        await ctx.aclose()  # closes the engine too
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small-entries", type=int, default=1_000_000)
    p.add_argument("--small-size", type=int, default=100, help="encoded value bytes")
    p.add_argument("--large-entries", type=int, default=100_000)
    p.add_argument("--large-size", type=int, default=8192, help="encoded value bytes")
    p.add_argument("--engines", default=f"{STD_FS},{TRIO_URING}")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir in .)")
    p.add_argument("--no-sync", action="store_true", help="skip the fsyncs")
    args = p.parse_args()

    engines = [e for e in args.engines.split(",") if e]
    if TRIO_URING in engines and (reason := uring_refusal_reason()) is not None:
        print(f"skipping trio-uring: {reason}", file=sys.stderr)
        engines.remove(TRIO_URING)
    cases = [
        (f"{args.small_size}B", args.small_entries, args.small_size),
        (f"{args.large_size // 1024}KiB" if args.large_size % 1024 == 0 else f"{args.large_size}B",
         args.large_entries, args.large_size),
    ]  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="bench-layers-", dir=args.dir or "."))
    results: list[Result] = []
    try:
        for kind in engines:
            results += trio.run(bench_engine, kind, cases, base, args.no_sync)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"{'engine':<11} {'case':<24} {'entries':>9} {'MiB':>8} {'seconds':>8} "
          f"{'entries/s':>11} {'MiB/s':>8}")  # fmt: skip
    for r in results:
        ent = f"{r.entries_s:>11,.0f}" if r.entries else f"{'':>11}"
        print(
            f"{r.engine:<11} {r.case:<24} {r.entries:>9} {r.nbytes / MIB:>8.1f} "
            f"{r.seconds:>8.3f} {ent} {r.mib_s:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
