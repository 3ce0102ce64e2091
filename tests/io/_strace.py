"""Running a child Python script under ``strace -f`` (tests that observe syscalls, not
assume them). CI (``PAGESERVER_REQUIRE_URING=1``) installs strace: there a missing or
refused strace fails the test instead of skipping it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pageserver.io import uring_required

REPO = Path(__file__).resolve().parents[2]


def strace_script(script: str, args: list[str], syscalls: str, out: Path, timeout: float) -> None:
    """``strace -f -qq -e trace=<syscalls> -o <out> python -c <script> <args...>`` from the
    repository root; asserts the child exited 0."""
    if shutil.which("strace") is None:
        if uring_required():
            pytest.fail("strace is not installed, and the observation is required here")
        pytest.skip("strace not installed")
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", f"trace={syscalls}", "-o", str(out)]
        + [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr and not uring_required():
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
