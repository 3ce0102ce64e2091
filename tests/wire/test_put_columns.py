"""The columnar ``put`` (SPEC section 5): ``keys``/``lsns``/``values``/``value_ends`` columns.

Every rule of the form (column lengths, end offsets, the record rules with messages naming
the column and record), the exclusivity of the two forms, and a property: the columnar
form and the ``records`` form of the same records parse to the same result (the same
checked batch, or the same error code for the same record).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver.layers.batch import CheckedBatch, PutColumns, check_put_columns
from pageserver.wire import (
    KEY_MAX,
    ErrorCode,
    ProtocolError,
    PutRequest,
    encode_request,
    parse_request,
)
from tests.wire._helpers import KEY, TL, T, img, pg, trec
from tests.wire.test_requests import BAD_VALUES

K2 = bytes(17) + b"\x00"  # a key ending in NUL bytes must survive the columns intact


def cols(records: list[tuple[bytes, int, bytes]]) -> dict[str, bytes]:
    return PutColumns.from_records(records).wire_fields()


def raw_cols(keys: bytes, lsns: list[int], values: list[bytes], ends: list[int] | None = None) -> dict[str, bytes]:
    if ends is None:
        ends = list(np.cumsum([len(v) for v in values]))
    return {
        "keys": keys,
        "lsns": b"".join(struct.pack(">Q", x) for x in lsns),
        "values": b"".join(values),
        "value_ends": b"".join(struct.pack(">I", e) for e in ends),
    }


def parse_put(fields: dict[str, Any]) -> Any:
    msg = {"op": "put", "id": "c", "tenant_id": T, "timeline_id": TL, **fields}
    return parse_request(msgpack.packb(msg, use_bin_type=True))


def err(fields: dict[str, Any]) -> ProtocolError:
    r = parse_put(fields)
    assert isinstance(r, ProtocolError), r
    assert r.id == "c"
    return r


RECS = [
    (KEY, 1, img(b"page")),
    (K2, 1, pg(b"wal", 1)),
    (KEY, 2, trec("x", 1, 1)),
    (K2, 3, img(b"")),
    (b"\xff" * 17 + b"\xfe", 2**64 - 2, trec("y", only_if="x")),
]


def test_columnar_put_parses_to_the_same_batch_as_records() -> None:
    r = parse_put(cols(RECS))
    assert isinstance(r, PutRequest), r
    assert r.records == tuple(RECS)
    assert r == PutRequest(T, TL, tuple(RECS), id="c")  # type: ignore[arg-type]
    assert isinstance(r.records, CheckedBatch)
    assert r.records.will_init.tolist() == [True, True, True, True, False]
    assert r.records.key(1) == K2 and r.records[1][0] == K2
    by_records = parse_put({"records": [list(x) for x in RECS]})
    assert by_records == r
    assert by_records.records.will_init.tolist() == r.records.will_init.tolist()


def test_empty_columnar_put() -> None:
    r = parse_put({"keys": b"", "lsns": b"", "values": b"", "value_ends": b""})
    assert isinstance(r, PutRequest) and r.records == () and len(r.records) == 0


def test_encode_request_with_columns_roundtrip() -> None:
    f = encode_request("put", id=3, tenant_id=T, timeline_id=TL, **cols(RECS))
    assert parse_request(f[4:]) == PutRequest(T, TL, tuple(RECS), id=3)  # type: ignore[arg-type]


def test_put_columns_encoder() -> None:
    c = PutColumns.from_records(RECS)
    assert len(c) == len(RECS)
    assert [c[i] for i in range(len(RECS))] == RECS
    assert c[-1] == RECS[-1]
    with pytest.raises(IndexError):
        c[len(RECS)]
    assert PutColumns.from_records(c) is c
    assert len(PutColumns.from_records([])) == 0
    assert check_put_columns(**c.wire_fields()) == tuple(RECS)


# --- structure: missing, mistyped, lengths that disagree ------------------------------


@pytest.mark.parametrize("missing", ["keys", "lsns", "values", "value_ends"])
def test_a_missing_column_is_named(missing: str) -> None:
    fields = cols(RECS)
    del fields[missing]
    e = err(fields)
    assert e.code is ErrorCode.BAD_REQUEST and f"'{missing}'" in e.message, e


@pytest.mark.parametrize("column", ["keys", "lsns", "values", "value_ends"])
@pytest.mark.parametrize("bad", ["text", 5, True, [1, 2], {"a": 1}, 1.5])
def test_a_mistyped_column_is_named(column: str, bad: Any) -> None:
    fields = {**cols(RECS), column: bad}
    e = err(fields)
    assert e.code is ErrorCode.BAD_REQUEST and f"'{column}'" in e.message, e


def test_both_forms_in_one_request_is_bad_request() -> None:
    e = err({**cols(RECS), "records": [list(x) for x in RECS]})
    assert e.code is ErrorCode.BAD_REQUEST and "'records'" in e.message and "keys" in e.message
    # Even one column beside records.
    e = err({"keys": KEY, "records": [list(RECS[0])]})
    assert e.code is ErrorCode.BAD_REQUEST and "'records'" in e.message


def test_neither_form_names_records() -> None:
    e = err({})
    assert e.code is ErrorCode.BAD_REQUEST and "'records'" in e.message


@pytest.mark.parametrize("keys_len", [1, 17, 19, 35, 37])
def test_keys_not_a_multiple_of_18(keys_len: int) -> None:
    e = err(raw_cols(b"\x00" * keys_len, [1], [img(b"")]))
    assert e.code is ErrorCode.BAD_REQUEST and "'keys'" in e.message and str(keys_len) in e.message


@pytest.mark.parametrize("n_lsns", [0, 1, 3])
def test_lsns_not_8_bytes_per_key(n_lsns: int) -> None:
    e = err(raw_cols(KEY + K2, [1] * n_lsns, [img(b""), img(b"")]))
    assert e.code is ErrorCode.BAD_REQUEST and "'lsns'" in e.message


def test_lsns_with_a_partial_u64() -> None:
    fields = raw_cols(KEY, [1], [img(b"")])
    fields["lsns"] += b"\x00"
    e = err(fields)
    assert e.code is ErrorCode.BAD_REQUEST and "'lsns'" in e.message


@pytest.mark.parametrize("ends", [[], [12], [12, 24, 24]])
def test_value_ends_not_4_bytes_per_key(ends: list[int]) -> None:
    e = err(raw_cols(KEY + K2, [1, 1], [img(b""), img(b"")], ends))
    assert e.code is ErrorCode.BAD_REQUEST and "'value_ends" in e.message


def test_value_end_going_back() -> None:
    e = err(raw_cols(KEY + K2 + KEY, [1, 1, 1], [img(b"ab"), img(b""), img(b"")], [14, 12, 38]))
    assert e.code is ErrorCode.BAD_REQUEST and "value_ends[1]" in e.message, e


@pytest.mark.parametrize("last", [23, 25, 2**32 - 1])
def test_last_value_end_must_be_len_values(last: int) -> None:
    e = err(raw_cols(KEY + K2, [1, 1], [img(b""), img(b"")], [12, last]))
    assert e.code is ErrorCode.BAD_REQUEST and "'value_ends'" in e.message and "24" in e.message


def test_values_without_keys() -> None:
    e = err({"keys": b"", "lsns": b"", "values": b"x", "value_ends": b""})
    assert e.code is ErrorCode.BAD_REQUEST and "'values'" in e.message


def test_empty_values_are_allowed_by_the_offsets_but_not_by_the_encoding() -> None:
    e = err(raw_cols(KEY + K2, [1, 1], [img(b""), b""], [12, 12]))
    assert e.code is ErrorCode.BAD_VALUE and "values[1]" in e.message


# --- the record rules, naming the column and record -----------------------------------


def test_key_max_is_bad_request_naming_the_record() -> None:
    e = err(cols([(KEY, 1, img(b"")), (KEY, 2, img(b"")), (KEY_MAX, 3, img(b""))]))
    assert e.code is ErrorCode.BAD_REQUEST and "keys[2]" in e.message and "Key.MAX" in e.message


def test_lsn_max_is_bad_request_naming_the_record() -> None:
    e = err(cols([(KEY, 1, img(b"")), (KEY, 2**64 - 1, img(b""))]))
    assert e.code is ErrorCode.BAD_REQUEST and "lsns[1]" in e.message


@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_value_names_the_record(value: bytes) -> None:
    e = err(cols([(KEY, 1, img(b"")), (KEY, 2, value), (KEY, 3, b"junk")]))
    assert e.code is ErrorCode.BAD_VALUE and "values[1]" in e.message, e
    # The same reason as the records form gives.
    r = parse_put({"records": [[KEY, 1, img(b"")], [KEY, 2, value], [KEY, 3, b"junk"]]})
    assert isinstance(r, ProtocolError)
    assert r.message == e.message.replace("values[1]", "records[1].value")


def test_lsn_out_of_order_names_the_record() -> None:
    e = err(cols([(KEY, 5, img(b"")), (KEY, 5, img(b"")), (KEY, 4, img(b""))]))
    assert e.code is ErrorCode.LSN_OUT_OF_ORDER and "lsns[2]" in e.message


def test_check_order_columnar() -> None:
    """bad_request beats bad_value beats lsn_out_of_order, over the whole batch."""
    bad_key = (KEY_MAX, 9, img(b""))
    bad_val = (KEY, 9, b"junk")
    back = (KEY, 1, img(b""))
    assert err(cols([bad_val, back, bad_key])).code is ErrorCode.BAD_REQUEST
    assert err(cols([(KEY, 9, img(b"")), back, bad_val])).code is ErrorCode.BAD_VALUE
    assert err(cols([(KEY, 9, img(b"")), back])).code is ErrorCode.LSN_OUT_OF_ORDER
    # A structural error beats a bad value.
    fields = cols([bad_val, (KEY, 10, img(b""))])
    fields["lsns"] = fields["lsns"][:-1]
    assert err(fields).code is ErrorCode.BAD_REQUEST


def test_many_values_of_mixed_kinds() -> None:
    """The vectorised header check agrees with the per-value validator at scale."""
    recs = []
    for i in range(3000):
        kind = i % 4
        if kind == 0:
            v = img(bytes([i % 256]) * (i % 300))
        elif kind == 1:
            v = pg(b"r" * (i % 50), i % 2)
        elif kind == 2:
            v = trec("t" * (i % 7), clear=1, will_init=i % 2)
        else:
            v = img(b"")
        recs.append((KEY[:14] + i.to_bytes(4, "big"), i // 3, v))
    r = parse_put(cols(recs))
    assert isinstance(r, PutRequest)
    assert r.records == tuple(recs)
    expected_init = [k in (0, 3) or (k in (1, 2) and i % 2 == 1) for i in range(3000) for k in [i % 4]]
    assert r.records.will_init.tolist() == expected_init


# --- both forms agree -----------------------------------------------------------------

keys = st.one_of(st.binary(min_size=18, max_size=18), st.just(KEY_MAX), st.just(K2))
lsns = st.one_of(st.integers(0, 20), st.just(2**64 - 1), st.just(2**64 - 2))


def _enc_test(a: str, c: bool, w: bool, o: str | None) -> bytes:
    return trec(a, int(c), int(w), o)


values = st.one_of(
    st.binary(max_size=40).map(img),
    st.builds(lambda w, r: pg(r, w), st.integers(0, 2), st.binary(max_size=20)),
    st.builds(_enc_test, st.text(max_size=6), st.booleans(), st.booleans(), st.none() | st.text(max_size=4)),
    st.builds(lambda a, o: trec(a, 1, 1, o), st.text(max_size=6), st.none() | st.text(max_size=4)),
    st.binary(max_size=30),
)


def _verdict(r: Any) -> tuple[str, int | None] | tuple[str, CheckedBatch]:
    if isinstance(r, ProtocolError):
        m = re.search(r"(?:records|keys|lsns|values)\[(\d+)\]", r.message)
        return r.code.value, int(m.group(1)) if m else None
    assert isinstance(r, PutRequest)
    return "ok", r.records


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, lsns, values), max_size=12))
def test_both_forms_give_the_same_result(records: list[tuple[bytes, int, bytes]]) -> None:
    by_records = parse_put({"records": [list(r) for r in records]})
    by_columns = parse_put(cols(records))
    a, b = _verdict(by_records), _verdict(by_columns)
    assert a[0] == b[0], (by_records, by_columns)
    if a[0] == "ok":
        ra, rb = a[1], b[1]
        assert isinstance(ra, CheckedBatch) and isinstance(rb, CheckedBatch)
        assert ra == rb == tuple(records)
        assert ra.will_init.tolist() == rb.will_init.tolist()
        assert ra.lsns.tolist() == rb.lsns.tolist() == [r[1] for r in records]
    else:
        assert a[1] is not None and a[1] == b[1], (by_records, by_columns)


# --- the vectorised value check agrees with the per-value validator -------------------


@st.composite
def mutated_values(draw: st.DrawFn) -> bytes:
    """A valid encoding (any kind, non-ASCII strings too), then maybe damaged: a byte
    changed, cut short, or bytes appended."""
    v = bytearray(draw(values))
    how = draw(st.sampled_from(["keep", "flip", "cut", "grow"]))
    if how == "flip" and v:
        v[draw(st.integers(0, len(v) - 1))] = draw(st.sampled_from([0, 1, 2, 8, 0x7F, 0x80, 0xFF]))
    elif how == "cut" and v:
        del v[draw(st.integers(0, len(v) - 1)) :]
    elif how == "grow":
        v += draw(st.binary(min_size=1, max_size=3))
    return bytes(v)


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_values(), min_size=1, max_size=16))
def test_vectorised_check_agrees_with_the_validator(vals: list[bytes]) -> None:
    from pageserver.errors import BadValue
    from pageserver.layers.batch import check_put_batch
    from pageserver.layers.value import value_will_init
    from pageserver.layers.value_check import validate_value

    verdicts = [validate_value(v) for v in vals]
    recs = [(KEY, 1, v) for v in vals]
    first_bad = next((i for i, why in enumerate(verdicts) if why is not None), None)
    checks: tuple[tuple[Callable[[], CheckedBatch], str], ...] = (
        (lambda: check_put_batch(recs), "records[{}].value"),
        (lambda: check_put_columns(**cols(recs)), "values[{}]"),
    )
    for check, name in checks:
        if first_bad is None:
            b = check()
            assert b.will_init.tolist() == [value_will_init(v) for v in vals]
        else:
            with pytest.raises(BadValue) as ei:
                check()
            assert str(ei.value) == f"{name.format(first_bad)}: {verdicts[first_bad]}"
