"""``pageserver bench``: the benchmark harness of SPEC section 9.

One command, one machine, one run: every figure it prints was measured in the same run,
so ratios between them (trio-uring vs std-fs, whole-job vs per-operation thread offload,
layer writes vs the raw disk) are meaningful where numbers from different runs (another
load on the machine, another page-cache state) would not be. Per engine it measures:

1. ingest records/s and MiB/s over the socket (a real ``pageserver run`` subprocess on a
   Unix socket, fed by the pipelined client), and *durable* ingest: the same records
   ended by ``flush``, timed until the flush replies; for ``--records`` small values and
   ``--large-records`` 8 KiB pages, while a second connection sends ``status`` every 5 ms
   and times the round trips (p50, p99, max: what other clients feel), and a 1 ms ticker
   on the daemon's own loop (:mod:`pageserver.bench._daemon`) records how late it wakes
   while the flush is outstanding (p50, p99, max) and during ingest;
2. flush MiB/s of layer bytes (in this process: a known amount ingested, ``flush`` timed);
3. event-loop responsiveness during those flushes (lateness of a 1 ms ticker on the same
   loop: p50, p99, max), with the idle loop's lateness as the floor;
4. ``get`` latency over the socket (p50, p99; one request at a time);

and, as baselines: the same flushes with per-operation thread offload (what
``trio.open_file`` does; :class:`~pageserver.bench._measure.PerOpOffloadEngine`), and the
raw sequential write speed of the disk (``os.write`` of 1 MiB blocks + fsync, and ``fio``
when it is on PATH); and as peers, the same records made durable by RocksDB and SQLite
(:mod:`pageserver.bench._peers`; RocksDB needs the ``bench`` extra, and a peer that cannot
run is listed under ``peers_skipped``). The measurements live in
:mod:`pageserver.bench._measure`; ``--plot FILE.png`` draws the durable-ingest and
``status`` figures with matplotlib (also in the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pageserver.bench import _measure as m
from pageserver.bench import _peers as peers_mod
from pageserver.client.cli import nonnegative_int, positive_int
from pageserver.client.feed import FeedGenerator
from pageserver.config import DEFAULT_MAX_FRAME_BYTES
from pageserver.io import ENGINE_KINDS, STD_FS, TRIO_URING, uring_refusal_reason
from pageserver.logging import configure_logging

__all__ = ["register", "run_bench"]


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (``--quick`` shrinks all of it)."""

    records: int
    value_size: int
    gets: int
    flush_records: int
    flush_rounds: int
    raw_mib: int
    idle_s: float
    #: The large-value workload (durable ingest and ``status`` only; 0 leaves it out).
    large_records: int = 0
    large_value_size: int = 8192


DEFAULT = Sizes(1_000_000, 100, 3000, 400_000, 5, 256, 0.5, 60_000, 8192)
QUICK = Sizes(20_000, 100, 300, 40_000, 2, 16, 0.1, 1000, 8192)


def _fs_type(path: str) -> str:
    """The file-system type of ``path`` (longest mount-point prefix in /proc/mounts)."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def _note(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"bench: {text}", file=sys.stderr, flush=True)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 and a > 0 else None


def run_bench(
    engines: list[str], sizes: Sizes, base_dir: str, no_sync: bool, quiet: bool = False,
    peers: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Run every measurement and return the report (the ``--json`` document)."""
    skipped: dict[str, str] = {}
    if TRIO_URING in engines and (reason := uring_refusal_reason()) is not None:
        skipped[TRIO_URING] = reason
        engines = [e for e in engines if e != TRIO_URING]
        _note(quiet, f"skipping trio-uring: {reason}")
    base = tempfile.mkdtemp(prefix="pageserver-bench-", dir=base_dir)
    report: dict[str, Any] = {
        "version": 1,
        "machine": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "dir": os.path.realpath(base_dir),
            "fs_type": _fs_type(base_dir),
        },
        "settings": {
            "records": sizes.records,
            "value_size": sizes.value_size,
            "gets": sizes.gets,
            "flush_records_per_round": sizes.flush_records,
            "flush_rounds": sizes.flush_rounds,
            "raw_mib": sizes.raw_mib,
            "large_records": sizes.large_records,
            "large_value_size": sizes.large_value_size,
            "no_sync": no_sync,
            "get_via": "socket",
            "status_interval_ms": STATUS_INTERVAL_S * 1e3,
        },
        "skipped": skipped,
        "engines": {},
        "baselines": {},
        "peers": {},
        "peers_skipped": {},
        "ratios": {},
    }
    t_start = time.perf_counter()
    try:
        _note(quiet, f"raw sequential write of {sizes.raw_mib} MiB (os.write 1 MiB + fsync)")
        raw = m.raw_sequential_write(base, sizes.raw_mib)
        fio_mib_s, fio_note = m.fio_sequential_write(base, sizes.raw_mib)
        report["baselines"]["raw_sequential"] = {
            "mib": sizes.raw_mib,
            "cached_mib_per_s": raw.cached_mib_per_s,
            "synced_mib_per_s": raw.synced_mib_per_s,
        }
        report["baselines"]["fio"] = {"mib_per_s": fio_mib_s, "note": fio_note}

        flush_kw: dict[str, Any] = {
            "rounds": sizes.flush_rounds,
            "records": sizes.flush_records,
            "value_size": sizes.value_size,
            "no_sync": no_sync,
            "idle_s": sizes.idle_s,
        }
        for kind in engines:
            _note(
                quiet,
                f"{kind}: daemon, {sizes.records} records of {sizes.value_size} B over the socket",
            )
            sock = m.socket_bench(
                kind, base, records=sizes.records, value_size=sizes.value_size,
                gets=sizes.gets, no_sync=no_sync, status_interval=STATUS_INTERVAL_S,
            )  # fmt: skip
            fields: dict[str, float | None] = {
                "ingest_records_per_s": sock.records_per_s,
                "ingest_mib_per_s": sock.mib_per_s,
                "ingest_seconds": sock.ingest_seconds,
                "socket_flush_seconds": sock.flush_seconds,
                **_durable_fields(sock, ""),
                **_get_fields(sock.get_latency),
            }
            if sizes.large_records:
                _note(
                    quiet,
                    f"{kind}: daemon, {sizes.large_records} records of "
                    f"{sizes.large_value_size} B over the socket",
                )
                large = m.socket_bench(
                    kind, base, records=sizes.large_records, value_size=sizes.large_value_size,
                    gets=0, no_sync=no_sync, status_interval=STATUS_INTERVAL_S,
                )  # fmt: skip
                fields.update(_durable_fields(large, "large_"))
            _note(quiet, f"{kind}: {sizes.flush_rounds} in-process flushes with a 1 ms ticker")
            fl = m.flush_bench_isolated(kind, base, **flush_kw)
            report["engines"][kind] = {**fields, **_flush_fields(fl)}
        _note(quiet, "baseline: the same flushes with per-operation thread offload")
        report["baselines"]["per_op_offload"] = _flush_fields(
            m.flush_bench_isolated(m.PER_OP, base, **flush_kw)
        )
        if peers:
            _run_peers(report, sizes, base, no_sync, quiet)
        else:
            report["peers_skipped"] = dict.fromkeys(peers_mod.PEERS, "--no-peers")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report["ratios"] = _ratios(report, no_sync)
    report["seconds"] = time.perf_counter() - t_start
    return report


#: How often the second connection sends ``status`` during ingest and the flush.
STATUS_INTERVAL_S = 0.005


def _workloads(sizes: Sizes) -> list[tuple[str, int, int]]:
    """(report prefix, records, value size) of the durable-ingest workloads."""
    out = [("", sizes.records, sizes.value_size)]
    if sizes.large_records:
        out.append(("large_", sizes.large_records, sizes.large_value_size))
    return out


def _run_peers(report: dict[str, Any], sizes: Sizes, base: str, no_sync: bool, quiet: bool) -> None:
    """RocksDB and SQLite, on the records of each workload (the daemon's own records)."""
    available = []
    for name in peers_mod.PEERS:
        reason = peers_mod.peer_unavailable(name)
        if reason is None:
            available.append(name)
            report["peers"][name] = {}
        else:
            report["peers_skipped"][name] = reason
            _note(quiet, f"skipping {name}: {reason}")
    for prefix, records, value_size in _workloads(sizes):
        if not available:
            break
        gen = FeedGenerator(count=records, keys=max(1, min(records, 10_000)), value_size=value_size)
        batches = m.build_columns(gen)
        for name in available:
            _note(quiet, f"peer {name}: {records} records of {value_size} B made durable")
            r = peers_mod.durable_ingest(name, base, batches, records * value_size, no_sync)
            report["peers"][name].update(
                {
                    f"{prefix}durable_records_per_s": r.records_per_s,
                    f"{prefix}durable_mib_per_s": r.mib_per_s,
                    f"{prefix}durable_seconds": r.seconds,
                    f"{prefix}durable_device_mib": r.device_mib,
                }
            )
        del batches


def _durable_fields(sock: m.SocketResult, prefix: str) -> dict[str, float | None]:
    st = m.summarize_ms(sock.status_latency)
    tf = m.summarize_ms(sock.ticker_flush)
    ti = m.summarize_ms(sock.ticker_ingest)
    return {
        f"{prefix}daemon_ticker_flush_p50_ms": tf["p50_ms"],
        f"{prefix}daemon_ticker_flush_p99_ms": tf["p99_ms"],
        f"{prefix}daemon_ticker_flush_max_ms": tf["max_ms"],
        f"{prefix}daemon_ticker_flush_samples": tf["samples"],
        f"{prefix}daemon_ticker_ingest_p50_ms": ti["p50_ms"],
        f"{prefix}daemon_ticker_ingest_p99_ms": ti["p99_ms"],
        f"{prefix}daemon_ticker_ingest_max_ms": ti["max_ms"],
        f"{prefix}durable_records_per_s": sock.durable_records_per_s,
        f"{prefix}durable_mib_per_s": sock.durable_mib_per_s,
        f"{prefix}durable_seconds": sock.durable_seconds,
        f"{prefix}durable_device_mib": sock.device_mib,
        f"{prefix}status_p50_ms": st["p50_ms"],
        f"{prefix}status_p99_ms": st["p99_ms"],
        f"{prefix}status_max_ms": st["max_ms"],
        f"{prefix}status_samples": st["samples"],
    }


def _get_fields(samples: list[float]) -> dict[str, float]:
    s = m.summarize_ms(samples)
    return {"get_p50_ms": s["p50_ms"], "get_p99_ms": s["p99_ms"], "get_count": s["samples"]}


def _flush_fields(fl: m.FlushResult) -> dict[str, float]:
    late = m.summarize_ms(fl.lateness)
    idle = m.summarize_ms(fl.idle_lateness)
    return {
        "flush_mib_per_s": fl.mib_per_s,
        "flush_layer_bytes": float(fl.layer_bytes),
        "flush_seconds": fl.seconds,
        "flush_layers": float(fl.layers),
        "lateness_p50_ms": late["p50_ms"],
        "lateness_p99_ms": late["p99_ms"],
        "lateness_max_ms": late["max_ms"],
        "lateness_samples": late["samples"],
        "idle_lateness_p50_ms": idle["p50_ms"],
        "idle_lateness_p99_ms": idle["p99_ms"],
    }


def _ratios(report: dict[str, Any], no_sync: bool) -> dict[str, float | None]:
    """Same-run ratios; each name says numerator / denominator and what "better" is."""
    eng: dict[str, dict[str, float]] = report["engines"]
    per_op: dict[str, float] = report["baselines"]["per_op_offload"]
    raw = report["baselines"]["raw_sequential"]
    raw_key = "cached_mib_per_s" if no_sync else "synced_mib_per_s"
    out: dict[str, float | None] = {}
    std, uring = eng.get(STD_FS), eng.get(TRIO_URING)
    if std and uring:
        for label, key in (
            ("ingest records/s", "ingest_records_per_s"),
            ("flush MiB/s", "flush_mib_per_s"),
            ("get p50 latency (lower is better)", "get_p50_ms"),
            ("loop lateness p99 during flush (lower is better)", "lateness_p99_ms"),
        ):
            out[f"{label}: trio-uring / std-fs"] = _ratio(uring[key], std[key])
    for kind, e in eng.items():
        name = "std-fs whole-job offload" if kind == STD_FS else kind
        out[f"flush MiB/s: {name} / per-op offload"] = _ratio(
            e["flush_mib_per_s"], per_op["flush_mib_per_s"]
        )
        out[f"loop lateness p99 (lower is better): {name} / per-op offload"] = _ratio(
            e["lateness_p99_ms"], per_op["lateness_p99_ms"]
        )
    for prefix, label in (("", "durable ingest"), ("large_", "durable ingest, large values")):
        key = f"{prefix}durable_records_per_s"
        rates = {k: e[key] for k, e in eng.items() if key in e}
        if std and uring and key in std and key in uring:
            out[f"{label} records/s: trio-uring / std-fs"] = _ratio(uring[key], std[key])
        if not rates:
            continue
        best_kind = max(rates, key=lambda k: rates[k])
        for peer, pe in report["peers"].items():
            if key in pe:
                out[f"{label} records/s: best engine ({best_kind}) / {peer}"] = _ratio(
                    rates[best_kind], pe[key]
                )
    which = "page cache" if no_sync else "with fsync"
    for kind, e in [*eng.items(), (m.PER_OP, per_op)]:
        out[f"flush MiB/s {kind} / raw sequential write ({which})"] = _ratio(
            e["flush_mib_per_s"], raw[raw_key]
        )
    return out


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str = ",.1f") -> str:
    return "-" if v is None else format(v, spec)


#: (label, report key, format) of the per-engine table's rows.
_ROWS = (
    ("ingest records/s (socket)", "ingest_records_per_s", ",.0f"),
    ("ingest MiB/s (socket, values)", "ingest_mib_per_s", ",.1f"),
    ("flush MiB/s (layer bytes)", "flush_mib_per_s", ",.1f"),
    ("loop lateness in flush p50 ms", "lateness_p50_ms", ".3f"),
    ("loop lateness in flush p99 ms", "lateness_p99_ms", ".3f"),
    ("loop lateness in flush max ms", "lateness_max_ms", ".2f"),
    ("loop lateness idle p99 ms", "idle_lateness_p99_ms", ".3f"),
    ("get p50 ms (socket)", "get_p50_ms", ".3f"),
    ("get p99 ms (socket)", "get_p99_ms", ".3f"),
)
#: Rows of the durable-ingest table (per engine and per peer); {n} and {size} are filled in.
_DURABLE_ROWS = (
    ("durable ingest records/s ({n} x {size} B)", "durable_records_per_s", ",.0f"),
    ("durable ingest MiB/s ({n} x {size} B)", "durable_mib_per_s", ",.1f"),
    ("MiB written to the device ({n} x {size} B)", "durable_device_mib", ",.0f"),
    ("status RTT p50 ms (ingest+flush)", "status_p50_ms", ".3f"),
    ("status RTT p99 ms (ingest+flush)", "status_p99_ms", ".3f"),
    ("status RTT max ms (ingest+flush)", "status_max_ms", ".2f"),
    ("daemon 1 ms ticker late p50 ms (flush)", "daemon_ticker_flush_p50_ms", ".3f"),
    ("daemon 1 ms ticker late p99 ms (flush)", "daemon_ticker_flush_p99_ms", ".3f"),
    ("daemon 1 ms ticker late max ms (flush)", "daemon_ticker_flush_max_ms", ".2f"),
    ("daemon 1 ms ticker late p50 ms (ingest)", "daemon_ticker_ingest_p50_ms", ".3f"),
    ("daemon 1 ms ticker late p99 ms (ingest)", "daemon_ticker_ingest_p99_ms", ".3f"),
    ("daemon 1 ms ticker late max ms (ingest)", "daemon_ticker_ingest_max_ms", ".2f"),
)


def print_report(report: dict[str, Any]) -> None:
    """The human form: three rich tables (per engine, baselines, ratios)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    mach, st = report["machine"], report["settings"]
    console.print(
        f"pageserver bench: kernel {mach['kernel']}, {mach['cpus']} CPUs, Python "
        f"{mach['python']}, dir {mach['dir']} ({mach['fs_type']}), "
        f"{'no_sync' if st['no_sync'] else 'fsync on'}; {st['records']} records x "
        f"{st['value_size']} B over the socket; flushes: {st['flush_rounds']} x "
        f"{st['flush_records_per_round']} records; {report['seconds']:.1f}s in all"
    )
    for kind, reason in report["skipped"].items():
        console.print(f"[yellow]skipped {kind}: {reason}[/yellow]")

    # One column per engine (metrics as rows): stays readable in 80 columns.
    cols: list[tuple[str, dict[str, float]]] = list(report["engines"].items())
    cols.append((f"{m.PER_OP} (baseline)", report["baselines"]["per_op_offload"]))
    t = Table(title="per engine: ingest and get over a Unix socket, flushes in-process")
    t.add_column("metric")
    for name, _ in cols:
        t.add_column(name, justify="right")
    for label, key, spec in _ROWS:
        t.add_row(label, *(_fmt(e.get(key), spec) for _, e in cols))
    console.print(t)

    d = Table(title="durable ingest over the socket (records, then flush, until its reply); peers in-process")
    d.add_column("metric")
    dcols: list[tuple[str, dict[str, float]]] = [
        *report["engines"].items(),
        *report["peers"].items(),
    ]
    for name, _ in dcols:
        d.add_column(name, justify="right")
    for prefix, n, size in (
        ("", st["records"], st["value_size"]),
        ("large_", st.get("large_records", 0), st.get("large_value_size", 0)),
    ):
        if not n:
            continue
        for label, key, spec in _DURABLE_ROWS:
            d.add_row(
                label.format(n=f"{n:,}", size=size),
                *(_fmt(e.get(prefix + key), spec) for _, e in dcols),
            )
    console.print(d)
    for name, reason in report.get("peers_skipped", {}).items():
        console.print(f"[yellow]peer {name} skipped: {reason}[/yellow]")

    b = Table(title="raw sequential write of the disk (1 MiB blocks)")
    b.add_column("method")
    b.add_column("MiB/s", justify="right")
    raw = report["baselines"]["raw_sequential"]
    b.add_row(f"os.write x {raw['mib']} MiB (page cache)", _fmt(raw["cached_mib_per_s"]))
    b.add_row(f"os.write x {raw['mib']} MiB + fsync", _fmt(raw["synced_mib_per_s"]))
    fio = report["baselines"]["fio"]
    b.add_row(f"fio ({fio['note']})", _fmt(fio["mib_per_s"]))
    console.print(b)

    r = Table(title="ratios (same run)")
    r.add_column("ratio")
    r.add_column("value", justify="right")
    for name, v in report["ratios"].items():
        r.add_row(name, _fmt(v, ".2f" if v is None or v >= 0.1 else ".4f"))
    console.print(r)


def plot_report(report: dict[str, Any], path: str) -> None:
    """Durable ingest (records/s per engine and peer, per workload) and ``status`` round
    trips during ingest + flush (p50/p99/max per engine), as one PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = report["settings"]
    systems = [*report["engines"].items(), *report["peers"].items()]
    workloads = [("", f"{st['records']:,} x {st['value_size']} B")]
    if st.get("large_records"):
        workloads.append(("large_", f"{st['large_records']:,} x {st['large_value_size']} B"))
    fig, axes = plt.subplots(1, len(workloads) + 1, figsize=(5 * (len(workloads) + 1), 4.2))
    for ax, (prefix, label) in zip(axes, workloads, strict=False):
        names = [n for n, e in systems if f"{prefix}durable_records_per_s" in e]
        rates = [e[f"{prefix}durable_records_per_s"] for n, e in systems if n in names]
        bars = ax.bar(names, rates, color=["#4c72b0" if n in report["engines"] else "#999999" for n in names])
        ax.bar_label(bars, labels=[f"{r:,.0f}" for r in rates], fontsize=8)
        ax.set_title(f"durable ingest, {label}")
        ax.set_ylabel("records/s (until the flush/sync returned)")
        ax.tick_params(axis="x", labelrotation=20)
    ax = axes[-1]
    engines = list(report["engines"])
    width = 0.25
    for i, (q, color) in enumerate((("p50", "#55a868"), ("p99", "#dd8452"), ("max", "#c44e52"))):
        vals = [report["engines"][k].get(f"status_{q}_ms", 0.0) for k in engines]
        ax.bar([j + (i - 1) * width for j in range(len(engines))], vals, width, label=q, color=color)
    ax.set_xticks(range(len(engines)), engines)
    ax.set_ylabel("ms")
    ax.set_title(f"status RTT during ingest+flush\n({label_of(st)})", fontsize=10)
    ax.legend()
    fig.suptitle(
        f"pageserver bench: {'no_sync' if st['no_sync'] else 'fsync on'}, "
        f"{report['machine']['cpus']} CPUs, {report['machine']['fs_type']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label_of(settings: dict[str, Any]) -> str:
    return f"{settings['records']:,} x {settings['value_size']} B"


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


#: The largest value the benchmark sends: one record must fit a ``put`` frame of the
#: daemon's (default) ``max_frame_bytes``, with room for the request around it.
MAX_VALUE_SIZE = DEFAULT_MAX_FRAME_BYTES - 4096


def _value_size(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = nonnegative_int(text) if low == 0 else positive_int(text)
        if v > MAX_VALUE_SIZE:
            raise argparse.ArgumentTypeError(
                f"at most {MAX_VALUE_SIZE} (a record must fit one put frame of the daemon's "
                f"max_frame_bytes, {DEFAULT_MAX_FRAME_BYTES}), got {text!r}"
            )
        return v

    return parse


def _engines(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for k in kinds:
        if k not in ENGINE_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown engine {k!r} (use {', '.join(ENGINE_KINDS)})"
            )
    if not kinds:
        raise argparse.ArgumentTypeError("no engine given")
    return list(dict.fromkeys(kinds))


def _cmd_bench(args: argparse.Namespace) -> int:
    # The in-process flushes log every layer at info level; the tables are the output.
    configure_logging(args.log_format, logging.WARNING)
    base = QUICK if args.quick else DEFAULT
    sizes = Sizes(
        records=args.records or base.records,
        value_size=args.value_size if args.value_size is not None else base.value_size,
        gets=args.gets or base.gets,
        flush_records=args.flush_records or base.flush_records,
        flush_rounds=args.flush_rounds or base.flush_rounds,
        raw_mib=args.raw_mib or base.raw_mib,
        idle_s=base.idle_s,
        large_records=base.large_records if args.large_records is None else args.large_records,
        large_value_size=args.large_value_size or base.large_value_size,
    )
    base_dir = args.dir or tempfile.gettempdir()
    if not os.path.isdir(base_dir):
        print(f"pageserver: error: --dir {base_dir!r} is not a directory", file=sys.stderr)
        return 1
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "pageserver: error: --plot needs matplotlib (pip install -e '.[bench]')",
                file=sys.stderr,
            )
            return 1
    try:
        report = run_bench(
            args.engines, sizes, base_dir, args.no_sync, quiet=args.json, peers=not args.no_peers
        )
    except m.DaemonError as e:
        print(f"pageserver: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print_report(report)
    if args.plot:
        plot_report(report, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``pageserver bench`` to the command line."""
    p = subparsers.add_parser(
        "bench",
        help="measure ingest, flush, loop responsiveness and get latency per io engine",
        description=(
            "Benchmark this machine in one run, per io engine (std-fs, trio-uring): ingest "
            "records/s and MiB/s over a Unix socket to a real daemon subprocess, and durable "
            "ingest (the records, then flush, until its reply) for small values and 8 KiB "
            "pages, with status round trips on a second connection meanwhile; flush MiB/s "
            "of layer bytes and the lateness of a 1 ms ticker on the same trio loop while "
            "flushes run (in-process); get latency over the socket; as baselines, the "
            "same flushes with per-operation thread offload (trio.open_file style) and the "
            "raw sequential write speed of the disk (os.write 1 MiB blocks + fsync; fio too "
            "if installed); as peers, the same records made durable by RocksDB (needs the "
            "bench extra: pip install -e '.[bench]') and SQLite. Prints tables, or one JSON "
            "document with --json; --plot FILE.png draws the durable-ingest figures. "
            "trio-uring is skipped, with the reason, where the kernel refuses io_uring. The "
            "default run takes about 2 minutes on 2 cores; --quick takes seconds."
        ),
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a few seconds; for tests)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument(
        "--engines",
        type=_engines,
        default=[STD_FS, TRIO_URING],
        help="comma-separated engines to measure (default std-fs,trio-uring)",
    )
    p.add_argument(
        "--records", type=positive_int, help=f"records fed over the socket (default {DEFAULT.records})"
    )
    p.add_argument(
        "--value-size",
        type=_value_size(0),
        help=f"image bytes per record, socket and flushes (default {DEFAULT.value_size})",
    )
    p.add_argument("--gets", type=positive_int, help=f"get requests timed (default {DEFAULT.gets})")
    p.add_argument(
        "--flush-records",
        type=positive_int,
        help=f"records ingested before each timed flush (default {DEFAULT.flush_records})",
    )
    p.add_argument(
        "--flush-rounds", type=positive_int, help=f"timed flushes (default {DEFAULT.flush_rounds})"
    )
    p.add_argument(
        "--raw-mib",
        type=positive_int,
        help=f"MiB of the raw write baseline (default {DEFAULT.raw_mib})",
    )
    p.add_argument(
        "--dir", help="where the data directories and test files go (default: $TMPDIR or /tmp)"
    )
    sync = p.add_mutually_exclusive_group()
    sync.add_argument(
        "--sync",
        dest="no_sync",
        action="store_false",
        help="really fsync (the default: the durable figures are durable, SPEC section 9)",
    )
    sync.add_argument(
        "--no-sync",
        dest="no_sync",
        action="store_true",
        help="skip every fsync, the daemons' and the peers' (nothing is then durable; the "
        "flush ratios are taken against the page cache's write speed): a quick look only",
    )
    p.set_defaults(no_sync=False)
    p.add_argument(
        "--large-records",
        type=nonnegative_int,
        help=f"records of the large-value durable ingest (default {DEFAULT.large_records}; 0: none)",
    )
    p.add_argument(
        "--large-value-size",
        type=_value_size(1),
        help=f"bytes per record of the large-value workload (default {DEFAULT.large_value_size})",
    )
    p.add_argument(
        "--no-peers", action="store_true", help="leave out RocksDB and SQLite"
    )
    p.add_argument(
        "--plot", metavar="FILE.png", help="also draw the durable-ingest figures (matplotlib)"
    )
    p.set_defaults(func=_cmd_bench)
