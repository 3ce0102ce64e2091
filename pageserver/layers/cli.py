"""``pageserver layer dump FILE`` and ``pageserver layer ls DIR``: offline layer inspection.

Both read through the same readers as the server (std-fs engine, no daemon needed), so
they also read layer files written by Neon's pageserver. A file that is not a layer is
refused with one line on stderr and exit status 1; nothing is written anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pageserver.io import IoContext, tool_engine
from pageserver.layers.common import LayerFileError, open_layer_file, run_cleanup
from pageserver.layers.delta_layer import DeltaEntry, DeltaLayer
from pageserver.layers.image_layer import ImageEntry, ImageLayer
from pageserver.layers.key import lsn_str
from pageserver.layers.layer_name import try_parse_layer_name
from pageserver.layers.summary import DeltaSummary, Summary
from pageserver.layers.validate import validate_layer_file
from pageserver.layers.value import (
    BadValue,
    Image,
    PostgresRecord,
    TestRecord,
    decode_value,
)

MAX_TEXT_BYTES = 32


def register(subparsers: Any) -> None:
    """Add ``layer dump`` and ``layer ls`` to the top-level ``pageserver`` parser."""
    layer = subparsers.add_parser(
        "layer",
        help="inspect layer files offline",
        description="Read delta and image layer files (Neon storage format version 3) "
        "without a running daemon: this project's, or ones written by Neon's pageserver.",
    )
    sub = layer.add_subparsers(dest="layer_command", required=True)

    dump = sub.add_parser(
        "dump",
        help="print a layer file's summary and entries",
        description="Print a layer file's summary (kind, tenant/timeline ids, key range, LSN "
        "range, index blocks), its entry count and its (key, LSN) entries; --values adds each "
        "value (decoded where this server knows the encoding, else hex). Exits 1 with a "
        "one-line message on a file that is not a valid layer.",
        epilog="example: pageserver layer dump "
        ".pageserver/tenants/<tenant>/timelines/<timeline>/<layer file name> --values",
    )
    dump.add_argument("file", help="a delta or image layer file")
    dump.add_argument("--values", action="store_true", help="also print every value")
    dump.add_argument("--json", action="store_true", help="machine-readable output")
    dump.set_defaults(func=cmd_dump)

    ls = sub.add_parser(
        "ls",
        help="list the layer files of a timeline directory",
        description="One row per layer file in DIR: kind (delta/image), key range, LSN range "
        "and size. Other files (metadata, ephemeral files) are skipped; a file whose name "
        "looks like a layer but whose contents do not is an error (exit 1).",
        epilog="example: pageserver layer ls .pageserver/tenants/<tenant>/timelines/<timeline>",
    )
    ls.add_argument("dir", help="a timeline directory")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_ls)


def _run(fn: Callable[[IoContext], Awaitable[int]]) -> int:
    async def main() -> int:
        engine = tool_engine()
        ctx = IoContext(engine, max_file_descriptors=16, no_sync=True)
        try:
            return await fn(ctx)
        finally:
            await ctx.aclose()  # closes the engine too

    return trio.run(main)


def _refuse(message: str) -> int:
    print(f"pageserver layer: {message}", file=sys.stderr)
    return 1


# -- dump ----------------------------------------------------------------------------------


def cmd_dump(args: argparse.Namespace) -> int:
    path: str = args.file
    if not os.path.isfile(path):
        return _refuse(f"{path}: no such file")

    async def go(ctx: IoContext) -> int:
        try:
            vf, reader, summary = await open_layer_file(ctx, path)
        except LayerFileError as e:
            return _refuse(str(e))
        except OSError as e:
            return _refuse(f"{path}: {e.strerror or e}")
        try:
            layer: DeltaLayer | ImageLayer
            if isinstance(summary, DeltaSummary):
                layer = DeltaLayer(path, vf, reader, summary)
            else:
                layer = ImageLayer(path, vf, reader, summary)
            it = layer.iter_all() if args.values else layer.iter_index()
            entries: list[dict[str, Any]] = []
            while batch := await it.next_batch():
                entries.extend(_entry(e, args.values) for e in batch)
        except LayerFileError as e:  # the readers name the file and what is wrong
            return _refuse(str(e))
        finally:
            await run_cleanup(vf.close)
        info = _summary_dict(path, summary, reader.file_size)
        info["entries"] = len(entries)
        if args.json:
            info["records"] = entries
            print(json.dumps(info, indent=2))
        else:
            _print_summary(info)
            for entry in entries:
                print(_entry_line(entry))
        return 0

    return _run(go)


def _entry(entry: DeltaEntry | ImageEntry, values: bool) -> dict[str, Any]:
    e: dict[str, Any] = {"key": str(entry[0])}
    if len(entry) == 5:  # a delta entry: key, lsn, offset, will_init, value
        _k, lsn, offset, will_init, raw = entry
        e["lsn"] = int(lsn)
        e["offset"] = offset
        e["will_init"] = will_init
        if values:
            e["value"] = _describe_value(raw)
    else:
        _k, offset, raw = entry
        e["offset"] = offset
        if values:
            e["value"] = {"len": len(raw), "hex": raw.hex()}
    return e


def _describe_value(raw: bytes) -> dict[str, Any]:
    try:
        v = decode_value(raw)
    except BadValue:
        # Neon's other WAL record kinds (visibility map, CLOG, ...) are not decoded here.
        return {"type": "undecoded", "len": len(raw), "hex": raw.hex()}
    if isinstance(v, Image):
        return {"type": "image", "len": len(v.data), "hex": v.data.hex()}
    if isinstance(v, PostgresRecord):
        return {"type": "postgres", "will_init": v.will_init, "len": len(v.rec), "hex": v.rec.hex()}
    assert isinstance(v, TestRecord)
    return {
        "type": "test",
        "append": v.append,
        "clear": v.clear,
        "will_init": v.will_init,
        "only_if": v.only_if,
    }


def _summary_dict(path: str, s: Summary, size: int) -> dict[str, Any]:
    d: dict[str, Any] = {
        "path": path,
        "kind": s.kind,
        "format_version": s.format_version,
        "tenant_id": str(s.tenant_id),
        "timeline_id": str(s.timeline_id),
        "key_start": str(s.key_start),
        "key_end": str(s.key_end),
    }
    if isinstance(s, DeltaSummary):
        d["lsn_start"] = int(s.lsn_start)
        d["lsn_end"] = int(s.lsn_end)
    else:
        d["lsn"] = int(s.lsn)
    d["index_start_blk"] = s.index_start_blk
    d["index_root_blk"] = s.index_root_blk
    d["file_size"] = size
    return d


def _print_summary(d: dict[str, Any]) -> None:
    print(f"file:        {d['path']}")
    print(f"kind:        {d['kind']} layer (format version {d['format_version']})")
    print(f"tenant:      {d['tenant_id']}")
    print(f"timeline:    {d['timeline_id']}")
    print(f"key range:   {d['key_start']}-{d['key_end']}")
    if d["kind"] == "delta":
        print(f"lsn range:   {lsn_str(d['lsn_start'])}..{lsn_str(d['lsn_end'])} (end exclusive)")
    else:
        print(f"lsn:         {lsn_str(d['lsn'])}")
    print(f"index:       start block {d['index_start_blk']}, root block {d['index_root_blk']}")
    print(f"file size:   {d['file_size']} bytes")
    print(f"entries:     {d['entries']}")


def _entry_line(e: dict[str, Any]) -> str:
    parts = [e["key"]]
    if "lsn" in e:
        parts.append(f"{lsn_str(e['lsn']):>17}")
        parts.append(f"off={e['offset']}")
        parts.append("will_init" if e["will_init"] else "         ")
    else:
        parts.append(f"off={e['offset']}")
    v = e.get("value")
    if v is not None:
        if v.get("type") == "test":
            parts.append(
                f"test append={v['append']!r} clear={v['clear']} will_init={v['will_init']}"
                + (f" only_if={v['only_if']!r}" if v["only_if"] is not None else "")
            )
        else:
            hx = v["hex"]
            shown = hx[: 2 * MAX_TEXT_BYTES] + ("..." if len(hx) > 2 * MAX_TEXT_BYTES else "")
            parts.append(f"{v.get('type', 'image')} len={v['len']} {shown}")
    return "  ".join(parts)


# -- ls ------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    d: str = args.dir
    if not os.path.isdir(d):
        return _refuse(f"{d}: not a directory")

    async def go(ctx: IoContext) -> int:
        rows: list[dict[str, Any]] = []
        failed = False
        for fname in sorted(os.listdir(d)):
            name = try_parse_layer_name(fname)
            if name is None:
                continue  # temp files, ephemeral files, metadata
            path = os.path.join(d, fname)
            row: dict[str, Any] = {
                "name": fname,
                "kind": name.kind,
                "key_start": str(name.key_start),
                "key_end": str(name.key_end),
                "lsn_start": int(name.lsn_range[0]),
                "lsn_end": int(name.lsn_range[1]),
            }
            try:
                _n, _s, size = await validate_layer_file(ctx, path)
                row["size"] = size
                row["valid"] = True
            except (LayerFileError, OSError) as e:
                row["size"] = os.path.getsize(path) if os.path.exists(path) else None
                row["valid"] = False
                row["error"] = str(e) if path in str(e) else f"{path}: {e}"
                print(f"pageserver layer: {row['error']}", file=sys.stderr)
                failed = True
            rows.append(row)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                if r["kind"] == "delta":
                    lsns = f"{lsn_str(r['lsn_start'])}..{lsn_str(r['lsn_end'])}"
                else:
                    lsns = lsn_str(r["lsn_start"])
                status = "" if r["valid"] else "  INVALID"
                shown = "-" if r["size"] is None else str(r["size"])  # None: a dangling symlink
                print(
                    f"{r['kind']:<5}  {r['key_start']}-{r['key_end']}  {lsns:<24}  "
                    f"{shown:>12}{status}"
                )
        return 1 if failed else 0

    return _run(go)
