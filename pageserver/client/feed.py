"""``feed``'s record streams and its reconnect-and-resend loop (SPEC section 2).

``feed`` streams records in pipelined ``put`` batches and survives server restarts: after a
dropped connection (or a ``shutting_down`` reply) it reconnects with back-off, asks
``status``, and resends every record at or above the timeline's ``last_record_lsn``, which
is what SPEC section 2 prescribes. The same rule is applied at start, so re-running an
interrupted ``feed`` resumes it. Record sources must therefore be re-iterable from an LSN:
the built-in generator is a pure function of the record index (:class:`FeedGenerator`;
tests model it), and files are re-read from the start, skipping records below that LSN.

The ``pageserver feed`` command (options, summary line) is in :mod:`pageserver.client.cli`.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import msgpack
import trio

from pageserver.client._client import (
    Client,
    ConnectionLost,
    PutBatch,
    ServerError,
    backoff_delays,
)
from pageserver.layers.batch import PutRecord
from pageserver.layers.blob_io import MAX_BLOB_LEN
from pageserver.layers.key import MAX_LSN, MAX_RECORD_LSN, Key, Lsn
from pageserver.layers.value import Image, TestRecord, encode_value

__all__ = [
    "FeedError",
    "FeedGenerator",
    "FeedProgress",
    "FeedSource",
    "FeedStats",
    "FileSource",
    "run_feed",
]


class FeedError(Exception):
    """A one-line error for the user: an unreadable or malformed file, or giving up
    reconnecting (the CLI prints it and exits 1)."""


# ---------------------------------------------------------------------------------------
# Record sources
# ---------------------------------------------------------------------------------------

_MAX_VALUE_SIZE = MAX_BLOB_LEN - 32
_KEY_MIX = 2654435761  # prime: i -> i * _KEY_MIX % keys visits every key once per pass


@dataclass(frozen=True, slots=True)
class FeedGenerator:
    """The built-in, deterministic record stream of ``feed`` (tests model it exactly).

    Record ``i`` (0 <= i < count):

    * LSN ``start_lsn + i // records_per_lsn`` (so LSNs are non-decreasing);
    * key index ``k = i * 2654435761 % keys`` (every key once per pass of ``keys``
      records, in a scattered order), key ``Key(0, 1663, 16384, 16385, 0, k)`` (a
      Postgres-like relation block);
    * value, for ``kind="image"``: an Image of ``value_size`` bytes repeating
      ``f"{k}@{lsn}|"``; for ``kind="test"``: a Test record appending ``f"<{lsn}>"`` padded
      with ``.`` to ``value_size`` characters, with ``will_init`` (and ``clear``) on the
      key's first record and then every ``reinit_every`` passes, so materialised values
      stay bounded.
    """

    count: int
    keys: int = 1000
    value_size: int = 128
    kind: str = "image"
    start_lsn: int = 1
    records_per_lsn: int = 1
    reinit_every: int = 8

    def __post_init__(self) -> None:
        if self.count < 0 or self.keys < 1 or self.records_per_lsn < 1 or self.value_size < 0:
            raise ValueError("count >= 0, keys >= 1, records_per_lsn >= 1, value_size >= 0")
        if self.kind not in ("image", "test"):
            raise ValueError(f"kind must be image or test, not {self.kind!r}")
        # The key index is a block number (a u32 field of the key); a value is one blob of
        # a layer file; every record's LSN is below MAX_LSN (a layer ends at lsn + 1).
        if self.keys > 1 << 32:
            raise ValueError(f"keys must be at most 2^32 (a block number), not {self.keys}")
        # The encoded value (an Image's 12-byte header; a Test record's 19 bytes) is the blob.
        if self.value_size > _MAX_VALUE_SIZE:
            raise ValueError(f"value_size must be at most {_MAX_VALUE_SIZE}, not {self.value_size}")
        if self.start_lsn < 0:
            raise ValueError(f"start_lsn must not be negative, not {self.start_lsn}")
        last = self.start_lsn + max(0, self.count - 1) // self.records_per_lsn
        if last > MAX_RECORD_LSN:
            raise ValueError(
                f"the LSNs would run from {self.start_lsn} to {last}, past the last record "
                f"LSN {MAX_RECORD_LSN} (2^64-2)"
            )

    @property
    def total(self) -> int:
        return self.count

    def lsn_of(self, i: int) -> int:
        return self.start_lsn + i // self.records_per_lsn

    def key_index(self, i: int) -> int:
        return i * _KEY_MIX % self.keys

    @staticmethod
    def key(k: int) -> bytes:
        return bytes(Key.from_fields(0, 1663, 16384, 16385, 0, k))

    def will_init(self, i: int) -> bool:
        return self.kind == "image" or (i // self.keys) % self.reinit_every == 0

    def payload(self, i: int) -> bytes:
        """The image bytes (image kind) or the append text (test kind) of record ``i``."""
        lsn = self.lsn_of(i)
        if self.kind == "image":
            unit = f"{self.key_index(i)}@{lsn}|".encode()
            return (unit * (self.value_size // len(unit) + 1))[: self.value_size]
        text = f"<{lsn}>"
        return (text + "." * max(0, self.value_size - len(text))).encode()

    def record(self, i: int) -> PutRecord:
        k = self.key_index(i)
        lsn = self.lsn_of(i)
        if self.kind == "image":
            value = encode_value(Image(self.payload(i)))
        else:
            init = self.will_init(i)
            value = encode_value(TestRecord(self.payload(i).decode(), clear=init, will_init=init))
        return self.key(k), lsn, value

    def index_at(self, lsn: int) -> int:
        """Index of the first record whose LSN is >= ``lsn``."""
        if lsn <= self.start_lsn:
            return 0
        return min(self.count, (lsn - self.start_lsn) * self.records_per_lsn)

    def records_from(self, lsn: int) -> Iterator[tuple[int, PutRecord]]:
        record = self.record
        for i in range(self.index_at(lsn), self.count):
            yield i, record(i)


class FeedSource(Protocol):
    @property
    def total(self) -> int | None: ...

    def records_from(self, lsn: int) -> Iterator[tuple[int, PutRecord]]:
        """``(index, record)`` for every record with LSN >= ``lsn``, in order."""
        ...


class FileSource:
    """Records from a file: a msgpack stream of ``[key, lsn, value]`` arrays, or JSON lines
    ``{"key": hex, "lsn": int, "value": hex}`` (chosen by the first byte)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    # It is read again from the start: for its length, and after every
                    # reconnect (to resume from the server's last_record_lsn).
                    raise FeedError(f"{path}: not a regular file (a pipe cannot be read again)")
                first = f.read(1)
        except OSError as e:
            raise FeedError(f"cannot read {path}: {e.strerror}") from None
        self.is_json = first in (b"{", b" ", b"\n", b"\t", b"\r")
        self._total: int | None = None

    @property
    def total(self) -> int | None:
        if self._total is None:
            self._total = sum(1 for _ in self._iter())
        return self._total

    def _iter(self) -> Iterator[PutRecord]:
        try:
            with open(self.path, "rb") as f:
                yield from (self._json(f) if self.is_json else self._msgpack(f))
        except OSError as e:
            raise FeedError(f"cannot read {self.path}: {e.strerror}") from None

    def _json(self, f: IO[bytes]) -> Iterator[PutRecord]:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key = bytes(Key.from_hex(obj["key"]))
                lsn = obj["lsn"]
                value = bytes.fromhex(obj["value"])
                if type(lsn) is str:  # "0/16B5A50", "0x15", "21": as the client commands take
                    lsn = int(Lsn.from_text(lsn))
                elif type(lsn) is not int:
                    raise ValueError("key must be 36 hex digits and lsn an integer or LSN text")
            except (ValueError, KeyError, TypeError) as e:
                raise FeedError(f"{self.path}:{n}: bad record: {e}") from None
            if not 0 <= lsn <= MAX_LSN:
                raise FeedError(f"{self.path}:{n}: bad record: lsn {lsn} is not a 64-bit LSN")
            yield key, lsn, value

    def _msgpack(self, f: IO[bytes]) -> Iterator[PutRecord]:
        unpacker = msgpack.Unpacker(f, raw=False, use_list=True, max_buffer_size=64 << 20)
        n = end = 0
        try:
            for n, obj in enumerate(unpacker, 1):
                end = unpacker.tell()  # where this record ends (a later, cut one moves it)
                if (
                    not isinstance(obj, list)
                    or len(obj) != 3
                    or not isinstance(obj[0], bytes)
                    or type(obj[1]) is not int
                    or not isinstance(obj[2], bytes)
                ):
                    raise FeedError(f"{self.path}: record {n} is not [bin key, int lsn, bin value]")
                if not 0 <= obj[1] <= MAX_LSN:
                    raise FeedError(f"{self.path}: record {n}: lsn {obj[1]} is not a 64-bit LSN")
                yield obj[0], obj[1], obj[2]
            # The iteration ends quietly at the end of the file, also inside a record: a
            # file cut short would lose its last record without a word.
            size = os.fstat(f.fileno()).st_size
            if end != size:
                raise FeedError(
                    f"{self.path}: the file ends inside a record (after {n} "
                    f"whole records, {size - end} bytes left over): truncated?"
                )
        except (ValueError, msgpack.UnpackException) as e:
            raise FeedError(f"{self.path}: not a msgpack stream: {e}") from None

    def records_from(self, lsn: int) -> Iterator[tuple[int, PutRecord]]:
        for i, rec in enumerate(self._iter()):
            if rec[1] >= lsn:
                yield i, rec


def _batches(
    source: Iterator[tuple[int, PutRecord]], max_records: int, max_bytes: int
) -> Iterator[PutBatch]:
    """Group records into ``put`` batches; the tag is ``(records, value bytes, next index)``.

    A batch ends only at an LSN boundary: once the limits are reached, the records of the
    current LSN still go into it. A server may freeze (and a graceful stop flushes) its
    open layer at any boundary it has passed; if one LSN were split across two puts and
    the server stopped between them, ``disk_consistent_lsn`` would cover that LSN, and
    the resend would see the missing half skipped as durable. (One LSN's records larger
    than the server's frame limit cannot be sent at all: the put fails clearly.)
    """
    batch: list[PutRecord] = []
    nbytes = 0
    last = -1
    for i, rec in source:
        if batch and (len(batch) >= max_records or nbytes >= max_bytes) and rec[1] != batch[-1][1]:
            yield PutBatch(batch, (len(batch), nbytes, last + 1))
            batch, nbytes = [], 0
        batch.append(rec)
        nbytes += len(rec[2]) + 30
        last = i
    if batch:
        yield PutBatch(batch, (len(batch), nbytes, last + 1))


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


@dataclass
class FeedStats:
    records_acked: int = 0
    bytes_acked: int = 0
    batches: int = 0
    reconnects: int = 0
    skipped: int = 0
    last_record_lsn: int = 0
    disk_consistent_lsn: int = 0
    position: int = 0


class FeedProgress:
    """A rich progress bar on stderr (records, MiB, rate, ETA), or nothing."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self._p: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(
            TextColumn("[bold]feed"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("records"),
            TextColumn("{task.fields[mib]:8.1f} MiB"),
            TextColumn("{task.fields[rate]:>9} rec/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._task = self._p.add_task("feed", total=total, mib=0.0, rate="-", note="")
        self._p.start()

    def update(self, position: int, nbytes: int, note: str = "") -> None:
        if self._p is None:
            return
        task = self._p.tasks[0]
        speed = task.speed
        self._p.update(
            self._task,
            completed=position,
            mib=nbytes / 2**20,
            rate=f"{speed:,.0f}" if speed else "-",
            note=note,
        )

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()


async def run_feed(
    addr: str,
    token: str | None,
    tenant_id: str,
    timeline_id: str,
    source: FeedSource,
    *,
    batch_records: int = 1000,
    batch_bytes: int = 1 << 20,
    window: int = 8,
    flush: bool = False,
    retry_timeout: float = 60.0,
    progress: FeedProgress | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> FeedStats:
    """Stream ``source`` to a timeline, reconnecting and resending as SPEC section 2 says.

    Each (re)connection asks ``status`` and sends what the server is missing: every record
    above ``last_record_lsn`` when the server has all that this feed had acknowledged, else
    every record at or above it (see the loop). Gives up after ``retry_timeout`` seconds without a successful
    connection, or without a ``put`` acknowledged while connections keep being lost (a
    server closes the connection on a put above its ``max_frame_bytes``: resending it
    would go on for ever). With ``flush``, ends with a ``flush`` (retried the same way).
    """
    for name, value in (("batch_records", batch_records), ("batch_bytes", batch_bytes), ("window", window)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if not retry_timeout >= 0:
        raise ValueError(f"retry_timeout must be >= 0, not {retry_timeout}")
    stats = FeedStats()
    delays = iter(backoff_delays())
    deadline: float | None = None
    #: Since when connections have been lost with nothing acknowledged (None: progress).
    stalled_since: float | None = None
    losses = 0
    #: The highest LSN of this feed's acknowledged puts (-1: none yet).
    acked_lsn = -1
    while True:
        try:
            client = await Client.connect(addr, token)
        except (ConnectionLost, ServerError) as e:
            if isinstance(e, ServerError) and e.code != "shutting_down":
                raise
            now = trio.current_time()
            deadline = deadline if deadline is not None else now + retry_timeout
            if now >= deadline:
                raise FeedError(f"gave up reconnecting after {retry_timeout:.0f}s: {e}") from None
            if progress:
                progress.update(stats.position, stats.bytes_acked, "reconnecting...")
            await trio.sleep(next(delays))
            continue
        deadline = None
        if stalled_since is None:
            delays = iter(backoff_delays())
        acked_before = stats.batches
        sending = False
        try:
            async with client:
                st = await client.timeline_status(tenant_id, timeline_id)
                resume = int(st["last_record_lsn"])
                stats.last_record_lsn = resume
                stats.disk_consistent_lsn = int(st["disk_consistent_lsn"])
                # Every connection sends what the server is missing, even when every put
                # was acknowledged on an earlier one: a server that restarted after a
                # crash has lost what was not flushed yet (its last_record_lsn is back at
                # disk_consistent_lsn), and a feed that went straight to the flush
                # reported it all durable. Where the server has all that this feed had
                # acknowledged, it has all of its last LSN too (a put ends at an LSN
                # boundary, and is applied whole), so the stream resumes after it: the
                # layer holding that LSN may be frozen already, and its records sent
                # again would be refused as below the open layer's start.
                records = source.records_from(resume + 1 if resume >= acked_lsn >= 0 else resume)
                first = next(records, None)
                sending = first is not None
                if first is not None:
                    stats.position = first[0]

                    def chain(
                        head: tuple[int, PutRecord], rest: Iterator[tuple[int, PutRecord]]
                    ) -> Iterator[tuple[int, PutRecord]]:
                        yield head
                        yield from rest

                    records = chain(first, records)
                    if progress:
                        progress.update(stats.position, stats.bytes_acked)

                    def on_reply(batch: PutBatch, fields: dict[str, Any]) -> None:
                        tag: tuple[int, int, int] = batch.tag  # type: ignore[assignment]
                        n, nbytes, next_index = tag
                        stats.records_acked += n
                        stats.bytes_acked += nbytes
                        stats.batches += 1
                        stats.skipped += int(fields.get("skipped", 0))
                        stats.position = next_index
                        stats.last_record_lsn = int(fields["last_record_lsn"])
                        stats.disk_consistent_lsn = int(fields["disk_consistent_lsn"])
                        nonlocal acked_lsn
                        acked_lsn = max(acked_lsn, int(batch.records[-1][1]))
                        if progress:
                            progress.update(stats.position, stats.bytes_acked)

                    await client.put_pipelined(
                        tenant_id,
                        timeline_id,
                        _batches(records, batch_records, batch_bytes),
                        window=window,
                        on_reply=on_reply,
                    )
                if flush:
                    stats.disk_consistent_lsn = await client.flush(tenant_id, timeline_id)
                    st = await client.timeline_status(tenant_id, timeline_id)
                    stats.last_record_lsn = int(st["last_record_lsn"])
                return stats
        except ConnectionLost as e:
            reason = str(e)
        except ServerError as e:
            if e.code != "shutting_down":
                raise
            reason = "server shutting down"
        stats.reconnects += 1
        now = trio.current_time()
        if stats.batches > acked_before:
            stalled_since, losses = None, 0
        else:
            stalled_since = now if stalled_since is None else stalled_since
            losses += 1
            if now - stalled_since >= retry_timeout:
                hint = (
                    "; a server closes the connection on a put larger than its "
                    "max_frame_bytes: lower --batch-bytes, or the records of one LSN (from "
                    f"record {stats.position}) are too large to send"
                    if sending
                    else " (nothing was left to send: the connection was lost in the flush)"
                )
                raise FeedError(
                    f"gave up after {losses} lost connections in {now - stalled_since:.0f}s with "
                    f"no put acknowledged (the last: {reason}){hint}"
                )
        log(f"connection lost ({reason}); reconnecting")
        if progress:
            progress.update(stats.position, stats.bytes_acked, "reconnecting...")
        await trio.sleep(next(delays))
