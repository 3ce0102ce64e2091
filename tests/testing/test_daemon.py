"""``pageserver.testing.Daemon`` and ``BlockingClient`` by hand (the plugin's building blocks):
TCP transport, a port lost to a race between choosing and binding, SIGKILL after a SIGTERM
timeout, a daemon that reports another engine than asked (a silent fallback) refused, a
start failure reported with the daemon's own words."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from pageserver.client import ServerError
from pageserver.layers.value import Image, encode_value
from pageserver.testing import BlockingClient, Daemon, DaemonError
from pageserver.testing import daemon as daemon_module

KEY = bytes.fromhex("000000067F000040000000400100000000AB")


def test_tcp_daemon_and_the_blocking_client() -> None:
    with Daemon("std-fs", transport="tcp", metrics=False) as d:
        host, _, port = d.addr.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0 and d.sock is None
        tl = d.create_timeline(start_lsn=4)
        with BlockingClient(d.addr) as c:
            assert c.server_info["io_engine"] == "std-fs"
            r = c.put(tl.tenant_id, tl.timeline_id, [(KEY, 5, encode_value(Image(b"v5")))])
            assert (r["last_record_lsn"], r["skipped"]) == (5, 0)
            assert c.get(tl.tenant_id, tl.timeline_id, KEY, 5) == b"v5"
            assert c.get(tl.tenant_id, tl.timeline_id, KEY, 4) is None
            history = c.get_history(tl.tenant_id, tl.timeline_id, KEY, 5)
            assert history["image"] == b"v5" and history["image_lsn"] == 5
            assert c.flush(tl.tenant_id, tl.timeline_id) == 5
            assert c.compact(tl.tenant_id, tl.timeline_id) == {
                "layers_created": 0,
                "layers_removed": 0,
            }
            assert c.timeline_status(tl.tenant_id, tl.timeline_id)["disk_consistent_lsn"] == 5
            with pytest.raises(ServerError) as ei:
                c.get("9" * 32, tl.timeline_id, KEY, 5)
            assert ei.value.code == "tenant_not_found"
        [layer] = tl.layer_files()
        assert layer.parent == tl.path and layer.name in os.listdir(tl.path)
        root = d.root
    assert not root.exists()  # a temporary root is removed by cleanup
    assert "pageserver stopped" in d.log_text()  # the log outlives the directory


def test_a_port_taken_between_choosing_and_binding_is_chosen_again() -> None:
    d = Daemon("std-fs", transport="tcp", metrics=False)
    try:
        port = int(d.addr.rpartition(":")[2])
        with socket.socket() as thief:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            thief.bind(("127.0.0.1", port))
            thief.listen()
            d.start()
            assert d.addr != f"127.0.0.1:{port}" and d.starts == 2
            assert "cannot listen on" in (d.root / "daemon-1.log").read_text()
            with d.client() as c:
                assert c.status()["tenants"] == []
        assert d.terminate().clean
    finally:
        d.cleanup()


def test_terminate_sigkills_a_daemon_that_ignores_sigterm() -> None:
    d = Daemon("std-fs", metrics=False)
    try:
        d.start()
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGSTOP)
        result = d.terminate(timeout=0.5)
        assert result.killed and result.returncode == -signal.SIGKILL and not result.clean
        assert not d.running
    finally:
        d.cleanup()


FAKE_DAEMON = """
    # Answers every request like a daemon that fell back to std-fs.
    import socket, sys, tomllib
    sys.path[:0] = {path!r}
    from pageserver.wire import FrameDecoder, Frame, encode_reply
    import msgpack
    data_dir = sys.argv[sys.argv.index("-D") + 1]
    with open(data_dir + "/pageserver.toml", "rb") as f:
        addr = tomllib.load(f)["listen_addr"]
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(addr[len("unix:"):])
    srv.listen()
    while True:
        conn, _ = srv.accept()
        dec = FrameDecoder()
        while chunk := conn.recv(65536):
            dec.feed(chunk)
            while isinstance(ev := dec.next_event(), Frame):
                rid = msgpack.unpackb(ev.payload)["id"]
                conn.sendall(encode_reply(rid, {{"version": 1, "io_engine": "std-fs"}}))
        conn.close()
"""


def test_a_daemon_running_another_engine_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text(textwrap.dedent(FAKE_DAEMON.format(path=sys.path)), encoding="utf-8")
    monkeypatch.setattr(daemon_module, "pageserver_command", lambda: [sys.executable, str(fake)])
    d = Daemon("trio-uring", metrics=False)
    try:
        with pytest.raises(
            DaemonError, match=r"asked for io engine trio-uring, but the daemon runs std-fs"
        ):
            d.start()
        assert d.proc is None  # killed, not left behind
    finally:
        d.cleanup()


def test_a_start_failure_carries_the_daemons_message() -> None:
    d = Daemon("std-fs", metrics=False, config={"max_file_descriptors": "many"})
    try:
        with pytest.raises(DaemonError) as ei:
            d.start()
        assert "exited 1 at start" in str(ei.value)
        assert "max_file_descriptors" in str(ei.value)
    finally:
        d.cleanup()
