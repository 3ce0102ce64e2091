"""feed's record streams (the generator is deterministic and resumable) and batching:
batches end only at LSN boundaries (see _batches)."""

from __future__ import annotations

from pageserver.client.feed import FeedGenerator, _batches
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
