"""Crash-safe overwrite: whole old or whole new content after a crash at any point."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from pageserver import failpoints
from pageserver.io import IoContext
from tests.helpers.crash import child_env, run_child, start_child


def version_of(data: bytes) -> int:
    """Which version of the crashsafe child loop ``data`` is; fails on a mix."""
    assert data, "file is empty"
    version = len(data) - 100_000
    assert 1 <= version, len(data)
    assert data == bytes([version % 256]) * len(data), "mixed or torn content"
    return version


async def test_overwrite_replaces_content(io_ctx: IoContext, tmp_path: Path) -> None:
    path = tmp_path / "config-v1"
    await io_ctx.crashsafe_overwrite(str(path), b"old")
    assert path.read_bytes() == b"old"
    (tmp_path / "config-v1.___temp").write_bytes(b"stale garbage from a crash")
    await io_ctx.crashsafe_overwrite(str(path), b"new content")
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config-v1"]


async def test_failed_write_keeps_old_content(io_ctx: IoContext, tmp_path: Path) -> None:
    path = tmp_path / "metadata"
    await io_ctx.crashsafe_overwrite(str(path), b"old")
    failpoints.configure({"virtual-file-write": "return(28)"})  # ENOSPC
    with pytest.raises(OSError) as info:
        await io_ctx.crashsafe_overwrite(str(path), b"new")
    assert info.value.errno == 28
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata"]


@pytest.mark.parametrize(
    "point,action",
    [
        ("virtual-file-write", "exit"),
        ("crashsafe-after-write", "exit"),
        ("virtual-file-fsync", "exit"),
        ("crashsafe-before-rename", "exit"),
        ("crashsafe-after-rename", "exit"),
        ("crashsafe-before-rename", "panic"),
    ],
)
def test_crash_at_each_step(engine_kind: str, tmp_path: Path, point: str, action: str) -> None:
    path = tmp_path / "f"
    # Version 1 is written without failpoints; the crash hits the overwrite with version 2.
    ok = run_child(["crashsafe", str(path), "1", "1"], child_env(engine_kind))
    assert ok.returncode == 0, ok.stderr
    assert version_of(path.read_bytes()) == 1
    res = run_child(["crashsafe", str(path), "2", "2"], child_env(engine_kind, f"{point}={action}"))
    # "exit" is os._exit(1); "panic" is SIGABRT.
    assert res.returncode == (1 if action == "exit" else -signal.SIGABRT), res.stderr
    v = version_of(path.read_bytes())
    if point == "crashsafe-after-rename":
        assert v == 2
    else:
        assert v == 1
    # A new run removes the stale temp file first and succeeds.
    again = run_child(["crashsafe", str(path), "3", "3"], child_env(engine_kind))
    assert again.returncode == 0, again.stderr
    assert version_of(path.read_bytes()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_sigkill_at_random_instants(engine_kind: str, tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "f"
    first = 1
    for _ in range(6):
        proc = start_child(
            ["crashsafe", str(path), str(first), str(first + 100_000)], child_env(engine_kind)
        )
        assert proc.stdout is not None
        out = proc.stdout.readline()  # wait until the first version is on disk
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        # The rest through the same buffered reader: readline may have buffered more lines
        # than the first, and communicate() reads the raw descriptor, so it would never
        # see them (a loaded machine made the test read "wrote 57" with 62 on disk).
        out += proc.stdout.read()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        last_reported = out.strip().splitlines()[-1]
        v = version_of(path.read_bytes())
        # The file holds the last reported version or the one after it, never less.
        reported = int(last_reported.split()[1])
        assert v in (reported, reported + 1), (v, reported)
        first = v + 1


def test_error_after_rename_aborts(engine_kind: str, tmp_path: Path) -> None:
    """Once the rename is issued, a failing directory fsync may not be reported as "the
    overwrite failed" (callers would undo what the new content already describes): abort."""
    path = tmp_path / "f"
    assert run_child(["crashsafe", str(path), "1", "1"], child_env(engine_kind)).returncode == 0
    res = run_child(
        ["crashsafe", str(path), "2", "2"], child_env(engine_kind, "crashsafe-after-rename=return(24)")
    )
    assert res.returncode == -signal.SIGABRT, res.stderr
    assert "fatal io error" in res.stderr
    assert version_of(path.read_bytes()) == 2
