"""A trio client of the wire protocol (SPEC section 5), shared by the CLI, tests and benchmarks.

It speaks through the sans-IO encoders and :class:`~pageserver.wire.ReplyDecoder`
of :mod:`pageserver.wire`, so client and server cannot disagree on framing.

* :meth:`Client.request` sends one request and waits for its reply (serialised by a lock,
  so several tasks may share a client), raising :class:`ServerError` for ``ok: false``.
* :meth:`Client.put_pipelined` streams ``put`` batches with up to ``window`` of them in
  flight: the sender runs ahead of the replies, which is what keeps the socket (and the
  server's ingest) busy instead of paying a round trip per batch.

Connection trouble of any kind (refused, reset, closed mid-reply, a malformed reply) is
raised as :class:`ConnectionLost`, the one exception a reconnecting caller has to catch.
"""

from __future__ import annotations

import itertools
import math
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from pageserver.addresses import Address, parse_address
from pageserver.layers.batch import PutColumns, PutRecord
from pageserver.wire import (
    CLOSED,
    NEED_DATA,
    ProtocolError,
    Reply,
    ReplyDecoder,
)
from pageserver.wire._framing import encode_frame_parts

__all__ = ["Client", "ConnectionLost", "PutBatch", "ServerError", "backoff_delays"]

_RECEIVE_CHUNK = 256 * 1024
#: Buffers per ``sendmsg`` call (far below IOV_MAX).
_IOV_BATCH = 64
#: SO_SNDBUF asked for on Unix sockets (see ``_open_stream``).
_UNIX_SNDBUF = 4 << 20


class ServerError(Exception):
    """The server answered ``ok: false``. ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(Exception):
    """The connection could not be made, broke, or carried a malformed reply."""


async def _open_stream(addr: Address) -> trio.SocketStream:
    if addr.unix_path is not None:
        stream = await trio.open_unix_socket(addr.unix_path)
        # A Unix socket's send buffer is all that is in flight (the kernel copies into the
        # receiver's queue): the default ~208 KiB holds a fifth of a 1 MiB put, so sender
        # and server took turns. 4 MiB (the usual wmem_max; the kernel caps it) lets the
        # sender queue whole frames while the server appends the previous one. (TCP keeps
        # its autotuning: setting SO_SNDBUF would turn it off.)
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _UNIX_SNDBUF)
        except OSError:
            pass
        return stream
    return await trio.open_tcp_stream(addr.host or "127.0.0.1", addr.port)


@dataclass(frozen=True, slots=True)
class PutBatch:
    """One ``put`` request's records and an opaque tag handed back with its reply.

    The records go out in the columnar form (SPEC section 5), encoded when the batch is
    sent; a caller that builds batches ahead of time (benchmarks) may give
    :class:`~pageserver.layers.batch.PutColumns` already encoded.
    """

    records: Sequence[PutRecord] | PutColumns
    tag: object = None


def next_reply(decoder: ReplyDecoder, addr: str) -> Reply | None:
    """The decoder's next reply, or None when it needs more bytes; a malformed reply or a
    closed connection is :class:`ConnectionLost`. What every client (this one, and the
    blocking test client of :mod:`pageserver.testing.blocking`) makes of the decoder's
    events."""
    ev = decoder.next_event()
    if isinstance(ev, Reply):
        return ev
    if isinstance(ev, ProtocolError):
        raise ConnectionLost(f"malformed reply from {addr}: {ev.message}")
    if ev is CLOSED:
        raise ConnectionLost(f"connection to {addr} closed by the server")
    assert ev is NEED_DATA
    return None


class Client:
    """One connection to a pageserver. Create with :meth:`connect`; close with :meth:`aclose`
    (or ``async with``)."""

    def __init__(self, stream: trio.abc.Stream, addr: str = "") -> None:
        self._stream = stream
        self._decoder = ReplyDecoder()
        self._ids = itertools.count(1)
        self._lock = trio.Lock()
        self.addr = addr
        #: What the server's ``hello`` reply said (``version``, ``io_engine``).
        self.server_info: dict[str, Any] = {}

    @classmethod
    async def connect(cls, addr: str, token: str | None = None, *, hello: bool = True) -> Client:
        """Connect to ``addr`` (``host:port`` or ``unix:/path``) and, by default, say ``hello``.

        ``hello`` carries ``token`` when given; on a server with ``auth_token`` a missing or
        wrong token raises :class:`ServerError` ``unauthorized`` (and the server closes).
        """
        parsed = parse_address(addr)
        try:
            stream = await _open_stream(parsed)
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {addr}: {e.strerror or e}") from e
        client = cls(stream, addr)
        if hello:
            try:
                fields = {"token": token} if token is not None else {}
                client.server_info = await client.request("hello", **fields)
            except BaseException:
                await client.aclose()
                raise
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)

    # -- low level ----------------------------------------------------------------------------

    async def send(self, op: str, **fields: Any) -> int:
        """Send one request without waiting; returns its id. Pair with :meth:`receive`."""
        rid = next(self._ids)
        # encode_request's map, as parts: large bins (a put's values) are not copied.
        parts = encode_frame_parts({"op": op, "id": rid, **fields})
        try:
            if len(parts) == 1:
                await self._stream.send_all(parts[0])
            else:
                await self._send_parts(parts)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise ConnectionLost(f"connection to {self.addr} lost while sending: {e}") from e
        return rid

    async def _send_parts(self, parts: list[bytes]) -> None:
        """Send a frame given as parts with ``sendmsg`` (no concatenation: the parts are
        the caller's own buffers). Only one task sends on a client at a time (the lock, or
        ``put_pipelined``'s sender), so the socket is used directly."""
        stream = self._stream
        if not isinstance(stream, trio.SocketStream):
            await stream.send_all(b"".join(parts))
            return
        sock = stream.socket
        views = [memoryview(p) for p in parts]
        i = 0
        while i < len(views):
            sent = await sock.sendmsg(views[i : i + _IOV_BATCH])
            while sent:
                head = views[i]
                if sent >= len(head):
                    sent -= len(head)
                    i += 1
                else:
                    views[i] = head[sent:]
                    sent = 0

    async def receive(self) -> Reply:
        """The next reply, in order (success or not; see :meth:`check`)."""
        while (reply := next_reply(self._decoder, self.addr)) is None:
            try:
                data = await self._stream.receive_some(_RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise ConnectionLost(f"connection to {self.addr} lost: {e}") from e
            self._decoder.receive_data(data)
        return reply

    @staticmethod
    def check(reply: Reply) -> dict[str, Any]:
        """The reply's fields, or :class:`ServerError` for ``ok: false``."""
        if not reply.ok:
            raise ServerError(reply.code or "internal", reply.message or "")
        return reply.fields

    # -- requests -----------------------------------------------------------------------------

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` with ``fields`` and return the reply's fields (without id/ok).

        Fields that are ``None`` are left out (the server treats nil as absent anyway).
        """
        body = {k: v for k, v in fields.items() if v is not None}
        async with self._lock:
            rid = await self.send(op, **body)
            reply = await self.receive()
        if reply.id != rid:
            raise ConnectionLost(f"reply id {reply.id!r} does not match request id {rid}")
        return self.check(reply)

    async def put(
        self, tenant_id: str, timeline_id: str, records: Sequence[PutRecord] | PutColumns
    ) -> dict[str, Any]:
        """One ``put``, sent in the columnar form."""
        return await self.request(
            "put", tenant_id=tenant_id, timeline_id=timeline_id,
            **PutColumns.from_records(records).wire_fields(),
        )  # fmt: skip

    async def get(self, tenant_id: str, timeline_id: str, key: bytes, lsn: int) -> bytes | None:
        fields = await self.request(
            "get", tenant_id=tenant_id, timeline_id=timeline_id, key=bytes(key), lsn=lsn
        )
        value = fields.get("value")
        assert value is None or isinstance(value, bytes)
        return value

    async def status(self, tenant_id: str | None = None) -> dict[str, Any]:
        return await self.request("status", tenant_id=tenant_id)

    async def timeline_status(self, tenant_id: str, timeline_id: str) -> dict[str, Any]:
        """The ``status`` entry of one timeline; ``ServerError`` timeline_not_found if absent."""
        st = await self.status(tenant_id)
        for tenant in st.get("tenants", []):
            for tl in tenant.get("timelines", []):
                if tl.get("timeline_id") == timeline_id.lower():
                    return dict(tl)
        raise ServerError("timeline_not_found", f"timeline {timeline_id} not found")

    async def flush(self, tenant_id: str, timeline_id: str) -> int:
        fields = await self.request("flush", tenant_id=tenant_id, timeline_id=timeline_id)
        dcl = fields["disk_consistent_lsn"]
        assert isinstance(dcl, int)
        return dcl

    async def put_pipelined(
        self,
        tenant_id: str,
        timeline_id: str,
        batches: Iterable[PutBatch] | AsyncIterator[PutBatch],
        *,
        window: int = 8,
        on_reply: Callable[[PutBatch, dict[str, Any]], Awaitable[None] | None] | None = None,
    ) -> int:
        """Send ``batches`` as ``put`` requests with up to ``window`` unanswered at a time.

        ``on_reply(batch, fields)`` runs for each success reply, in order. The first error
        reply raises :class:`ServerError` (batches after it may have been sent; the caller
        decides what to resend). Returns the number of batches acknowledged.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        slots = trio.Semaphore(window)
        pending: deque[tuple[int, PutBatch]] = deque()
        done_sending = False
        acked = 0
        wakeup = trio.Event()

        async def sender() -> None:
            nonlocal done_sending, wakeup

            async def each() -> AsyncIterator[PutBatch]:
                if isinstance(batches, AsyncIterator):
                    async for b in batches:
                        yield b
                else:
                    for b in batches:
                        yield b

            async for batch in each():
                await slots.acquire()
                rid = await self.send(
                    "put",
                    tenant_id=tenant_id,
                    timeline_id=timeline_id,
                    **PutColumns.from_records(batch.records).wire_fields(),
                )
                pending.append((rid, batch))
                wakeup.set()
            done_sending = True
            wakeup.set()

        async def receiver() -> None:
            nonlocal acked, wakeup
            while True:
                if not pending:
                    if done_sending:
                        return
                    wakeup = trio.Event()
                    await wakeup.wait()
                    continue
                reply = await self.receive()
                rid, batch = pending.popleft()
                if reply.id != rid:
                    raise ConnectionLost(f"reply id {reply.id!r} does not match request id {rid}")
                fields = self.check(reply)
                acked += 1
                slots.release()
                if on_reply is not None:
                    r = on_reply(batch, fields)
                    if r is not None:
                        await r

        async with self._lock:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender)
                    nursery.start_soon(receiver)
            except BaseExceptionGroup as eg:
                raise _first_meaningful(eg) from None
        return acked


def _first_meaningful(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """Unwrap a nursery's group to the error a caller should see (ServerError first)."""
    flat: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            flat.append(e)

    walk(eg)
    for kind in (ServerError, ConnectionLost):
        for e in flat:
            if isinstance(e, kind):
                return e
    return flat[0] if flat else eg


def backoff_delays(first: float = 0.1, cap: float = 2.0) -> Iterable[float]:
    """Exponential reconnect delays: first, 2*first, ... capped at ``cap``, forever."""
    for attempt in itertools.count():
        yield min(cap, first * math.pow(2, attempt))
