"""Running a child Python script under ``strace -f`` (tests that observe syscalls, not
assume them). A missing or refused strace fails the test, never skips it (``.ci/run``
installs strace)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def strace_script(script: str, args: list[str], syscalls: str, out: Path, timeout: float) -> None:
    """``strace -f -qq -e trace=<syscalls> -o <out> python -c <script> <args...>`` from the
    repository root; asserts the child exited 0."""
    # Never a skip (only a kernel refusing io_uring may skip a test): without strace, or
    # where it cannot trace, the observation this test is about cannot be made.
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed (apt-get install strace; .ci/run does)")
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", f"trace={syscalls}", "-o", str(out)]
        + [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
