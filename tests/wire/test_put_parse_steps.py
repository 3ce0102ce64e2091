"""A ``put`` in the records form is checked a bounded number of records a step: the server
parses it with ``next_event(stepwise=True)`` and lets other tasks run at every ``BUSY``
(a 16 MiB frame of 100-byte records was 80-110 ms of checks in one loop step). The steps
must change nothing else: the same checked batch, and the same first failure, with the
rules in the same order (form and keys, then values, then LSN order) over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import pytest

from pageserver.client.feed import FeedGenerator
from pageserver.layers.batch import (
    COLUMN_RECORDS_PER_STEP,
    RECORDS_PER_STEP,
    CheckedBatch,
    PutColumns,
    check_put_batch,
    check_put_batch_steps,
    check_put_columns_steps,
)
from pageserver.wire import (
    BUSY,
    ErrorEvent,
    PutRequest,
    RequestEvent,
    ServerConnection,
    encode_request,
)
from pageserver.wire import _requests as wire_requests
from pageserver.wire._requests import DECODE_ALONE_BYTES

Records = list[Any]


def _records(n: int) -> Records:
    g = FeedGenerator(count=n, keys=max(1, n // 7), value_size=30, kind="test")
    return [g.record(i) for i in range(n)]


Outcome = tuple[CheckedBatch | tuple[str, str], int]


def _run(records: Records, per_step: int) -> Outcome:
    return _outcome(check_put_batch_steps(records, per_step))


def _outcome(steps: Generator[None, None, CheckedBatch]) -> Outcome:
    """The batch or the error (type name, message), and the steps it yielded."""
    n = 0
    try:
        while True:
            next(steps)
            n += 1
    except StopIteration as done:
        return done.value, n
    except Exception as e:  # noqa: BLE001 - compared below
        return (type(e).__name__, str(e)), n


def _same(a: CheckedBatch, b: CheckedBatch) -> None:
    for f in ("keys", "lsns", "starts", "ends", "will_init"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert bytes(a.value_buffer()) == bytes(b.value_buffer())


def _set(i: int, rec: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> Callable[[Records], None]:
    def mutate(r: Records) -> None:
        r[i] = rec(r[i])

    return mutate


MUTATIONS: dict[str, list[Callable[[Records], None]]] = {
    "bad value in a late step": [_set(5000, lambda r: (r[0], r[1], b"\x09junk"))],
    "lsn back across two steps": [_set(4096, lambda r: (r[0], 0, r[2]))],
    "lsn back inside a step": [_set(6001, lambda r: (r[0], 0, r[2]))],
    "short key": [_set(7002, lambda r: (b"short", r[1], r[2]))],
    "not a triple": [_set(3000, lambda r: (r[0], r[1]))],
    # A malformed record after a bad value: the form is checked first over the whole
    # batch, so the later record is the one named, in steps as in one.
    "bad value, then a malformed record": [
        _set(10, lambda r: (r[0], r[1], b"\x09junk")),
        _set(9000, lambda r: (b"k", r[1], r[2])),
    ],
    "bad value, then lsn back": [
        _set(20, lambda r: (r[0], r[1], b"\x09junk")),
        _set(9500, lambda r: (r[0], 0, r[2])),
    ],
}


@pytest.mark.parametrize("per_step", [1, 333, RECORDS_PER_STEP, 10_000])
def test_records_checked_in_steps_give_the_same_batch(per_step: int) -> None:
    records = _records(10_000)
    whole = check_put_batch(records)
    got, steps = _run(records, per_step)
    assert isinstance(got, CheckedBatch)
    _same(whole, got)
    # When there is more than one chunk: a pass of steps for forms and keys, one for
    # values, the order, and a step for each chunk's values joined.
    chunks = -(-len(records) // per_step)
    assert steps == (0 if chunks == 1 else 3 * chunks + 1)


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_records_checked_in_steps_fail_the_same(case: str) -> None:
    records = _records(10_000)
    for mutate in MUTATIONS[case]:
        mutate(records)
    with pytest.raises(Exception) as one:  # noqa: PT011 - the type is what is compared
        check_put_batch(records)
    for per_step in (333, RECORDS_PER_STEP, 4096):
        got, _ = _run(records, per_step)
        assert got == (type(one.value).__name__, str(one.value)), per_step


def _events(frame: bytes, stepwise: bool) -> tuple[list[object], object]:
    c = ServerConnection(64 << 20)
    c.receive_data(frame)
    busy: list[object] = []
    while True:
        ev = c.next_event(stepwise=stepwise)
        if ev is not BUSY:
            return busy, ev
        busy.append(ev)


def test_connection_parses_a_large_records_put_in_steps() -> None:
    records = _records(20_000)
    frame = encode_request("put", id=3, tenant_id="ab" * 16, timeline_id="cd" * 16, records=records)
    busy, ev = _events(frame, stepwise=True)
    # A first step before msgpack decodes the frame (the server takes its decoding slot
    # there, with nothing decoded yet), then the check's.
    assert len(frame) >= DECODE_ALONE_BYTES
    assert len(busy) == 1 + 3 * -(-len(records) // RECORDS_PER_STEP) + 1
    assert isinstance(ev, RequestEvent) and isinstance(ev.request, PutRequest) and ev.id == 3
    plain_busy, plain = _events(frame, stepwise=False)
    assert plain_busy == [] and isinstance(plain, RequestEvent)
    assert isinstance(plain.request, PutRequest)
    _same(ev.request.records, plain.request.records)
    # A bad value near the end: the same error reply, after the steps.
    records[-3] = (records[-3][0], records[-3][1], b"\x09junk")
    frame = encode_request("put", id=4, tenant_id="ab" * 16, timeline_id="cd" * 16, records=records)
    busy, ev = _events(frame, stepwise=True)
    _, plain = _events(frame, stepwise=False)
    assert busy and isinstance(ev, ErrorEvent) and ev == plain
    assert f"records[{len(records) - 3}].value" in ev.message
    # The connection goes on: the next frame is parsed as usual.
    c = ServerConnection(64 << 20)
    c.receive_data(frame + encode_request("status", id=5))
    while (first := c.next_event(stepwise=True)) is BUSY:
        pass
    assert isinstance(first, ErrorEvent)
    nxt = c.next_event(stepwise=True)
    assert isinstance(nxt, RequestEvent) and nxt.id == 5


def test_small_puts_and_other_ops_take_one_step() -> None:
    frame = encode_request("put", id=1, tenant_id="ab" * 16, timeline_id="cd" * 16, records=_records(100))
    busy, ev = _events(frame, stepwise=True)
    assert busy == [] and isinstance(ev, RequestEvent)
    busy, ev = _events(encode_request("status", id=2), stepwise=True)
    assert busy == [] and isinstance(ev, RequestEvent)


def _run_columns(cols: PutColumns, per_step: int) -> Outcome:
    f = cols.wire_fields()
    return _outcome(
        check_put_columns_steps(f["keys"], f["lsns"], f["values"], f["value_ends"], per_step)
    )


@pytest.mark.parametrize("case", ["valid", *sorted(k for k in MUTATIONS if "value" in k or "lsn" in k)])
def test_columns_checked_in_steps_give_the_same_result(case: str) -> None:
    """The columnar form's values are checked COLUMN_RECORDS_PER_STEP records a step: the
    same batch, or the same first failure (values[i] named by its index in the batch)."""
    records = _records(10_000)
    for mutate in MUTATIONS.get(case, []):
        mutate(records)
    cols = PutColumns.from_records(records)
    whole, none = _run_columns(cols, 1 << 62)
    assert none == 0
    for per_step in (1000, 4096):
        got, steps = _run_columns(cols, per_step)
        if isinstance(whole, CheckedBatch):
            assert isinstance(got, CheckedBatch) and steps == -(-len(records) // per_step)
            _same(whole, got)
        else:
            assert got == whole, per_step


def test_connection_parses_a_large_columnar_put_in_steps() -> None:
    records = _records(3 * COLUMN_RECORDS_PER_STEP + 5)
    cols = PutColumns.from_records(records)
    frame = encode_request("put", id=6, tenant_id="ab" * 16, timeline_id="cd" * 16, **cols.wire_fields())
    busy, ev = _events(frame, stepwise=True)
    assert len(busy) == 4
    _, plain = _events(frame, stepwise=False)
    assert isinstance(ev, RequestEvent) and isinstance(plain, RequestEvent)
    assert isinstance(ev.request, PutRequest) and isinstance(plain.request, PutRequest)
    _same(ev.request.records, plain.request.records)


def test_a_large_frame_is_decoded_in_a_step_after_one_that_decodes_nothing() -> None:
    """The server waits for its one decoding slot at the first BUSY: nothing of the
    frame may be decoded by then (a records-form put's objects are ~30x its size)."""
    records = _records(3000)
    frame = encode_request("put", id=8, tenant_id="ab" * 16, timeline_id="cd" * 16, records=records)
    assert len(frame) >= DECODE_ALONE_BYTES
    c = ServerConnection(64 << 20)
    c.receive_data(frame)
    decoded: list[int] = []
    real = wire_requests.unpack_limited

    def spy(*a: Any, **kw: Any) -> Any:
        decoded.append(1)
        return real(*a, **kw)

    wire_requests.unpack_limited = spy  # type: ignore[assignment]
    try:
        assert c.next_event(stepwise=True) is BUSY and decoded == []
        while (ev := c.next_event(stepwise=True)) is BUSY:
            pass
    finally:
        wire_requests.unpack_limited = real  # type: ignore[assignment]
    assert decoded == [1] and isinstance(ev, RequestEvent)


def test_shutdown_between_the_steps_of_a_request_answers_shutting_down() -> None:
    """The shutdown began while a large put was parsed in steps: its reply is
    ``shutting_down`` (it raised AssertionError: no transition from SHUTTING_DOWN on a
    request), and the connection goes on to refuse what follows."""
    records = _records(5000)
    frame = encode_request("put", id=9, tenant_id="ab" * 16, timeline_id="cd" * 16, records=records)
    c = ServerConnection(64 << 20)
    c.receive_data(frame + encode_request("status", id=10))
    assert c.next_event(stepwise=True) is BUSY
    assert c.next_event(stepwise=True) is BUSY
    c.start_shutdown()
    while (ev := c.next_event(stepwise=True)) is BUSY:
        pass
    assert isinstance(ev, ErrorEvent) and ev.code.value == "shutting_down" and ev.id == 9
    nxt = c.next_event(stepwise=True)
    assert isinstance(nxt, ErrorEvent) and nxt.code.value == "shutting_down" and nxt.id == 10
