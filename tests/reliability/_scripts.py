"""Run ``scripts/crashloop.py`` / ``scripts/faults.py`` as subprocesses and parse their JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run_script(name: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``scripts/<name> ARGS --json``; returns the JSON object, with ``_returncode``."""
    p = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(SCRIPTS.parent),
    )
    try:
        result: dict[str, Any] = json.loads(p.stdout)
    except ValueError:
        pytest.fail(f"{name} {' '.join(args)} exited {p.returncode} without JSON:\n{p.stdout}\n{p.stderr[-5000:]}")
    result["_returncode"] = p.returncode
    result["_stderr"] = p.stderr[-3000:]
    return result


def fail_refused(reason: str) -> None:
    """The script could not set its fault up (a mount refused, no ``mkfs.ext4``): a failure,
    never a skip. The tests run as root on a machine with loop devices (CI's too); only a
    kernel refusing io_uring may skip a test."""
    pytest.fail(f"the fault could not be set up (tests run as root, with loop devices): {reason}")


def describe_failures(result: dict[str, Any]) -> str:
    lines = [f"{f.get('invariant')}: {str(f.get('detail'))[:1500]}" for f in result.get("failures", [])]
    return "\n".join(lines) or "(no invariant failures)"
