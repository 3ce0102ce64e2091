"""Damaged layer files give a clear error naming the file: never a hang, a memory blow-up
or a Python repr (issue 11.2, 11.3, 11.4)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import zstandard

from pageserver.errors import CorruptLayer
from pageserver.io import IoContext
from pageserver.layers.blob_io import PAGE_SZ
from pageserver.layers.common import LayerFileError, open_layer_file, run_cleanup
from pageserver.layers.delta_layer import DeltaLayer
from pageserver.layers.disk_btree import Node
from pageserver.layers.image_layer import ImageLayer
from pageserver.layers.key import Key
from pageserver.layers.validate import validate_layer_file
from pageserver.layers.value import Image, encode_value
from tests.layers.test_files import write_delta, write_image

ENTRIES = 3000  # > one leaf of delta keys: a two-level index


def _delta_entries() -> list[tuple[Key, int, bytes]]:
    return [(Key.from_int(i * 7), 10, encode_value(Image(b"v%d" % i))) for i in range(ENTRIES)]


async def _root(ctx: IoContext, path: str) -> tuple[int, Node, int]:
    """(absolute root block, root node, index key size) of a layer file."""
    vf, reader, summary = await open_layer_file(ctx, path)
    try:
        blk = summary.index_start_blk + summary.index_root_blk
        key_len = 26 if summary.kind == "delta" else 18
        return blk, Node(await reader.read_page(blk), key_len), summary.index_root_blk
    finally:
        await run_cleanup(vf.close)


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pageserver.cli", "layer", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_btree_cycle_is_an_error_not_a_hang(io_ctx: IoContext, tmp_path: Path) -> None:
    entries = _delta_entries()
    path = await write_delta(io_ctx, str(tmp_path), entries, 10, 11)
    blk, root, rel_root = await _root(io_ctx, path)
    assert root.level >= 1, "the test needs an internal root"
    # The root's first child pointer now points back at the root itself: a cycle.
    _patch(path, blk * PAGE_SZ + root.vals_off, b"\x80" + struct.pack(">I", rel_root))
    with trio.fail_after(10):
        async with await DeltaLayer.open(io_ctx, path) as layer:
            with pytest.raises(LayerFileError) as ei:
                await layer.get_values_reconstruct_data(entries[0][0], (0, 11))
            assert str(ei.value).startswith(path) and "level" in str(ei.value)
            assert isinstance(ei.value, CorruptLayer)
            with pytest.raises(LayerFileError):
                async for _ in layer.iter_index():
                    pass
        # Startup validation walks the internal nodes and names the file.
        with pytest.raises(LayerFileError) as ei:
            await validate_layer_file(io_ctx, path)
        assert str(ei.value).startswith(path)
    dump = await trio.to_thread.run_sync(_cli, "dump", "--values", path)
    assert dump.returncode == 1 and "Traceback" not in dump.stderr, dump.stderr
    assert dump.stderr.count("\n") == 1 and path in dump.stderr
    ls = await trio.to_thread.run_sync(_cli, "ls", "--json", str(tmp_path))
    assert ls.returncode == 1 and "Traceback" not in ls.stderr
    assert '"valid": false' in ls.stdout


async def test_zstd_bomb_is_refused_without_the_allocation(io_ctx: IoContext, tmp_path: Path) -> None:
    key = Key.from_int(5)
    path = await write_image(io_ctx, str(tmp_path), [(key, os.urandom(64 * 1024))], 20, "zstd")
    # A 64 KiB incompressible image is stored raw behind a 4-byte header: replace it by a
    # zstd frame of 1 GiB of zeros that does not declare its size (what Neon writes).
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    zero = bytes(1 << 20)
    bomb = b"".join(cobj.compress(zero) for _ in range(1024)) + cobj.flush()
    assert len(bomb) < 64 * 1024
    async with await ImageLayer.open(io_ctx, path) as layer:
        off = await layer.index.get(bytes(key))
    assert off is not None
    _patch(path, off, struct.pack(">I", 0x90 << 24 | len(bomb)) + bomb)
    with trio.fail_after(10):
        async with await ImageLayer.open(io_ctx, path) as layer:
            with pytest.raises(LayerFileError) as ei:
                await layer.get(key)
    assert str(ei.value).startswith(path) and "more than any value" in str(ei.value)
    # The CLI under a 1 GiB address-space limit: a clear one-line error, no MemoryError.
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "from pageserver.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "layer", "dump", "--values", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr
    assert path in r.stderr


async def test_corrupt_read_names_the_file_on_the_wire(tmp_path: Path) -> None:
    """A value blob damaged after startup (leaves are not read by validation): the reply is
    ``internal`` with a message naming the file, not a Python repr."""
    from pageserver.client import Client, ServerError
    from tests.server.test_badinput import TL, T, _start

    async with trio.open_nursery() as nursery:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            h = await _start(nursery, stack)
            async with await Client.connect(h.addr) as c:
                await c.request("tenant_create", tenant_id=T)
                await c.request("timeline_create", tenant_id=T, timeline_id=TL, start_lsn=100)
                k = Key.from_int(77)
                await c.put(T, TL, [(bytes(k), 101, encode_value(Image(b"x" * 5000)))])
                await c.flush(T, TL)
                tl_dir = Path(h.mgr.timeline(T, TL).dir)
                [layer_path] = [str(p) for p in tl_dir.iterdir() if "__" in p.name]
                ctx = h.mgr.ctx
                async with await DeltaLayer.open(ctx, layer_path) as layer:
                    [(_k, _lsn, off, _w)] = [e[:4] for e in await _all(layer)]
                # A 4-byte header claiming a zstd blob, followed by garbage.
                _patch(layer_path, off, struct.pack(">I", 0x90 << 24 | 16) + b"\x00" * 16)
                with pytest.raises(ServerError) as ei:
                    await c.request("get", tenant_id=T, timeline_id=TL, key=bytes(k), lsn=101)
                assert ei.value.code == "internal"
                assert os.path.basename(layer_path) in ei.value.message
                assert "Error(" not in ei.value.message, ei.value.message
            nursery.cancel_scope.cancel()


async def _all(layer: DeltaLayer) -> list[tuple[Key, int, int, bool, bytes]]:
    out: list[tuple[Key, int, int, bool, bytes]] = []
    async for e in layer.iter_index():
        out.append(e)
    return out


async def test_truncated_value_is_an_error_naming_the_file(io_ctx: IoContext, tmp_path: Path) -> None:
    """A blob whose length was damaged to a few bytes is still a readable blob, but not a
    value: the read names the file (it used to be an IndexError in the reconstruction)."""
    from pageserver.layers.value import TestRecord

    k = Key.from_int(9)
    path = await write_delta(
        io_ctx, str(tmp_path), [(k, 10, encode_value(TestRecord("abc" * 100, True, True)))], 10, 11
    )
    async with await DeltaLayer.open(io_ctx, path) as layer:
        [(_k, _lsn, off, _w)] = [e[:4] for e in await _all(layer)]
    _patch(path, off, bytes([5]))  # a one-byte header: a 5-byte blob
    async with await DeltaLayer.open(io_ctx, path) as layer:
        with pytest.raises(LayerFileError) as ei:
            await layer.get_values_reconstruct_data(k, (0, 11))
    assert str(ei.value).startswith(path) and "corrupt value" in str(ei.value)


async def test_blob_offset_in_the_summary_page_is_an_error(io_ctx: IoContext, tmp_path: Path) -> None:
    """SPEC section 4: leaf values are offsets >= 8192; one pointing into the summary page
    is a damaged file (named), not a value read from the summary's bytes."""
    key = Key.from_int(5)
    path = await write_image(io_ctx, str(tmp_path), [(key, b"img")], 20, "disabled")
    blk, root, _ = await _root(io_ctx, path)
    assert root.level == 0
    _patch(path, blk * PAGE_SZ + root.vals_off, (100).to_bytes(5, "big"))
    async with await ImageLayer.open(io_ctx, path) as layer:
        with pytest.raises(LayerFileError) as ei:
            await layer.get(key)
    assert str(ei.value).startswith(path) and "summary page" in str(ei.value)
    dump = await trio.to_thread.run_sync(_cli, "dump", "--values", path)
    assert dump.returncode == 1 and "Traceback" not in dump.stderr, dump.stderr
    assert path in dump.stderr and "summary page" in dump.stderr
