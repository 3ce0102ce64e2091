"""The wire protocol of SPEC section 5, sans-IO (modelled on h11).

Nothing here touches a socket, a clock or a thread: bytes go in, events come out, replies
come out as bytes. That keeps the part of the server that faces hostile input small,
deterministic and cheap to fuzz, and lets the trio server, the client module, the tests and
the benchmarks share one implementation of every framing and validation rule.

Layers, bottom up:

* :class:`FrameDecoder` -- the incremental framer (4-byte big-endian length ``N``, then
  ``N`` bytes). It never holds more than one incomplete frame, and rejects an oversized
  frame from its header alone, before buffering any of its payload.
* :func:`parse_request` -- one frame's payload to a typed, validated, frozen request
  dataclass, or a :class:`ProtocolError` carrying the SPEC error code. :func:`check_put_batch`
  is the pure whole-batch ``put`` check (keys, value encodings, LSN order).
* :func:`encode_reply`, :func:`encode_error`, :func:`encode_request`, :func:`encode_frame`
  -- the encoders; :class:`ReplyDecoder` / :func:`parse_reply` -- the client's side.
* :class:`ServerConnection` -- the per-connection state machine (``hello``/auth, the states
  after which the server must close), a transition table in the h11 style.

Decisions where SPEC is silent (keep in sync with the report / docs):

* Fields a request does not define are ignored (forward compatibility), and an optional
  field that is nil counts as absent (msgpack clients often send ``None`` for "unset").
* An id field (``tenant_id``/``timeline_id``) that is not a string is a mistyped field
  (``bad_request``); a string that is not 32 hex digits is ``invalid_id``.
* Fields are checked in a fixed order (the order of the SPEC table: tenant_id, timeline_id,
  then the rest); the first failure is reported.
* The whole ``put`` batch check runs at parse time, before the server looks the tenant up,
  so a malformed batch is rejected with the same code whether or not the tenant exists.
* Before a successful ``hello`` (when a token is configured), every map whose ``op`` is
  not ``"hello"`` (including unknown or missing ops) gets ``unauthorized`` and the
  connection continues; framing errors still get ``bad_frame``/``frame_too_large``.
  A ``hello`` without a token, or with a wrong one, gets ``unauthorized`` and the close.
* A request id may be any msgpack scalar, ext types included (they are scalars in msgpack's
  type system), and is echoed as decoded.
* End of stream in the middle of a frame just ends the connection: there is no peer left to
  read a ``bad_frame`` about it.

Memory: buffered bytes per connection are bounded by the framer (see :class:`FrameDecoder`).
Decoding one payload into Python objects is a transient on top of that: ~1x for ``put``
batches of page images, ~5x for tiny records, and up to ~32x ``max_frame_bytes`` for a
hostile frame of nested tiny arrays (measured: ~520 MiB for 16 MiB). A payload that does not
start with a map is rejected before decoding, and maps are capped, which removes the worst
(~64x) shapes. Parse on the event loop, one frame at a time, and that transient is a
process-wide constant rather than a per-connection one.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias

import msgpack

from pageserver.errors import ErrorCode, PageserverError
from pageserver.errors import short_repr as _short
from pageserver.errors import type_name as _type_name
from pageserver.layers.batch import CheckedBatch, PutRecord, check_start_lsn
from pageserver.layers.batch import check_put_batch as _check_batch
from pageserver.layers.key import KEY_MAX_BYTES as KEY_MAX
from pageserver.layers.key import KEY_SIZE as KEY_LEN
from pageserver.layers.key import MAX_LSN as LSN_MAX
from pageserver.layers.key import parse_id_text

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_LEN",
    "KEY_LEN",
    "KEY_MAX",
    "LSN_MAX",
    "NEED_DATA",
    "OPS",
    "PROTOCOL_VERSION",
    "CompactRequest",
    "ConnState",
    "ErrorCode",
    "ErrorEvent",
    "FlushRequest",
    "Frame",
    "FrameDecoder",
    "GetHistoryRequest",
    "GetRequest",
    "HelloRequest",
    "Id",
    "ProtocolError",
    "PutRecord",
    "PutRequest",
    "Reply",
    "ReplyDecoder",
    "Request",
    "RequestEvent",
    "Sentinel",
    "ServerConnection",
    "StatusRequest",
    "TenantConfigRequest",
    "TenantCreateRequest",
    "TimelineCreateRequest",
    "check_put_batch",
    "encode_error",
    "encode_frame",
    "encode_reply",
    "encode_request",
    "parse_reply",
    "parse_request",
    "token_checker",
]

PROTOCOL_VERSION: Final = 1
"""The ``version`` a ``hello`` reply carries."""

DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""SPEC section 2's default ``max_frame_bytes``."""

HEADER_LEN: Final = 4

_MAX_ALLOWED_FRAME: Final = 0xFFFFFFFF  # what a 4-byte length can express
_MAX_MAPS_PER_REQUEST: Final = 64
"""Cap on msgpack maps in one request. Legitimate requests hold at most two (the request
and ``config``); an empty map costs ~64 bytes of Python heap per byte on the wire, so
without the cap one 16 MiB frame of ``{}``s would briefly cost a gigabyte."""


class Sentinel(enum.Enum):
    """Non-event results of ``next_event`` (an Enum so mypy can narrow on ``is``)."""

    NEED_DATA = "NEED_DATA"
    """Nothing complete yet: feed more bytes."""
    CLOSED = "CLOSED"
    """Nothing more will ever come out: the stream ended or the connection must close."""


NEED_DATA: Final = Sentinel.NEED_DATA
CLOSED: Final = Sentinel.CLOSED

Id: TypeAlias = Any
"""A request id: any msgpack scalar (nil, bool, int, float, str, bin, ext), echoed as is."""

_SCALAR_TYPES: Final = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    msgpack.ExtType,
    msgpack.Timestamp,
)


def _is_scalar(v: object) -> bool:
    # ExtType is a namedtuple, so test it before anyone is tempted to test for tuple.
    return isinstance(v, _SCALAR_TYPES)


# ---------------------------------------------------------------------------------------
# Errors and frames
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Why a frame or request is rejected: the ``error`` of the reply, and the id to echo.

    Returned (never raised) by the decoder and the parsers, so that hostile input can only
    ever produce values, not exceptions.
    """

    code: ErrorCode
    message: str
    id: Id = None

    @property
    def close_after(self) -> bool:
        """Whether SPEC section 5 says the connection closes after this error's reply."""
        return self.code is ErrorCode.FRAME_TOO_LARGE


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame's payload (the msgpack bytes, without the length prefix)."""

    payload: bytes


class FrameDecoder:
    """Incremental framer: ``feed`` bytes, then call ``next_event`` until ``NEED_DATA``.

    ``next_event`` returns a :class:`Frame`, ``NEED_DATA``, ``CLOSED`` (after
    :meth:`feed_eof` once the buffer is drained, and forever after ``frame_too_large``), or a
    :class:`ProtocolError`:

    * ``bad_frame`` for ``N == 0``: the 4 header bytes are skipped and decoding continues
      with the next frame (the connection survives, as SPEC section 5 says);
    * ``frame_too_large`` for ``N > max_frame_bytes``, decided from the header alone: the
      buffer is dropped, later input is discarded unbuffered, and the decoder is closed.

    Memory bound: the *incomplete* tail of the buffer never exceeds ``max_frame_bytes + 4``
    bytes. A caller that reads only after ``NEED_DATA`` and at most :attr:`room` bytes at a
    time therefore never has more than ``max_frame_bytes + 4`` bytes buffered in total.
    """

    __slots__ = ("_buf", "_closed", "_eof", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if not 1 <= max_frame_bytes <= _MAX_ALLOWED_FRAME:
            raise ValueError(f"max_frame_bytes must be in 1..{_MAX_ALLOWED_FRAME}")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._closed = False
        self._eof = False

    @property
    def closed(self) -> bool:
        """True once ``frame_too_large`` was reported: nothing more will be decoded."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes held, not yet returned as frames."""
        return len(self._buf)

    @property
    def room(self) -> int:
        """How many bytes may be fed now without exceeding ``max_frame_bytes + 4`` buffered.

        At least 1 whenever ``next_event`` just returned ``NEED_DATA``; 0 once closed.
        """
        if self._closed or self._eof:
            return 0
        return max(0, self.max_frame_bytes + HEADER_LEN - len(self._buf))

    @property
    def head_frame_bytes(self) -> int:
        """Total size (header included) of the frame at the head of the buffer, or 0.

        0 while fewer than 4 bytes are buffered, once closed, and for a length that will
        be rejected (0 or above ``max_frame_bytes``). A server with a global memory budget
        uses it to reserve a whole frame at once, so a connection never waits for budget
        in the middle of a frame it was allowed to start (no hold-and-wait deadlock).
        """
        buf = self._buf
        if self._closed or len(buf) < HEADER_LEN:
            return 0
        n = int.from_bytes(buf[:HEADER_LEN], "big")
        return HEADER_LEN + n if 0 < n <= self.max_frame_bytes else 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Ignored once closed (a rejected frame is not buffered)."""
        if self._closed or self._eof:
            return
        self._buf += data

    def feed_eof(self) -> None:
        """The peer finished sending: complete frames still come out, then ``CLOSED``."""
        self._eof = True

    def next_event(self) -> Frame | ProtocolError | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]:
        """Return the next complete frame or framing error, without blocking."""
        if self._closed:
            return CLOSED
        buf = self._buf
        have = len(buf)
        if have < HEADER_LEN:
            return CLOSED if self._eof else NEED_DATA
        n = int.from_bytes(buf[:HEADER_LEN], "big")
        if n == 0:
            del buf[:HEADER_LEN]
            return ProtocolError(ErrorCode.BAD_FRAME, "frame length 0 (must be at least 1)")
        if n > self.max_frame_bytes:
            self._closed = True
            buf.clear()
            return ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame length {n} exceeds max_frame_bytes {self.max_frame_bytes}",
            )
        end = HEADER_LEN + n
        if have < end:
            return CLOSED if self._eof else NEED_DATA
        with memoryview(buf) as mv:
            payload = mv[HEADER_LEN:end].tobytes()  # one copy; the slice view dies here
        del buf[:end]  # bytearray drops a prefix without moving the rest (amortised O(1))
        return Frame(payload)


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _RequestBase:
    op: ClassVar[str]
    id: Id = field(default=None, kw_only=True)
    """The request's ``id``, to echo in the reply (nil when absent)."""


@dataclass(frozen=True, slots=True)
class HelloRequest(_RequestBase):
    op: ClassVar[str] = "hello"
    token: str | None = None


@dataclass(frozen=True, slots=True)
class TenantCreateRequest(_RequestBase):
    op: ClassVar[str] = "tenant_create"
    tenant_id: str
    config: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TenantConfigRequest(_RequestBase):
    op: ClassVar[str] = "tenant_config"
    tenant_id: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TimelineCreateRequest(_RequestBase):
    op: ClassVar[str] = "timeline_create"
    tenant_id: str
    timeline_id: str
    start_lsn: int = 0


@dataclass(frozen=True, slots=True)
class PutRequest(_RequestBase):
    """A validated ``put``: ``records`` passed the one batch check (a ``CheckedBatch``)."""

    op: ClassVar[str] = "put"
    tenant_id: str
    timeline_id: str
    records: CheckedBatch


@dataclass(frozen=True, slots=True)
class GetRequest(_RequestBase):
    op: ClassVar[str] = "get"
    tenant_id: str
    timeline_id: str
    key: bytes
    lsn: int


@dataclass(frozen=True, slots=True)
class GetHistoryRequest(_RequestBase):
    op: ClassVar[str] = "get_history"
    tenant_id: str
    timeline_id: str
    key: bytes
    lsn: int


@dataclass(frozen=True, slots=True)
class FlushRequest(_RequestBase):
    op: ClassVar[str] = "flush"
    tenant_id: str
    timeline_id: str


@dataclass(frozen=True, slots=True)
class CompactRequest(_RequestBase):
    op: ClassVar[str] = "compact"
    tenant_id: str
    timeline_id: str


@dataclass(frozen=True, slots=True)
class StatusRequest(_RequestBase):
    op: ClassVar[str] = "status"
    tenant_id: str | None = None


Request: TypeAlias = (
    HelloRequest
    | TenantCreateRequest
    | TenantConfigRequest
    | TimelineCreateRequest
    | PutRequest
    | GetRequest
    | GetHistoryRequest
    | FlushRequest
    | CompactRequest
    | StatusRequest
)


class _Reject(Exception):
    """Internal: a field check failed. Raised at most once per request, never escapes."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bad(name: str, what: str) -> _Reject:
    return _Reject(ErrorCode.BAD_REQUEST, f"field '{name}' {what}")


_MISSING: Final = object()


def _required(m: Mapping[object, object], name: str) -> object:
    v = m.get(name, _MISSING)
    if v is _MISSING or v is None:
        raise _bad(name, "is required")
    return v


def _hex_id(m: Mapping[object, object], name: str, *, optional: bool = False) -> str | None:
    v = m.get(name)
    if v is None:
        if optional:
            return None
        raise _bad(name, "is required")
    if type(v) is not str:
        raise _bad(name, f"must be a string of 32 hex digits, not {_type_name(v)}")
    try:
        return parse_id_text(v, name)
    except PageserverError as e:
        raise _Reject(e.code, str(e)) from None


def _req_id(m: Mapping[object, object], name: str) -> str:
    v = _hex_id(m, name)
    assert v is not None
    return v


def _lsn(m: Mapping[object, object], name: str, default: int | None = None) -> int:
    v = m.get(name)
    if v is None:
        if default is not None:
            return default
        raise _bad(name, "is required")
    if type(v) is not int or not 0 <= v <= LSN_MAX:  # type() excludes bool on purpose
        raise _bad(name, f"must be an unsigned 64-bit integer, not {_short(v)}")
    return v


def _key(m: Mapping[object, object], name: str) -> bytes:
    v = _required(m, name)
    if type(v) is not bytes:
        raise _bad(name, f"must be a {KEY_LEN}-byte bin, not {_type_name(v)}")
    if len(v) != KEY_LEN:
        raise _bad(name, f"must be a {KEY_LEN}-byte bin, not {len(v)} bytes")
    return v


def _config(m: Mapping[object, object], name: str, *, optional: bool) -> dict[str, Any] | None:
    v = m.get(name)
    if v is None:
        if optional:
            return None
        raise _bad(name, "is required")
    if type(v) is not dict:
        raise _bad(name, f"must be a map, not {_type_name(v)}")
    for k in v:
        if type(k) is not str:
            raise _bad(name, f"must have string keys, not {_short(k)}")
    return v


def _p_hello(m: Mapping[object, object], rid: Id) -> Request:
    token = m.get("token")
    if token is not None and type(token) is not str:
        raise _bad("token", f"must be a string, not {_type_name(token)}")
    return HelloRequest(token, id=rid)


def _p_tenant_create(m: Mapping[object, object], rid: Id) -> Request:
    t = _req_id(m, "tenant_id")
    return TenantCreateRequest(t, _config(m, "config", optional=True), id=rid)


def _p_tenant_config(m: Mapping[object, object], rid: Id) -> Request:
    t = _req_id(m, "tenant_id")
    c = _config(m, "config", optional=False)
    assert c is not None
    return TenantConfigRequest(t, c, id=rid)


def _p_timeline_create(m: Mapping[object, object], rid: Id) -> Request:
    t = _req_id(m, "tenant_id")
    tl = _req_id(m, "timeline_id")
    start = _lsn(m, "start_lsn", default=0)
    try:
        check_start_lsn(start)
    except PageserverError as e:
        raise _Reject(e.code, str(e)) from None
    return TimelineCreateRequest(t, tl, start, id=rid)


def _p_put(m: Mapping[object, object], rid: Id) -> Request:
    t = _req_id(m, "tenant_id")
    tl = _req_id(m, "timeline_id")
    records = _required(m, "records")
    try:
        checked = _check_batch(records)
    except PageserverError as e:
        raise _Reject(e.code, str(e)) from None
    return PutRequest(t, tl, checked, id=rid)


def _p_get(m: Mapping[object, object], rid: Id) -> Request:
    t = _req_id(m, "tenant_id")
    tl = _req_id(m, "timeline_id")
    return GetRequest(t, tl, _key(m, "key"), _lsn(m, "lsn"), id=rid)


def _p_get_history(m: Mapping[object, object], rid: Id) -> Request:
    t = _req_id(m, "tenant_id")
    tl = _req_id(m, "timeline_id")
    return GetHistoryRequest(t, tl, _key(m, "key"), _lsn(m, "lsn"), id=rid)


def _p_flush(m: Mapping[object, object], rid: Id) -> Request:
    return FlushRequest(_req_id(m, "tenant_id"), _req_id(m, "timeline_id"), id=rid)


def _p_compact(m: Mapping[object, object], rid: Id) -> Request:
    return CompactRequest(_req_id(m, "tenant_id"), _req_id(m, "timeline_id"), id=rid)


def _p_status(m: Mapping[object, object], rid: Id) -> Request:
    return StatusRequest(_hex_id(m, "tenant_id", optional=True), id=rid)


_PARSERS: Final[dict[str, Callable[[Mapping[object, object], Id], Request]]] = {
    "hello": _p_hello,
    "tenant_create": _p_tenant_create,
    "tenant_config": _p_tenant_config,
    "timeline_create": _p_timeline_create,
    "put": _p_put,
    "get": _p_get,
    "get_history": _p_get_history,
    "flush": _p_flush,
    "compact": _p_compact,
    "status": _p_status,
}

OPS: Final = frozenset(_PARSERS)
"""Every op name of SPEC section 5."""


def _unpack_limited(payload: bytes, *, use_list: bool, map_cap: int | None) -> object:
    """``msgpack.unpackb`` with every length limit bounded by the payload itself.

    No msgpack object can legitimately claim more elements or bytes than the frame has, so
    bounding the limits by ``len(payload)`` stops a 5-byte header from making the decoder
    preallocate gigabytes. ``map_cap`` additionally caps the number of maps (see
    ``_MAX_MAPS_PER_REQUEST``).
    """
    n = len(payload)
    hook: Callable[[dict[Any, Any]], dict[Any, Any]] | None = None
    if map_cap is not None:
        count = 0

        def hook(d: dict[Any, Any]) -> dict[Any, Any]:
            nonlocal count
            count += 1
            if count > map_cap:
                raise ValueError("too many maps")
            return d

    return msgpack.unpackb(  # type: ignore[no-any-return]
        payload,
        raw=False,
        strict_map_key=False,
        use_list=use_list,
        object_hook=hook,
        max_str_len=n,
        max_bin_len=n,
        max_array_len=n,
        max_map_len=n,
        max_ext_len=n,
    )


def _is_map_marker(b: int) -> bool:
    """Whether a msgpack object starting with byte ``b`` is a map (fixmap, map16, map32)."""
    return 0x80 <= b <= 0x8F or b == 0xDE or b == 0xDF


def _parse_envelope(payload: bytes) -> tuple[Id, object, dict[object, object]] | ProtocolError:
    """Decode the msgpack map and extract ``id`` and (unchecked) ``op``.

    Split from :func:`parse_request` so the connection can refuse non-``hello`` ops before
    authentication without validating their fields.
    """
    if payload and not _is_map_marker(payload[0]):
        # Whatever follows, the frame is not one map: reject it without decoding, since a
        # frame-sized array of tiny items costs ~30x its size in Python objects.
        return ProtocolError(ErrorCode.BAD_FRAME, "frame does not hold a msgpack map")
    try:
        # Tuples, not lists: ``put`` records arrive as the (key, lsn, value) tuples the
        # request holds, with no per-record conversion.
        m = _unpack_limited(payload, use_list=False, map_cap=_MAX_MAPS_PER_REQUEST)
    except Exception:  # msgpack raises many types (ValueError, ExtraData, StackError, ...)
        return ProtocolError(ErrorCode.BAD_FRAME, "frame is not msgpack")
    if type(m) is not dict:
        return ProtocolError(
            ErrorCode.BAD_FRAME, f"frame holds a msgpack {_type_name(m)}, not a map"
        )
    rid = m.get("id")
    if not _is_scalar(rid):
        return ProtocolError(
            ErrorCode.BAD_REQUEST, f"field 'id' must be a scalar, not {_type_name(rid)}"
        )
    return rid, m.get("op"), m


def _parse_op(op: object, m: dict[object, object], rid: Id) -> Request | ProtocolError:
    if op is None:
        return ProtocolError(ErrorCode.BAD_REQUEST, "field 'op' is required", rid)
    if type(op) is not str:
        return ProtocolError(
            ErrorCode.BAD_REQUEST, f"field 'op' must be a string, not {_type_name(op)}", rid
        )
    parser = _PARSERS.get(op)
    if parser is None:
        return ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {_short(op)}", rid)
    try:
        return parser(m, rid)
    except _Reject as e:
        return ProtocolError(e.code, e.message, rid)


def parse_request(payload: bytes) -> Request | ProtocolError:
    """Validate one frame's payload into a typed request, or say why not.

    Never raises on any input. Error codes: ``bad_frame`` (not msgpack, not a map),
    ``bad_request`` (missing/mistyped field, named in the message; a non-scalar ``id``),
    ``unknown_op``, ``invalid_id``, and for ``put`` the batch codes of
    :func:`check_put_batch`. The id is echoed in the error whenever it could be read.
    """
    env = _parse_envelope(payload)
    if isinstance(env, ProtocolError):
        return env
    rid, op, m = env
    return _parse_op(op, m, rid)


# ---------------------------------------------------------------------------------------
# put batches
# ---------------------------------------------------------------------------------------


def check_put_batch(records: Sequence[PutRecord]) -> ProtocolError | None:
    """The wire's view of the one ``put`` batch check
    (:func:`pageserver.layers.batch.check_put_batch`): its first failure as a
    :class:`ProtocolError`, or ``None``. :func:`parse_request` applies it to every ``put``.
    """
    try:
        _check_batch(records)
    except PageserverError as e:
        return ProtocolError(e.code, str(e))
    return None


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------


def encode_frame(obj: object) -> bytes:
    """Pack any msgpack-able object as one frame (length prefix + payload).

    ``bytes`` become msgpack ``bin``, ``str`` become ``str``. Raises ``TypeError`` for
    objects msgpack cannot pack (a caller bug, not client input).
    """
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return len(payload).to_bytes(HEADER_LEN, "big") + payload


def encode_reply(id: Id, fields: Mapping[str, Any] | None = None) -> bytes:
    """A success reply frame: ``{"id": id, "ok": true, **fields}``."""
    body: dict[str, Any] = {"id": id, "ok": True}
    if fields:
        if "id" in fields or "ok" in fields:
            raise ValueError("reply fields must not contain 'id' or 'ok'")
        body.update(fields)
    return encode_frame(body)


def encode_error(id: Id, code: ErrorCode | str, message: str) -> bytes:
    """An error reply frame: ``{"id": id, "ok": false, "error": {"code", "message"}}``."""
    return encode_frame({"id": id, "ok": False, "error": {"code": str(code), "message": message}})


def encode_request(op: str, id: Id = None, **fields: Any) -> bytes:
    """A request frame (client side). ``id`` is omitted when ``None`` (echoed as nil)."""
    body: dict[str, Any] = {"op": op}
    if id is not None:
        body["id"] = id
    body.update(fields)
    return encode_frame(body)


# ---------------------------------------------------------------------------------------
# Client side: replies
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One decoded reply. ``fields`` holds everything except ``id``, ``ok`` and ``error``.

    ``code`` is a plain ``str`` so codes unknown to this version still come through
    (compare with :class:`ErrorCode` members directly; they are ``str``).
    """

    id: Id
    ok: bool
    fields: dict[str, Any]
    code: str | None = None
    message: str | None = None


def parse_reply(payload: bytes) -> Reply | ProtocolError:
    """Decode one reply payload; a malformed reply is a ``bad_frame`` ProtocolError.

    Arrays come out as lists here (clients index and extend them), unlike requests.
    """
    try:
        m = _unpack_limited(payload, use_list=True, map_cap=None)
    except Exception:
        return ProtocolError(ErrorCode.BAD_FRAME, "reply is not msgpack")
    if type(m) is not dict:
        return ProtocolError(ErrorCode.BAD_FRAME, "reply is not a msgpack map")
    ok = m.pop("ok", None)
    rid = m.pop("id", None)
    if type(ok) is not bool:
        return ProtocolError(ErrorCode.BAD_FRAME, "reply has no boolean 'ok'", rid)
    if ok:
        return Reply(rid, True, m)
    err = m.pop("error", None)
    if (
        type(err) is not dict
        or type(err.get("code")) is not str
        or type(err.get("message", "")) is not str
    ):
        return ProtocolError(ErrorCode.BAD_FRAME, "error reply without error.code", rid)
    return Reply(rid, False, m, err["code"], err.get("message", ""))


class ReplyDecoder:
    """Client-side decoder: bytes in, :class:`Reply` objects out, in order.

    ``next_event`` returns a :class:`Reply`, ``NEED_DATA``, ``CLOSED`` (after
    :meth:`receive_data` with ``b""``, once drained), or a :class:`ProtocolError` for a
    malformed reply (the client should treat the connection as broken).
    ``max_frame_bytes`` defaults large: replies (``status``, ``get_history``) are not bound
    by the server's request limit.
    """

    __slots__ = ("_decoder",)

    def __init__(self, max_frame_bytes: int = _MAX_ALLOWED_FRAME) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes; ``b""`` means the server closed the connection."""
        if data:
            self._decoder.feed(data)
        else:
            self._decoder.feed_eof()

    def next_event(self) -> Reply | ProtocolError | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]:
        ev = self._decoder.next_event()
        if isinstance(ev, Frame):
            return parse_reply(ev.payload)
        return ev


# ---------------------------------------------------------------------------------------
# Server side: the connection state machine
# ---------------------------------------------------------------------------------------


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


ServerEvent: TypeAlias = RequestEvent | ErrorEvent | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]


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

    __slots__ = ("_auth_required", "_decoder", "_state", "_token_check")

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

    def next_event(self) -> ServerEvent:
        """The next thing the server must do. Never raises on any input."""
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
        return self._on_frame(ev.payload)

    def _on_frame(self, payload: bytes) -> RequestEvent | ErrorEvent:
        env = _parse_envelope(payload)
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
        req = _parse_op(op, m, rid)
        if isinstance(req, ProtocolError):
            return ErrorEvent(req.id, req.code, req.message)
        if isinstance(req, HelloRequest) and self._auth_required:
            assert self._token_check is not None
            if req.token is None or not self._token_check(req.token):
                self._transition(_I.HELLO_REJECTED)
                return ErrorEvent(rid, ErrorCode.UNAUTHORIZED, "bad token", close_after=True)
            self._transition(_I.HELLO_ACCEPTED)
        else:
            self._transition(_I.REQUEST)
        return RequestEvent(req)
