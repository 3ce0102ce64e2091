"""``pageserver compare-engines``: the default workload is identical on both engines (exit 0);
one byte corrupted in one engine's layer file is found and named with its offset (exit 1);
the comparison itself (files only on one side, a prefix, a read that differs, LSNs, the
engine actually run) on hand-made runs; a kernel refusing io_uring is one line, exit 1."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import msgpack
import pytest

from pageserver import cli
from pageserver.layers.value import TestRecord, encode_value
from pageserver.testing import compare
from pageserver.testing.compare import EngineRun, Workload, compare_runs, print_report, report_json
from pageserver.testing.plugin import require_engine
from tests.helpers.daemon import PAGESERVER


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # cli.main reconfigures structlog with the current (captured) stderr; see tests/client.
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)


def test_the_default_workload_is_identical_on_both_engines() -> None:
    require_engine("trio-uring")
    p = subprocess.run(
        [PAGESERVER, "compare-engines", "--json"], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    assert r["identical"] is True and r["differences"] == [] and r["first_difference"] is None
    assert r["engines"] == ["std-fs", "trio-uring"]
    assert r["records"] == {"std-fs": 20_000, "trio-uring": 20_000}
    files = r["files"]
    # L0s merged by compaction into L1 deltas, plus an image layer: every one byte for byte
    assert files["count"] == {"std-fs": files["compared"], "trio-uring": files["compared"]}
    assert files["compared"] >= 5 and files["bytes"] > 2_000_000 and files["identical"]
    assert r["reads"] == {"compared": 50 * 8, "identical": True, "first_difference": None}
    lsns = r["lsns"]["std-fs"]
    assert (
        lsns
        == r["lsns"]["trio-uring"]
        == {
            "last_record_lsn": 20_000,
            "disk_consistent_lsn": 20_000,
        }
    )
    for engine in ("std-fs", "trio-uring"):
        t = r["timings"][engine]
        assert t["feed_s"] > 0 and t["records_per_s"] > 0 and t["get_p50_ms"] > 0
        assert r["compaction"][engine]["layers_created"] > 0
    print(
        "\ncompare-engines default workload timings (s): "
        + json.dumps({e: {k: round(v, 3) for k, v in t.items()} for e, t in r["timings"].items()})
    )


def test_one_corrupt_byte_is_named_with_file_and_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_engine("trio-uring")
    # A --file workload: Test records appended to 40 keys, then compaction.
    records = tmp_path / "records.msgpack"
    with open(records, "wb") as f:
        for i in range(3000):
            key = bytes.fromhex("000000067F0000400000004001000000") + (i % 40).to_bytes(2, "big")
            value = encode_value(TestRecord(f"<{i}>", clear=i < 40, will_init=i < 40))
            f.write(msgpack.packb([key, 10 + i // 3, value], use_bin_type=True))
    corrupted: list[tuple[str, int]] = []

    def corrupt(run: EngineRun) -> None:
        if run.engine != "trio-uring":
            return
        name = max(run.files, key=lambda n: (run.files[n], n))
        offset = run.files[name] // 2 + 1
        path = run.layer_path(name)
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x40
        path.write_bytes(bytes(data))
        corrupted.append((name, offset))

    monkeypatch.setattr(compare, "AFTER_RUN_HOOKS", [corrupt])
    rc = cli.main(
        [
            "compare-engines",
            "--file",
            str(records),
            "--checkpoint-distance",
            "16384",
            "--dir",
            str(tmp_path / "w"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    [(name, offset)] = corrupted
    assert f"first: layer file {name} offset {offset}: first difference at offset {offset}" in out
    assert out.count("DIFFERENT") >= 2  # the verdict line and the layer files row
    # exactly that one difference: reads (taken before the corruption) and LSNs agree
    assert "1 difference(s)" in out
    assert "gets (40 keys x 8 LSNs)" in out
    assert "Traceback" not in err


def _run(
    tmp: Path,
    engine: str,
    files: dict[str, bytes],
    reads: dict[tuple[bytes, int], bytes | None],
    lsn: int = 100,
) -> EngineRun:
    d = tmp / engine
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    status = {
        "io_engine": engine,
        "tenants": [
            {
                "tenant_id": "a" * 32,
                "timelines": [
                    {
                        "timeline_id": "b" * 32,
                        "last_record_lsn": lsn,
                        "disk_consistent_lsn": lsn,
                        "layers": {"l0": len(files), "delta": 0, "image": 0},
                    }
                ],
            }
        ],
    }
    return EngineRun(
        engine=engine,
        reported_engine=engine,
        timeline_dir=d,
        files={n: len(b) for n, b in files.items()},
        reads=reads,
        timings={"feed_s": 1.0, "records_per_s": 10.0},
        status=status,
        compaction={"layers_created": 0, "layers_removed": 0},
        records=1,
    )


L1 = "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF__0000000000000001-0000000000000010"
L2 = "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF__0000000000000010-0000000000000020"
K1, K2 = bytes(17) + b"\x01", bytes(17) + b"\x02"


def test_compare_runs_names_the_first_difference_of_each_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run(
        tmp_path,
        "std-fs",
        {L1: b"abcdef", L2: b"xyz"},
        {(K1, 5): b"v", (K2, 5): None, (K2, 9): b"w"},
    )
    b = _run(
        tmp_path,
        "trio-uring",
        {L1: b"abcdefgh"},  # a longer file (a prefix of it equal), L2 missing
        {(K1, 5): b"v", (K2, 5): b"oops", (K2, 9): b"w"},
        lsn=101,
    )
    v = compare_runs(a, b)
    assert not v.identical
    assert [(d.kind, d.where) for d in v.differences] == [
        ("file", f"layer file {L1} offset 6"),
        ("file", f"layer file {L2}"),
        ("read", f"get key {K2.hex().upper()} at LSN 0/5 (5)"),
        ("lsn", "last_record_lsn"),
        ("lsn", "disk_consistent_lsn"),
    ]
    assert "sizes 6 and 8" in v.differences[0].detail and "std-fs EOF" in v.differences[0].detail
    assert v.differences[1].detail == "only in std-fs (3 bytes), not in trio-uring"
    assert v.differences[2].detail == "std-fs no value, trio-uring 4 bytes 6f6f7073"
    r = report_json(v, Workload(source="records.msgpack"))
    assert r["identical"] is False
    assert r["files"]["first_difference"] == {
        "kind": "file",
        "where": f"layer file {L1} offset 6",
        "detail": v.differences[0].detail,
        "file": L1,
        "offset": 6,
    }
    assert r["reads"]["first_difference"]["key"] == K2.hex().upper()
    assert r["reads"]["first_difference"]["lsn"] == 5
    json.dumps(r)  # scripts can read all of it
    print_report(v, Workload(source="records.msgpack"))
    out = capsys.readouterr().out
    assert f"DIFFERENT: 5 difference(s); first: layer file {L1} offset 6" in out
    assert f"get key {K2.hex().upper()} at LSN 0/5 (5): std-fs no value, trio-uring 4 bytes" in out


def test_identical_runs_and_an_engine_that_was_not_the_one_asked_for(tmp_path: Path) -> None:
    files = {L1: bytes(range(256)) * 100}
    reads: dict[tuple[bytes, int], bytes | None] = {(K1, 7): b"x"}
    a = _run(tmp_path, "std-fs", files, reads)
    b = _run(tmp_path, "trio-uring", files, reads)
    v = compare_runs(a, b)
    assert v.identical and v.files_compared == 1 and v.bytes_compared == 25600
    b.reported_engine = "std-fs"  # a silent fallback
    v = compare_runs(a, b)
    assert [str(d) for d in v.differences] == ["io engine: asked for trio-uring, ran std-fs"]


def test_sampled_keys_and_lsns_of_a_generator_workload() -> None:
    from pageserver.client.feed import FeedGenerator

    w = Workload(
        source=FeedGenerator(count=1000, keys=100, start_lsn=10), sample_keys=7, sample_lsns=5
    )
    keys, lsns = w.samples()
    assert len(keys) == 7 == len(set(keys)) and keys == sorted(keys)
    assert len(lsns) == 5 and lsns[0] == 9 and lsns[-1] == 1009  # before the first, the last
    assert w.samples() == (keys, lsns)  # the same for every engine


def test_a_kernel_refusing_io_uring_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(
        compare,
        "require_engine_reason",
        lambda e: "io_uring_setup: EPERM (simulated)" if e == "trio-uring" else None,
    )
    assert cli.main(["compare-engines", "--count", "10"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "pageserver compare-engines: error: trio-uring cannot run on this machine: "
        "io_uring_setup: EPERM (simulated)\n"
    )
    assert list(tmp_path.iterdir()) == []  # nothing ran: no work directory left behind


def test_a_daemon_that_cannot_start_is_one_line_and_its_log_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["compare-engines", "--count", "10", "--server-config", "max_file_descriptors=0"]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    [work] = tmp_path.iterdir()
    assert out == "" and err == (
        "compare-engines: running the workload on std-fs\n"
        "pageserver compare-engines: error: std-fs: daemon (std-fs) exited 1 at start: "
        "pageserver: config key 'max_file_descriptors' must be positive, got 0 "
        f"(logs in {work / 'std-fs'})\n"
    )
    assert "max_file_descriptors" in (work / "std-fs" / "daemon-1.log").read_text()


def test_a_missing_file_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compare-engines", "--file", "/nonexistent/records"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("pageserver compare-engines: error: cannot read /nonexistent/records")
    assert err.count("\n") == 1 and out == ""


def test_a_dir_holding_a_previous_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "trio-uring").mkdir()
    assert cli.main(["compare-engines", "--dir", str(tmp_path), "--count", "10"]) == 1
    out, err = capsys.readouterr()
    assert err == (
        f"pageserver compare-engines: error: {tmp_path / 'trio-uring'} exists (a previous "
        "run?): remove it or use another --dir\n"
    )
