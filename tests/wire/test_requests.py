"""Example-based tests of request parsing and the put batch check (SPEC section 5)."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from pageserver.wire import (
    KEY_MAX,
    OPS,
    CompactRequest,
    ErrorCode,
    FlushRequest,
    GcRequest,
    GetHistoryRequest,
    GetRequest,
    HelloRequest,
    ProtocolError,
    PutRequest,
    Request,
    StatusRequest,
    TenantAttachRequest,
    TenantConfigRequest,
    TenantCreateRequest,
    TenantDetachRequest,
    TimelineCreateRequest,
    check_put_batch,
    encode_error,
    encode_reply,
    parse_request,
)
from tests.wire._helpers import KEY, TL, T, img, payload, pg, trec


def parse(obj: Any) -> Any:
    return parse_request(payload(obj))


def err(obj: Any) -> ProtocolError:
    r = parse(obj)
    assert isinstance(r, ProtocolError), r
    return r


# A valid request of every op, and the request object it must parse to.
VALID: dict[str, tuple[dict[str, Any], Any]] = {
    "hello": ({"op": "hello", "token": "s3cret"}, HelloRequest("s3cret")),
    "tenant_create": (
        {"op": "tenant_create", "tenant_id": T, "config": {"compaction_threshold": 4}},
        TenantCreateRequest(T, {"compaction_threshold": 4}),
    ),
    "tenant_config": (
        {"op": "tenant_config", "tenant_id": T, "config": {}},
        TenantConfigRequest(T, {}),
    ),
    "timeline_create": (
        {"op": "timeline_create", "tenant_id": T, "timeline_id": TL, "start_lsn": 100},
        TimelineCreateRequest(T, TL, 100),
    ),
    "put": (
        {
            "op": "put",
            "tenant_id": T,
            "timeline_id": TL,
            "records": [[KEY, 5, img(b"page")], [KEY, 5, trec("x", 1, 1)]],
        },
        # plain tuple as the expected value: a CheckedBatch compares equal to it
        PutRequest(T, TL, ((KEY, 5, img(b"page")), (KEY, 5, trec("x", 1, 1)))),  # type: ignore[arg-type]
    ),
    "get": (
        {"op": "get", "tenant_id": T, "timeline_id": TL, "key": KEY, "lsn": 7},
        GetRequest(T, TL, KEY, 7),
    ),
    "get_history": (
        {"op": "get_history", "tenant_id": T, "timeline_id": TL, "key": KEY, "lsn": 2**64 - 1},
        GetHistoryRequest(T, TL, KEY, 2**64 - 1),
    ),
    "flush": ({"op": "flush", "tenant_id": T, "timeline_id": TL}, FlushRequest(T, TL)),
    "compact": ({"op": "compact", "tenant_id": T, "timeline_id": TL}, CompactRequest(T, TL)),
    "gc": ({"op": "gc", "tenant_id": T, "timeline_id": TL}, GcRequest(T, TL)),
    "status": ({"op": "status", "tenant_id": T}, StatusRequest(T)),
    "tenant_attach": (
        {"op": "tenant_attach", "tenant_id": T, "config": {"compaction_threshold": 4}},
        TenantAttachRequest(T, {"compaction_threshold": 4}),
    ),
    "tenant_detach": ({"op": "tenant_detach", "tenant_id": T}, TenantDetachRequest(T)),
}

# Fields whose absence is an error, per op.
REQUIRED: dict[str, list[str]] = {
    "hello": [],
    "tenant_create": ["tenant_id"],
    "tenant_config": ["tenant_id", "config"],
    "timeline_create": ["tenant_id", "timeline_id"],
    "put": ["tenant_id", "timeline_id", "records"],
    "get": ["tenant_id", "timeline_id", "key", "lsn"],
    "get_history": ["tenant_id", "timeline_id", "key", "lsn"],
    "flush": ["tenant_id", "timeline_id"],
    "compact": ["tenant_id", "timeline_id"],
    "gc": ["tenant_id", "timeline_id"],
    "status": [],
    "tenant_attach": ["tenant_id"],
    "tenant_detach": ["tenant_id"],
}

# Wrong-typed values per field name (every one must be bad_request naming the field).
MISTYPED: dict[str, list[Any]] = {
    "tenant_id": [5, True, 1.5, KEY[:16], [T], {"a": 1}],
    "timeline_id": [5, False, b"x" * 32, [TL]],
    "key": [KEY.hex(), 5, True, KEY[:17], KEY + b"\x00", b"", [1] * 18],
    "lsn": [-1, True, False, "5", 1.0, b"\x05", [5]],
    "start_lsn": [-1, True, "0", 0.0],
    "config": ["x", 5, [1, 2], {1: 2}, {b"k": 1}, True],
    "records": ["x", 5, {"a": 1}, True, b"rec"],
    "token": [5, b"s3cret", ["s3cret"], True],
}


def test_ops_table_matches_spec() -> None:
    assert set(VALID) == set(OPS) == set(REQUIRED)
    assert {c.value for c in ErrorCode} == {
        "bad_frame",
        "frame_too_large",
        "unauthorized",
        "unknown_op",
        "bad_request",
        "invalid_id",
        "bad_value",
        "tenant_not_found",
        "timeline_not_found",
        "already_exists",
        "lsn_out_of_order",
        "lsn_too_old",
        "redo_unsupported",
        "redo_failed",
        "no_remote_storage",
        "stale_generation",
        "remote_unavailable",
        "shutting_down",
        "internal",
    }


@pytest.mark.parametrize("op", sorted(VALID))
def test_valid_parse(op: str) -> None:
    req, expected = VALID[op]
    got = parse(req)
    assert got == expected
    assert got.op == op
    assert got.id is None
    got2 = parse({**req, "id": 42})
    assert got2.id == 42


def test_optional_fields_default() -> None:
    assert parse({"op": "hello"}) == HelloRequest(None)
    assert parse({"op": "status"}) == StatusRequest(None)
    assert parse({"op": "status", "tenant_id": None}) == StatusRequest(None)
    assert parse({"op": "tenant_create", "tenant_id": T}) == TenantCreateRequest(T, None)
    assert parse(
        {"op": "timeline_create", "tenant_id": T, "timeline_id": TL}
    ) == TimelineCreateRequest(T, TL, 0)
    r = parse({"op": "put", "tenant_id": T, "timeline_id": TL, "records": []})
    assert r == PutRequest(T, TL, ())  # type: ignore[arg-type]  # plain () equals the parsed empty CheckedBatch


def test_unknown_fields_ignored() -> None:
    assert parse({"op": "flush", "tenant_id": T, "timeline_id": TL, "x": [1]}) == FlushRequest(
        T, TL
    )


@pytest.mark.parametrize(
    ("op", "field"), [(op, f) for op, fields in sorted(REQUIRED.items()) for f in fields]
)
@pytest.mark.parametrize("how", ["absent", "nil"])
def test_missing_field(op: str, field: str, how: str) -> None:
    req = dict(VALID[op][0], id="req-1")
    if how == "absent":
        del req[field]
    else:
        req[field] = None
    e = err(req)
    assert e.code is ErrorCode.BAD_REQUEST
    assert f"'{field}'" in e.message
    assert e.id == "req-1"


def _mistyped_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for op, (req, _) in sorted(VALID.items()):
        for f in req:
            for bad in MISTYPED.get(f, []):
                cases.append((op, f, bad))
    return cases


@pytest.mark.parametrize(("op", "field", "bad"), _mistyped_cases())
def test_mistyped_field(op: str, field: str, bad: Any) -> None:
    req = dict(VALID[op][0], id=9)
    req[field] = bad
    e = err(req)
    assert e.code is ErrorCode.BAD_REQUEST, e
    assert field in e.message
    assert e.id == 9


@pytest.mark.parametrize(
    "bad_id",
    [
        "..",
        "../" + "0" * 29,
        "0" * 31 + "/",
        "0123456789abcdef0123456789abcdeg",
        "0" * 31,
        "0" * 33,
        "",
        " " + "0" * 31,
        "0" * 32 + "\n",
        "0x" + "0" * 30,
        "٠" * 32,  # Arabic-Indic digits: not ASCII hex
        "ａ" * 32,  # fullwidth a
    ],
)
@pytest.mark.parametrize("field", ["tenant_id", "timeline_id"])
def test_invalid_id(bad_id: str, field: str) -> None:
    req = {"op": "flush", "tenant_id": T, "timeline_id": TL, "id": 1, field: bad_id}
    e = err(req)
    assert e.code is ErrorCode.INVALID_ID
    assert field in e.message
    assert e.id == 1


def test_invalid_id_in_status_and_message_bounded() -> None:
    e = err({"op": "status", "tenant_id": "/" * 100_000})
    assert e.code is ErrorCode.INVALID_ID
    assert len(e.message) < 200


def test_uppercase_ids_normalised() -> None:
    r = parse({"op": "flush", "tenant_id": T.upper(), "timeline_id": "AbCdEf" + TL[6:]})
    assert r == FlushRequest(T, "abcdef" + TL[6:])


def test_bool_is_not_an_int() -> None:
    for field, op in [("lsn", "get"), ("start_lsn", "timeline_create")]:
        req = dict(VALID[op][0])
        req[field] = True
        e = err(req)
        assert e.code is ErrorCode.BAD_REQUEST and field in e.message
    e = err({"op": "put", "tenant_id": T, "timeline_id": TL, "records": [[KEY, True, img(b"")]]})
    assert e.code is ErrorCode.BAD_REQUEST and "lsn" in e.message


# --- envelope -------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [[1, 2], "op", 5, None, True, b"bin", 1.5])
def test_not_a_map(obj: Any) -> None:
    e = err(obj)
    assert e.code is ErrorCode.BAD_FRAME and e.id is None


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x81\xa2op",  # truncated map
        payload({"op": "status"}) + b"\x00",  # trailing data
        b"\xa3\xff\xfe\xfd",  # invalid UTF-8 str
        b"\x91" * 10_000 + b"\xc0",  # absurd nesting
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion elements
        b"\xdb\xff\xff\xff\xff",  # str claiming 4 GiB
        b"\x81" * 100 + b"\xc0" * 101,  # more maps than any request has
    ],
)
def test_not_msgpack(raw: bytes) -> None:
    e = parse_request(raw)
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.BAD_FRAME


def test_too_many_maps_is_named_as_such() -> None:
    """Valid msgpack, but more maps than a request holds: refused as a frame (decoding it is
    what the cap prevents), with a message that says why rather than "not msgpack"."""
    ok = parse_request(payload({"op": "hello", "id": 2, "extra": [{}] * 63}))
    assert not (isinstance(ok, ProtocolError) and ok.code is ErrorCode.BAD_FRAME)
    e = parse_request(payload({"op": "hello", "id": 2, "extra": [{}] * 64}))
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.BAD_FRAME
    assert "more than 64 msgpack maps" in e.message


def test_garbage() -> None:
    import random

    rng = random.Random(1)
    for _ in range(500):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        r = parse_request(raw)
        assert isinstance(r, ProtocolError | Request)


def test_op_missing_or_mistyped_or_unknown() -> None:
    e = err({"id": 3})
    assert e.code is ErrorCode.BAD_REQUEST and "'op'" in e.message and e.id == 3
    e = err({"op": 7, "id": 3})
    assert e.code is ErrorCode.BAD_REQUEST and "'op'" in e.message
    e = err({"op": b"get", "id": 3})
    assert e.code is ErrorCode.BAD_REQUEST and "'op'" in e.message
    e = err({"op": "drop_database", "id": 3})
    assert e.code is ErrorCode.UNKNOWN_OP and e.id == 3
    e = err({"op": "x" * 1_000_000})
    assert e.code is ErrorCode.UNKNOWN_OP and len(e.message) < 200


@pytest.mark.parametrize(
    "rid",
    [
        None,
        True,
        False,
        0,
        -1,
        2**64 - 1,
        -(2**63),
        1.5,
        float("inf"),
        "",
        "req-1",
        b"",
        b"\x00\xff",
        msgpack.ExtType(5, b"xyz"),
        msgpack.Timestamp(1, 2),
    ],
)
def test_id_echo_every_scalar(rid: Any) -> None:
    r = parse({"op": "status", "id": rid})
    assert isinstance(r, StatusRequest)
    assert r.id == rid and type(r.id) is type(rid)
    # ... and through the reply encoders
    for frame in (encode_reply(r.id, {}), encode_error(r.id, ErrorCode.INTERNAL, "m")):
        m = msgpack.unpackb(frame[4:], raw=False)
        assert m["id"] == rid and type(m["id"]) is type(rid)
    # ... and in errors
    e = err({"op": "nope", "id": rid})
    assert e.id == rid


@pytest.mark.parametrize("rid", [[1], {"a": 1}, []])
def test_non_scalar_id(rid: Any) -> None:
    e = err({"op": "status", "id": rid})
    assert e.code is ErrorCode.BAD_REQUEST and "'id'" in e.message and e.id is None


# --- put batch ------------------------------------------------------------------------


def put(records: Any) -> Any:
    return parse({"op": "put", "id": "p", "tenant_id": T, "timeline_id": TL, "records": records})


def test_put_valid_values_of_every_kind() -> None:
    recs = [
        (KEY, 1, img(b"")),
        (KEY, 1, img(b"\x00" * 8192)),
        (KEY, 2, pg(b"walrec", 0)),
        (KEY, 2, pg(b"", 1)),
        (KEY, 3, trec("a")),
        (KEY, 3, trec("héllo", clear=1)),
        (KEY, 4, trec("", clear=1, will_init=1)),
        (KEY, 4, trec("b", only_if="a")),
        (b"\x00" * 18, 5, trec("b", only_if="")),
        (b"\xff" * 17 + b"\xfe", 2**64 - 2, img(b"x")),
    ]
    assert check_put_batch(recs) is None
    r = put([list(x) for x in recs])
    assert isinstance(r, PutRequest) and r.records == tuple(recs)


@pytest.mark.parametrize(
    ("records", "what"),
    [
        ([[KEY[:17], 1, img(b"")]], "key"),
        ([[KEY + b"\x00", 1, img(b"")]], "key"),
        ([[KEY.hex(), 1, img(b"")]], "key"),
        ([[KEY_MAX, 1, img(b"")]], "Key.MAX"),
        ([[KEY, -1, img(b"")]], "lsn"),
        ([[KEY, 1.0, img(b"")]], "lsn"),
        ([[KEY, 1, "value"]], "value"),
        ([[KEY, 1]], "records[0]"),
        ([[KEY, 1, img(b""), 5]], "records[0]"),
        ([KEY], "records[0]"),
        ([{"key": KEY}], "records[0]"),
        ([[KEY, 1, img(b"")], [KEY, 2, img(b"")], 7], "records[2]"),
    ],
)
def test_put_bad_request(records: Any, what: str) -> None:
    e = put(records)
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.BAD_REQUEST, e
    assert what in e.message and "records" in e.message
    assert e.id == "p"


BAD_VALUES = [
    b"",
    b"\x00\x00\x00",
    struct.pack(">I", 2) + b"\x00" * 20,  # unknown value tag
    struct.pack(">I", 7),
    struct.pack(">IQ", 0, 5) + b"abcd",  # truncated image
    struct.pack(">IQ", 0, 3) + b"abcd",  # trailing byte
    img(b"ok") + b"\x00",
    struct.pack(">II", 1, 3) + b"\x00" * 20,  # unsupported wal record tag
    struct.pack(">II", 1, 0),  # truncated postgres
    struct.pack(">IIBQ", 1, 0, 2, 0),  # will_init not a bool
    pg(b"rec")[:-1],
    pg(b"rec") + b"\x00",
    trec("x", clear=0, will_init=1),  # will_init without clear
    trec("x", clear=2),
    trec("x", will_init=3, clear=1),
    trec("x")[:-1],  # no option byte
    trec("x")[:-1] + b"\x02",  # bad option tag
    trec("x") + b"\x00",
    trec("x", only_if="abc")[:-1],
    trec("x", only_if="abc") + b"!",
    struct.pack(">IIQ", 1, 8, 2) + b"\xff\xfe" + b"\x00\x00\x00",  # invalid UTF-8 append
    struct.pack(">IIQ", 1, 8, 0) + b"\x00\x00\x01" + struct.pack(">Q", 1) + b"\x80",
    struct.pack(">IIQ", 1, 8, 2**64 - 1) + b"\x00" * 8,  # absurd length
    struct.pack(">IQ", 0, 2**64 - 1),
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_put_bad_value(value: bytes) -> None:
    e = put([[KEY, 1, img(b"")], [KEY, 2, value]])
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.BAD_VALUE, e
    assert "records[1]" in e.message
    assert check_put_batch([(KEY, 1, value)]) == ProtocolError(
        ErrorCode.BAD_VALUE, e.message.replace("records[1]", "records[0]")
    )


def test_put_lsn_out_of_order() -> None:
    e = put([[KEY, 5, img(b"")], [KEY, 5, img(b"")], [KEY, 4, img(b"")]])
    assert isinstance(e, ProtocolError) and e.code is ErrorCode.LSN_OUT_OF_ORDER
    assert "records[2]" in e.message


def test_put_check_order() -> None:
    """bad_request beats bad_value beats lsn_out_of_order, over the whole batch."""
    bad_key = [KEY_MAX, 9, img(b"")]
    bad_val = [KEY, 9, b"junk"]
    back = [KEY, 1, img(b"")]
    assert put([bad_val, back, bad_key]).code is ErrorCode.BAD_REQUEST
    assert put([[KEY, 9, img(b"")], back, bad_val]).code is ErrorCode.BAD_VALUE
    assert put([[KEY, 9, img(b"")], back]).code is ErrorCode.LSN_OUT_OF_ORDER


def test_check_put_batch_direct() -> None:
    assert check_put_batch([]) is None
    assert check_put_batch([(KEY, 1, img(b"")), (KEY, 1, img(b"a"))]) is None
    assert check_put_batch([[KEY, 1, img(b"")], (KEY, 2, img(b"a"))]) is None  # type: ignore[list-item]
    e = check_put_batch([[KEY, 2, img(b"")], [KEY, 1, img(b"a")]])  # type: ignore[list-item]
    assert e is not None and e.code is ErrorCode.LSN_OUT_OF_ORDER
    e = check_put_batch([(KEY, 2**64, img(b""))])
    assert e is not None and e.code is ErrorCode.BAD_REQUEST and "lsn" in e.message
    e = check_put_batch([(bytearray(KEY), 1, img(b""))])  # type: ignore[list-item]
    assert e is not None and e.code is ErrorCode.BAD_REQUEST


def test_timeline_create_start_lsn_limit_matches_the_manager() -> None:
    """The wire and the tenant manager share one start_lsn rule (layers.batch): 2^64-1 is
    refused at parse time (a layer would end at 2^64), 2^64-2 is accepted."""
    tid = "ab" * 16
    bad = parse_request(msgpack.packb({"op": "timeline_create", "tenant_id": tid, "timeline_id": tid, "start_lsn": 2**64 - 1}))
    assert isinstance(bad, ProtocolError) and bad.code == "bad_request" and "start_lsn" in bad.message
    ok = parse_request(msgpack.packb({"op": "timeline_create", "tenant_id": tid, "timeline_id": tid, "start_lsn": 2**64 - 2}))
    assert isinstance(ok, TimelineCreateRequest), ok  # narrowing: only it has start_lsn
    assert not isinstance(ok, ProtocolError) and ok.start_lsn == 2**64 - 2
