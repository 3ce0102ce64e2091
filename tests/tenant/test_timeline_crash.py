"""Crash safety of ingest: SIGKILL and failpoint exits, then restart and check invariants."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.children import ingest_key, ingest_value
from tests.helpers.crash import child_env, run_child, start_child
from tests.helpers.tenant import leftover_files, manager

TENANT, TIMELINE = "ab" * 16, "cd" * 16


def last_reported_dcl(stdout: str) -> int:
    dcls = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith(("dcl ", "flushed "))]
    return max(dcls) if dcls else -1


async def check_after_restart(engine_kind: str, data_dir: Path, reported: int) -> int:
    """Every record at or below the restarted dcl is readable; nothing above it exists."""
    async with manager(engine_kind, data_dir, flush_on_exit=False) as mgr:
        st = mgr.status()[0]["timelines"][0]
        dcl: int = st["disk_consistent_lsn"]
        assert dcl >= reported, (dcl, reported)
        assert st["last_record_lsn"] == dcl
        # The newest value of each key at or below dcl (keys cycle with period 97).
        for lsn in range(max(1, dcl - 96), dcl + 1):
            got = await mgr.get(TENANT, TIMELINE, ingest_key(lsn), dcl)
            assert got == ingest_value(lsn)[12:], (lsn, dcl)
        # Spot-check older LSNs too.
        for lsn in range(1, dcl + 1, max(1, dcl // 25)):
            assert await mgr.get(TENANT, TIMELINE, ingest_key(lsn), lsn) == ingest_value(lsn)[12:]
        names = [p.name for p in (data_dir / "tenants" / TENANT / "timelines" / TIMELINE).iterdir()]
        assert not leftover_files(names)
        return dcl


@pytest.mark.parametrize(
    "point", ["flush-before-dcl-update", "layer-before-rename", "layer-after-rename"]
)
async def test_failpoint_exit_during_flush(engine_kind: str, tmp_path: Path, point: str) -> None:
    # A first run makes some layers durable; the second dies at its first flush.
    first = run_child(["ingest", str(tmp_path), "600"], child_env(engine_kind))
    assert first.returncode == 0, first.stderr
    reported = last_reported_dcl(first.stdout)
    assert reported == 600
    res = run_child(["ingest", str(tmp_path), "3000"], child_env(engine_kind, f"{point}=exit"))
    assert res.returncode == 1, res.stderr
    reported = max(reported, last_reported_dcl(res.stdout))
    dcl = await check_after_restart(engine_kind, tmp_path, reported)
    assert dcl < 3000
    # And ingest resumes from there.
    again = run_child(["ingest", str(tmp_path), "1500"], child_env(engine_kind))
    assert again.returncode == 0, again.stderr
    assert last_reported_dcl(again.stdout) >= 1500


async def kill_at_random_instants(
    engine_kind: str, tmp_path: Path, args: list[str], seed: int, lo: float, hi: float
) -> int:
    """Start the ingest child, SIGKILL it after a random delay, restart and check; 4 times.

    Returns the highest disk_consistent_lsn seen (never going backwards)."""
    rng = random.Random(seed)
    reported = -1
    for _ in range(4):
        proc = start_child(["ingest", str(tmp_path), "1000000", *args], child_env(engine_kind))
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(rng.uniform(lo, hi))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        reported = max(reported, last_reported_dcl(out))
        reported = await check_after_restart(engine_kind, tmp_path, reported)
    return reported


async def test_sigkill_at_random_instants(engine_kind: str, tmp_path: Path) -> None:
    assert await kill_at_random_instants(engine_kind, tmp_path, [], 42, 0.2, 1.2) > 0


async def test_sigkill_during_compaction(engine_kind: str, tmp_path: Path) -> None:
    """Kill at random instants while ingest, flushes and background compaction all run."""
    await kill_at_random_instants(engine_kind, tmp_path, ["compact"], 7, 0.3, 1.5)
    names = [p.name for p in (tmp_path / "tenants" / TENANT / "timelines" / TIMELINE).iterdir()]
    # Compaction really ran: L1 deltas (not spanning the whole key space) or image layers.
    assert any("__" in n and not n.startswith("0" * 36 + "-" + "F" * 36) for n in names) or any(
        n.count("__") == 1 and "-" not in n.split("__")[1] for n in names
    ), names
