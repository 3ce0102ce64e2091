"""Replies, and the encoders: what the server writes and what the client reads back.

:func:`encode_reply` and :func:`encode_error` write the reply format of SPEC section 5;
:func:`parse_reply` and :class:`ReplyDecoder` are the client's side of it;
:func:`encode_request` is the client's request encoder.

Why ``_replies`` and not ``_encode``: the module is named for the reply format it owns, whose
writers and readers are kept side by side so they cannot drift apart; ``_encode`` would
misname the half that decodes. :func:`encode_request` sits here rather than in
:mod:`pageserver.wire._requests` because it is client-side and as thin as the reply encoders
(a map on :func:`~pageserver.wire.encode_frame`), while ``_requests`` is the server's
validation of hostile input and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pageserver.wire._framing import (
    MAX_ALLOWED_FRAME,
    Frame,
    FrameDecoder,
    Sentinel,
    encode_frame,
)
from pageserver.wire._requests import unpack_limited
from pageserver.wire.errors import ErrorCode, Id, ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Reply",
    "ReplyDecoder",
    "encode_error",
    "encode_reply",
    "encode_request",
    "parse_reply",
]


PROTOCOL_VERSION: Final = 1
"""The ``version`` a ``hello`` reply carries."""


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


def parse_reply(payload: bytes | memoryview) -> Reply | ProtocolError:
    """Decode one reply payload; a malformed reply is a ``bad_frame`` ProtocolError.

    Arrays come out as lists here (clients index and extend them), unlike requests.
    """
    try:
        m = unpack_limited(payload, use_list=True, map_cap=None)
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

    def __init__(self, max_frame_bytes: int = MAX_ALLOWED_FRAME) -> None:
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
