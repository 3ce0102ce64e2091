"""Idle connections cost no byte budget; peers stalled mid-frame are dropped."""

from __future__ import annotations

import trio

from pageserver.client import Client
from tests.server.test_badinput import Harness, Raw, h  # noqa: F401 - fixture


async def test_idle_connections_hold_no_budget(h: Harness) -> None:  # noqa: F811
    # More idle connections than the read pool has 64 KiB chunks for.
    idle = [await Raw.open(h) for _ in range(300)]
    await trio.sleep(0.2)
    assert h.server.read_pool.used == 0
    with trio.fail_after(10):
        async with await Client.connect(h.addr) as c:
            assert (await c.request("status"))["io_engine"] == "std-fs"
    for r in idle:
        await r.stream.aclose()


async def test_stalled_partial_frames_are_dropped(h: Harness) -> None:  # noqa: F811
    h.server.stall_timeout = 0.5
    stalled = []
    # Each announces a frame the size of the whole frame pool's share and sends 1 byte.
    for _ in range(12):
        r = await Raw.open(h)
        await r.send((1 << 20).to_bytes(4, "big") + b"\x81")
        stalled.append(r)
    with trio.fail_after(10):
        async with await Client.connect(h.addr) as c:
            assert (await c.request("status"))["io_engine"] == "std-fs"
    # The stalled peers were closed: their next read sees the end of the stream.
    for r in stalled:
        with trio.fail_after(5):
            assert await r.stream.receive_some(100) == b""
