"""Real faults (``scripts/faults.py --short``) on each io engine: a full tmpfs, a full
loop-mounted ext4, and an ext4 shut down under the daemon (EIO).

They need root and loop devices; where the machine refuses a mount the script reports
``skipped``, and the test fails (it never skips).
"""

from __future__ import annotations

import pytest

from tests.reliability._scripts import describe_failures, fail_refused, run_script


def _run(engine_kind: str, kind: str, *extra: str) -> dict:  # type: ignore[type-arg]
    r = run_script(
        "faults.py", "--engine", engine_kind, "--kind", kind, "--short", "--seed", "7", *extra
    )
    if r["skipped"]:
        fail_refused(r["skipped"])
    assert r["failures"] == [], describe_failures(r)
    assert r["lost"] == 0
    assert r["ok"] and r["_returncode"] == 0, r["_stderr"]
    assert r["engine"] == engine_kind and r["rounds"] == 1
    assert r["records_verified"] > 500
    assert r["resumed_after_restart"] == 1
    return r["round_results"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["enospc-tmpfs", "enospc-ext4"])
def test_full_disk(engine_kind: str, kind: str) -> None:
    rnd = _run(engine_kind, kind)
    # The client saw the full disk as an error naming ENOSPC; the daemon survived it.
    assert rnd["first_error"] is not None
    assert rnd["error_mentions_enospc"], rnd["first_error"]
    assert rnd["daemon_survived_enospc"]
    # Issue 11.4: a full disk is survived without a restart.
    assert rnd["writes_resumed_without_restart"] is True
    restart = rnd["restart"]
    assert restart["dcl_after_restart"] >= rnd["dcl_reported_before_full"]
    assert restart["dcl_after_resume"] > restart["dcl_after_restart"]


@pytest.mark.parametrize("at", ["ingest", "after-flush"])
def test_eio_aborts_and_keeps_durable(engine_kind: str, at: str) -> None:
    # after-flush: the first I/O after the shutdown is the open of a new file (it used to
    # leave the daemon up, failing every put and retrying its flush for ever).
    rnd = _run(engine_kind, "eio-ext4", "--at", at)
    assert rnd["at"] == at
    assert rnd["daemon_aborted"], rnd
    assert rnd["daemon_exit_status"] == -6
    assert "fatal io error" in rnd["fatal_log_line"] and "errno=5" in rnd["fatal_log_line"]
    restart = rnd["restart"]
    assert restart["dcl_after_restart"] >= rnd["dcl_reported_before_shutdown"] > 0
    assert restart["resumed"]
