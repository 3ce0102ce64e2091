"""``pageserver layer dump`` / ``layer ls`` through their argparse registration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import trio

from pageserver.io import IoContext, create_engine
from pageserver.layers import cli
from pageserver.layers.delta_layer import DeltaLayerWriter
from pageserver.layers.image_layer import ImageLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.layers.value import Image, TestRecord

TENANT = TenantId(bytes(range(16)))
TIMELINE = TimelineId(bytes(16))


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pageserver")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    rc: int = args.func(args)
    return rc


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path]:
    async def main() -> tuple[Path, Path]:
        ctx = IoContext(create_engine("std-fs"), no_sync=True)
        w = DeltaLayerWriter(ctx, str(tmp_path), TENANT, TIMELINE, Key.MIN, 0x10, 0x30)
        await w.put_value(Key.from_int(1), 0x10, Image(b"abc"))
        await w.put_value(Key.from_int(1), 0x20, TestRecord("d", only_if="abc"))
        await w.put_value(Key.from_int(2), 0x11, TestRecord("e", True, True))
        delta = await w.finish(Key.from_int(3))
        iw = ImageLayerWriter(ctx, str(tmp_path), TENANT, TIMELINE, Key.MIN, 0x40)
        await iw.put_image(Key.from_int(1), b"abcd")
        image = await iw.finish(Key.MAX)
        await ctx.aclose()
        return Path(delta.path), Path(image.path)

    return trio.run(main)


def test_dump_text(layers: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    delta, image = layers
    assert run_cli("layer", "dump", str(delta), "--values") == 0
    out = capsys.readouterr().out
    assert "kind:        delta layer (format version 3)" in out
    assert f"tenant:      {TENANT}" in out
    assert "lsn range:   0/10..0/30" in out
    assert "entries:     3" in out
    assert "test append='d'" in out and "only_if='abc'" in out
    assert "image len=3 616263" in out
    assert run_cli("layer", "dump", str(image)) == 0
    out = capsys.readouterr().out
    assert "kind:        image layer" in out and "lsn:         0/40" in out


def test_dump_json(layers: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    delta, image = layers
    assert run_cli("layer", "dump", str(delta), "--json", "--values") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "delta" and d["entries"] == 3
    assert (d["lsn_start"], d["lsn_end"]) == (0x10, 0x30)
    assert d["records"][0] == {
        "key": str(Key.from_int(1)),
        "lsn": 0x10,
        "offset": 8192,
        "will_init": True,
        "value": {"type": "image", "len": 3, "hex": "616263"},
    }
    assert d["records"][2]["value"]["type"] == "test"
    assert run_cli("layer", "dump", str(image), "--json", "--values") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["records"] == [
        {"key": str(Key.from_int(1)), "offset": 8192, "value": {"len": 4, "hex": "61626364"}}
    ]


def test_ls(layers: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    delta, image = layers
    (delta.parent / "ephemeral-1").write_bytes(b"x")
    (delta.parent / "junk.1.___temp").write_bytes(b"x")
    assert run_cli("layer", "ls", str(delta.parent)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("delta") and "0/10..0/30" in lines[0] and "24576" in lines[0]
    assert lines[1].startswith("image")
    assert run_cli("layer", "ls", str(delta.parent), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [delta.name, image.name]
    assert all(r["valid"] for r in rows)


def test_refuses_non_layers(
    tmp_path: Path, layers: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    zeros = tmp_path / "zeros"
    zeros.write_bytes(bytes(3 * 8192))
    for f in (text, zeros, tmp_path / "missing"):
        assert run_cli("layer", "dump", str(f)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(f) in err
    assert run_cli("layer", "ls", str(text)) == 1
    assert "not a directory" in capsys.readouterr().err
    # A damaged layer in a directory: listed as invalid, exit status 1.
    delta, _ = layers
    delta.write_bytes(delta.read_bytes()[:-1])
    assert run_cli("layer", "ls", str(delta.parent)) == 1
    captured = capsys.readouterr()
    assert "INVALID" in captured.out and delta.name in captured.err
