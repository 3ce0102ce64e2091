"""Property and fuzz tests of the sans-IO protocol: hostile bytes in, only protocol events out."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver.layers import value as value_mod
from pageserver.layers.value_check import validate_value
from pageserver.wire import (
    CLOSED,
    KEY_MAX,
    NEED_DATA,
    OPS,
    CompactRequest,
    ErrorCode,
    ErrorEvent,
    FlushRequest,
    Frame,
    FrameDecoder,
    GcRequest,
    GetHistoryRequest,
    GetRequest,
    HelloRequest,
    ProtocolError,
    PutRequest,
    Request,
    RequestEvent,
    ServerConnection,
    StatusRequest,
    TenantAttachRequest,
    TenantConfigRequest,
    TenantCreateRequest,
    TenantDetachRequest,
    TimelineCreateRequest,
    check_put_batch,
    encode_frame,
    parse_request,
    token_checker,
)

# Registered here for now; the lead will move profiles to conftest. Not loaded globally, so
# other modules keep their own settings: tests here opt in with @FUZZ.
settings.register_profile(
    "protocol-fuzz",
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(settings.get_profile("protocol-fuzz"))

# --- strategies -----------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
hashable_keys = st.one_of(
    st.none(), st.booleans(), st.integers(-100, 100), st.text(max_size=10), st.binary(max_size=5)
)
msgpack_objects = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(hashable_keys, inner, max_size=5)
    ),
    max_leaves=20,
)

hex_ids = st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=32)
keys = st.binary(min_size=18, max_size=18).filter(lambda k: k != KEY_MAX)
# Record LSNs of a valid put stay below 2^64-1 (a layer ends at lsn + 1).
lsns = st.integers(min_value=0, max_value=2**64 - 2)
utf8 = st.text(max_size=10)


def enc_image(data: bytes) -> bytes:
    return struct.pack(">IQ", 0, len(data)) + data


def enc_pg(will_init: bool, rec: bytes) -> bytes:
    return struct.pack(">IIBQ", 1, 0, will_init, len(rec)) + rec


def enc_test(append: str, clear: bool, will_init: bool, only_if: str | None) -> bytes:
    a = append.encode()
    out = struct.pack(">IIQ", 1, 8, len(a)) + a + bytes((clear, will_init))
    if only_if is None:
        return out + b"\x00"
    o = only_if.encode()
    return out + b"\x01" + struct.pack(">Q", len(o)) + o


valid_values = st.one_of(
    st.binary(max_size=40).map(enc_image),
    st.builds(enc_pg, st.booleans(), st.binary(max_size=20)),
    st.builds(
        lambda a, c, w, o: enc_test(a, c or w, w, o),
        utf8,
        st.booleans(),
        st.booleans(),
        st.none() | utf8,
    ),
)
any_values = st.one_of(valid_values, st.binary(max_size=30))


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[dict[str, Any], Request]:
    """A request map (as a client would send it) and the Request it must parse to."""
    op = draw(st.sampled_from(sorted(OPS)))
    rid = draw(scalars)
    t, tl = draw(hex_ids), draw(hex_ids)
    base: dict[str, Any] = {"op": op, "id": rid}
    if draw(st.booleans()):
        base["extra"] = draw(msgpack_objects)  # unknown fields are ignored
    exp: Request
    if op == "hello":
        token = draw(st.none() | st.text(max_size=10))
        base["token"] = token
        exp = HelloRequest(token, id=rid)
    elif op == "status":
        tid = draw(st.none() | hex_ids)
        base["tenant_id"] = tid
        exp = StatusRequest(None if tid is None else tid.lower(), id=rid)
    elif op in ("tenant_create", "tenant_config", "tenant_attach"):
        config = draw(st.dictionaries(st.text(max_size=10), scalars, max_size=4))
        base |= {"tenant_id": t, "config": config}
        if op == "tenant_create":
            exp = TenantCreateRequest(t.lower(), config, id=rid)
        elif op == "tenant_attach":
            exp = TenantAttachRequest(t.lower(), config, id=rid)
        else:
            exp = TenantConfigRequest(t.lower(), config, id=rid)
    elif op == "tenant_detach":
        base["tenant_id"] = t
        exp = TenantDetachRequest(t.lower(), id=rid)
    else:
        base |= {"tenant_id": t, "timeline_id": tl}
        ids = (t.lower(), tl.lower())
        if op == "timeline_create":
            start = draw(lsns)
            base["start_lsn"] = start
            exp = TimelineCreateRequest(*ids, start, id=rid)
        elif op in ("get", "get_history"):
            key, lsn = draw(st.binary(min_size=18, max_size=18)), draw(lsns)
            base |= {"key": key, "lsn": lsn}
            cls = GetRequest if op == "get" else GetHistoryRequest
            exp = cls(*ids, key, lsn, id=rid)
        elif op == "put":
            n = draw(st.integers(0, 8))
            ls = sorted(draw(st.lists(lsns, min_size=n, max_size=n)))
            recs = [(draw(keys), lsn, draw(valid_values)) for lsn in ls]
            base["records"] = [list(r) for r in recs]
            # plain tuple as the expected value: a CheckedBatch compares equal to it
            exp = PutRequest(*ids, tuple(recs), id=rid)  # type: ignore[arg-type]
        elif op == "flush":
            exp = FlushRequest(*ids, id=rid)
        elif op == "gc":
            exp = GcRequest(*ids, id=rid)
        else:
            exp = CompactRequest(*ids, id=rid)
    return base, exp


def frame_of(obj: Any) -> bytes:
    return encode_frame(obj)


# Chunks of a hostile stream: raw junk, plausible frames, valid requests, lying headers.
stream_chunks = st.one_of(
    st.binary(max_size=40),
    msgpack_objects.map(frame_of),
    valid_requests().map(lambda p: frame_of(p[0])),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=40)).map(
        lambda p: p[0].to_bytes(4, "big") + p[1]
    ),
    st.just(b"\x00\x00\x00\x00"),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c]


def drain(conn: ServerConnection, log: list[Any]) -> Any:
    while True:
        ev = conn.next_event()
        assert ev is NEED_DATA or ev is CLOSED or isinstance(ev, RequestEvent | ErrorEvent)
        if isinstance(ev, ErrorEvent):
            assert isinstance(ev.code, ErrorCode)
            assert ev.close_after == (ev.code is ErrorCode.FRAME_TOO_LARGE or conn.should_close)
            ev.encode()  # every error must be encodable (id echo included)
        log.append(ev)
        if ev is NEED_DATA or ev is CLOSED:
            return ev


def run_stream(pieces: list[bytes], max_frame: int, auth: bool, eof: bool = True) -> list[Any]:
    conn = ServerConnection(
        max_frame, auth_required=auth, token_check=token_checker("tok") if auth else None
    )
    log: list[Any] = []
    for p in pieces:
        if not p:
            continue  # b"" would mean end of stream
        conn.receive_data(p)
        if drain(conn, log) is CLOSED:
            break  # the server closes here
    else:
        if eof:
            conn.receive_data(b"")
            assert drain(conn, log) is CLOSED
    # A closed connection stays closed and inert.
    assert conn.next_event() is CLOSED
    return log


# --- properties -----------------------------------------------------------------------


@FUZZ
@given(
    chunks=st.lists(stream_chunks, max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    max_frame=st.sampled_from([1, 8, 64, 4096, 16 * 1024 * 1024]),
    auth=st.booleans(),
)
def test_hostile_streams_only_produce_protocol_events(
    chunks: list[bytes], cuts: list[int], max_frame: int, auth: bool
) -> None:
    data = b"".join(chunks)
    log = run_stream(split(data, cuts), max_frame, auth)
    # Splitting never changes what comes out.
    assert log_summary(run_stream([data], max_frame, auth)) == log_summary(log)


def log_summary(log: list[Any]) -> list[Any]:
    """Events without the NEED_DATA markers (their count depends on the split)."""
    return [e for e in log if e is not NEED_DATA]


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=10), st.booleans())
def test_random_bytes_never_raise(data: bytes, cuts: list[int], auth: bool) -> None:
    run_stream(split(data, cuts), 256, auth)


@FUZZ
@given(
    reqs=st.lists(valid_requests(), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_valid_frames_split_anywhere_decode_identically(
    reqs: list[tuple[dict[str, Any], Request]], cuts: list[int]
) -> None:
    data = b"".join(frame_of(m) for m, _ in reqs)
    whole = log_summary(run_stream([data], 1 << 20, auth=False))
    pieces = log_summary(run_stream(split(data, cuts), 1 << 20, auth=False))
    assert whole == pieces
    assert whole == [RequestEvent(exp) for _, exp in reqs] + [CLOSED]


@FUZZ
@given(valid_requests())
def test_valid_request_roundtrip(p: tuple[dict[str, Any], Request]) -> None:
    m, expected = p
    got = parse_request(frame_of(m)[4:])
    assert got == expected
    assert got.id == m["id"] or got.id != got.id  # (NaN is never drawn; belt and braces)


@FUZZ
@given(msgpack_objects)
def test_arbitrary_msgpack_never_raises(obj: Any) -> None:
    r = parse_request(frame_of(obj)[4:])
    assert isinstance(r, ProtocolError | Request)
    if not isinstance(obj, dict):
        assert isinstance(r, ProtocolError) and r.code is ErrorCode.BAD_FRAME


@FUZZ
@given(
    op=st.sampled_from(sorted(OPS)),
    fields=st.dictionaries(
        st.sampled_from(
            ["id", "tenant_id", "timeline_id", "key", "lsn", "start_lsn", "records", "config"]
            + ["token"]
        ),
        msgpack_objects,
    ),
)
def test_known_op_with_random_fields_never_raises(op: str, fields: dict[str, Any]) -> None:
    r = parse_request(frame_of({"op": op, **fields})[4:])
    assert isinstance(r, ProtocolError | Request)
    if isinstance(r, ProtocolError):
        assert r.code in {
            ErrorCode.BAD_REQUEST,
            ErrorCode.INVALID_ID,
            ErrorCode.BAD_VALUE,
            ErrorCode.LSN_OUT_OF_ORDER,
        }


@FUZZ
@given(
    p=valid_requests(),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1),
)
def test_mutated_frames_never_raise(
    p: tuple[dict[str, Any], Request], flips: list[tuple[int, int]]
) -> None:
    f = bytearray(frame_of(p[0]))
    for pos, byte in flips:
        f[4 + pos % (len(f) - 4)] = byte
    r = parse_request(bytes(f[4:]))
    assert isinstance(r, ProtocolError | Request)
    run_stream([bytes(f)], 1 << 16, auth=False)


@FUZZ
@given(
    chunks=st.lists(stream_chunks, max_size=10),
    sizes=st.lists(st.integers(1, 100), min_size=1),
    max_frame=st.sampled_from([1, 16, 100]),
)
def test_buffer_bounded_when_reading_by_room(
    chunks: list[bytes], sizes: list[int], max_frame: int
) -> None:
    """A server that reads at most ``room`` bytes after NEED_DATA never buffers more than
    max_frame_bytes + 4."""
    data = b"".join(chunks)
    conn = ServerConnection(max_frame)
    pos, i = 0, 0
    while True:
        ev = conn.next_event()
        if ev is CLOSED:
            break
        if ev is NEED_DATA:
            if pos >= len(data):
                conn.receive_data(b"")
                continue
            assert conn.room >= 1
            n = min(sizes[i % len(sizes)], conn.room)
            i += 1
            conn.receive_data(data[pos : pos + n])
            pos += n
        assert conn.buffered <= max_frame + 4


@FUZZ
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5), st.integers(1, 1000))
def test_oversized_frames_are_never_buffered(lengths: list[int], max_frame: int) -> None:
    d = FrameDecoder(max_frame)
    for n in lengths:
        d.feed(n.to_bytes(4, "big"))
        ev = d.next_event()
        if n == 0:
            assert isinstance(ev, ProtocolError) and ev.code is ErrorCode.BAD_FRAME
        elif n > max_frame:
            assert isinstance(ev, ProtocolError) and ev.code is ErrorCode.FRAME_TOO_LARGE
            assert d.buffered == 0 and d.next_event() is CLOSED
            return
        else:
            assert ev is NEED_DATA
            d.feed(b"\x00" * n)
            assert isinstance(d.next_event(), Frame)


# --- put batch: the fast (column-wise) path agrees with a plain reference -------------


def reference_check(records: list[Any]) -> tuple[ErrorCode, int] | None:
    """SPEC section 5's put rules, written the obvious way: (code, first record index)."""
    for i, r in enumerate(records):
        if not isinstance(r, tuple | list) or len(r) != 3:
            return ErrorCode.BAD_REQUEST, i
        k, lsn, v = r
        if type(k) is not bytes or len(k) != 18 or k == KEY_MAX:
            return ErrorCode.BAD_REQUEST, i
        if type(lsn) is not int or not 0 <= lsn < 2**64 - 1 or type(v) is not bytes:
            return ErrorCode.BAD_REQUEST, i
    for i, (_, _, v) in enumerate(records):
        if validate_value(v) is not None:
            return ErrorCode.BAD_VALUE, i
    for i in range(1, len(records)):
        if records[i][1] < records[i - 1][1]:
            return ErrorCode.LSN_OUT_OF_ORDER, i
    return None


maybe_bad_records = st.lists(
    st.one_of(
        st.tuples(keys, st.integers(0, 20), valid_values),
        st.tuples(keys, st.integers(0, 20), valid_values).map(list),  # in-process callers
        st.tuples(st.binary(min_size=17, max_size=19), st.integers(0, 20), any_values),
        st.tuples(st.just(KEY_MAX), st.integers(0, 20), valid_values),
        st.tuples(keys, st.integers(-2, 20) | st.booleans(), any_values),
        st.tuples(keys, st.integers(0, 20), any_values),
        st.lists(st.binary(max_size=18), max_size=4).map(tuple),
    ),
    max_size=10,
)


@FUZZ
@given(maybe_bad_records)
def test_check_put_batch_matches_reference(records: list[Any]) -> None:
    expected = reference_check(records)
    got = check_put_batch(records)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.code, f"records[{expected[1]}]" in got.message) == (expected[0], True), got
    # Through the wire too.
    r = parse_request(
        frame_of({"op": "put", "tenant_id": "a" * 32, "timeline_id": "b" * 32, "records": records})[
            4:
        ]
    )
    assert (r.code if isinstance(r, ProtocolError) else None) == (
        None if expected is None else expected[0]
    )


# --- the wire's value validator agrees with the layers codec ------------------------------


def _codec_verdict(b: bytes) -> bool:
    try:
        v = value_mod.decode_value(b)
    except value_mod.BadValue:
        return False
    return not (isinstance(v, value_mod.TestRecord) and v.will_init and not v.clear)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=40),
        any_values,
        st.tuples(valid_values, st.integers(0, 100), st.integers(0, 255)).map(
            lambda p: (
                p[0][: p[1] % (len(p[0]) + 1)] + bytes([p[2]]) + p[0][p[1] % (len(p[0]) + 1) + 1 :]
            )
        ),
        st.tuples(valid_values, st.integers(0, 100)).map(lambda p: p[0][: p[1]]),
    )
)
def test_value_validator_agrees_with_codec(b: bytes) -> None:
    assert (validate_value(b) is None) == _codec_verdict(b)


def test_value_validator_on_valid_encodings() -> None:
    assert validate_value(enc_image(b"x" * 8192)) is None
    assert validate_value(enc_test("a", True, True, "b")) is None
    assert validate_value(enc_test("a", False, True, None)) is not None
    assert validate_value(enc_pg(True, b"")) is None
    # big-length headers do not allocate or overflow
    assert validate_value(struct.pack(">IQ", 0, 2**64 - 1)) == "value truncated"
    assert validate_value(struct.pack(">IIQ", 1, 8, 2**64 - 1)) == "value truncated"
    assert msgpack.version >= (1, 0, 0)
