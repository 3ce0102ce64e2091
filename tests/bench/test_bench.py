"""``pageserver bench --quick --json``: every metric, for every engine this kernel allows.

Run as a subprocess of the installed console script: that is how a user runs it, the bench
starts its own daemons and trio runs, and a hang is bounded by the timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pageserver.io import STD_FS, TRIO_URING, uring_refusal_reason
from tests.conftest import require_engine

PAGESERVER = str(Path(sys.executable).with_name("pageserver"))

ENGINE_METRICS = (
    "ingest_records_per_s",
    "ingest_mib_per_s",
    "flush_mib_per_s",
    "flush_layer_bytes",
    "lateness_p50_ms",
    "lateness_p99_ms",
    "lateness_max_ms",
    "lateness_samples",
    "idle_lateness_p99_ms",
    "get_p50_ms",
    "get_p99_ms",
    "durable_records_per_s",
    "durable_mib_per_s",
    "status_p50_ms",
    "status_p99_ms",
    "status_max_ms",
    "status_samples",
)
#: The large-value workload's figures (in the default and --quick runs).
LARGE_METRICS = ("large_durable_records_per_s", "large_durable_mib_per_s", "large_status_max_ms")
BASELINE_FLUSH_METRICS = (
    "flush_mib_per_s",
    "lateness_p50_ms",
    "lateness_p99_ms",
    "lateness_max_ms",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("bench")
    p = subprocess.run(
        [PAGESERVER, "bench", "--quick", "--json", "--dir", str(d)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    # The report is the last line (stray prints of work in progress must not break this).
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines, p.stdout[-2000:]
    data: dict[str, Any] = json.loads(lines[-1])
    assert list(d.iterdir()) == []  # everything it wrote is gone again
    return data


def _positive(section: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    for name in names:
        value = section.get(name)
        assert isinstance(value, int | float) and value > 0, f"{where}.{name} = {value!r}"


@pytest.mark.parametrize("kind", [STD_FS, TRIO_URING])
def test_every_metric_per_engine(report: dict[str, Any], kind: str) -> None:
    require_engine(kind)
    assert kind in report["engines"], report["skipped"]
    _positive(report["engines"][kind], ENGINE_METRICS, kind)
    _positive(report["engines"][kind], LARGE_METRICS, kind)
    assert report["engines"][kind]["get_count"] == report["settings"]["gets"]
    # The daemon's own 1 ms ticker: present for both workloads (a --quick flush may be
    # shorter than a tick, so there may be no sample of it).
    for prefix in ("", "large_"):
        fields = report["engines"][kind]
        assert fields[f"{prefix}daemon_ticker_flush_samples"] >= 0
        for q in ("p50", "p99", "max"):
            assert fields[f"{prefix}daemon_ticker_flush_{q}_ms"] >= 0
        assert fields[f"{prefix}daemon_ticker_ingest_max_ms"] > 0
        ingest = [fields[f"{prefix}daemon_ticker_ingest_{q}_ms"] for q in ("p50", "p99", "max")]
        assert 0 <= ingest[0] <= ingest[1] <= ingest[2], ingest


def test_daemon_ticks_are_cut_to_the_windows(tmp_path: Path) -> None:
    """``read_ticks`` keeps the ticks that started in the flush (and the ingest) window."""
    from array import array

    from pageserver.bench import _measure as m

    path = tmp_path / "ticks.f64"
    with open(path, "wb") as f:
        array("d", [0.5, 9.0, 1.0, 0.001, 1.5, 0.002, 2.0, 0.003, 2.5, 0.004, 3.0, 7.0]).tofile(f)
    flush, ingest = m.read_ticks(str(path), (1.0, 2.0, 3.0))
    assert flush == [0.003, 0.004]
    assert ingest == [0.001, 0.002]
    assert m.read_ticks(str(tmp_path / "missing"), (0.0, 1.0, 2.0)) == ([], [])


def test_baselines_and_ratios(report: dict[str, Any]) -> None:
    _positive(report["baselines"]["per_op_offload"], BASELINE_FLUSH_METRICS, "per_op_offload")
    _positive(
        report["baselines"]["raw_sequential"], ("cached_mib_per_s", "synced_mib_per_s"), "raw"
    )
    fio = report["baselines"]["fio"]
    assert fio["mib_per_s"] is None or fio["mib_per_s"] > 0, fio
    ratios = report["ratios"]
    assert ratios and all(v is None or v > 0 for v in ratios.values()), ratios
    if len(report["engines"]) == 2:
        assert ratios["flush MiB/s: trio-uring / std-fs"] > 0
    assert report["settings"]["get_via"] == "socket"
    # Durable by default (SPEC section 9: durable ingest, raw write *with fsync* as the
    # physical limit): the flush ratios are against the synced raw write.
    assert report["settings"]["no_sync"] is False
    assert any("raw sequential write (with fsync)" in name for name in ratios), ratios


def test_no_sync_is_asked_for_and_said(tmp_path: Path) -> None:
    """``--no-sync`` turns every fsync off, and the parser says which one a run takes."""
    from pageserver.bench import harness as bench

    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    assert parser.parse_args(["bench"]).no_sync is False
    assert parser.parse_args(["bench", "--sync"]).no_sync is False
    assert parser.parse_args(["bench", "--no-sync"]).no_sync is True
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--sync", "--no-sync"])


def test_uring_skip_is_reported(report: dict[str, Any]) -> None:
    reason = uring_refusal_reason()
    if reason is None:
        assert report["skipped"] == {}
    else:
        assert report["skipped"] == {TRIO_URING: reason}


def test_refused_uring_is_skipped_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fallback path, whatever this kernel does: a refusal names its reason and the
    rest of the report (std-fs, baselines, ratios without a trio-uring term) is complete."""
    from pageserver.bench import harness as bench

    monkeypatch.setattr(bench, "uring_refusal_reason", lambda: "refused for the test")
    sizes = bench.Sizes(2000, 50, 20, 3000, 1, 2, 0.02)
    report = bench.run_bench([STD_FS, TRIO_URING], sizes, str(tmp_path), True, quiet=True)
    assert report["skipped"] == {TRIO_URING: "refused for the test"}
    assert list(report["engines"]) == [STD_FS]
    _positive(report["engines"][STD_FS], ENGINE_METRICS, STD_FS)
    assert not any("trio-uring" in name for name in report["ratios"])
    assert list(tmp_path.iterdir()) == []


def test_fio_figure_is_read_when_fio_is_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """fio is not installed everywhere: a stand-in on PATH checks the command and parsing."""
    from pageserver.bench import _measure as m

    fake = tmp_path / "bin" / "fio"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'echo "fio-3.36 banner line"\n'
        'echo \'{"jobs": [{"write": {"bw_bytes": 104857600}}], "args": "\'"$*"\'"}\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    mib_s, note = m.fio_sequential_write(str(tmp_path), 4)
    assert mib_s == pytest.approx(100.0), note
    assert "fio" in note
    fake.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    assert m.fio_sequential_write(str(tmp_path), 4) == (None, "fio failed: broken")


def test_peers_are_reported_or_skipped_with_a_reason(report: dict[str, Any]) -> None:
    """RocksDB and SQLite: measured (both workloads) or named as skipped, never missing."""
    assert set(report["peers"]) | set(report["peers_skipped"]) == {"rocksdb", "sqlite"}
    for name, fields in report["peers"].items():
        _positive(fields, ("durable_records_per_s", "large_durable_records_per_s"), name)
        assert any(name in ratio for ratio in report["ratios"]), report["ratios"]
    assert "sqlite" in report["peers"]  # the standard library's: always there


def test_bench_runs_without_the_bench_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without rocksdict (the bench extra), RocksDB is skipped with the reason, the rest runs."""
    from pageserver.bench import _peers
    from pageserver.bench import harness as bench

    real = _peers.peer_unavailable
    monkeypatch.setattr(
        _peers,
        "peer_unavailable",
        lambda name: "rocksdict is not installed" if name == "rocksdb" else real(name),
    )
    sizes = bench.Sizes(2000, 50, 20, 3000, 1, 2, 0.02, 100, 4096)
    report = bench.run_bench([STD_FS], sizes, str(tmp_path), True, quiet=True)
    assert report["peers_skipped"] == {"rocksdb": "rocksdict is not installed"}
    assert list(report["peers"]) == ["sqlite"]
    _positive(report["engines"][STD_FS], ENGINE_METRICS, STD_FS)
    assert not any("rocksdb" in name for name in report["ratios"])
    assert list(tmp_path.iterdir()) == []


def test_plot(report: dict[str, Any], tmp_path: Path) -> None:
    # matplotlib is in the test extra: the plot is tested, never skipped.
    from pageserver.bench import harness as bench

    out = tmp_path / "bench.png"
    bench.plot_report(report, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_status_poller_times_round_trips_in_a_process_of_its_own(
    pageserver_daemon: Any, tmp_path: Path
) -> None:
    """The benchmark's second connection (``python -m pageserver.bench._poller``) is a
    process of its own: it says ``ready`` once connected, polls ``status`` until SIGTERM,
    then leaves ``(start, round trip)`` pairs that ``read_samples`` reads back. The round
    trip in flight at SIGTERM is finished and kept: here the daemon is stopped (SIGSTOP)
    under it, the poller told to stop, then the daemon resumed; that held-up reply is the
    sample the benchmark must not lose (it comes with the flush reply that ends its window)."""
    import signal
    import time

    from pageserver.bench import _measure as m

    out = tmp_path / "status.f64"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pageserver.bench._poller", pageserver_daemon.addr, "0.002", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )  # fmt: skip
    daemon = pageserver_daemon.proc
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        t0 = time.perf_counter()
        time.sleep(0.1)
        daemon.send_signal(signal.SIGSTOP)
        time.sleep(0.1)  # the poller waits for a reply now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGCONT)
        rc = proc.wait(timeout=30)
    assert rc == 0
    polls = m.read_samples(str(out))
    assert polls.shape[1] == 2 and len(polls) >= 5, polls.shape
    starts, rtts = polls[:, 0], polls[:, 1]
    assert (starts[1:] > starts[:-1]).all() and (rtts > 0).all()
    assert starts[0] >= t0 - 1.0  # the same clock as this process's perf_counter
    assert rtts[-1] >= 0.15, rtts[-3:]  # the held-up round trip, kept
    # A file cut in the middle of a pair keeps the whole pairs; a missing one is empty.
    out.write_bytes(out.read_bytes()[:-8])
    assert len(m.read_samples(str(out))) == len(polls) - 1
    assert len(m.read_samples(str(tmp_path / "missing"))) == 0


def test_device_bytes_are_reported_for_every_contender(report: dict[str, Any]) -> None:
    """Each durable-ingest contender (engines and peers, both workloads) has the MiB its
    data directory's block device wrote meanwhile: a number, or null where the directory
    is on no block device with statistics (tmpfs, overlayfs)."""
    contenders = [*report["engines"].values(), *report["peers"].values()]
    assert contenders
    for fields in contenders:
        for key in ("durable_device_mib", "large_durable_device_mib"):
            assert key in fields, fields
            assert fields[key] is None or fields[key] >= 0, fields[key]


def test_device_bytes_written_counts_a_synced_file(tmp_path: Path) -> None:
    """``device_bytes_written`` moves by at least what a file made durable holds, where the
    directory is on a block device; on tmpfs (/dev/shm) there is none to ask."""
    from pageserver.bench import _measure as m

    before = m.device_bytes_written(str(tmp_path))
    path = tmp_path / "blob"
    with open(path, "wb") as f:
        f.write(os.urandom(8 << 20))
        f.flush()
        os.fsync(f.fileno())
    after = m.device_bytes_written(str(tmp_path))
    st_dev = os.stat(tmp_path).st_dev
    on_block_device = Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}/stat").exists()
    if on_block_device:
        mib = m.device_mib_between(before, after)
        assert mib is not None and mib >= 8, mib
    else:
        assert before is None and after is None
    if Path("/dev/shm").is_dir():
        assert m.device_bytes_written("/dev/shm") is None
    assert m.device_mib_between(None, 5) is None and m.device_mib_between(1 << 20, 3 << 20) == 2
