"""The short crash loop (``scripts/crashloop.py --short``) on each io engine.

Fifteen daemon lifetimes on one data directory, ended by SIGKILL at random instants (of
the workload, and of a ``gc`` request), by failpoints (``exit`` and ``panic``) in the
flush, the layer rename, the crash-safe overwrite and garbage collection
(``gc-before-delete``), by a SIGKILL during startup and by a graceful SIGTERM; after every
restart the script checks startup, leftover files, layer validation, dcl, the GC cutoff
(never back; reads below it are ``lsn_too_old``) and reads at or above it against its
model. The ``--remote`` form adds a ``[remote_storage] local_path`` and checks, whenever no
daemon runs, that the newest ``index_part.json`` names only layer objects that exist.
"""

from __future__ import annotations

from typing import Any

from tests.reliability._scripts import describe_failures, run_script

SEED = "20240601"


def check_common(r: dict[str, Any], engine_kind: str) -> None:
    assert r["failures"] == [], describe_failures(r)
    assert r["lost"] == 0
    assert r["ok"] and r["_returncode"] == 0, r["_stderr"]
    assert r["engine"] == engine_kind
    assert r["iterations"] == 15
    kills = r["kills"]
    for kind in ("sigkill", "gckill", "startup", "sigterm", "failpoint"):
        assert kills.get(kind, 0) >= 1, kills
    # Seven failpoint lifetimes: each either fired or ran out of time (then SIGKILLed).
    fired = sum(r["failpoints_fired"].values())
    assert fired + sum(r["failpoints_not_hit"].values()) == 7
    assert fired >= 4, r["failpoints_fired"]
    assert any(fp.endswith("=panic") for fp in r["failpoints_fired"]), r["failpoints_fired"]
    assert any(fp.endswith("=exit") for fp in r["failpoints_fired"]), r["failpoints_fired"]
    assert r["records_verified"] > 1000
    assert r["ingest_resumed"] >= 5
    assert r["flushes"] > 0 and r["compactions"] > 0
    assert r["layers_validated"] > 0
    # GC ran, moved the cutoff, and was killed in the middle (SIGKILL or its failpoint).
    assert r["gc_passes"] > 0 and r["gc_cutoff_lsn"] > 0
    assert r["gc_kills"] + r["gc_failpoint_kills"] >= 2, (r["gc_kills"], r["failpoints_fired"])
    assert r["reads_below_cutoff"] > 0  # each answered lsn_too_old
    # Every durable record at or above the cutoff, at its own LSN.
    assert r["final_reads"] == r["records_readable"] > 0


def test_crashloop_short(engine_kind: str) -> None:
    r = run_script("crashloop.py", "--engine", engine_kind, "--short", "--seed", SEED)
    check_common(r, engine_kind)


def test_crashloop_short_remote(engine_kind: str) -> None:
    r = run_script("crashloop.py", "--engine", engine_kind, "--short", "--seed", SEED, "--remote")
    check_common(r, engine_kind)
    assert r["remote"]
    # Before every restart and after the final stop.
    assert r["remote_indexes_checked"] == r["iterations"] + 2
    assert r["remote_layers_checked"] > 0
