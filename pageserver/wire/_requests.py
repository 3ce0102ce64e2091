"""Requests (SPEC section 5): one frame's payload to a typed, validated, frozen request.

:func:`parse_request` turns a payload into one of the request dataclasses below, or a
:class:`~pageserver.wire.errors.ProtocolError` carrying the SPEC error code; it never raises.
It runs in two steps, :func:`parse_envelope` (decode the map, read ``id`` and ``op``) then
:func:`parse_op` (the op's field parsers), so that the connection can refuse non-``hello``
ops before authentication without validating their fields.

:func:`check_put_batch` is the wire's adapter of the one ``put`` batch check, which lives in
:func:`pageserver.layers.batch.check_put_batch` (keys, value encodings, LSN order); a parsed
:class:`PutRequest` holds the ``CheckedBatch`` it returned, which is not checked again.

Memory: buffered bytes per connection are bounded by the framer (see
:class:`~pageserver.wire.FrameDecoder`). Decoding one payload into Python objects is a
transient on top of that: ~0x for columnar ``put`` batches of page images in frames of at
least 64 KiB whose values are at least half the frame, parsed from bytes nobody can change
(the values stay in the frame's buffer, see :func:`parse_envelope`); ~1x for other columnar
puts and the records form, ~5x for tiny records, and up to ~32x ``max_frame_bytes`` for a
hostile frame of nested tiny arrays (measured: ~520 MiB for 16 MiB). A payload that does not
start with a map is rejected before decoding, and maps are capped, which removes the worst
(~64x) shapes. Parse on the event loop, one frame at a time, and that transient is a
process-wide constant rather than a per-connection one.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeAlias

import msgpack
import numpy as np

from pageserver.errors import PageserverError
from pageserver.errors import short_repr as _short
from pageserver.errors import type_name as _type_name
from pageserver.layers.batch import (
    COLUMN_RECORDS_PER_STEP,
    ONE_STEP,
    PUT_COLUMNS,
    RECORDS_PER_STEP,
    CheckedBatch,
    PutRecord,
    check_start_lsn,
    run_steps,
)
from pageserver.layers.batch import check_put_batch as _check_batch
from pageserver.layers.batch import check_put_batch_steps as _check_batch_steps
from pageserver.layers.batch import check_put_columns_steps as _check_columns_steps
from pageserver.layers.key import KEY_SIZE, MAX_LSN, parse_id_text
from pageserver.wire._framing import DIRECT_FRAME_BYTES
from pageserver.wire.errors import ErrorCode, Id, ProtocolError

__all__ = [
    "OPS",
    "CompactRequest",
    "GcRequest",
    "FlushRequest",
    "GetHistoryRequest",
    "GetRequest",
    "HelloRequest",
    "PutRequest",
    "Request",
    "StatusRequest",
    "TenantAttachRequest",
    "TenantConfigRequest",
    "TenantCreateRequest",
    "TenantDetachRequest",
    "TimelineCreateRequest",
    "check_put_batch",
    "parse_envelope",
    "parse_op",
    "parse_request",
    "unpack_limited",
]


_MAX_MAPS_PER_REQUEST: Final = 64
"""Cap on msgpack maps in one request. Legitimate requests hold at most two (the request
and ``config``); an empty map costs ~64 bytes of Python heap per byte on the wire, so
without the cap one 16 MiB frame of ``{}``s would briefly cost a gigabyte."""


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
class TenantAttachRequest(_RequestBase):
    op: ClassVar[str] = "tenant_attach"
    tenant_id: str
    config: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TenantDetachRequest(_RequestBase):
    op: ClassVar[str] = "tenant_detach"
    tenant_id: str


@dataclass(frozen=True, slots=True)
class TimelineCreateRequest(_RequestBase):
    op: ClassVar[str] = "timeline_create"
    tenant_id: str
    timeline_id: str
    start_lsn: int = 0


@dataclass(frozen=True, slots=True)
class PutRequest(_RequestBase):
    """A validated ``put``: ``records`` passed the one batch check (a ``CheckedBatch``,
    columnar whichever form the request had)."""

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
class GcRequest(_RequestBase):
    op: ClassVar[str] = "gc"
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
    | GcRequest
    | StatusRequest
    | TenantAttachRequest
    | TenantDetachRequest
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
    if type(v) is not int or not 0 <= v <= MAX_LSN:  # type() excludes bool on purpose
        raise _bad(name, f"must be an unsigned 64-bit integer, not {_short(v)}")
    return v


def _key(m: Mapping[object, object], name: str) -> bytes:
    v = _required(m, name)
    if type(v) is not bytes:
        raise _bad(name, f"must be a {KEY_SIZE}-byte bin, not {_type_name(v)}")
    if len(v) != KEY_SIZE:
        raise _bad(name, f"must be a {KEY_SIZE}-byte bin, not {len(v)} bytes")
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


def _p_tenant_attach(m: Mapping[object, object], rid: Id) -> Request:
    t = _req_id(m, "tenant_id")
    return TenantAttachRequest(t, _config(m, "config", optional=True), id=rid)


def _p_tenant_detach(m: Mapping[object, object], rid: Id) -> Request:
    return TenantDetachRequest(_req_id(m, "tenant_id"), id=rid)


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
    """Either form of SPEC section 5: ``records``, or the ``keys``/``lsns``/``values``/
    ``value_ends`` columns (never both); each checked by the one batch check."""
    return run_steps(_p_put_steps(m, rid, one_step=True))


def _p_put_steps(
    m: Mapping[object, object], rid: Id, *, one_step: bool = False
) -> Generator[None, None, Request]:
    """:func:`_p_put` in steps of about a millisecond (unless ``one_step``): the records
    form :data:`~pageserver.layers.batch.RECORDS_PER_STEP` records a step, the columnar
    form's values :data:`~pageserver.layers.batch.COLUMN_RECORDS_PER_STEP` (a 16 MiB
    frame of 100-byte values was 80-110 ms of checks in one step of the event loop as
    records, 6-10 ms as columns)."""
    t = _req_id(m, "tenant_id")
    tl = _req_id(m, "timeline_id")
    columns = [m.get(name) for name in PUT_COLUMNS]
    try:
        if any(c is not None for c in columns):
            if m.get("records") is not None:
                raise _bad(
                    "records",
                    "and the columnar fields (keys, lsns, values, value_ends) are exclusive:"
                    " send one form",
                )
            keys, lsns, values, value_ends = columns
            checked = yield from _check_columns_steps(
                keys, lsns, values, value_ends, ONE_STEP if one_step else COLUMN_RECORDS_PER_STEP
            )
        else:
            records = m.get("records")
            if records is None:
                raise _bad(
                    "records", "is required (or the columnar keys, lsns, values, value_ends)"
                )
            checked = yield from _check_batch_steps(
                records, ONE_STEP if one_step else RECORDS_PER_STEP
            )
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


def _p_gc(m: Mapping[object, object], rid: Id) -> Request:
    return GcRequest(_req_id(m, "tenant_id"), _req_id(m, "timeline_id"), id=rid)


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
    "gc": _p_gc,
    "status": _p_status,
    "tenant_attach": _p_tenant_attach,
    "tenant_detach": _p_tenant_detach,
}

OPS: Final = frozenset(_PARSERS)
"""Every op name of SPEC section 5."""


class TooManyMaps(ValueError):
    """:func:`unpack_limited` met more maps than its ``map_cap``."""


def unpack_limited(payload: bytes | memoryview, *, use_list: bool, map_cap: int | None) -> object:
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
                raise TooManyMaps(f"more than {map_cap} msgpack maps")
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


_VIEW_FIELD: Final = "values"
"""The one field :func:`_flat_map` may hand over as a view: the columnar put's ``values``,
the only field its consumer (``check_put_columns``) takes as a view; a view of any other
field would be a different request than msgpack's ``bytes`` (``keys`` as a view is
``bad_request``)."""

_FLAT_MAX_FIELDS: Final = 32
""":func:`_flat_map` decodes maps of at most this many fields (a ``put`` has 8); larger
ones go to msgpack. Its loop is Python: a frame-sized map of tiny items would cost
seconds of the event loop here, ~10x what msgpack's C takes for it."""


class _NotFlat(Exception):
    """Internal: :func:`_flat_map` met something it leaves to msgpack."""


def _flat_scalar(mv: memoryview, pos: int, end: int, view_bin: bool) -> tuple[object, int]:
    """The msgpack scalar at ``pos`` as ``msgpack.unpackb(raw=False)`` decodes it, and
    where the next object starts; raises for anything else (floats, ext, containers, and
    the reserved byte ``0xc1``), or if it runs past ``end``. A ``bin`` of at least half the
    payload is a read-only view of ``mv`` when ``view_bin``, ``bytes`` otherwise."""
    t = mv[pos]
    if t <= 0x7F:  # positive fixint
        return t, pos + 1
    if t >= 0xE0:  # negative fixint
        return t - 0x100, pos + 1
    if 0xA0 <= t <= 0xBF:  # fixstr
        start, stop = pos + 1, pos + 1 + (t & 0x1F)
    elif 0xD9 <= t <= 0xDB:  # str 8/16/32
        start = pos + 1 + (1 << (t - 0xD9))
        stop = start + int.from_bytes(mv[pos + 1 : start], "big")
    elif 0xC4 <= t <= 0xC6:  # bin 8/16/32
        start = pos + 1 + (1 << (t - 0xC4))
        stop = start + int.from_bytes(mv[pos + 1 : start], "big")
        if stop > end:
            raise _NotFlat
        if view_bin and 2 * (stop - start) >= end:
            return mv[start:stop], stop
        return mv[start:stop].tobytes(), stop
    elif t == 0xC0:
        return None, pos + 1
    elif t == 0xC2 or t == 0xC3:
        return t == 0xC3, pos + 1
    elif 0xCC <= t <= 0xD3:  # uint 8/16/32/64, int 8/16/32/64
        w = 1 << ((t - 0xCC) & 3)
        if pos + 1 + w > end:
            raise _NotFlat
        return int.from_bytes(mv[pos + 1 : pos + 1 + w], "big", signed=t >= 0xD0), pos + 1 + w
    else:
        raise _NotFlat
    if stop > end:
        raise _NotFlat
    return str(mv[start:stop], "utf-8"), stop  # strict, as msgpack's raw=False


def _unchanging(payload: bytes | memoryview) -> bool:
    """Whether nobody can change ``payload``'s bytes while a view of them is held: ``bytes``,
    or a read-only view of ``bytes`` or of a read-only numpy array that owns its memory
    (the framer's handed-over frame). A ``bytearray`` or any writable exporter behind the
    view is its caller's to change or resize: a view of it would let the validated request
    change after the check, and would keep the caller from resizing it (``BufferError``).
    """
    if type(payload) is bytes:
        return True
    if type(payload) is not memoryview or not payload.readonly:
        return False
    obj: object = payload.obj
    if type(obj) is bytes:
        return True
    return isinstance(obj, np.ndarray) and not obj.flags.writeable and bool(obj.flags.owndata)


def _flat_map(payload: bytes | memoryview) -> dict[object, object] | None:
    """A flat top-level map (every key and value a msgpack scalar but float and ext: a
    ``put``, say) decoded exactly as :func:`unpack_limited` would, except that a large
    ``values`` bin is a read-only view of ``payload`` instead of a copy; ``None`` for
    anything else, malformed or not, which then goes to msgpack as before.

    It accepts exactly what msgpack accepts for such a map and decodes it the same:
    non-minimal encodings (a str8 of 3 bytes), duplicate keys (the last value wins, the
    first key object stays, as ``PyDict_SetItem`` in msgpack does), strict UTF-8; trailing
    bytes, a truncated object or invalid UTF-8 give ``None``, and msgpack then reports
    them as it always did. Handing over a view instead of a copy: the frame is one
    large buffer (the framer's, :meth:`FrameDecoder.direct_view`) that nobody writes into
    again, and the view keeps it alive for as long as anyone holds the value (the
    ephemeral file's writer, for a write in flight). A view pins the whole frame, so only
    a bin of at least half of it becomes one: what outlives the request is at most twice
    the value's own bytes. Only from a payload nobody can change (:func:`_unchanging`):
    any other (a caller's ``bytearray``) gets a copy, as from msgpack.
    """
    view_ok = _unchanging(payload)  # then it is read-only already: so are views of it
    mv = memoryview(payload)
    end = len(mv)
    try:
        t = mv[0]
        if 0x80 <= t <= 0x8F:
            count, pos = t & 0x0F, 1
        elif t == 0xDE:
            count, pos = int.from_bytes(mv[1:3], "big"), 3
        elif t == 0xDF:
            count, pos = int.from_bytes(mv[1:5], "big"), 5
        else:
            return None
        if count > _FLAT_MAX_FIELDS or pos > end:
            return None
        out: dict[object, object] = {}
        for _ in range(count):
            k, pos = _flat_scalar(mv, pos, end, False)
            # ``type(k) is str`` first: ``bytes == str`` warns (an error under -bb).
            v, pos = _flat_scalar(mv, pos, end, view_ok and type(k) is str and k == _VIEW_FIELD)
            out[k] = v
    except (_NotFlat, IndexError, UnicodeDecodeError):
        return None
    return out if pos == end else None


#: A frame at least this large that msgpack decodes (not the flat decoder) is decoded in a
#: step of its own, after a first one that does nothing (``parse_envelope_steps``), so that
#: the server can wait for its one decoding slot with nothing decoded yet: a records-form
#: ``put`` costs ~30x its frame in Python objects, which live across the steps of its
#: check. 48 KiB: the smallest frame whose records (24 bytes each at least) can take more
#: than one step of ``RECORDS_PER_STEP``; smaller ones are decoded and checked in one step.
DECODE_ALONE_BYTES: Final = 48 << 10


def parse_envelope(
    payload: bytes | memoryview,
) -> tuple[Id, object, dict[object, object]] | ProtocolError:
    """:func:`parse_envelope_steps` in one step."""
    return run_steps(parse_envelope_steps(payload))


def parse_envelope_steps(
    payload: bytes | memoryview,
) -> Generator[None, None, tuple[Id, object, dict[object, object]] | ProtocolError]:
    """Decode the msgpack map and extract ``id`` and (unchecked) ``op``.

    Split from :func:`parse_request` so the connection can refuse non-``hello`` ops before
    authentication without validating their fields. Yields once first for a large frame
    msgpack decodes (:data:`DECODE_ALONE_BYTES`).

    A large frame (a ``put`` of 8 KiB pages, ~1 MiB) is first tried as a flat map
    (:func:`_flat_map`): its ``values`` column then stays in the frame's buffer, where the
    columnar check and the ephemeral file's append read it, instead of being copied out
    by msgpack. Anything else, and anything the flat decoder leaves alone, is msgpack's.
    """
    if payload and not _is_map_marker(payload[0]):
        # Whatever follows, the frame is not one map: reject it without decoding, since a
        # frame-sized array of tiny items costs ~30x its size in Python objects.
        return ProtocolError(ErrorCode.BAD_FRAME, "frame does not hold a msgpack map")
    m: object = _flat_map(payload) if len(payload) >= DIRECT_FRAME_BYTES else None
    if m is None:
        if len(payload) >= DECODE_ALONE_BYTES:
            yield  # see DECODE_ALONE_BYTES
        try:
            # Tuples, not lists: ``put`` records arrive as the (key, lsn, value) tuples the
            # request holds, with no per-record conversion.
            m = unpack_limited(payload, use_list=False, map_cap=_MAX_MAPS_PER_REQUEST)
        except TooManyMaps:
            # Valid msgpack, but no request holds that many maps (see the cap): refused
            # undecoded, as a frame, since decoding it is what the cap prevents.
            return ProtocolError(
                ErrorCode.BAD_FRAME,
                f"frame holds more than {_MAX_MAPS_PER_REQUEST} msgpack maps"
                " (a request has at most 2: the request and its config)",
            )
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


def parse_op_steps(
    op: object, m: dict[object, object], rid: Id
) -> Generator[None, None, Request | ProtocolError]:
    """:func:`parse_op` in steps: a ``put``'s records are checked a bounded number at a
    time, yielding between (every other op is one step)."""
    if op != "put":
        return parse_op(op, m, rid)
    try:
        return (yield from _p_put_steps(m, rid))
    except _Reject as e:
        return ProtocolError(e.code, e.message, rid)


def parse_op(op: object, m: dict[object, object], rid: Id) -> Request | ProtocolError:
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


def parse_request(payload: bytes | memoryview) -> Request | ProtocolError:
    """Validate one frame's payload into a typed request, or say why not.

    Never raises on any input. Error codes: ``bad_frame`` (not msgpack, not a map),
    ``bad_request`` (missing/mistyped field, named in the message; a non-scalar ``id``),
    ``unknown_op``, ``invalid_id``, and for ``put`` the batch codes of
    :func:`check_put_batch`. The id is echoed in the error whenever it could be read.

    A large columnar ``put``'s ``values`` may be a read-only view of ``payload`` (no copy),
    but only when nobody can change its bytes: ``bytes``, or the framer's handed-over frame.
    From a ``bytearray`` or a writable buffer they are copied, so the request stays what was
    checked and the caller's buffer stays its own.
    """
    env = parse_envelope(payload)
    if isinstance(env, ProtocolError):
        return env
    rid, op, m = env
    return parse_op(op, m, rid)


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
