"""Large ``put`` frames over a real socket: read straight into the frame's own buffer, the
values handed to the ephemeral file as a view of it (issue 12 item 5).

End to end on a real daemon (both engines): large columnar puts, pipelined so that the next
frame's header comes in the same read as the end of the one before, a records-form put and
1000 x 100 B puts beside them; ``get`` returns the exact bytes before and after a flush.
In process (the bad-input harness, on each engine): the byte budget with large frames sent in pieces, the
end of stream in the middle of one, an oversized one, and that the server offers the direct
read only under the frame's reservation.
"""

from __future__ import annotations

import gc
import socket
import struct
import weakref
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing

from pageserver.addresses import parse_address
from pageserver.client import Client, PutBatch
from pageserver.layers.batch import PutColumns
from pageserver.layers.value import Image, encode_value
from pageserver.server import server as srv
from pageserver.testing import Daemon, TimelineRef
from pageserver.wire import (
    Reply,
    ReplyDecoder,
    RequestEvent,
    ServerConnection,
    _framing,
    encode_request,
)
from pageserver.wire._framing import DIRECT_FRAME_BYTES
from tests.server.test_badinput import TL, Harness, Raw, T, _start

Record = tuple[bytes, int, bytes]


def key(i: int) -> bytes:
    return bytes(13) + b"\x07" + i.to_bytes(4, "big")


def batch(first: int, n: int, size: int, lsn: int) -> list[Record]:
    """``n`` records with distinct keys and contents, all at ``lsn``."""
    return [
        (
            key(first + i),
            lsn,
            encode_value(Image(bytes([(first + i) % 251, lsn % 251]) * (size // 2))),
        )
        for i in range(n)
    ]


def _connect(d: Daemon) -> socket.socket:
    addr = parse_address(d.addr)
    if addr.unix_path is not None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr.unix_path)
    else:
        s = socket.create_connection((addr.host, addr.port))
    s.settimeout(60)
    return s


def _replies(s: socket.socket, n: int) -> list[Reply]:
    dec = ReplyDecoder()
    out: list[Reply] = []
    while len(out) < n:
        ev = dec.next_event()
        if isinstance(ev, Reply):
            out.append(ev)
            continue
        data = s.recv(1 << 16)
        assert data, "the daemon closed the connection"
        dec.receive_data(data)
    return out


def put_frame(rid: int, tl: TimelineRef, records: list[Record], columnar: bool = True) -> bytes:
    if columnar:
        fields: dict[str, Any] = PutColumns.from_records(records).wire_fields()
    else:
        fields = {"records": records}
    return encode_request("put", rid, tenant_id=tl.tenant_id, timeline_id=tl.timeline_id, **fields)


def test_large_puts_then_get_returns_exact_bytes(
    pageserver_daemon: Daemon, pageserver_timeline: TimelineRef
) -> None:
    tl = pageserver_timeline
    puts: list[tuple[list[Record], bool]] = [
        (batch(0, 128, 8192, 10), True),  # ~1 MiB frames of 8 KiB pages
        (batch(128, 128, 8192, 11), True),
        (batch(256, 1000, 100, 12), True),  # ~130 KB: 1000 x 100 B
        (batch(1256, 64, 8192, 13), False),  # the records form of a large frame
        (batch(1320, 7, 8192, 14), True),  # ~57 KB: below the direct size
        (batch(0, 128, 8192, 15), True),  # new versions of the first keys
    ]
    frames = [put_frame(i, tl, recs, columnar) for i, (recs, columnar) in enumerate(puts)]
    assert sorted(len(f) >= DIRECT_FRAME_BYTES for f in frames) == [False] + [True] * 5
    with _connect(pageserver_daemon) as s:
        # All at once: each read the server does past a frame's end holds the next
        # frame's header and the start of its payload.
        s.sendall(b"".join(frames))
        replies = _replies(s, len(frames))
    assert [r.id for r in replies] == list(range(len(frames)))
    assert all(r.ok for r in replies), [r.message for r in replies if not r.ok]
    assert replies[-1].fields["last_record_lsn"] == 15

    latest: dict[bytes, list[tuple[int, bytes]]] = {}
    for recs, _ in puts:
        for k, lsn, value in recs:
            latest.setdefault(k, []).append((lsn, value[12:]))  # an Image's page

    def check(c: Any) -> None:
        for k, versions in latest.items():
            for lsn, page in versions:
                assert c.get(tl.tenant_id, tl.timeline_id, k, lsn) == page, (k.hex(), lsn)

    with pageserver_daemon.client() as c:
        check(c)
        c.flush(tl.tenant_id, tl.timeline_id)
        assert tl.layer_files()
        check(c)


@pytest.mark.trio
async def test_pipelined_columnar_puts_through_the_client(
    pageserver_daemon: Daemon, pageserver_timeline: TimelineRef
) -> None:
    """The client's own large puts (``sendmsg`` of the caller's buffers, a window of 8)."""
    tl = pageserver_timeline
    records = [batch(200 * j, 200, 8192, 20 + j) for j in range(12)]
    batches = [PutBatch(r) for r in records]
    async with await Client.connect(pageserver_daemon.addr, pageserver_daemon.token) as c:
        acked = await c.put_pipelined(tl.tenant_id, tl.timeline_id, batches, window=8)
        assert acked == len(batches)
        for recs in records[::3]:
            for k, lsn, value in recs[::37]:
                assert await c.get(tl.tenant_id, tl.timeline_id, k, lsn) == value[12:]


# -- in process: the byte budget ------------------------------------------------------------


def big_put(lsn: int, n: int = 64) -> bytes:
    return encode_request(
        "put", lsn, tenant_id=T, timeline_id=TL,
        **PutColumns.from_records(batch(0, n, 8192, lsn)).wire_fields(),
    )  # fmt: skip


async def _setup(h: Harness) -> None:
    async with await Client.connect(h.addr) as c:
        await c.request("tenant_create", tenant_id=T)
        await c.request("timeline_create", tenant_id=T, timeline_id=TL)


async def _until(cond: Any) -> None:
    with trio.fail_after(10):
        while not cond():
            await trio.sleep(0.01)


def _only_conn(h: Harness) -> ServerConnection:
    [c] = h.server._conns
    return c.proto


async def test_large_frame_in_pieces_is_charged_whole_and_released(
    nursery: trio.Nursery, engine_kind: str
) -> None:
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, engine_kind=engine_kind)
        await _setup(h)
        f = big_put(5)
        raw = await Raw.open(h)
        await raw.send(f[:3])  # part of a header: the read pool holds 3 bytes
        await _until(lambda: h.server.read_pool.used == 3)
        await raw.send(f[3:70_000])
        # The header is in: the whole frame is reserved, and the bytes so far are in the
        # frame's own buffer.
        await _until(lambda: _only_conn(h).buffered == 70_000)
        assert h.server.frame_pool.used == len(f)
        assert _only_conn(h).head_frame_bytes == len(f)
        assert _only_conn(h)._decoder._frame is not None
        for i in range(70_000, len(f), 100_000):
            await raw.send(f[i : i + 100_000])
            await trio.sleep(0.01)
        r = await raw.reply()
        assert r.ok and r.id == 5 and r.fields["last_record_lsn"] == 5
        await _until(lambda: h.server.frame_pool.used == 0)
        assert h.server.read_pool.used == 0 and _only_conn(h).buffered == 0
        # Two more, back to back in one send: the second one's header rides on a
        # read-ahead past the first one's end.
        await raw.send(big_put(6) + big_put(7))
        assert [(await raw.reply()).id for _ in range(2)] == [6, 7]
        await _until(lambda: h.server.buffered_bytes == 0)
        assert h.server.buffered_peak <= h.server.buffered_cap
        async with await Client.connect(h.addr) as c:
            for k, lsn, value in batch(0, 64, 8192, 7)[::9]:
                assert await c.get(T, TL, k, lsn) == value[12:]


async def test_eof_in_the_middle_of_a_large_frame(nursery: trio.Nursery, engine_kind: str) -> None:
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, engine_kind=engine_kind)
        await _setup(h)
        f = big_put(5)
        raw = await Raw.open(h)
        await raw.send(f[: len(f) // 2])
        await _until(lambda: _only_conn(h).buffered == len(f) // 2)
        await raw.stream.send_eof()
        await raw.expect_closed()  # no reply: there is no peer left to read one
        await _until(lambda: h.server.open_connections == 0)
        assert h.server.buffered_bytes == 0
        async with await Client.connect(h.addr) as c:
            st = await c.timeline_status(T, TL)
            assert st["last_record_lsn"] == 0  # nothing of it was applied


async def test_oversized_large_frame_is_refused(nursery: trio.Nursery, engine_kind: str) -> None:
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, max_frame_bytes=256 * 1024, engine_kind=engine_kind)
        await _setup(h)
        f = big_put(5)  # ~530 KB
        raw = await Raw.open(h)
        await raw.send(f[:100_000])
        await raw.expect_error("frame_too_large")
        await raw.expect_closed()
        await _until(lambda: h.server.open_connections == 0)
        assert h.server.buffered_bytes == 0 and h.server.frame_pool.peak == 0


async def test_no_direct_buffer_without_the_frame_reservation(
    nursery: trio.Nursery, engine_kind: str
) -> None:
    """A peer that waits for frame budget holds only what it read: its frame's own buffer
    is made once the reservation is granted, not when the header arrives."""
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, max_buffered_bytes=1 << 20, engine_kind=engine_kind)
        await _setup(h)
        cap = h.server.frame_pool.capacity
        await h.server.frame_pool.acquire(cap)  # the pool is full: nobody gets a frame
        raw = await Raw.open(h)
        f = big_put(5)
        await raw.send(f[:50_000])
        await _until(lambda: h.server.frame_pool.waiting == 1)
        proto = _only_conn(h)
        assert proto._decoder._frame is None  # nothing made: still the stream buffer
        assert proto.buffered == 50_000
        h.server.frame_pool.release(cap)
        await raw.send(f[50_000:])
        r = await raw.reply()
        assert r.ok and r.id == 5


def test_frame_sizes_here_take_the_direct_path() -> None:
    """The frames above are large enough for the direct read (a guard for the constants)."""
    assert len(big_put(1)) > DIRECT_FRAME_BYTES + 70_000
    assert struct.unpack(">I", big_put(1)[:4])[0] >= DIRECT_FRAME_BYTES


async def test_peers_stalled_mid_frame_hold_no_read_pool(
    nursery: trio.Nursery, engine_kind: str
) -> None:
    """Peers that send a large frame's header and part of its body, then stall, hold their
    frame's reservation and nothing of the read pool: the chunk of read-ahead taken for a
    read that finds nothing goes back before the wait for the peer. It used to be kept
    across that wait: 64 such peers took the whole 4 MiB read pool, and no one else's
    request could be read until the stall timeout closed them (here 600 s)."""
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, engine_kind=engine_kind)
        await _setup(h)
        h.server.stall_timeout = 600.0  # only the fix can save the good client
        f = encode_request("status", 1, pad=b"p" * 100_000)
        peers = [await Raw.open(h) for _ in range(70)]
        for r in peers:
            await r.send(f[:10_000])
        # Every peer's frame gets reserved (70 x ~100 KB fit the 8 MiB frame pool); with
        # the read pool taken, the last ones never got to read their headers.
        with trio.move_on_after(10):
            while h.server.frame_pool.used < 70 * len(f):
                await trio.sleep(0.02)
        # Until every connection is in its wait for the peer: nothing left to run (a
        # state, not a time; a sleep here raced with a loaded machine).
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert h.server.read_pool.used == 0, h.server.read_pool.used
        assert h.server.frame_pool.used == 70 * len(f)
        with trio.fail_after(10):
            async with await Client.connect(h.addr) as c:
                assert (await c.request("status"))["io_engine"] == engine_kind
        for r in peers:  # the stalled peers finish their frames and are answered
            await r.send(f[10_000:])
        for r in peers:
            assert (await r.reply()).ok
            await r.aclose()
        await _until(lambda: h.server.buffered_bytes == 0)


async def test_frame_is_dropped_before_the_reply_is_sent(
    nursery: trio.Nursery, engine_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoded request, and so the large frame its put's values are a view of, is
    dropped before the reply's send, which may wait as long as the peer does not read:
    the frame went back to the frame pool at the settle, and must not stay alive,
    uncounted, through that wait. Seen at the send itself (``Server._send`` wrapped,
    test-side only): no request event is alive then, and on std-fs (the put's append is
    done in the put) no frame buffer either. On trio-uring the ephemeral file's writes
    may still be in flight at the reply, and they hold the values they write."""
    frames: list[weakref.ref[object]] = []
    at_send: list[tuple[int, int]] = []  # (request events alive, frame buffers alive)
    orig_next = _framing.FrameDecoder.next_event

    def next_event(self: _framing.FrameDecoder) -> Any:
        ev = orig_next(self)
        if isinstance(ev, _framing.Frame) and type(ev.payload) is memoryview:
            frames.append(weakref.ref(ev.payload.obj))
        return ev

    orig_send = srv.Server._send

    async def send(self: srv.Server, c: srv._Conn, data: bytes) -> bool:
        gc.collect()  # a reference cycle would not count as holding the request
        events = sum(type(o) is RequestEvent for o in gc.get_objects())
        at_send.append((events, sum(r() is not None for r in frames)))
        return await orig_send(self, c, data)

    monkeypatch.setattr(_framing.FrameDecoder, "next_event", next_event)
    monkeypatch.setattr(srv.Server, "_send", send)
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, engine_kind=engine_kind)
        await _setup(h)
        at_send.clear()
        raw = await Raw.open(h)
        for lsn in (5, 6):
            # 24 pages: below the size whose append is offloaded to a thread on std-fs,
            # so there the append is over (nothing holds the values) before the reply.
            await raw.send(big_put(lsn, n=24))
            r = await raw.reply()
            assert r.ok and r.id == lsn
        assert len(frames) == 2  # both took the direct path
        assert [events for events, _ in at_send] == [0, 0]
        if engine_kind == "std-fs":
            assert [alive for _, alive in at_send] == [0, 0]
        await raw.aclose()


async def test_a_large_records_put_is_parsed_in_steps_while_others_are_served(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server parses a records-form put of 40k records in steps (``BUSY`` from its
    connection, a checkpoint each), a status on another connection is answered meanwhile,
    and the put's records are all there afterwards."""
    from pageserver.wire import BUSY, ServerConnection  # noqa: PLC0415 - test-local names

    busy: list[int] = []
    real = ServerConnection.next_event

    def counting(self: ServerConnection, *, stepwise: bool = False) -> Any:
        ev = real(self, stepwise=stepwise)
        if ev is BUSY:
            busy.append(1)
        return ev

    monkeypatch.setattr(ServerConnection, "next_event", counting)
    n = 40_000
    records = [
        (bytes(17) + bytes([i % 200]), 10 + i, encode_value(Image(i.to_bytes(4, "big") * 25)))
        for i in range(n)
    ]
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, max_frame_bytes=16 << 20, max_buffered_bytes=64 << 20)
        async with await Client.connect(h.addr) as c:
            await c.request("tenant_create", tenant_id=T)
            await c.request("timeline_create", tenant_id=T, timeline_id=TL)
        a, b = await Raw.open(h), await Raw.open(h)
        await a.send(encode_request("put", id=1, tenant_id=T, timeline_id=TL, records=records))
        await b.send(encode_request("status", id=2))
        done: list[int] = []

        async def wait(raw: Raw, who: int) -> None:
            r = await raw.reply()
            assert r.ok, r
            done.append(who)

        async with trio.open_nursery() as replies:
            replies.start_soon(wait, a, 1)
            replies.start_soon(wait, b, 2)
        assert sorted(done) == [1, 2]
        assert len(busy) >= 3 * (n // 2048)
        async with await Client.connect(h.addr) as c:
            for i in (0, 1, n // 2, n - 1):
                key = bytes(17) + bytes([i % 200])
                assert await c.get(T, TL, key, 10 + i) == i.to_bytes(4, "big") * 25


async def test_one_connection_at_a_time_decodes_a_large_request(nursery: trio.Nursery) -> None:
    """Three connections send records-form puts of 5000 records at once. Each is decoded
    only by the task that holds the server's parse slot, which it keeps until its check
    is done: so at most one decoded request (~30x its frame in Python objects) lives
    across steps, as when requests were parsed in one step."""
    from pageserver.wire import _requests as wire_requests  # noqa: PLC0415

    real = wire_requests.unpack_limited
    owners: list[bool] = []
    async with AsyncExitStack() as stack:
        h = await _start(nursery, stack, max_frame_bytes=16 << 20, max_buffered_bytes=64 << 20)

        def spy(payload: Any, *a: Any, **kw: Any) -> Any:
            if len(payload) >= wire_requests.DECODE_ALONE_BYTES:
                stats = h.server._parse_slot.statistics()
                owners.append(stats.owner is trio.lowlevel.current_task())
            return real(payload, *a, **kw)

        wire_requests.unpack_limited = spy  # type: ignore[assignment]
        try:
            timelines = [f"{i}" * 32 for i in range(1, 4)]
            async with await Client.connect(h.addr) as c:
                await c.request("tenant_create", tenant_id=T)
                for tl in timelines:
                    await c.request("timeline_create", tenant_id=T, timeline_id=tl)

            async def put(i: int) -> None:
                raw = await Raw.open(h)
                records = [(bytes(18), 10 + j, encode_value(Image(b"%d" % j))) for j in range(5000)]
                frame = encode_request("put", id=i, tenant_id=T, timeline_id=timelines[i], records=records)
                await raw.send(frame)
                r = await raw.reply()
                assert r.ok and r.id == i, r

            async with trio.open_nursery() as puts:
                for i in range(3):
                    puts.start_soon(put, i)
        finally:
            wire_requests.unpack_limited = real  # type: ignore[assignment]
    assert owners == [True, True, True]
