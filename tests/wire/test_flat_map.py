"""The envelope's flat-map fast path for large frames (``_requests._flat_map``).

A frame of at least ``DIRECT_FRAME_BYTES`` whose top-level map holds only scalars (a
``put``) is decoded without msgpack, its large ``values`` bin handed over as a read-only
view of the frame. It must accept exactly what msgpack accepts for such a frame and decode
it the same (or leave it to msgpack): the same request, or the same error, for the same
bytes. The reference here is the msgpack path itself (the fast path switched off).
"""

from __future__ import annotations

import gc
import struct
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver.layers.batch import CheckedBatch, PutColumns
from pageserver.wire import (
    ErrorCode,
    Frame,
    FrameDecoder,
    ProtocolError,
    PutRequest,
    Request,
    _requests,
    encode_request,
    parse_request,
)
from pageserver.wire._framing import DIRECT_FRAME_BYTES, HEADER_LEN, encode_frame_parts
from pageserver.wire._requests import _flat_map, unpack_limited
from tests.wire._helpers import TL, T, img

_FAIL = object()


@contextmanager
def _msgpack_only() -> Iterator[None]:
    with mock.patch.object(_requests, "_flat_map", lambda payload: None):
        yield


def via_msgpack(payload: bytes | memoryview) -> Request | ProtocolError:
    """What ``parse_request`` returned before the fast path: msgpack decodes everything."""
    with _msgpack_only():
        return parse_request(payload)


def msgpack_map(payload: bytes | memoryview) -> object:
    try:
        return unpack_limited(payload, use_list=False, map_cap=64)
    except Exception:
        return _FAIL


def typed(m: dict[object, object]) -> list[tuple[object, ...]]:
    """The map as (type, value) pairs in order: ``1 == True`` must not hide a difference,
    and a view counts as the bytes it shows."""

    def one(v: object) -> tuple[object, object]:
        if type(v) is memoryview:
            return bytes, v.tobytes()
        return type(v), v

    return [(*one(k), *one(v)) for k, v in m.items()]


def framer_payload(payload: bytes) -> bytes | memoryview:
    """``payload`` as the framer hands it over: a large one read into its own buffer (a
    read-only view of it), a small one as ``bytes``."""
    d = FrameDecoder(1 << 24)
    d.feed(len(payload).to_bytes(HEADER_LEN, "big"))
    view = d.direct_view()
    if view is None:
        assert len(payload) < DIRECT_FRAME_BYTES
        d.feed(payload)
    else:
        view[:] = payload
        d.commit(len(payload))
        del view
    ev = d.next_event()
    assert isinstance(ev, Frame) and ev.payload == payload
    return ev.payload


def recs(n: int, size: int, lsn0: int = 10) -> list[tuple[bytes, int, bytes]]:
    return [
        (bytes(14) + i.to_bytes(4, "big"), lsn0 + i, img(bytes([i % 251]) * (size - 12)))
        for i in range(n)
    ]


def columnar_payload(records: list[tuple[bytes, int, bytes]], **extra: Any) -> bytes:
    fields = {"tenant_id": T, "timeline_id": TL, **PutColumns.from_records(records).wire_fields()}
    parts = encode_frame_parts({"op": "put", "id": 5, **fields, **extra})
    return b"".join(parts)[HEADER_LEN:]


# -- put frames of both forms -------------------------------------------------------------


@pytest.mark.parametrize(("n", "size"), [(128, 8192), (1000, 100), (9, 8192)])
def test_columnar_put_same_request_values_as_a_view(n: int, size: int) -> None:
    records = recs(n, size)
    payload = columnar_payload(records)
    assert len(payload) >= DIRECT_FRAME_BYTES
    expected = via_msgpack(payload)
    assert isinstance(expected, PutRequest) and expected.records == records
    for p in (payload, framer_payload(payload)):
        got = parse_request(p)
        assert got == expected
        assert isinstance(got, PutRequest)
        values = got.records.values
        assert type(values) is memoryview and values.readonly  # no copy of the values
        assert values.obj is memoryview(p).obj


def test_records_put_same_request() -> None:
    """The records form is not flat (an array of arrays): msgpack decodes it, as before."""
    records = recs(128, 8192)
    payload = encode_request("put", id=5, tenant_id=T, timeline_id=TL, records=records)[HEADER_LEN:]
    assert len(payload) >= DIRECT_FRAME_BYTES and _flat_map(payload) is None
    expected = via_msgpack(payload)
    assert isinstance(expected, PutRequest) and expected.records == records
    assert parse_request(payload) == expected
    assert parse_request(framer_payload(payload)) == expected


def test_both_forms_parse_to_the_same_batch() -> None:
    records = recs(200, 1000)
    a = parse_request(columnar_payload(records))
    b = parse_request(
        encode_request("put", id=5, tenant_id=T, timeline_id=TL, records=records)[HEADER_LEN:]
    )
    assert isinstance(a, PutRequest) and isinstance(b, PutRequest) and a == b


def test_large_keys_column_is_bytes_not_a_view() -> None:
    """Only ``values`` may be a view: ``keys`` of 72 KB (4000 records) must still be the
    ``bytes`` the put check wants, or a valid put would be refused."""
    records = recs(4000, 13)
    payload = columnar_payload(records)
    got = parse_request(payload)
    assert isinstance(got, PutRequest), got
    assert got == via_msgpack(payload) and got.records == records


def test_small_values_of_a_large_frame_are_copied() -> None:
    """A view pins the whole frame, so only a bin of at least half of it becomes one."""
    records = recs(4, 100)
    payload = columnar_payload(records, pad=b"p" * DIRECT_FRAME_BYTES)
    got = parse_request(payload)
    assert isinstance(got, PutRequest) and type(got.records.values) is bytes
    assert got == via_msgpack(payload)


def test_put_errors_are_the_same() -> None:
    records = recs(128, 1000)
    cols = PutColumns.from_records(records).wire_fields()
    broken = dict(cols, value_ends=cols["value_ends"][:-4])
    for fields in (
        broken,
        dict(cols, records=[]),  # both forms
        dict(cols, tenant_id="nothex"),
        dict(cols, lsns=cols["lsns"][8:] + cols["lsns"][:8]),  # out of order
    ):
        payload = b"".join(encode_frame_parts({"op": "put", "id": 9, "tenant_id": T,
                                                "timeline_id": TL, **fields}))[HEADER_LEN:]  # fmt: skip
        got = parse_request(payload)
        assert isinstance(got, ProtocolError), got
        assert got == via_msgpack(payload)


# -- what msgpack accepts, byte by byte ---------------------------------------------------


def _str(s: str, width: int) -> bytes:
    """``s`` as fixstr (width 0), str8, str16 or str32."""
    b = s.encode()
    if width == 0:
        return bytes([0xA0 | len(b)]) + b
    w = 1 << (width - 1)
    return bytes([0xD8 + width]) + len(b).to_bytes(w, "big") + b


def _bin(b: bytes, width: int) -> bytes:
    """``b`` as bin8 (width 0), bin16 or bin32."""
    return bytes([0xC4 + width]) + len(b).to_bytes(1 << width, "big") + b


BIG_BIN = _str("values", 0) + _bin(b"v" * DIRECT_FRAME_BYTES, 2)


@pytest.mark.parametrize(
    "payload",
    [
        # Non-minimal encodings: a map16 of 3, a str8 "op", a uint64 id, a str32 key.
        b"\xde\x00\x03"
        + _str("op", 1)
        + _str("status", 2)
        + _str("id", 3)
        + b"\xcf"
        + (7).to_bytes(8, "big")
        + BIG_BIN,
        # Duplicate keys: the last value wins.
        b"\x83" + _str("id", 0) + b"\x01" + _str("id", 0) + b"\x02" + BIG_BIN,
        # 1 and True are the same key: the first key object stays, the last value wins.
        b"\x83\x01" + _str("a", 0) + b"\xc3" + _str("b", 0) + BIG_BIN,
        # Every scalar kind: nil, bools, fixints both signs, int8..int64, uint8..uint32.
        b"\x8f"
        + b"".join(
            bytes([0x20 + i]) + v
            for i, v in enumerate(
                [
                    b"\xc0",
                    b"\xc2",
                    b"\xc3",
                    b"\x7f",
                    b"\xe0",
                    b"\xd0\x80",
                    b"\xd1\x80\x00",
                    b"\xd2\x80\x00\x00\x00",
                    b"\xd3" + bytes([0x80]) + bytes(7),
                    b"\xcc\xff",
                    b"\xcd\xff\xff",
                    b"\xce\xff\xff\xff\xff",
                    _bin(b"k", 0),
                    _bin(b"k" * 300, 1),
                ]
            )
        )
        + BIG_BIN,  # fmt: skip
        # Invalid UTF-8 (a surrogate) in a key, and in a value.
        b"\x82" + b"\xa3\xed\xa0\x80" + b"\x01" + BIG_BIN,
        b"\x82" + _str("op", 0) + b"\xa2\xc3\x28" + BIG_BIN,
        # Trailing bytes, a truncated bin, a map claiming more fields than it has.
        b"\x81" + BIG_BIN + b"\x00",
        b"\x81" + BIG_BIN[:-1],
        b"\x82" + BIG_BIN,
        b"\xdf\xff\xff\xff\xff" + BIG_BIN,
        # Things the fast path leaves to msgpack: a float, an array, the reserved 0xc1.
        b"\x82" + _str("id", 0) + b"\xcb" + struct.pack(">d", 1.5) + BIG_BIN,
        b"\x82" + _str("id", 0) + b"\x91\x01" + BIG_BIN,
        b"\x82" + _str("id", 0) + b"\xc1" + BIG_BIN,
    ],
)
def test_edge_encodings_decode_as_msgpack_does(payload: bytes) -> None:
    ref = msgpack_map(payload)
    flat = _flat_map(payload)
    if flat is not None:
        assert isinstance(ref, dict) and typed(flat) == typed(ref)
    assert parse_request(payload) == via_msgpack(payload)
    assert parse_request(framer_payload(payload)) == via_msgpack(payload)


def test_fast_path_takes_what_it_should() -> None:
    """Not only falling back: the valid flat maps above are decoded by the fast path."""
    assert _flat_map(b"\x83\x01" + _str("a", 0) + b"\xc3" + _str("b", 0) + BIG_BIN) == {
        1: "b",
        "values": b"v" * DIRECT_FRAME_BYTES,
    }
    assert _flat_map(b"\x81" + BIG_BIN + b"\x00") is None
    assert _flat_map(b"\xde\x00\x21" + b"\x01\x01" * 32 + BIG_BIN) is None  # > 32 fields


def test_bad_frames_are_the_same_error() -> None:
    for payload in (b"\x81" + BIG_BIN + b"\x00", b"\x81" + BIG_BIN[:-1], b"\x92" + BIG_BIN):
        got = parse_request(payload)
        assert isinstance(got, ProtocolError) and got.code is ErrorCode.BAD_FRAME
        assert got == via_msgpack(payload)


# -- views: read-only, and they keep the frame alive ---------------------------------------


def test_values_view_keeps_the_frame_alive_and_is_read_only() -> None:
    records = recs(128, 8192)
    p = framer_payload(columnar_payload(records))
    assert isinstance(p, memoryview)
    owner = weakref.ref(p.obj)
    got = parse_request(p)
    assert isinstance(got, PutRequest)
    batch: CheckedBatch = got.records
    values = batch.value_buffer()
    with pytest.raises(TypeError):
        values[0] = 1
    del p, got
    gc.collect()
    assert owner() is not None  # the batch's view holds the frame
    assert batch == records and bytes(values[:8192]) == records[0][2]
    del batch, values
    gc.collect()
    assert owner() is None  # and nothing else did


# -- property: random flat maps and mutated bytes ------------------------------------------

_keys = st.one_of(
    st.sampled_from(["op", "id", "values", "keys", "tenant_id", "pad"]),
    st.none(),
    st.booleans(),
    st.integers(-40, 300),
    st.text(max_size=6),
    st.binary(max_size=6),
)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=12),
    st.binary(max_size=40),
    st.floats(allow_nan=False),
)


@st.composite
def _encoded(draw: st.DrawFn, v: object) -> bytes:
    """``v`` in any encoding msgpack accepts for it (minimal or not)."""
    if v is None:
        return b"\xc0"
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        options = []
        if 0 <= v <= 0x7F:
            options.append(bytes([v]))
        if -32 <= v < 0:
            options.append(bytes([v & 0xFF]))
        for code, w in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
            if 0 <= v < 1 << (8 * w):
                options.append(bytes([code]) + v.to_bytes(w, "big"))
        for code, w in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
            if -(1 << (8 * w - 1)) <= v < 1 << (8 * w - 1):
                options.append(bytes([code]) + v.to_bytes(w, "big", signed=True))
        return draw(st.sampled_from(options))
    if isinstance(v, str):
        n = len(v.encode())
        return _str(v, draw(st.sampled_from([0, 1, 2, 3] if n < 32 else [1, 2, 3])))
    if isinstance(v, bytes):
        widths = [w for w in (0, 1, 2) if len(v) < 1 << (8 << w)]
        return _bin(v, draw(st.sampled_from(widths)))
    return msgpack.packb(v)  # type: ignore[no-any-return]  # a float


class Payload(bytes):
    """A frame's payload with a short repr (a failing example is ~70 KB of bytes)."""

    def __repr__(self) -> str:
        return f"Payload({len(self)} B: {self[:96].hex()} ... {self[-64:].hex()})"


@st.composite
def flat_frames(draw: st.DrawFn, floats: bool = True) -> Payload:
    """A top-level map of random scalars (duplicate keys allowed, any encoding), with one
    big bin somewhere so that the frame takes the fast path."""
    values = _values if floats else _values.filter(lambda v: type(v) is not float)
    pairs = draw(st.lists(st.tuples(_keys, values), max_size=10))
    big_key = draw(st.sampled_from(["values", "pad", 3]))
    big = bytes([draw(st.integers(0, 255))]) * draw(
        st.integers(DIRECT_FRAME_BYTES, DIRECT_FRAME_BYTES + 5000)
    )
    at = draw(st.integers(0, len(pairs)))
    pairs.insert(at, (big_key, big))
    count = len(pairs)
    header = draw(
        st.sampled_from(
            ([bytes([0x80 | count])] if count < 16 else [])
            + [b"\xde" + count.to_bytes(2, "big"), b"\xdf" + count.to_bytes(4, "big")]
        )
    )
    return Payload(header + b"".join(draw(_encoded(k)) + draw(_encoded(v)) for k, v in pairs))


@st.composite
def mutated(draw: st.DrawFn, payload: bytes) -> Payload:
    b = bytearray(payload)
    # Mutations near the structure (the first bytes and the end) hit headers most often.
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, min(len(b) - 1, 120)) | st.integers(0, len(b) - 1))
        b[i] = draw(st.integers(0, 255))
    cut = draw(st.sampled_from(["none", "truncate", "extend"]))
    if cut == "truncate":
        del b[len(b) - draw(st.integers(1, 50)) :]
    elif cut == "extend":
        b += draw(st.binary(min_size=1, max_size=5))
    return Payload(b)


def _check_same(payload: bytes) -> None:
    flat = _flat_map(payload)
    if flat is not None:
        ref = msgpack_map(payload)
        assert isinstance(ref, dict), "the fast path accepted what msgpack refuses"
        assert typed(flat) == typed(ref)
        for k, v in flat.items():
            if type(v) is memoryview:
                assert k == "values" and v.readonly and 2 * len(v) >= len(payload)
    expected = via_msgpack(payload)
    assert parse_request(payload) == expected
    assert parse_request(framer_payload(payload)) == expected


_PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_PROPERTY
@given(flat_frames(floats=False))
def test_random_flat_maps_decode_as_msgpack_does(payload: bytes) -> None:
    assert _flat_map(payload) is not None  # valid maps of scalars but floats: the fast path's
    _check_same(payload)


@_PROPERTY
@given(flat_frames())
def test_random_flat_maps_with_floats_give_the_same_result(payload: bytes) -> None:
    _check_same(payload)


@_PROPERTY
@given(st.data())
def test_mutated_frames_give_the_same_result(data: st.DataObject) -> None:
    base = data.draw(
        st.one_of(
            flat_frames(),
            st.builds(lambda n: Payload(columnar_payload(recs(n, 1000))), st.integers(66, 80)),
        )
    )
    _check_same(data.draw(mutated(base)))


# -- views only of bytes nobody can change -------------------------------------------------


def _mutable_payloads(payload: bytes) -> Iterator[tuple[str, Any, bytes | memoryview]]:
    """``payload`` in buffers its caller can still change: (name, the buffer, what is
    parsed)."""
    import numpy as np

    ba = bytearray(payload)
    yield "bytearray", ba, ba  # type: ignore[misc]  # accepted at run time
    ba = bytearray(payload)
    yield "writable memoryview", ba, memoryview(ba)
    ba = bytearray(payload)
    yield "read-only view of a bytearray", ba, memoryview(ba).toreadonly()
    arr = np.frombuffer(bytearray(payload), np.uint8)
    assert arr.flags.writeable
    yield "writable numpy array", arr, arr.data
    base = np.frombuffer(bytearray(payload), np.uint8)
    ro = base[:]
    ro.flags.writeable = False  # read-only, but a view of a writable array
    yield "read-only view of a writable numpy array", base, ro.data


def test_values_from_a_mutable_buffer_are_copied() -> None:
    """``parse_request`` is public: given a buffer its caller can still change, the
    validated request must not change with it, and the caller's ``bytearray`` must stay
    resizable. Only bytes nobody can change are handed out as a view."""
    records = recs(128, 8192)
    payload = columnar_payload(records)
    for name, buf, p in _mutable_payloads(payload):
        got = parse_request(p)
        assert isinstance(got, PutRequest), name
        assert type(got.records.values) is bytes, name
        values = got.records.value_buffer()
        first = bytes(values[:8192])
        at = payload.index(first)
        buf[at] ^= 0xFF  # the caller edits its buffer after the check
        assert bytes(values[:8192]) == first == records[0][2], name
        assert got.records == records, name
        if isinstance(p, memoryview):
            p.release()  # the test's own export; the request must hold none
        if isinstance(buf, bytearray):
            buf += b"x"  # resizable (BufferError while anything still views it)
    # And still a view where nobody can change the bytes.
    for p in (payload, memoryview(payload), framer_payload(payload)):
        got = parse_request(p)
        assert isinstance(got, PutRequest) and type(got.records.values) is memoryview


def test_bytes_keys_under_bb() -> None:
    """A ``bin`` key next to the large ``values`` is compared with the field name only
    when it is a ``str``: ``b"values" == "values"`` is a ``BytesWarning``, an exception
    under ``python -bb``, and ``parse_request`` never raises. Run in a ``-bb`` child."""
    import subprocess
    import sys

    code = """if True:
        import msgpack
        from pageserver.wire import ProtocolError, parse_request
        payload = msgpack.packb({"op": "put", "id": 1, b"values": b"v" * 100_000, "x": 1})
        got = parse_request(payload)
        assert isinstance(got, ProtocolError), got
        print(got.code.value)
    """
    out = subprocess.run(
        [sys.executable, "-bb", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["bad_request"]
