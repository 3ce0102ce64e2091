#!/usr/bin/env python3
"""Crash loop: kill a real ``pageserver run`` over and over and check what a restart keeps.

    .venv/bin/python scripts/crashloop.py --engine std-fs --iterations 200 [--seed S]
    .venv/bin/python scripts/crashloop.py --engine trio-uring --short --json

One data directory persists across the iterations. Each iteration is one daemon lifetime:

1. start ``pageserver run -D DIR`` (for a *failpoint* iteration with
   ``PAGESERVER_FAILPOINTS="<point>=exit|panic"``);
2. after it is ready, check the restart invariants:
   * startup succeeded (the daemon answers ``hello``) within the timeout;
   * no ``*.___temp`` and no ``ephemeral-*`` file is left anywhere in DIR;
   * every layer file validates (the startup validation of SPEC section 3, run here again
     on every new file), and no "future" layer (above ``disk_consistent_lsn``) survived;
   * ``disk_consistent_lsn`` did not go below the highest value any reply or status ever
     reported, and ``last_record_lsn == disk_consistent_lsn`` (SPEC section 5);
   * reads equal the model: every key at the reported dcl and at the new dcl, every record
     of the last LSNs at or below the reported dcl at its own LSN, and random (key, LSN)
     samples below it, all at or above ``gc_cutoff_lsn``. A read at or below the reported
     dcl that differs counts as *lost*;
   * garbage collection (SPEC section 11): ``gc_cutoff_lsn`` did not go below the highest
     value any ``gc`` reply or status reported; random reads below it answer
     ``lsn_too_old``; with ``--remote`` (a ``[remote_storage] local_path``), checked while
     no daemon runs: the newest ``index_part.json`` names no layer object that does not
     exist;
3. run the workload: ``put`` batches (whole LSNs per batch) resent from the timeline's
   ``last_record_lsn`` as ``feed`` does (the first batch after a restart must be accepted
   and its ``skipped`` count must be exactly the records at or below dcl: *ingest
   resumes*), interleaved with ``flush``, ``compact``, ``gc`` and ``status``;
4. end it by one *kill*:
   * ``sigkill``: SIGKILL at a random instant of the workload;
   * ``gckill``: SIGKILL at a random instant of a ``gc`` request (after puts, a flush and a
     compaction; the delay is drawn from the GC passes' usual duration);
   * ``failpoint``: the armed failpoint fires (``exit``: status 1, ``panic``: SIGABRT);
   * ``startup``: SIGKILL at a random instant between spawn and ready (tenant loading
     included), no workload;
   * ``sigterm``: graceful stop (exit 0); after it, dcl must equal the last acknowledged
     LSN exactly.

The records are a deterministic stream: LSN ``l`` carries 1-3 keys chosen by a hash of
``l``, each an Image whose bytes are a function of (key, lsn). So the model is the stream
itself: after any crash the timeline must hold exactly a prefix of it up to its dcl.

The tenant uses a small ``checkpoint_distance``, ``compaction_threshold`` and
``gc_horizon`` (and ``compaction_period = gc_period = "0s"``: compaction and GC run only
when the workload asks, so the data directory is quiescent while it is checked) so
flushes, compactions and GC passes that remove layers happen often.

Prints one summary line (``--json``: one JSON object) and exits 1 if anything was lost or
any invariant failed; the data directory of a failed run is kept for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from pageserver.client import Client, ConnectionLost, ServerError  # noqa: E402

ENGINES = ("std-fs", "trio-uring")
TENANT = "c0ffee00" * 4
TIMELINE = "5eed0000" * 4
TEMP_SUFFIX = ".___temp"

#: Points of ``pageserver/failpoints.py`` (read from there at run time when possible).
DEFAULT_FAILPOINTS = (
    "flush-before-dcl-update",
    "layer-before-rename",
    "layer-after-rename",
    "crashsafe-after-write",
    "crashsafe-before-rename",
    "crashsafe-after-rename",
    "virtual-file-write",
    "virtual-file-fsync",
)

#: The kinds of the short form, in order: every kind, and failpoints at the flush, layer
#: and crash-safe-overwrite steps, with both actions.
SHORT_SCHEDULE = (
    "sigkill",
    "failpoint:flush-before-dcl-update=exit",
    "startup",
    "failpoint:layer-before-rename=panic",
    "gckill",
    "sigkill",
    "failpoint:crashsafe-before-rename=exit",
    "sigterm",
    "failpoint:gc-before-delete=exit",
    "gckill",
    "failpoint:layer-after-rename=exit",
    "failpoint:virtual-file-fsync=panic",
    "gckill",
    "failpoint:gc-before-delete=panic",
    "sigkill",
)

KIND_WEIGHTS = {"sigkill": 37, "gckill": 12, "failpoint": 31, "startup": 12, "sigterm": 8}

#: Failpoints of garbage collection: chosen more often than the others (a third of the
#: failpoint lifetimes) so that a long run fires each of them many times.
GC_FAILPOINTS = ("gc-before-delete",)

LAYER_RE = re.compile(
    r"^(?P<k0>[0-9A-F]{36})-(?P<k1>[0-9A-F]{36})__(?P<l0>[0-9A-F]{16})"
    r"(?:-(?P<l1>[0-9A-F]{16}))?(?:-v1-[0-9a-f]{8}|-[0-9a-f]{8})?$"
)


def known_failpoints() -> tuple[str, ...]:
    try:
        from pageserver.failpoints import KNOWN_POINTS
    except ImportError:
        return DEFAULT_FAILPOINTS
    return tuple(sorted(KNOWN_POINTS))


# ---------------------------------------------------------------------------------------------
# The record stream and its model
# ---------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def mix(*xs: int) -> int:
    """A small deterministic 64-bit hash (splitmix64 steps over the inputs)."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        h ^= h >> 31
        h = h * 0x94D049BB133111EB & _M64
        h ^= h >> 29
    return h


def image_value(data: bytes) -> bytes:
    """The Value encoding of an Image (SPEC section 1): u32 tag 0, u64 len, bytes."""
    return struct.pack(">IQ", 0, len(data)) + data


class Stream:
    """Records: LSN ``l >= 1`` holds 1-3 distinct keys, each an Image of f(key, lsn).

    Every LSN has at least one record, so the LSNs are contiguous from 1. The model keeps,
    per key, the LSNs that wrote it (in order), so ``expected(k, lsn)`` is one bisection.
    """

    def __init__(self, keys: int = 256, value_min: int = 24, value_max: int = 400, salt: int = 0) -> None:
        self.keys = keys
        self.value_min = value_min
        self.value_max = value_max
        self.salt = salt
        self._lsns: list[array[int]] = [array("Q") for _ in range(keys)]
        self._count = array("Q", [0])  # records with lsn <= index
        self.modelled_upto = 0

    @staticmethod
    def key(k: int) -> bytes:
        return bytes([0]) + struct.pack(">IIIBI", 1663, 5, 16385, 0, k)

    def keys_at(self, lsn: int) -> list[int]:
        h = mix(self.salt, lsn)
        n = 1 + h % 3
        return sorted({mix(self.salt, lsn, j) % self.keys for j in range(n)})

    def data(self, k: int, lsn: int) -> bytes:
        h = mix(self.salt, k, lsn, 7)
        size = self.value_min + h % (self.value_max - self.value_min + 1)
        head = f"k{k}@{lsn}#{h & 0xFFFF:04x};".encode()
        return (head * (size // len(head) + 1))[:size]

    def _model(self, lsn: int) -> None:
        while self.modelled_upto < lsn:
            nl = self.modelled_upto + 1
            ks = self.keys_at(nl)
            for k in ks:
                self._lsns[k].append(nl)
            self._count.append(self._count[-1] + len(ks))
            self.modelled_upto = nl

    def batch(self, first_lsn: int, max_records: int) -> tuple[list[tuple[bytes, int, bytes]], int]:
        """Records of whole LSNs from ``first_lsn`` (at least one LSN); returns the next LSN."""
        records: list[tuple[bytes, int, bytes]] = []
        lsn = max(first_lsn, 1)
        while True:
            ks = self.keys_at(lsn)
            if records and len(records) + len(ks) > max_records:
                break
            records.extend((self.key(k), lsn, image_value(self.data(k, lsn))) for k in ks)
            lsn += 1
        self._model(lsn - 1)
        return records, lsn

    def expected(self, k: int, lsn: int) -> bytes | None:
        self._model(lsn)
        lsns = self._lsns[k]
        i = bisect_right(lsns, lsn)
        return None if i == 0 else self.data(k, lsns[i - 1])

    def records_upto(self, lsn: int) -> int:
        self._model(lsn)
        return int(self._count[min(lsn, len(self._count) - 1)]) if lsn > 0 else 0

    def records_between(self, lo: int, hi: int) -> int:
        """Records with ``lo < lsn <= hi``."""
        return max(0, self.records_upto(hi) - self.records_upto(lo))


# ---------------------------------------------------------------------------------------------
# The daemon subprocess
# ---------------------------------------------------------------------------------------------

DAEMON_MAIN = "import sys; from pageserver.cli import main; sys.exit(main())"


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class StartupFailed(Exception):
    pass


class DaemonProc:
    """``pageserver run -D data_dir`` as a subprocess on a Unix socket, logs in ``log_dir``."""

    def __init__(
        self,
        data_dir: str,
        sock: str,
        engine: str,
        log_dir: str,
        *,
        no_sync: bool = False,
        tenant_defaults: dict[str, Any] | None = None,
        extra_toml: str = "",
    ) -> None:
        self.data_dir = data_dir
        self.sock = sock
        self.addr = f"unix:{sock}"
        self.engine = engine
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = ""
        os.makedirs(data_dir, exist_ok=True)
        os.makedirs(log_dir, exist_ok=True)
        cfg = os.path.join(data_dir, "pageserver.toml")
        if not os.path.exists(cfg):
            lines = [
                f'listen_addr = "{self.addr}"',
                'metrics_addr = ""',
                f"no_sync = {'true' if no_sync else 'false'}",
            ]
            if tenant_defaults:
                lines.append("[tenant_config]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in tenant_defaults.items()]
            if extra_toml:
                lines.append(extra_toml.rstrip("\n"))
            with open(cfg, "w") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
            # Durable like the daemon's own files (faults.py cuts power under it).
            for d in (data_dir, os.path.dirname(data_dir)):
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def spawn(self, failpoints: str = "", tag: str = "") -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        self.log_path = os.path.join(self.log_dir, f"daemon-{self.starts:05d}{tag}.log")
        env = dict(os.environ)
        env["PAGESERVER_VIRTUAL_FILE_IO_ENGINE"] = self.engine
        env["PAGESERVER_FAILPOINTS"] = failpoints
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", DAEMON_MAIN, "run", "-D", self.data_dir],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=str(REPO_ROOT),
                preexec_fn=_no_core,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def connect(self, timeout: float = 60.0) -> Client:
        """Wait until the daemon answers ``hello``; StartupFailed if it exits or times out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StartupFailed(f"daemon exited with {self.proc.returncode} during startup")
            if time.monotonic() > deadline:
                raise StartupFailed(f"daemon not ready after {timeout:.0f}s")
            try:
                with trio.fail_after(max(0.1, deadline - time.monotonic())):
                    return await Client.connect(self.addr)
            except (ConnectionLost, trio.TooSlowError):
                await trio.sleep(0.01)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise TimeoutError(f"daemon did not exit within {timeout:.0f}s")
            await trio.sleep(0.005)
        return self.proc.returncode

    async def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return await self.wait()

    def log_text(self, tail: int = 0) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text


def log_problems(text: str) -> tuple[list[str], list[str]]:
    """(fatal lines, error lines) of a daemon log: tracebacks and critical lines are fatal."""
    fatal, errors = [], []
    for line in text.splitlines():
        if "Traceback" in line or "level='critical'" in line or '"level": "critical"' in line:
            fatal.append(line[:300])
        elif "level='error'" in line or '"level": "error"' in line:
            errors.append(line[:300])
    return fatal, errors


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def leftover_files(data_dir: str) -> list[str]:
    """``*.___temp`` and ``ephemeral-*`` files under ``data_dir`` (startup deletes both)."""
    out = []
    for root, _dirs, files in os.walk(data_dir):
        for f in files:
            if f.endswith(TEMP_SUFFIX) or f.startswith("ephemeral-"):
                out.append(os.path.relpath(os.path.join(root, f), data_dir))
    return out


def future_layers(tl_dir: str, dcl: int) -> list[str]:
    """Layer files above ``dcl`` (a delta ending above dcl+1, an image above dcl)."""
    out = []
    for f in os.listdir(tl_dir):
        m = LAYER_RE.match(f)
        if m is None:
            continue
        if m.group("l1") is not None:
            if int(m.group("l1"), 16) > dcl + 1:
                out.append(f)
        elif int(m.group("l0"), 16) > dcl:
            out.append(f)
    return out


def read_metadata_dcl(tl_dir: str) -> int | None:
    """``disk_consistent_lsn`` of the timeline's ``metadata`` file (a small JSON document)."""
    try:
        with open(os.path.join(tl_dir, "metadata"), "rb") as f:
            value = json.loads(f.read()).get("disk_consistent_lsn")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def crash_state(data_dir: str, tl_dir: str) -> list[str]:
    """What a killed daemon left for the next startup: temp files, ephemeral files, future
    layers (written and renamed, not yet adopted by ``metadata``)."""
    found = []
    left = leftover_files(data_dir)
    if any(f.endswith(TEMP_SUFFIX) and os.path.basename(f) != "metadata" + TEMP_SUFFIX for f in left):
        found.append("layer_temp_file")
    if any(os.path.basename(f) in ("metadata" + TEMP_SUFFIX, "config-v1" + TEMP_SUFFIX) for f in left):
        found.append("crashsafe_temp_file")
    if any(os.path.basename(f).startswith("ephemeral-") for f in left):
        found.append("ephemeral_file")
    dcl = read_metadata_dcl(tl_dir)
    if dcl is not None and os.path.isdir(tl_dir) and future_layers(tl_dir, dcl):
        found.append("future_layer")
    return found


def remote_index_problems(remote_dir: str, tenant: str = TENANT, timeline: str = TIMELINE) -> tuple[int, list[str]]:
    """The newest ``index_part.json`` of the timeline under a ``local_path`` remote storage
    (the highest generation): the layer objects it names that do not exist. Returns
    (layers named, problems). Older generations' indexes may name layers a newer
    generation removed (as in Neon); the newest one may not."""
    tl = os.path.join(remote_dir, "tenants", tenant, "timelines", timeline)
    try:
        names = os.listdir(tl)
    except FileNotFoundError:
        return 0, []
    indexes = []
    for n in names:
        m = re.fullmatch(r"index_part\.json(?:-([0-9a-f]{8}))?", n)
        if m is not None:
            indexes.append((int(m.group(1), 16) if m.group(1) else -1, n))
    if not indexes:
        return 0, []
    _gen, newest = max(indexes)
    try:
        with open(os.path.join(tl, newest), "rb") as f:
            doc = json.loads(f.read())
        layers = doc["layer_metadata"]
    except (OSError, ValueError, KeyError) as e:
        return 0, [f"{newest}: unreadable: {e!r}"]
    objects = set(names)
    problems = []
    for name, meta in layers.items():
        gen = meta.get("generation")
        obj = name if gen is None else f"{name}-{gen:08x}"
        if obj not in objects:
            problems.append(f"{newest} names {obj}, which does not exist")
        elif os.path.getsize(os.path.join(tl, obj)) != meta.get("file_size"):
            problems.append(f"{newest} says {obj} has {meta.get('file_size')} bytes, it has {os.path.getsize(os.path.join(tl, obj))}")
    return len(layers), problems


_TS_RE = re.compile(r"timestamp='([^']+)'.*?event='(pageserver starting|pageserver ready)'")


def load_window(log_text: str, spawned_at: float) -> tuple[float, float] | None:
    """(seconds to "pageserver starting", seconds to "pageserver ready") after the spawn."""
    from datetime import datetime

    times = {}
    for m in _TS_RE.finditer(log_text):
        try:
            times[m.group(2)] = datetime.fromisoformat(m.group(1)).timestamp() - spawned_at
        except ValueError:
            return None
    if len(times) != 2:
        return None
    return times["pageserver starting"], times["pageserver ready"]


class LayerValidator:
    """Validates each layer file once per (name, size, inode, mtime) with the server's own
    startup validation in this process (std-fs engine), or ``pageserver layer ls --json``
    when that function cannot be imported."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int, int, int]] = set()
        self.validated = 0

    async def check(self, tl_dir: str, full: bool = False) -> list[str]:
        if full:
            self.seen.clear()
        todo = []
        for f in sorted(os.listdir(tl_dir)):
            if LAYER_RE.match(f) is None:
                continue
            try:
                st = os.stat(os.path.join(tl_dir, f))
            except FileNotFoundError:
                continue
            ident = (f, st.st_size, st.st_ino, st.st_mtime_ns)
            if ident not in self.seen:
                todo.append((f, ident))
        if not todo:
            return []
        try:
            from pageserver.io import IoContext, create_engine
            from pageserver.layers.validate import validate_layer_file
        except ImportError:
            return self._check_cli(tl_dir, todo)
        problems = []
        engine = create_engine("std-fs")
        ctx = IoContext(engine, max_file_descriptors=16, no_sync=True)
        try:
            for f, ident in todo:
                try:
                    await validate_layer_file(ctx, os.path.join(tl_dir, f))
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    problems.append(f"{f}: {e!r}")
                else:
                    self.seen.add(ident)
                    self.validated += 1
        finally:
            await ctx.aclose()
            await engine.aclose()
        return problems

    def _check_cli(self, tl_dir: str, todo: list[tuple[str, tuple[str, int, int, int]]]) -> list[str]:
        p = subprocess.run(
            [sys.executable, "-c", DAEMON_MAIN, "layer", "ls", tl_dir, "--json"],
            capture_output=True,
            text=True,
            cwd=str(REPO_ROOT),
            timeout=300,
        )
        if p.returncode != 0:
            return [f"pageserver layer ls {tl_dir}: exit {p.returncode}: {p.stderr.strip()[:500]}"]
        for _f, ident in todo:
            self.seen.add(ident)
            self.validated += 1
        return []


@dataclass
class ReadResult:
    compared: int = 0
    lost: int = 0
    mismatched_above: int = 0
    examples: list[str] = field(default_factory=list)


async def read_many(
    client: Client, tenant: str, timeline: str, pairs: Sequence[tuple[bytes, int]], chunk: int = 128
) -> list[bytes | None | tuple[str, str]]:
    """Pipelined ``get``s; an error reply becomes ``(code, message)``."""
    out: list[bytes | None | tuple[str, str]] = []
    for i in range(0, len(pairs), chunk):
        part = pairs[i : i + chunk]
        rids = [
            await client.send("get", tenant_id=tenant, timeline_id=timeline, key=k, lsn=lsn)
            for k, lsn in part
        ]
        for rid in rids:
            reply = await client.receive()
            if reply.id != rid:
                raise ConnectionLost(f"reply id {reply.id!r} does not match {rid}")
            if reply.ok:
                out.append(reply.fields.get("value"))
            else:
                out.append((reply.code or "internal", reply.message or ""))
    return out


async def verify_reads(
    client: Client,
    stream: Stream,
    pairs: Sequence[tuple[int, int]],
    durable_lsn: int,
    tenant: str = TENANT,
    timeline: str = TIMELINE,
) -> ReadResult:
    """Compare ``get(key k, lsn)`` with the model for each (k, lsn); a difference at or
    below ``durable_lsn`` is *lost*, above it (but at or below the server's dcl) *mismatched*."""
    res = ReadResult()
    got = await read_many(client, tenant, timeline, [(Stream.key(k), lsn) for k, lsn in pairs])
    for (k, lsn), value in zip(pairs, got, strict=True):
        res.compared += 1
        want = stream.expected(k, lsn)
        if value == want:
            continue
        if lsn <= durable_lsn:
            res.lost += 1
        else:
            res.mismatched_above += 1
        if len(res.examples) < 5:
            shown = value if isinstance(value, tuple) else (value[:32] if value else value)
            res.examples.append(
                f"key {k} lsn {lsn}: got {shown!r}, want {want[:32] if want else want!r}"
            )
    return res


def read_plan(
    stream: Stream,
    rng: random.Random,
    reported: int,
    dcl: int,
    samples: int,
    tail_lsns: int = 6,
    floor: int = 1,
) -> list[tuple[int, int]]:
    """Which (key, lsn) pairs to read after a restart (see the module docstring); none
    below ``floor`` (the timeline's ``gc_cutoff_lsn``: those answer ``lsn_too_old``)."""
    pairs: list[tuple[int, int]] = []
    floor = max(1, floor)
    if dcl < floor:
        return pairs
    for lsn in sorted({max(reported, floor), dcl} - {0}):
        pairs += [(k, lsn) for k in range(stream.keys)]
    # Every record of the last LSNs at or below the reported dcl, and up to the new dcl,
    # each at its own LSN: a record lost at the boundary shows up here.
    lo = max(floor, min(reported, dcl) - tail_lsns)
    for lsn in range(lo, dcl + 1):
        pairs += [(k, lsn) for k in stream.keys_at(lsn)]
    top = max(reported if reported > 0 else dcl, floor)
    for _ in range(samples):
        # Half uniform over the readable history, half near its end.
        if rng.random() < 0.5:
            lsn = rng.randint(floor, top)
        else:
            lsn = max(floor, top - int(rng.expovariate(1 / 200)))
        pairs.append((rng.randrange(stream.keys), lsn))
    return pairs


async def check_below_cutoff(
    client: Client, rng: random.Random, keys: int, cutoff: int, n: int
) -> tuple[int, list[str]]:
    """``n`` random reads below ``cutoff``: each must answer ``lsn_too_old``."""
    if cutoff <= 1 or n <= 0:
        return 0, []
    pairs = [(Stream.key(rng.randrange(keys)), rng.randint(max(1, cutoff - 500), cutoff - 1)) for _ in range(n)]
    got = await read_many(client, TENANT, TIMELINE, pairs)
    bad = [
        f"lsn {lsn}: {value!r:.80}"
        for (_k, lsn), value in zip(pairs, got, strict=True)
        if not (isinstance(value, tuple) and value[0] == "lsn_too_old")
    ]
    return len(pairs), bad


# ---------------------------------------------------------------------------------------------
# The crash loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Failure:
    iteration: int
    kind: str
    invariant: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "kind": self.kind,
            "invariant": self.invariant,
            "detail": self.detail,
        }


@dataclass
class LoopState:
    #: Highest disk_consistent_lsn any reply or status reported.
    reported_dcl: int = 0
    #: Highest LSN a put reply acknowledged (received, not durable).
    acked_lsn: int = 0
    records_sent: int = 0
    records_acked: int = 0
    puts: int = 0
    flushes: int = 0
    compactions: int = 0
    layers_created: int = 0
    layers_removed: int = 0
    resumed: int = 0
    #: Highest gc_cutoff_lsn any gc reply or status reported.
    reported_cutoff: int = 0
    gc_passes: int = 0
    gc_layers_removed: int = 0

    def saw_dcl(self, dcl: int | None) -> None:
        if isinstance(dcl, int) and dcl > self.reported_dcl:
            self.reported_dcl = dcl

    def saw_cutoff(self, cutoff: int | None) -> None:
        if isinstance(cutoff, int) and cutoff > self.reported_cutoff:
            self.reported_cutoff = cutoff


@dataclass
class Report:
    engine: str
    seed: int
    iterations: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    failpoints_fired: Counter[str] = field(default_factory=Counter)
    failpoints_not_hit: Counter[str] = field(default_factory=Counter)
    startup_kills_before_ready: int = 0
    records_verified: int = 0
    lost: int = 0
    failures: list[Failure] = field(default_factory=list)
    error_log_lines: list[str] = field(default_factory=list)
    ready_times: list[float] = field(default_factory=list)
    #: Seconds from spawn to "pageserver starting" / "pageserver ready" (from the log).
    load_windows: list[tuple[float, float]] = field(default_factory=list)
    startup_kills_during_load: int = 0
    #: What the workload was doing when a SIGKILL landed.
    killed_during: Counter[str] = field(default_factory=Counter)
    #: What the kills left on disk for the next startup to clean up.
    left_on_disk: Counter[str] = field(default_factory=Counter)
    #: Seconds each ``gc`` request took (the ``gckill`` delays are drawn from them).
    gc_times: list[float] = field(default_factory=list)
    #: SIGKILLs that landed while a ``gc`` request was in flight.
    gc_kills: int = 0
    failpoints_fired_at_startup: int = 0
    reads_below_cutoff: int = 0
    remote_indexes_checked: int = 0
    remote_layers_checked: int = 0

    def fail(self, iteration: int, kind: str, invariant: str, detail: str) -> None:
        self.failures.append(Failure(iteration, kind, invariant, detail))


class CrashLoop:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine: str = args.engine
        self.rng = random.Random(args.seed)
        self.stream = Stream(keys=args.keys)
        self.state = LoopState()
        self.report = Report(self.engine, args.seed)
        self.root = args.dir or tempfile.mkdtemp(prefix="pscl-", dir="/tmp")
        os.makedirs(self.root, exist_ok=True)
        self.data_dir = os.path.join(self.root, "data")
        self.tl_dir = os.path.join(self.data_dir, "tenants", TENANT, "timelines", TIMELINE)
        #: ``--remote``: a ``[remote_storage] local_path`` beside the data directory.
        self.remote_dir = os.path.join(self.root, "remote") if args.remote else None
        extra = ""
        if self.remote_dir is not None:
            os.makedirs(self.remote_dir, exist_ok=True)
            extra = f'[remote_storage]\nlocal_path = "{self.remote_dir}"\n'
        self.daemon = DaemonProc(
            self.data_dir,
            os.path.join(self.root, "ps.sock"),
            self.engine,
            os.path.join(self.root, "logs"),
            no_sync=args.no_sync,
            extra_toml=extra,
        )
        self.validator = LayerValidator()
        self.failpoints = known_failpoints()
        self.started = time.monotonic()
        self.expect_exact_dcl: int | None = None
        self.next_lsn = 1
        self.final_reads = 0
        self.final_status: dict[str, Any] = {}

    # -- helpers ----------------------------------------------------------------------------

    def choose_kind(self, i: int) -> str:
        if self.args.short:
            return SHORT_SCHEDULE[i % len(SHORT_SCHEDULE)]
        kind = self.rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        if kind == "failpoint":
            gc_points = [p for p in GC_FAILPOINTS if p in self.failpoints]
            if gc_points and self.rng.random() < 1 / 3:
                point = self.rng.choice(gc_points)
            else:
                point = self.rng.choice(self.failpoints)
            kind = f"failpoint:{point}={self.rng.choice(('exit', 'panic'))}"
        return kind

    def fired_at_startup(self, fp: str) -> bool:
        """Did the daemon die of the armed failpoint before we could connect (and of
        nothing else)? With --remote, ``remote-before-index-upload`` fires right after
        "pageserver ready": the upload queue sends an index at once."""
        assert self.daemon.proc is not None
        rc = self.daemon.proc.poll()
        text = self.daemon.log_text()
        fatal, errors = log_problems(text)
        if fatal or errors:
            return False
        if fp.endswith("=panic"):
            return rc == -signal.SIGABRT and f"failpoint {fp.split('=')[0]}: panic" in text
        return rc == 1

    def est_gc(self) -> float:
        times = self.report.gc_times[-30:]
        return statistics.median(times) if times else 0.05

    def check_remote(self, i: int, kind: str) -> None:
        """While no daemon runs: the newest index names only layer objects that exist."""
        if self.remote_dir is None:
            return
        assert not self.daemon.alive()
        named, problems = remote_index_problems(self.remote_dir)
        self.report.remote_indexes_checked += 1
        self.report.remote_layers_checked += named
        if problems:
            self.report.fail(i, kind, "the newest index_part.json names only existing layer objects",
                             "\n".join(problems[:5]))  # fmt: skip

    def est_ready(self) -> float:
        times = self.report.ready_times[-20:]
        return statistics.median(times) if times else 1.0

    def keep_logs(self, keep: int = 5) -> None:
        logs = sorted(Path(self.daemon.log_dir).glob("daemon-*.log"))
        for p in logs[:-keep]:
            if "-FAILED" not in p.name:
                p.unlink(missing_ok=True)

    def scan_log(self, i: int, kind: str) -> None:
        fatal, errors = log_problems(self.daemon.log_text())
        for line in errors[:3]:
            if len(self.report.error_log_lines) < 20:
                self.report.error_log_lines.append(f"iteration {i} ({kind}): {line}")
        if fatal:
            self.report.fail(i, kind, "no crash or critical line in the daemon log", "\n".join(fatal[:5]))

    # -- setup ------------------------------------------------------------------------------

    async def setup(self) -> None:
        self.daemon.spawn(tag="-setup")
        t0 = time.monotonic()
        client = await self.daemon.connect()
        self.report.ready_times.append(time.monotonic() - t0)
        async with client:
            st = await client.status()
            have = {t["tenant_id"] for t in st.get("tenants", [])}
            if TENANT not in have:
                await client.request(
                    "tenant_create",
                    tenant_id=TENANT,
                    config={
                        "checkpoint_distance": self.args.checkpoint_distance,
                        "compaction_threshold": self.args.compaction_threshold,
                        "image_creation_threshold": 2,
                        "compaction_period": "0s",
                        "gc_horizon": self.args.gc_horizon,
                        "gc_period": "0s",
                    },
                )
                await client.request("timeline_create", tenant_id=TENANT, timeline_id=TIMELINE)
            tl = await client.timeline_status(TENANT, TIMELINE)
            self.state.saw_dcl(tl["disk_consistent_lsn"])
            self.state.saw_cutoff(tl.get("gc_cutoff_lsn"))
        self.daemon.signal(signal.SIGTERM)
        rc = await self.daemon.wait()
        if rc != 0:
            raise SystemExit(f"setup daemon exited {rc}:\n{self.daemon.log_text(3000)}")

    # -- one iteration ----------------------------------------------------------------------

    async def iteration(self, i: int) -> None:
        self.apply_expectations()
        kind = self.choose_kind(i)
        base_kind, _, fp = kind.partition(":")
        rep = self.report
        failures_before = len(rep.failures)
        self.check_remote(i, kind)
        left = crash_state(self.data_dir, self.tl_dir)
        rep.left_on_disk.update(left)
        if not left:
            rep.left_on_disk["nothing"] += 1
        self.daemon.spawn(failpoints=fp, tag=f"-{i:05d}")
        t0 = time.monotonic()
        spawned_at = time.time()
        if base_kind == "startup":
            windows = rep.load_windows[-20:]
            if windows and self.rng.random() < 0.6:
                # Aim at the window between "pageserver starting" and "ready" (engine,
                # listeners, then loading the tenants: temp-file clean-up, future layers,
                # layer validation): wait for the first line, then a random part of the
                # window's usual length.
                length = statistics.median(w[1] - w[0] for w in windows)
                with trio.move_on_after(self.est_ready() * 3):
                    while "pageserver starting" not in self.daemon.log_text():
                        await trio.sleep(0.001)
                await trio.sleep(self.rng.uniform(0, length))
            else:
                await trio.sleep(self.rng.uniform(0, self.est_ready()))
            rc = await self.daemon.kill()
            rep.kills["startup"] += 1
            text = self.daemon.log_text()
            if "pageserver ready" not in text:
                rep.startup_kills_before_ready += 1
                if "pageserver starting" in text:
                    rep.startup_kills_during_load += 1
            if rc not in (-signal.SIGKILL, 0):
                rep.fail(i, kind, "startup killed by SIGKILL", f"exit status {rc}")
            self.scan_log(i, kind)
            self.finish_iteration(i, failures_before)
            return
        try:
            client = await self.daemon.connect(self.args.ready_timeout)
        except StartupFailed as e:
            if base_kind == "failpoint" and self.fired_at_startup(fp):
                # The armed point is on the startup path (with --remote: the generation
                # claim's crash-safe writes, the first index upload): a kill, not a failed
                # startup.
                rep.kills["failpoint"] += 1
                rep.failpoints_fired[fp] += 1
                rep.failpoints_fired_at_startup += 1
                self.scan_log(i, kind)
                self.finish_iteration(i, failures_before)
                return
            rep.fail(i, kind, "startup ok (daemon ready)", f"{e}\n{self.daemon.log_text(3000)}")
            await self.daemon.kill()
            self.finish_iteration(i, failures_before)
            return
        rep.ready_times.append(time.monotonic() - t0)
        window = load_window(self.daemon.log_text(), spawned_at)
        if window is not None:
            rep.load_windows.append(window)
        try:
            async with client:
                await self.check_after_restart(i, kind, client)
                await self.run_workload(i, kind, base_kind, fp, client)
        except ConnectionLost as e:
            if self.daemon.alive() or base_kind != "failpoint":
                rep.fail(i, kind, "daemon alive until the kill", f"{e}")
        await self.end_daemon(i, kind, base_kind, fp)
        self.scan_log(i, kind)
        self.finish_iteration(i, failures_before)

    def finish_iteration(self, i: int, failures_before: int) -> None:
        self.report.iterations += 1
        if len(self.report.failures) > failures_before:
            p = Path(self.daemon.log_path)
            if p.exists():
                p.rename(p.with_name(p.stem + "-FAILED.log"))
        self.keep_logs()

    async def end_daemon(self, i: int, kind: str, base_kind: str, fp: str) -> int | None:
        rep = self.report
        if base_kind == "failpoint":
            # The workload ended: either the failpoint fired (the daemon is gone or going)
            # or it ran its budget without hitting it.
            try:
                rc = await self.daemon.wait(timeout=3.0 if self.daemon.alive() else 10.0)
            except TimeoutError:
                rc = None
            if rc is None:
                rep.failpoints_not_hit[fp] += 1
                rep.kills["sigkill"] += 1
                return await self.daemon.kill()
            rep.kills["failpoint"] += 1
            rep.failpoints_fired[fp] += 1
            want = 1 if fp.endswith("=exit") else -signal.SIGABRT
            if rc != want:
                rep.fail(i, kind, f"failpoint exit status {want}", f"exit status {rc}\n{self.daemon.log_text(2000)}")
            if fp.endswith("=panic") and f"failpoint {fp.split('=')[0]}: panic" not in self.daemon.log_text():
                rep.fail(i, kind, "panic failpoint logs its name", self.daemon.log_text(2000))
            return rc
        if base_kind == "sigterm":
            try:
                rc = await self.daemon.wait(timeout=60)
            except TimeoutError:
                rep.fail(i, kind, "graceful stop within 60 s", self.daemon.log_text(2000))
                return None
            rep.kills["sigterm"] += 1
            if rc != 0:
                rep.fail(i, kind, "graceful stop exits 0", f"exit status {rc}\n{self.daemon.log_text(2000)}")
            return rc
        rc = await self.daemon.kill()
        rep.kills["gckill" if base_kind == "gckill" else "sigkill"] += 1
        if rc != -signal.SIGKILL:
            rep.fail(i, kind, "daemon killed by SIGKILL", f"exit status {rc}\n{self.daemon.log_text(2000)}")
        return rc

    async def check_after_restart(self, i: int, kind: str, client: Client, *, samples: int | None = None) -> None:
        rep, st = self.report, self.state
        left = leftover_files(self.data_dir)
        if left:
            rep.fail(i, kind, "no *.___temp / ephemeral-* files after startup", ", ".join(left[:10]))
        tl = await client.timeline_status(TENANT, TIMELINE)
        dcl, lrl = tl["disk_consistent_lsn"], tl["last_record_lsn"]
        reported = st.reported_dcl
        if dcl < reported:
            lost = self.stream.records_between(dcl, reported)
            rep.lost += lost
            rep.fail(
                i, kind, "disk_consistent_lsn never goes back",
                f"restart dcl {dcl} < reported {reported}: {lost} records at or below the reported dcl lost",
            )  # fmt: skip
        if lrl != dcl:
            rep.fail(i, kind, "last_record_lsn == disk_consistent_lsn after restart", f"lrl {lrl} dcl {dcl}")
        cutoff = tl.get("gc_cutoff_lsn")
        if not isinstance(cutoff, int):
            rep.fail(i, kind, "status reports gc_cutoff_lsn", repr(tl))
            cutoff = st.reported_cutoff
        elif cutoff < st.reported_cutoff:
            rep.fail(i, kind, "gc_cutoff_lsn never goes back",
                     f"restart gc_cutoff_lsn {cutoff} < reported {st.reported_cutoff}")  # fmt: skip
        st.saw_cutoff(cutoff)
        future = future_layers(self.tl_dir, dcl)
        if future:
            rep.fail(i, kind, "no future layers after startup", ", ".join(future[:5]))
        full = self.args.short or i % 50 == 0
        problems = await self.validator.check(self.tl_dir, full=full)
        if problems:
            rep.fail(i, kind, "every layer file validates", "\n".join(problems[:5]))
        n = samples if samples is not None else (60 if self.args.short else 150)
        pairs = read_plan(self.stream, self.rng, min(reported, dcl), dcl, n, floor=cutoff)
        res = await verify_reads(client, self.stream, pairs, reported)
        rep.records_verified += res.compared
        rep.lost += res.lost
        if res.lost or res.mismatched_above:
            rep.fail(
                i, kind, "reads equal the model at or below dcl",
                f"{res.lost} lost (<= reported dcl {reported}), {res.mismatched_above} wrong "
                f"in ({reported}, {dcl}]: " + "; ".join(res.examples),
            )  # fmt: skip
        below, bad = await check_below_cutoff(client, self.rng, self.stream.keys, cutoff, 8 if n else 0)
        rep.reads_below_cutoff += below
        if bad:
            rep.fail(i, kind, "reads below gc_cutoff_lsn answer lsn_too_old",
                     f"cutoff {cutoff}: " + "; ".join(bad[:5]))  # fmt: skip
        st.saw_dcl(dcl)
        st.acked_lsn = lrl
        self.next_lsn = lrl

    async def run_workload(self, i: int, kind: str, base_kind: str, fp: str, client: Client) -> None:
        a, rng, st, rep = self.args, self.rng, self.state, self.report
        budget = rng.randint(a.min_records, a.max_records)
        sent = 0
        first_put = True
        kill_after = rng.uniform(0.02, a.max_kill_delay)
        deadline = time.monotonic() + (kill_after if base_kind == "sigkill" else a.max_kill_delay * 2 + 2)
        if base_kind == "sigterm":
            deadline = time.monotonic() + kill_after
        compact_first = base_kind == "failpoint" and rng.random() < 0.5
        current = "idle"
        # Under SIGKILL, spread the budget over about the time to the kill, so the kill
        # lands while puts, flushes and compactions are going on, not after them.
        pace_over = kill_after * rng.uniform(0.9, 1.6) if base_kind == "sigkill" else 0.0
        began = time.monotonic()

        async def put_batch() -> None:
            nonlocal sent, first_put
            nonlocal current
            records, nxt = self.stream.batch(self.next_lsn, rng.randint(20, a.batch))
            dcl_before = st.reported_dcl
            current = "put"
            r = await client.put(TENANT, TIMELINE, records)
            current = "idle"
            st.puts += 1
            st.records_sent += len(records)
            st.saw_dcl(r.get("disk_consistent_lsn"))
            want_skipped = sum(1 for rec in records if rec[1] <= dcl_before) if first_put else None
            if first_put:
                if want_skipped is not None and r.get("skipped") != want_skipped:
                    rep.fail(i, kind, "ingest resumes: skipped == records at or below dcl",
                             f"skipped {r.get('skipped')} want {want_skipped}")  # fmt: skip
                st.resumed += 1
                first_put = False
            if r.get("last_record_lsn") != nxt - 1:
                rep.fail(i, kind, "put acknowledges its last LSN", f"lrl {r.get('last_record_lsn')} want {nxt - 1}")
            st.records_acked += len(records)
            st.acked_lsn = nxt - 1
            self.next_lsn = nxt
            sent += len(records)

        async def flush() -> None:
            nonlocal current
            acked = st.acked_lsn
            current = "flush"
            dcl = await client.flush(TENANT, TIMELINE)
            current = "idle"
            st.flushes += 1
            st.saw_dcl(dcl)
            if dcl < acked:
                rep.fail(i, kind, "flush makes everything acknowledged durable", f"dcl {dcl} < acked {acked}")

        async def compact() -> None:
            nonlocal current
            current = "compact"
            r = await client.request("compact", tenant_id=TENANT, timeline_id=TIMELINE)
            current = "idle"
            st.compactions += 1
            st.layers_created += r.get("layers_created", 0)
            st.layers_removed += r.get("layers_removed", 0)

        async def status() -> None:
            nonlocal current
            current = "status"
            tl = await client.timeline_status(TENANT, TIMELINE)
            current = "idle"
            st.saw_dcl(tl["disk_consistent_lsn"])
            st.saw_cutoff(tl.get("gc_cutoff_lsn"))

        gc_started = trio.Event()

        async def gc() -> None:
            nonlocal current
            current = "gc"
            gc_started.set()
            t0 = time.monotonic()
            r = await client.request("gc", tenant_id=TENANT, timeline_id=TIMELINE)
            rep.gc_times.append(time.monotonic() - t0)
            current = "idle"
            st.gc_passes += 1
            st.gc_layers_removed += r.get("layers_removed", 0)
            cutoff = r.get("gc_cutoff_lsn")
            if isinstance(cutoff, int) and cutoff < st.reported_cutoff:
                rep.fail(i, kind, "gc_cutoff_lsn never goes back", f"gc reply {cutoff} < {st.reported_cutoff}")
            st.saw_cutoff(cutoff)

        async def ops() -> None:
            if base_kind == "gckill":
                # Ingest the budget, make layers and images, then GC until the kill.
                while sent < budget:
                    await (put_batch() if rng.random() < 0.9 else flush())
                await flush()
                await compact()
                while True:
                    await gc()
            if compact_first:
                await compact()
            while True:
                if time.monotonic() > deadline and base_kind != "sigkill":
                    return
                if sent >= budget:
                    if base_kind == "sigterm":
                        return
                    # The budget is used up: keep the flush/compaction paths busy until the
                    # kill (or, for a failpoint that has not fired, until the deadline).
                    await flush()
                    await compact()
                    await gc()
                    await status()
                    await trio.sleep(0.01)
                    continue
                x = rng.random()
                if x < 0.80:
                    ahead = sent / budget * pace_over - (time.monotonic() - began)
                    if ahead > 0:
                        await trio.sleep(ahead)
                    await put_batch()
                elif x < 0.87:
                    await flush()
                elif x < 0.93:
                    await compact()
                elif x < 0.97:
                    await gc()
                else:
                    await status()

        killed = False

        async def killer() -> None:
            nonlocal killed
            if base_kind == "gckill":
                # A random instant of the first GC pass (or of one right after it).
                await gc_started.wait()
                await trio.sleep(rng.uniform(0, self.est_gc() * 1.5))
            else:
                await trio.sleep(kill_after)
            killed = True
            self.daemon.signal(signal.SIGKILL)
            if current == "gc":
                rep.gc_kills += 1
            rep.killed_during[current + ("" if sent < budget else " (after budget)")] += 1

        async def guarded() -> None:
            try:
                await ops()
            except ServerError as e:
                rep.fail(i, kind, "requests succeed", repr(e))
            except ConnectionLost as e:
                if base_kind == "failpoint" or (base_kind in ("sigkill", "gckill") and killed):
                    return
                await trio.sleep(0.2)
                rc = None if self.daemon.proc is None else self.daemon.proc.poll()
                rep.fail(i, kind, "daemon alive until the kill",
                         f"{e}; exit status {rc}\n{self.daemon.log_text(2000)}")  # fmt: skip

        if base_kind in ("sigkill", "gckill"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                await guarded()
                gc_started.set()  # a gckill whose workload failed before its GC: kill now
            return
        await guarded()
        if base_kind == "sigterm":
            await client.aclose()
            self.expect_exact_dcl = st.acked_lsn
            self.daemon.signal(signal.SIGTERM)

    def apply_expectations(self) -> None:
        if self.expect_exact_dcl is not None:
            # After a graceful stop every acknowledged record must be durable.
            self.state.saw_dcl(self.expect_exact_dcl)
            self.expect_exact_dcl = None

    # -- the run ----------------------------------------------------------------------------

    async def final_check(self) -> None:
        """Restart once more, read a large sample (or everything) and stop gracefully."""
        self.apply_expectations()
        i = self.report.iterations
        self.check_remote(i, "final")
        self.daemon.spawn(tag="-final")
        client = await self.daemon.connect(self.args.ready_timeout)
        async with client:
            await self.check_after_restart(i, "final", client, samples=0)
            dcl = self.state.reported_dcl
            # Every record at or above the cutoff, at its own LSN (below it: lsn_too_old).
            floor = max(1, self.state.reported_cutoff)
            total = self.stream.records_between(floor - 1, dcl)
            pairs: list[tuple[int, int]] = []
            if total <= self.args.final_reads:
                for lsn in range(floor, dcl + 1):
                    pairs += [(k, lsn) for k in self.stream.keys_at(lsn)]
            elif dcl >= floor:
                for _ in range(self.args.final_reads):
                    lsn = self.rng.randint(floor, dcl)
                    pairs.append((self.rng.choice(self.stream.keys_at(lsn)), lsn))
            res = await verify_reads(client, self.stream, pairs, dcl)
            self.report.records_verified += res.compared
            self.report.lost += res.lost
            if res.lost:
                self.report.fail(i, "final", "every record reads back at its own LSN",
                                 f"{res.lost} lost: " + "; ".join(res.examples))  # fmt: skip
            self.final_reads = res.compared
            self.final_status = await client.timeline_status(TENANT, TIMELINE)
        self.daemon.signal(signal.SIGTERM)
        rc = await self.daemon.wait()
        if rc != 0:
            self.report.fail(i, "final", "graceful stop exits 0", f"exit status {rc}")
        self.check_remote(i, "final (stopped)")

    async def run(self) -> dict[str, Any]:
        await self.setup()
        for i in range(self.args.iterations):
            await self.iteration(i)
            if self.args.progress and (i + 1) % 25 == 0:
                self.progress_line(i + 1)
        await self.final_check()
        return self.summary()

    def progress_line(self, n: int) -> None:
        r = self.report
        print(
            f"  [{self.engine}] {n}/{self.args.iterations} iterations, "
            f"{sum(r.kills.values())} kills, {r.records_verified} verified, lost {r.lost}, "
            f"failures {len(r.failures)}, {time.monotonic() - self.started:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    def summary(self) -> dict[str, Any]:
        r, st = self.report, self.state
        elapsed = time.monotonic() - self.started
        files = os.listdir(self.tl_dir) if os.path.isdir(self.tl_dir) else []
        layers = [f for f in files if LAYER_RE.match(f)]
        return {
            "engine": self.engine,
            "seed": r.seed,
            "short": bool(self.args.short),
            "iterations": r.iterations,
            "kills": dict(sorted(r.kills.items())),
            "failpoints_fired": dict(sorted(r.failpoints_fired.items())),
            "failpoints_not_hit": dict(sorted(r.failpoints_not_hit.items())),
            "failpoints_fired_at_startup": r.failpoints_fired_at_startup,
            "startup_kills_before_ready": r.startup_kills_before_ready,
            "startup_kills_during_load": r.startup_kills_during_load,
            "sigkill_during": dict(sorted(r.killed_during.items())),
            "left_on_disk_at_restart": dict(sorted(r.left_on_disk.items())),
            "records_sent": st.records_sent,
            "records_acked": st.records_acked,
            "records_durable": self.stream.records_upto(st.reported_dcl),
            "records_readable": self.stream.records_between(max(1, st.reported_cutoff) - 1, st.reported_dcl),
            "records_verified": r.records_verified,
            "final_reads": self.final_reads,
            "lost": r.lost,
            "ingest_resumed": st.resumed,
            "puts": st.puts,
            "flushes": st.flushes,
            "compactions": st.compactions,
            "layers_created_by_compaction": st.layers_created,
            "gc_passes": st.gc_passes,
            "gc_layers_removed": st.gc_layers_removed,
            "gc_cutoff_lsn": st.reported_cutoff,
            "gc_kills": r.gc_kills,
            "gc_failpoint_kills": sum(v for k, v in r.failpoints_fired.items() if k.split("=")[0] in GC_FAILPOINTS),
            "gc_s_median": round(statistics.median(r.gc_times), 4) if r.gc_times else None,
            "reads_below_cutoff": r.reads_below_cutoff,
            "remote": self.remote_dir is not None,
            "remote_indexes_checked": r.remote_indexes_checked,
            "remote_layers_checked": r.remote_layers_checked,
            "layers_validated": self.validator.validated,
            "layer_files_at_end": len(layers),
            "image_layers_at_end": sum(1 for f in layers if "__" in f and f.count("-") == 1),
            "disk_consistent_lsn": st.reported_dcl,
            "ready_s_median": round(statistics.median(r.ready_times), 3) if r.ready_times else None,
            "elapsed_s": round(elapsed, 1),
            "s_per_iteration": round(elapsed / max(1, r.iterations), 3),
            "error_log_lines": r.error_log_lines,
            "failures": [f.as_dict() for f in r.failures],
            "ok": r.lost == 0 and not r.failures,
            "data_dir": self.root,
        }


def summary_line(s: dict[str, Any]) -> str:
    kills = " ".join(f"{k}={v}" for k, v in s["kills"].items())
    fps = sum(s["failpoints_fired"].values())
    return (
        f"crashloop engine={s['engine']} seed={s['seed']} iterations={s['iterations']} "
        f"kills[{kills}] failpoints_fired={fps} records_sent={s['records_sent']} "
        f"records_verified={s['records_verified']} lost={s['lost']} "
        f"gc[passes={s['gc_passes']} removed={s['gc_layers_removed']} kills_during_gc={s['gc_kills']} "
        f"failpoint_kills={s['gc_failpoint_kills']} cutoff={s['gc_cutoff_lsn']}] "
        + (f"remote[indexes_checked={s['remote_indexes_checked']}] " if s["remote"] else "")
        + f"invariant_failures={len(s['failures'])} elapsed={s['elapsed_s']}s "
        f"({s['s_per_iteration']}s/iteration) {'OK' if s['ok'] else 'FAILED'}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Kill a pageserver daemon repeatedly (SIGKILL, failpoints, during startup, "
        "SIGTERM) and check after every restart that nothing durable is lost."
    )
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--iterations", type=int, default=None, help="daemon lifetimes (default 200, --short 10)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    p.add_argument("--short", action="store_true", help="the quick form the tests run: a fixed schedule of every kill kind")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary line")
    p.add_argument("--dir", default=None, help="work directory (default: a new /tmp/pscl-*)")
    p.add_argument("--keep", action="store_true", help="keep the work directory even after a clean run")
    p.add_argument("--keys", type=int, default=256)
    p.add_argument("--checkpoint-distance", type=int, default=64 * 1024)
    p.add_argument("--compaction-threshold", type=int, default=3)
    p.add_argument("--gc-horizon", type=int, default=None,
                   help="the tenant's gc_horizon in LSNs (each LSN is 1-3 records; default 1500, --short 150)")
    p.add_argument("--remote", action="store_true",
                   help="run with [remote_storage] local_path (a directory beside the data directory) "
                   "and check the newest index_part.json names only existing layer objects")
    p.add_argument("--no-sync", action="store_true", help="run the daemon with no_sync = true")
    p.add_argument("--final-reads", type=int, default=100_000, help="records read at the end (all if fewer)")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--progress", action="store_true", help="a progress line every 25 iterations (stderr)")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time() * 1000) % 1_000_000
    if args.iterations is None:
        args.iterations = len(SHORT_SCHEDULE) if args.short else 200
    if args.gc_horizon is None:
        args.gc_horizon = 150 if args.short else 1500
    args.batch = 120
    if args.short:
        args.min_records, args.max_records, args.max_kill_delay = 100, 600, 0.5
    else:
        args.min_records, args.max_records, args.max_kill_delay = 100, 2500, 1.2
    return args


def kill_children_on_signals(
    daemons: Callable[[], Iterable[DaemonProc | None]],
    root: str,
    cleanup: Callable[[], None] | None = None,
) -> None:
    """On SIGTERM/SIGHUP, SIGKILL the daemon subprocesses first (and run ``cleanup``), so
    an interrupted run never leaves a daemon (or a mount) behind, then exit (143/129)."""

    def handler(signum: int, _frame: object) -> None:
        for d in daemons():
            if d is not None and d.alive():
                assert d.proc is not None
                d.proc.kill()
                d.proc.wait()
        if cleanup is not None:
            cleanup()
        print(f"interrupted by signal {signum}; work directory kept: {root}", file=sys.stderr)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    loop = CrashLoop(args)
    kill_children_on_signals(lambda: [loop.daemon], loop.root)
    try:
        summary = trio.run(loop.run)
    except BaseException:
        if loop.daemon.alive():
            loop.daemon.signal(signal.SIGKILL)
        print(f"crashloop: aborted; work directory kept: {loop.root}", file=sys.stderr)
        raise
    if summary["ok"] and not args.keep and not args.dir:
        shutil.rmtree(loop.root, ignore_errors=True)
        summary["data_dir"] = None
    print(json.dumps(summary, indent=2) if args.json else summary_line(summary))
    if not args.json and not summary["ok"]:
        for f in summary["failures"][:10]:
            print(f"  iteration {f['iteration']} ({f['kind']}): {f['invariant']}: {f['detail'][:500]}")
        print(f"  work directory kept: {loop.root} (seed {args.seed})")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
