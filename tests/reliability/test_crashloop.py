"""The short crash loop (``scripts/crashloop.py --short``) on each io engine.

Ten daemon lifetimes on one data directory, ended by SIGKILL at random instants, by
failpoints (``exit`` and ``panic``) in the flush, the layer rename and the crash-safe
overwrite, by a SIGKILL during startup and by a graceful SIGTERM; after every restart the
script checks startup, leftover files, layer validation, dcl and reads against its model.
"""

from __future__ import annotations

from tests.reliability._scripts import describe_failures, run_script

SEED = "20240601"


def test_crashloop_short(engine_kind: str) -> None:
    r = run_script("crashloop.py", "--engine", engine_kind, "--short", "--seed", SEED)
    assert r["failures"] == [], describe_failures(r)
    assert r["lost"] == 0
    assert r["ok"] and r["_returncode"] == 0, r["_stderr"]
    assert r["engine"] == engine_kind
    assert r["iterations"] == 10
    kills = r["kills"]
    for kind in ("sigkill", "startup", "sigterm", "failpoint"):
        assert kills.get(kind, 0) >= 1, kills
    # Five failpoint lifetimes: each either fired or ran out of time (then SIGKILLed).
    fired = sum(r["failpoints_fired"].values())
    assert fired + sum(r["failpoints_not_hit"].values()) == 5
    assert fired >= 3, r["failpoints_fired"]
    assert any(fp.endswith("=panic") for fp in r["failpoints_fired"]), r["failpoints_fired"]
    assert any(fp.endswith("=exit") for fp in r["failpoints_fired"]), r["failpoints_fired"]
    assert r["records_verified"] > 1000
    assert r["final_reads"] == r["records_durable"] > 0  # every durable record, at its LSN
    assert r["ingest_resumed"] >= 5
    assert r["flushes"] > 0 and r["compactions"] > 0
    assert r["layers_validated"] > 0
