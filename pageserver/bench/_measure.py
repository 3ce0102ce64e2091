"""The measurements behind ``pageserver bench`` (SPEC section 9); the report is in
:mod:`pageserver.bench`.

Three kinds of measurement, each chosen so that its number means what its label says:

* **Over the socket** (:func:`socket_bench`): a real daemon subprocess (``pageserver run``)
  on a Unix socket, fed by the pipelined client. The batches are built *before* the clock
  starts, so the figure is the server's ingest rate, not this process's record generator;
  ``get`` latency is measured over the same socket, one request at a time.
* **In-process flushes** (:func:`flush_bench`): a :class:`TenantManager` in this process
  ingests a known amount, then ``flush`` is timed while a 1 ms ticker runs on the same trio
  loop. The ticker's lateness is what every other connection of a daemon would feel
  while a flush runs: under std-fs the flush job is in a worker thread (but still shares
  the GIL), under trio-uring it runs on the loop between ``cooperative_checkpoint`` calls.
* **Baselines**: the same flushes through :class:`PerOpOffloadEngine` (every syscall its
  own ``trio.to_thread.run_sync``, as ``trio.open_file`` does, with the job itself on the
  loop), and the raw sequential write speed of the disk (``os.write`` of 1 MiB blocks,
  and ``fio`` when it is installed).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt
import trio

from pageserver.client import Client, ConnectionLost, PutBatch
from pageserver.client.feed import FeedGenerator
from pageserver.config import ENGINE_ENV_VAR, PageserverConfig
from pageserver.io import (
    FileStat,
    Gather,
    IoContext,
    IoEngine,
    PendingIo,
    StdFsEngine,
    create_engine,
    drive_to_completion,
)
from pageserver.layers.batch import PutColumns
from pageserver.layers.layer_name import try_parse_layer_name
from pageserver.layers.value import Image, encode_value
from pageserver.logging import configure_logging
from pageserver.tenant.manager import TenantManager

MIB = 1024 * 1024
TENANT = "be" * 16
TIMELINE = "cd" * 16
#: The engine label of the per-operation offload baseline (not a configurable engine).
PER_OP = "per-op-offload"
TICK = 0.001

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``samples``; 0.0 for no samples."""
    if not samples:
        return 0.0
    s = sorted(samples)
    rank = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[rank]


def summarize_ms(samples: list[float]) -> dict[str, float]:
    """p50/p99/max (milliseconds) of samples given in seconds, plus their count."""
    return {
        "p50_ms": percentile(samples, 50) * 1e3,
        "p99_ms": percentile(samples, 99) * 1e3,
        "max_ms": max(samples, default=0.0) * 1e3,
        "samples": float(len(samples)),
    }


# ---------------------------------------------------------------------------------------
# The per-operation offload baseline engine
# ---------------------------------------------------------------------------------------


class PerOpOffloadEngine(IoEngine):
    """std-fs with every operation in its own ``trio.to_thread.run_sync`` call.

    This is what ``trio.open_file`` does, and what the project's whole-job offload is
    meant to beat: ``runs_jobs_in_thread`` is False, so ``ctx.run_job`` awaits the
    layer-writing job on the loop (its CPU work included) and only the syscalls leave
    it, each paying a thread round trip. Never used by the daemon; a baseline only.
    Threads are not abandoned on cancel, so buffers outlive every syscall using them.

    Built on io's public interface only: it wraps a :class:`StdFsEngine`, whose
    coroutines never suspend, and drives each of its operations to the end in a worker
    thread (:func:`_in_thread`), so the syscalls are exactly std-fs's own.
    """

    kind: ClassVar[str] = PER_OP
    runs_jobs_in_thread: ClassVar[bool] = False

    def __init__(self) -> None:
        self._std = StdFsEngine()

    async def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return await _in_thread(self._std.open, path, flags, mode)

    async def read_at(self, fd: int, buf: bytearray | memoryview, offset: int) -> int:
        return await _in_thread(self._std.read_at, fd, buf, offset)

    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        return await _in_thread(self._std.write_at, fd, data, offset)

    async def write_gather_at(self, fd: int, gather: Gather, offset: int) -> int:
        return await _in_thread(self._std.write_gather_at, fd, gather, offset)

    async def fsync(self, fd: int) -> None:
        await _in_thread(self._std.fsync, fd)

    async def fdatasync(self, fd: int) -> None:
        await _in_thread(self._std.fdatasync, fd)

    async def submit_writeback(self, fd: int, offset: int, nbytes: int) -> PendingIo:
        return await _in_thread(self._std.submit_writeback, fd, offset, nbytes)

    async def stat(self, fd: int) -> FileStat:
        return await _in_thread(self._std.stat, fd)

    async def set_len(self, fd: int, length: int) -> None:
        await _in_thread(self._std.set_len, fd, length)

    async def close(self, fd: int) -> None:
        await _in_thread(self._std.close, fd)

    async def rename(self, src: str, dst: str) -> None:
        await _in_thread(self._std.rename, src, dst)

    async def rename_noreplace(self, src: str, dst: str) -> None:
        await _in_thread(self._std.rename_noreplace, src, dst)

    async def unlink(self, path: str) -> None:
        await _in_thread(self._std.unlink, path)

    async def rmdir(self, path: str) -> None:
        await _in_thread(self._std.rmdir, path)

    async def aclose(self) -> None:
        await self._std.aclose()


async def _in_thread(op: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run one std-fs operation in its own ``trio.to_thread.run_sync`` call.

    The coroutine is created in the thread too, so a cancellation before the thread
    starts leaves no never-awaited coroutine behind.
    """
    return await trio.to_thread.run_sync(lambda: drive_to_completion(op(*args)))


def make_engine(kind: str) -> IoEngine:
    """A real engine by kind, or the per-op offload baseline for :data:`PER_OP`."""
    return PerOpOffloadEngine() if kind == PER_OP else create_engine(kind)


# ---------------------------------------------------------------------------------------
# The 1 ms ticker
# ---------------------------------------------------------------------------------------


@dataclass
class Ticker:
    """A task that sleeps 1 ms at a time and, while ``recording``, keeps each tick's
    lateness (actual minus requested sleep, seconds). It is the stand-in for "every other
    connection of the daemon": if the loop is blocked, its ticks come late."""

    recording: bool = False
    samples: list[float] = field(default_factory=list)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        clock = time.perf_counter
        while True:
            t0 = clock()
            await trio.sleep(TICK)
            if self.recording:
                self.samples.append(clock() - t0 - TICK)

    def take(self) -> list[float]:
        out, self.samples = self.samples, []
        return out


# ---------------------------------------------------------------------------------------
# In-process flushes
# ---------------------------------------------------------------------------------------


@dataclass
class FlushResult:
    engine: str
    layer_bytes: int
    seconds: float
    layers: int
    lateness: list[float]
    idle_lateness: list[float]

    @property
    def mib_per_s(self) -> float:
        return self.layer_bytes / MIB / self.seconds


def _layer_bytes(timeline_dir: str) -> int:
    """Bytes of the layer files in a timeline directory (names that parse as layer names:
    not metadata, ephemeral or temp files)."""
    return sum(
        os.path.getsize(os.path.join(timeline_dir, name))
        for name in os.listdir(timeline_dir)
        if try_parse_layer_name(name) is not None
    )


async def _flush_bench_async(
    kind: str, base: str, rounds: int, records: int, value_size: int, no_sync: bool, idle_s: float
) -> FlushResult:
    engine = make_engine(kind)
    ctx = IoContext(engine, no_sync=no_sync)
    payload = encode_value(Image(b"\xa5" * value_size))
    prefix = bytes(14)
    nkeys = max(1, min(records, 100_000))
    batch = 1000
    ticker = Ticker()
    layer_bytes = 0
    seconds = 0.0
    lsn = 1
    data_dir = tempfile.mkdtemp(prefix=f"flush-{kind}-", dir=base)
    try:
        config = PageserverConfig(metrics_addr="", no_sync=no_sync)
        async with trio.open_nursery() as nursery:
            await nursery.start(ticker.run)
            ticker.recording = True
            await trio.sleep(idle_s)
            ticker.recording = False
            idle = ticker.take()
            async with TenantManager.open(ctx, data_dir, config) as mgr:
                # No roll during ingest: each round's flush writes exactly one layer.
                await mgr.create_tenant(
                    TENANT, {"checkpoint_distance": 1 << 40, "checkpoint_timeout": "24h"}
                )
                await mgr.create_timeline(TENANT, TIMELINE)
                tl_dir = os.path.join(data_dir, "tenants", TENANT, "timelines", TIMELINE)
                for _ in range(rounds):
                    done = 0
                    while done < records:
                        n = min(batch, records - done)
                        # Keys made per batch: the benchmark must not hold large lists itself.
                        recs = [
                            (
                                prefix + ((done + i) * 2654435761 % nkeys).to_bytes(4, "big"),
                                lsn,
                                payload,
                            )
                            for i in range(n)
                        ]
                        await mgr.put(TENANT, TIMELINE, recs)
                        done += n
                        lsn += 1
                    before = _layer_bytes(tl_dir)
                    ticker.recording = True
                    t0 = time.perf_counter()
                    await mgr.flush(TENANT, TIMELINE)
                    seconds += time.perf_counter() - t0
                    ticker.recording = False
                    layer_bytes += _layer_bytes(tl_dir) - before
                layers = int(mgr.status()[0]["timelines"][0]["layers"]["l0"])
            nursery.cancel_scope.cancel()
    finally:
        await ctx.aclose()  # closes the engine too
        shutil.rmtree(data_dir, ignore_errors=True)
    return FlushResult(kind, layer_bytes, seconds, layers, ticker.take(), idle)


def flush_bench(
    kind: str, base: str, *, rounds: int, records: int, value_size: int, no_sync: bool,
    idle_s: float = 0.3,
) -> FlushResult:  # fmt: skip
    """Ingest ``records`` values of ``value_size`` bytes, time the flush; ``rounds`` times.

    Runs its own ``trio.run`` so that each engine starts from a fresh loop (and ring).
    Also records the ticker's lateness on an idle loop first, the floor to compare with.
    """
    return trio.run(_flush_bench_async, kind, base, rounds, records, value_size, no_sync, idle_s)


def _flush_bench_child(kind: str, base: str, **kw: Any) -> FlushResult:
    """The spawned process's entry: it starts with structlog's defaults (stdout, info)."""
    configure_logging("kv", logging.WARNING)
    return flush_bench(kind, base, **kw)


def flush_bench_isolated(
    kind: str, base: str, *, rounds: int, records: int, value_size: int, no_sync: bool,
    idle_s: float = 0.3,
) -> FlushResult:  # fmt: skip
    """:func:`flush_bench` in a fresh (spawned) interpreter.

    Each engine then starts from the same state: no heap left by an earlier measurement
    (which would make the cyclic GC's pauses, seen by the ticker, grow run after run), no
    warm trio thread cache, so the order in which engines run does not bias the ratios.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        fut = pool.submit(
            _flush_bench_child, kind, base, rounds=rounds, records=records, value_size=value_size,
            no_sync=no_sync, idle_s=idle_s,
        )  # fmt: skip
        return fut.result()


# ---------------------------------------------------------------------------------------
# Over the socket: a daemon subprocess
# ---------------------------------------------------------------------------------------


@dataclass
class SocketResult:
    engine: str
    records: int
    value_bytes: int
    ingest_seconds: float
    flush_seconds: float
    get_latency: list[float]
    #: Round trips of ``status`` on a second connection during ingest and the flush.
    status_latency: list[float] = field(default_factory=list)
    #: ``perf_counter`` times: ingest start, flush start, flush reply.
    windows: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Lateness of the daemon's own 1 ms ticker (:mod:`pageserver.bench._daemon`), for the
    #: ticks that started while the flush was outstanding, and during ingest.
    ticker_flush: list[float] = field(default_factory=list)
    ticker_ingest: list[float] = field(default_factory=list)
    #: MiB the data directory's block device wrote during ingest and flush
    #: (:func:`device_bytes_written`), or None.
    device_mib: float | None = None

    @property
    def records_per_s(self) -> float:
        return self.records / self.ingest_seconds

    @property
    def mib_per_s(self) -> float:
        return self.value_bytes / MIB / self.ingest_seconds

    @property
    def durable_seconds(self) -> float:
        """From the first ``put`` sent until the ``flush`` reply: the records are durable."""
        return self.ingest_seconds + self.flush_seconds

    @property
    def durable_records_per_s(self) -> float:
        return self.records / self.durable_seconds

    @property
    def durable_mib_per_s(self) -> float:
        return self.value_bytes / MIB / self.durable_seconds


class DaemonError(RuntimeError):
    """The daemon subprocess did not start, or did not stop cleanly (message has its log)."""


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def write_daemon_config(data_dir: str, socket_path: str, kind: str, no_sync: bool) -> None:
    """The ``pageserver.toml`` of a benchmark daemon: Unix socket, no /metrics listener."""
    os.makedirs(data_dir, exist_ok=True)
    text = (
        f'listen_addr = "unix:{socket_path}"\n'
        'metrics_addr = ""\n'
        f'virtual_file_io_engine = "{kind}"\n'
        f"no_sync = {'true' if no_sync else 'false'}\n"
    )
    with open(os.path.join(data_dir, "pageserver.toml"), "w") as f:
        f.write(text)


async def _wait_ready(proc: subprocess.Popen[bytes], addr: str, log: str, kind: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise DaemonError(f"{kind} daemon exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            client = await Client.connect(addr)
        except ConnectionLost:
            if time.monotonic() > deadline:
                raise DaemonError(f"{kind} daemon not ready after 30s:\n{_log_tail(log)}") from None
            await trio.sleep(0.05)
            continue
        async with client:
            got = client.server_info.get("io_engine")
        if got != kind:
            raise DaemonError(f"asked for a {kind} daemon, got io_engine={got!r}")
        return


def batch_records(value_size: int) -> int:
    """Records per ``put`` of the socket benchmark: 1000, fewer for large values (about
    1 MiB a frame, as ``feed`` batches)."""
    return max(1, min(1000, (1 << 20) // max(1, value_size + 30)))


def build_columns(gen: FeedGenerator) -> list[PutColumns]:
    """``gen``'s records as columnar ``put`` batches (built before any clock starts)."""
    per = batch_records(gen.value_size)
    return [
        PutColumns.from_records([gen.record(j) for j in range(i, min(gen.count, i + per))])
        for i in range(0, gen.count, per)
    ]


def read_samples(path: str) -> npt.NDArray[np.float64]:
    """``(start, value)`` pairs written as native doubles by the daemon's ticker or the
    status poller: an ``(n, 2)`` array (empty if the file is missing or cut short)."""
    try:
        flat = np.fromfile(path, np.float64)
    except (OSError, ValueError):
        return np.empty((0, 2), np.float64)
    return flat[: len(flat) // 2 * 2].reshape(-1, 2)  # a pair cut short is dropped


async def _socket_bench_async(
    addr: str, kind: str, gen: FeedGenerator, gets: int, proc: subprocess.Popen[bytes],
    log: str, status_interval: float, status_path: str, data_dir: str,
) -> SocketResult:  # fmt: skip
    await _wait_ready(proc, addr, log, kind)
    columns = build_columns(gen)
    batches = [PutBatch(c) for c in columns]
    del columns
    records, value_size = gen.count, gen.value_size
    async with await Client.connect(addr) as c:
        await c.request("tenant_create", tenant_id=TENANT)
        await c.request("timeline_create", tenant_id=TENANT, timeline_id=TIMELINE)
        dev_before = device_bytes_written(data_dir)
        # The second connection is another process (pageserver.bench._poller): what it
        # measures is the daemon, not this process's own loop. Without OpenBLAS's worker
        # threads (nothing here multiplies matrices): each spins ~100 ms of a CPU once
        # numpy is imported, which perf showed overlapping the first ~25 ms of ingest.
        poller = subprocess.Popen(
            [sys.executable, "-m", "pageserver.bench._poller", addr, str(status_interval), status_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )  # fmt: skip
        stdout = poller.stdout
        assert stdout is not None
        try:
            line = b""
            with trio.move_on_after(30):
                line = await trio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
            if line.strip() != b"ready":
                poller.kill()
                raise DaemonError(
                    f"status poller did not start ({poller.wait()}):\n{_log_tail(log)}"
                )
            await trio.sleep(status_interval)  # the poller is connected and running
            t_start = time.perf_counter()
            await c.put_pipelined(TENANT, TIMELINE, batches, window=8)
            t_flush_start = time.perf_counter()
            t_ingest = t_flush_start - t_start
            await c.flush(TENANT, TIMELINE)
            t_end = time.perf_counter()
            t_flush = t_end - t_flush_start
        finally:
            poller.send_signal(signal.SIGTERM)
            rc = await trio.to_thread.run_sync(poller.wait)
            stdout.close()
        if rc != 0:
            raise DaemonError(f"status poller exited with {rc}")
        if dev_before is not None:
            _wait_ephemeral_gone(data_dir)
        device_mib = device_mib_between(dev_before, device_bytes_written(data_dir))
        # Freed after the clock stopped: ~20 ms for 480 MiB of batches, which delayed
        # the flush request when it came before it.
        del batches
        polls = read_samples(status_path)
        in_window = (polls[:, 0] >= t_start) & (polls[:, 0] < t_end)
        status = polls[in_window, 1].tolist()
        if not status:
            raise DaemonError("the status poller timed no round trip in the ingest+flush window")
        last = gen.lsn_of(records - 1)
        rng = random.Random(42)
        lat: list[float] = []
        for _ in range(gets):
            key = gen.key(rng.randrange(gen.keys))
            t0 = time.perf_counter()
            value = await c.get(TENANT, TIMELINE, key, last)
            lat.append(time.perf_counter() - t0)
            if value is None:
                raise DaemonError(f"get of a fed key returned nothing ({kind})")
    return SocketResult(
        kind, records, records * value_size, t_ingest, t_flush, lat, status,
        (t_start, t_flush_start, t_end), device_mib=device_mib,
    )  # fmt: skip


def read_ticks(path: str, windows: tuple[float, float, float]) -> tuple[list[float], list[float]]:
    """The daemon ticker's lateness (seconds) for ticks that started during the flush
    (``windows[1]..windows[2]``) and during ingest (``windows[0]..windows[1]``)."""
    ticks = read_samples(path)
    start, late = ticks[:, 0], ticks[:, 1]
    t0, t1, t2 = windows
    flush = late[(start >= t1) & (start < t2)]
    ingest = late[(start >= t0) & (start < t1)]
    return flush.tolist(), ingest.tolist()


def socket_bench(
    kind: str, base: str, *, records: int, value_size: int, gets: int, no_sync: bool,
    status_interval: float = 0.005,
) -> SocketResult:  # fmt: skip
    """Start ``pageserver run`` on ``kind``, feed it, flush, time ``get``s, SIGTERM it.

    Ingest and the flush are timed apart (their sum is the durable ingest), while a second
    connection sends ``status`` every ``status_interval`` s and times the round trips.

    The socket lives in a short directory under /tmp (``sun_path`` is 108 bytes at most,
    and ``--dir`` may be long); the data directory is under ``base``.
    """
    sock_dir = tempfile.mkdtemp(prefix="psb-", dir="/tmp")
    data_dir = tempfile.mkdtemp(prefix=f"daemon-{kind}-", dir=base)
    socket_path = os.path.join(sock_dir, "ps.sock")
    log = os.path.join(sock_dir, "daemon.log")
    ticks = os.path.join(sock_dir, "ticks.f64")
    polls = os.path.join(sock_dir, "status.f64")
    write_daemon_config(data_dir, socket_path, kind, no_sync)
    env = dict(os.environ)
    env[ENGINE_ENV_VAR] = kind
    env.pop("PAGESERVER_FAILPOINTS", None)
    # ``pageserver run`` plus a 1 ms ticker on its loop (pageserver.bench._daemon).
    cmd = [sys.executable, "-m", "pageserver.bench._daemon", data_dir, ticks]
    try:
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        try:
            gen = FeedGenerator(count=records, keys=max(1, min(records, 10_000)), value_size=value_size)
            result = trio.run(
                _socket_bench_async, f"unix:{socket_path}", kind, gen, gets, proc, log,
                status_interval, polls, data_dir,
            )  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            if rc != 0:
                raise DaemonError(f"{kind} daemon stopped with {rc}:\n{_log_tail(log)}")
            result.ticker_flush, result.ticker_ingest = read_ticks(ticks, result.windows)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return result
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Raw sequential write (fio-style) and fio itself
# ---------------------------------------------------------------------------------------


def device_bytes_written(path: str) -> int | None:
    """Bytes the block device holding ``path`` has written so far, after an ``os.sync()``
    (so that what was only in the page cache is counted where it is due): the
    sectors-written field of ``/sys/dev/block/MAJ:MIN/stat`` times 512. None where ``path``
    is on no block device with such statistics (tmpfs, overlayfs, another OS).

    What the durable-ingest rows call "MiB written to the device": the difference of two
    readings around one contender's run. It counts every process writing to that device
    meanwhile (on a shared machine, others too), and it is what the disk really had to
    take: RocksDB compresses its files and never writes write-ahead logs it drops before
    they are synced; the daemon writes every value once into a layer (its ephemeral files
    are deleted before writeback).
    """
    try:
        st = os.stat(path)
        stat_path = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat"
        os.sync()
        with open(stat_path) as f:
            fields = f.read().split()
        return int(fields[6]) * 512
    except (OSError, ValueError, IndexError):
        return None


def device_mib_between(before: int | None, after: int | None) -> float | None:
    """MiB between two :func:`device_bytes_written` readings (None if either is)."""
    if before is None or after is None:
        return None
    return (after - before) / MIB


def _wait_ephemeral_gone(data_dir: str, timeout: float = 10.0) -> None:
    """After the flush reply: wait until the daemon has deleted its ephemeral files (it
    does right after the reply), so that a sync does not write back what the daemon
    throws away. Gives up quietly after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(
            name.startswith("ephemeral-") for _d, _s, files in os.walk(data_dir) for name in files
        ):
            return
        time.sleep(0.01)


@dataclass
class RawResult:
    nbytes: int
    write_seconds: float
    fsync_seconds: float

    @property
    def cached_mib_per_s(self) -> float:
        """Speed of the writes alone (page cache): what a ``no_sync`` flush competes with."""
        return self.nbytes / MIB / self.write_seconds

    @property
    def synced_mib_per_s(self) -> float:
        """Writes plus the final fsync: the disk's sequential write speed."""
        return self.nbytes / MIB / (self.write_seconds + self.fsync_seconds)


def raw_sequential_write(base: str, mib: int) -> RawResult:
    """``os.write`` of 1 MiB blocks into a new file, then one ``fsync`` (timed apart)."""
    chunk = os.urandom(MIB)
    path = os.path.join(base, "raw-sequential.tmp")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        t0 = time.perf_counter()
        for _ in range(mib):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
        os.unlink(path)
    return RawResult(mib * MIB, t1 - t0, t2 - t1)


def fio_sequential_write(base: str, mib: int) -> tuple[float | None, str]:
    """fio's sequential 1 MiB write with an end fsync: (MiB/s, note); None if unavailable."""
    fio = shutil.which("fio")
    if fio is None:
        return None, "fio not on PATH"
    path = os.path.join(base, "fio.tmp")
    cmd = [
        fio, "--name=seqwrite", "--rw=write", "--bs=1M", f"--size={mib}M",
        f"--filename={path}", "--end_fsync=1", "--ioengine=psync", "--output-format=json",
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            return None, f"fio failed: {out.stderr.strip()[:200]}"
        data: Any = json.loads(out.stdout[out.stdout.index("{") :])
        bw = float(data["jobs"][0]["write"]["bw_bytes"])
        return bw / MIB, "fio --rw=write --bs=1M --end_fsync=1"
    except (OSError, ValueError, KeyError, IndexError, subprocess.TimeoutExpired) as e:
        return None, f"fio output not understood: {e}"
    finally:
        Path(path).unlink(missing_ok=True)
