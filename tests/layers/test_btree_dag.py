"""A B-tree whose nodes form a DAG (one subtree referenced from many entries) passes the
level checks; walking it used to take ``fanout ** depth`` steps, returning the same entries
again and again. Every walk now checks key ranges, so it ends with a clear error after a
few nodes, naming the file (issue 11, review item 3); a downloaded layer gets startup's
validation before it is written."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import trio

from pageserver.errors import CorruptLayer
from pageserver.io import IoContext
from pageserver.layers.blob_io import PAGE_SZ
from pageserver.layers.common import LayerFileError, open_layer_file, run_cleanup
from pageserver.layers.delta_layer import DeltaLayer
from pageserver.layers.disk_btree import BtreeError, DiskBtreeReader, Node
from pageserver.layers.key import Key
from pageserver.layers.value import Image, encode_value
from pageserver.remote.download import write_downloaded_layer
from tests.layers.test_files import write_delta

#: Far more entries than any walk of the DAGs below may return before it fails.
CAP = 10_000


def node_page(level: int, keys: list[bytes], values: list[bytes]) -> bytes:
    """A node page without prefix compression (valid for the reader)."""
    kl = len(keys[0])
    page = struct.pack(">HBBB", len(keys), level, 0, kl) + b"".join(keys) + b"".join(values)
    return page + bytes(PAGE_SZ - len(page))


def child(blk: int) -> bytes:
    return b"\x80" + blk.to_bytes(4, "big")


#: Levels of the DAGs (the root's level must stay <= MAX_LEVEL, 32): 2 ** 30 paths.
DEPTH = 30


def dag_pages(
    keys: list[bytes], leaf_values: list[int], depth: int = DEPTH, base: int = 0
) -> list[bytes]:
    """Block ``base``: one leaf holding ``keys``; block ``base + j`` (1..depth): a
    level-``j`` node whose entries (the same keys) all point at the block below. Levels
    check out; the walk from the root meets the leaf ``len(keys) ** depth`` times."""
    pages = [node_page(0, keys, [v.to_bytes(5, "big") for v in leaf_values])]
    for level in range(1, depth + 1):
        pages.append(node_page(level, keys, [child(base + level - 1)] * len(keys)))
    return pages


def reader(pages: list[bytes], key_len: int) -> DiskBtreeReader:
    async def read_page(blk: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return pages[blk]

    return DiskBtreeReader(read_page, 0, len(pages) - 1, key_len)


async def _drain(r: DiskBtreeReader, start: bytes, forward: bool) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    it = r.iter(start, forward)
    while batch := await it.next_batch():
        out += batch
        assert len(out) < CAP, f"the walk returned {len(out)} entries of a 2-entry tree"
    return out


@pytest.mark.parametrize(
    ("start", "forward"),
    [(bytes(18), True), (b"\x01" + bytes(16) + b"\x80", True), (b"\xff" * 18, False)],
)
async def test_dag_iteration_is_an_error_not_exponential(start: bytes, forward: bool) -> None:
    keys = [b"\x01" + bytes(17), b"\x02" + bytes(17)]
    r = reader(dag_pages(keys, [7, 8]), 18)
    with trio.fail_after(5):
        with pytest.raises(BtreeError) as ei:
            await _drain(r, start, forward)
    assert "corrupt B-tree" in str(ei.value)
    # A point lookup whose path leaves the range its parent gives the node fails too.
    with trio.fail_after(5), pytest.raises(BtreeError):
        await r.get(keys[1])


async def test_dag_whose_leaves_the_scan_skips_is_an_error() -> None:
    """Leaves entirely below the start key return nothing, so the old walk found no
    repeated key: it just visited 2 ** depth nodes. The range check fails on the second."""
    keys = [b"\x01" + bytes(17), b"\x03" + bytes(17)]
    pages = dag_pages(keys, [7, 8])
    # The leaf holds keys below both separators' children's starts: 0x01.., 0x02...
    pages[0] = node_page(0, [keys[0], b"\x02" + bytes(17)], [bytes(5), bytes(5)])
    r = reader(pages, 18)
    with trio.fail_after(5), pytest.raises(BtreeError):
        await _drain(r, b"\x02" + bytes(16) + b"\x01", True)


async def test_internal_keys_out_of_order_are_an_error() -> None:
    keys = [b"\x02" + bytes(17), b"\x01" + bytes(17)]
    leaf = node_page(0, [b"\x02" + bytes(17)], [bytes(5)])
    root = node_page(1, keys, [child(0), child(0)])
    with pytest.raises(BtreeError, match="out of order"):
        await _drain(reader([leaf, root], 18), bytes(18), True)


async def _make_dag_layer(io_ctx: IoContext, d: str) -> tuple[str, list[tuple[Key, int, bytes]]]:
    """A real delta layer whose index pages are replaced by a chain DAG of the same size
    (the root stays at the same block, so the summary still points at it)."""
    entries = [(Key.from_int(i * 7), 10, encode_value(Image(b"v%d" % i))) for i in range(30_000)]
    path = await write_delta(io_ctx, d, entries, 10, 11)
    vf, r, summary = await open_layer_file(io_ctx, path)
    try:
        root = Node(await r.read_page(summary.index_start_blk + summary.index_root_blk), 26)
        leaf0 = Node(await r.read_page(summary.index_start_blk), 26)
    finally:
        await run_cleanup(vf.close)
    assert root.level >= 1 and summary.index_root_blk >= DEPTH, "the test needs a bigger index"
    base = summary.index_root_blk - DEPTH
    keys = [leaf0.key(0), leaf0.key(1)]
    pages = dag_pages(keys, [leaf0.value(0), leaf0.value(1)], DEPTH, base)
    with open(path, "r+b") as f:
        f.seek((summary.index_start_blk + base) * PAGE_SZ)
        f.write(b"".join(pages))
    return path, entries


async def test_dag_layer_read_names_the_file(io_ctx: IoContext, tmp_path: Path) -> None:
    path, entries = await _make_dag_layer(io_ctx, str(tmp_path))
    with trio.fail_after(10):
        async with await DeltaLayer.open(io_ctx, path) as layer:
            n = 0
            with pytest.raises(LayerFileError) as ei:
                async for _ in layer.iter_index():
                    n += 1
                    assert n < CAP, "the DAG's entries came back again and again"
            assert str(ei.value).startswith(path) and "corrupt B-tree" in str(ei.value)
            assert isinstance(ei.value, CorruptLayer)
            with pytest.raises(LayerFileError) as ei:
                await layer.get_values_reconstruct_data(entries[1][0], (0, 11))
            assert str(ei.value).startswith(path)


async def test_downloaded_dag_layer_is_refused_and_not_written(
    io_ctx: IoContext, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path, _ = await _make_dag_layer(io_ctx, str(src))
    data = Path(path).read_bytes()
    dst = tmp_path / "dst"
    dst.mkdir()
    final = str(dst / os.path.basename(path))
    with trio.fail_after(10), pytest.raises(LayerFileError) as ei:
        await io_ctx.run_job(write_downloaded_layer, io_ctx, final, data, len(data))
    assert str(ei.value).startswith(final) and "reached twice" in str(ei.value)
    assert os.listdir(dst) == []
    # An intact layer still downloads.
    intact = await write_delta(
        io_ctx, str(src), [(Key.from_int(1), 20, encode_value(Image(b"x")))], 20, 21
    )
    good = str(dst / os.path.basename(intact))
    blob = Path(intact).read_bytes()
    await io_ctx.run_job(write_downloaded_layer, io_ctx, good, blob, len(blob))
    assert Path(good).read_bytes() == blob
