"""The flush's array paths write exactly what the per-entry paths write:
``DiskBtreeBuilder.extend_sorted`` vs ``append`` (page for page) and ``pack_blobs`` vs
``BlobWriter.stage_blob`` (byte for byte); ``first_not_above``, the order check of
``put_sorted``, is tuple order."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pageserver.layers.blob_io import BlobError, pack_blobs
from pageserver.layers.delta_layer import first_not_above
from pageserver.layers.disk_btree import BtreeError, DiskBtreeBuilder


def _stage_ref(values: list[bytes]) -> tuple[bytes, list[int]]:
    out = bytearray()
    starts = []
    for v in values:
        starts.append(len(out))
        n = len(v)
        out += bytes([n]) if n < 128 else (n | 0x80 << 24).to_bytes(4, "big")
        out += v
    return bytes(out), starts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=300)), max_size=60), st.randoms())
def test_pack_blobs_matches_the_per_blob_encoding(values: list[bytes], rnd: object) -> None:
    # Values scattered in a buffer, in another order than they are packed.
    order = list(range(len(values)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    buf = bytearray(b"#" * 7)
    offs = [0] * len(values)
    for i in order:
        offs[i] = len(buf)
        buf += values[i] + b"!"
    packed, starts = pack_blobs(bytes(buf), np.array(offs, np.int64), np.array([len(v) for v in values], np.int64))
    ref, ref_starts = _stage_ref(values)
    assert packed.tobytes() == ref
    assert starts.tolist() == ref_starts


def test_pack_blobs_many_equal_lengths_and_a_few_others() -> None:
    rng = np.random.default_rng(3)
    values = [bytes(rng.integers(0, 256, 112, dtype=np.uint8)) for _ in range(500)]
    values += [b"x" * 200, b"", b"y" * 127, b"z" * 128] * 3
    offs, buf = [], bytearray()
    for v in values:
        offs.append(len(buf))
        buf += v
    packed, starts = pack_blobs(buf, np.array(offs, np.int64), np.array([len(v) for v in values], np.int64))
    assert (packed.tobytes(), starts.tolist()) == _stage_ref(values)
    with pytest.raises(BlobError):
        pack_blobs(b"", np.zeros(1, np.int64), np.array([1 << 28], np.int64))


def _pages_by_append(keys: list[bytes], values: list[int], kl: int) -> tuple[list[bytes], int]:
    b = DiskBtreeBuilder(kl)
    for k, v in zip(keys, values, strict=True):
        b.append(k, v)
    root = b.finish()
    return b.pages, root


keys_26 = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, 2**32 - 1), st.integers(0, 2**16)),
    min_size=1,
    max_size=3000,
    unique=True,
).map(
    lambda xs: sorted(
        bytes(8) + a.to_bytes(2, "big") + bytes(6) + b.to_bytes(2, "big") + c.to_bytes(4, "big") + d.to_bytes(4, "big")
        for a, b, c, d in xs
    )
)


@settings(max_examples=60, deadline=None)
@given(keys_26, st.integers(1, 5), st.data())
def test_extend_sorted_builds_the_same_pages(keys: list[bytes], chunks: int, data: st.DataObject) -> None:
    values = [(i * 2654435761) % (1 << 39) for i in range(len(keys))]
    ref_pages, ref_root = _pages_by_append(keys, values, 26)
    b = DiskBtreeBuilder(26)
    # In a few chunks, some entries appended one by one in between: the bulk path picks
    # up any leaf state.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(keys)), max_size=chunks)))
    pos = 0
    for cut in [*cuts, len(keys)]:
        if cut > pos:
            arr = np.frombuffer(b"".join(keys[pos:cut]), np.uint8).reshape(-1, 26)
            b.extend_sorted(arr, np.array(values[pos:cut], np.uint64))
            pos = cut
        if pos < len(keys) and data.draw(st.booleans()):
            b.append(keys[pos], values[pos])
            pos += 1
    root = b.finish()
    assert b.pages == ref_pages and root == ref_root
    assert b.num_entries == len(keys)


def test_extend_sorted_dense_keys_fill_many_levels() -> None:
    keys = [bytes(10) + i.to_bytes(8, "big") + bytes(8) for i in range(60_000)]
    values = list(range(60_000))
    ref = _pages_by_append(keys, values, 26)
    b = DiskBtreeBuilder(26)
    b.extend_sorted(np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 26), np.array(values, np.uint64))
    root = b.finish()
    assert (b.pages, root) == ref
    assert len(b.pages) > 100


def test_extend_sorted_refuses_what_append_refuses() -> None:
    b = DiskBtreeBuilder(4)
    b.append(b"\x00\x00\x00\x05", 1)
    with pytest.raises(BtreeError, match="unsorted"):
        b.extend_sorted(np.frombuffer(b"\x00\x00\x00\x04", np.uint8).reshape(1, 4), np.array([2], np.uint64))
    b = DiskBtreeBuilder(4)
    with pytest.raises(BtreeError, match="unsorted"):
        b.extend_sorted(np.frombuffer(b"\x00\x00\x00\x02\x00\x00\x00\x01", np.uint8).reshape(2, 4), np.array([1, 2], np.uint64))
    b = DiskBtreeBuilder(4)
    with pytest.raises(BtreeError, match="does not fit"):
        b.extend_sorted(np.frombuffer(b"\x00\x00\x00\x02", np.uint8).reshape(1, 4), np.array([1 << 40], np.uint64))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([0, 1, 5, 127, 128, 129, 300, 4095, 4096, 8192]),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
)
def test_pack_blobs_of_one_length_matches_the_per_blob_encoding(length: int, count: int, seed: int) -> None:
    """All values of one length take their own path (rows of header + value; values of
    4 KiB or more one slice each), from values scattered in another order."""
    rng = np.random.default_rng(seed)
    values = [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for _ in range(count)]
    order = rng.permutation(count).tolist()
    buf = bytearray(b"#" * 3)
    offs = [0] * count
    for i in order:
        offs[i] = len(buf)
        buf += values[i] + b"!"
    event(f"length {length}")
    packed, starts = pack_blobs(buf, np.array(offs, np.int64), np.full(count, length, np.int64))
    assert (packed.tobytes(), starts.tolist()) == _stage_ref(values)


# Keys that differ anywhere: in the first byte (a leaf without a prefix), in the middle,
# only at the end; runs of neighbours, so that leaves get long prefixes too.
wide_keys = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 2**16), st.integers(0, 3)),
    min_size=1,
    max_size=4000,
    unique=True,
).map(
    lambda xs: sorted(
        bytes([a]) + bytes(9) + bytes([b]) + bytes(5) + c.to_bytes(4, "big") + bytes(5) + bytes([d])
        for a, b, c, d in xs
    )
)


@settings(max_examples=60, deadline=None)
@given(wide_keys, st.lists(st.integers(1, 5000), max_size=6), st.booleans())
def test_extend_sorted_in_chunks_builds_the_same_pages(keys: list[bytes], sizes: list[int], ordered: bool) -> None:
    """Chunks of any size (leaves written whole from a chunk, or carried across chunks),
    with and without the order check (``ordered=True``: put_sorted has checked it)."""
    values = [(i * 2654435761) % (1 << 39) for i in range(len(keys))]
    ref_pages, ref_root = _pages_by_append(keys, values, 26)
    b = DiskBtreeBuilder(26)
    pos = 0
    sizes = sizes or [len(keys)]
    while pos < len(keys):
        size = sizes[pos % len(sizes)]
        arr = np.frombuffer(b"".join(keys[pos : pos + size]), np.uint8).reshape(-1, 26)
        b.extend_sorted(arr, np.array(values[pos : pos + size], np.uint64), ordered=ordered)
        pos += size
    root = b.finish()
    assert b.pages == ref_pages and root == ref_root
    assert b.num_entries == len(keys)


def _first_not_above_ref(keys: list[bytes], lsns: list[int]) -> int | None:
    for i in range(1, len(keys)):
        if (keys[i], lsns[i]) <= (keys[i - 1], lsns[i - 1]):
            return i
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 17), st.integers(0, 3), st.integers(0, 3)), min_size=0, max_size=12
    ),
    st.booleans(),
)
def test_first_not_above_is_tuple_order(rows: list[tuple[int, int, int]], sort: bool) -> None:
    """Keys differing in any one of their 18 bytes (each of the three integers the check
    reads them as, and a trailing NUL), and LSN ties."""
    entries = [(bytes(b) + bytes([v]) + bytes(17 - b), lsn) if b < 17 else (bytes(17) + bytes([v]), lsn)
               for b, v, lsn in rows]  # fmt: skip
    if sort:
        entries.sort()
    keys = [k for k, _ in entries]
    lsns = [lsn for _, lsn in entries]
    got = first_not_above(np.array(keys, dtype="S18"), np.array(lsns, np.uint64))
    assert got == _first_not_above_ref(keys, lsns)


@pytest.mark.parametrize("ordered", [False, True])
def test_extend_sorted_random_keys_leaves_without_prefix(ordered: bool) -> None:
    """Random 26-byte keys: nearly every leaf's first and 264th keys differ in their first
    byte, so leaves are written without a prefix (the other way a leaf ends)."""
    rng = np.random.default_rng(11)
    keys = sorted({rng.bytes(26) for _ in range(20_000)})
    values = [int(v) for v in rng.integers(0, 1 << 39, len(keys))]
    ref = _pages_by_append(keys, values, 26)
    for sizes in ([len(keys)], [1, 263, 264, 265, 4000, 9000]):
        b = DiskBtreeBuilder(26)
        pos = 0
        i = 0
        while pos < len(keys):
            size = sizes[i % len(sizes)]
            i += 1
            arr = np.frombuffer(b"".join(keys[pos : pos + size]), np.uint8).reshape(-1, 26)
            b.extend_sorted(arr, np.array(values[pos : pos + size], np.uint64), ordered=ordered)
            pos += size
        root = b.finish()
        assert (b.pages, root) == ref
    assert sum(1 for p in ref[0] if p[2] == 0 and p[3] == 0) > 50  # level-0 pages, no prefix


@pytest.mark.parametrize(
    "lengths",
    [
        [112] * 50,
        [0, 5, 127, 128, 300] * 10,
        [8192] * 9,  # one length of 4 KiB or more: a slice per value
        [4096] * 20 + [8192, 100] * 3,  # a common length of 4 KiB or more: still slices
    ],
)
@pytest.mark.parametrize("source", ["bytes", "mmap"])
def test_pack_blobs_into_a_part_of_a_block(lengths: list[int], source: str, tmp_path: Path) -> None:
    """``out=``: packed into a slice of a larger array, bytes around it untouched; the
    values scattered in the source in another order (``mmap``: a read-only numpy array over
    a mapped file, the flush's source)."""
    rng = np.random.default_rng(len(set(lengths)))
    values = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in lengths]
    offs_list = [0] * len(values)
    buf = bytearray(b"#" * 5)
    for i in rng.permutation(len(values)).tolist():
        offs_list[i] = len(buf)
        buf += values[i] + b"!"
    offs = np.array(offs_list, np.int64)
    src: bytes | npt.NDArray[np.uint8] = bytes(buf)
    if source == "mmap":
        path = tmp_path / "src"
        path.write_bytes(bytes(buf))
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        src = np.frombuffer(mm, np.uint8)
    ref, _starts = _stage_ref(values)
    block = np.full(len(ref) + 10, 0xEE, np.uint8)
    packed, _ = pack_blobs(src, offs, np.array(lengths, np.int64), out=block[7 : 7 + len(ref)])
    assert block[7 : 7 + len(ref)].tobytes() == ref == packed.tobytes()
    assert block[:7].tolist() == [0xEE] * 7 and block[7 + len(ref) :].tolist() == [0xEE] * 3
    with pytest.raises(ValueError, match="contiguous array"):
        pack_blobs(src, offs, np.array(lengths, np.int64), out=block[: len(ref) - 1])


def test_pack_blobs_of_large_values_past_the_source_is_an_index_error() -> None:
    """A value that does not lie within the source is refused, not copied short: as the
    row gather of small values does, the per-value copy of large ones raises IndexError."""
    src = bytes(10_000)
    for n in (100, 8192):
        with pytest.raises(IndexError):
            pack_blobs(src, np.array([10_000 - n + 1], np.int64), np.array([n], np.int64))
