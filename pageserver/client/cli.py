"""Client subcommands of ``pageserver``: tenant/timeline create, put, get, status, flush,
compact and ``feed`` (SPEC section 2).

Every command connects to ``--addr`` (default: ``listen_addr`` of ``-D DIR``'s
``pageserver.toml`` when that file exists, else ``127.0.0.1:6400``), says ``hello`` (with
``--token``, default the config's ``auth_token``), prints a human summary or, with
``--json``, one JSON object on stdout, and exits non-zero with a one-line message on
stderr for any error.

``feed`` streams records in pipelined ``put`` batches and survives server restarts: after a
dropped connection (or a ``shutting_down`` reply) it reconnects with back-off, asks
``status``, and resends every record at or above the timeline's ``last_record_lsn``, which
is what SPEC section 2 prescribes. The same rule is applied at start, so re-running an
interrupted ``feed`` resumes it. Record sources must therefore be re-iterable from an LSN:
the built-in generator is a pure function of the record index (:class:`FeedGenerator`;
tests model it), and files are re-read from the start, skipping records below that LSN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import msgpack
import trio

from pageserver.client._client import (
    DEFAULT_ADDR,
    Client,
    ConnectionLost,
    PutBatch,
    ServerError,
    backoff_delays,
)
from pageserver.config import CONFIG_FILE_NAME, DEFAULT_DATA_DIR
from pageserver.layers.key import Key, Lsn, TenantId, TimelineId, lsn_str, parse_id_text
from pageserver.layers.value import Image, TestRecord, encode_value

__all__ = ["FeedGenerator", "register"]

Record = tuple[bytes, int, bytes]


class CliError(Exception):
    """A one-line error for the user (exit status 1)."""


# ---------------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """An LSN as a decimal number, ``0x`` hex, or Neon's ``HI/LO`` form."""
    t = text.strip()
    try:
        if "/" in t:
            return int(Lsn.parse(t))
        if t.lower().startswith("0x"):
            return int(Lsn(int(t, 16)))
        return int(Lsn(int(t, 10)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid LSN {text!r} (use a decimal number, 0x hex, or HI/LO like 0/16B5A50)"
        ) from None


def parse_key(text: str) -> bytes:
    try:
        return bytes(Key.from_hex(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid key {text!r}: expected 36 hex digits") from None


def parse_id(text: str) -> str:
    try:
        return parse_id_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_config_pair(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    value: Any = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            pass
    return key.strip(), value


def _config_addr_and_token(data_dir: str) -> tuple[str | None, str | None]:
    path = Path(data_dir) / CONFIG_FILE_NAME
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None, None
    addr = data.get("listen_addr")
    token = data.get("auth_token")
    return (addr if isinstance(addr, str) else None, token if isinstance(token, str) else None)


def resolve_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """``--addr``/``--token`` with the data dir's config as the default."""
    cfg_addr, cfg_token = _config_addr_and_token(args.data_dir)
    addr = args.addr or cfg_addr or DEFAULT_ADDR
    token = args.token if args.token is not None else os.environ.get("PAGESERVER_AUTH_TOKEN")
    if token is None:
        token = cfg_token
    return addr, token


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _print_json(obj: Any) -> None:
    print(json.dumps(_jsonable(obj), sort_keys=True))


def _show_bytes(value: bytes, as_hex: bool) -> str:
    if as_hex:
        return value.hex()
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return value.hex()
    return text if text.isprintable() or not text else repr(text)[1:-1]


# ---------------------------------------------------------------------------------------
# Running a command
# ---------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, body: Callable[[Client], Any]) -> int:
    """Connect, run ``body(client)`` under trio, map errors to a one-line message."""
    addr, token = resolve_target(args)

    async def main() -> None:
        client = await Client.connect(addr, token)
        async with client:
            await body(client)

    return _guard(lambda: trio.run(main))


def _guard(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except ServerError as e:
        print(f"pageserver: error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except (ConnectionLost, CliError) as e:
        print(f"pageserver: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pageserver: interrupted", file=sys.stderr)
        return 130
    return 0


def _cmd_tenant_create(args: argparse.Namespace) -> int:
    tenant_id = args.tenant_id or str(TenantId.generate())
    config = dict(args.config) if args.config else None

    async def body(c: Client) -> None:
        await c.request("tenant_create", tenant_id=tenant_id, config=config)
        if args.json:
            _print_json({"tenant_id": tenant_id})
        else:
            print(tenant_id)

    return _run(args, body)


def _cmd_tenant_config(args: argparse.Namespace) -> int:
    async def body(c: Client) -> None:
        r = await c.request("tenant_config", tenant_id=args.tenant_id, config=dict(args.config))
        if args.json:
            _print_json(r)
        else:
            for k, v in sorted(r.get("config", {}).items()):
                print(f"{k} = {v!r}")

    return _run(args, body)


def _cmd_timeline_create(args: argparse.Namespace) -> int:
    timeline_id = args.timeline_id or str(TimelineId.generate())

    async def body(c: Client) -> None:
        await c.request(
            "timeline_create",
            tenant_id=args.tenant_id,
            timeline_id=timeline_id,
            start_lsn=args.start_lsn,
        )
        if args.json:
            _print_json({"timeline_id": timeline_id, "start_lsn": args.start_lsn})
        else:
            print(timeline_id)

    return _run(args, body)


def _put_value(args: argparse.Namespace) -> bytes:
    if args.image is not None:
        return encode_value(Image(args.image.encode()))
    if args.image_hex is not None:
        try:
            return encode_value(Image(bytes.fromhex(args.image_hex)))
        except ValueError:
            raise CliError(f"--image-hex: not hex: {args.image_hex!r}") from None
    assert args.test_append is not None
    return encode_value(
        TestRecord(
            args.test_append,
            clear=args.clear or args.will_init,
            will_init=args.will_init,
            only_if=args.only_if,
        )
    )


def _record_spec(key_text: str, lsn_text: str, spec: str) -> Record:
    key = parse_key(key_text)
    lsn = parse_lsn(lsn_text)
    kind, sep, payload = spec.partition(":")
    if not sep:
        raise CliError(f"--record value {spec!r}: expected KIND:TEXT")
    if kind == "image":
        value = encode_value(Image(payload.encode()))
    elif kind == "hex":
        try:
            value = encode_value(Image(bytes.fromhex(payload)))
        except ValueError:
            raise CliError(f"--record value {spec!r}: not hex") from None
    elif kind == "test":
        value = encode_value(TestRecord(payload))
    elif kind == "test-init":
        value = encode_value(TestRecord(payload, clear=True, will_init=True))
    else:
        raise CliError(f"--record value {spec!r}: KIND is image, hex, test or test-init")
    return key, lsn, value


def _cmd_put(args: argparse.Namespace) -> int:
    def build() -> list[Record]:
        records: list[Record] = [(args.key, args.lsn, _put_value(args))]
        for key_text, lsn_text, spec in args.record or []:
            try:
                records.append(_record_spec(key_text, lsn_text, spec))
            except argparse.ArgumentTypeError as e:
                raise CliError(str(e)) from None
        return records

    async def body(c: Client) -> None:
        r = await c.put(args.tenant_id, args.timeline_id, build())
        if args.json:
            _print_json(r)
        else:
            print(
                f"last_record_lsn {lsn_str(r['last_record_lsn'])}  "
                f"disk_consistent_lsn {lsn_str(r['disk_consistent_lsn'])}  "
                f"skipped {r['skipped']}"
            )

    return _run(args, body)


def _cmd_get(args: argparse.Namespace) -> int:
    async def body(c: Client) -> None:
        if args.history:
            r = await c.request(
                "get_history",
                tenant_id=args.tenant_id,
                timeline_id=args.timeline_id,
                key=args.key,
                lsn=args.lsn,
            )
            if args.json:
                _print_json(r)
                return
            if r.get("image") is not None:
                print(f"image at {lsn_str(r['image_lsn'])}: {_show_bytes(r['image'], args.hex)}")
            else:
                print("no image")
            for lsn, value in r.get("records", []):
                print(f"  {lsn_str(lsn)}: {value.hex()}")
            return
        value = await c.get(args.tenant_id, args.timeline_id, args.key, args.lsn)
        if args.json:
            _print_json({"value": value})
        elif value is None:
            print("(no record at or below this LSN)", file=sys.stderr)
        else:
            print(_show_bytes(value, args.hex))

    return _run(args, body)


def _cmd_status(args: argparse.Namespace) -> int:
    async def body(c: Client) -> None:
        r = await c.status(args.tenant_id)
        if args.json:
            _print_json(r)
            return
        print(f"io_engine {r.get('io_engine')}  server {c.addr}")
        tenants = r.get("tenants", [])
        if not tenants:
            print("no tenants")
        for t in tenants:
            print(f"tenant {t['tenant_id']}")
            tls = t.get("timelines", [])
            if not tls:
                print("  no timelines")
            for tl in tls:
                layers = tl.get("layers", {})
                print(
                    f"  timeline {tl['timeline_id']}  "
                    f"last_record_lsn {lsn_str(tl['last_record_lsn'])}  "
                    f"disk_consistent_lsn {lsn_str(tl['disk_consistent_lsn'])}  "
                    f"layers l0={layers.get('l0', 0)} delta={layers.get('delta', 0)} "
                    f"image={layers.get('image', 0)}"
                )

    return _run(args, body)


def _cmd_flush(args: argparse.Namespace) -> int:
    async def body(c: Client) -> None:
        dcl = await c.flush(args.tenant_id, args.timeline_id)
        if args.json:
            _print_json({"disk_consistent_lsn": dcl})
        else:
            print(f"disk_consistent_lsn {lsn_str(dcl)}")

    return _run(args, body)


def _cmd_compact(args: argparse.Namespace) -> int:
    async def body(c: Client) -> None:
        r = await c.request("compact", tenant_id=args.tenant_id, timeline_id=args.timeline_id)
        if args.json:
            _print_json(r)
        else:
            print(
                f"layers created {r.get('layers_created', 0)}, removed {r.get('layers_removed', 0)}"
            )

    return _run(args, body)


# ---------------------------------------------------------------------------------------
# feed: record sources
# ---------------------------------------------------------------------------------------

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

    def record(self, i: int) -> Record:
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

    def records_from(self, lsn: int) -> Iterator[tuple[int, Record]]:
        record = self.record
        for i in range(self.index_at(lsn), self.count):
            yield i, record(i)


class FeedSource(Protocol):
    @property
    def total(self) -> int | None: ...

    def records_from(self, lsn: int) -> Iterator[tuple[int, Record]]:
        """``(index, record)`` for every record with LSN >= ``lsn``, in order."""
        ...


class FileSource:
    """Records from a file: a msgpack stream of ``[key, lsn, value]`` arrays, or JSON lines
    ``{"key": hex, "lsn": int, "value": hex}`` (chosen by the first byte)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                first = f.read(1)
        except OSError as e:
            raise CliError(f"cannot read {path}: {e.strerror}") from None
        self.is_json = first in (b"{", b" ", b"\n", b"\t", b"\r")
        self._total: int | None = None

    @property
    def total(self) -> int | None:
        if self._total is None:
            self._total = sum(1 for _ in self._iter())
        return self._total

    def _iter(self) -> Iterator[Record]:
        try:
            with open(self.path, "rb") as f:
                yield from (self._json(f) if self.is_json else self._msgpack(f))
        except OSError as e:
            raise CliError(f"cannot read {self.path}: {e.strerror}") from None

    def _json(self, f: IO[bytes]) -> Iterator[Record]:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key = bytes.fromhex(obj["key"])
                lsn = obj["lsn"]
                value = bytes.fromhex(obj["value"])
                if type(lsn) is not int or len(key) != 18:
                    raise ValueError("key must be 36 hex digits and lsn an integer")
            except (ValueError, KeyError, TypeError) as e:
                raise CliError(f"{self.path}:{n}: bad record: {e}") from None
            yield key, lsn, value

    def _msgpack(self, f: IO[bytes]) -> Iterator[Record]:
        unpacker = msgpack.Unpacker(f, raw=False, use_list=True, max_buffer_size=64 << 20)
        try:
            for n, obj in enumerate(unpacker, 1):
                if (
                    not isinstance(obj, list)
                    or len(obj) != 3
                    or not isinstance(obj[0], bytes)
                    or type(obj[1]) is not int
                    or not isinstance(obj[2], bytes)
                ):
                    raise CliError(f"{self.path}: record {n} is not [bin key, int lsn, bin value]")
                yield obj[0], obj[1], obj[2]
        except (ValueError, msgpack.UnpackException) as e:
            raise CliError(f"{self.path}: not a msgpack stream: {e}") from None

    def records_from(self, lsn: int) -> Iterator[tuple[int, Record]]:
        for i, rec in enumerate(self._iter()):
            if rec[1] >= lsn:
                yield i, rec


def _batches(
    source: Iterator[tuple[int, Record]], max_records: int, max_bytes: int
) -> Iterator[PutBatch]:
    """Group records into ``put`` batches; the tag is ``(records, value bytes, next index)``.

    A batch ends only at an LSN boundary: once the limits are reached, the records of the
    current LSN still go into it. A server may freeze (and a graceful stop flushes) its
    open layer at any boundary it has passed; if one LSN were split across two puts and
    the server stopped between them, ``disk_consistent_lsn`` would cover that LSN, and
    the resend would see the missing half skipped as durable. (One LSN's records larger
    than the server's frame limit cannot be sent at all: the put fails clearly.)
    """
    batch: list[Record] = []
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
# feed: the loop
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


class _Progress:
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
    progress: _Progress | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> FeedStats:
    """Stream ``source`` to a timeline, reconnecting and resending as SPEC section 2 says.

    Each (re)connection asks ``status`` and sends every record at or above
    ``last_record_lsn``. Gives up after ``retry_timeout`` seconds without a successful
    connection. With ``flush``, ends with a ``flush`` (retried the same way).
    """
    stats = FeedStats()
    delays = iter(backoff_delays())
    deadline: float | None = None
    done_sending = False
    while True:
        try:
            client = await Client.connect(addr, token)
        except (ConnectionLost, ServerError) as e:
            if isinstance(e, ServerError) and e.code != "shutting_down":
                raise
            now = trio.current_time()
            deadline = deadline if deadline is not None else now + retry_timeout
            if now >= deadline:
                raise CliError(f"gave up reconnecting after {retry_timeout:.0f}s: {e}") from None
            if progress:
                progress.update(stats.position, stats.bytes_acked, "reconnecting...")
            await trio.sleep(next(delays))
            continue
        deadline = None
        delays = iter(backoff_delays())
        try:
            async with client:
                st = await client.timeline_status(tenant_id, timeline_id)
                resume = int(st["last_record_lsn"])
                stats.last_record_lsn = resume
                stats.disk_consistent_lsn = int(st["disk_consistent_lsn"])
                if not done_sending:
                    records = source.records_from(resume)
                    first = next(records, None)
                    if first is not None:
                        stats.position = first[0]

                        def chain(
                            head: tuple[int, Record], rest: Iterator[tuple[int, Record]]
                        ) -> Iterator[tuple[int, Record]]:
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
                            if progress:
                                progress.update(stats.position, stats.bytes_acked)

                        await client.put_pipelined(
                            tenant_id,
                            timeline_id,
                            _batches(records, batch_records, batch_bytes),
                            window=window,
                            on_reply=on_reply,
                        )
                    done_sending = True
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
        log(f"connection lost ({reason}); reconnecting")
        if progress:
            progress.update(stats.position, stats.bytes_acked, "reconnecting...")
        await trio.sleep(next(delays))


def _cmd_feed(args: argparse.Namespace) -> int:
    addr, token = resolve_target(args)
    show_progress = not args.no_progress and not args.json and sys.stderr.isatty()

    async def main() -> FeedStats:
        source: FeedSource
        if args.file:
            source = FileSource(args.file)
        else:
            # A fixed default (not "after whatever the timeline has"): the stream must be
            # the same on every run, so that re-running an interrupted feed resumes it.
            start_lsn = args.start_lsn
            try:
                source = FeedGenerator(
                    count=args.count,
                    keys=args.keys,
                    value_size=args.value_size,
                    kind=args.kind,
                    start_lsn=start_lsn,
                    records_per_lsn=args.records_per_lsn,
                )
            except ValueError as e:
                raise CliError(str(e)) from None
        progress = _Progress(show_progress, source.total)
        try:
            return await run_feed(
                addr,
                token,
                args.tenant_id,
                args.timeline_id,
                source,
                batch_records=args.batch,
                batch_bytes=args.batch_bytes,
                window=args.window,
                flush=args.flush,
                retry_timeout=args.retry_timeout,
                progress=progress,
                log=lambda s: print(f"pageserver feed: {s}", file=sys.stderr),
            )
        finally:
            progress.stop()

    t0 = time.perf_counter()
    result: list[FeedStats] = []
    status = _guard(lambda: result.append(trio.run(main)))
    if status != 0:
        return status
    stats = result[0]
    elapsed = time.perf_counter() - t0
    summary = {
        # ``records``: how far through the stream the feed got (each record once);
        # ``records_sent`` also counts what was resent after reconnects (rates use it).
        "records": stats.position,
        "records_sent": stats.records_acked,
        "bytes": stats.bytes_acked,
        "batches": stats.batches,
        "seconds": round(elapsed, 3),
        "records_per_s": round(stats.records_acked / elapsed, 1) if elapsed else None,
        "mib_per_s": round(stats.bytes_acked / 2**20 / elapsed, 2) if elapsed else None,
        "reconnects": stats.reconnects,
        "skipped": stats.skipped,
        "last_record_lsn": stats.last_record_lsn,
        "disk_consistent_lsn": stats.disk_consistent_lsn,
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"fed {stats.position} records ({stats.records_acked} sent, "
            f"{stats.bytes_acked / 2**20:.1f} MiB) in "
            f"{elapsed:.2f}s: {summary['records_per_s']} records/s, "
            f"{summary['mib_per_s']} MiB/s; last_record_lsn {lsn_str(stats.last_record_lsn)}, "
            f"disk_consistent_lsn {lsn_str(stats.disk_consistent_lsn)}, "
            f"reconnects {stats.reconnects}"
        )
    return 0


# ---------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument(
        "-D",
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"read the default --addr/--token from DIR/pageserver.toml (default {DEFAULT_DATA_DIR})",
    )
    g.add_argument(
        "--addr",
        help=f"server address, host:port or unix:/path (default: listen_addr of "
        f"DIR/pageserver.toml, else {DEFAULT_ADDR})",
    )
    g.add_argument(
        "--token",
        help="auth token for hello (default: $PAGESERVER_AUTH_TOKEN, else auth_token of the config)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    return p


def _tenant_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("tenant_id", metavar="TENANT", type=parse_id, help="tenant id (32 hex digits)")


def _timeline_args(p: argparse.ArgumentParser) -> None:
    _tenant_arg(p)
    p.add_argument(
        "timeline_id", metavar="TIMELINE", type=parse_id, help="timeline id (32 hex digits)"
    )


def register(subparsers: Any) -> None:
    """Add the client subcommands to ``pageserver``'s parser."""
    common = _common()
    fmt = argparse.RawDescriptionHelpFormatter

    tenant = subparsers.add_parser(
        "tenant", help="create or configure tenants", description="Tenant commands."
    )
    tsub = tenant.add_subparsers(dest="tenant_command", metavar="COMMAND")
    tsub.required = True
    p = tsub.add_parser(
        "create",
        parents=[common],
        help="create a tenant (prints its id)",
        description="Create a tenant. Without TENANT a random id is generated; the id is "
        "printed either way. --config sets per-tenant overrides of [tenant_config], e.g. "
        "--config checkpoint_distance=8388608 --config checkpoint_timeout=30s.",
    )
    p.add_argument(
        "tenant_id", metavar="TENANT", nargs="?", type=parse_id, help="tenant id (default: random)"
    )
    p.add_argument(
        "--config",
        metavar="KEY=VALUE",
        type=parse_config_pair,
        action="append",
        help="a tenant config override (repeatable)",
    )
    p.set_defaults(func=_cmd_tenant_create)
    p = tsub.add_parser(
        "config",
        parents=[common],
        help="replace a tenant's config overrides",
        description="Replace all of a tenant's config overrides (like Neon's PUT) and print "
        "the effective config. No --config resets it to the defaults.",
    )
    _tenant_arg(p)
    p.add_argument(
        "--config",
        metavar="KEY=VALUE",
        type=parse_config_pair,
        action="append",
        default=[],
        help="a tenant config override (repeatable)",
    )
    p.set_defaults(func=_cmd_tenant_config)

    timeline = subparsers.add_parser(
        "timeline", help="create timelines", description="Timeline commands."
    )
    tlsub = timeline.add_subparsers(dest="timeline_command", metavar="COMMAND")
    tlsub.required = True
    p = tlsub.add_parser(
        "create",
        parents=[common],
        help="create a timeline (prints its id)",
        description="Create a timeline in TENANT. Its last_record_lsn and "
        "disk_consistent_lsn start at --start-lsn; records must have higher LSNs.",
    )
    _tenant_arg(p)
    p.add_argument(
        "timeline_id",
        metavar="TIMELINE",
        nargs="?",
        type=parse_id,
        help="timeline id (default: random)",
    )
    p.add_argument("--start-lsn", type=parse_lsn, default=0, help="initial LSN (default 0)")
    p.set_defaults(func=_cmd_timeline_create)

    p = subparsers.add_parser(
        "put",
        parents=[common],
        formatter_class=fmt,
        help="put a handful of records",
        description="Put one record (KEY at LSN with the given value), plus any --record, "
        "in one batch.\n\nexamples:\n"
        "  pageserver put T TL 000000067F00004000000040010000000000 10 --image hello\n"
        "  pageserver put T TL 000000067F00004000000040010000000000 11 --test-append ' world'\n"
        "  pageserver put T TL KEY 12 --test-append fresh --will-init "
        "--record KEY2 12 image:abc",
    )
    _timeline_args(p)
    p.add_argument("key", metavar="KEY", type=parse_key, help="key, 36 hex digits")
    p.add_argument("lsn", metavar="LSN", type=parse_lsn, help="LSN (decimal, 0x hex or HI/LO)")
    v = p.add_mutually_exclusive_group(required=True)
    v.add_argument("--image", metavar="TEXT", help="an Image value holding TEXT (UTF-8)")
    v.add_argument("--image-hex", metavar="HEX", help="an Image value holding these bytes")
    v.add_argument("--test-append", metavar="TEXT", help="a Test WAL record appending TEXT")
    p.add_argument("--will-init", action="store_true", help="Test record starts a new value")
    p.add_argument("--clear", action="store_true", help="Test record clears the value first")
    p.add_argument("--only-if", metavar="TEXT", help="Test record applies only if value == TEXT")
    p.add_argument(
        "--record",
        nargs=3,
        action="append",
        metavar=("KEY", "LSN", "KIND:TEXT"),
        help="another record; KIND is image, hex, test or test-init (repeatable)",
    )
    p.set_defaults(func=_cmd_put)

    p = subparsers.add_parser(
        "get",
        parents=[common],
        help="read a key's value at an LSN",
        description="Print the materialised value of KEY at LSN (UTF-8 text when printable, "
        "else hex). --history prints the stored image and records instead.",
    )
    _timeline_args(p)
    p.add_argument("key", metavar="KEY", type=parse_key, help="key, 36 hex digits")
    p.add_argument("lsn", metavar="LSN", type=parse_lsn, help="LSN (decimal, 0x hex or HI/LO)")
    p.add_argument("--hex", action="store_true", help="print the value as hex")
    p.add_argument("--history", action="store_true", help="show get_history instead")
    p.set_defaults(func=_cmd_get)

    p = subparsers.add_parser(
        "status",
        parents=[common],
        help="tenants, timelines, LSNs and layer counts",
        description="Show every tenant (or only TENANT) with its timelines' last_record_lsn, "
        "disk_consistent_lsn and layer counts, and the server's io engine.",
    )
    p.add_argument("tenant_id", metavar="TENANT", nargs="?", type=parse_id, help="only this tenant")
    p.set_defaults(func=_cmd_status)

    p = subparsers.add_parser(
        "flush",
        parents=[common],
        help="make everything received durable",
        description="Freeze the open in-memory layer and wait until every record received so "
        "far is in layer files; prints the new disk_consistent_lsn.",
    )
    _timeline_args(p)
    p.set_defaults(func=_cmd_flush)

    p = subparsers.add_parser(
        "compact",
        parents=[common],
        help="compact L0 deltas and create image layers",
        description="Run compaction on a timeline now; prints layers created/removed.",
    )
    _timeline_args(p)
    p.set_defaults(func=_cmd_compact)

    p = subparsers.add_parser(
        "feed",
        parents=[common],
        formatter_class=fmt,
        help="stream many records (generator or file) with a progress bar",
        description="Stream records to a timeline in pipelined put batches, with a progress "
        "bar on stderr (records, MiB, rate, ETA). If the connection drops (e.g. the server "
        "restarts) feed reconnects, asks status and resends every record at or above the "
        "timeline's last_record_lsn, so nothing is lost; re-running an interrupted feed with "
        "the same arguments resumes it.\n\n"
        "The built-in generator is deterministic: record i has LSN start_lsn + i // "
        "records_per_lsn and key block (i * 2654435761) % keys of relation 1663/16384/16385.\n"
        "--file reads a msgpack stream of [key, lsn, value] arrays, or JSON lines "
        '{"key": hex, "lsn": int, "value": hex} (values in the Value encoding).\n\n'
        "example:\n  pageserver feed T TL --count 100000 --keys 5000 --value-size 128 --flush",
    )
    _timeline_args(p)
    src = p.add_argument_group("source")
    src.add_argument("--file", help="read records from this file instead of the generator")
    src.add_argument("--count", type=int, default=100_000, help="records (default 100000)")
    src.add_argument("--keys", type=int, default=1000, help="distinct keys (default 1000)")
    src.add_argument("--value-size", type=int, default=128, help="value bytes (default 128)")
    src.add_argument(
        "--kind", choices=("image", "test"), default="image", help="value kind (default image)"
    )
    src.add_argument(
        "--start-lsn",
        type=parse_lsn,
        default=1,
        help="LSN of the first record (default 1; records at or below the timeline's "
        "disk_consistent_lsn are skipped by the server and counted as skipped). To append a "
        "new stream after existing data, pass an LSN above its last_record_lsn.",
    )
    src.add_argument(
        "--records-per-lsn", type=int, default=1, help="records sharing one LSN (default 1)"
    )
    snd = p.add_argument_group("sending")
    snd.add_argument("--batch", type=int, default=1000, help="records per put (default 1000)")
    snd.add_argument(
        "--batch-bytes",
        type=int,
        default=1 << 20,
        help="cap on a put's payload bytes (default 1 MiB; keep below max_frame_bytes)",
    )
    snd.add_argument("--window", type=int, default=8, help="puts in flight (default 8)")
    snd.add_argument("--flush", action="store_true", help="flush at the end (durable on exit)")
    snd.add_argument(
        "--retry-timeout",
        type=float,
        default=60.0,
        help="give up after this many seconds unable to reconnect (default 60)",
    )
    snd.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_feed)
