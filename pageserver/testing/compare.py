"""``pageserver compare-engines``: one workload through a daemon per io engine, compared.

For each engine (std-fs, then trio-uring) a fresh daemon (:class:`~pageserver.testing.Daemon`)
gets the same tenant and timeline ids, the same records (``feed``'s generator options or a
``--file`` stream, sent by ``feed``'s pipelined loop with the same batches), then ``flush``
and ``compact``; a sample of keys is read at a sample of LSNs; the daemon is stopped
(SIGTERM, exit 0). Then:

* every layer file of the timeline is compared byte for byte (names, then contents);
* every sampled ``get`` must return the same value on both engines;
* ``last_record_lsn`` and ``disk_consistent_lsn`` must agree;
* timings (start, feed, flush, compact, reads, stop) are shown side by side.

The verdict is a table (rich) or, with ``--json``, one JSON object; the exit status is 1 on
any difference, naming the first differing file and offset, or key and LSN.

Parity: the tenant config turns off everything that depends on the clock rather than on
the data -- ``checkpoint_timeout`` rolls (set to years) and background compaction
(``compaction_period = "0s"``; compaction runs once, on request) -- so both engines cut
layers at the same records. Each daemon pins its engine in its config and environment, and
``start`` checks the engine the daemon reports: the trio-uring run is really trio-uring,
never a silent fallback to std-fs.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pageserver.client import Client, ConnectionLost, ServerError
from pageserver.client.cli import add_workload_args, parse_config_pair, positive_int
from pageserver.client.feed import FeedError, FeedGenerator, FeedSource, FileSource, run_feed
from pageserver.io import STD_FS, TRIO_URING
from pageserver.layers.key import lsn_str
from pageserver.layers.layer_name import try_parse_layer_name
from pageserver.testing.daemon import Daemon, DaemonError, require_engine_reason

__all__ = [
    "AFTER_RUN_HOOKS",
    "COMPARE_TENANT",
    "COMPARE_TIMELINE",
    "Difference",
    "EngineRun",
    "Verdict",
    "Workload",
    "compare_engines",
    "compare_runs",
    "register",
    "run_engine",
]

#: Fixed ids: layer files carry them, so both engines must use the same.
COMPARE_TENANT = "c0ffee00" * 4
COMPARE_TIMELINE = "0e1e0e1e" * 4
#: Tenant config that keeps the clock out of layer boundaries (see the module docstring).
PARITY_TENANT_CONFIG: dict[str, Any] = {"checkpoint_timeout": "3650d", "compaction_period": "0s"}
_CHUNK = 1 << 20

#: For tests: each is called with every engine's :class:`EngineRun` after its daemon stopped
#: and before the comparison (e.g. to corrupt one byte of one engine's output).
AFTER_RUN_HOOKS: list[Callable[[EngineRun], None]] = []


class CompareError(Exception):
    """The comparison could not run (a daemon did not start, the feed failed, ...)."""


@dataclass(frozen=True)
class Workload:
    """What every engine gets: the records, how they are sent, the tenant config, the reads."""

    source: FeedGenerator | str  # the generator, or a --file path
    batch: int = 1000
    batch_bytes: int = 1 << 20
    window: int = 8
    checkpoint_distance: int = 256 << 10
    tenant_config: dict[str, Any] = field(default_factory=dict)
    server_config: dict[str, Any] = field(default_factory=dict)
    sample_keys: int = 50
    sample_lsns: int = 8
    seed: int = 0

    def feed_source(self) -> FeedSource:
        return FileSource(self.source) if isinstance(self.source, str) else self.source

    def describe(self) -> str:
        s = self.source
        if isinstance(s, str):
            return f"records of {s}"
        return (
            f"{s.count:,} {s.kind} records, {s.keys:,} keys, {s.value_size} B values, "
            f"from LSN {s.start_lsn}, {s.records_per_lsn} per LSN"
        )

    def samples(self) -> tuple[list[bytes], list[int]]:
        """The keys and LSNs to read (every key at every LSN)."""
        rng = random.Random(self.seed)
        s = self.source
        if isinstance(s, FeedGenerator):
            indexes = rng.sample(range(s.keys), min(self.sample_keys, s.keys))
            keys = [FeedGenerator.key(k) for k in sorted(indexes)]
            lo, hi = s.start_lsn, s.lsn_of(max(s.count - 1, 0))
        else:
            seen: set[bytes] = set()
            lo, hi = -1, -1
            for _i, (key, lsn, _v) in FileSource(s).records_from(0):
                seen.add(bytes(key))
                lo = lsn if lo < 0 else min(lo, lsn)
                hi = max(hi, lsn)
            ordered = sorted(seen)
            keys = sorted(rng.sample(ordered, min(self.sample_keys, len(ordered))))
            lo, hi = max(lo, 1), max(hi, 1)
        # before the first record, the last LSN, and random ones in between
        lsns = {max(lo - 1, 0), hi}
        while len(lsns) < min(self.sample_lsns, hi - max(lo - 1, 0) + 1):
            lsns.add(rng.randint(lo, hi))
        return keys, sorted(lsns)


@dataclass
class EngineRun:
    """What one engine produced."""

    engine: str
    #: the engine the daemon reported (hello and status)
    reported_engine: str
    timeline_dir: Path
    #: layer file name -> size
    files: dict[str, int]
    #: (key, lsn) -> value
    reads: dict[tuple[bytes, int], bytes | None]
    timings: dict[str, float]
    status: dict[str, Any]
    compaction: dict[str, Any]
    records: int

    def layer_path(self, name: str) -> Path:
        return self.timeline_dir / name


@dataclass(frozen=True)
class Difference:
    """One difference between the runs; ``kind`` is file, read or lsn."""

    kind: str
    where: str
    detail: str
    file: str | None = None
    offset: int | None = None
    key: str | None = None
    lsn: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


@dataclass
class Verdict:
    a: EngineRun
    b: EngineRun
    differences: list[Difference]
    files_compared: int
    bytes_compared: int
    reads_compared: int

    @property
    def identical(self) -> bool:
        return not self.differences

    def first(self, kind: str) -> Difference | None:
        return next((d for d in self.differences if d.kind == kind), None)


# ---------------------------------------------------------------------------------------------
# Running one engine
# ---------------------------------------------------------------------------------------------


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(
    daemon: Daemon, workload: Workload, keys: list[bytes], lsns: list[int]
) -> tuple[
    dict[str, float], dict[str, Any], dict[str, Any], dict[tuple[bytes, int], bytes | None], int
]:
    timings: dict[str, float] = {}
    t, tl = COMPARE_TENANT, COMPARE_TIMELINE
    async with await Client.connect(daemon.addr, daemon.token) as c:
        await c.request(
            "tenant_create",
            tenant_id=t,
            config={
                "checkpoint_distance": workload.checkpoint_distance,
                **PARITY_TENANT_CONFIG,
                **workload.tenant_config,
            },
        )
        await c.request("timeline_create", tenant_id=t, timeline_id=tl, start_lsn=0)
        t0 = time.perf_counter()
        stats = await run_feed(
            daemon.addr,
            daemon.token,
            t,
            tl,
            workload.feed_source(),
            batch_records=workload.batch,
            batch_bytes=workload.batch_bytes,
            window=workload.window,
            retry_timeout=0.0,
        )
        timings["feed_s"] = time.perf_counter() - t0
        if stats.reconnects:
            raise CompareError(f"{daemon.engine}: the feed lost its connection")
        t0 = time.perf_counter()
        await c.flush(t, tl)
        timings["flush_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        compaction = await c.request("compact", tenant_id=t, timeline_id=tl)
        timings["compact_s"] = time.perf_counter() - t0
        reads: dict[tuple[bytes, int], bytes | None] = {}
        latencies: list[float] = []
        t0 = time.perf_counter()
        for key in keys:
            for lsn in lsns:
                g0 = time.perf_counter()
                reads[(key, lsn)] = await c.get(t, tl, key, lsn)
                latencies.append(time.perf_counter() - g0)
        timings["reads_s"] = time.perf_counter() - t0
        timings["get_p50_ms"] = _percentile(latencies, 0.5) * 1000
        timings["get_p99_ms"] = _percentile(latencies, 0.99) * 1000
        status = await c.status()
    return timings, status, compaction, reads, stats.position


def run_engine(
    engine: str, workload: Workload, root: Path, stop_timeout: float = 60.0
) -> EngineRun:
    """Run ``workload`` on a fresh daemon of ``engine`` under ``root``; stops it after."""
    keys, lsns = workload.samples()
    daemon = Daemon(
        engine,
        root=root,
        metrics=False,
        checkpoint_distance=None,
        config=workload.server_config,
    )
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        daemon.start()
        timings["start_s"] = time.perf_counter() - t0
        try:
            t_run, status, compaction, reads, records = trio.run(
                _drive, daemon, workload, keys, lsns
            )
        except (ConnectionLost, ServerError, FeedError) as e:
            raise CompareError(f"{engine}: {e} (daemon log: {daemon.log_path})") from None
        timings.update(t_run)
        t0 = time.perf_counter()
        result = daemon.terminate(stop_timeout)
        timings["stop_s"] = time.perf_counter() - t0
        if not result.clean:
            raise CompareError(
                f"{engine}: the daemon {result.describe(stop_timeout)} "
                f"(daemon log: {daemon.log_path})"
            )
    finally:
        daemon.cleanup()  # kills it if still running; the data under root stays
    timings["records_per_s"] = records / timings["feed_s"] if timings["feed_s"] else 0.0
    tl_dir = daemon.timeline_path(COMPARE_TENANT, COMPARE_TIMELINE)
    files = {
        p.name: p.stat().st_size
        for p in sorted(tl_dir.iterdir())
        if try_parse_layer_name(p.name) is not None
    }
    return EngineRun(
        engine=engine,
        reported_engine=str(status.get("io_engine")),
        timeline_dir=tl_dir,
        files=files,
        reads=reads,
        timings=timings,
        status=status,
        compaction=compaction,
        records=records,
    )


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------


def _first_difference(pa: Path, pb: Path) -> int | None:
    """The first offset where the files differ (the shorter one's end if one is a prefix)."""
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        offset = 0
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                n = min(len(ca), len(cb))
                for i in range(n):
                    if ca[i] != cb[i]:
                        return offset + i
                return offset + n
            if not ca:
                return None
            offset += len(ca)


def _byte_at(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        b = f.read(1)
    return f"0x{b[0]:02x}" if b else "EOF"


def _timeline(status: dict[str, Any]) -> dict[str, Any]:
    for tenant in status.get("tenants", []):
        for tl in tenant.get("timelines", []):
            return dict(tl)
    return {}


def compare_runs(a: EngineRun, b: EngineRun) -> Verdict:
    """Compare two runs: layer files byte for byte, sampled reads, LSNs."""
    diffs: list[Difference] = []
    if a.reported_engine != a.engine or b.reported_engine != b.engine:
        for run in (a, b):
            if run.reported_engine != run.engine:
                diffs.append(
                    Difference(
                        "engine", "io engine", f"asked for {run.engine}, ran {run.reported_engine}"
                    )
                )
    files = 0
    nbytes = 0
    for name in sorted(set(a.files) | set(b.files)):
        if name not in b.files or name not in a.files:
            has, lacks = (a, b) if name in a.files else (b, a)
            diffs.append(
                Difference(
                    "file",
                    f"layer file {name}",
                    f"only in {has.engine} ({has.files[name]} bytes), not in {lacks.engine}",
                    file=name,
                )
            )
            continue
        files += 1
        pa, pb = a.layer_path(name), b.layer_path(name)
        offset = _first_difference(pa, pb)
        nbytes += min(a.files[name], b.files[name])
        if offset is None:
            continue
        detail = (
            f"first difference at offset {offset}: {a.engine} {_byte_at(pa, offset)}, "
            f"{b.engine} {_byte_at(pb, offset)}"
        )
        if a.files[name] != b.files[name]:
            detail += f" (sizes {a.files[name]} and {b.files[name]})"
        diffs.append(
            Difference(
                "file", f"layer file {name} offset {offset}", detail, file=name, offset=offset
            )
        )
    reads = 0
    for key, lsn in sorted(set(a.reads) | set(b.reads)):
        va, vb = a.reads.get((key, lsn)), b.reads.get((key, lsn))
        reads += 1
        if va != vb:
            diffs.append(
                Difference(
                    "read",
                    f"get key {key.hex().upper()} at LSN {lsn_str(lsn)} ({lsn})",
                    f"{a.engine} {_show(va)}, {b.engine} {_show(vb)}",
                    key=key.hex().upper(),
                    lsn=lsn,
                )
            )
    ta, tb = _timeline(a.status), _timeline(b.status)
    for name in ("last_record_lsn", "disk_consistent_lsn"):
        if ta.get(name) != tb.get(name):
            diffs.append(
                Difference("lsn", name, f"{a.engine} {ta.get(name)}, {b.engine} {tb.get(name)}")
            )
    return Verdict(a, b, diffs, files, nbytes, reads)


def _show(value: bytes | None, limit: int = 24) -> str:
    if value is None:
        return "no value"
    text = value[:limit].hex()
    return f"{len(value)} bytes {text}{'...' if len(value) > limit else ''}"


def compare_engines(
    workload: Workload,
    root: Path,
    engines: tuple[str, str] = (STD_FS, TRIO_URING),
    *,
    progress: Callable[[str], None] = lambda s: None,
) -> Verdict:
    """Run ``workload`` on each engine (data under ``root/<engine>``) and compare the runs."""
    for engine in engines:
        if (root / engine).exists():
            raise CompareError(
                f"{root / engine} exists (a previous run?): remove it or use another --dir"
            )
    for engine in engines:
        reason = require_engine_reason(engine)
        if reason is not None:
            raise CompareError(f"{engine} cannot run on this machine: {reason}")
    runs = []
    for engine in engines:
        progress(f"running the workload on {engine}")
        try:
            run = run_engine(engine, workload, root / engine)
        except DaemonError as e:
            # one line: what happened, and the daemon's last words (its log stays)
            lines = [line for line in str(e).splitlines() if line.strip()]
            last = f": {lines[-1].strip()}" if len(lines) > 1 else ""
            raise CompareError(
                f"{engine}: {lines[0].rstrip(':')}{last} (logs in {root / engine})"
            ) from None
        for hook in AFTER_RUN_HOOKS:
            hook(run)
        runs.append(run)
    return compare_runs(runs[0], runs[1])


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

_TIMING_ROWS = (
    ("start_s", "daemon start", "s", False),
    ("feed_s", "feed", "s", False),
    ("records_per_s", "feed rate", "records/s", True),
    ("flush_s", "flush", "s", False),
    ("compact_s", "compact", "s", False),
    ("reads_s", "sampled reads", "s", False),
    ("get_p50_ms", "get p50", "ms", False),
    ("get_p99_ms", "get p99", "ms", False),
    ("stop_s", "stop (SIGTERM)", "s", False),
)


def report_json(v: Verdict, workload: Workload) -> dict[str, Any]:
    a, b = v.a, v.b
    first_file, first_read = v.first("file"), v.first("read")
    return {
        "identical": v.identical,
        "engines": [a.engine, b.engine],
        "workload": workload.describe(),
        "records": {a.engine: a.records, b.engine: b.records},
        "files": {
            "compared": v.files_compared,
            "bytes": v.bytes_compared,
            "count": {a.engine: len(a.files), b.engine: len(b.files)},
            "identical": first_file is None,
            "first_difference": first_file.to_json() if first_file else None,
        },
        "reads": {
            "compared": v.reads_compared,
            "identical": first_read is None,
            "first_difference": first_read.to_json() if first_read else None,
        },
        "lsns": {
            e.engine: {
                k: _timeline(e.status).get(k) for k in ("last_record_lsn", "disk_consistent_lsn")
            }
            for e in (a, b)
        },
        "compaction": {a.engine: a.compaction, b.engine: b.compaction},
        "timings": {a.engine: a.timings, b.engine: b.timings},
        "differences": [d.to_json() for d in v.differences],
        "first_difference": str(v.differences[0]) if v.differences else None,
    }


def _fmt(value: float, unit: str) -> str:
    if unit == "records/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.3f}"


def print_report(v: Verdict, workload: Workload, *, max_differences: int = 10) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # a pipe or file gets 100 columns (rich's default of 80 wraps the verdicts)
    console = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 100)
    a, b = v.a, v.b
    ok, bad = "[green]identical[/]", "[bold red]DIFFERENT[/]"
    console.print(
        f"compare-engines: {a.engine} vs {b.engine}: {workload.describe()}",
        markup=False,
        soft_wrap=True,
    )
    checks = Table(box=box.SIMPLE_HEAVY)
    checks.add_column("check")
    checks.add_column(a.engine, justify="right")
    checks.add_column(b.engine, justify="right")
    checks.add_column("verdict")
    engines_ok = v.first("engine") is None
    checks.add_row(
        "io engine (reported)", a.reported_engine, b.reported_engine, ok if engines_ok else bad
    )
    checks.add_row(
        "records fed", f"{a.records:,}", f"{b.records:,}", ok if a.records == b.records else bad
    )
    first_file = v.first("file")
    mib = v.bytes_compared / 2**20
    checks.add_row(
        "layer files",
        f"{len(a.files)} ({sum(a.files.values()) / 2**20:.2f} MiB)",
        f"{len(b.files)} ({sum(b.files.values()) / 2**20:.2f} MiB)",
        f"{ok}, byte for byte ({mib:.2f} MiB)" if first_file is None else bad,
    )
    layers_a = _timeline(a.status).get("layers", {})
    layers_b = _timeline(b.status).get("layers", {})
    checks.add_row(
        "layers l0/delta/img",
        "/".join(str(layers_a.get(k, 0)) for k in ("l0", "delta", "image")),
        "/".join(str(layers_b.get(k, 0)) for k in ("l0", "delta", "image")),
        ok if layers_a == layers_b else bad,
    )
    first_read = v.first("read")
    nkeys = len({k for k, _ in a.reads})
    nlsns = len({lsn for _, lsn in a.reads})
    checks.add_row(
        f"gets ({nkeys} keys x {nlsns} LSNs)",
        f"{len(a.reads):,}",
        f"{len(b.reads):,}",
        ok if first_read is None else bad,
    )
    ta, tb = _timeline(a.status), _timeline(b.status)
    for name in ("last_record_lsn", "disk_consistent_lsn"):
        xa, xb = ta.get(name), tb.get(name)
        checks.add_row(
            name,
            lsn_str(xa) if isinstance(xa, int) else str(xa),
            lsn_str(xb) if isinstance(xb, int) else str(xb),
            ok if xa == xb else bad,
        )
    console.print(checks)

    timings = Table(box=box.SIMPLE_HEAVY)
    timings.add_column("timings")
    timings.add_column(a.engine, justify="right")
    timings.add_column(b.engine, justify="right")
    timings.add_column(f"{b.engine} / {a.engine}", justify="right")
    for key, label, unit, _higher_better in _TIMING_ROWS:
        xa, xb = a.timings.get(key), b.timings.get(key)
        if xa is None or xb is None:
            continue
        ratio = f"{xb / xa:.2f}" if xa else "-"
        timings.add_row(f"{label} ({unit})", _fmt(xa, unit), _fmt(xb, unit), ratio)
    console.print(timings)

    # Verdict lines are never wrapped: scripts and people grep them for the file and offset.
    if v.identical:
        console.print(f"[bold green]IDENTICAL[/]: {a.engine} and {b.engine} agree", soft_wrap=True)
        return
    console.print(
        Text.assemble(
            ("DIFFERENT", "bold red"),
            f": {len(v.differences)} difference(s); first: {v.differences[0]}",
        ),
        soft_wrap=True,
    )
    for d in v.differences[:max_differences]:
        console.print(Text(f"  {d}"), soft_wrap=True)
    if len(v.differences) > max_differences:
        console.print(f"  ... and {len(v.differences) - max_differences} more", soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _workload(args: argparse.Namespace) -> Workload:
    source: FeedGenerator | str
    if args.file:
        FileSource(args.file)  # an unreadable file fails here, before any daemon starts
        source = args.file
    else:
        try:
            source = FeedGenerator(
                count=args.count,
                keys=args.keys,
                value_size=args.value_size,
                kind=args.kind,
                start_lsn=args.start_lsn,
                records_per_lsn=args.records_per_lsn,
            )
        except ValueError as e:
            raise CompareError(str(e)) from None
    return Workload(
        source=source,
        batch=args.batch,
        batch_bytes=args.batch_bytes,
        window=args.window,
        checkpoint_distance=args.checkpoint_distance,
        tenant_config=dict(args.tenant_config),
        server_config=dict(args.server_config),
        sample_keys=args.sample_keys,
        sample_lsns=args.sample_lsns,
        seed=args.seed,
    )


@contextmanager
def _work_dir(args: argparse.Namespace) -> Iterator[tuple[Path, list[bool]]]:
    """The directory for the data dirs, and a flag to set when it may be removed (a
    temporary directory is kept after a difference or an error, for a look at the files)."""
    if args.dir:
        path = Path(args.dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path, []
        return
    path = Path(tempfile.mkdtemp(prefix="compare-engines-"))
    removable: list[bool] = []
    try:
        yield path, removable
    finally:
        if (removable or not any(path.iterdir())) and not args.keep:
            shutil.rmtree(path, ignore_errors=True)


def _cmd_compare(args: argparse.Namespace) -> int:
    def note(text: str) -> None:
        if not args.json:
            print(f"compare-engines: {text}", file=sys.stderr, flush=True)

    try:
        workload = _workload(args)
        with _work_dir(args) as (root, removable):
            verdict = compare_engines(workload, root, progress=note)
            if verdict.identical and not args.keep and not args.dir:
                removable.append(True)
            else:
                note(f"data dirs kept under {root}")
    except (CompareError, FeedError) as e:
        print(f"pageserver compare-engines: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report_json(verdict, workload), indent=2, sort_keys=True))
    else:
        print_report(verdict, workload)
    return 0 if verdict.identical else 1


def register(subparsers: Any) -> None:
    """Add ``compare-engines`` to ``pageserver``'s parser."""
    p = subparsers.add_parser(
        "compare-engines",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run one workload on each io engine and compare the results",
        description="Run one workload through a fresh daemon per io engine (std-fs, then "
        "trio-uring), flush and compact, then compare every layer file byte for byte, "
        "every get of a sample of keys at a sample of LSNs, and the LSNs, and show the "
        "timings side by side. Exits 1 on any difference, naming the first differing "
        "file and offset or key and LSN.\n\n"
        "Parity: checkpoint_timeout rolls and background compaction are off (the clock "
        "must not cut layers), and each daemon must report the engine it was asked for "
        "(no silent fallback).\n\n"
        "examples:\n"
        "  pageserver compare-engines\n"
        "  pageserver compare-engines --count 1000000 --keys 5000 --kind test --json\n"
        "  pageserver compare-engines --file records.msgpack --keep",
    )
    add_workload_args(
        p, count=20_000, titles=("workload (the options of feed)", "sending (as feed)")
    )
    srv = p.add_argument_group("daemons")
    srv.add_argument(
        "--checkpoint-distance",
        type=positive_int,
        default=256 << 10,
        help="tenant checkpoint_distance (default 256 KiB: a dozen L0 layers for the default "
        "count, so that compaction merges them and creates an image layer)",
    )
    srv.add_argument(
        "--tenant-config",
        metavar="KEY=VALUE",
        type=parse_config_pair,
        action="append",
        default=[],
        help="another tenant config override (repeatable)",
    )
    srv.add_argument(
        "--server-config",
        metavar="KEY=VALUE",
        type=parse_config_pair,
        action="append",
        default=[],
        help="a pageserver.toml key, e.g. image_compression=zstd (repeatable)",
    )
    srv.add_argument("--dir", help="put the data dirs here and keep them (default: a temp dir)")
    srv.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    chk = p.add_argument_group("reads and output")
    chk.add_argument("--sample-keys", type=positive_int, default=50, help="keys read (default 50)")
    chk.add_argument("--sample-lsns", type=positive_int, default=8, help="LSNs per key (default 8)")
    chk.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    chk.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.set_defaults(func=_cmd_compare)
