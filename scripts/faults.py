#!/usr/bin/env python3
"""Real faults under a running pageserver: a full disk, and a disk that starts failing (EIO).

    .venv/bin/python scripts/faults.py --engine std-fs --kind enospc-tmpfs [--short] [--json]
    .venv/bin/python scripts/faults.py --engine trio-uring --kind enospc-ext4
    .venv/bin/python scripts/faults.py --engine std-fs --kind eio-ext4

Needs root (``mount``) and, for ext4, ``mkfs.ext4`` and loop devices. Where a mount is
refused it prints ``skipped: <reason>`` (JSON: ``"skipped"``) and exits 0.

``enospc-tmpfs`` / ``enospc-ext4``: the data directory lives on a small file system (a
tmpfs with ``size=``, or ext4 on a loop-mounted image). A filler file takes part of it.
The workload (the deterministic stream of ``crashloop.py``: Image values of 1-4 KiB,
``put`` batches, a ``flush`` every few batches) runs until a request fails because the disk
is full. Then: reads at or below the last reported ``disk_consistent_lsn`` must still equal
the model; the filler is deleted; the workload resends from ``last_record_lsn`` and flushes
(``writes_resumed_without_restart`` says whether the daemon took writes again without a
restart); then the daemon is restarted (SIGTERM, or SIGKILL if it does not stop) and
everything is checked again: startup, no leftover temp files, layers validate, dcl did not
go back, reads equal the model, and ingest resumes and flushes.

``eio-ext4``: the data directory lives on a loop-mounted ext4. While ingest and flushes
run, the file system is shut down with ``EXT4_IOC_SHUTDOWN`` (``EXT4_GOING_FLAGS_NOLOGFLUSH``:
what is not in the journal yet is gone, as at a power cut); from then on every write and
fsync fails with EIO. The daemon must abort (SPEC section 6: a failing write/fsync aborts,
never retries): exit by SIGABRT with a ``fatal io error, aborting`` log line. Then the image
is unmounted and mounted again (journal replay: exactly what reached the disk), and a new
daemon on it must start and hold every record at or below the highest dcl ever reported.

Prints one summary line (``--json``: one JSON object); exits 1 if anything was lost or an
invariant failed.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trio  # noqa: E402
from crashloop import (  # noqa: E402
    ENGINES,
    TENANT,
    TIMELINE,
    DaemonProc,
    LayerValidator,
    StartupFailed,
    Stream,
    future_layers,
    kill_children_on_signals,
    leftover_files,
    log_problems,
    verify_reads,
)

from pageserver.client import Client, ConnectionLost, ServerError  # noqa: E402

KINDS = ("enospc-tmpfs", "enospc-ext4", "eio-ext4")

#: ``_IOR('X', 125, __u32)``: direction read (2) << 30 | size 4 << 16 | 'X' << 8 | 125.
EXT4_IOC_SHUTDOWN = (2 << 30) | (4 << 16) | (ord("X") << 8) | 125
assert EXT4_IOC_SHUTDOWN == 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2

MIB = 1 << 20


class Skip(Exception):
    """The machine refuses what the fault needs (not root, no loop device, ...)."""


# ---------------------------------------------------------------------------------------------
# Mounts
# ---------------------------------------------------------------------------------------------


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class Mount:
    """A small tmpfs or a loop-mounted ext4 image at ``root/mnt``."""

    def __init__(self, fs: str, root: str, size_mib: int) -> None:
        self.fs = fs
        self.root = root
        self.size_mib = size_mib
        self.point = os.path.join(root, "mnt")
        self.image = os.path.join(root, "fs.img")
        self.mounted = False

    def mount(self) -> None:
        if os.geteuid() != 0:
            raise Skip("not root: mounting a file system needs root")
        if shutil.which("mount") is None:
            raise Skip("no mount command")
        os.makedirs(self.point, exist_ok=True)
        if self.fs == "tmpfs":
            p = _run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", self.point])
            if p.returncode != 0:
                raise Skip(f"mount -t tmpfs refused: {p.stderr.strip()}")
        else:
            if shutil.which("mkfs.ext4") is None:
                raise Skip("mkfs.ext4 not found")
            if not os.path.exists(self.image):
                with open(self.image, "wb") as f:
                    f.truncate(self.size_mib * MIB)
                p = _run(["mkfs.ext4", "-q", "-F", self.image])
                if p.returncode != 0:
                    raise Skip(f"mkfs.ext4 failed: {p.stderr.strip()}")
            p = _run(["mount", "-o", "loop", self.image, self.point])
            if p.returncode != 0:
                raise Skip(f"mount -o loop refused: {p.stderr.strip()}")
        self.mounted = True

    def umount(self) -> None:
        if not self.mounted:
            return
        for _ in range(50):
            p = _run(["umount", self.point])
            if p.returncode == 0:
                self.mounted = False
                return
            time.sleep(0.1)
        p = _run(["umount", "-l", self.point])
        self.mounted = p.returncode != 0

    def remount(self) -> None:
        """Unmount and mount the image again: what is on it is what reached the disk."""
        self.umount()
        self.mount()

    def shutdown(self) -> None:
        """EXT4_IOC_SHUTDOWN with NOLOGFLUSH: every later write/fsync on it fails with EIO."""
        fd = os.open(self.point, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)


def write_filler(path: str, size: int) -> None:
    block = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < size:
            done += os.write(fd, block[: min(MIB, size - done)])
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Tracker:
    """What the client was told: the model's side of the checks."""

    stream: Stream
    next_lsn: int = 1
    acked_lsn: int = 0
    reported_dcl: int = 0
    records_acked: int = 0
    bytes_acked: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def saw_dcl(self, dcl: Any) -> None:
        if isinstance(dcl, int) and dcl > self.reported_dcl:
            self.reported_dcl = dcl

    async def put(self, client: Client, max_records: int) -> None:
        records, nxt = self.stream.batch(self.next_lsn, max_records)
        r = await client.put(TENANT, TIMELINE, records)
        self.saw_dcl(r.get("disk_consistent_lsn"))
        self.acked_lsn = nxt - 1
        self.next_lsn = nxt
        self.records_acked += len(records)
        self.bytes_acked += sum(len(rec[2]) for rec in records)

    async def flush(self, client: Client) -> int:
        dcl = await client.flush(TENANT, TIMELINE)
        self.saw_dcl(dcl)
        return dcl

    async def resync(self, client: Client) -> dict[str, Any]:
        """Ask ``status`` and resend from ``last_record_lsn`` (the ``feed`` rule)."""
        tl = await client.timeline_status(TENANT, TIMELINE)
        self.saw_dcl(tl["disk_consistent_lsn"])
        self.next_lsn = tl["last_record_lsn"]
        self.acked_lsn = tl["last_record_lsn"]
        return tl


def error_dict(op: str, e: BaseException) -> dict[str, Any]:
    d: dict[str, Any] = {"op": op, "type": type(e).__name__, "message": str(e)[:400]}
    if isinstance(e, ServerError):
        d["code"] = e.code
    return d


def mentions_enospc(text: str) -> bool:
    return "No space left" in text or "ENOSPC" in text or f"Errno {errno.ENOSPC}]" in text


EIO_POINTS = ("ingest", "after-flush", "in-flush", "in-compact")


@dataclass
class RoundParams:
    checkpoint_distance: int
    filler_mib: int = 0
    at: str = ""  # EIO: where the shutdown lands (EIO_POINTS)


def round_plan(args: argparse.Namespace) -> list[RoundParams]:
    """The rounds of a run: one in the short form; in the long form, ENOSPC with several
    layer sizes (so the disk fills in an ephemeral write, a layer write or a metadata
    update) and EIO at every point of EIO_POINTS, twice."""
    size = args.size_mib
    if args.kind == "eio-ext4":
        points = ("ingest",) if args.short else EIO_POINTS * 2
        if args.at:
            points = tuple(args.at)
        # Large open layers: "ingest" lands while the open layer's ephemeral file is
        # being written, and a flush of one takes long enough to land "in-flush".
        return [RoundParams(4 * MIB, at=p) for p in points]
    if args.short:
        return [RoundParams(256 * 1024, max(2, size // 8))]
    return [
        RoundParams(256 * 1024, size // 8),
        RoundParams(1 * MIB, size // 8),
        RoundParams(4 * MIB, size // 4),
        RoundParams(64 * 1024, size // 8),
    ]


class FaultRun:
    """One round: a fresh file system, daemon, timeline and model."""

    def __init__(self, args: argparse.Namespace, index: int, params: RoundParams, root: str) -> None:
        self.args = args
        self.params = params
        self.engine: str = args.engine
        self.kind: str = args.kind
        self.rng = random.Random(args.seed * 1000 + index)
        self.root = os.path.join(root, f"round-{index}")
        os.makedirs(self.root)
        fs = "tmpfs" if self.kind == "enospc-tmpfs" else "ext4"
        self.mount = Mount(fs, self.root, args.size_mib)
        self.data_dir = os.path.join(self.mount.point, "data")
        self.tl_dir = os.path.join(self.data_dir, "tenants", TENANT, "timelines", TIMELINE)
        salt = args.seed * 1000 + index
        self.track = Tracker(Stream(keys=512, value_min=1000, value_max=4000, salt=salt))
        self.validator = LayerValidator()
        self.result: dict[str, Any] = {
            "round": index,
            "checkpoint_distance": params.checkpoint_distance,
            "skipped": None,
            "records_verified": 0,
            "lost": 0,
            "failures": [],
        }
        self.daemon: DaemonProc | None = None

    # -- helpers ----------------------------------------------------------------------------

    def fail(self, invariant: str, detail: str) -> None:
        self.result["failures"].append({"invariant": invariant, "detail": detail[:3000]})

    def new_daemon(self) -> DaemonProc:
        return DaemonProc(
            self.data_dir,
            os.path.join(self.root, "ps.sock"),
            self.engine,
            os.path.join(self.root, "logs"),
            no_sync=False,
        )

    async def start(self, tag: str) -> Client | None:
        assert self.daemon is not None
        self.daemon.spawn(tag=tag)
        try:
            return await self.daemon.connect(60)
        except StartupFailed as e:
            self.fail(f"startup ok ({tag})", f"{e}\n{self.daemon.log_text(3000)}")
            return None

    async def create_timeline(self, client: Client) -> None:
        await client.request(
            "tenant_create",
            tenant_id=TENANT,
            config={
                "checkpoint_distance": self.params.checkpoint_distance,
                "compaction_threshold": 3,
                "compaction_period": "0s",
            },
        )
        await client.request("timeline_create", tenant_id=TENANT, timeline_id=TIMELINE)

    async def verify(self, client: Client, label: str, durable: int, upto: int) -> None:
        """Reads equal the model: every key at ``durable`` and ``upto``, the last LSNs'
        records at their own LSN, and random samples below; differences at or below
        ``durable`` count as lost."""
        stream = self.track.stream
        pairs: list[tuple[int, int]] = []
        for lsn in sorted({durable, upto} - {0}):
            pairs += [(k, lsn) for k in range(stream.keys)]
        for lsn in range(max(1, durable - 8), upto + 1):
            pairs += [(k, lsn) for k in stream.keys_at(lsn)]
        if durable > 0:
            for _ in range(self.args.samples):
                lsn = self.rng.randint(1, durable)
                pairs.append((self.rng.choice(stream.keys_at(lsn)), lsn))
        res = await verify_reads(client, stream, pairs, durable)
        self.result["records_verified"] += res.compared
        self.result["lost"] += res.lost
        if res.lost or res.mismatched_above:
            self.fail(
                f"reads equal the model ({label})",
                f"{res.lost} lost at or below dcl {durable}, {res.mismatched_above} wrong above: "
                + "; ".join(res.examples),
            )

    async def check_restarted(self, client: Client, label: str) -> dict[str, Any]:
        """The restart invariants of crashloop.py, then resume ingest and flush."""
        left = leftover_files(self.data_dir)
        if left:
            self.fail(f"no temp/ephemeral files after startup ({label})", ", ".join(left[:10]))
        tl = await client.timeline_status(TENANT, TIMELINE)
        dcl, lrl = tl["disk_consistent_lsn"], tl["last_record_lsn"]
        reported = self.track.reported_dcl
        info: dict[str, Any] = {"dcl_after_restart": dcl, "dcl_reported_before": reported}
        if dcl < reported:
            lost = self.track.stream.records_between(dcl, reported)
            self.result["lost"] += lost
            self.fail(f"disk_consistent_lsn never goes back ({label})",
                      f"dcl {dcl} < reported {reported}: {lost} records lost")  # fmt: skip
        if lrl != dcl:
            self.fail(f"last_record_lsn == dcl after restart ({label})", f"lrl {lrl} dcl {dcl}")
        future = future_layers(self.tl_dir, dcl)
        if future:
            self.fail(f"no future layers after startup ({label})", ", ".join(future[:5]))
        problems = await self.validator.check(self.tl_dir, full=True)
        if problems:
            self.fail(f"every layer file validates ({label})", "\n".join(problems[:5]))
        info["layers"] = tl.get("layers")
        await self.verify(client, label, min(reported, dcl), dcl)
        self.track.saw_dcl(dcl)
        # Ingest resumes: resend from last_record_lsn, a few more batches, flush.
        await self.track.resync(client)
        try:
            for _ in range(self.args.resume_batches):
                await self.track.put(client, 48)
            new_dcl = await self.track.flush(client)
        except (ServerError, ConnectionLost) as e:
            self.fail(f"ingest resumes and flushes after restart ({label})", repr(e))
            info["resumed"] = False
            return info
        info["resumed"] = True
        info["dcl_after_resume"] = new_dcl
        await self.verify(client, label + ", after resume", new_dcl, new_dcl)
        return info

    async def stop(self, label: str, *, must_be_graceful: bool) -> int:
        assert self.daemon is not None
        self.daemon.signal(signal.SIGTERM)
        try:
            rc = await self.daemon.wait(30)
        except TimeoutError:
            self.fail(f"stops on SIGTERM ({label})", self.daemon.log_text(2000))
            return -signal.SIGKILL
        if must_be_graceful and rc != 0:
            self.fail(f"graceful stop exits 0 ({label})", f"exit status {rc}\n{self.daemon.log_text(2000)}")
        fatal, _errors = log_problems(self.daemon.log_text())
        if fatal and must_be_graceful:
            self.fail(f"no crash in the daemon log ({label})", "\n".join(fatal[:5]))
        return rc

    # -- full disk --------------------------------------------------------------------------

    async def enospc(self) -> None:
        a, r, tr = self.args, self.result, self.track
        filler = os.path.join(self.mount.point, "filler")
        write_filler(filler, self.params.filler_mib * MIB)
        r["filler_mib"] = self.params.filler_mib
        self.daemon = self.new_daemon()
        client = await self.start("first")
        if client is None:
            return
        async with client:
            await self.create_timeline(client)
            # 1. Ingest until the disk is full.
            t0 = time.monotonic()
            first_error = None
            batches = 0
            limit = 4 * a.size_mib * MIB
            while tr.bytes_acked < limit:
                try:
                    await tr.put(client, 64)
                    batches += 1
                    if batches % 6 == 0:
                        await tr.flush(client)
                except ServerError as e:
                    first_error = error_dict("put/flush", e)
                    break
                except ConnectionLost as e:
                    first_error = error_dict("put/flush", e)
                    break
            r["fill_s"] = round(time.monotonic() - t0, 2)
            r["records_acked_before_full"] = tr.records_acked
            r["mib_acked_before_full"] = round(tr.bytes_acked / MIB, 1)
            r["dcl_reported_before_full"] = tr.reported_dcl
            r["first_error"] = first_error
            if first_error is None:
                self.fail("the disk fills up (a request fails)", f"{tr.bytes_acked} bytes accepted")
                return
            r["error_mentions_enospc"] = mentions_enospc(first_error["message"])
            msg = first_error["message"]
            r["enospc_hit_in"] = (
                "flush (layer/metadata write; put waits on it)" if "flush" in msg
                else "open layer's ephemeral write" if "OSError(28" in msg or "broken" in msg
                else "other"
            )  # fmt: skip
            if not r["error_mentions_enospc"]:
                self.fail("the client's error names ENOSPC", first_error["message"])
            survived = self.daemon.alive()
            r["daemon_survived_enospc"] = survived
            if not survived:
                rc = await self.daemon.wait()
                self.fail("ENOSPC does not kill the daemon (only EIO/EROFS/EACCES abort)",
                          f"exit status {rc}\n{self.daemon.log_text(3000)}")  # fmt: skip
                r["daemon_exit_status"] = rc
            else:
                # 2. While full: what do put and flush say now, and are reads intact?
                full_errors = []
                for op in ("put", "flush"):
                    try:
                        if op == "put":
                            await tr.resync(client)
                            await tr.put(client, 16)
                        else:
                            await tr.flush(client)
                        full_errors.append({"op": op, "ok": True})
                    except (ServerError, ConnectionLost) as e:
                        full_errors.append(error_dict(op, e))
                r["while_full"] = full_errors
                await self.verify(client, "while full", tr.reported_dcl, tr.reported_dcl)
                # 3. Free space and try to continue without a restart.
                os.unlink(filler)
                r["writes_resumed_without_restart"], r["resume_error"] = await self.resume_writes(client)
                if r["writes_resumed_without_restart"]:
                    for _ in range(a.resume_batches * 4):
                        await tr.put(client, 64)
                    await tr.flush(client)
                    await self.verify(client, "after freeing space", tr.reported_dcl, tr.reported_dcl)
        if os.path.exists(filler):
            os.unlink(filler)
        r["flush_retries_logged"] = self.daemon.log_text().count("flush failed; retrying")
        # 4. The restart path.
        rc = await self.stop("after full disk", must_be_graceful=False)
        r["stop_exit_status_after_full"] = rc
        client = await self.start("restart")
        if client is None:
            return
        async with client:
            r["restart"] = await self.check_restarted(client, "restart after full disk")
        await self.stop("final", must_be_graceful=True)

    async def resume_writes(self, client: Client) -> tuple[bool, str | None]:
        """Resend from ``last_record_lsn`` and flush, for a few seconds (a failed flush is
        retried by the daemon every second)."""
        deadline = time.monotonic() + self.args.resume_wait
        last: str | None = None
        while time.monotonic() < deadline:
            try:
                await self.track.resync(client)
                await self.track.put(client, 16)
                await self.track.flush(client)
                return True, None
            except ServerError as e:
                last = str(e)[:400]
            except ConnectionLost as e:
                return False, f"connection lost: {e}"
            await trio.sleep(0.5)
        return False, last

    # -- EIO --------------------------------------------------------------------------------

    async def eio(self, at: str) -> None:
        """Shut the file system down ``at`` one of :data:`EIO_POINTS` and check the rest."""
        a, r, tr = self.args, self.result, self.track
        r["at"] = at
        self.daemon = self.new_daemon()
        started = await self.start("first")
        if started is None:
            return
        client: Client = started
        shut_at: float | None = None
        errors: list[dict[str, Any]] = []

        def shutdown() -> None:
            nonlocal shut_at
            r["dcl_reported_before_shutdown"] = tr.reported_dcl
            r["records_acked_before_shutdown"] = tr.records_acked
            self.mount.shutdown()
            shut_at = time.monotonic()

        async def after_shutdown_op(op: str, inflight: bool = False) -> None:
            try:
                if op == "put":
                    await tr.put(client, 64)
                elif op == "flush":
                    await tr.flush(client)
                else:
                    await client.request("compact", tenant_id=TENANT, timeline_id=TIMELINE)
                if inflight:
                    r["inflight_op"] = {"op": op, "ok": True, "after_shutdown": shut_at is not None}
            except ServerError as e:
                if inflight:
                    r["inflight_op"] = error_dict(op, e)
                if len(errors) < 5:
                    errors.append(error_dict(op, e))
                await trio.sleep(0.05)
            except ConnectionLost as e:
                # The daemon is gone (aborted, as expected); wait for it below.
                if inflight:
                    r["inflight_op"] = error_dict(op, e)
                await trio.sleep(0.05)

        async with client:
            await self.create_timeline(client)
            t0 = time.monotonic()
            batches = 0
            try:
                # Ingest (paced at about a.eio_mib_per_s, so the disk does not fill first)
                # with a flush every 5 batches.
                while time.monotonic() - t0 < a.ingest_s or (at == "ingest" and batches % 5 not in (2, 3)):
                    ahead = tr.bytes_acked / (a.eio_mib_per_s * MIB) - (time.monotonic() - t0)
                    if ahead > 0:
                        await trio.sleep(min(ahead, 0.5))
                    try:
                        await tr.put(client, 64)
                        batches += 1
                        if batches % 5 == 0:
                            await tr.flush(client)
                    except ServerError as e:
                        self.fail("requests succeed before the shutdown", repr(e))
                        return
                if at == "ingest":
                    # The open layer's ephemeral file exists and is being written.
                    shutdown()
                elif at == "after-flush":
                    # No open layer: the next put must create a new ephemeral file.
                    await tr.flush(client)
                    shutdown()
                else:
                    # While a flush of a large frozen layer / a compaction runs.
                    if at == "in-flush":
                        for _ in range(a.flush_batches):
                            await tr.put(client, 64)
                    op = "flush" if at == "in-flush" else "compact"
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(after_shutdown_op, op, True)
                        await trio.sleep(self.rng.uniform(0.002, 0.03))
                        shutdown()
                assert shut_at is not None
                # Keep the daemon busy until it dies or the window ends.
                i = 0
                while time.monotonic() - shut_at < a.after_shutdown_s and self.daemon.alive():
                    i += 1
                    await after_shutdown_op("flush" if i % 5 == 0 else "put")
            except ConnectionLost:
                pass
        r["records_acked"] = tr.records_acked
        r["dcl_reported_max"] = tr.reported_dcl
        r["errors_after_shutdown"] = errors
        try:
            rc: int | None = await self.daemon.wait(2 if self.daemon.alive() else 10)
        except TimeoutError:
            rc = None  # wait() killed it
        log = self.daemon.log_text()
        r["daemon_exit_status"] = rc
        r["daemon_aborted"] = rc == -signal.SIGABRT
        fatal_lines = [ln for ln in log.splitlines() if "fatal io error" in ln]
        r["fatal_log_line"] = fatal_lines[0][:400] if fatal_lines else None
        r["flush_retries_logged"] = log.count("flush failed; retrying")
        events = Counter(
            m.group(1) for m in re.finditer(r"level='(?:error|critical)' event='([^']*)'", log)
        )
        r["error_events"] = dict(events)
        if rc == -signal.SIGABRT:
            if not fatal_lines or "errno=5" not in fatal_lines[0]:
                self.fail("the abort is logged as a fatal io error with errno 5 (EIO)", log[-3000:])
        elif at == "ingest":
            self.fail("a failing write to the open layer aborts the daemon (SIGABRT)",
                      f"exit status {rc}\n{log[-3000:]}")  # fmt: skip
        else:
            r["note"] = (
                f"not aborted {a.after_shutdown_s:.0f}s after the shutdown (killed): every request "
                "failed with an error instead, e.g. " + (errors[0]["message"] if errors else "-")
            )
        # What reached the disk: unmount and mount the image again (journal replay).
        self.mount.remount()
        restarted = await self.start("after remount")
        if restarted is None:
            return
        async with restarted:
            r["restart"] = await self.check_restarted(restarted, "restart after EIO")
        await self.stop("final", must_be_graceful=True)

    # -- driver -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            self.mount.mount()
        except Skip as e:
            self.result["skipped"] = str(e)
            return self.result
        try:
            if self.kind == "eio-ext4":
                await self.eio(self.params.at)
            else:
                await self.enospc()
        finally:
            if self.daemon is not None and self.daemon.alive():
                await self.daemon.kill()
            self.result["elapsed_s"] = round(time.monotonic() - t0, 1)
            self.result["ok"] = self.result["lost"] == 0 and not self.result["failures"]
            if not self.result["ok"] and self.mount.mounted:
                # Keep what failed: copy the data directory out of the mount.
                keep = os.path.join(self.root, "data-copy")
                shutil.copytree(self.data_dir, keep, dirs_exist_ok=True, ignore_dangling_symlinks=True)
            self.mount.umount()
        return self.result


#: The rounds in progress (their daemons are killed on SIGTERM/SIGHUP).
RUNNING: list[FaultRun] = []


async def run_all(args: argparse.Namespace, root: str) -> dict[str, Any]:
    t0 = time.monotonic()
    rounds = []
    for index, params in enumerate(round_plan(args)):
        fault_run = FaultRun(args, index, params, root)
        RUNNING.append(fault_run)
        try:
            rounds.append(await fault_run.run())
        finally:
            RUNNING.remove(fault_run)
        if rounds[-1]["skipped"]:
            break
    skipped = rounds[-1]["skipped"]
    result: dict[str, Any] = {
        "engine": args.engine,
        "kind": args.kind,
        "short": bool(args.short),
        "seed": args.seed,
        "fs_size_mib": args.size_mib,
        "skipped": skipped,
        "rounds": len(rounds) if not skipped else 0,
        "records_verified": sum(r["records_verified"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
        "failures": [dict(f, round=r["round"]) for r in rounds for f in r["failures"]],
        "elapsed_s": round(time.monotonic() - t0, 1),
        "round_results": rounds,
    }
    if args.kind.startswith("enospc") and not skipped:
        result["enospc_seen"] = sum(1 for r in rounds if r.get("error_mentions_enospc"))
        result["writes_resumed_without_restart"] = {
            "yes": sum(1 for r in rounds if r.get("writes_resumed_without_restart")),
            "no": sum(1 for r in rounds if r.get("writes_resumed_without_restart") is False),
        }
        result["resumed_after_restart"] = sum(1 for r in rounds if (r.get("restart") or {}).get("resumed"))
    if args.kind == "eio-ext4" and not skipped:
        result["aborted"] = {r["at"]: 0 for r in rounds}
        result["not_aborted"] = {r["at"]: 0 for r in rounds}
        for r in rounds:
            result["aborted" if r.get("daemon_aborted") else "not_aborted"][r["at"]] += 1
        result["resumed_after_restart"] = sum(1 for r in rounds if (r.get("restart") or {}).get("resumed"))
    result["ok"] = bool(skipped) or (result["lost"] == 0 and not result["failures"])
    return result


def round_line(r: dict[str, Any], kind: str) -> str:
    parts = [f"  round {r['round']}:"]
    if kind.startswith("enospc"):
        fe = r.get("first_error") or {}
        parts.append(f"checkpoint_distance={r['checkpoint_distance']}")
        parts.append(f"full after {r.get('mib_acked_before_full')} MiB ({r.get('records_acked_before_full')} records),")
        parts.append(f"hit in {r.get('enospc_hit_in')}: {fe.get('message', '')[:90]!r},")
        resumed = r.get("writes_resumed_without_restart")
        parts.append(f"writes resumed without restart: {'yes' if resumed else 'no'},")
    else:
        parts.append(f"at={r.get('at')} aborted={r.get('daemon_aborted')} exit={r.get('daemon_exit_status')}")
        parts.append(f"dcl_before_shutdown={r.get('dcl_reported_before_shutdown')},")
    restart = r.get("restart") or {}
    parts.append(f"restart dcl={restart.get('dcl_after_restart')} resumed={restart.get('resumed')},")
    parts.append(f"verified={r['records_verified']} lost={r['lost']}")
    return " ".join(parts)


def summary_line(r: dict[str, Any]) -> str:
    if r["skipped"]:
        return f"skipped: {r['skipped']}"
    parts = [f"faults engine={r['engine']} kind={r['kind']} rounds={r['rounds']}"]
    if r["kind"].startswith("enospc"):
        w = r["writes_resumed_without_restart"]
        parts.append(f"enospc_seen={r['enospc_seen']}")
        parts.append(f"writes resumed without restart: yes={w['yes']} no={w['no']}")
    else:
        parts.append(f"aborted={r['aborted']} not_aborted={r['not_aborted']}")
    parts.append(f"resumed_after_restart={r['resumed_after_restart']}")
    parts.append(f"records_verified={r['records_verified']} lost={r['lost']}")
    parts.append(f"invariant_failures={len(r['failures'])} elapsed={r['elapsed_s']}s")
    parts.append("OK" if r["ok"] else "FAILED")
    return " ".join(parts) + "\n" + "\n".join(round_line(x, r["kind"]) for x in r["round_results"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Full-disk and EIO faults under a real pageserver daemon.")
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--short", action="store_true", help="the quick form the tests run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) even after a clean run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--at", action="append", choices=EIO_POINTS, help="eio-ext4: only these shutdown points (repeatable)")
    p.add_argument("--size-mib", type=int, default=None, help="file system size (default 64, --short 32)")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time() * 1000) % 1_000_000
    if args.size_mib is None:
        if args.kind == "eio-ext4":
            args.size_mib = 128 if args.short else 256
        else:
            args.size_mib = 32 if args.short else 64
    args.eio_mib_per_s = 8.0
    args.flush_batches = 60
    args.ingest_s = 1.0 if args.short else 4.0
    args.samples = 200 if args.short else 1000
    args.resume_batches = 4
    args.after_shutdown_s = 5.0 if args.short else 10.0
    args.resume_wait = 4.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix="psf-", dir="/tmp")

    def unmount_all() -> None:
        for r in RUNNING:
            r.mount.umount()

    kill_children_on_signals(lambda: [r.daemon for r in RUNNING], root, unmount_all)
    try:
        result = trio.run(run_all, args, root)
    except BaseException:
        print(f"faults: aborted; work directory kept: {root}", file=sys.stderr)
        raise
    if result["ok"] and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        result["work_dir"] = root
    print(json.dumps(result, indent=2) if args.json else summary_line(result))
    if not args.json and not result["ok"]:
        for f in result["failures"]:
            print(f"  round {f['round']}: {f['invariant']}: {f['detail'][:600]}")
        print(f"  work directory kept: {root} (seed {args.seed})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
