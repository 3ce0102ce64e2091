"""Large frames read straight into their own buffer (``FrameDecoder.direct_view``/``commit``).

A frame of at least ``DIRECT_FRAME_BYTES`` whose header is in gets a buffer of its own; the
reader fills it in place and the frame is handed over in it, as a read-only view. These
tests deliver such frames in every kind of split (the header a byte at a time, random cut
points, direct reads and ``feed`` mixed) and check the bytes handed over, the byte counts
the server's budget relies on (``buffered``, ``room``, ``head_frame_bytes``), the end of
stream in the middle, the oversized frame refused before any allocation, and that the
handed-over buffer is nobody's but its holders'.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver.wire import (
    CLOSED,
    NEED_DATA,
    ErrorCode,
    ErrorEvent,
    Frame,
    FrameDecoder,
    ProtocolError,
    ServerConnection,
    encode_request,
    token_checker,
)
from pageserver.wire._framing import DIRECT_FRAME_BYTES, HEADER_LEN

BIG = DIRECT_FRAME_BYTES + 1000


def framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER_LEN, "big") + payload


def body(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(n))


class Stream:
    """Delivers a byte string to a decoder the way the server does: ``feed`` or, when the
    decoder offers one, a read into ``direct_view`` (then ``commit``), and checks the byte
    counts after every step."""

    def __init__(self, d: FrameDecoder, data: bytes) -> None:
        self.d = d
        self.data = data
        self.pos = 0  # bytes delivered
        self.out = 0  # bytes handed out in frames (headers included)
        self.frames: list[Frame] = []

    def check_counts(self) -> None:
        assert self.d.buffered == self.pos - self.out
        assert self.d.room == max(0, self.d.max_frame_bytes + HEADER_LEN - self.d.buffered)

    def deliver(self, n: int, direct: bool) -> bool:
        """Deliver up to ``n`` bytes; False if the decoder offered no direct view when
        ``direct`` was asked (then nothing was delivered)."""
        n = min(n, len(self.data) - self.pos)
        if direct:
            view = self.d.direct_view()
            if view is None:
                return False
            # What readv does with [direct, shared]: the frame's rest, then past its end.
            k = min(n, len(view))
            view[:k] = self.data[self.pos : self.pos + k]
            del view
            self.d.commit(k)
            if n > k:
                self.d.feed(self.data[self.pos + k : self.pos + n])
        else:
            self.d.feed(self.data[self.pos : self.pos + n])
        self.pos += n
        self.check_counts()
        return True

    def drain(self) -> None:
        while True:
            ev = self.d.next_event()
            if ev is NEED_DATA:
                break
            assert isinstance(ev, Frame), ev
            self.frames.append(ev)
            self.out += HEADER_LEN + len(ev.payload)
            self.check_counts()


def test_large_frame_header_byte_by_byte_then_direct() -> None:
    payload = body(BIG)
    d = FrameDecoder(1 << 20)
    s = Stream(d, framed(payload))
    for _ in range(HEADER_LEN):
        assert d.direct_view() is None  # the header is not in yet
        s.deliver(1, direct=False)
        s.drain()
    assert d.head_frame_bytes == HEADER_LEN + BIG
    first = d.direct_view()
    assert first is not None and len(first) == BIG and not first.readonly
    del first
    while s.pos < len(s.data):
        assert s.deliver(10_000, direct=True)
        assert d.head_frame_bytes == HEADER_LEN + BIG or s.pos == len(s.data)
        s.drain()
    [frame] = s.frames
    assert isinstance(frame.payload, memoryview) and frame.payload.readonly
    assert frame.payload == payload
    assert d.buffered == 0 and d.head_frame_bytes == 0 and d.direct_view() is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 3 * DIRECT_FRAME_BYTES), min_size=1, max_size=4),
    cuts=st.lists(st.tuples(st.integers(1, 90_000), st.booleans()), min_size=1, max_size=40),
)
def test_frames_in_random_splits_come_out_whole(
    sizes: list[int], cuts: list[tuple[int, bool]]
) -> None:
    """Frames small and large back to back, delivered in random cuts, each by ``feed`` or
    by a direct read where the decoder offers one: every frame comes out whole, in order,
    with the same bytes, and the counts are right after every step."""
    payloads = [body(n, seed=i) for i, n in enumerate(sizes)]
    d = FrameDecoder(4 * DIRECT_FRAME_BYTES)
    s = Stream(d, b"".join(framed(p) for p in payloads))
    i = 0
    while s.pos < len(s.data):
        n, direct = cuts[i % len(cuts)]
        i += 1
        if not s.deliver(n, direct):
            s.deliver(n, direct=False)
        s.drain()
    assert [bytes(f.payload) for f in s.frames] == payloads
    for f, p in zip(s.frames, payloads, strict=True):
        # Large frames read directly are handed over in their own buffer, read-only.
        assert isinstance(f.payload, bytes) or (f.payload.readonly and len(p) >= DIRECT_FRAME_BYTES)
    assert d.buffered == 0


def test_two_large_frames_next_header_in_the_same_read() -> None:
    a, b = body(BIG, 1), body(BIG + 5, 2)
    data = framed(a) + framed(b)
    d = FrameDecoder(1 << 20)
    s = Stream(d, data)
    s.deliver(30_000, direct=False)
    s.drain()
    # One read: the rest of frame a, frame b's header and 100 bytes of its payload.
    s.deliver(HEADER_LEN + BIG - 30_000 + HEADER_LEN + 100, direct=True)
    s.drain()
    assert [bytes(f.payload) for f in s.frames] == [a]
    assert d.buffered == HEADER_LEN + 100 and d.head_frame_bytes == HEADER_LEN + len(b)
    view = d.direct_view()
    assert view is not None and len(view) == len(b) - 100  # the 100 bytes were moved in
    del view
    s.deliver(len(data), direct=True)
    s.drain()
    assert [bytes(f.payload) for f in s.frames] == [a, b]
    assert d.buffered == 0


def test_direct_view_only_for_large_incomplete_frames() -> None:
    d = FrameDecoder(1 << 20)
    d.feed(framed(body(DIRECT_FRAME_BYTES - 1))[:1000])
    assert d.direct_view() is None  # small frame: the stream buffer is cheaper
    d = FrameDecoder(1 << 20)
    whole = framed(body(BIG))
    d.feed(whole)
    assert d.direct_view() is None  # complete already: nothing to read into
    ev = d.next_event()
    assert isinstance(ev, Frame) and ev.payload == whole[HEADER_LEN:]
    d = FrameDecoder(1 << 20)
    d.feed(b"\x00\x00\x00\x00")
    assert d.direct_view() is None  # length 0: bad_frame, not a frame to read
    assert isinstance(d.next_event(), ProtocolError)


def test_commit_past_the_view_is_refused() -> None:
    d = FrameDecoder(1 << 20)
    with pytest.raises(ValueError):
        d.commit(1)
    d.feed(framed(body(BIG))[:10])
    view = d.direct_view()
    assert view is not None
    with pytest.raises(ValueError):
        d.commit(len(view) + 1)
    d.commit(len(view))
    assert isinstance(d.next_event(), Frame)


def test_eof_in_the_middle_of_a_direct_frame() -> None:
    d = FrameDecoder(1 << 20)
    s = Stream(d, framed(body(3 * BIG)))
    s.deliver(50_000, direct=False)
    s.drain()
    assert s.deliver(20_000, direct=True)
    s.drain()
    d.feed_eof()
    assert d.next_event() is CLOSED
    assert d.next_event() is CLOSED
    assert d.direct_view() is None and d.room == 0
    d.feed(b"more")  # ignored after the end of stream, as before
    assert d.buffered == 70_000 and not s.frames


def test_oversized_frame_refused_before_any_allocation() -> None:
    """A header claiming more than ``max_frame_bytes`` gets no buffer: ``direct_view`` is
    None before and after the refusal, and nothing near the claimed size is allocated."""
    d = FrameDecoder(1 << 20)
    tracemalloc.start()
    try:
        d.feed((1 << 30).to_bytes(HEADER_LEN, "big") + b"x" * 1000)
        assert d.direct_view() is None
        e = d.next_event()
        assert isinstance(e, ProtocolError) and e.code is ErrorCode.FRAME_TOO_LARGE
        assert d.direct_view() is None
        d.feed(b"x" * 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert d.buffered == 0 and d.room == 0 and d.next_event() is CLOSED


def test_direct_buffer_is_made_only_when_asked() -> None:
    """A frame's buffer comes with the first ``direct_view``, not with its header (a server
    asks only once it holds the frame's reservation)."""
    n = 8 << 20
    d = FrameDecoder(16 << 20)
    tracemalloc.start()
    try:
        d.feed(n.to_bytes(HEADER_LEN, "big") + b"y" * 1000)
        assert d.next_event() is NEED_DATA
        before, _ = tracemalloc.get_traced_memory()
        view = d.direct_view()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert before < 1 << 20 <= n <= after
    assert view is not None and len(view) == n - 1000


def _direct_frame(payload: bytes) -> tuple[FrameDecoder, memoryview]:
    """A decoder that read ``payload``'s frame directly (header and 96 bytes fed, the rest
    into ``direct_view``), and the payload of the frame it handed over."""
    d = FrameDecoder(1 << 20)
    d.feed(framed(payload)[:100])
    view = d.direct_view()
    assert view is not None
    view[:] = payload[96:]
    d.commit(len(view))
    del view
    ev = d.next_event()
    assert isinstance(ev, Frame) and isinstance(ev.payload, memoryview)
    return d, ev.payload


def test_handed_over_frame_belongs_to_its_holders() -> None:
    """The decoder keeps no reference to a frame it handed over (the buffer dies with the
    last view of it), and a view of it keeps it alive: no use after free."""
    payload = os.urandom(BIG)
    d, mv = _direct_frame(payload)
    owner = weakref.ref(mv.obj)
    part = mv[1000:2000]
    with pytest.raises(TypeError):
        part[0] = 0  # the view is read-only...
    del mv
    gc.collect()
    assert owner() is not None and part == payload[1000:2000]
    d.feed(framed(b"\x80"))  # the decoder goes on with a fresh buffer of its own
    assert isinstance(d.next_event(), Frame)
    del part
    gc.collect()
    assert owner() is None


def test_handed_over_frame_has_no_writable_alias() -> None:
    """The read-only view's ``.obj`` is the array the frame was read into: it is made
    read-only at hand-over, so no holder can change the frame (a request validated from
    it, a put's values) through it."""
    payload = os.urandom(BIG)
    _, mv = _direct_frame(payload)
    with pytest.raises(ValueError, match="read-only"):
        mv.obj[0] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        memoryview(mv.obj)[0] = 0  # type: ignore[call-overload]
    assert mv == payload


def test_full_direct_frame_offers_no_view() -> None:
    """Once the frame's own buffer is full, ``direct_view`` is ``None`` (its docstring),
    not an empty view, until ``next_event`` hands the frame over."""
    d = FrameDecoder(1 << 20)
    whole = framed(body(BIG))
    d.feed(whole[:100])
    view = d.direct_view()
    assert view is not None
    view[:] = whole[100:]
    d.commit(len(view))
    del view
    assert d.direct_view() is None
    ev = d.next_event()
    assert isinstance(ev, Frame) and ev.payload == whole[HEADER_LEN:]


def test_feed_takes_any_buffer_into_a_direct_frame() -> None:
    """``feed`` takes a buffer of any item format (as ``bytearray +=`` does) while a
    direct frame is open, counting its bytes, not its items."""
    import array

    whole = framed(body(BIG)) + framed(b"\x80")
    words = array.array("I")
    words.frombytes(whole[1000 : 1000 + 40_000])
    rest = array.array("I")
    tail = whole[41_000:]
    rest.frombytes(tail[: len(tail) // 4 * 4])
    d = FrameDecoder(1 << 20)
    d.feed(whole[:1000])
    assert d.direct_view() is not None
    d.feed(words)
    d.feed(rest)
    d.feed(tail[len(tail) // 4 * 4 :])
    ev = d.next_event()
    assert isinstance(ev, Frame) and ev.payload == whole[HEADER_LEN : HEADER_LEN + BIG]
    ev = d.next_event()
    assert isinstance(ev, Frame) and ev.payload == b"\x80"


def test_connection_that_must_close_offers_no_direct_view() -> None:
    """After ``unauthorized`` to ``hello`` the server closes: even with a large frame's
    header already buffered behind it, there is nothing more to read into."""
    c = ServerConnection(1 << 20, auth_required=True, token_check=token_checker("s3cret"))
    c.receive_data(encode_request("hello", id=1, token="wrong") + framed(body(BIG))[:5000])
    ev = c.next_event()
    assert isinstance(ev, ErrorEvent) and ev.close_after
    assert c.direct_view() is None and c.room == 0 and c.head_frame_bytes == 0
    assert c.next_event() is CLOSED


def test_connection_reads_a_large_request_directly() -> None:
    c = ServerConnection(1 << 20)
    req = encode_request("status", id=7, pad=b"p" * BIG)
    c.receive_data(req[:3000])
    assert c.next_event() is NEED_DATA
    view = c.direct_view()
    assert view is not None and len(view) == len(req) - 3000
    view[:] = req[3000:]
    c.commit(len(view))
    del view
    ev = c.next_event()
    assert not isinstance(ev, ErrorEvent) and ev is not NEED_DATA and ev is not CLOSED
    assert ev.request.id == 7 and c.buffered == 0
