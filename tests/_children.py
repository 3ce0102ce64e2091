"""Programs run as subprocesses by the crash tests (``python -m tests._children MODE ...``).

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
    await ctx.aclose()
    await engine.aclose()


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


def main() -> None:
    configure_logging()
    mode = sys.argv[1]
    if mode == "crashsafe":
        trio.run(crashsafe_loop, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "fsync":
        trio.run(fsync_once, sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
