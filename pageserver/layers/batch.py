"""The one ``put`` batch check (SPEC section 5), shared by the wire and the tenant layer.

A batch is checked whole before anything of it is applied, in SPEC's order: every record is
``[key, lsn, value]`` with an 18-byte key below ``Key.MAX`` and an LSN below 2^64-1
(``bad_request``); every value is exactly one valid Value encoding, and a Test record with
``will_init`` has ``clear`` (``bad_value``); LSNs are non-decreasing (``lsn_out_of_order``).
The first failure is raised as the :mod:`pageserver.errors` exception of its code.

Why here and not in :mod:`pageserver.wire`: the wire checks a ``put`` when it parses the
frame, and the tenant manager's ``put`` is also called in-process (tests, benchmarks,
tools); the tenant layer may not import the protocol, so the rule lives with the record
vocabulary (keys, LSNs, values) that both already import. It runs once per batch: the
result is a :class:`CheckedBatch`, which the timeline accepts without checking again.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from operator import le
from typing import Any, TypeAlias

from pageserver.errors import BadRequest, BadValue, LsnOutOfOrder, short_repr, type_name
from pageserver.layers.key import KEY_MAX_BYTES, KEY_SIZE, MAX_LSN, MAX_RECORD_LSN
from pageserver.layers.value import value_will_init
from pageserver.layers.value_check import validate_value

PutRecord: TypeAlias = tuple[bytes, int, bytes]
"""One ``put`` record: (18-byte key, lsn, encoded Value)."""


class CheckedBatch(tuple[PutRecord, ...]):
    """A batch that passed :func:`check_put_batch`: a tuple of ``(key, lsn, value)``.

    Compares equal to the plain tuple of the same records. ``will_init[i]`` says whether
    record ``i`` starts a new history (an image, or a record with ``will_init``); it is
    computed once here because the in-memory layer needs it for every record.
    """

    will_init: tuple[bool, ...]

    def __new__(cls, records: tuple[PutRecord, ...]) -> CheckedBatch:
        self = super().__new__(cls, records)
        self.will_init = tuple(map(value_will_init, (r[2] for r in records)))
        return self


EMPTY_BATCH = CheckedBatch(())


def check_put_batch(records: object) -> CheckedBatch:
    """Check a whole ``put`` batch; the checked batch, or the first failure raised.

    Hot path (thousands of records per frame). A valid batch is checked column-wise with
    C-level builtins (``map``/``set``/``zip``); only when that finds a problem does a
    per-record loop run, to report the first offending record precisely. Records given
    in-process as lists (rather than tuples) are accepted and converted.
    """
    if type(records) is CheckedBatch:
        return records
    if type(records) is list:
        records = tuple(records)
    if type(records) is not tuple:
        raise BadRequest(f"field 'records' must be an array, not {type_name(records)}")
    recs: tuple[Any, ...] = records
    if not recs:
        return EMPTY_BATCH
    if set(map(type, recs)) == {tuple} and set(map(len, recs)) == {3}:
        keys, lsns, values = zip(*recs, strict=True)
        if (
            set(map(type, keys)) == {bytes}
            and set(map(len, keys)) == {KEY_SIZE}
            and KEY_MAX_BYTES not in keys
            and set(map(type, lsns)) == {int}
            and min(lsns) >= 0
            and max(lsns) <= MAX_RECORD_LSN
            and set(map(type, values)) == {bytes}
        ):
            _check_columns(values, lsns)
            return CheckedBatch(recs)
    _raise_first_malformed(recs)
    # Well formed after all: records given in-process as lists rather than tuples.
    recs = tuple(map(tuple, recs))
    keys, lsns, values = zip(*recs, strict=True)
    _check_columns(values, lsns)
    return CheckedBatch(recs)


def _check_columns(values: Sequence[bytes], lsns: Sequence[int]) -> None:
    """The ``bad_value`` and ``lsn_out_of_order`` passes over already well-typed columns."""
    validate = validate_value
    for i, v in enumerate(values):
        why = validate(v)
        if why is not None:
            raise BadValue(f"records[{i}].value: {why}")
    if not all(map(le, lsns, islice(lsns, 1, None))):
        for i in range(1, len(lsns)):
            if lsns[i] < lsns[i - 1]:
                raise LsnOutOfOrder(
                    f"records[{i}].lsn {lsns[i]} is below the previous record's {lsns[i - 1]}"
                    " (LSNs must be non-decreasing within a batch)"
                )


def _raise_first_malformed(recs: tuple[Any, ...]) -> None:
    """Raise for the first record that is not ``[18-byte key < Key.MAX, lsn, bin]``.

    Runs only when the column-wise fast path failed, so it may be slow and precise.
    """
    for i, rec in enumerate(recs):
        name = f"records[{i}]"
        if type(rec) is not tuple and type(rec) is not list:
            raise _bad(name, f"must be an array [key, lsn, value], not {type_name(rec)}")
        if len(rec) != 3:
            raise _bad(name, f"must be an array [key, lsn, value], not {len(rec)} elements")
        key, lsn, value = rec
        if type(key) is not bytes:
            raise _bad(f"{name}.key", f"must be a {KEY_SIZE}-byte bin, not {type_name(key)}")
        if len(key) != KEY_SIZE:
            raise _bad(f"{name}.key", f"must be a {KEY_SIZE}-byte bin, not {len(key)} bytes")
        if key == KEY_MAX_BYTES:
            raise _bad(f"{name}.key", "must be below Key.MAX")
        if type(lsn) is not int or not 0 <= lsn <= MAX_LSN:
            raise _bad(f"{name}.lsn", f"must be an unsigned 64-bit integer, not {short_repr(lsn)}")
        if lsn > MAX_RECORD_LSN:
            raise _bad(f"{name}.lsn", "must be below 2^64-1 (a layer's end LSN is lsn + 1)")
        if type(value) is not bytes:
            raise _bad(f"{name}.value", f"must be a bin, not {type_name(value)}")


def _bad(name: str, what: str) -> BadRequest:
    return BadRequest(f"field '{name}' {what}")


def check_start_lsn(value: object) -> int:
    """A timeline's ``start_lsn``: an unsigned integer a record LSN could have (the first
    layer starts at ``start_lsn + 1``, so 2^64-1 is refused as it is for records)."""
    if type(value) is not int or not 0 <= value <= MAX_RECORD_LSN:
        raise BadRequest("field 'start_lsn' must be an unsigned integer below 2^64-1")
    return value
