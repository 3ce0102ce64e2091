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
