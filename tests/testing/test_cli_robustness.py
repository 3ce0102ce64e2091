"""Every client and layer command, run as the real ``pageserver`` process, in the situations
that used to end in a traceback: stdout closed by its reader, no daemon listening, a data
dir (or file) that does not exist; plus Ctrl-C in the middle of the output or of a request,
``| head`` on a long dump, and ``run`` on a data dir that cannot be created. Each ends with
at most one line on stderr and exit status 1 (Ctrl-C too), never a traceback.

The commands are read from the real parser, so a command added later is checked too (its
positional arguments are filled in by name; an unknown one fails here, asking for a value).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pageserver import cli
from pageserver.layers.value import Image, encode_value
from pageserver.testing import Daemon, TimelineRef
from tests.helpers.daemon import PAGESERVER

#: Commands that are neither client nor layer commands; tested elsewhere (compare-engines
#: below, with a closed stdout; run in tests/e2e; bench in tests/bench).
NOT_HERE = {("run",), ("bench",), ("compare-engines",)}
#: Options some commands need to be quick or valid.
EXTRA: dict[tuple[str, ...], list[str]] = {
    ("feed",): ["--count", "50", "--no-progress", "--retry-timeout", "0.2"],
}
#: The commands whose output is known to reach stdout against the live daemon (a closed
#: stdout must then end them quietly). Others (added later) run against a tenant that does
#: not exist and may end with one line about it instead.
WRITES_STDOUT = {
    ("tenant", "create"),
    ("tenant", "config"),
    ("timeline", "create"),
    ("put",),
    ("get",),
    ("status",),
    ("flush",),
    ("compact",),
    ("feed",),
    ("layer", "dump"),
    ("layer", "ls"),
}
KEY_COUNT = 3000
LAST_LSN = 10 + (KEY_COUNT - 1) // 100


def _leaf_commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append((path, parser))
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, (*path, name))

    walk(cli.build_parser(), ())
    return [(path, p) for path, p in found if path[:1] not in NOT_HERE and path not in NOT_HERE]


def _is_client(parser: argparse.ArgumentParser) -> bool:
    return any("--addr" in a.option_strings for a in parser._actions)


COMMANDS = _leaf_commands()


def test_every_command_is_a_client_or_a_layer_command() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {("layer", "dump"), ("layer", "ls"), ("status",), ("feed",), ("put",)} <= paths
    for path, parser in COMMANDS:
        assert _is_client(parser) or path[0] == "layer", path


@dataclass
class Live:
    daemon: Daemon
    timeline: TimelineRef
    layer: Path
    dead_dir: Path


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """A daemon with a timeline holding one layer file of KEY_COUNT entries, and a data dir
    whose config points at a socket nobody listens on."""
    d = Daemon("std-fs", metrics=False, checkpoint_distance=None)
    dead = Path(tempfile.mkdtemp(prefix="psdead", dir="/tmp"))
    try:
        d.start()
        tl = d.create_timeline()
        with d.client() as c:
            records = [
                (bytes(16) + k.to_bytes(2, "big"), 10 + k // 100, encode_value(Image(b"v" * 100)))
                for k in range(KEY_COUNT)
            ]
            for i in range(0, KEY_COUNT, 1000):
                c.put(tl.tenant_id, tl.timeline_id, records[i : i + 1000])
            c.flush(tl.tenant_id, tl.timeline_id)
        [layer] = tl.layer_files()
        (dead / "pageserver.toml").write_text(f'listen_addr = "unix:{dead}/absent.sock"\n')
        yield Live(d, tl, layer, dead)
    finally:
        d.cleanup()
        for p in dead.iterdir():
            p.unlink()
        dead.rmdir()


def _argv(path: tuple[str, ...], parser: argparse.ArgumentParser, live: Live) -> list[str]:
    """``path`` plus its required positionals, required options and EXTRA."""
    known = path in WRITES_STDOUT
    values = {
        "tenant_id": live.timeline.tenant_id if known else "9" * 32,
        "timeline_id": live.timeline.timeline_id if known else "8" * 32,
        "key": (bytes(16) + (7).to_bytes(2, "big")).hex().upper(),
        # put far above the fed LSNs: whatever ran before on this daemon, it is in order
        "lsn": "1000000" if path == ("put",) else str(LAST_LSN),
        "file": str(live.layer),
        "dir": str(live.timeline.path),
    }
    argv = list(path)
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        if action.nargs == "?":
            continue  # optional positionals (a random id, all tenants) are left out
        if action.dest not in values:
            pytest.fail(f"{' '.join(path)}: add a value for positional {action.dest!r}")
        argv.append(values[action.dest])
    for group in parser._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            argv += [first.option_strings[-1], *(["x"] if first.nargs != 0 else [])]
    return argv + EXTRA.get(path, [])


def _run(argv: list[str], *, stdout: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PAGESERVER, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def _closed_pipe() -> int:
    """The write end of a pipe whose read end is already closed (every write: EPIPE)."""
    r, w = os.pipe()
    os.close(r)
    return w


def _no_traceback(p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_closed_stdout_no_daemon_and_missing_dir(
    path: tuple[str, ...], parser: argparse.ArgumentParser, live: Live
) -> None:
    argv = _argv(path, parser, live)
    client = _is_client(parser)
    where = ["-D", live.daemon.data_dir] if client else []

    # 1. stdout closed by its reader: quiet, exit 1
    w = _closed_pipe()
    try:
        p = _run(argv + where, stdout=w)
    finally:
        os.close(w)
    _no_traceback(p)
    if path in WRITES_STDOUT:
        assert (p.returncode, p.stderr) == (1, ""), (argv, p.stderr)
    else:
        assert p.returncode == 1 and p.stderr in ("", p.stderr.splitlines()[0] + "\n"), p.stderr

    if client:
        # 2. no daemon listening: one line, exit 1
        p = _run(argv + ["-D", str(live.dead_dir)])
        _no_traceback(p)
        assert p.returncode == 1
        assert p.stderr.startswith("pageserver: error: ")
        assert f"cannot connect to unix:{live.dead_dir}/absent.sock" in p.stderr
        assert p.stderr.count("\n") == 1, p.stderr
        # 3. a data dir that does not exist: one line, exit 1
        p = _run(argv + ["-D", "/nonexistent/pageserver-data"])
        _no_traceback(p)
        assert (p.returncode, p.stderr) == (
            1,
            "pageserver: error: data directory /nonexistent/pageserver-data does not exist "
            "(--addr connects without one)\n",
        )
    else:
        # 2. layer commands need no daemon: they read the files
        p = _run(argv)
        _no_traceback(p)
        assert (p.returncode, p.stderr) == (0, "")
        # 3. a file or directory that does not exist: one line, exit 1
        missing = [
            a if a not in (str(live.layer), str(live.timeline.path)) else "/nonexistent/x"
            for a in argv
        ]
        p = _run(missing)
        _no_traceback(p)
        assert p.returncode == 1 and p.stderr.startswith("pageserver layer: /nonexistent/x: ")
        assert p.stderr.count("\n") == 1, p.stderr


def test_head_on_a_long_dump_exits_quietly(live: Live) -> None:
    proc = subprocess.Popen(
        [PAGESERVER, "layer", "dump", str(live.layer), "--values"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # | head -1
    proc.stdout.close()
    assert first.startswith("file:")
    rc = proc.wait(60)
    err = proc.stderr.read()
    assert (rc, err) == (1, "")


def _wait_until_pipe_full(fd: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the writer is blocked: the pipe (nearly) full and no longer filling."""
    capacity = fcntl.fcntl(fd, 1032)  # F_GETPIPE_SZ
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        buffered = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
        if buffered != last:
            last, since = buffered, time.monotonic()
        elif buffered > capacity // 2 and time.monotonic() - since > 0.3:
            return
        assert proc.poll() is None, "the dump ended before filling the pipe"
        assert time.monotonic() < deadline, f"{buffered} of {capacity} bytes in the pipe"
        time.sleep(0.01)


def test_ctrl_c_in_the_middle_of_the_output(live: Live) -> None:
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [PAGESERVER, "layer", "dump", str(live.layer), "--values"],
            stdout=w,
            stderr=subprocess.PIPE,
        )
        os.close(w)
        _wait_until_pipe_full(r, proc)  # blocked writing: nobody reads
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    finally:
        os.close(r)
    assert (rc, err) == (1, "pageserver: interrupted\n")


def test_ctrl_c_while_waiting_for_the_server(tmp_path: Path) -> None:
    sock_dir = tempfile.mkdtemp(prefix="pssilent", dir="/tmp")
    path = os.path.join(sock_dir, "s.sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen()
        srv.settimeout(60)
        proc = subprocess.Popen(
            [PAGESERVER, "status", "--addr", f"unix:{path}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = srv.accept()  # connected, hello sent; the reply never comes
        with conn:
            assert conn.recv(1 << 16)  # the hello frame
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    os.unlink(path)
    os.rmdir(sock_dir)
    assert (proc.returncode, out, err) == (1, "", "pageserver: interrupted\n")


def test_run_on_a_data_dir_that_cannot_be_created() -> None:
    p = _run(["run", "-D", "/proc/no-such-dir/data"])
    _no_traceback(p)
    assert (p.returncode, p.stderr) == (
        1,
        "pageserver: error: No such file or directory (/proc/no-such-dir)\n",
    )


def test_help_into_a_closed_pipe() -> None:
    w = _closed_pipe()
    try:
        p = _run(["--help"], stdout=w)
        q = _run(["layer", "dump", "--help"], stdout=w)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (0, "")
    assert (q.returncode, q.stderr) == (0, "")


def test_compare_engines_into_a_closed_pipe() -> None:
    w = _closed_pipe()
    try:
        p = _run(
            ["compare-engines", "--count", "300", "--sample-keys", "3", "--sample-lsns", "2"],
            stdout=w,
        )
    finally:
        os.close(w)
    _no_traceback(p)
    assert p.returncode == 1
    assert [line.split(":")[0] for line in p.stderr.splitlines()] == ["compare-engines"] * 2
