"""``encode_frame_parts``: the bytes of ``encode_frame`` as buffers, large bins not copied;
and the client sending such a frame with ``sendmsg`` (partial sends included)."""

from __future__ import annotations

import os
import socket
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pageserver.client import Client
from pageserver.wire import encode_frame
from pageserver.wire._framing import OUT_OF_LINE_BYTES, Frame, FrameDecoder, encode_frame_parts

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=40),
    st.binary(max_size=300),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=20), scalars, max_size=20),
    st.lists(st.sampled_from([0, 1, 255, 256, 65535, 65536, 70_000]), max_size=4),
    st.integers(1, 70_000),
)
def test_parts_are_the_frame(fields: dict[str, Any], big: list[int], threshold: int) -> None:
    obj: dict[str, Any] = dict(fields)
    for i, n in enumerate(big):
        obj[f"big{i}"] = os.urandom(n)
    parts = encode_frame_parts(obj, threshold)
    assert b"".join(parts) == encode_frame(obj)
    for v in obj.values():
        if type(v) is bytes and len(v) >= threshold:
            assert any(p is v for p in parts)  # the caller's object itself: no copy


def test_default_threshold_and_small_maps() -> None:
    assert encode_frame_parts({}) == [encode_frame({})]
    small = {"op": "status", "id": 1}
    assert encode_frame_parts(small) == [encode_frame(small)]
    big = bytes(OUT_OF_LINE_BYTES)
    parts = encode_frame_parts({"op": "put", "values": big, "z": 1})
    assert len(parts) == 3 and parts[1] is big
    ev = FrameDecoder()
    ev.feed(b"".join(parts))
    frame = ev.next_event()
    assert isinstance(frame, Frame)
    assert msgpack.unpackb(frame.payload) == {"op": "put", "values": big, "z": 1}


@pytest.mark.trio
async def test_client_sends_large_frames_whole_through_a_small_socket_buffer() -> None:
    """A frame far larger than the socket buffer goes out with sendmsg in several partial
    sends; the peer receives exactly encode_frame's bytes, frame after frame."""
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client = Client(trio.SocketStream(a))
    values = [os.urandom(300_000), os.urandom(OUT_OF_LINE_BYTES + 1)]
    got = bytearray()
    expected = b"".join(
        encode_frame({"op": "put", "id": i + 1, "values": v, "tail": "x"})
        for i, v in enumerate(values)
    )

    async def reader() -> None:
        while len(got) < len(expected):
            data = await b.recv(65536)
            assert data
            got.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for v in values:
            await client.send("put", values=v, tail="x")
    assert bytes(got) == expected
    a.close()
    b.close()


@pytest.mark.trio
async def test_client_falls_back_to_send_all_on_other_streams() -> None:
    s1, s2 = trio.testing.memory_stream_pair()
    client = Client(s1)
    big = os.urandom(OUT_OF_LINE_BYTES * 2)
    rid = await client.send("put", values=big)
    data = await s2.receive_some(1 << 20)
    while len(data) < len(encode_frame({"op": "put", "id": rid, "values": big})):
        data += await s2.receive_some(1 << 20)
    assert data == encode_frame({"op": "put", "id": rid, "values": big})
