"""The bad-input suite (issue 7): hostile and malformed input against an in-process server.

Each case checks the SPEC section 5 error code, whether the connection stays open (it
closes only after ``frame_too_large`` and an ``unauthorized`` reply to ``hello``), that a
well-behaved client keeps being served with its data intact, and that the server's
tracked buffered bytes never exceed its cap.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import pytest
import trio

from pageserver import failpoints
from pageserver.client import Client, ServerError
from pageserver.config import PageserverConfig
from pageserver.io import IoContext, create_engine
from pageserver.layers.value import Image, TestRecord, encode_value
from pageserver.server.server import Server, open_listeners
from pageserver.tenant.manager import TenantManager
from pageserver.wire import (
    CLOSED,
    NEED_DATA,
    Reply,
    ReplyDecoder,
    encode_frame,
    encode_request,
)

T = "0123456789abcdef0123456789abcdef"
TL = "fedcba9876543210fedcba9876543210"
KEY = bytes(17) + b"\x01"


def img(data: bytes) -> bytes:
    return encode_value(Image(data))


@dataclass
class Harness:
    server: Server
    mgr: TenantManager
    addr: str
    path: str


async def _start(
    nursery: trio.Nursery,
    stack: AsyncExitStack,
    *,
    max_frame_bytes: int = 1 << 20,
    max_buffered_bytes: int | None = 8 << 20,
    auth_token: str | None = None,
    engine_kind: str = "std-fs",
) -> Harness:
    tmp = tempfile.mkdtemp(prefix="pst", dir="/tmp")  # unix socket paths must be < 108 bytes
    stack.callback(shutil.rmtree, tmp, True)
    engine = create_engine(engine_kind)
    ctx = IoContext(engine, max_file_descriptors=100, no_sync=True)

    async def close_engine() -> None:
        await ctx.aclose()  # closes the engine too

    stack.push_async_callback(close_engine)
    config = PageserverConfig(no_sync=True, max_frame_bytes=max_frame_bytes)
    mgr = await stack.enter_async_context(TenantManager.open(ctx, os.path.join(tmp, "d"), config))
    sock = os.path.join(tmp, "s.sock")
    listeners = await open_listeners(f"unix:{sock}")
    server = Server(
        mgr,
        io_engine=engine_kind,
        max_frame_bytes=max_frame_bytes,
        auth_token=auth_token,
        max_buffered_bytes=max_buffered_bytes,
    )
    await nursery.start(server.serve, listeners)

    async def stop() -> None:
        with trio.fail_after(30):
            await server.shutdown(drain_timeout=5)

    stack.push_async_callback(stop)
    return Harness(server, mgr, f"unix:{sock}", sock)


@pytest.fixture
async def h(nursery: trio.Nursery) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        harness = await _start(nursery, stack)
        async with await Client.connect(harness.addr) as c:
            await c.request("tenant_create", tenant_id=T)
            await c.request("timeline_create", tenant_id=T, timeline_id=TL)
        yield harness
        assert harness.server.buffered_peak <= harness.server.buffered_cap


class Raw:
    """A raw socket to the server: send any bytes, read replies, see the close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.dec = ReplyDecoder()

    @classmethod
    async def open(cls, h: Harness) -> Raw:
        return cls(await trio.open_unix_socket(h.path))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> Reply:
        with trio.fail_after(10):
            while True:
                ev = self.dec.next_event()
                if isinstance(ev, Reply):
                    return ev
                assert ev is NEED_DATA, f"expected a reply, got {ev!r}"
                self.dec.receive_data(await self.stream.receive_some(65536))

    async def expect_error(self, code: str, in_message: str | None = None) -> Reply:
        r = await self.reply()
        assert not r.ok, r
        assert r.code == code, (r.code, r.message)
        if in_message is not None:
            assert r.message is not None and in_message in r.message, r.message
        return r

    async def expect_closed(self) -> None:
        with trio.fail_after(10):
            while True:
                ev = self.dec.next_event()
                if ev is CLOSED:
                    return
                assert ev is NEED_DATA, f"expected the close, got {ev!r}"
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                self.dec.receive_data(data)

    async def still_open(self) -> None:
        """A hello still gets an answer on this connection."""
        await self.send(encode_request("hello", id="ping"))
        r = await self.reply()
        assert r.ok and r.id == "ping", r

    async def aclose(self) -> None:
        await self.stream.aclose()


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def _good_client_roundtrip(h: Harness, lsn: int) -> None:
    """A well-behaved client: put at ``lsn``, read it back, and read the first record."""
    async with await Client.connect(h.addr) as c:
        r = await c.put(T, TL, [(KEY, lsn, img(b"v%d" % lsn))])
        assert r["last_record_lsn"] == lsn
        assert await c.get(T, TL, KEY, lsn) == b"v%d" % lsn


# -- framing -------------------------------------------------------------------------------


async def test_garbage_bytes_read_as_a_huge_length(h: Harness) -> None:
    raw = await Raw.open(h)
    await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " = 0x47455420 > max
    await raw.expect_error("frame_too_large")
    await raw.expect_closed()
    await _good_client_roundtrip(h, 10)


async def test_zero_length_frame_keeps_the_connection(h: Harness) -> None:
    raw = await Raw.open(h)
    await raw.send(b"\x00\x00\x00\x00" * 3)
    for _ in range(3):
        await raw.expect_error("bad_frame")
    await raw.still_open()


async def test_max_u32_length_replies_then_closes(h: Harness) -> None:
    raw = await Raw.open(h)
    await raw.send(b"\xff\xff\xff\xff" + b"x" * 1000)
    await raw.expect_error("frame_too_large", "4294967295")
    await raw.expect_closed()


async def test_one_past_max_frame_bytes_closes_and_max_is_accepted(h: Harness) -> None:
    limit = h.server.max_frame_bytes
    raw = await Raw.open(h)
    # Exactly max_frame_bytes: accepted (a map with one long unknown field).
    body = msgpack.packb({"op": "hello", "pad": b""}, use_bin_type=True)
    pad = limit - len(body) - 3  # a bin32 header is 3 bytes longer than bin8's
    payload = msgpack.packb({"op": "hello", "pad": b"x" * pad}, use_bin_type=True)
    assert len(payload) == limit
    await raw.send(frame(payload))
    assert (await raw.reply()).ok
    await raw.send(struct.pack(">I", limit + 1))
    await raw.expect_error("frame_too_large")
    await raw.expect_closed()


async def test_truncated_frame_then_eof_closes_without_reply(h: Harness) -> None:
    raw = await Raw.open(h)
    await raw.send(struct.pack(">I", 100) + b"\x81" + b"x" * 40)
    await raw.stream.send_eof()
    await raw.expect_closed()
    assert h.server.buffered_bytes == 0 or h.server.open_connections > 0


async def test_frame_split_at_every_byte(h: Harness) -> None:
    raw = await Raw.open(h)
    data = encode_request("status", id=7, tenant_id=T)
    for i in range(len(data)):
        await raw.send(data[i : i + 1])
        await trio.sleep(0)
    r = await raw.reply()
    assert r.ok and r.id == 7


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb([1, 2, 3]),
        msgpack.packb(42),
        msgpack.packb("op"),
        msgpack.packb(None),
        b"\xc1",  # never used in msgpack
        b"\x82\xa2op",  # truncated map
        msgpack.packb({"op": "hello"}) + b"\x00",  # trailing bytes
        b"\x81" + b"\x91" * 5000,  # deep nesting
    ],
)
async def test_not_a_map_is_bad_frame_and_connection_continues(h: Harness, payload: bytes) -> None:
    raw = await Raw.open(h)
    await raw.send(frame(payload))
    await raw.expect_error("bad_frame")
    await raw.still_open()


# -- requests ------------------------------------------------------------------------------

VALID: dict[str, dict[str, Any]] = {
    "tenant_create": {"tenant_id": "1" * 32},
    "tenant_config": {"tenant_id": T, "config": {}},
    "timeline_create": {"tenant_id": T, "timeline_id": "2" * 32, "start_lsn": 0},
    "put": {"tenant_id": T, "timeline_id": TL, "records": [[KEY, 1, img(b"a")]]},
    "get": {"tenant_id": T, "timeline_id": TL, "key": KEY, "lsn": 0},
    "get_history": {"tenant_id": T, "timeline_id": TL, "key": KEY, "lsn": 0},
    "flush": {"tenant_id": T, "timeline_id": TL},
    "compact": {"tenant_id": T, "timeline_id": TL},
    "status": {},
}
REQUIRED = [
    (op, f)
    for op, fields in VALID.items()
    for f in fields
    if not (op == "timeline_create" and f == "start_lsn")
]
MISTYPED: dict[str, list[Any]] = {
    "tenant_id": [5, True, b"0123456789abcdef0123456789abcdef", [T]],
    "timeline_id": [5, False, {"x": 1}],
    "config": [5, "checkpoint_distance=1", [1]],
    "start_lsn": [True, -1, "5", 1.5, -(2**63)],
    "records": [5, "x", {"k": 1}, [[KEY, 1]], [[KEY, True, img(b"a")]], [[KEY[:17], 1, img(b"a")]]],
    "key": ["a" * 18, 5, KEY + b"\x00", True],
    "lsn": [True, -1, "1", 1.0, -(2**63)],
}


@pytest.mark.parametrize(("op", "field"), REQUIRED)
async def test_every_required_field_missing(h: Harness, op: str, field: str) -> None:
    raw = await Raw.open(h)
    fields = dict(VALID[op])
    del fields[field]
    await raw.send(encode_request(op, id=1, **fields))
    r = await raw.expect_error("bad_request", field)
    assert r.id == 1
    await raw.still_open()


@pytest.mark.parametrize(
    ("op", "field", "bad"),
    [
        (op, f, bad)
        for op, fields in VALID.items()
        for f in fields
        for bad in MISTYPED.get(f, [])
        if op in ("tenant_config", "timeline_create", "put", "get")
    ],
)
async def test_every_field_mistyped(h: Harness, op: str, field: str, bad: Any) -> None:
    raw = await Raw.open(h)
    fields = dict(VALID[op])
    fields[field] = bad
    await raw.send(encode_request(op, id="m", **fields))
    r = await raw.reply()
    assert not r.ok and r.code == "bad_request", (r.code, r.message)
    assert "records" in (r.message or "") if field == "records" else field in (r.message or "")
    await raw.still_open()


@pytest.mark.parametrize(
    "bad_id",
    [
        "..",
        "../../etc/passwd",
        "a/b",
        "0123456789abcdef0123456789abcde/",
        "g" * 32,
        "0" * 31,
        "0" * 33,
        "",
        "..%2f" + "0" * 28,
        "0123456789abcdef0123456789abcde\x00",
    ],
)
@pytest.mark.parametrize("field", ["tenant_id", "timeline_id"])
async def test_invalid_ids(h: Harness, bad_id: str, field: str) -> None:
    raw = await Raw.open(h)
    fields = {"tenant_id": T, "timeline_id": "3" * 32, field: bad_id}
    await raw.send(encode_request("timeline_create", **fields))
    await raw.expect_error("invalid_id")
    await raw.send(encode_request("status", tenant_id=bad_id))
    await raw.expect_error("invalid_id")
    await raw.still_open()
    # Nothing was created anywhere near the data directory.
    tenants = os.listdir(os.path.join(h.mgr.data_dir, "tenants"))
    assert tenants == [T]


async def test_uppercase_ids_are_normalised(h: Harness) -> None:
    async with await Client.connect(h.addr) as c:
        st = await c.status(T.upper())
        assert st["tenants"][0]["tenant_id"] == T


async def test_unknown_and_missing_ops(h: Harness) -> None:
    raw = await Raw.open(h)
    for op in ["drop_everything", "PUT", "", "hello\x00"]:
        await raw.send(encode_request(op, id=op))
        r = await raw.expect_error("unknown_op")
        assert r.id == op
    await raw.send(encode_frame({"id": 1}))
    await raw.expect_error("bad_request", "op")
    await raw.send(encode_frame({"op": 5}))
    await raw.expect_error("bad_request", "op")
    await raw.send(encode_frame({"op": "status", "id": [1]}))
    await raw.expect_error("bad_request", "id")
    await raw.still_open()


async def test_not_found_and_already_exists(h: Harness) -> None:
    async with await Client.connect(h.addr) as c:
        for op, fields, code in [
            ("status", {"tenant_id": "9" * 32}, "tenant_not_found"),
            ("flush", {"tenant_id": "9" * 32, "timeline_id": TL}, "tenant_not_found"),
            (
                "get",
                {"tenant_id": T, "timeline_id": "9" * 32, "key": KEY, "lsn": 0},
                "timeline_not_found",
            ),
            ("tenant_create", {"tenant_id": T}, "already_exists"),
            ("timeline_create", {"tenant_id": T, "timeline_id": TL}, "already_exists"),
            ("tenant_create", {"tenant_id": "8" * 32, "config": {"nope": 1}}, "bad_request"),
            ("compact", {"tenant_id": T, "timeline_id": "9" * 32}, "timeline_not_found"),
        ]:
            with pytest.raises(ServerError) as ei:
                await c.request(op, **cast(dict[str, Any], fields))
            assert ei.value.code == code, (op, ei.value)
        assert "8" * 32 not in os.listdir(os.path.join(h.mgr.data_dir, "tenants"))


async def test_put_bad_values_and_lsn_order(h: Harness) -> None:
    async with await Client.connect(h.addr) as c:

        async def put_err(records: list[Any]) -> str:
            with pytest.raises(ServerError) as ei:
                await c.put(T, TL, records)
            return ei.value.code

        assert await put_err([[KEY, 5, img(b"a")], [KEY, 6, b"\x00\x00\x00\x07"]]) == "bad_value"
        assert await put_err([[KEY, 5, img(b"a") + b"x"]]) == "bad_value"
        bad_init = encode_value(TestRecord("x", clear=False, will_init=True))
        assert await put_err([[KEY, 5, bad_init]]) == "bad_value"
        assert await put_err([[KEY, 6, img(b"a")], [KEY, 5, img(b"b")]]) == "lsn_out_of_order"
        assert await put_err([[b"\xff" * 18, 5, img(b"a")]]) == "bad_request"
        # Nothing of the rejected batches was applied.
        assert (await c.timeline_status(T, TL))["last_record_lsn"] == 0
        r = await c.put(T, TL, [(KEY, 10, img(b"ten")), (KEY, 12, img(b"twelve"))])
        assert r["last_record_lsn"] == 12
        # Going backwards across batches (above disk_consistent_lsn) is refused ...
        assert await put_err([[KEY, 11, img(b"eleven")]]) == "lsn_out_of_order"
        # ... below disk_consistent_lsn it is skipped (a resend after reconnect).
        assert await c.flush(T, TL) == 12
        r = await c.put(T, TL, [(KEY, 11, img(b"old")), (KEY, 13, img(b"13"))])
        assert r["skipped"] == 1 and r["last_record_lsn"] == 13
        assert await c.get(T, TL, KEY, 12) == b"twelve"
        with pytest.raises(ServerError) as ei:
            await c.get(T, TL, KEY, 14)
        assert ei.value.code == "bad_request"
        assert await c.get(T, TL, bytes(18), 13) is None


async def test_history_and_redo_errors(h: Harness) -> None:
    k2 = bytes(17) + b"\x02"
    async with await Client.connect(h.addr) as c:
        await c.put(
            T,
            TL,
            [
                (k2, 1, encode_value(TestRecord("a", clear=True, will_init=True))),
                (k2, 2, encode_value(TestRecord("b"))),
                (k2, 3, encode_value(TestRecord("c", only_if="nope"))),
            ],
        )
        assert await c.get(T, TL, k2, 2) == b"ab"
        with pytest.raises(ServerError) as ei:
            await c.get(T, TL, k2, 3)
        assert ei.value.code == "redo_failed"
        hist = await c.request("get_history", tenant_id=T, timeline_id=TL, key=k2, lsn=2)
        assert hist["image"] is None and hist["image_lsn"] is None
        assert [lsn for lsn, _ in hist["records"]] == [1, 2]


# -- auth -----------------------------------------------------------------------------------


async def test_auth_token(nursery: trio.Nursery) -> None:
    async with AsyncExitStack() as stack:
        h2 = await _start(nursery, stack, auth_token="s3cr\u00e9t")
        raw = await Raw.open(h2)
        await raw.send(encode_request("status", id=1))
        await raw.expect_error("unauthorized")  # not closed: only hello closes
        await raw.send(encode_request("nonsense", id=2))
        await raw.expect_error("unauthorized")
        await raw.send(encode_request("hello", id=3, token="wrong"))
        await raw.expect_error("unauthorized")
        await raw.expect_closed()
        raw = await Raw.open(h2)
        await raw.send(encode_request("hello", id=4))
        await raw.expect_error("unauthorized")
        await raw.expect_closed()
        raw = await Raw.open(h2)  # a token that is not a string: unauthorized, closed
        await raw.send(encode_request("hello", id=5, token=5))
        await raw.expect_error("unauthorized")
        await raw.expect_closed()
        with pytest.raises(ServerError) as ei:
            await Client.connect(h2.addr, token="nope")
        assert ei.value.code == "unauthorized"
        async with await Client.connect(h2.addr, token="s3cr\u00e9t") as c:
            assert c.server_info == {"version": 1, "io_engine": "std-fs"}
            assert (await c.status())["tenants"] == []


# -- load and abuse ---------------------------------------------------------------------------


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        # A machine whose hard limit is below this cannot run the test: fail, not skip.
        assert hard == resource.RLIM_INFINITY or hard >= n, f"RLIMIT_NOFILE hard limit {hard} < {n}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


JUNK: list[bytes] = [
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    frame(b"\xc1"),
    frame(msgpack.packb([1, 2])),
    frame(b"\x81" + b"\x91" * 100),
    encode_request("nope"),
    encode_request("put", tenant_id=T, timeline_id=TL, records=[[KEY, True, b""]]),
    encode_request("get", tenant_id="..", timeline_id=TL, key=KEY, lsn=1),
    struct.pack(">I", 500_000) + b"\x81" + b"x" * 1000,  # truncated large frame, then EOF
]


async def test_thousand_junk_connections_and_a_good_client(h: Harness) -> None:
    _raise_nofile(4096)
    n = 1000
    replies = 0
    closes = 0
    rng = random.Random(7)
    progress = trio.Event()

    async def junk(i: int) -> None:
        nonlocal replies, closes
        try:
            stream = await trio.open_unix_socket(h.path)
        except OSError:
            return
        async with stream:
            try:
                data = JUNK[i % len(JUNK)] + bytes(rng.randrange(256) for _ in range(i % 7))
                await stream.send_all(data)
                await stream.send_eof()
                while await stream.receive_some(65536):
                    replies += 1
                closes += 1
            except trio.BrokenResourceError:
                closes += 1

    async def good() -> None:
        for lsn in range(1000, 1020):
            await _good_client_roundtrip(h, lsn)
        progress.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good)
            for i in range(n):
                nursery.start_soon(junk, i)
    assert progress.is_set()
    assert closes == n
    assert replies >= n * 0.5
    assert h.server.buffered_peak <= h.server.buffered_cap
    # The server closes its side of the last connections asynchronously (the good
    # client's close races with this check): wait for every handler to finish.
    with trio.fail_after(10):
        while h.server._conns:
            await trio.sleep(0.01)
    assert h.server.buffered_bytes == 0
    async with await Client.connect(h.addr) as c:
        for lsn in range(1000, 1020):
            assert await c.get(T, TL, KEY, lsn) == b"v%d" % lsn
    with trio.fail_after(5):
        while h.server.open_connections:
            await trio.sleep(0.01)


async def test_budget_caps_total_buffered_bytes(nursery: trio.Nursery) -> None:
    """Many connections sending large frames at once: they queue for budget, all are
    answered (no deadlock), and the total never exceeds the cap."""
    async with AsyncExitStack() as stack:
        frame_max = 256 * 1024
        h2 = await _start(nursery, stack, max_frame_bytes=frame_max, max_buffered_bytes=1 << 20)
        cap = h2.server.buffered_cap
        assert cap < 64 * frame_max / 2
        peak_waiting = 0
        done = trio.Event()

        async def watch() -> None:
            nonlocal peak_waiting
            while not done.is_set():
                peak_waiting = max(peak_waiting, h2.server.budget_waiters)
                assert h2.server.buffered_bytes <= cap
                await trio.sleep(0.001)

        async def big(i: int) -> None:
            stream = await trio.open_unix_socket(h2.path)
            async with stream:
                payload = (
                    b"\x81\xa3pad\xc6" + struct.pack(">I", frame_max - 10) + b"y" * (frame_max - 10)
                )
                body = frame(payload[:frame_max])
                for _ in range(3):
                    await stream.send_all(body)
                dec = ReplyDecoder()
                got = 0
                while got < 3:
                    ev = dec.next_event()
                    if isinstance(ev, Reply):
                        assert ev.code in ("unknown_op", "bad_request", "bad_frame"), ev
                        got += 1
                        continue
                    dec.receive_data(await stream.receive_some(65536))

        with trio.fail_after(60):
            async with trio.open_nursery() as n2:
                n2.start_soon(watch)
                async with trio.open_nursery() as n3:
                    for i in range(64):
                        n3.start_soon(big, i)
                done.set()
        assert h2.server.buffered_peak <= cap
        assert peak_waiting > 0, "the cap was never reached: the test proves nothing"


async def test_slow_reader_does_not_block_others(h: Harness) -> None:
    """A client that pipelines requests and never reads: the server stalls on that
    connection only, its buffered bytes stay bounded, and the replies arrive in order once
    the client reads."""
    big_key = bytes(17) + b"\x09"
    async with await Client.connect(h.addr) as c:
        await c.put(T, TL, [(big_key, 1, img(b"z" * 60_000))])
    raw = await Raw.open(h)
    req = encode_request("get", id=0, tenant_id=T, timeline_id=TL, key=big_key, lsn=1)
    n = 400  # ~24 MB of replies: far more than the socket buffers hold
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for i in range(n):
            await raw.send(
                encode_request("get", id=i, tenant_id=T, timeline_id=TL, key=big_key, lsn=1)
            )
            sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        await trio.sleep(0.5)
        assert sent < n, "the server read everything: no back-pressure"
        # The server holds at most one frame's worth for this client.
        assert h.server.buffered_bytes <= 2 * len(req) + 64 * 1024 + h.server.max_frame_bytes
        for lsn in range(2, 12):
            await _good_client_roundtrip(h, lsn)
        for i in range(n):
            r = await raw.reply()
            assert r.ok and r.id == i and r.fields["value"] == b"z" * 60_000
    assert sent == n


async def test_graceful_shutdown_answers_in_flight_then_refuses(nursery: trio.Nursery) -> None:
    async with AsyncExitStack() as stack:
        h2 = await _start(nursery, stack)
        async with await Client.connect(h2.addr) as c:
            await c.request("tenant_create", tenant_id=T)
            await c.request("timeline_create", tenant_id=T, timeline_id=TL)
            await c.put(T, TL, [(KEY, 5, img(b"five"))])
            raw = await Raw.open(h2)
            await raw.still_open()
            failpoints.configure("flush-before-dcl-update=sleep(1000)")  # a slow final flush
            async with trio.open_nursery() as n2:
                n2.start_soon(h2.server.shutdown)
                await trio.sleep(0.2)
                await raw.send(encode_request("status", id=9))
                await raw.expect_error("shutting_down")
                await raw.expect_closed()
            assert failpoints.hits("flush-before-dcl-update") == 1
            # Open layers were flushed by the shutdown.
            tl = h2.mgr.timeline(T, TL)
            assert tl.disk_consistent_lsn == 5
        with pytest.raises(OSError):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(h2.path)
            finally:
                s.close()
