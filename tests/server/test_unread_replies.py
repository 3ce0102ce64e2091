"""Peers that pipeline requests and never read the replies hold no byte budget while the
server waits to send to them, and are closed after the stall timeout (issue 11).

Each such peer's replies fill its socket, so the server blocks sending to it. The frame
being answered used to stay charged to the frame pool, and the read-ahead to the read
pool, for as long as that send blocked, with no time limit: 64 of them took both pools and
nobody else was read again.

Both tests wait for a state, not for time: until every peer's connection is blocked in the
server's send (seen by wrapping ``Server._send``, test-side only, when no task can run), and
the stall timeout is 600 s on a :class:`trio.testing.MockClock` that runs at real speed
until the test jumps it past the timeout. A 1 s timeout and a "pools unchanged for 0.3 s"
window used to race on a loaded machine (early peers closed before the flood was counted).
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from pageserver.client import Client
from pageserver.server import server as srv
from pageserver.wire import encode_request
from tests.server.test_badinput import TL, Harness, Raw, T, _start, img

BIG = bytes(17) + b"\x0b"
#: Request frames padded to 128 KiB (unknown fields are ignored): 64 of them fill the
#: 8 MiB frame pool, and the 64 KiB read-ahead behind each fills the 4 MiB read pool.
PAD = 128 * 1024
PEERS = 70
#: Longer than any test runs: only a jump of the mock clock makes a send give up.
STALL = 600.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """The run's clock (pytest-trio): real time until the test jumps it."""
    return trio.testing.MockClock(rate=1.0)


class Sends:
    """The server's connections inside ``Server._send`` now, and the sends that gave up."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside: set[object] = set()
        self.gave_up = 0
        orig = srv.Server._send

        async def send(server: srv.Server, c: srv._Conn, data: bytes) -> bool:
            self.inside.add(c)
            try:
                ok = await orig(server, c, data)
            finally:
                self.inside.discard(c)
            self.gave_up += not ok
            return ok

        monkeypatch.setattr(srv.Server, "_send", send)


async def _flood(h: Harness, peers: list[Raw], nursery: trio.Nursery, sends: Sends) -> None:
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
    # Until the server has stopped reading every one of them: all blocked in a send. Seen
    # when no task can run, so none is passing through _send (its only blocking wait is
    # for the socket to take bytes, which a peer that never reads never lets happen).
    with trio.fail_after(120):
        while True:
            await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            if len(sends.inside) == PEERS:
                break
    assert h.server.open_connections == PEERS


async def _status_within(h: Harness, seconds: float) -> None:
    with trio.fail_after(seconds):
        async with await Client.connect(h.addr) as c:
            assert (await c.request("status"))["io_engine"] == "std-fs"


async def test_peers_that_never_read_hold_no_budget(
    nursery: trio.Nursery, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends = Sends(monkeypatch)
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack)
        h.server.stall_timeout = STALL  # only the fix can save the good client
        peers: list[Raw] = []
        async with trio.open_nursery() as flooders:
            await _flood(h, peers, flooders, sends)
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
    nursery: trio.Nursery, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends = Sends(monkeypatch)
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack)
        h.server.stall_timeout = STALL
        peers: list[Raw] = []
        async with trio.open_nursery() as flooders:
            await _flood(h, peers, flooders, sends)
            assert sends.gave_up == 0
            # No progress on a send for the stall timeout: the peer is gone, closed. Every
            # send is waiting already, so one jump expires them all; the loop is bounded
            # in steps, not time (a fail_after would expire with the jump).
            clock.jump(STALL + 1)
            for _ in range(2000):
                if not h.server.open_connections:
                    break
                await trio.sleep(0.01)
            assert h.server.open_connections == 0
            assert sends.gave_up == PEERS
            assert h.server.buffered_bytes == 0
            await _status_within(h, 5)
            flooders.cancel_scope.cancel()
        for r in peers:
            await r.aclose()
