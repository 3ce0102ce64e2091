"""A child process for the remote crash tests: ingest, flush and upload with a manager of
its own, then arm a failpoint (``exit``: ``os._exit(1)``, no clean-up at all) and do what
hits it. Prints one JSON line per step so the parent knows what became durable.

    python -m tests.remote._crash_child ENGINE DATA_DIR REMOTE_DIR POINT
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import trio

from pageserver import failpoints
from pageserver.config import RemoteStorageConfig
from tests.helpers.tenant import TENANT, TIMELINE, Model, manager
from tests.remote.test_attach import ingest, rconfig, wait_remote

SEED = 11


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


async def main(engine: str, data_dir: str, remote_dir: str, point: str) -> None:
    cfg = rconfig(RemoteStorageConfig(local_path=remote_dir, timeout=5.0))
    rng = random.Random(SEED)
    model = Model()
    async with manager(engine, Path(data_dir), cfg, flush_on_exit=False) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        lsn = 1
        for _ in range(3):
            lsn = await ingest(mgr, model, lsn, 60, rng)
            await mgr.flush(TENANT, TIMELINE)
        dcl = await mgr.flush(TENANT, TIMELINE)
        await wait_remote(mgr, dcl)
        say(step="uploaded", dcl=dcl, lsn=lsn)
        failpoints.configure({point: "exit"})
        if point == "remote-before-index-upload":
            # Any flush from here on (a roll while ingesting, or this one) ends the process
            # before its index upload: the parent reads what was durable from the metadata.
            lsn = await ingest(mgr, model, lsn, 60, rng)
            dcl = await mgr.flush(TENANT, TIMELINE)
            say(step="flushed", dcl=dcl, lsn=lsn)
        else:
            result = await mgr.compact(TENANT, TIMELINE)
            say(step="compacted", removed=result.layers_removed, dcl=dcl, lsn=lsn)
        await trio.sleep(30)
        say(step="not killed")


async def replay(steps: int) -> Model:
    """The model after the child's first ``steps`` ingest calls (same seed, same calls)."""

    class _Sink:
        async def put(self, *_a: object) -> None:
            return None

    model = Model()
    rng = random.Random(SEED)

    lsn = 1
    for _ in range(steps):
        lsn = await ingest(_Sink(), model, lsn, 60, rng)  # type: ignore[arg-type]
    return model


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
