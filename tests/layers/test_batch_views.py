"""The columnar put check takes the ``values`` column as a read-only byte view too (what a
zero-copy decoder hands over: a view of the frame the column arrived in), with the same
result as for ``bytes``; other columns, and writable or non-byte views, stay refused."""

from __future__ import annotations

import numpy as np
import pytest

from pageserver.errors import BadRequest, BadValue
from pageserver.layers.batch import PutColumns, check_put_columns
from pageserver.layers.value import Image, encode_value

KEY = bytes.fromhex("000000067F000040000000400100000000AB")


def _columns() -> PutColumns:
    recs = [(KEY, 10 + i, encode_value(Image(bytes([i]) * (100 + i)))) for i in range(5)]
    return PutColumns.from_records(recs)


def test_a_read_only_view_of_values_checks_like_bytes() -> None:
    c = _columns()
    frame = bytearray(b"header" + c.values + b"trailer")
    view = memoryview(frame)[6 : 6 + len(c.values)].toreadonly()
    a = check_put_columns(c.keys, c.lsns, c.values, c.value_ends)
    b = check_put_columns(c.keys, c.lsns, view, c.value_ends)
    assert a == b
    assert bytes(b.value_buffer()) == c.values
    assert b.value(3) == c[3][2]
    assert np.array_equal(a.will_init, b.will_init)


def test_a_bad_value_in_a_view_names_the_record() -> None:
    c = _columns()
    damaged = bytearray(c.values)
    damaged[0] = 7  # the first value's tag
    with pytest.raises(BadValue, match=r"values\[0\]"):
        check_put_columns(c.keys, c.lsns, memoryview(bytes(damaged)), c.value_ends)


@pytest.mark.parametrize(
    "make",
    [
        lambda v: memoryview(bytearray(v)),  # writable
        lambda v: memoryview(v).cast("H") if len(v) % 2 == 0 else memoryview(v).cast("c"),
        lambda v: memoryview(v)[::2],  # not contiguous
        bytearray,
    ],
)
def test_other_buffers_are_refused(make: object) -> None:
    c = _columns()
    assert callable(make)
    with pytest.raises(BadRequest, match="'values' must be a bin"):
        check_put_columns(c.keys, c.lsns, make(c.values), c.value_ends)


@pytest.mark.parametrize("column", ["keys", "lsns", "value_ends"])
def test_only_values_may_be_a_view(column: str) -> None:
    fields = dict(_columns().wire_fields())
    fields[column] = memoryview(fields[column])  # type: ignore[assignment]
    with pytest.raises(BadRequest, match=f"'{column}' must be a bin"):
        check_put_columns(fields["keys"], fields["lsns"], fields["values"], fields["value_ends"])
