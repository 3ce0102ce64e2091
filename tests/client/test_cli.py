"""The client subcommands (``pageserver tenant create``, ``put``, ``get``, ``feed`` ...) and
``--help`` of every command.

Commands run in-process (``cli.main`` in a worker thread, which does its own ``trio.run``)
against an in-process server on the test's event loop: fast, and stdout/stderr are captured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from pageserver import cli
from pageserver.client import Client, ConnectionLost, parse_address
from pageserver.client.cli import parse_lsn
from pageserver.client.feed import FeedGenerator, run_feed
from pageserver.layers.value import Image, encode_value
from pageserver.tenant.timeline import Timeline
from tests.server.test_badinput import Harness, _start

PAGESERVER = str(Path(sys.executable).with_name("pageserver"))
KEY = "000000067F000040000000400100000000AB"
KEY2 = "000000067F000040000000400100000000AC"
#: The commands of this module's subject (client_cli); others have their own tests.
CLIENT_COMMANDS = {"tenant", "timeline", "put", "get", "status", "flush", "compact", "gc", "feed"}


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cli.main`` reconfigures structlog with the *current* ``sys.stderr``, which under
    capsys is a capture file closed after the test; later log calls would then fail."""
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)


def _subcommand_paths() -> list[list[str]]:
    """Every (nested) subcommand of the real parser."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(cli.build_parser(), [])
    return paths


def test_top_level_help_runs() -> None:
    p = subprocess.run([PAGESERVER, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for word in ("run", "tenant", "timeline", "put", "get", "status", "flush", "feed"):
        assert word in p.stdout


@pytest.mark.parametrize("path", _subcommand_paths(), ids=" ".join)
def test_every_subcommand_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main([*path, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pageserver " + " ".join(path))
    if path[0] in CLIENT_COMMANDS:
        assert len(out) > 200, out  # a description, not just a usage line


def test_parse_lsn_and_address() -> None:
    assert parse_lsn("1/0") == 1 << 32 and parse_lsn("0x10") == 16 and parse_lsn("42") == 42
    with pytest.raises(argparse.ArgumentTypeError):
        parse_lsn("-1")
    assert parse_address("[::1]:7").host == "::1"
    assert parse_address(":7").host is None
    assert parse_address("unix:/tmp/x").unix_path == "/tmp/x"
    for bad in ("nope", "h:70000", "unix:", "h:x", "unix:/" + "a" * 120):
        with pytest.raises(ValueError):
            parse_address(bad)


@pytest.fixture
async def srv(nursery: trio.Nursery) -> object:
    async with AsyncExitStack() as stack:
        yield await _start(nursery, stack)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = await trio.to_thread.run_sync(cli.main, list(argv))
    out, err = capsys.readouterr()
    # The in-process server logs to the same stderr: keep only the command's own lines.
    err = "".join(line for line in err.splitlines(True) if not line.startswith("timestamp="))
    return rc, out, err


async def test_client_commands(srv: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    a = ("--addr", srv.addr)
    rc, out, err = await run_cli(
        capsys, "tenant", "create", *a, "--config", "checkpoint_distance=65536"
    )
    assert rc == 0, err
    t = out.strip()
    assert len(t) == 32
    rc, out, _ = await run_cli(capsys, "tenant", "create", "AB" * 16, *a, "--json")
    assert rc == 0 and json.loads(out) == {"tenant_id": "ab" * 16}
    rc, out, err = await run_cli(capsys, "tenant", "create", "ab" * 16, *a)
    assert rc == 1 and out == "" and err.count("\n") == 1 and "already_exists" in err
    rc, out, _ = await run_cli(
        capsys, "tenant", "config", t, *a, "--config", "compaction_threshold=3"
    )
    assert (
        rc == 0 and "compaction_threshold = 3" in out and "checkpoint_distance = 268435456" in out
    )

    rc, out, _ = await run_cli(capsys, "timeline", "create", t, *a, "--start-lsn", "0/10")
    assert rc == 0
    tl = out.strip()
    rc, out, err = await run_cli(capsys, "put", t, tl, KEY, "17", "--image", "hello", *a)
    assert rc == 0 and "last_record_lsn 0/11" in out, err
    rc, out, err = await run_cli(
        capsys,
        "put",
        t,
        tl,
        KEY2,
        "18",
        "--test-append",
        "a",
        "--will-init",
        *a,
        "--record",
        KEY2,
        "19",
        "test:b",
        "--record",
        KEY,
        "19",
        "hex:00ff",
        "--json",
    )
    assert rc == 0, err
    assert json.loads(out) == {"last_record_lsn": 19, "disk_consistent_lsn": 16, "skipped": 0}
    rc, out, _ = await run_cli(capsys, "get", t, tl, KEY, "18", *a)
    assert (rc, out) == (0, "hello\n")
    rc, out, _ = await run_cli(capsys, "get", t, tl, KEY, "19", *a)
    assert (rc, out) == (0, "00ff\n")  # not UTF-8: shown as hex
    rc, out, _ = await run_cli(capsys, "get", t, tl, KEY2, "19", *a, "--hex")
    assert (rc, out) == (0, b"ab".hex() + "\n")
    rc, out, err = await run_cli(capsys, "get", t, tl, KEY2, "17", *a)
    assert rc == 0 and out == "" and "no record" in err
    rc, out, _ = await run_cli(capsys, "get", t, tl, KEY2, "17", *a, "--json")
    assert json.loads(out) == {"value": None}
    rc, out, _ = await run_cli(capsys, "get", t, tl, KEY2, "19", *a, "--history", "--json")
    hist = json.loads(out)
    assert hist["image"] is None and [r[0] for r in hist["records"]] == [18, 19]
    rc, out, err = await run_cli(capsys, "get", t, tl, KEY2, "20", *a)
    assert rc == 1 and "bad_request" in err

    rc, out, _ = await run_cli(capsys, "flush", t, tl, *a)
    assert (rc, out) == (0, "disk_consistent_lsn 0/13\n")
    rc, out, _ = await run_cli(capsys, "status", *a)
    assert rc == 0 and f"tenant {t}" in out and "layers l0=1" in out and "io_engine std-fs" in out
    rc, out, _ = await run_cli(capsys, "status", t, *a, "--json")
    st = json.loads(out)
    assert [x["tenant_id"] for x in st["tenants"]] == [t]
    rc, out, err = await run_cli(capsys, "compact", t, tl, *a, "--json")
    # One L0 is below compaction_threshold (3) and image_creation_threshold: nothing to do.
    assert rc == 0 and json.loads(out) == {"layers_created": 0, "layers_removed": 0}, err
    # gc: the default horizon (64 MiB of LSN) keeps the cutoff at start_lsn (0/10) ...
    rc, out, err = await run_cli(capsys, "gc", t, tl, *a)
    assert (rc, out) == (0, "gc_cutoff_lsn 0/10, layers removed 0\n"), err
    # ... a horizon of 2 moves it to last_record_lsn - 2 = 0x11; reads below are lsn_too_old.
    rc, out, err = await run_cli(capsys, "tenant", "config", t, *a, "--config", "gc_horizon=2")
    assert rc == 0 and "gc_horizon = 2" in out, err
    rc, out, err = await run_cli(capsys, "gc", t, tl, *a, "--json")
    assert rc == 0 and json.loads(out) == {"layers_removed": 0, "gc_cutoff_lsn": 0x11}, err
    rc, out, err = await run_cli(capsys, "get", t, tl, KEY, "16", *a)
    assert rc == 1 and "lsn_too_old" in err
    rc, out, _ = await run_cli(capsys, "get", t, tl, KEY, "17", *a)
    assert (rc, out) == (0, "hello\n")
    rc, out, _ = await run_cli(capsys, "status", t, *a, "--json")
    assert json.loads(out)["tenants"][0]["timelines"][0]["gc_cutoff_lsn"] == 0x11
    rc, out, _ = await run_cli(capsys, "status", t, *a)
    assert rc == 0 and "gc_cutoff_lsn 0/11" in out
    rc, out, err = await run_cli(capsys, "status", "9" * 32, *a)
    assert rc == 1 and "tenant_not_found" in err


async def test_addr_from_data_dir_and_connection_errors(
    srv: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "pageserver.toml").write_text(f'listen_addr = "{srv.addr}"\n')
    rc, out, err = await run_cli(capsys, "status", "-D", str(tmp_path))
    assert rc == 0 and "no tenants" in out, err
    missing = "unix:" + os.path.join(os.path.dirname(srv.path), "absent.sock")
    rc, out, err = await run_cli(capsys, "status", "--addr", missing)
    assert (
        rc == 1 and err.startswith("pageserver: error: cannot connect to") and err.count("\n") == 1
    )
    with pytest.raises(SystemExit) as ei:
        cli.main(["get", "a" * 32, "b" * 32, "not-a-key", "1", "--addr", srv.addr])
    assert ei.value.code == 2


async def test_feed_from_files(
    srv: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = ("--addr", srv.addr)
    t, tl = "1" * 32, "2" * 32
    async with await Client.connect(srv.addr) as c:
        await c.request("tenant_create", tenant_id=t)
        await c.request("timeline_create", tenant_id=t, timeline_id=tl)
    keys = [bytes(17) + bytes([i]) for i in range(10)]
    records = [(keys[i % 10], 1 + i // 3, encode_value(Image(b"v%d" % i))) for i in range(300)]
    mp = tmp_path / "r.msgpack"
    with open(mp, "wb") as f:
        for k, lsn, v in records[:150]:
            f.write(msgpack.packb([k, lsn, v], use_bin_type=True))
    jl = tmp_path / "r.jsonl"
    # LSNs as a number or in the client commands' text forms (HI/LO, 0x hex, decimal).
    forms = (lambda n: n, lambda n: f"0/{n:X}", hex, str)
    jl.write_text(
        "".join(
            json.dumps({"key": k.hex(), "lsn": forms[i % 4](lsn), "value": v.hex()}) + "\n"
            for i, (k, lsn, v) in enumerate(records[150:])
        )
    )
    rc, out, err = await run_cli(
        capsys, "feed", t, tl, "--file", str(mp), *a, "--json", "--batch", "7"
    )
    assert rc == 0, err
    assert json.loads(out)["records"] == 150
    rc, out, err = await run_cli(
        capsys, "feed", t, tl, "--file", str(jl), *a, "--flush", "--batch", "50"
    )
    assert rc == 0 and out.startswith("fed 150 records"), err
    # Re-running a finished feed resends only the records at last_record_lsn (replaced).
    rc, out, err = await run_cli(capsys, "feed", t, tl, "--file", str(jl), *a, "--json")
    s = json.loads(out)
    assert rc == 0 and s["records_sent"] <= 3 and s["records"] == 150
    async with await Client.connect(srv.addr) as c:
        latest: dict[bytes, bytes] = {}
        for k, _, v in records:
            latest[k] = v[12:]
        for k in keys:
            assert await c.get(t, tl, k, 100) == latest[k]
    bad = tmp_path / "bad.jsonl"
    bad_lsn = json.dumps({"key": keys[0].hex(), "lsn": "0/zz", "value": ""})
    for line in ('{"key": "zz", "lsn": 1, "value": ""}', bad_lsn):
        bad.write_text(line + "\n")
        rc, out, err = await run_cli(capsys, "feed", t, tl, "--file", str(bad), *a)
        assert rc == 1 and "bad.jsonl:1: bad record" in err


async def test_feed_generator_then_test_kind(
    srv: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    a = ("--addr", srv.addr)
    t, tl = "3" * 32, "4" * 32
    async with await Client.connect(srv.addr) as c:
        await c.request("tenant_create", tenant_id=t)
        await c.request("timeline_create", tenant_id=t, timeline_id=tl, start_lsn=5)
    rc, out, err = await run_cli(
        capsys,
        "feed",
        t,
        tl,
        *a,
        "--count",
        "500",
        "--keys",
        "20",
        "--kind",
        "test",
        "--value-size",
        "10",
        "--records-per-lsn",
        "2",
        "--start-lsn",
        "6",  # the timeline starts at 5: the stream goes above it
        "--json",
        "--flush",
    )
    assert rc == 0, err
    s = json.loads(out)
    assert s["records"] == 500 and s["disk_consistent_lsn"] == 6 + 249
    g = FeedGenerator(
        count=500, keys=20, kind="test", value_size=10, start_lsn=6, records_per_lsn=2
    )
    async with await Client.connect(srv.addr) as c:
        k = g.key_index(499)
        hist = [
            (g.lsn_of(i), g.will_init(i), g.payload(i)) for i in range(500) if g.key_index(i) == k
        ]
        start = max(i for i, e in enumerate(hist) if e[1])
        assert await c.get(t, tl, g.key(k), 255) == b"".join(e[2] for e in hist[start:])
    with pytest.raises(SystemExit):
        cli.main(["feed", t, tl, "--kind", "nope"])
    rc, out, err = await run_cli(capsys, "feed", t, tl, *a, "--keys", "0")
    assert rc == 1 and "keys >= 1" in err


_BAD_COUNTS = [
    ("--window", "0"),
    ("--window", "-1"),
    ("--batch", "0"),
    ("--batch-bytes", "0"),
    ("--batch-bytes", "-5"),
    ("--batch", "many"),
]


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        *[("feed", o, v) for o, v in _BAD_COUNTS],
        *[("compare-engines", o, v) for o, v in _BAD_COUNTS],
        ("feed", "--retry-timeout", "-1"),
        ("feed", "--retry-timeout", "nan"),
    ],
)
def test_workload_counts_must_be_positive(command: str, option: str, value: str) -> None:
    """The real process: a usage error naming the option, exit 2, no traceback and nothing
    sent (no daemon listens at the address). ``--window 0`` used to end in a ValueError
    traceback; ``--batch 0`` and ``--batch-bytes -5`` were taken (one LSN per put)."""
    args = [PAGESERVER, command, option, value]
    if command == "feed":
        args[2:2] = ["3" * 32, "4" * 32, "--addr", "unix:/nonexistent/ps.sock"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert f"argument {option}: " in p.stderr
    assert "Traceback" not in p.stderr


async def test_run_feed_refuses_counts_below_one() -> None:
    for kw in ({"window": 0}, {"batch_records": 0}, {"batch_bytes": -1}, {"retry_timeout": -1.0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            await run_feed(
                "unix:/nonexistent/ps.sock", None, "3" * 32, "4" * 32,
                FeedGenerator(count=1), **kw,  # type: ignore[arg-type]
            )  # fmt: skip


async def test_feed_gives_up_on_a_put_the_server_refuses_as_too_large(
    srv: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """A put above the server's max_frame_bytes (1 MiB here) ends with the connection
    closed: feed used to reconnect and resend it for ever (each reconnect succeeded, so
    --retry-timeout never applied). Now it gives up after --retry-timeout without a put
    acknowledged, saying why; records that fit are then fed as usual."""
    a = ("--addr", srv.addr)
    t, tl = "5" * 32, "6" * 32
    async with await Client.connect(srv.addr) as c:
        await c.request("tenant_create", tenant_id=t)
        await c.request("timeline_create", tenant_id=t, timeline_id=tl, start_lsn=0)
    # A process of its own, with a timeout: a feed that never gives up fails here (a
    # thread running cli.main could not be cancelled).
    def feed() -> subprocess.CompletedProcess[str]:
        argv = ["feed", t, tl, *a, "--count", "1", "--value-size", str(2 << 20)]
        return subprocess.run(
            [PAGESERVER, *argv, "--retry-timeout", "1", "--no-progress"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    p = await trio.to_thread.run_sync(feed)
    assert p.returncode == 1
    assert "no put acknowledged" in p.stderr and "max_frame_bytes" in p.stderr, p.stderr
    rc, out, err = await run_cli(capsys, "feed", t, tl, *a, "--count", "300", "--json")
    assert rc == 0, err
    assert json.loads(out)["records"] == 300


LAYER_NAME = (
    "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
    "__0000000000000001-0000000000000002"
)


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        # Not UTF-8 (the shell passes bytes): text for the server, a host name.
        ([b"status", b"--addr", b"\xff:6400"], 1, "not valid text"),
        # Config integers the wire (msgpack, 64 bits) cannot carry.
        (["tenant", "create", "--addr", "127.0.0.1:1", "--config", f"gc_horizon={2**70}"], 2,
         "out of the 64-bit range"),
        (["tenant", "create", "--addr", "127.0.0.1:1", "--config", f"gc_horizon={-(2**63) - 1}"],
         2, "out of the 64-bit range"),
        # An empty data directory would be the current one.
        (["run", "-D", ""], 2, "must not be empty"),
        # A value that cannot fit one put frame (the bench crashed on the broken pipe).
        (["bench", "--quick", "--large-value-size", "17000000"], 2, "fit one put frame"),
        (["bench", "--quick", "--value-size", str(16 << 20)], 2, "fit one put frame"),
    ],
)  # fmt: skip
def test_bad_arguments_end_in_one_line_not_a_traceback(
    tmp_path: Path, argv: list[str | bytes], status: int, says: str
) -> None:
    """From an audit of every command with bad values: each of these ended in a Python
    traceback (or, for ``run -D ''``, wrote pageserver.toml and tenants/ into the current
    directory). Run as the real process, in an empty directory."""
    p = subprocess.run([PAGESERVER, *argv], capture_output=True, timeout=60, cwd=tmp_path)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == status, err
    assert says in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_layer_ls_names_a_layer_it_cannot_open(tmp_path: Path) -> None:
    """A dangling symlink with a layer's name ended ``layer ls`` in a TypeError (its size
    is unknown); a directory with one was reported without its path."""
    d = tmp_path / "tl"
    d.mkdir()
    (d / LAYER_NAME).symlink_to(tmp_path / "gone")
    (d / LAYER_NAME.replace("0001-", "0003-").replace("0002", "0004")).mkdir()
    p = subprocess.run([PAGESERVER, "layer", "ls", str(d)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    rows = p.stdout.splitlines()
    assert len(rows) == 2 and all(r.endswith("INVALID") for r in rows), p.stdout
    assert rows[0].split()[-2] == "-"
    assert f"{d}/{LAYER_NAME.replace('0001-', '0003-').replace('0002', '0004')}" in p.stderr


@pytest.mark.parametrize("key", ["listen_addr", "metrics_addr"])
def test_compare_engines_refuses_a_bad_address(tmp_path: Path, key: str) -> None:
    p = subprocess.run(
        [PAGESERVER, "compare-engines", "--server-config", f"{key}=x", "--dir",
         str(tmp_path / "w"), "--count", "10"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{key}: invalid address 'x'" in p.stderr


async def test_text_that_is_not_utf8_ends_in_one_line(srv: Harness) -> None:
    """A token (or an image's text) that is not UTF-8 reaches the encoder of the request,
    once connected: it ended in a UnicodeEncodeError traceback."""
    t = "7" * 32
    for argv in (
        [b"status", b"--addr", srv.addr.encode(), b"--token", b"\xff"],
        [b"put", b"--addr", srv.addr.encode(), t.encode(), t.encode(), b"0" * 36, b"5",
         b"--image", b"\xfe"],
    ):  # fmt: skip

        def run(argv: list[bytes] = argv) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([PAGESERVER.encode(), *argv], capture_output=True, timeout=60)

        p = await trio.to_thread.run_sync(run)
        err = p.stderr.decode(errors="replace")
        assert p.returncode == 1 and "not valid text" in err and "Traceback" not in err, err


async def test_feed_resumes_after_the_last_lsn_when_the_server_has_it(
    srv: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops while the flush runs (the open layer is frozen, nothing of it
    durable yet) and the server stays up: it has every put the feed had acknowledged, so
    the feed resumes after their last LSN. Sending that LSN's records again failed the
    whole feed with lsn_out_of_order (below the open layer's start)."""
    t, tl = "8" * 32, "9" * 32
    async with await Client.connect(srv.addr) as c:
        await c.request("tenant_create", tenant_id=t)
        await c.request("timeline_create", tenant_id=t, timeline_id=tl, start_lsn=0)
    timeline = srv.mgr.timeline(t, tl)
    gate = trio.Event()
    real_flush_one = Timeline._flush_one

    async def gated_flush_one(self: Timeline, layer: Any) -> None:
        await gate.wait()
        await real_flush_one(self, layer)

    real_flush = Client.flush
    dropped: list[int] = []

    async def drop_while_flushing(self: Client, tenant_id: str, timeline_id: str) -> int:
        if not dropped:
            dropped.append(1)
            async with timeline._write_lock:
                await timeline._freeze_open_layer()
            raise ConnectionLost("dropped while the flush runs")
        gate.set()
        return await real_flush(self, tenant_id, timeline_id)

    monkeypatch.setattr(Timeline, "_flush_one", gated_flush_one)
    monkeypatch.setattr(Client, "flush", drop_while_flushing)
    gen = FeedGenerator(count=600, keys=50, value_size=20, start_lsn=1, records_per_lsn=3)
    last = gen.lsn_of(gen.count - 1)
    with trio.fail_after(60):
        stats = await run_feed(srv.addr, None, t, tl, gen, flush=True, retry_timeout=10)
    assert dropped and stats.reconnects == 1
    assert stats.disk_consistent_lsn == last and stats.last_record_lsn == last


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # Other scripts' digits, signs and underscores, which int() takes.
        (["get", "7" * 32, "7" * 32, "0" * 36, "١٢", "--addr", "127.0.0.1:1"], "invalid LSN"),
        (["get", "7" * 32, "7" * 32, "0" * 36, "0x_1", "--addr", "127.0.0.1:1"], "invalid LSN"),
        (["get", "7" * 32, "7" * 32, "0" * 36, "1_000", "--addr", "127.0.0.1:1"], "invalid LSN"),
        (["status", "--addr", "127.0.0.1:６４００"], "is not a number"),
        (["status", "--addr", "127.0.0.1:+6400"], "is not a number"),
        # An empty address used to fall back to the default one, and connect.
        (["status", "--addr", ""], "invalid address ''"),
        # Test-record options with an image were ignored.
        (["put", "7" * 32, "7" * 32, "0" * 36, "5", "--image", "x", "--will-init",
          "--addr", "127.0.0.1:1"], "apply to --test-append only"),
        (["put", "7" * 32, "7" * 32, "0" * 36, "5", "--image-hex", "00", "--only-if", "a",
          "--addr", "127.0.0.1:1"], "apply to --test-append only"),
    ],
)  # fmt: skip
def test_nonsense_is_refused_not_taken(argv: list[str], says: str) -> None:
    """Each of these was accepted (read as something else, or ignored)."""
    p = subprocess.run([PAGESERVER, *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode in (1, 2) and says in p.stderr and "Traceback" not in p.stderr, p.stderr
