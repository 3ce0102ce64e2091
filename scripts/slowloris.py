#!/usr/bin/env python3
"""Hostile clients against a real daemon: many connections stalled mid-frame (slow loris),
while a well-behaved client keeps asking ``status`` and its latency is recorded.

A ``pageserver run`` daemon (``--engine``; ``auth_token`` set with ``--auth``) listens on
TCP. For each scenario, ``--connections`` peers connect and stall in one phase:

    header   1-3 bytes of a frame's 4-byte length, then nothing
    body     a whole header announcing a frame (``--body-size``: 64 B .. max_frame_bytes
             in turn, or all max_frame_bytes) and part of its body (``--body-sent``, 60 KiB,
             or all but one byte of a smaller frame), then nothing
    idle     connected, nothing sent

(with ``--auth``, every phase twice: before any ``hello``, and after a successful one).
They stay for ``--duration`` seconds; then each sends one more byte and closes. All the
while a separate process runs :class:`pageserver.client.Client` ``status`` round trips in
a loop (one connection, reconnecting after a failure) and reports each one's latency, so
the figures are the server's and not this attacker's event loop. Afterwards a fresh
client must still be served (hello, status, put, get), and the daemon must stop on
SIGTERM.

Reported per scenario: stalled peers opened, peers the server closed, the good client's
status p50/p99/max and failures (while the peers connect, while they hold, and while they
send their last byte and close; a round trip counts in every window it overlaps), the
daemon's open file descriptors after the peers left. Exit status 1 if the good client's
p99 exceeds ``--p99-limit-ms`` (50) over the hold and close windows together or in any one
of them, if any of its round trips failed (``--rt-timeout``) at any time, if a window
passed without a single answer, or if the daemon does not serve or stop afterwards.

    .venv/bin/python scripts/slowloris.py --engine trio-uring --connections 1000 --phase all
    .venv/bin/python scripts/slowloris.py --engine std-fs --auth --duration 10 --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("pageserver") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402
import trio  # noqa: E402

PHASES = ("header", "body", "idle")
TENANT = "5105105105105105105105105105ad01"
TIMELINE = "5105105105105105105105105105ad02"
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Body-phase frame sizes, used in turn (the last is the configured maximum).
BODY_SIZES = (64, 4096, 64 * 1024, 1024 * 1024, MAX_FRAME_BYTES)


def frame(obj: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def pageserver_command() -> list[str]:
    exe = Path(sys.executable).with_name("pageserver")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "pageserver.cli"]


def raise_nofile(n: int) -> int:
    """Raise RLIMIT_NOFILE (soft and, as root, hard) to at least ``n``; returns the soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return soft
    want_hard = hard if hard == resource.RLIM_INFINITY or hard >= n else n
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, want_hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    k = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def latency_stats(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles over every round trip, failed ones included with the time they took
    (at least ``--rt-timeout``): a client that got no answer waited that long."""
    lat = [s["lat"] * 1000 for s in samples]
    return {
        "n": len(samples),
        "failures": sum(1 for s in samples if not s["ok"]),
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "max_ms": round(max(lat), 3) if lat else math.nan,
        "errors": sorted({s["err"] for s in samples if not s["ok"]})[:5],
    }


# ---------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, engine: str, token: str | None, nofile: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="psl", dir="/tmp"))
        self.data = self.root / "d"
        self.data.mkdir()
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.token = token
        toml = (
            f'listen_addr = "{self.addr}"\nmetrics_addr = ""\nno_sync = true\n'
            f"max_frame_bytes = {MAX_FRAME_BYTES}\n"
        )
        if token:
            toml += f'auth_token = "{token}"\n'
        (self.data / "pageserver.toml").write_text(toml)
        self.log_path = self.root / "daemon.log"
        env = dict(os.environ, PAGESERVER_VIRTUAL_FILE_IO_ENGINE=engine)

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*pageserver_command(), "run", "-D", str(self.data)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, env=env, preexec_fn=limits,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"daemon did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def fds(self) -> int | None:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return None

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
            stopped = True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            stopped = False
        return {"rc": rc, "stopped_on_sigterm": stopped, "seconds": round(time.monotonic() - t0, 2)}

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The good client (a separate process: its latencies are not our event loop's)
# ---------------------------------------------------------------------------------------


async def good_client_main(
    addr: str, token: str | None, interval: float, rt_timeout: float
) -> None:
    """Status round trips until stdin closes; one JSON line per round trip on stdout."""
    from pageserver.client import Client

    out = sys.stdout
    stop = trio.Event()

    async def watch_stdin() -> None:
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_stdin)
        client: Any = None
        while not stop.is_set():
            t0 = time.monotonic()
            err = ""
            try:
                with trio.fail_after(rt_timeout):
                    if client is None:
                        client = await Client.connect(addr, token)
                    await client.status()
            except trio.TooSlowError:
                err = f"timeout ({rt_timeout}s)"
            except Exception as e:  # any failure: record, reconnect
                err = f"{type(e).__name__}: {e}"[:200]
            lat = time.monotonic() - t0
            if err and client is not None:
                await client.aclose()
                client = None
            out.write(json.dumps({"t": t0, "lat": lat, "ok": not err, "err": err}) + "\n")
            out.flush()
            await trio.sleep(interval)
        if client is not None:
            await client.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------
# The stalled peers
# ---------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    phase: str
    after_hello: bool
    opened: int = 0
    connect_failed: int = 0
    hello_failed: int = 0
    server_closed: int = 0
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    fds_after: int | None = None
    open_seconds: float = 0.0


async def stall_peer(
    idx: int, sc: Scenario, addr: tuple[str, int], token: str | None, rng: random.Random,
    connect_limit: trio.Semaphore, ready: list[int], release: trio.Event,
    body_sizes: tuple[int, ...], body_sent: int,
) -> None:  # fmt: skip
    async with connect_limit:
        try:
            with trio.fail_after(30):
                stream = await trio.open_tcp_stream(*addr)
        except (OSError, trio.TooSlowError):
            sc.connect_failed += 1
            ready[0] += 1
            return
    closed_by_server = False
    try:
        if sc.after_hello:
            hello: dict[str, Any] = {"op": "hello", "id": 1}
            if token:
                hello["token"] = token
            try:
                with trio.fail_after(30):
                    await stream.send_all(frame(hello))
                    got = await stream.receive_some(65536)
                if not got or b"ok" not in got:
                    raise OSError("no hello reply")
            except (OSError, trio.BrokenResourceError, trio.TooSlowError):
                sc.hello_failed += 1
                ready[0] += 1
                return
        partial = b""
        extra = b"\0"
        if sc.phase == "header":
            hdr = struct.pack(">I", 20)  # a small frame's length, never completed
            partial = hdr[: rng.randint(1, 3)]
        elif sc.phase == "body":
            size = body_sizes[idx % len(body_sizes)]
            body = frame({"op": "status", "id": idx, "pad": b"x" * size})[4 : 4 + size]
            cut = min(size - 1, body_sent)
            partial = struct.pack(">I", size) + body[:cut]
            extra = body[cut : cut + 1]
        try:
            if partial:
                await stream.send_all(partial)
        except (OSError, trio.BrokenResourceError):
            sc.server_closed += 1
            ready[0] += 1
            return
        sc.opened += 1
        ready[0] += 1

        async def watch() -> None:
            nonlocal closed_by_server
            try:
                while await stream.receive_some(65536):
                    pass
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            closed_by_server = True
            sc.server_closed += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await release.wait()
            nursery.cancel_scope.cancel()
        if not closed_by_server:
            try:
                await stream.send_all(extra)  # one more byte, then close
            except (OSError, trio.BrokenResourceError):
                pass
    finally:
        await trio.aclose_forcefully(stream)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


async def serves(addr: str, token: str | None) -> tuple[bool, str]:
    """A fresh client: hello, status, put, get, with a deadline."""
    from pageserver.client import Client

    key = bytes(17) + b"\x07"
    value = b"slowloris"
    try:
        with trio.fail_after(20):
            async with await Client.connect(addr, token) as c:
                await c.status()
                st = await c.timeline_status(TENANT, TIMELINE)
                lsn = int(st["last_record_lsn"]) + 1
                # An Image Value (SPEC section 1): u32 tag 0, u64 len, the bytes.
                encoded = struct.pack(">IQ", 0, len(value)) + value
                await c.put(TENANT, TIMELINE, [(key, lsn, encoded)])
                got = await c.get(TENANT, TIMELINE, key, lsn)
                if got != value:
                    return False, f"get returned {got!r}"
        return True, ""
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"[:300]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from pageserver.client import Client

    token = "slowloris-token" if args.auth else None
    nofile = raise_nofile(args.connections * 2 + 1024)
    daemon = Daemon(args.engine, token, max(nofile, args.connections + 1024))
    report: dict[str, Any] = {
        "engine": args.engine, "connections": args.connections, "duration": args.duration,
        "auth": bool(args.auth), "p99_limit_ms": args.p99_limit_ms, "nofile": nofile,
    }  # fmt: skip
    good: subprocess.Popen[bytes] | None = None
    samples: list[dict[str, Any]] = []
    try:
        await trio.to_thread.run_sync(daemon.wait_ready)
        async with await Client.connect(daemon.addr, token) as c:
            report["io_engine"] = c.server_info.get("io_engine")
            await c.request("tenant_create", tenant_id=TENANT)
            await c.request("timeline_create", tenant_id=TENANT, timeline_id=TIMELINE)
        if report["io_engine"] != args.engine:
            raise RuntimeError(f"daemon runs {report['io_engine']}, not {args.engine}")
        report["daemon_fds_idle"] = daemon.fds()

        good = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--good-client", daemon.addr,
             "--interval", str(args.interval), "--rt-timeout", str(args.rt_timeout)]
            + (["--token", token] if token else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert good.stdout is not None
        reader = trio.lowlevel.FdStream(os.dup(good.stdout.fileno()))

        async def read_samples() -> None:
            buf = b""
            while True:
                chunk = await reader.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                samples.extend(json.loads(line) for line in lines if line.strip())

        phases = PHASES if args.phase == "all" else (args.phase,)
        scenarios = []
        for ph in phases:
            if args.auth:
                scenarios.append(Scenario(f"{ph}-before-hello", ph, False))
                scenarios.append(Scenario(f"{ph}-after-hello", ph, True))
            else:
                scenarios.append(Scenario(ph, ph, False))

        body_sizes: tuple[int, ...]
        if args.body_size == "mixed":
            body_sizes = BODY_SIZES
        elif args.body_size == "max":
            body_sizes = (MAX_FRAME_BYTES,)
        else:
            body_sizes = (int(args.body_size),)
        report["body_sizes"] = body_sizes
        host, port = daemon.addr.rsplit(":", 1)
        rng = random.Random(args.seed)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_samples)
            t0 = time.monotonic()
            await trio.sleep(args.baseline)
            baseline = (t0, time.monotonic())
            for sc in scenarios:
                ready = [0]
                release = trio.Event()
                limit = trio.Semaphore(args.connect_concurrency)
                t_open = time.monotonic()
                async with trio.open_nursery() as peers:
                    for i in range(args.connections):
                        peers.start_soon(stall_peer, i, sc, (host, int(port)), token, rng, limit,
                                         ready, release, body_sizes, args.body_sent)  # fmt: skip
                    while ready[0] < args.connections:
                        await trio.sleep(0.01)
                    t_hold = time.monotonic()
                    sc.open_seconds = round(t_hold - t_open, 2)
                    sc.windows["opening"] = (t_open, t_hold)
                    await trio.sleep(args.duration)
                    t_rel = time.monotonic()
                    sc.windows["hold"] = (t_hold, t_rel)
                    release.set()
                await trio.sleep(args.settle)
                sc.windows["one-more-byte-and-close"] = (t_rel, time.monotonic())
                sc.fds_after = daemon.fds()
                if not args.json:
                    print(f"  {sc.name}: {sc.opened} peers stalled for {args.duration}s "
                          f"(opened in {sc.open_seconds}s)", file=sys.stderr)  # fmt: skip
            ok, why = await serves(daemon.addr, token)
            report["serves_after"] = ok
            report["serves_after_error"] = why
            # let the good client finish its last round trip, then stop it
            await trio.sleep(0.2)
            assert good.stdin is not None
            good.stdin.close()
            with trio.move_on_after(10):
                while good.poll() is None:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        await reader.aclose()

        def window(a: float, b: float) -> list[dict[str, Any]]:
            # Every round trip that overlaps the window: one that started before the peers
            # stalled and was stuck throughout counts where it was stuck.
            return [s for s in samples if s["t"] < b and s["t"] + s["lat"] >= a]

        report["baseline"] = latency_stats(window(*baseline))
        rows = []
        measured: list[dict[str, Any]] = []
        seen: set[int] = set()
        starved: list[str] = []
        for sc in scenarios:
            row: dict[str, Any] = {
                "scenario": sc.name, "opened": sc.opened, "connect_failed": sc.connect_failed,
                "hello_failed": sc.hello_failed, "server_closed": sc.server_closed,
                "open_seconds": sc.open_seconds, "daemon_fds_after": sc.fds_after,
            }  # fmt: skip
            for wname, (a, b) in sc.windows.items():
                w = window(a, b)
                row[wname] = latency_stats(w)
                if wname != "opening" or args.count_opening:
                    measured.extend(x for x in w if id(x) not in seen)
                    seen.update(id(x) for x in w)
                    if not w and b - a > 0.5:
                        starved.append(f"{sc.name}/{wname}: no round trip in {b - a:.1f}s")
            rows.append(row)
        report["scenarios"] = rows
        report["overall"] = latency_stats(measured)
        report["all_samples"] = latency_stats(samples)
        report["starved_windows"] = starved
    finally:
        if good is not None and good.poll() is None:
            good.kill()
            good.wait()
        report["daemon_alive"] = daemon.proc.poll() is None
        report["daemon_stop"] = daemon.stop()
        report["daemon_log_tail"] = daemon.log()[-1500:]
        daemon.cleanup()
    ov = report["overall"]
    problems = []
    everything = report.get("all_samples", {})
    if everything.get("failures"):
        problems.append(
            f"{everything['failures']} good-client round trips failed: {everything['errors']}"
        )
    if not ov["n"]:
        problems.append("no good-client round trips were measured")
    elif not ov["p99_ms"] <= args.p99_limit_ms:
        problems.append(f"good-client p99 {ov['p99_ms']} ms > {args.p99_limit_ms} ms")
    # Per window too: a stalled client yields one slow sample where a served one yields
    # hundreds of fast ones, so a pooled p99 would hide a stall of a whole window.
    for row in report.get("scenarios", []):
        for wname in ("hold", "one-more-byte-and-close"):
            p99 = row[wname]["p99_ms"]
            if row[wname]["n"] and not p99 <= args.p99_limit_ms:
                problems.append(f"{row['scenario']}/{wname}: good-client p99 {p99} ms "
                                f"> {args.p99_limit_ms} ms")  # fmt: skip
    if report.get("starved_windows"):
        problems.append(f"the good client got no answer in: {report['starved_windows']}")
    if not report["serves_after"]:
        problems.append(f"not serving afterwards: {report['serves_after_error']}")
    stop = report["daemon_stop"]
    if not stop["stopped_on_sigterm"] or stop["rc"] != 0:
        problems.append(f"daemon stop: {stop}")
    report["problems"] = problems
    report["verdict"] = "FAIL" if problems else "PASS"
    return report


def print_report(r: dict[str, Any]) -> None:
    def fmt(s: dict[str, Any]) -> str:
        return (f"p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  max {s['max_ms']:.2f} ms  "
                f"n {s['n']}  failed {s['failures']}")  # fmt: skip

    print(f"slowloris: engine {r['engine']} (daemon says {r.get('io_engine')}), "
          f"{r['connections']} peers per scenario, {r['duration']}s each, auth {r['auth']}")  # fmt: skip
    if "baseline" in r:
        print(f"  baseline (no peers)            {fmt(r['baseline'])}")
    for row in r.get("scenarios", []):
        print(f"  {row['scenario']:<20} opened {row['opened']} (failed {row['connect_failed']}"
              f"+{row['hello_failed']}), server closed {row['server_closed']}, "
              f"daemon fds after {row['daemon_fds_after']}")  # fmt: skip
        for w in ("opening", "hold", "one-more-byte-and-close"):
            if w in row:
                print(f"    {w:<28} {fmt(row[w])}")
                if row[w]["errors"]:
                    print(f"      errors: {row[w]['errors']}")
    if "overall" in r:
        print(f"  overall (hold + close windows) {fmt(r['overall'])}")
        print(f"  whole run                      {fmt(r['all_samples'])}")
    print(f"  serves afterwards: {r.get('serves_after')} {r.get('serves_after_error', '')}")
    print(f"  daemon stop: {r['daemon_stop']}")
    for p in r.get("problems", []):
        print(f"  PROBLEM: {p}")
    print(f"slowloris: {r.get('verdict', 'FAIL')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--engine", default="std-fs", choices=("std-fs", "trio-uring"))
    p.add_argument("--connections", type=int, default=1000, help="stalled peers per scenario")
    p.add_argument("--duration", type=float, default=10.0, help="seconds each scenario holds")
    p.add_argument("--phase", default="all", choices=(*PHASES, "all"))
    p.add_argument(
        "--auth",
        action="store_true",
        help="set auth_token; every phase before and after a successful hello",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--p99-limit-ms", type=float, default=50.0)
    p.add_argument(
        "--interval", type=float, default=0.005, help="pause between the good client's round trips"
    )
    p.add_argument(
        "--rt-timeout",
        type=float,
        default=5.0,
        help="a good-client round trip slower than this fails",
    )
    p.add_argument("--baseline", type=float, default=1.0, help="seconds measured with no peers")
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds measured after the peers' last byte and close",
    )
    p.add_argument(
        "--body-size",
        default="mixed",
        help="body phase: frame size announced: 'mixed' (64 B, 4 KiB, 64 KiB, "
        "1 MiB, 16 MiB in turn), 'max' (max_frame_bytes) or a number of bytes",
    )
    p.add_argument(
        "--body-sent",
        type=int,
        default=60 * 1024,
        help="body phase: body bytes sent (at most the frame size - 1)",
    )
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument(
        "--count-opening",
        action="store_true",
        help="count the window while peers connect in the verdict too",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--good-client", metavar="ADDR", help=argparse.SUPPRESS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.good_client:
        trio.run(good_client_main, args.good_client, args.token, args.interval, args.rt_timeout)
        return 0
    report = trio.run(run, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
