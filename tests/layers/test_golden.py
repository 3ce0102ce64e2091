"""Golden files: the exact bytes of a small delta and a small image layer.

Every expected byte below is written out by hand from SPEC section 4 (summary fields,
blob headers, Value encodings, one B-tree leaf page) — never captured from the writer.
Offsets are worked out in the comments.
"""

from __future__ import annotations

from pathlib import Path

from pageserver.io import IoContext
from pageserver.layers.delta_layer import DeltaLayer, DeltaLayerWriter
from pageserver.layers.image_layer import ImageLayer, ImageLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.layers.value import Image, PostgresRecord, TestRecord

PAGE = 8192
TENANT = TenantId(bytes.fromhex("11" * 16))
TIMELINE = TimelineId(bytes.fromhex("22" * 16))
K1 = Key.from_hex("000000000000000000000000000000000001")
K2 = Key.from_hex("000000000000000000000000000000000002")
K3 = Key.from_hex("000000000000000000000000000000000003")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def pad(b: bytes, size: int = PAGE) -> bytes:
    assert len(b) <= size
    return b + bytes(size - len(b))


# ---- delta layer: K1..K3, LSN 0x10..0x30 ----------------------------------------------------
#
# blob 1 @ 8192: K1 @ 0x10, Image(b"abc"): tag 0, len 3, "abc" = 15 bytes -> header 0x0f
# blob 2 @ 8208: K1 @ 0x20, Test("d"): tags 1, 8, len 1, "d", clear 0, will_init 0, no only_if
#                = 4+4+8+1+1+1+1 = 20 bytes -> header 0x14
# blob 3 @ 8229: K2 @ 0x10, Postgres(will_init=0, 130 x 0xAA): 4+4+1+8+130 = 147 bytes
#                -> 4-byte header 0x80000093
# values end at 8229 + 4 + 147 = 8380 -> padded to 16384, index_start_blk = 2, root = 0
# B-tree values: 8192<<1|1 = 0x4001, 8208<<1 = 0x4020, 8229<<1 = 0x404A

DELTA_SUMMARY = h(
    """
    5A61 0003
    11111111111111111111111111111111
    22222222222222222222222222222222
    000000000000000000000000000000000001
    000000000000000000000000000000000003
    0000000000000010 0000000000000030
    00000002 00000000
    """
)
DELTA_VALUES = (
    h("0f 00000000 0000000000000003") + b"abc"
    + h("14 00000001 00000008 0000000000000001") + b"d" + h("00 00 00")
    + h("80000093 00000001 00000000 00 0000000000000082") + b"\xaa" * 130
)  # fmt: skip
DELTA_LEAF = h(
    """
    0003 00 00 1a
    000000000000000000000000000000000001 0000000000000010
    000000000000000000000000000000000001 0000000000000020
    000000000000000000000000000000000002 0000000000000010
    0000004001 0000004020 000000404a
    """
)


async def test_golden_delta_layer(io_ctx: IoContext, tmp_path: Path) -> None:
    assert len(DELTA_SUMMARY) == 96 and len(DELTA_VALUES) == 8380 - 8192
    expected = pad(DELTA_SUMMARY) + pad(DELTA_VALUES) + pad(DELTA_LEAF)

    async def job() -> str:
        w = DeltaLayerWriter(io_ctx, str(tmp_path), TENANT, TIMELINE, K1, 0x10)
        await w.put_value(K1, 0x10, Image(b"abc"))
        await w.put_value(K1, 0x20, TestRecord("d"))
        await w.put_value(K2, 0x10, PostgresRecord(False, b"\xaa" * 130))
        info = await w.finish(K3, 0x30)
        return info.path

    path = await io_ctx.run_job(job)
    name = (
        "000000000000000000000000000000000001-000000000000000000000000000000000003"
        "__0000000000000010-0000000000000030"
    )
    assert Path(path).name == name
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert Path(path).read_bytes() == expected

    async with await DeltaLayer.open(io_ctx, path) as layer:
        got = await layer.get_values_reconstruct_data(K1, (0, 0x31))
        assert [lsn for lsn, _ in got] == [0x20, 0x10]  # newest first, stops at the image
        assert await layer.get_values_reconstruct_data(K1, (0x11, 0x20)) == []


# ---- image layer: K1..K3 at LSN 0x40 -------------------------------------------------------
#
# blob 1 @ 8192: K1, b"xxxxx" -> header 0x05 (6 bytes)
# blob 2 @ 8198: K2, 200 x b"y" -> header 0x800000c8 (204 bytes)
# values end at 8402 -> padded to 16384, index_start_blk = 2, root = 0

IMAGE_SUMMARY = h(
    """
    5A60 0003
    11111111111111111111111111111111
    22222222222222222222222222222222
    000000000000000000000000000000000001
    000000000000000000000000000000000003
    0000000000000040
    00000002 00000000
    """
)
IMAGE_VALUES = h("05") + b"xxxxx" + h("800000c8") + b"y" * 200
IMAGE_LEAF = h(
    """
    0002 00 00 12
    000000000000000000000000000000000001
    000000000000000000000000000000000002
    0000002000 0000002006
    """
)


async def test_golden_image_layer(io_ctx: IoContext, tmp_path: Path) -> None:
    assert len(IMAGE_SUMMARY) == 88
    expected = pad(IMAGE_SUMMARY) + pad(IMAGE_VALUES) + pad(IMAGE_LEAF)

    async def job() -> str:
        w = ImageLayerWriter(io_ctx, str(tmp_path), TENANT, TIMELINE, K1, 0x40)
        await w.put_image(K1, b"xxxxx")
        await w.put_image(K2, b"y" * 200)
        return (await w.finish(K3)).path

    path = await io_ctx.run_job(job)
    assert Path(path).name == (
        "000000000000000000000000000000000001-000000000000000000000000000000000003"
        "__0000000000000040"
    )
    assert Path(path).read_bytes() == expected
    async with await ImageLayer.open(io_ctx, path) as layer:
        assert await layer.get(K2) == b"y" * 200
        assert await layer.get(K3) is None


# ---- a compressed leaf page, by hand ------------------------------------------------------
#
# Keys 0x100 + i (i < 400) as 18-byte big-endian numbers. Uncompressed, an 18-byte leaf
# holds (8192 - 1 - 5) // (18 + 5) = 355 entries, so the push of entry 356 fails and the
# node is compressed: its first key ..0100 and last key ..0262 share 16 leading (zero)
# bytes, so prefix_len 16, suffix_len 2, and the remaining keys (all below 0x10000) still
# carry that prefix: all 400 fit in one leaf, which is the root.


def test_hand_derived_compressed_leaf() -> None:
    from pageserver.layers.disk_btree import DiskBtreeBuilder

    b = DiskBtreeBuilder(18)
    n = 400
    for i in range(n):
        b.append((0x100 + i).to_bytes(18, "big"), 8192 + i)
    root = b.finish()
    assert root == 0 and len(b.pages) == 1  # 400 entries with 2-byte suffixes fit
    expected = (
        h("0190 00 10 02")  # 400 children, leaf, prefix 16, suffix 2
        + bytes(16)
        + b"".join((0x100 + i).to_bytes(2, "big") for i in range(n))
        + b"".join((8192 + i).to_bytes(5, "big") for i in range(n))
    )
    assert b.pages[0] == pad(expected)
