"""Client subcommands of ``pageserver``: tenant/timeline create, put, get, status, flush,
compact, gc and ``feed`` (SPEC section 2).

Every command connects to ``--addr`` (default: ``listen_addr`` of ``-D DIR``'s
``pageserver.toml`` when that file exists, else ``127.0.0.1:6400``), says ``hello`` (with
``--token``, default the config's ``auth_token``), prints a human summary or, with
``--json``, one JSON object on stdout, and exits non-zero with a one-line message on
stderr for any error.

``feed``'s record sources and its reconnect-and-resend loop are in
:mod:`pageserver.client.feed`; here are only its options and summary.

Ids, keys and LSNs are parsed by their one home in :mod:`pageserver.layers.key`
(:func:`~pageserver.layers.key.parse_id_text`, :meth:`~pageserver.layers.key.Key.from_hex`,
:meth:`~pageserver.layers.key.Lsn.parse`); the ``parse_*`` functions here only turn their
``ValueError`` into argparse's error, and :func:`parse_lsn` adds the CLI's decimal and ``0x``
forms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from pageserver.addresses import DEFAULT_ADDR, parse_address
from pageserver.client._client import Client, ConnectionLost, ServerError
from pageserver.client.feed import (
    FeedError,
    FeedGenerator,
    FeedProgress,
    FeedSource,
    FeedStats,
    FileSource,
    run_feed,
)
from pageserver.config import CONFIG_FILE_NAME, DEFAULT_DATA_DIR
from pageserver.layers.batch import PutRecord
from pageserver.layers.key import Key, Lsn, TenantId, TimelineId, lsn_str, parse_id_text
from pageserver.layers.value import Image, TestRecord, encode_value

__all__ = ["parse_config_pair", "parse_id", "parse_key", "parse_lsn", "register"]


class CliError(Exception):
    """A one-line error for the user (exit status 1)."""


# ---------------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """An LSN as a decimal number, ``0x`` hex, or Neon's ``HI/LO`` form."""
    try:
        return int(Lsn.from_text(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid LSN {text!r} (use a decimal number, 0x hex, or HI/LO like 0/16B5A50)"
        ) from None


def parse_key(text: str) -> bytes:
    try:
        return bytes(Key.from_hex(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_id(text: str) -> str:
    try:
        return parse_id_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """The argument type of a count that must be positive: a usage error for ``--window 0``
    (it used to end in a traceback) or ``--batch-bytes -5`` (silently one LSN per put)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """The argument type of a count or size that may be 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}: {text!r}")
    return n


def nonnegative_seconds(text: str) -> float:
    """The argument type of a duration in seconds, 0 or more (``inf``: for ever)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (or inf): {text!r}")
    return x


def add_workload_args(
    p: argparse.ArgumentParser,
    *,
    count: int,
    titles: tuple[str, str] = ("source", "sending"),
    start_lsn_help: str = "first LSN (default 1)",
) -> Any:
    """The records a workload sends and how it batches them: ``feed``'s options, which
    ``compare-engines`` takes too (one definition, one validation for both; the
    generator's own rules, such as ``--keys`` >= 1, are :class:`FeedGenerator`'s, reported
    by the command). Returns the second group (titled ``titles[1]``), for options of the
    caller's own."""
    src = p.add_argument_group(titles[0])
    src.add_argument("--file", help="read records from this file instead of the generator")
    src.add_argument("--count", type=int, default=count, help=f"records (default {count})")
    src.add_argument("--keys", type=int, default=1000, help="distinct keys (default 1000)")
    src.add_argument("--value-size", type=int, default=128, help="value bytes (default 128)")
    src.add_argument(
        "--kind", choices=("image", "test"), default="image", help="value kind (default image)"
    )
    src.add_argument("--start-lsn", type=parse_lsn, default=1, help=start_lsn_help)
    src.add_argument(
        "--records-per-lsn", type=int, default=1, help="records sharing one LSN (default 1)"
    )
    snd = p.add_argument_group(titles[1])
    snd.add_argument(
        "--batch", type=positive_int, default=1000, help="records per put (default 1000)"
    )
    snd.add_argument(
        "--batch-bytes",
        type=positive_int,
        default=1 << 20,
        help="cap on a put's payload bytes (default 1 MiB; keep below max_frame_bytes)",
    )
    snd.add_argument("--window", type=positive_int, default=8, help="puts in flight (default 8)")
    return snd


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
        else:
            # The wire carries msgpack integers: 64 bits, signed or not.
            if not -(1 << 63) <= value < 1 << 64:
                raise argparse.ArgumentTypeError(f"{key.strip()}: {raw} is out of the 64-bit range")
    return key.strip(), value


def _config_addr_and_token(data_dir: str) -> tuple[str | None, str | None]:
    path = Path(data_dir) / CONFIG_FILE_NAME
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None, None
    addr = data.get("listen_addr")
    token = data.get("auth_token")
    return (addr if isinstance(addr, str) else None, token if isinstance(token, str) else None)


def resolve_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """``--addr``/``--token`` with the data dir's config as the default.

    :class:`CliError` for an address that does not parse, or a ``-D DIR`` given explicitly
    that does not exist (rather than silently trying the default address).
    """
    if args.addr is None and args.data_dir != DEFAULT_DATA_DIR and not os.path.isdir(args.data_dir):
        raise CliError(
            f"data directory {args.data_dir} does not exist (--addr connects without one)"
        )
    cfg_addr, cfg_token = _config_addr_and_token(args.data_dir)
    addr = args.addr if args.addr is not None else (cfg_addr or DEFAULT_ADDR)
    try:
        parse_address(addr)
    except ValueError as e:
        raise CliError(str(e)) from None
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

    async def main() -> None:
        addr, token = resolve_target(args)
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
    except (ConnectionLost, CliError, FeedError) as e:
        print(f"pageserver: error: {e}", file=sys.stderr)
        return 1
    # Ctrl-C and a closed stdout are handled once for every command, in pageserver.cli.main.
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


def _cmd_tenant_attach(args: argparse.Namespace) -> int:
    config = dict(args.config) if args.config else None

    async def body(c: Client) -> None:
        r = await c.request("tenant_attach", tenant_id=args.tenant_id, config=config)
        if args.json:
            _print_json({"tenant_id": args.tenant_id, **r})
        else:
            print(f"tenant {args.tenant_id} attached with generation {r.get('generation')}")
            for tl in r.get("timelines", []):
                print(f"  timeline {tl}")

    return _run(args, body)


def _cmd_tenant_detach(args: argparse.Namespace) -> int:
    async def body(c: Client) -> None:
        await c.request("tenant_detach", tenant_id=args.tenant_id)
        if args.json:
            _print_json({"tenant_id": args.tenant_id, "detached": True})
        else:
            print(f"tenant {args.tenant_id} detached")

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
    if args.test_append is None and (args.will_init or args.clear or args.only_if is not None):
        # An image always starts a value: these would be silently ignored.
        raise CliError("--will-init, --clear and --only-if apply to --test-append only")
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


def _record_spec(key_text: str, lsn_text: str, spec: str) -> PutRecord:
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
    def build() -> list[PutRecord]:
        records: list[PutRecord] = [(args.key, args.lsn, _put_value(args))]
        for key_text, lsn_text, spec in args.record or []:
            try:
                records.append(_record_spec(key_text, lsn_text, spec))
            except argparse.ArgumentTypeError as e:
                raise CliError(str(e)) from None
        return records

    # Built before connecting: a bad value is reported as such, with or without a server.
    built: list[list[PutRecord]] = []
    status = _guard(lambda: built.append(build()))
    if status:
        return status

    async def body(c: Client) -> None:
        r = await c.put(args.tenant_id, args.timeline_id, built[0])
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
            gen = t.get("generation")
            print(f"tenant {t['tenant_id']}" + (f"  generation {gen}" if gen is not None else ""))
            tls = t.get("timelines", [])
            if not tls:
                print("  no timelines")
            for tl in tls:
                layers = tl.get("layers", {})
                rcl = tl.get("remote_consistent_lsn")
                remote = (
                    f"  remote_consistent_lsn {lsn_str(rcl)}  "
                    f"resident {layers.get('resident_bytes', 0)} B  "
                    f"remote_only {layers.get('remote_only', 0)}"
                    if rcl is not None or t.get("generation") is not None
                    else ""
                )
                print(
                    f"  timeline {tl['timeline_id']}  "
                    f"last_record_lsn {lsn_str(tl['last_record_lsn'])}  "
                    f"disk_consistent_lsn {lsn_str(tl['disk_consistent_lsn'])}  "
                    f"gc_cutoff_lsn {lsn_str(tl.get('gc_cutoff_lsn', 0))}  "
                    f"layers l0={layers.get('l0', 0)} delta={layers.get('delta', 0)} "
                    f"image={layers.get('image', 0)}{remote}"
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


def _timeline_job(args: argparse.Namespace, op: str, describe: Callable[[dict[str, Any]], str]) -> int:
    """A maintenance op on one timeline (``compact``, ``gc``): its reply as JSON or a line."""

    async def body(c: Client) -> None:
        r = await c.request(op, tenant_id=args.tenant_id, timeline_id=args.timeline_id)
        if args.json:
            _print_json(r)
        else:
            print(describe(r))

    return _run(args, body)


def _cmd_gc(args: argparse.Namespace) -> int:
    return _timeline_job(
        args,
        "gc",
        lambda r: f"gc_cutoff_lsn {lsn_str(r.get('gc_cutoff_lsn', 0))}, "
        f"layers removed {r.get('layers_removed', 0)}",
    )


def _cmd_compact(args: argparse.Namespace) -> int:
    return _timeline_job(
        args,
        "compact",
        lambda r: f"layers created {r.get('layers_created', 0)}, removed {r.get('layers_removed', 0)}",
    )


def _cmd_feed(args: argparse.Namespace) -> int:
    show_progress = not args.no_progress and not args.json and sys.stderr.isatty()

    async def main() -> FeedStats:
        addr, token = resolve_target(args)
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
        progress = FeedProgress(show_progress, source.total)
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


def _config_arg(p: argparse.ArgumentParser, *, reset: bool = False) -> None:
    """``--config KEY=VALUE`` (repeatable): tenant config overrides. With ``reset`` (the
    ``config`` command, which replaces them all) no ``--config`` is an empty list."""
    p.add_argument(
        "--config",
        metavar="KEY=VALUE",
        type=parse_config_pair,
        action="append",
        default=[] if reset else None,
        help="a tenant config override (repeatable)",
    )


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
        "tenant", help="create, configure, attach or detach tenants", description="Tenant commands."
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
    _config_arg(p)
    p.set_defaults(func=_cmd_tenant_create)
    p = tsub.add_parser(
        "config",
        parents=[common],
        help="replace a tenant's config overrides",
        description="Replace all of a tenant's config overrides (like Neon's PUT) and print "
        "the effective config. No --config resets it to the defaults.",
    )
    _tenant_arg(p)
    _config_arg(p, reset=True)
    p.set_defaults(func=_cmd_tenant_config)
    p = tsub.add_parser(
        "attach",
        parents=[common],
        help="attach a tenant from remote storage",
        description="Attach TENANT from [remote_storage]: claim its next generation, load "
        "each timeline's newest index and serve reads at once (layers are downloaded on "
        "demand). Ingest continues from the index's disk_consistent_lsn. Prints the "
        "generation and the timelines.",
    )
    _tenant_arg(p)
    _config_arg(p)
    p.set_defaults(func=_cmd_tenant_attach)
    p = tsub.add_parser(
        "detach",
        parents=[common],
        help="detach a tenant (after its uploads finished)",
        description="Flush TENANT, wait until every pending upload reached remote storage, "
        "then stop serving it and remove its local copy.",
    )
    _tenant_arg(p)
    p.set_defaults(func=_cmd_tenant_detach)

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
        "gc",
        parents=[common],
        help="garbage-collect layers below the timeline's gc cutoff",
        description="Run a GC pass on a timeline now (SPEC section 11): move gc_cutoff_lsn to "
        "last_record_lsn - gc_horizon and remove the layers no read at or above it needs; "
        "prints the cutoff and the number of layers removed.",
    )
    _timeline_args(p)
    p.set_defaults(func=_cmd_gc)

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
    snd = add_workload_args(
        p,
        count=100_000,
        start_lsn_help="LSN of the first record (default 1; records at or below the timeline's "
        "disk_consistent_lsn are skipped by the server and counted as skipped). To append a "
        "new stream after existing data, pass an LSN above its last_record_lsn.",
    )
    snd.add_argument("--flush", action="store_true", help="flush at the end (durable on exit)")
    snd.add_argument(
        "--retry-timeout",
        type=nonnegative_seconds,
        default=60.0,
        help="give up after this many seconds unable to reconnect, or losing every "
        "connection before a put is acknowledged (default 60; inf: never)",
    )
    snd.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_feed)
