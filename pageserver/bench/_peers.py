"""Peers of ``pageserver bench``: the same records made durable by RocksDB and SQLite.

What a user would pick instead of a pageserver for "store these versioned records
durably", measured in the same run on the same disk (SPEC section 9). Both are optional
(``pip install -e '.[bench]'`` installs ``rocksdict``; ``sqlite3`` comes with Python): a
peer that cannot run is reported as skipped with the reason, and the rest of the report
does not change.

The records are the benchmark's own (:class:`~pageserver.client.feed.FeedGenerator`), keyed
by ``key ++ lsn`` (u64 big-endian, the delta layer's index key), in the same batches as
the ``put`` requests. Inputs are prepared before the clock starts; the clock stops when
the records are durable:

- **RocksDB** (``rocksdict``, default options): one ``WriteBatch`` per batch, written with
  ``sync = false`` (the write-ahead log is written, not synced), then one
  ``flush_wal(sync=True)``: every record is in the synced WAL. (Not a memtable flush: the
  cheaper of RocksDB's two ways to durability, as a user would choose.)
- **SQLite** (WAL journal, ``synchronous = OFF`` while loading, a 256 MiB page cache, a
  ``WITHOUT ROWID`` table keyed by ``(key, lsn)``, ``INSERT OR REPLACE``): one transaction
  per batch; the last commit runs with ``synchronous = FULL``, which syncs the WAL and so
  every frame before it.

With ``no_sync`` (``pageserver bench --no-sync``, as the daemon's ``no_sync``) neither syncs.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pageserver.bench._measure import device_bytes_written, device_mib_between
from pageserver.layers.batch import PutColumns
from pageserver.layers.key import KEY_SIZE

ROCKSDB = "rocksdb"
SQLITE = "sqlite"
PEERS = (ROCKSDB, SQLITE)

Rows = list[tuple[bytes, int, bytes]]


@dataclass
class PeerResult:
    name: str
    records: int
    value_bytes: int
    seconds: float
    #: MiB the block device under the peer's directory wrote meanwhile
    #: (:func:`~pageserver.bench._measure.device_bytes_written`), or None.
    device_mib: float | None = None

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.value_bytes / (1 << 20) / self.seconds


def peer_unavailable(name: str) -> str | None:
    """Why peer ``name`` cannot run here, or None."""
    if name == ROCKSDB:
        try:
            import rocksdict  # noqa: F401
        except ImportError:
            return "rocksdict is not installed (pip install -e '.[bench]')"
    return None


def _rows(batch: PutColumns) -> Rows:
    """``(key, lsn, value)`` of a columnar batch (the values still Value-encoded)."""
    n = len(batch)
    lsns = np.frombuffer(batch.lsns, ">u8").tolist()
    ends = np.frombuffer(batch.value_ends, ">u4").tolist()
    keys, values = batch.keys, batch.values
    starts = [0, *ends[:-1]]
    return [
        (keys[i * KEY_SIZE : (i + 1) * KEY_SIZE], lsns[i], values[starts[i] : ends[i]])
        for i in range(n)
    ]


def _rocksdb(path: str, batches: list[Rows], no_sync: bool) -> float:
    from rocksdict import Options, Rdict, WriteBatch, WriteOptions

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(path, opts)
    try:
        wo = WriteOptions()
        wo.sync = False
        keyed = [[(k + lsn.to_bytes(8, "big"), v) for k, lsn, v in b] for b in batches]
        t0 = time.perf_counter()
        for b in keyed:
            wb = WriteBatch(raw_mode=True)
            for k, v in b:
                wb.put(k, v)
            db.write(wb, wo)
        db.flush_wal(not no_sync)
        return time.perf_counter() - t0
    finally:
        db.close()


def _sqlite(path: str, batches: list[Rows], no_sync: bool) -> float:
    con = sqlite3.connect(os.path.join(path, "kv.db"), isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("PRAGMA cache_size=-262144")
        con.execute(
            "CREATE TABLE kv (key BLOB, lsn INTEGER, value BLOB, PRIMARY KEY (key, lsn))"
            " WITHOUT ROWID"
        )
        # SQLite integers are signed 64-bit: LSNs of the benchmark are small.
        t0 = time.perf_counter()
        for i, b in enumerate(batches):
            if i == len(batches) - 1 and not no_sync:
                con.execute("PRAGMA synchronous=FULL")
            con.execute("BEGIN")
            con.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", b)
            con.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        con.close()


_RUNNERS: dict[str, Callable[[str, list[Rows], bool], float]] = {ROCKSDB: _rocksdb, SQLITE: _sqlite}


def durable_ingest(
    name: str, base: str, batches: list[PutColumns], value_bytes: int, no_sync: bool
) -> PeerResult:
    """Make ``batches`` durable in peer ``name`` under a fresh directory in ``base``;
    ``value_bytes`` is what MiB/s counts (the payload, as for the daemon)."""
    rows = [_rows(b) for b in batches]
    records = sum(len(r) for r in rows)
    d = tempfile.mkdtemp(prefix=f"{name}-", dir=base)
    try:
        before = device_bytes_written(d)
        seconds = _RUNNERS[name](d, rows, no_sync)
        device_mib = device_mib_between(before, device_bytes_written(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return PeerResult(name, records, value_bytes, seconds, device_mib)
