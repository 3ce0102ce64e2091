"""``/metrics`` (SPEC section 8): the trio HTTP responder, and the metrics moving in a daemon."""

from __future__ import annotations

import json
import urllib.error

import pytest
import trio

from pageserver.server.metrics_http import handle_http, respond
from tests.helpers.daemon import Daemon, metric_value


def test_respond_paths_and_methods() -> None:
    ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    assert b"Content-Type: text/plain; version=" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"pageserver_ingest_records_total" in body
    assert respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200")
    head_only = respond(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head_only.endswith(b"\r\n\r\n") and b"200 OK" in head_only
    assert respond(b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404")
    assert respond(b"GET /metricsX HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404")
    assert respond(b"POST /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405")
    assert respond(b"\x00\xff\r\n\r\n").startswith(b"HTTP/1.0 400")


async def test_handler_drops_oversized_or_silent_requests() -> None:
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_http, b)
        await a.send_all(b"G" * 9000)  # no end of head within 8 KiB: dropped, no reply
        assert await a.receive_some(100) == b""
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_http, b)
        await a.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await a.receive_some(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.0 200 OK")


def test_metrics_move_after_feed_and_flush() -> None:
    d = Daemon("std-fs", checkpoint_distance=256 * 1024)
    try:
        d.start()
        before = d.scrape()
        with pytest.raises(urllib.error.HTTPError) as ei:
            d.scrape("/nope")
        assert ei.value.code == 404
        assert metric_value(before, "pageserver_io_engine_info", {"kind": "std-fs"}) == 1
        t = d.cli("tenant", "create").stdout.strip()
        tl = d.cli("timeline", "create", t).stdout.strip()
        fed = json.loads(
            d.cli("feed", t, tl, "--json", "--flush", "--count", "20000", "--start-lsn", "1").stdout
        )
        assert fed["records"] == 20000
        after = d.scrape()

        def grew(name: str, labels: dict[str, str] | None = None) -> float:
            old = metric_value(before, name, labels) if name in before else 0.0
            new = metric_value(after, name, labels)
            assert new > old, (name, labels, old, new)
            return new - old

        assert grew("pageserver_ingest_records_total") == 20000
        assert grew("pageserver_ingest_bytes_total") >= 20000 * 128
        assert grew("pageserver_flush_bytes_total") > 20000 * 128
        assert grew("pageserver_flush_seconds_count") >= 2  # layers rolled at 256 KiB
        # VirtualFile metrics of SPEC section 6.
        grew("pageserver_io_operations_bytes_total", {"operation": "write"})
        grew("pageserver_io_operations_seconds_count", {"operation": "write"})
        grew("pageserver_io_operations_seconds_count", {"operation": "open"})
        grew("pageserver_io_operations_seconds_count", {"operation": "close"})
        metric_value(after, "pageserver_virtual_file_open_slots")
        ids = {"tenant_id": t, "timeline_id": tl}
        assert metric_value(after, "pageserver_last_record_lsn", ids) == 20000
        assert metric_value(after, "pageserver_disk_consistent_lsn", ids) == 20000
        assert metric_value(after, "pageserver_layers", {**ids, "kind": "l0"}) >= 2
        # Without remote storage too: the bytes of the layer files on disk, as status says.
        status = json.loads(d.cli("status", "--json").stdout)
        resident = status["tenants"][0]["timelines"][0]["layers"]["resident_bytes"]
        tl_dir = d.timeline_path(t, tl)
        on_disk = sum(p.stat().st_size for p in tl_dir.iterdir() if "__" in p.name)
        assert metric_value(after, "pageserver_resident_layer_bytes") == resident == on_disk > 0
        assert d.stop() == 0
    finally:
        d.cleanup()
