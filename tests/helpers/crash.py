"""Helpers for tests that really crash a subprocess."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child_env(engine_kind: str, failpoints: str = "", extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PAGESERVER_VIRTUAL_FILE_IO_ENGINE"] = engine_kind
    env["PAGESERVER_FAILPOINTS"] = failpoints
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if extra:
        env.update(extra)
    return env


def run_child(args: list[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers.children", *args],
        env=dict(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_no_core,
    )


def start_child(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.children", *args],
        env=dict(env),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_no_core,
    )
