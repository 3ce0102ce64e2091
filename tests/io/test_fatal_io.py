"""Fatal I/O errors abort the process after logging; an fsync is never retried."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers.crash import child_env, run_child


def test_fsync_eio_aborts_once(engine_kind: str, tmp_path: Path) -> None:
    res = run_child(
        ["fsync", str(tmp_path / "data")], child_env(engine_kind, "virtual-file-fsync=return(5)")
    )
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stderr)
    assert "fsync returned" not in res.stdout
    assert res.stderr.count("HIT virtual-file-fsync") == 1
    assert "fatal io error" in res.stderr
    assert "errno=5" in res.stderr


def test_fsync_other_errno_propagates(engine_kind: str, tmp_path: Path) -> None:
    # ENOSPC (28) is not in the fatal set: it surfaces as an ordinary error.
    res = run_child(
        ["fsync", str(tmp_path / "data")], child_env(engine_kind, "virtual-file-fsync=return(28)")
    )
    assert res.returncode == 1, res.stderr
    assert "No space left on device" in res.stderr
    assert res.stderr.count("HIT virtual-file-fsync") == 1


def test_open_for_writing_eio_aborts(engine_kind: str, tmp_path: Path) -> None:
    """An open that may write failing with EIO (a file system that shut down) aborts, as a
    failed write does; the daemon used to stay up, failing every put and retrying its flush
    for ever (found by scripts/faults.py --kind eio-ext4)."""
    res = run_child(
        ["open", str(tmp_path / "new"), "rw"], child_env(engine_kind, "virtual-file-open=return(5)")
    )
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stderr)
    assert "fatal io error" in res.stderr and "op=open" in res.stderr.replace("'", "")
    assert "opened" not in res.stdout


def test_open_read_only_eio_and_other_errnos_propagate(engine_kind: str, tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"x")
    ro = run_child(
        ["open", str(tmp_path / "old"), "ro"], child_env(engine_kind, "virtual-file-open=return(5)")
    )
    assert ro.returncode == 1 and "Input/output error" in ro.stderr, (ro.returncode, ro.stderr)
    rw = run_child(
        ["open", str(tmp_path / "new"), "rw"], child_env(engine_kind, "virtual-file-open=return(13)")
    )
    assert rw.returncode == 1 and "Permission denied" in rw.stderr, (rw.returncode, rw.stderr)
