"""The trio server of the wire protocol (SPEC section 5) in front of a TenantManager.

One task per connection runs the loop the sans-IO :class:`ServerConnection` documents:
read only after ``NEED_DATA``, at most ``conn.room`` bytes, and answer each request before
reading the next. Three properties follow without further machinery:

* replies go out in request order per connection;
* a client that never reads its replies stalls on TCP back-pressure in the send of its own
  task and stops being read from, while every other connection carries on; while that send
  waits the connection holds no byte budget, and a send that makes no progress for
  ``STALL_TIMEOUT`` closes the connection (the peer is gone);
* a connection never buffers more than ``max_frame_bytes + 4`` bytes.

**Total memory.** A per-connection bound times a thousand connections is still too much, so
every byte a connection reads is first charged to one of two process-wide
:class:`ByteBudget` pools, and stays charged until the request it belongs to has been
answered (which also covers the decoded request while the tenant manager works on it).
When a pool is exhausted, connections wait before reading (their peers see TCP
back-pressure) until others drain. Two pools, because one is deadlock-prone: with a single
pool, connections that each hold part of a frame and wait for budget to read the rest can
hold all of it between them, and then nobody moves (honest clients sending big frames do
that; the first test of this design did).

* the *frame pool* (``max_buffered_bytes``) holds whole frames: once a frame's header is
  in, the whole frame is reserved in one step, and reads then never go past its end (except
  by a non-blocking speculative extra from the read pool). A frame-pool holder therefore
  never waits for any budget: it only needs its peer to send.
* the *read pool* (1/8 of that, at least 4 MiB) holds bytes read before a header is known
  and speculative read-ahead. A chunk (64 KiB) is taken only for the length of one
  non-blocking read, after the socket has shown data, and what the read did not fill is
  given back at once: a connection keeps only the bytes it really buffers (at most 3 for a
  partial header, or the small frames of one read waiting for their turn). A connection
  gives its read-pool bytes back before it waits for the frame pool, so read-pool bytes
  are never held across a wait for budget (frame-pool holders may be stalled peers that
  take up to the stall timeout to go).

So there is no cycle of waiters, and the total stays at or below the sum of the pools plus
at most one chunk per connection waiting for a frame reservation.
Between frames a connection holds no budget at all (it waits for readability before taking
any), so idle connections cost nothing, and neither do a thousand peers that each sent one
byte of a header. Every wait ends on the peer's close or on ``STALL_TIMEOUT`` (30 s): a
peer silent in the middle of a frame or header for that long, or one that could not get
budget for that long, is taken as gone (SPEC section 5 lets the server close when the peer
is gone) and closed, so a few slow-loris peers cannot make everyone else wait for ever.
This is this server's reading of "gone"; a peer that pauses between frames is never closed.

**Storms.** A thousand stalled peers that all send and close at once wake in one pass of
the scheduler; a pass that has run ``PASS_BUDGET`` lets *cold* connections (no frame for
``COLD_AFTER``) that wake in it wait their turn, a few per pass, while connections with
requests going are served at once (:meth:`Server._take_turn`). Warnings about peers are
rate-limited server-wide (:class:`_LogLimit`).

Parsing runs on the event loop, one frame at a time (it is synchronous): the transient cost
of decoding hostile nested msgpack (up to ~32x a frame, see :mod:`protocol`) is therefore
a process-wide constant, not per connection.

**Closing.** The server closes a connection only where SPEC section 5 says: the peer is
gone, after ``frame_too_large``, after an ``unauthorized`` reply to ``hello``. (And when the
daemon exits.) Anything a handler raises is turned into an error reply: a typed error's
``code``, or ``internal`` with the exception logged.

**Graceful stop** (:meth:`Server.shutdown`): stop accepting, switch every connection to
"reply ``shutting_down``", wait for requests already being handled, flush open layers
(``TenantManager.shutdown``) while connections still answer, then close them.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from pageserver.addresses import Address, parse_address
from pageserver.errors import PageserverError
from pageserver.tenant.manager import TenantManager
from pageserver.wire import (
    BUSY,
    CLOSED,
    HEADER_LEN,
    NEED_DATA,
    PROTOCOL_VERSION,
    CompactRequest,
    ErrorCode,
    ErrorEvent,
    FlushRequest,
    GcRequest,
    GetHistoryRequest,
    GetRequest,
    HelloRequest,
    PutRequest,
    Request,
    ServerConnection,
    StatusRequest,
    TenantAttachRequest,
    TenantConfigRequest,
    TenantCreateRequest,
    TenantDetachRequest,
    TimelineCreateRequest,
    encode_error,
    encode_reply,
    token_checker,
)

__all__ = [
    "BindError",
    "ByteBudget",
    "Server",
    "default_max_buffered_bytes",
    "open_listeners",
]

log = structlog.get_logger("pageserver.server")

#: Largest single read when the frame size is not known yet (or is small).
CHUNK = 64 * 1024
#: Largest single read while completing a known (large) frame.
BIG_CHUNK = 1024 * 1024
#: How long a graceful stop waits for requests already being handled.
DRAIN_TIMEOUT = 60.0
#: A peer that stops sending in the middle of a frame (or of a frame header) for this long
#: is taken as gone and its connection closed: it holds byte budget that other clients
#: need. Between frames a connection holds no budget and may stay idle for ever.
STALL_TIMEOUT = 30.0
#: Bad requests logged per connection before logging only every 1000th.
BAD_REQUEST_LOG_LIMIT = 10
#: A scheduler pass longer than this is a wake-up storm: cold connections that wake later
#: in it wait their turn (see :meth:`Server._take_turn`).
PASS_BUDGET = 0.002
#: A connection with no frame done for this long is cold (a stalled or idle peer).
COLD_AFTER = 1.0
#: Cold connections let through per scheduler pass during a storm.
TURNS_PER_PASS = 16

_PEER_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)


def default_max_buffered_bytes(max_frame_bytes: int) -> int:
    """Frame pool: room for four maximal frames, and never below 64 MiB."""
    return max(4 * (max_frame_bytes + HEADER_LEN), 64 * 1024 * 1024)


def read_pool_bytes(frame_pool: int) -> int:
    """Read pool: 1/8 of the frame pool, at least 4 MiB (64 concurrent chunk reads)."""
    return max(frame_pool // 8, 64 * CHUNK)


class BindError(Exception):
    """A listen address could not be bound; the message is one line naming it."""


class ByteBudget:
    """A process-wide cap on bytes held by connections, with FIFO waiters.

    ``acquire(n)`` waits until ``n`` more bytes fit; ``release(n)`` returns them. FIFO keeps
    a big reservation (a whole frame) from being starved by a stream of small ones.
    ``peak`` is the high-water mark, for tests and metrics.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, trio.Event]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` bytes if they fit now (and nobody queues before us); never waits."""
        if not self._waiters and self.used + n <= self.capacity:
            self._grant(n)
            return True
        return False

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` bytes fit, then take them. Cancel-safe: a cancelled acquire
        holds nothing (the fast path raises a pending cancellation *before* it grants,
        then yields shielded; a queued waiter granted on its way out gives the grant back).
        """
        if n <= 0:
            await trio.lowlevel.checkpoint()
            return
        if n > self.capacity:
            raise ValueError(f"cannot reserve {n} bytes of a {self.capacity}-byte budget")
        if not self._waiters and self.used + n <= self.capacity:
            # (It used to grant, then checkpoint: a cancellation delivered at that
            # checkpoint left the bytes granted to nobody, for ever.)
            await trio.lowlevel.checkpoint_if_cancelled()  # never yields when not cancelled
            self._grant(n)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        entry = (n, trio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():  # granted, but we were cancelled on the way out
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, n: int) -> None:
        if n <= 0:
            return
        self.used -= n
        assert self.used >= 0, "released more than acquired"
        self._wake()

    def _grant(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            n, ev = self._waiters.popleft()
            self._grant(n)
            ev.set()


# ---------------------------------------------------------------------------------------
# Listeners
# ---------------------------------------------------------------------------------------


async def open_listeners(addr_text: str) -> list[trio.SocketListener]:
    """Bind ``addr_text`` (``host:port`` or ``unix:/path``). Errors are :class:`BindError`.

    A leftover unix socket file nobody listens on (a crashed daemon's) is replaced; a live
    one, or any other file at that path, is an error rather than silently stolen.
    """
    try:
        addr = parse_address(addr_text)
    except ValueError as e:
        raise BindError(str(e)) from None
    try:
        if addr.unix_path is not None:
            return [await _open_unix_listener(addr.unix_path)]
        return list(await trio.open_tcp_listeners(addr.port, host=addr.host))
    except OSError as e:
        raise BindError(f"cannot listen on {addr_text}: {e.strerror or e}") from None


async def _open_unix_listener(path: str) -> trio.SocketListener:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, "a file that is not a socket exists at that path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale: nobody is listening
        except OSError:
            pass
        else:
            raise OSError(errno.EADDRINUSE, "another server is listening on that socket")
        finally:
            probe.close()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(4096)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def listener_address(listener: trio.SocketListener) -> str:
    """The address a bound listener serves, in ``listen_addr`` form (for port 0 binds)."""
    sockname = listener.socket.getsockname()
    if listener.socket.family == socket.AF_UNIX:
        return f"unix:{sockname}"
    host, port = sockname[0], sockname[1]
    return str(Address(host, port))


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


class _LogLimit:
    """Warnings about peers (bad requests, stalls), at most ``burst`` lines per event per
    ``period`` seconds for the whole server; the next line let through says how many of
    that event were left out (``suppressed``).

    A thousand peers that send junk, stall or go at once would otherwise write a thousand
    lines in one pass of the scheduler (tens of milliseconds every other client waits).
    """

    def __init__(self, burst: int = 10, period: float = 1.0) -> None:
        self.burst = burst
        self.period = period
        self._windows: dict[str, tuple[float, int]] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, c: _Conn, event: str, **fields: Any) -> None:
        now = time.monotonic()
        start, count = self._windows.get(event, (now, 0))
        if now - start >= self.period:
            start, count = now, 0
        if count >= self.burst:
            self._windows[event] = (start, count)
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._windows[event] = (start, count + 1)
        skipped = self._suppressed.pop(event, 0)
        if skipped:
            fields["suppressed"] = skipped
        c.log.warning(event, **fields)


class _PassClock(trio.abc.Instrument):
    """When the scheduler's current pass began (the end of its last I/O wait)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        self.start = time.perf_counter()


@dataclass(eq=False)
class _Conn:
    """What the server tracks per connection."""

    id: int
    proto: ServerConnection
    stream: trio.SocketStream
    peer: str
    frame_charge: int = 0
    """Bytes of the frame pool held: 0, or the size of the frame at the head."""
    read_charge: int = 0
    """Bytes of the read pool held."""
    requests: int = 0
    bad_requests: int = 0
    log: Any = field(default=None)
    last_frame: float = field(default_factory=time.monotonic)
    """When the connection opened or last had a frame answered (hot or cold)."""


class Server:
    """Serves one TenantManager on any number of listeners. See the module docstring."""

    def __init__(
        self,
        mgr: TenantManager,
        *,
        io_engine: str,
        max_frame_bytes: int,
        auth_token: str | None = None,
        max_buffered_bytes: int | None = None,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.mgr = mgr
        self.stall_timeout = stall_timeout
        self.io_engine = io_engine
        self.max_frame_bytes = max_frame_bytes
        self._auth_token = auth_token
        self._token_check = token_checker(auth_token) if auth_token is not None else None
        cap = max_buffered_bytes or default_max_buffered_bytes(max_frame_bytes)
        # A whole frame must always fit, or a maximal frame could never be read.
        self.frame_pool = ByteBudget(max(cap, max_frame_bytes + HEADER_LEN))
        self.read_pool = ByteBudget(read_pool_bytes(self.frame_pool.capacity))
        self.buffered_peak = 0
        # The shared read buffer of _read_into_decoder (not charged: it never holds bytes
        # across an await).
        self._read_view = memoryview(bytearray(BIG_CHUNK + CHUNK))
        self._conns: set[_Conn] = set()
        self._conn_ids = itertools.count(1)
        self._in_flight = 0
        self._idle = trio.Event()
        #: Held by the connection whose request is being parsed in steps (see
        #: _connection_loop): one at a time.
        self._parse_slot = trio.Lock()
        self._idle.set()
        self._shutting_down = False
        self._accept_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self.addresses: list[str] = []
        self.connections_total = 0
        self._log_limit = _LogLimit()
        self._clock = _PassClock()
        self._turns: deque[trio.Event] = deque()
        self._turns_wake = trio.Event()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def buffered_bytes(self) -> int:
        """Bytes currently charged to connections (always <= :attr:`buffered_cap`)."""
        return self.frame_pool.used + self.read_pool.used

    @property
    def buffered_cap(self) -> int:
        return self.frame_pool.capacity + self.read_pool.capacity

    @property
    def budget_waiters(self) -> int:
        return self.frame_pool.waiting + self.read_pool.waiting

    def _note_peak(self) -> None:
        total = self.frame_pool.used + self.read_pool.used
        if total > self.buffered_peak:
            self.buffered_peak = total

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listeners`` until :meth:`shutdown` finishes (or cancellation).

        Connection tasks live in a nursery of their own, so that stopping the accept loops
        does not touch established connections.
        """
        self.addresses = [listener_address(lst) for lst in listeners]
        unix_paths = [a[len("unix:") :] for a in self.addresses if a.startswith("unix:")]
        trio.lowlevel.add_instrument(self._clock)
        try:
            async with trio.open_nursery() as conn_nursery:
                self._conn_nursery = conn_nursery
                conn_nursery.start_soon(self._turn_pump)
                with trio.CancelScope() as accept_scope:
                    self._accept_scope = accept_scope
                    if self._shutting_down:
                        accept_scope.cancel()
                    async with trio.open_nursery() as accept_nursery:
                        for lst in listeners:
                            accept_nursery.start_soon(self._accept_loop, lst)
                        task_status.started()
                for lst in listeners:
                    with trio.CancelScope(shield=True):
                        await lst.aclose()
                log.info("stopped accepting connections")
                # Connections carry on until shutdown() cancels this nursery.
                await trio.sleep_forever()
        finally:
            trio.lowlevel.remove_instrument(self._clock)
            for lst in listeners:
                with trio.CancelScope(shield=True):
                    await lst.aclose()
            for path in unix_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        """Like ``trio.serve_listeners``' loop: back off on EMFILE instead of failing."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    log.warning("accept failed; backing off", error=os.strerror(e.errno or 0))
                    await trio.sleep(0.1)
                    continue
                raise
            assert self._conn_nursery is not None
            self._conn_nursery.start_soon(self._handle_connection, stream)

    async def shutdown(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """The graceful stop of the module docstring. Returns once connections are closed."""
        self._shutting_down = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for c in list(self._conns):
            c.proto.start_shutdown()
        with trio.move_on_after(drain_timeout) as scope:
            await self._idle.wait()
        if scope.cancelled_caught:
            log.warning("requests still running after the drain timeout", in_flight=self._in_flight)
        await self.mgr.shutdown()  # the flush; the caller may cancel it (a second signal)
        if self._conn_nursery is not None:
            self._conn_nursery.cancel_scope.cancel()

    # -- one connection -------------------------------------------------------------------------

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        cid = next(self._conn_ids)
        try:
            peer = _peer_name(stream)
        except OSError:
            peer = "?"
        proto = ServerConnection(
            self.max_frame_bytes,
            auth_required=self._token_check is not None,
            token_check=self._token_check,
        )
        c = _Conn(cid, proto, stream, peer)
        c.log = log.bind(conn=cid, peer=peer)
        if self._shutting_down:
            proto.start_shutdown()
        self._conns.add(c)
        self.connections_total += 1
        c.log.debug("connection opened")
        reason = "closed"
        try:
            reason = await self._connection_loop(c)
        except _PEER_GONE as e:
            reason = f"peer gone ({type(e).__name__})"
        except OSError as e:
            reason = f"peer gone ({e.strerror or e})"
        except Exception as e:  # a bug: never let it reach the nursery (it would stop us)
            reason = "internal error"
            c.log.error("connection handler failed", error=repr(e), exc_info=True)
        finally:
            self._conns.discard(c)
            self.frame_pool.release(c.frame_charge)
            self.read_pool.release(c.read_charge)
            c.frame_charge = c.read_charge = 0
            # A plain close (what aclose_forcefully comes to, without its cancelled scope,
            # the Cancelled it raises and catches, and the shield around it: measurable
            # when a thousand peers go at once).
            stream.socket.close()
            c.log.debug("connection closed", reason=reason, requests=c.requests)

    async def _connection_loop(self, c: _Conn) -> str:
        proto = c.proto
        while True:
            ev = proto.next_event(stepwise=True)
            if ev is BUSY:
                # A large request is parsed in steps, the loop let go between them. Its
                # decoded objects (a records-form put: ~30x its frame) live across them,
                # so one connection parses in steps at a time, as when a request was
                # parsed in one step: the first BUSY of a large frame comes before any
                # decoding (DECODE_ALONE_BYTES), and nothing decoded waits here.
                async with self._parse_slot:
                    while ev is BUSY:
                        await trio.lowlevel.checkpoint()
                        ev = proto.next_event(stepwise=True)
            if ev is NEED_DATA:
                if not await self._receive(c):
                    proto.receive_data(b"")
                continue
            if ev is CLOSED:
                return "peer closed"
            c.last_frame = time.monotonic()
            if isinstance(ev, ErrorEvent):
                # Logged, but not one line per junk frame for ever: a peer sending a stream
                # of bad frames (each gets its reply) must not flood the log.
                c.bad_requests += 1
                if c.bad_requests <= BAD_REQUEST_LOG_LIMIT or not c.bad_requests % 1000:
                    self._log_limit.warning(
                        c,
                        "bad request",
                        code=ev.code.value,
                        message=ev.message,
                        close=ev.close_after,
                        count=c.bad_requests,
                    )
                self._settle(c)
                if not await self._send(c, ev.encode()):
                    return "peer read no reply for the stall timeout"
                if ev.close_after:
                    return f"closed after {ev.code.value}"
            else:
                c.requests += 1
                self._in_flight += 1
                if self._in_flight == 1:
                    self._idle = trio.Event()
                try:
                    reply = await self._dispatch(c, ev.request)
                finally:
                    self._in_flight -= 1
                    if self._in_flight == 0:
                        self._idle.set()
                # Answered: the request's bytes go back to the pools *before* the send,
                # which may wait as long as the peer does not read (see _send). The
                # decoded request goes too: a put's values are a view of its frame's
                # buffer, which would otherwise stay alive, uncharged, for that wait.
                del ev
                self._settle(c)
                if not await self._send(c, reply):
                    return "peer read no reply for the stall timeout"

    async def _send(self, c: _Conn, data: bytes) -> bool:
        """Send one reply whole. False if the peer took none of it for the stall timeout:
        it is gone (close it).

        A peer that pipelines requests and never reads its replies fills its socket, and
        the send waits. While it waits the connection holds no byte budget: the request's
        frame went back before the send (:meth:`_settle`), and the read-pool charge of the
        bytes it read ahead (at most a chunk past that frame) goes back here, so they are
        outside the budget like a chunk waiting for a frame reservation (the module
        docstring's bound). It used to keep both, with no time limit: 64 such peers took
        both pools and nobody else was read again (issue 11). The wait is the stall
        timeout *without progress*: a slow reader that keeps taking bytes is served.

        ``os.write`` first, waiting only when the socket is full; no yield after a send
        that went through unless more frames are buffered (the next step waits for the
        peer anyway), so a round trip costs one pass of the scheduler, not three.
        """
        fd = c.stream.socket.fileno()
        view = memoryview(data)
        total = len(view)
        sent = 0
        while sent < total:
            try:
                sent += os.write(fd, view[sent:])
                continue
            except BlockingIOError:
                pass
            if c.read_charge:
                self.read_pool.release(c.read_charge)
                c.read_charge = 0
            with trio.move_on_after(self.stall_timeout):
                await trio.lowlevel.wait_writable(c.stream.socket)
                continue
            self._log_limit.warning(
                c,
                "peer read none of a reply for the stall timeout; closing",
                stall_timeout_s=self.stall_timeout,
                unsent=total - sent,
            )
            return False
        if c.proto.buffered:
            await trio.lowlevel.checkpoint()  # more frames queued: let others run first
        return True

    async def _receive(self, c: _Conn) -> bool:
        """Charge the right pool (see the module docstring), then read once. False when the
        peer is gone (end of stream, or stalled mid-frame / without budget for the stall
        timeout).

        Called only after ``NEED_DATA``: either fewer than 4 bytes are buffered (header
        unknown), or the head frame is known and incomplete, and then every buffered byte
        belongs to it.

        Every wait here ends on the peer's close or on the stall timeout, and what a
        connection holds while it waits is what it really buffers: with a header still
        unknown it first waits for the peer to send (holding at most the 3 bytes of a
        partial header), then takes a chunk of the read pool for the length of one
        non-blocking read, and gives back whatever the read did not fill. (It used to keep
        a whole 64 KiB chunk while waiting for the rest of a header, and to ask for one
        byte more without a time limit: 64 peers each sending one byte of a header took the
        whole read pool and wedged the server, before authentication.)
        """
        proto = c.proto
        buffered = proto.buffered
        head = proto.head_frame_bytes
        if head > buffered:
            if c.read_charge:
                # The frame reservation will cover every buffered byte; give the read
                # pool back *before* waiting for it. A peer that stalls after a big
                # header and part of its body must not keep read-pool bytes while frame
                # holders (stalled peers too) take up to the stall timeout to go: 68 such
                # peers used to take the whole read pool and stop everyone else (review
                # of issue 11). While it waits, the <= 64 KiB it read past the header are
                # outside the budget: at most one chunk per connection.
                self.read_pool.release(c.read_charge)
                c.read_charge = 0
            if c.frame_charge != head:
                assert c.frame_charge == 0
                if not await self._acquire(c, self.frame_pool, head):
                    return False
                c.frame_charge = head
            want = min(proto.room, head - buffered, BIG_CHUNK)
            if want == head - buffered and self.read_pool.try_acquire(CHUNK):
                c.read_charge = CHUNK  # read ahead into the next frame, never waiting
                want = min(proto.room, want + CHUNK)
        else:
            assert c.frame_charge == 0
            want = min(proto.room, CHUNK)
            target = buffered + want
            if (
                buffered
                and c.read_charge < target
                and self.read_pool.try_acquire(target - c.read_charge)
            ):
                # Part of a header is in: the rest of it, or the end of the stream, often
                # came with it. One read before paying for a wait (a thousand peers that
                # send their last byte and close at once cost one wait each, not two).
                c.read_charge = target
                self._note_peak()
                got = self._read_now(c, want)
                self._charge_buffered(c)
                if got is not None:
                    return got > 0
            # Wait for the peer before taking any budget: idle connections (a client's
            # pool, say) cost nothing, and one mid-header holds only what it buffered.
            if not await self._wait_readable(c, stalled_ok=buffered == 0):
                return False
            if c.read_charge < target:
                if not await self._acquire(c, self.read_pool, target - c.read_charge):
                    return False
                c.read_charge = target
        self._note_peak()
        n = await self._read_into_decoder(c, want)
        self._charge_buffered(c)
        if n is None:
            return True  # nothing to read after all: wait again, holding what is buffered
        return n > 0

    def _charge_buffered(self, c: _Conn) -> None:
        """Keep read-pool charge only for buffered bytes the frame pool does not cover."""
        need = max(0, c.proto.buffered - c.frame_charge)
        if c.read_charge > need:
            self.read_pool.release(c.read_charge - need)
            c.read_charge = need

    async def _acquire(self, c: _Conn, pool: ByteBudget, n: int) -> bool:
        """``pool.acquire(n)``, given up after the stall timeout (False: close the peer).

        The pools drain as long as peers send and read (module docstring), so a wait this
        long means the server is saturated by peers that neither finish nor go: closing
        this one releases what it holds rather than adding it to the jam.
        """
        if pool.try_acquire(n):  # the common case: no cancel scope, no yield
            return True
        with trio.move_on_after(self.stall_timeout):
            await pool.acquire(n)
            return True
        self._log_limit.warning(
            c,
            "no byte budget for the stall timeout; closing",
            stall_timeout_s=self.stall_timeout,
            wanted=n,
            buffered=c.proto.buffered,
        )
        return False

    async def _read_into_decoder(self, c: _Conn, want: int) -> int | None:
        """Read up to ``want`` bytes into the connection's decoder: the count, 0 at end of
        stream, ``None`` if a header-unknown read found nothing after all, or if a read in
        the middle of a frame had to wait for the peer (the caller then reads again, and
        takes its chunk of read-ahead anew).

        ``SocketStream.receive_some`` allocates a fresh ``bytes`` of ``want`` per call,
        which for reads of 64 KiB and more costs an mmap/munmap plus page faults each time
        (measured 4-8x slower than ``recv_into`` for 160 KB frames). Instead: one shared
        buffer for the whole server, filled by a non-blocking ``readv`` and copied into the
        decoder *with no await in between*, so no other task can touch the buffer while it
        holds this connection's bytes. While completing a known frame the task waits for
        readability here (holding that frame's reservation, with the stall timeout) and
        checkpoints after every read (reads of up to 1 MiB: fairness); with the header
        unknown the caller has just waited (a read of at most 64 KiB, then one frame's
        work, follows, with no yield needed), and a spurious wake-up returns ``None`` so
        that the caller gives the chunk back before waiting again.

        Mid-frame, the chunk of read-ahead the caller took for a read that found nothing
        goes back before the wait for the peer too: the frame's reservation covers all the
        peer still has to send. It used to be kept across that wait, up to the stall
        timeout: 64 peers that stalled inside large frames held the whole read pool, and
        no other request could be read meanwhile.
        """
        while True:
            n = self._read_now(c, want)
            if n is None:
                if c.frame_charge == 0:
                    return None
                if c.read_charge:
                    self._charge_buffered(c)  # every buffered byte is the frame's
                    if not await self._wait_readable(c, stalled_ok=False):
                        return 0
                    return None
                if not await self._wait_readable(c, stalled_ok=False):
                    return 0
                continue
            if c.frame_charge:
                await trio.lowlevel.checkpoint()
            return n

    def _read_now(self, c: _Conn, want: int) -> int | None:
        """One non-blocking read of up to ``want`` bytes into the decoder (through the
        shared buffer, with no await in between): the count, 0 at end of stream, ``None``
        if there was nothing to read.

        The rest of a large frame (``ServerConnection.direct_view``: 64 KiB or more) is
        read straight into the buffer the frame is handed over in, and whatever ``want``
        reads ahead past its end into the shared buffer, in the same ``readv``: the
        frame's bytes are then never copied in the daemon before the ephemeral file's
        append (they used to be copied three times: out of the shared buffer, out of the
        stream buffer, out of the payload by msgpack). Asked only while the frame's
        reservation is held, so that its buffer is made under the budget.
        """
        fd = c.stream.socket.fileno()
        direct = c.proto.direct_view() if c.frame_charge else None
        if direct is None:
            view = self._read_view[:want]
            try:
                n = os.readv(fd, [view])
            except BlockingIOError:
                return None
            if n:
                c.proto.receive_data(view[:n])
            return n
        head = direct[:want]
        k = len(head)
        bufs = [head] if want <= k else [head, self._read_view[: want - k]]
        try:
            n = os.readv(fd, bufs)
        except BlockingIOError:
            return None
        if n:
            c.proto.commit(min(n, k))
            if n > k:
                c.proto.receive_data(self._read_view[: n - k])
        return n

    async def _wait_readable(self, c: _Conn, *, stalled_ok: bool) -> bool:
        """Wait for the peer to send. False if it stalled mid-frame: treat it as gone.

        ``stalled_ok`` (between frames, holding no budget) waits without a limit.
        """
        if stalled_ok:
            await trio.lowlevel.wait_readable(c.stream.socket)
            await self._take_turn(c)
            return True
        with trio.move_on_after(self.stall_timeout) as scope:
            await trio.lowlevel.wait_readable(c.stream.socket)
        if not scope.cancelled_caught:
            await self._take_turn(c)
            return True
        self._log_limit.warning(
            c,
            "peer stalled in the middle of a frame; closing",
            stall_timeout_s=self.stall_timeout,
            buffered=c.proto.buffered,
        )
        return False

    async def _take_turn(self, c: _Conn) -> None:
        """After a wake-up: a *cold* connection (no frame done for :data:`COLD_AFTER`: a
        stalled or idle peer) that wakes late in a long scheduler pass waits its turn.

        When a thousand stalled peers send a byte and close at once, the scheduler wakes
        them all in one pass, and each costs tens of microseconds of Python (read, decode,
        maybe an error reply, close): one pass of 50-100 ms, and a good client whose
        request came in meanwhile waited for all of it (p99 of ``status`` 69-159 ms in the
        close burst, issue 11). Now once a pass has run :data:`PASS_BUDGET`, cold
        connections that wake in it queue (FIFO) and :meth:`_turn_pump` lets
        :data:`TURNS_PER_PASS` of them on per pass: the burst takes as long as before,
        in short passes, and hot connections (a client with requests going) are served
        in the first pass after their data comes in. Outside a storm this is a clock
        read and a compare.
        """
        if time.perf_counter() - self._clock.start < PASS_BUDGET:
            return
        if time.monotonic() - c.last_frame < COLD_AFTER:
            return
        turn = trio.Event()
        self._turns.append(turn)
        self._turns_wake.set()
        await turn.wait()

    async def _turn_pump(self) -> None:
        """Lets queued cold connections (:meth:`_take_turn`) on, a few per pass."""
        while True:
            await self._turns_wake.wait()
            self._turns_wake = trio.Event()
            while self._turns:
                for _ in range(min(TURNS_PER_PASS, len(self._turns))):
                    self._turns.popleft().set()
                await trio.lowlevel.checkpoint()

    def _settle(self, c: _Conn) -> None:
        """After a frame was answered: its frame-pool reservation (if any) is released,
        and read-pool charge beyond the bytes still buffered too."""
        if c.frame_charge:
            self.frame_pool.release(c.frame_charge)
            c.frame_charge = 0
        keep = c.proto.buffered
        if c.read_charge > keep:
            self.read_pool.release(c.read_charge - keep)
            c.read_charge = keep

    # -- requests -------------------------------------------------------------------------------

    async def _dispatch(self, c: _Conn, req: Request) -> bytes:
        # Only the ids go into the context: tasks the manager spawns from inside a request
        # (a new timeline's flush loop) inherit it, and the ids are still true for them,
        # while ``op``/``conn`` would not be.
        ids = {
            name: value
            for name in ("tenant_id", "timeline_id")
            if (value := getattr(req, name, None)) is not None
        }
        log = c.log.bind(op=req.op)
        with structlog.contextvars.bound_contextvars(**ids):
            try:
                fields = await self._handle(req)
            except PageserverError as e:
                # A typed error: its code and its message, which is written for the client
                # (a corrupt layer names its file); internal ones are logged as errors.
                if e.code is ErrorCode.INTERNAL:
                    log.error("request failed", code=e.code.value, message=str(e))
                else:
                    log.warning("request failed", code=e.code.value, message=str(e))
                return encode_error(req.id, e.code, str(e)[:2000])
            except Exception as e:
                log.error("request failed with an internal error", error=repr(e), exc_info=True)
                return encode_error(req.id, ErrorCode.INTERNAL, f"internal error: {e!r}"[:500])
            try:
                return encode_reply(req.id, fields)
            except Exception as e:  # e.g. a reply field msgpack cannot pack: our bug
                log.error("cannot encode reply", error=repr(e), exc_info=True)
                return encode_error(req.id, ErrorCode.INTERNAL, "cannot encode the reply")

    async def _handle(self, req: Request) -> dict[str, Any] | None:
        mgr = self.mgr
        if isinstance(req, PutRequest):
            r = await mgr.put(req.tenant_id, req.timeline_id, req.records)
            return {
                "last_record_lsn": r.last_record_lsn,
                "disk_consistent_lsn": r.disk_consistent_lsn,
                "skipped": r.skipped,
            }
        if isinstance(req, GetRequest):
            return {"value": await mgr.get(req.tenant_id, req.timeline_id, req.key, req.lsn)}
        if isinstance(req, GetHistoryRequest):
            h = await mgr.get_history(req.tenant_id, req.timeline_id, req.key, req.lsn)
            return {
                "image": h.image,
                "image_lsn": h.image_lsn,
                "records": [[lsn, value] for lsn, value in h.records],
            }
        if isinstance(req, FlushRequest):
            return {"disk_consistent_lsn": await mgr.flush(req.tenant_id, req.timeline_id)}
        if isinstance(req, StatusRequest):
            return {"io_engine": self.io_engine, "tenants": mgr.status(req.tenant_id)}
        if isinstance(req, HelloRequest):
            return {"version": PROTOCOL_VERSION, "io_engine": self.io_engine}
        if isinstance(req, TenantCreateRequest):
            await mgr.create_tenant(req.tenant_id, req.config)
            return None
        if isinstance(req, TenantConfigRequest):
            return {"config": await mgr.set_tenant_config(req.tenant_id, req.config)}
        if isinstance(req, TimelineCreateRequest):
            await mgr.create_timeline(req.tenant_id, req.timeline_id, req.start_lsn)
            return {"last_record_lsn": req.start_lsn, "disk_consistent_lsn": req.start_lsn}
        if isinstance(req, CompactRequest):
            return await self._handle_compact(req)
        if isinstance(req, GcRequest):
            gc = await mgr.gc(req.tenant_id, req.timeline_id)
            return {"layers_removed": gc.layers_removed, "gc_cutoff_lsn": gc.gc_cutoff_lsn}
        if isinstance(req, TenantAttachRequest):
            generation, timelines = await mgr.attach_tenant(req.tenant_id, req.config)
            return {"generation": generation, "timelines": timelines}
        if isinstance(req, TenantDetachRequest):
            await mgr.detach_tenant(req.tenant_id)
            return None
        raise AssertionError(f"unhandled request type {type(req).__name__}")  # pragma: no cover

    async def _handle_compact(self, req: CompactRequest) -> dict[str, Any]:
        result = await self.mgr.compact(req.tenant_id, req.timeline_id)
        return {"layers_created": result.layers_created, "layers_removed": result.layers_removed}


def _peer_name(stream: trio.SocketStream) -> str:
    name = stream.socket.getpeername()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name) or "unix"
