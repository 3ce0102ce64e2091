"""The one ``put`` batch check (SPEC section 5), shared by the wire and the tenant layer,
and the columnar batch it produces.

A batch is checked whole before anything of it is applied, in SPEC's order: every record
has an 18-byte key below ``Key.MAX`` and an LSN below 2^64-1 (``bad_request``); every value
is exactly one valid Value encoding, and a Test record with ``will_init`` has ``clear``
(``bad_value``); LSNs are non-decreasing (``lsn_out_of_order``). The first failure is
raised as the :mod:`pageserver.errors` exception of its code, naming the record.

Two forms arrive (SPEC section 5): ``records`` (``[key, lsn, value]`` arrays,
:func:`check_put_batch`) and the columnar form (``keys``/``lsns``/``values``/``value_ends``
binary columns, :func:`check_put_columns`). Both end as the same :class:`CheckedBatch`:
columns, not records. The keys stay one buffer of 18-byte keys (a numpy ``S18`` array), the
LSNs a ``uint64`` array, the values one contiguous buffer with ``int64`` start/end offsets,
and ``will_init`` a bool array. The timeline and the in-memory layer work on those columns
(one append of the value buffer, index chunks as arrays) with no Python object per record.

The checks are array operations: key and LSN limits and LSN order are numpy compares; the
Value encodings of images and Postgres records (the bulk of real batches) are checked from
their fixed headers, gathered for the whole batch at once; only what that cannot settle
(Test records, and anything invalid, to name the reason) goes through the per-value
validator :func:`~pageserver.layers.value_check.validate_value`.

Why here and not in :mod:`pageserver.wire`: the wire checks a ``put`` when it parses the
frame, and the tenant manager's ``put`` is also called in-process (tests, benchmarks,
tools); the tenant layer may not import the protocol, so the rule lives with the record
vocabulary (keys, LSNs, values) that both already import. It runs once per batch: the
result is a :class:`CheckedBatch`, which the timeline accepts without checking again.
:class:`PutColumns` is the encoder of the columnar form (the client's side).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeAlias, TypeVar, overload

import numpy as np
import numpy.typing as npt

from pageserver.errors import BadRequest, BadValue, LsnOutOfOrder, short_repr, type_name
from pageserver.layers.key import KEY_MAX_BYTES, KEY_SIZE, MAX_LSN, MAX_RECORD_LSN
from pageserver.layers.value import value_will_init
from pageserver.layers.value_check import validate_value

PutRecord: TypeAlias = tuple[bytes, int, bytes]
"""One ``put`` record: (18-byte key, lsn, encoded Value)."""

#: The fields of the columnar ``put`` (SPEC section 5), in the order they are checked.
PUT_COLUMNS: Final = ("keys", "lsns", "values", "value_ends")
#: numpy dtype of a key column: fixed 18-byte strings, compared and sorted byte-wise.
KEY_DTYPE: Final = np.dtype(f"S{KEY_SIZE}")
_LSN_BE: Final = np.dtype(">u8")
_END_BE: Final = np.dtype(">u4")

U64Array: TypeAlias = npt.NDArray[np.uint64]
I64Array: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
KeyArray: TypeAlias = npt.NDArray[np.bytes_]
Buffer: TypeAlias = bytes | bytearray | memoryview


class CheckedBatch(Sequence[PutRecord]):
    """A batch that passed :func:`check_put_batch` or :func:`check_put_columns`, as columns.

    ``keys`` (``S18``), ``lsns`` (``uint64``), ``will_init`` (bool) have one entry per
    record; value ``i`` is ``values[starts[i]:ends[i]]`` and the values of a batch (or of a
    :meth:`slice` of it) are contiguous in ``values``. Read a key through :meth:`key`, not
    by indexing ``keys``: numpy strips trailing NUL bytes from ``S`` scalars.

    It is also a read-only sequence of ``(key, lsn, value)`` tuples (for tests and tools;
    the hot paths use the columns), and compares equal to a tuple or list of the same
    records.
    """

    __slots__ = ("keys", "lsns", "values", "starts", "ends", "will_init")

    def __init__(
        self,
        keys: KeyArray,
        lsns: U64Array,
        values: Buffer,
        starts: I64Array,
        ends: I64Array,
        will_init: BoolArray,
    ) -> None:
        self.keys = keys
        self.lsns = lsns
        self.values = values
        self.starts = starts
        self.ends = ends
        self.will_init = will_init

    def __len__(self) -> int:
        return len(self.lsns)

    def key(self, i: int) -> bytes:
        """Key ``i`` as 18 bytes."""
        return self.keys[i : i + 1].tobytes() if i >= 0 else self.key(len(self) + i)

    def value(self, i: int) -> bytes:
        return bytes(self.values[int(self.starts[i]) : int(self.ends[i])])

    @overload
    def __getitem__(self, i: int) -> PutRecord: ...

    @overload
    def __getitem__(self, i: slice) -> CheckedBatch: ...

    def __getitem__(self, i: int | slice) -> PutRecord | CheckedBatch:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return self.slice(start, max(start, stop))
            return check_put_batch(self.records()[i])
        if not -len(self) <= i < len(self):
            raise IndexError("batch index out of range")
        return self.key(i), int(self.lsns[i]), self.value(i)

    def __iter__(self) -> Iterator[PutRecord]:
        for i in range(len(self)):
            yield self[i]

    def records(self) -> tuple[PutRecord, ...]:
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CheckedBatch):
            return self.records() == other.records()
        if isinstance(other, tuple | list):
            return len(other) == len(self) and self.records() == tuple(map(tuple, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.records())

    def __repr__(self) -> str:
        return f"CheckedBatch({len(self)} records, {self.value_bytes} value bytes)"

    @property
    def value_bytes(self) -> int:
        """Bytes of all values of the batch."""
        return int(self.ends[-1] - self.starts[0]) if len(self) else 0

    def value_buffer(self) -> memoryview:
        """The batch's values, back to back (no copy)."""
        if not len(self):
            return memoryview(b"")
        return memoryview(self.values)[int(self.starts[0]) : int(self.ends[-1])]

    def slice(self, start: int, end: int) -> CheckedBatch:
        """Records ``start:end`` (views, no copy)."""
        return CheckedBatch(
            self.keys[start:end], self.lsns[start:end], self.values,
            self.starts[start:end], self.ends[start:end], self.will_init[start:end],
        )  # fmt: skip


EMPTY_BATCH: Final = CheckedBatch(
    np.empty(0, KEY_DTYPE), np.empty(0, np.uint64), b"",
    np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.bool_),
)  # fmt: skip


# --------------------------------------------------------------------------------------
# The records form


#: Records the records form's check takes in one step (:func:`check_put_batch_steps`):
#: ~0.6 us a record, so about 1.2 ms; a 16 MiB frame of 100-byte records (~130k) was one
#: step of 80-110 ms on the event loop.
RECORDS_PER_STEP: Final = 2048


def check_put_batch(records: object) -> CheckedBatch:
    """Check a whole ``put`` batch given as records; the checked batch, or the first failure
    raised (messages name ``records[i]``).

    A valid batch is checked column-wise with C-level builtins (``map``/``set``/``zip``)
    and numpy; only when that finds a problem does a per-record loop run, to report the
    first offending record precisely. Records given in-process as lists (rather than
    tuples) are accepted. A :class:`CheckedBatch` is returned as it is.
    """
    return run_steps(check_put_batch_steps(records, ONE_STEP))


#: A step size that takes any batch in one step.
ONE_STEP: Final = 1 << 62

_T = TypeVar("_T")


def run_steps(steps: Generator[None, None, _T]) -> _T:
    """Run a generator of steps (the ``*_steps`` checks) to its end: its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: _T = done.value
            return result


def check_put_batch_steps(
    records: object, per_step: int = RECORDS_PER_STEP
) -> Generator[None, None, CheckedBatch]:
    """:func:`check_put_batch` in steps of ``per_step`` records, yielding between them (the
    server checkpoints there): the same batch, or the same first failure, at the end.

    The rules keep their order over the whole batch (SPEC section 5: keys and fields, then
    values, then LSN order), each a pass of steps: every record's form and key first, so
    a malformed record after a bad value is still the one reported, as in one step.
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
    cols: list[_Columns] = []
    for first in range(0, len(recs), per_step):
        cols.append(_columns(recs[first : first + per_step], first))
        if len(recs) > per_step:
            yield
    will_init = []
    for c in cols:
        will_init.append(_check_values(c.values, c.starts, c.ends, c.value_name))
        if len(cols) > 1:
            yield
    if len(cols) == 1:
        c = cols[0]
        _check_order(c.lsns, _record_lsn_message)
        return CheckedBatch(c.keys, c.lsns, c.values, c.starts, c.ends, will_init[0])
    lsns = np.concatenate([c.lsns for c in cols])
    _check_order(lsns, _record_lsn_message)
    yield
    # The values joined a step's worth at a time into memory not zeroed first (a 16 MiB
    # frame's values joined in one go, with the rest, was a 14-24 ms step).
    shift = np.cumsum([0, *(len(c.values) for c in cols)]).tolist()
    values = np.empty(shift[-1], np.uint8)
    for c, at in zip(cols, shift, strict=False):
        values[at : at + len(c.values)] = np.frombuffer(c.values, np.uint8)
        yield
    return CheckedBatch(
        np.concatenate([c.keys for c in cols]), lsns, values.data.toreadonly(),
        np.concatenate([c.starts + d for c, d in zip(cols, shift, strict=False)]),
        np.concatenate([c.ends + d for c, d in zip(cols, shift, strict=False)]),
        np.concatenate(will_init),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Columns:
    """Records ``first...`` of a batch as columns, their form and keys checked."""

    first: int
    keys: KeyArray
    lsns: U64Array
    values: bytes
    starts: I64Array
    ends: I64Array

    def value_name(self, i: int) -> str:
        return _record_value_name(self.first + i)


def _columns(recs: tuple[Any, ...], first: int) -> _Columns:
    """The form of each record (``[18-byte key < Key.MAX, u64 lsn, bin]``, with C-level
    builtins over the columns; a per-record loop only to name the first failure) and the
    columns of ``recs``, records ``first...`` of the batch."""
    if not (set(map(type, recs)) == {tuple} and set(map(len, recs)) == {3}):
        _raise_first_malformed(recs, first)
        recs = tuple(map(tuple, recs))  # well formed after all: lists rather than tuples
    keys, lsns, values = zip(*recs, strict=True)
    if not (
        set(map(type, keys)) == {bytes}
        and set(map(len, keys)) == {KEY_SIZE}
        and KEY_MAX_BYTES not in keys
        and set(map(type, lsns)) == {int}
        and min(lsns) >= 0
        and max(lsns) <= MAX_RECORD_LSN
        and set(map(type, values)) == {bytes}
    ):
        _raise_first_malformed(recs, first)
    n = len(recs)
    lens = np.fromiter(map(len, values), np.int64, n)
    ends = np.cumsum(lens)
    return _Columns(
        first, np.frombuffer(b"".join(keys), KEY_DTYPE), np.fromiter(lsns, np.uint64, n),
        b"".join(values), ends - lens, ends,
    )  # fmt: skip


def _record_value_name(i: int) -> str:
    return f"records[{i}].value"


def _record_lsn_message(i: int, lsn: int, prev: int) -> str:
    return (
        f"records[{i}].lsn {lsn} is below the previous record's {prev}"
        " (LSNs must be non-decreasing within a batch)"
    )


def _raise_first_malformed(recs: tuple[Any, ...], first: int = 0) -> None:
    """Raise for the first record that is not ``[18-byte key < Key.MAX, lsn, bin]``
    (``recs`` are records ``first...`` of the batch).

    Runs only when the column-wise fast path failed, so it may be slow and precise.
    """
    for i, rec in enumerate(recs, first):
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


# --------------------------------------------------------------------------------------
# The columnar form


def check_put_columns(
    keys: object, lsns: object, values: object, value_ends: object
) -> CheckedBatch:
    """Check a whole ``put`` batch given in the columnar form (SPEC section 5): see
    :func:`check_put_columns_steps`, here in one step."""
    return run_steps(check_put_columns_steps(keys, lsns, values, value_ends, ONE_STEP))


#: Records of a columnar put whose values one step checks (:func:`check_put_columns_steps`):
#: ~50-60 ns a record, so about 1 ms; a 16 MiB frame of 100-byte values was 6-10 ms.
COLUMN_RECORDS_PER_STEP: Final = 16384


def check_put_columns_steps(
    keys: object, lsns: object, values: object, value_ends: object,
    per_step: int = COLUMN_RECORDS_PER_STEP,
) -> Generator[None, None, CheckedBatch]:  # fmt: skip
    """Check a whole ``put`` batch given in the columnar form (SPEC section 5), the values
    ``per_step`` records a step (yielding between; the server checkpoints there).

    ``keys`` is 18·n bytes, ``lsns`` 8·n (u64 big-endian), ``value_ends`` 4·n (u32
    big-endian end offsets into ``values``, non-decreasing, the last = ``len(values)``).
    A missing or mistyped column, or columns whose lengths disagree, are ``bad_request``
    naming the field; then the same rules as the records form, in the same order, with
    messages naming ``keys[i]``, ``lsns[i]`` or ``values[i]``.
    """
    cols = {"keys": keys, "lsns": lsns, "values": values, "value_ends": value_ends}
    for name in PUT_COLUMNS:
        v = cols[name]
        if v is None:
            raise _bad(name, "is required (the columnar put has keys, lsns, values, value_ends)")
        if type(v) is not bytes and not (name == "values" and _is_byte_view(v)):
            raise _bad(name, f"must be a bin, not {type_name(v)}")
    kb: bytes = cols["keys"]  # type: ignore[assignment]
    lb: bytes = cols["lsns"]  # type: ignore[assignment]
    vb: bytes | memoryview = cols["values"]  # type: ignore[assignment]
    eb: bytes = cols["value_ends"]  # type: ignore[assignment]
    if len(kb) % KEY_SIZE:
        raise _bad("keys", f"must hold {KEY_SIZE}-byte keys back to back, not {len(kb)} bytes")
    n = len(kb) // KEY_SIZE
    if len(lb) != 8 * n:
        raise _bad("lsns", f"must be 8 bytes per key ({8 * n} for {n} keys), not {len(lb)} bytes")
    if len(eb) != 4 * n:
        raise _bad(
            "value_ends", f"must be 4 bytes per key ({4 * n} for {n} keys), not {len(eb)} bytes"
        )
    ends_be = np.frombuffer(eb, _END_BE)
    if n:
        back = ends_be[1:] < ends_be[:-1]
        if back.any():
            i = int(np.argmax(back)) + 1
            raise _bad(
                f"value_ends[{i}]",
                f"({int(ends_be[i])}) goes back below value_ends[{i - 1}] ({int(ends_be[i - 1])})"
                " (end offsets must be non-decreasing)",
            )
        if int(ends_be[-1]) != len(vb):
            raise _bad(
                "value_ends",
                f"must end at len(values) ({len(vb)}), not {int(ends_be[-1])}",
            )
    elif vb:
        raise _bad("values", f"must be empty when there are no keys, not {len(vb)} bytes")
    if not n:
        return EMPTY_BATCH
    key_arr = np.frombuffer(kb, KEY_DTYPE)
    lsn_arr = np.frombuffer(lb, _LSN_BE).astype(np.uint64)
    is_max = key_arr == KEY_MAX_BYTES
    too_big = lsn_arr == np.uint64(MAX_LSN)
    if is_max.any() or too_big.any():
        # The first bad record, as the records form reports it (its key before its LSN).
        i = int(np.argmax(is_max | too_big))
        if is_max[i]:
            raise _bad(f"keys[{i}]", "must be below Key.MAX")
        raise _bad(f"lsns[{i}]", "must be below 2^64-1 (a layer's end LSN is lsn + 1)")
    ends = ends_be.astype(np.int64)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1]
    if n <= per_step:
        will_init = _check_values(vb, starts, ends, _column_value_name)
    else:
        parts = []
        for a in range(0, n, per_step):
            b = min(n, a + per_step)
            parts.append(_check_values(vb, starts[a:b], ends[a:b], partial(_column_value_name, first=a)))
            yield
        will_init = np.concatenate(parts)
    _check_order(lsn_arr, _column_lsn_message)
    return CheckedBatch(key_arr, lsn_arr, vb, starts, ends, will_init)


def _is_byte_view(v: object) -> bool:
    """A read-only, contiguous byte ``memoryview``: how a zero-copy decoder may hand over
    the ``values`` column (a view of the frame it arrived in; the batch keeps it alive,
    and the ephemeral file's append writes straight from it)."""
    return (
        type(v) is memoryview
        and v.readonly
        and v.c_contiguous
        and v.format == "B"
        and v.ndim == 1
    )


def _column_value_name(i: int, first: int = 0) -> str:
    return f"values[{first + i}]"


def _column_lsn_message(i: int, lsn: int, prev: int) -> str:
    return (
        f"lsns[{i}] {lsn} is below the previous record's {prev}"
        " (LSNs must be non-decreasing within a batch)"
    )


# --------------------------------------------------------------------------------------
# Shared passes


def _check_order(lsns: U64Array, message: Callable[[int, int, int], str]) -> None:
    """The ``lsn_out_of_order`` pass: LSNs non-decreasing."""
    if len(lsns) > 1:
        back = lsns[1:] < lsns[:-1]
        if back.any():
            i = int(np.argmax(back)) + 1
            raise LsnOutOfOrder(message(i, int(lsns[i]), int(lsns[i - 1])))


def _rows(buf: npt.NDArray[np.uint8], at: I64Array, width: int) -> npt.NDArray[np.uint8]:
    """``width`` bytes of ``buf`` at each offset of ``at`` (one row copy per offset, not a
    gather per byte). Every ``at + width`` must be within ``buf``."""
    win = np.ndarray((len(buf) - width + 1,), f"V{width}", buf, strides=(1,))
    return win[at].view(np.uint8).reshape(len(at), width)


def _check_values(
    values: Buffer, starts: I64Array, ends: I64Array, name: Callable[[int], str]
) -> BoolArray:
    """The ``bad_value`` pass; returns ``will_init`` per record.

    Images and Postgres records are settled from their fixed headers for the whole batch
    at once (tag, length prefix = the rest, the ``will_init`` byte a bool); everything else
    (Test records, and whatever is invalid, to report why) goes through the per-value
    validator, in record order, so the first invalid record is the one reported.
    """
    n = len(starts)
    lens = ends - starts
    ok = np.zeros(n, np.bool_)
    will_init = np.zeros(n, np.bool_)
    buf = np.frombuffer(values, np.uint8)
    cand = np.flatnonzero(lens >= 12)
    if len(cand):
        at = starts[cand]
        hdr = _rows(buf, at, 12)
        words = hdr.view(">u4").astype(np.uint64)  # (m, 3): tag, then the u64 length prefix
        tag = words[:, 0]
        length = (words[:, 1] << np.uint64(32)) | words[:, 2]
        clens = lens[cand]
        image = (tag == 0) & (length == (clens - 12).astype(np.uint64))
        ok[cand[image]] = True
        will_init[cand[image]] = True
        pg = np.flatnonzero((tag == 1) & (words[:, 1] == 0) & (clens >= 17))
        if len(pg):
            idx = cand[pg]
            tail = _rows(buf, starts[idx] + 8, 9)  # will_init u8, then the u64 record length
            flag = tail[:, 0]
            plen = tail[:, 1:].copy().view(">u8")[:, 0]
            good = (flag <= 1) & (plen == (lens[idx] - 17).astype(np.uint64))
            ok[idx[good]] = True
            will_init[idx[good]] = flag[good] == 1
        tr = np.flatnonzero((tag == 1) & (words[:, 1] == 8) & (clens >= 19))
        if len(tr):
            _check_test_records(buf, starts, lens, cand[tr], ok, will_init)
    if not ok.all():
        validate = validate_value
        for i in np.flatnonzero(~ok).tolist():
            v = bytes(values[int(starts[i]) : int(ends[i])])
            why = validate(v)
            if why is not None:
                raise BadValue(f"{name(i)}: {why}")
            will_init[i] = value_will_init(v)
    return will_init


def _check_test_records(
    buf: npt.NDArray[np.uint8],
    starts: I64Array,
    lens: I64Array,
    idx: npt.NDArray[np.intp],
    ok: BoolArray,
    will_init: BoolArray,
) -> None:
    """Settle the Test records ``idx`` (tags read, at least 19 bytes) that are plainly
    valid: ``u64 len, append, u8 clear, u8 will_init, u8 option [, u64 len, only_if]``
    filling the value exactly, bools 0/1, ``will_init`` only with ``clear``, and no byte
    above 0x7F in the value (so both strings are valid UTF-8). Anything else is left to
    the per-value validator (a non-ASCII string may still be valid; it says why if not)."""
    s = starts[idx]
    n = lens[idx].astype(np.uint64)
    la = _rows(buf, s + 8, 8).view(">u8")[:, 0].astype(np.uint64)
    fits = la <= n - np.uint64(19)  # 16 + append + 3 bytes, no overflow for a huge len
    if not fits.any():
        return
    idx, s, n, la = idx[fits], s[fits], n[fits], la[fits]
    e = s + 16 + la.astype(np.int64)  # clear, will_init, option tag
    clear, wi, opt = buf[e], buf[e + 1], buf[e + 2]
    used = e + 3 - s
    exact = (opt == 0) & (used == n.astype(np.int64))
    with_only_if = np.flatnonzero((opt == 1) & (used.astype(np.uint64) + np.uint64(8) <= n))
    if len(with_only_if):
        j = with_only_if
        lo = _rows(buf, e[j] + 3, 8).view(">u8")[:, 0].astype(np.uint64)
        rest = n[j] - (used[j] + 8).astype(np.uint64)
        exact[j] = lo == rest
    good = exact & (clear <= 1) & (wi <= 1) & ~((wi == 1) & (clear == 0))
    if not good.any():
        return
    # No byte >= 0x80 in the value: the largest byte of each value, in one pass
    # (``reduceat`` over [start, end) pairs; the last end may be the buffer's end).
    bounds = np.empty(2 * len(s), np.int64)
    bounds[0::2] = s
    bounds[1::2] = s + n.astype(np.int64)
    if bounds[-1] == len(buf):
        bounds = bounds[:-1]
    good &= np.maximum.reduceat(buf, bounds)[0::2] < 0x80
    ok[idx[good]] = True
    will_init[idx[good]] = wi[good] == 1


def check_start_lsn(value: object) -> int:
    """A timeline's ``start_lsn``: an unsigned integer a record LSN could have (the first
    layer starts at ``start_lsn + 1``, so 2^64-1 is refused as it is for records)."""
    if type(value) is not int or not 0 <= value <= MAX_RECORD_LSN:
        raise BadRequest("field 'start_lsn' must be an unsigned integer below 2^64-1")
    return value


# --------------------------------------------------------------------------------------
# The encoder (client side)


@dataclass(frozen=True, slots=True)
class PutColumns:
    """The columnar form of a ``put`` batch, ready to send (:meth:`wire_fields`).

    Built from records once (:meth:`from_records`); a client that sends many records
    (``feed``, benchmarks) sends these instead of ``records`` arrays (SPEC section 5).
    Not checked: the server checks. Also a sequence of records (``len``, index), so that a
    batch's first and last LSNs can be read back.
    """

    keys: bytes
    lsns: bytes
    values: bytes
    value_ends: bytes

    @classmethod
    def from_records(cls, records: Sequence[PutRecord] | PutColumns) -> PutColumns:
        if isinstance(records, PutColumns):
            return records
        if not records:
            return cls(b"", b"", b"", b"")
        keys, lsns, values = zip(*records, strict=True)
        n = len(keys)
        ends = np.cumsum(np.fromiter(map(len, values), np.int64, n))
        return cls(
            b"".join(keys),
            np.fromiter(lsns, np.uint64, n).astype(_LSN_BE).tobytes(),
            b"".join(values),
            ends.astype(_END_BE).tobytes(),
        )

    def wire_fields(self) -> dict[str, bytes]:
        """The ``put`` request fields of the columnar form."""
        return {
            "keys": self.keys,
            "lsns": self.lsns,
            "values": self.values,
            "value_ends": self.value_ends,
        }

    def __len__(self) -> int:
        return len(self.keys) // KEY_SIZE

    def __getitem__(self, i: int) -> PutRecord:
        n = len(self)
        if not -n <= i < n:
            raise IndexError("batch index out of range")
        i %= n
        ends = np.frombuffer(self.value_ends, _END_BE)
        start = int(ends[i - 1]) if i else 0
        return (
            self.keys[i * KEY_SIZE : (i + 1) * KEY_SIZE],
            int(np.frombuffer(self.lsns, _LSN_BE)[i]),
            self.values[start : int(ends[i])],
        )
