"""The server's per-connection state machine, sans-IO (h11's ``Connection``, server side).

:class:`ServerConnection` owns a :class:`~pageserver.wire.FrameDecoder`, runs each frame
through the request parsers and turns the result into events: :class:`RequestEvent` (answer
it) or :class:`ErrorEvent` (send its reply; close if ``close_after``). Which state follows
which input -- ``hello``/auth, shutdown, and the states after which the server must close --
is one transition table in the h11 style, :data:`_TRANSITIONS`.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, overload

from pageserver.wire._framing import (
    BUSY,
    CLOSED,
    DEFAULT_MAX_FRAME_BYTES,
    NEED_DATA,
    FrameDecoder,
    Sentinel,
)
from pageserver.wire._replies import encode_error
from pageserver.wire._requests import HelloRequest, Request, parse_envelope_steps, parse_op_steps
from pageserver.wire.errors import ErrorCode, Id, ProtocolError

__all__ = [
    "ConnState",
    "ErrorEvent",
    "RequestEvent",
    "ServerConnection",
    "ServerEvent",
    "token_checker",
]


class ConnState(enum.Enum):
    """Where a server connection is. ``CLOSING``/``CLOSED`` are terminal."""

    AWAITING_HELLO = "awaiting_hello"
    """A token is configured and no ``hello`` has succeeded: only ``hello`` is served."""
    READY = "ready"
    """Every op is served."""
    SHUTTING_DOWN = "shutting_down"
    """The server is stopping: every request gets ``shutting_down``."""
    CLOSING = "closing"
    """Send the reply of the last :class:`ErrorEvent` (``close_after``), then close."""
    CLOSED = "closed"
    """The peer finished sending and every complete frame was handed out."""


class _Input(enum.Enum):
    REQUEST = "request"  # a request the current state serves
    HELLO_ACCEPTED = "hello_accepted"
    HELLO_REJECTED = "hello_rejected"
    FRAME_TOO_LARGE = "frame_too_large"
    PEER_CLOSED = "peer_closed"
    SHUTDOWN = "shutdown"


_S = ConnState
_I = _Input
_TRANSITIONS: Final[Mapping[tuple[ConnState, _Input], ConnState]] = {
    (_S.AWAITING_HELLO, _I.HELLO_ACCEPTED): _S.READY,
    (_S.AWAITING_HELLO, _I.HELLO_REJECTED): _S.CLOSING,
    (_S.AWAITING_HELLO, _I.FRAME_TOO_LARGE): _S.CLOSING,
    (_S.AWAITING_HELLO, _I.PEER_CLOSED): _S.CLOSED,
    (_S.AWAITING_HELLO, _I.SHUTDOWN): _S.SHUTTING_DOWN,
    (_S.READY, _I.REQUEST): _S.READY,
    (_S.READY, _I.HELLO_ACCEPTED): _S.READY,
    (_S.READY, _I.HELLO_REJECTED): _S.CLOSING,
    (_S.READY, _I.FRAME_TOO_LARGE): _S.CLOSING,
    (_S.READY, _I.PEER_CLOSED): _S.CLOSED,
    (_S.READY, _I.SHUTDOWN): _S.SHUTTING_DOWN,
    (_S.SHUTTING_DOWN, _I.FRAME_TOO_LARGE): _S.CLOSING,
    (_S.SHUTTING_DOWN, _I.PEER_CLOSED): _S.CLOSED,
    (_S.SHUTTING_DOWN, _I.SHUTDOWN): _S.SHUTTING_DOWN,
    (_S.CLOSING, _I.SHUTDOWN): _S.CLOSING,
    (_S.CLOSED, _I.SHUTDOWN): _S.CLOSED,
}
"""Every legal (state, input) -> next state. Anything missing is a bug in this module."""


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A valid request the server must answer (with :func:`encode_reply`/``encode_error``)."""

    request: Request

    @property
    def id(self) -> Id:
        return self.request.id


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The server must send ``encode_error(id, code, message)``; then close if
    ``close_after``."""

    id: Id
    code: ErrorCode
    message: str
    close_after: bool = False

    def encode(self) -> bytes:
        """The error reply frame to send."""
        return encode_error(self.id, self.code, self.message)


ServerEvent: TypeAlias = (
    RequestEvent | ErrorEvent | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED, Sentinel.BUSY]
)


def token_checker(token: str) -> Callable[[str], bool]:
    """A constant-time comparison against ``token`` for :class:`ServerConnection`.

    Compares UTF-8 bytes: ``hmac.compare_digest`` refuses non-ASCII ``str``.
    """
    expected = token.encode("utf-8")

    def check(candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), expected)

    return check


class ServerConnection:
    """One connection's protocol state, sans-IO. The server's loop is::

        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                conn.receive_data(await stream.receive_some(min(CHUNK, conn.room)))
            elif ev is CLOSED:
                break
            elif isinstance(ev, ErrorEvent):
                await stream.send_all(ev.encode())
                if ev.close_after:
                    break
            else:
                await stream.send_all(handle(ev.request))  # in order, one at a time

    Reading only after ``NEED_DATA`` and at most :attr:`room` bytes keeps the buffered bytes
    of a connection at or below ``max_frame_bytes + 4``; answering each request before
    reading the next lets TCP back-pressure stop a client that never reads its replies.
    """

    __slots__ = ("_auth_required", "_decoder", "_pending", "_state", "_token_check")

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        auth_required: bool = False,
        token_check: Callable[[str], bool] | None = None,
    ) -> None:
        if auth_required and token_check is None:
            raise ValueError("auth_required needs a token_check (see token_checker)")
        self._decoder = FrameDecoder(max_frame_bytes)
        self._auth_required = auth_required
        self._token_check = token_check
        self._state = ConnState.AWAITING_HELLO if auth_required else ConnState.READY
        #: The frame being parsed in steps (``next_event(stepwise=True)``), if any.
        self._pending: Generator[None, None, RequestEvent | ErrorEvent] | None = None

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def should_close(self) -> bool:
        """True once the server must close (after sending any pending error reply)."""
        return self._state is ConnState.CLOSING or self._state is ConnState.CLOSED

    @property
    def room(self) -> int:
        """How many bytes the server may read now (see :attr:`FrameDecoder.room`)."""
        return 0 if self.should_close else self._decoder.room

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    @property
    def head_frame_bytes(self) -> int:
        """See :attr:`FrameDecoder.head_frame_bytes`."""
        return 0 if self.should_close else self._decoder.head_frame_bytes

    def direct_view(self) -> memoryview | None:
        """Where to read the rest of a large head frame straight into (then :meth:`commit`
        the count), or ``None``: see :meth:`FrameDecoder.direct_view`. Always ``None`` once
        the connection must close (it reads nothing more)."""
        return None if self.should_close else self._decoder.direct_view()

    def commit(self, n: int) -> None:
        """``n`` bytes were read into the last :meth:`direct_view`."""
        self._decoder.commit(n)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means end of stream (what trio returns)."""
        if self.should_close:
            return
        if data:
            self._decoder.feed(data)
        else:
            self._decoder.feed_eof()

    def start_shutdown(self) -> None:
        """The server is stopping: from now on every request gets ``shutting_down``."""
        self._transition(_I.SHUTDOWN)

    def _transition(self, inp: _Input) -> None:
        nxt = _TRANSITIONS.get((self._state, inp))
        if nxt is None:  # pragma: no cover - a bug here, not bad input
            raise AssertionError(f"no transition from {self._state} on {inp}")
        self._state = nxt

    @overload
    def next_event(
        self, *, stepwise: Literal[False] = False
    ) -> RequestEvent | ErrorEvent | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]: ...
    @overload
    def next_event(self, *, stepwise: bool) -> ServerEvent: ...

    def next_event(self, *, stepwise: bool = False) -> ServerEvent:
        """The next thing the server must do. Never raises on any input.

        ``stepwise``: a request whose parsing is long work (a ``put`` of many records) is
        parsed a bounded step per call, each call but the last returning ``BUSY`` (let
        other tasks run, then call again; read nothing meanwhile). Otherwise in one call.
        """
        if self._pending is not None:
            return self._advance(stepwise)
        if self.should_close:
            return CLOSED
        ev = self._decoder.next_event()
        if ev is NEED_DATA:
            return NEED_DATA
        if ev is CLOSED:
            self._transition(_I.PEER_CLOSED)
            return CLOSED
        if isinstance(ev, ProtocolError):
            if ev.close_after:
                self._transition(_I.FRAME_TOO_LARGE)
            return ErrorEvent(ev.id, ev.code, ev.message, ev.close_after)
        self._pending = self._on_frame(ev.payload)
        return self._advance(stepwise)

    def _advance(self, stepwise: bool) -> RequestEvent | ErrorEvent | Literal[Sentinel.BUSY]:
        pending = self._pending
        assert pending is not None
        while True:
            try:
                next(pending)
            except StopIteration as done:
                self._pending = None
                event: RequestEvent | ErrorEvent = done.value
                return event
            except BaseException:
                self._pending = None
                raise
            if stepwise:
                return BUSY

    def _on_frame(
        self, payload: bytes | memoryview
    ) -> Generator[None, None, RequestEvent | ErrorEvent]:
        env = yield from parse_envelope_steps(payload)
        if isinstance(env, ProtocolError):
            return ErrorEvent(env.id, env.code, env.message)
        rid, op, m = env
        state = self._state
        if state is ConnState.SHUTTING_DOWN:
            return ErrorEvent(rid, ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        if state is ConnState.AWAITING_HELLO and op != "hello":
            return ErrorEvent(
                rid, ErrorCode.UNAUTHORIZED, "authenticate with hello and the token first"
            )
        req = yield from parse_op_steps(op, m, rid)
        if op == "hello" and self._auth_required:
            # Any hello that does not carry the token -- missing, wrong, or not even a
            # string (the only field a hello has) -- is an unauthorized hello, and SPEC
            # section 5 closes the connection after that reply.
            assert self._token_check is not None
            if (
                not isinstance(req, HelloRequest)
                or req.token is None
                or not self._token_check(req.token)
            ):
                self._transition(_I.HELLO_REJECTED)
                return ErrorEvent(rid, ErrorCode.UNAUTHORIZED, "bad token", close_after=True)
            self._transition(_I.HELLO_ACCEPTED)
            return RequestEvent(req)
        if isinstance(req, ProtocolError):
            return ErrorEvent(req.id, req.code, req.message)
        if self._state is ConnState.SHUTTING_DOWN:
            # The shutdown began between the steps of this request's parsing.
            return ErrorEvent(rid, ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        self._transition(_I.REQUEST)
        return RequestEvent(req)
