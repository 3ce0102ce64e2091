"""feed's record streams (the generator is deterministic and resumable) and batching:
batches end only at LSN boundaries (see _batches)."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from pageserver.client.feed import FeedError, FeedGenerator, FileSource, _batches
from pageserver.layers.value import Image, encode_value
from pageserver.wire import ErrorCode, ProtocolError, encode_request, parse_request


def test_feed_generator_is_deterministic_and_resumable() -> None:
    g = FeedGenerator(count=1000, keys=30, value_size=20, start_lsn=50, records_per_lsn=3)
    assert [g.lsn_of(i) for i in range(7)] == [50, 50, 50, 51, 51, 51, 52]
    assert sorted(g.key_index(i) for i in range(30)) == list(range(30))  # one pass = all keys
    assert g.record(17) == g.record(17)
    assert g.index_at(0) == 0 and g.index_at(51) == 3 and g.index_at(10_000) == 1000
    tail = list(g.records_from(51))
    assert tail[0][0] == 3 and len(tail) == 997
    t = FeedGenerator(count=100, keys=10, kind="test", value_size=8, reinit_every=2)
    assert [t.will_init(i) for i in (0, 9, 10, 19, 20)] == [True, True, False, False, True]
    assert len(t.payload(5)) == 8


def test_batches_never_split_an_lsn() -> None:
    gen = FeedGenerator(count=10_000, keys=100, value_size=16, kind="image", start_lsn=1, records_per_lsn=7)
    batches = list(_batches(gen.records_from(0), max_records=1000, max_bytes=1 << 30))
    seen = 0
    for b in batches[:-1]:
        nxt = batches[batches.index(b) + 1]
        assert b.records[-1][1] != nxt.records[0][1]  # an LSN never spans two puts
        assert 1000 <= len(b.records) < 1007
        seen += len(b.records)
    assert seen + len(batches[-1].records) == 10_000


def test_put_at_lsn_max_is_bad_request() -> None:
    key = b"\x00" * 18
    value = b"\x00" * 4 + (1).to_bytes(8, "big") + b"x"
    payload = encode_request("put", tenant_id="ab" * 16, timeline_id="cd" * 16, records=[[key, 2**64 - 1, value]])[4:]
    err = parse_request(payload)
    assert isinstance(err, ProtocolError) and err.code == ErrorCode.BAD_REQUEST
    assert "records[0].lsn" in err.message
    ok = encode_request("put", tenant_id="ab" * 16, timeline_id="cd" * 16, records=[[key, 2**64 - 2, value]])[4:]
    assert not isinstance(parse_request(ok), ProtocolError)


def test_feed_generator_refuses_what_it_cannot_make() -> None:
    """Each used to end in a traceback deep in the feed: a key index past a u32 block
    number (struct.error), a value no layer can hold, LSNs past 2^64-2 (numpy overflow)."""
    with pytest.raises(ValueError, match="keys must be at most 2"):
        FeedGenerator(count=10, keys=(1 << 32) + 1)
    FeedGenerator(count=10, keys=1 << 32)
    with pytest.raises(ValueError, match="value_size must be at most"):
        FeedGenerator(count=3, value_size=1 << 70)
    with pytest.raises(ValueError, match="past the last record LSN"):
        FeedGenerator(count=10, start_lsn=2**64 - 2)
    last = FeedGenerator(count=4, start_lsn=2**64 - 3, records_per_lsn=2)
    assert last.lsn_of(3) == 2**64 - 2


@pytest.mark.parametrize(("form", "lsn"), [("msgpack", -1), ("json", -1), ("json", 2**64)])
def test_file_source_refuses_lsns_outside_64_bits(tmp_path: Path, form: str, lsn: int) -> None:
    """A record at LSN -1 used to be dropped without a word (below every resume point),
    the feed reporting success; one past 2^64 ended in a traceback."""
    key = bytes(18)
    value = encode_value(Image(b"v"))
    path = tmp_path / f"records.{form}"
    if form == "msgpack":
        path.write_bytes(msgpack.packb([key, 5, value]) + msgpack.packb([key, lsn, value]))
    else:
        line = '{"key": "%s", "lsn": %d, "value": "%s"}\n'
        path.write_text(line % (key.hex(), 5, value.hex()) + line % (key.hex(), lsn, value.hex()))
    with pytest.raises(FeedError, match="not a 64-bit LSN"):
        list(FileSource(str(path)).records_from(0))


def test_file_source_refuses_a_truncated_msgpack_file(tmp_path: Path) -> None:
    """The last record cut short used to vanish: msgpack's iteration ends quietly at the
    end of the file."""
    value = encode_value(Image(b"value"))
    whole = b"".join(msgpack.packb([bytes(18), lsn, value]) for lsn in (1, 2, 3))
    path = tmp_path / "records.msgpack"
    path.write_bytes(whole)
    assert [r[1][1] for r in FileSource(str(path)).records_from(0)] == [1, 2, 3]
    for cut in (1, 3, len(msgpack.packb([bytes(18), 3, value])) - 1):
        path.write_bytes(whole[:-cut])
        with pytest.raises(FeedError, match="ends inside a record"):
            list(FileSource(str(path)).records_from(0))


def test_file_source_refuses_what_cannot_be_read_twice(tmp_path: Path) -> None:
    """A pipe gave "record 1 is not [bin key, int lsn, bin value]": the file is read once
    for its first byte and again for the records."""
    fifo = tmp_path / "records.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # so that opening it to read returns
    try:
        with pytest.raises(FeedError, match="not a regular file"):
            FileSource(str(fifo))
    finally:
        os.close(writer)
