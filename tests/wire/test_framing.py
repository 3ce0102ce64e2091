"""Example-based tests of the framer (SPEC section 5: length-prefixed frames)."""

from __future__ import annotations

import pytest

from pageserver.wire import (
    CLOSED,
    NEED_DATA,
    ErrorCode,
    Frame,
    FrameDecoder,
    ProtocolError,
    StatusRequest,
    encode_request,
    parse_request,
)
from tests.wire._helpers import KEY, TL, T


def test_frame_roundtrip_and_incremental() -> None:
    f = encode_request("status", id=1)
    d = FrameDecoder(100)
    for b in f[:-1]:
        d.feed(bytes([b]))
        assert d.next_event() is NEED_DATA
    d.feed(f[-1:])
    ev = d.next_event()
    assert isinstance(ev, Frame) and ev.payload == f[4:]
    assert d.next_event() is NEED_DATA
    assert d.buffered == 0


def test_zero_length_frame_then_next_parses() -> None:
    d = FrameDecoder(100)
    d.feed(b"\x00\x00\x00\x00" + encode_request("status", id=2))
    e = d.next_event()
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.BAD_FRAME
    assert not e.close_after
    ev = d.next_event()
    assert isinstance(ev, Frame) and parse_request(ev.payload) == StatusRequest(id=2)


def test_huge_length_rejected_without_buffering() -> None:
    d = FrameDecoder(1024)
    d.feed(b"\xff\xff\xff\xff")
    e = d.next_event()
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.FRAME_TOO_LARGE
    assert e.close_after
    assert d.closed and d.buffered == 0 and d.room == 0
    d.feed(b"x" * 100_000)
    assert d.buffered == 0
    assert d.next_event() is CLOSED


def test_too_large_is_decided_from_header_alone() -> None:
    d = FrameDecoder(10)
    d.feed(b"\x00\x00\x00\x0b")  # 11 > 10, no payload yet
    e = d.next_event()
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.FRAME_TOO_LARGE
    d = FrameDecoder(10)
    d.feed(b"\x00\x00\x00\x0a" + b"\x80" * 10)  # exactly max is fine
    assert isinstance(d.next_event(), Frame)


def test_truncated_frames_need_data() -> None:
    f = encode_request("get", tenant_id=T, timeline_id=TL, key=KEY, lsn=5)
    for cut in range(len(f)):
        d = FrameDecoder(1000)
        d.feed(f[:cut])
        assert d.next_event() is NEED_DATA
        d.feed_eof()
        assert d.next_event() is CLOSED


def test_room_bounds_buffering() -> None:
    d = FrameDecoder(100)
    assert d.room == 104
    d.feed(b"\x00\x00\x00\x64" + b"\x80" * 50)  # 100-byte frame, half there
    assert d.next_event() is NEED_DATA
    assert d.room == 50
    d.feed(b"\x80" * 50)
    assert isinstance(d.next_event(), Frame)
    assert d.room == 104


def test_decoder_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)
    with pytest.raises(ValueError):
        FrameDecoder(2**32)
