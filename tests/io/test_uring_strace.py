"""Observed, not assumed: under trio-uring a buffered multi-MiB write is io_uring only.

Runs a child process under ``strace -f`` that writes 8 MiB through ``BufferedWriter`` and
fsyncs it, then checks the syscalls: ``io_uring_enter`` and no ``pwrite64``/``fsync``/
``fdatasync`` and no thread creation under trio-uring; under std-fs the ``pwrite64`` calls
come from exactly one thread other than the main one.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tests.io._strace import strace_script
from tests.io.test_uring_engine import require_uring

CHILD = r"""
import os, sys, trio
from pageserver.io import BufferedWriter, IoContext, create_engine

async def main() -> None:
    ctx = IoContext(create_engine(sys.argv[1]), no_sync=False)
    assert ctx.engine.kind == sys.argv[1], ctx.engine.kind
    path = sys.argv[2]

    async def job() -> None:
        vf = await ctx.create_new(path)
        w = BufferedWriter(vf)
        chunk = b"\xcd" * 8192
        for _ in range(8 * 128):
            await w.write(chunk)
        await w.finish()
        await vf.sync_all(force=True)
        await vf.close()

    await ctx.run_job(job)
    await ctx.aclose()

trio.run(main)
"""

SYSCALLS = "pwrite64,pwritev,pwritev2,write,fsync,fdatasync,io_uring_enter,clone,clone3"


def trace(kind: str, tmp_path: Path) -> list[tuple[int, str]]:
    out = tmp_path / f"{kind}.strace"
    target = tmp_path / f"{kind}.bin"
    strace_script(CHILD, [kind, str(target)], SYSCALLS, out, 60)
    assert target.stat().st_size == 8 << 20
    calls = []
    for line in out.read_text().splitlines():
        m = re.match(r"(\d+)\s+(\w+)\(", line)
        if m:
            calls.append((int(m.group(1)), m.group(2)))
    return calls


def test_trio_uring_writes_only_through_the_ring(tmp_path: Path) -> None:
    require_uring()
    calls = trace("trio-uring", tmp_path)
    names = Counter(name for _, name in calls)
    assert names["io_uring_enter"] > 0
    # 8 MiB in 64 KiB buffers is 128 writes: write-behind batches them.
    assert names["io_uring_enter"] < 128 + 16, names
    for forbidden in ("pwrite64", "pwritev", "pwritev2", "fsync", "fdatasync", "clone", "clone3"):
        assert names[forbidden] == 0, names


def test_std_fs_writes_from_one_worker_thread(tmp_path: Path) -> None:
    calls = trace("std-fs", tmp_path)
    pwrite_tids = {tid for tid, name in calls if name == "pwrite64"}
    main_tid = calls[0][0] if calls else None
    assert sum(1 for _, name in calls if name == "pwrite64") >= 128
    assert len(pwrite_tids) == 1 and main_tid not in pwrite_tids
