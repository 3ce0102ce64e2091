"""feed's batching: batches end only at LSN boundaries (see _batches)."""

from __future__ import annotations

from pageserver.client.cli import FeedGenerator, _batches
from pageserver.wire import ErrorCode, ProtocolError, encode_request, parse_request


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
