"""Example-based tests of the encoders and the client-side reply decoder."""

from __future__ import annotations

import msgpack
import pytest

from pageserver.wire import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    PutRequest,
    Reply,
    ReplyDecoder,
    encode_error,
    encode_frame,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
)
from tests.wire._helpers import KEY, TL, T, img, payload


def test_encode_reply_and_error() -> None:
    f = encode_reply(5, {"value": b"\x01\x02", "last_record_lsn": 10})
    assert int.from_bytes(f[:4], "big") == len(f) - 4
    # bytes go out as bin (0xc4), not str
    assert b"\xc4\x02\x01\x02" in f
    assert msgpack.unpackb(f[4:], raw=False) == {
        "id": 5,
        "ok": True,
        "value": b"\x01\x02",
        "last_record_lsn": 10,
    }
    f = encode_error("x", ErrorCode.TENANT_NOT_FOUND, "no such tenant")
    assert msgpack.unpackb(f[4:], raw=False) == {
        "id": "x",
        "ok": False,
        "error": {"code": "tenant_not_found", "message": "no such tenant"},
    }
    with pytest.raises(ValueError):
        encode_reply(1, {"ok": False})


def test_reply_decoder_roundtrip() -> None:
    rd = ReplyDecoder()
    stream = (
        encode_reply(1, {"version": PROTOCOL_VERSION, "io_engine": "std-fs"})
        + encode_error(2, ErrorCode.BAD_VALUE, "nope")
        + encode_reply(None)
    )
    for i in range(0, len(stream), 3):
        rd.receive_data(stream[i : i + 3])
    assert rd.next_event() == Reply(1, True, {"version": 1, "io_engine": "std-fs"})
    r = rd.next_event()
    assert r == Reply(2, False, {}, "bad_value", "nope")
    assert isinstance(r, Reply) and r.code == ErrorCode.BAD_VALUE
    assert rd.next_event() == Reply(None, True, {})
    assert rd.next_event() is NEED_DATA
    rd.receive_data(b"")
    assert rd.next_event() is CLOSED


def test_parse_reply_malformed() -> None:
    for obj in [[1], {"id": 1}, {"ok": 1}, {"ok": False}, {"ok": False, "error": {"code": 5}}]:
        r = parse_reply(payload(obj))
        assert isinstance(r, ProtocolError) and r.code is ErrorCode.BAD_FRAME
    assert isinstance(parse_reply(b"\xc1"), ProtocolError)


def test_encode_request_roundtrip() -> None:
    f = encode_request("put", id=3, tenant_id=T, timeline_id=TL, records=[(KEY, 1, img(b"a"))])
    # plain tuple as the expected value: a CheckedBatch compares equal to it
    assert parse_request(f[4:]) == PutRequest(T, TL, ((KEY, 1, img(b"a")),), id=3)  # type: ignore[arg-type]
    m = msgpack.unpackb(encode_request("status")[4:])
    assert m == {"op": "status"}  # no id key when id is None
    assert encode_frame({"op": "status"}) == encode_request("status")
