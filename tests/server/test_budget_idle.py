"""Idle connections cost no byte budget; peers stalled mid-frame are dropped."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from pageserver.client import Client
from tests.server.test_badinput import Harness, Raw, _start, h  # noqa: F401 - fixture


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


async def _status_within(h: Harness, seconds: float, token: str | None = None) -> None:  # noqa: F811
    with trio.fail_after(seconds):
        async with await Client.connect(h.addr, token=token) as c:
            assert (await c.request("status"))["io_engine"] == "std-fs"


async def _partial_header_wedge(h: Harness, token: str | None = None) -> None:  # noqa: F811
    """Issue 11.1: peers holding part of a 4-byte header must not take the read pool.

    More such peers than the read pool has 64 KiB chunks (4 MiB / 64 KiB = 64): each used
    to hold a whole chunk and wait, without a time limit, for one more byte of budget, so
    nobody else was read (until the stall timeout) and, once they closed, for ever.
    """
    h.server.stall_timeout = 120.0  # only the fix can save the good client, not the timeout
    n = h.server.read_pool.capacity // (64 * 1024) + 36
    peers = [await Raw.open(h) for _ in range(n)]
    for r in peers:
        await r.send(b"\x00")
    await trio.sleep(0.3)
    await _status_within(h, 5, token)
    with trio.fail_after(5):  # (the good client's own connection is closing meanwhile)
        while h.server.read_pool.used > n:  # what they really buffer (1 byte each), no more
            await trio.sleep(0.02)
    for r in peers:
        await r.send(b"\x00")
    await trio.sleep(0.2)
    for r in peers:
        await r.aclose()
    await trio.sleep(0.3)
    await _status_within(h, 5, token)
    with trio.fail_after(5):
        while h.server.read_pool.used or h.server.open_connections > 0:
            await trio.sleep(0.02)


async def test_partial_headers_do_not_wedge_the_server(h: Harness) -> None:  # noqa: F811
    await _partial_header_wedge(h)


async def test_partial_headers_before_auth_do_not_wedge_the_server(nursery: trio.Nursery) -> None:
    async with AsyncExitStack() as stack:
        h2 = await _start(nursery, stack, auth_token="tok")
        await _partial_header_wedge(h2, token="tok")
