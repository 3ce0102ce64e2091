"""The wire protocol of SPEC section 5, sans-IO (modelled on h11): bytes in, events out.

Nothing here touches a socket, a clock or a thread: bytes go in, events come out, replies
come out as bytes. That keeps the part of the server that faces hostile input small,
deterministic and cheap to fuzz, and lets the trio server (:mod:`pageserver.server`), the
client (:mod:`pageserver.client`), the tests and the benchmarks share one implementation of
every framing and validation rule. They own the I/O and feed bytes through these objects.

Layers, bottom up, one private module each (import from this package, not from them):

* :mod:`~pageserver.wire.errors` -- :class:`ProtocolError`, the value (never an exception)
  that every rejection is, and :class:`ErrorCode` (whose home is :mod:`pageserver.errors`).
* ``_framing`` -- :class:`FrameDecoder`, the incremental framer (4-byte big-endian length
  ``N``, then ``N`` bytes), and :func:`encode_frame`. It never holds more than one
  incomplete frame, and rejects an oversized frame from its header alone, before buffering
  any of its payload. A large frame can be read straight into a buffer of its own
  (``direct_view``/``commit``) and is then handed over in it, uncopied.
* ``_requests`` -- :func:`parse_request`: one frame's payload to a typed, validated, frozen
  request dataclass, or a :class:`ProtocolError` carrying the SPEC error code.
  :func:`check_put_batch` is the wire's view of the one whole-batch ``put`` check of
  :mod:`pageserver.layers.batch` (keys, value encodings, LSN order).
* ``_replies`` -- the encoders :func:`encode_reply`, :func:`encode_error`,
  :func:`encode_request`; :class:`ReplyDecoder` / :func:`parse_reply` -- the client's side.
* ``_connection`` -- :class:`ServerConnection`, the per-connection state machine
  (``hello``/auth, the states after which the server must close), a transition table in the
  h11 style.

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

Memory: see :class:`FrameDecoder` (bytes buffered per connection) and ``_requests`` (the
transient of decoding one payload into Python objects).

The names below are exactly what the server, the client, the benchmarks and the tests use.
"""

from pageserver.layers.key import KEY_MAX_BYTES as KEY_MAX
from pageserver.wire._connection import (
    ConnState,
    ErrorEvent,
    RequestEvent,
    ServerConnection,
    token_checker,
)
from pageserver.wire._framing import (
    BUSY,
    CLOSED,
    HEADER_LEN,
    NEED_DATA,
    Frame,
    FrameDecoder,
    encode_frame,
)
from pageserver.wire._replies import (
    PROTOCOL_VERSION,
    Reply,
    ReplyDecoder,
    encode_error,
    encode_reply,
    encode_request,
    parse_reply,
)
from pageserver.wire._requests import (
    OPS,
    CompactRequest,
    FlushRequest,
    GcRequest,
    GetHistoryRequest,
    GetRequest,
    HelloRequest,
    PutRequest,
    Request,
    StatusRequest,
    TenantAttachRequest,
    TenantConfigRequest,
    TenantCreateRequest,
    TenantDetachRequest,
    TimelineCreateRequest,
    check_put_batch,
    parse_request,
)
from pageserver.wire.errors import ErrorCode, ProtocolError

__all__ = [
    "BUSY",
    "CLOSED",
    "HEADER_LEN",
    "KEY_MAX",
    "NEED_DATA",
    "OPS",
    "PROTOCOL_VERSION",
    "CompactRequest",
    "GcRequest",
    "ConnState",
    "ErrorCode",
    "ErrorEvent",
    "FlushRequest",
    "Frame",
    "FrameDecoder",
    "GetHistoryRequest",
    "GetRequest",
    "HelloRequest",
    "ProtocolError",
    "PutRequest",
    "Reply",
    "ReplyDecoder",
    "Request",
    "RequestEvent",
    "ServerConnection",
    "StatusRequest",
    "TenantAttachRequest",
    "TenantConfigRequest",
    "TenantCreateRequest",
    "TenantDetachRequest",
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
