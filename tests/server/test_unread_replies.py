"""Peers that pipeline requests and never read the replies hold no byte budget while the
server waits to send to them, and are closed after the stall timeout (issue 11).

Each such peer's replies fill its socket, so the server blocks sending to it. The frame
being answered used to stay charged to the frame pool, and the read-ahead to the read
pool, for as long as that send blocked, with no time limit: 64 of them took both pools and
nobody else was read again.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from pageserver.client import Client
from pageserver.wire import encode_request
from tests.server.test_badinput import TL, Harness, Raw, T, _start, img

BIG = bytes(17) + b"\x0b"
#: Request frames padded to 128 KiB (unknown fields are ignored): 64 of them fill the
#: 8 MiB frame pool, and the 64 KiB read-ahead behind each fills the 4 MiB read pool.
PAD = 128 * 1024
PEERS = 70


async def _flood(h: Harness, peers: list[Raw], nursery: trio.Nursery) -> None:
    async with await Client.connect(h.addr) as c:
        await c.request("tenant_create", tenant_id=T)
        await c.request("timeline_create", tenant_id=T, timeline_id=TL)
        await c.put(T, TL, [(BIG, 1, img(b"z" * 60_000))])
    req = encode_request(
        "get", id=1, tenant_id=T, timeline_id=TL, key=BIG, lsn=1, pad=b"p" * PAD
    )

    async def never_read(r: Raw) -> None:
        try:
            for _ in range(40):  # ~2.4 MB of replies: far more than the socket holds
                await r.send(req)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    for _ in range(PEERS):
        r = await Raw.open(h)
        peers.append(r)
        nursery.start_soon(never_read, r)
    # Until the server has stopped reading every one of them (its sends block).
    with trio.fail_after(20):
        while True:
            await trio.sleep(0.2)
            before = h.server.connections_total
            used = h.server.frame_pool.used + h.server.read_pool.used
            await trio.sleep(0.3)
            if used == h.server.frame_pool.used + h.server.read_pool.used:
                assert h.server.connections_total == before
                break


async def _status_within(h: Harness, seconds: float) -> None:
    with trio.fail_after(seconds):
        async with await Client.connect(h.addr) as c:
            assert (await c.request("status"))["io_engine"] == "std-fs"


async def test_peers_that_never_read_hold_no_budget(nursery: trio.Nursery) -> None:
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack)
        h.server.stall_timeout = 600.0  # only the fix can save the good client
        peers: list[Raw] = []
        async with trio.open_nursery() as flooders:
            await _flood(h, peers, flooders)
            # Blocked sends hold nothing: both pools are free for everyone else.
            assert h.server.frame_pool.used == 0, h.server.frame_pool.used
            assert h.server.read_pool.used == 0, h.server.read_pool.used
            for _ in range(5):
                await _status_within(h, 5)
            for r in peers:
                await r.aclose()
            flooders.cancel_scope.cancel()
        with trio.fail_after(10):
            while h.server.open_connections or h.server.buffered_bytes:
                await trio.sleep(0.02)
        assert h.server.buffered_peak <= h.server.buffered_cap


async def test_peers_that_never_read_are_closed_after_the_stall_timeout(
    nursery: trio.Nursery,
) -> None:
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack)
        h.server.stall_timeout = 1.0
        peers: list[Raw] = []
        async with trio.open_nursery() as flooders:
            await _flood(h, peers, flooders)
            assert h.server.open_connections == PEERS
            # No progress on a send for the stall timeout: the peer is gone, closed.
            with trio.fail_after(15):
                while h.server.open_connections:
                    await trio.sleep(0.05)
            assert h.server.buffered_bytes == 0
            await _status_within(h, 5)
            flooders.cancel_scope.cancel()
        for r in peers:
            await r.aclose()
