"""``scripts/gc_steady_state.py`` in short: a real daemon, compaction and GC at every sample
(``--explicit``), 250k records over 2k keys. Without GC the layer bytes would grow past the
values ingested (25 MB); with it they stay under a bound computed from ``gc_horizon``,
``checkpoint_distance`` and the thresholds alone (the script's ``bound_bytes``), over the
whole second half of the run."""

from __future__ import annotations

from tests.reliability._scripts import run_script


def test_gc_steady_state_short(engine_kind: str) -> None:
    r = run_script(
        "gc_steady_state.py", "--engine", engine_kind, "--records", "250000", "--keys", "2000",
        "--explicit", "--gc-horizon", str(1 << 20), "--checkpoint-distance", str(256 << 10),
        "--compaction-threshold", "3", "--sample-every", "10000",
    )  # fmt: skip
    assert r["_returncode"] == 0, r["_stderr"]
    summary, samples = r["summary"], r["samples"]
    bound = summary["bound_bytes"]
    assert bound < summary["ingested_value_bytes"] / 2  # the bound says something
    assert summary["final_gc_cutoff_lsn"] > 0
    second_half = [s for s in samples if s["records"] >= 125_000]
    assert second_half
    for s in second_half:
        assert 0 < s["local_bytes"] <= bound, (s, bound)
        assert s["image"] >= 1
