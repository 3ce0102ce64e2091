"""The disk B-tree: builder against a literal model of SPEC section 4, and reader round trips.

``ModelBuilder`` below restates the node-full and compression rules the slow, obvious
way (explicit size accounting, a list of suffixes per node). The production builder keeps
whole keys and cuts suffixes only when packing; both must produce identical pages.
"""

from __future__ import annotations

import bisect
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pageserver.layers.blob_io import PAGE_SZ
from pageserver.layers.disk_btree import (
    MAX_VALUE,
    BtreeError,
    DiskBtreeBuilder,
    DiskBtreeReader,
    Node,
)


class _ModelNode:
    def __init__(self, level: int) -> None:
        self.level = level
        self.prefix = b""
        self.suffixes: list[bytes] = []
        self.values: list[bytes] = []
        self.suffix_len = 0

    def size(self) -> int:
        return 5 + len(self.prefix) + len(self.suffixes) * (self.suffix_len + 5)

    def push(self, key: bytes, value: bytes) -> bool:
        if self.suffixes:
            if not key.startswith(self.prefix):
                return False
        else:
            self.suffix_len = len(key)
        if self.size() + self.suffix_len + 5 >= PAGE_SZ:
            return False
        self.suffixes.append(key[len(self.prefix) :])
        self.values.append(value)
        return True

    def compress(self) -> bool:
        first, last = self.suffixes[0], self.suffixes[-1]
        p = 0
        while p < self.suffix_len and first[p] == last[p]:
            p += 1
        if p == 0:
            return False
        self.prefix += first[:p]
        self.suffixes = [s[p:] for s in self.suffixes]
        self.suffix_len -= p
        return True

    def pack(self) -> bytes:
        body = (
            struct.pack(">HBBB", len(self.suffixes), self.level, len(self.prefix), self.suffix_len)
            + self.prefix
            + b"".join(self.suffixes)
            + b"".join(self.values)
        )
        assert len(body) == self.size() and len(body) <= PAGE_SZ
        return body + bytes(PAGE_SZ - len(body))


class ModelBuilder:
    def __init__(self) -> None:
        self.stack = [_ModelNode(0)]
        self.pages: list[bytes] = []

    def append(self, key: bytes, value: int) -> None:
        self._append(key, value.to_bytes(5, "big"))

    def _append(self, key: bytes, value: bytes) -> None:
        last = self.stack[-1]
        if last.push(key, value):
            return
        if last.compress() and last.push(key, value):
            return
        level = last.level
        self._flush()
        node = _ModelNode(level)
        assert node.push(key, value)
        self.stack.append(node)

    def _flush(self) -> None:
        last = self.stack.pop()
        blk = len(self.pages)
        self.pages.append(last.pack())
        if not self.stack:
            self.stack.append(_ModelNode(last.level + 1))
        self._append(last.prefix + last.suffixes[0], b"\x80" + blk.to_bytes(4, "big"))

    def finish(self) -> int:
        while len(self.stack) > 1:
            self._flush()
        self.pages.append(self.stack[0].pack())
        return len(self.pages) - 1


def build(keys: list[bytes], values: list[int], key_len: int) -> DiskBtreeBuilder:
    b = DiskBtreeBuilder(key_len)
    for k, v in zip(keys, values, strict=True):
        b.append(k, v)
    return b


def assert_same_as_model(keys: list[bytes], values: list[int], key_len: int) -> DiskBtreeBuilder:
    b = build(keys, values, key_len)
    root = b.finish()
    m = ModelBuilder()
    for k, v in zip(keys, values, strict=True):
        m.append(k, v)
    mroot = m.finish()
    assert root == mroot
    assert len(b.pages) == len(m.pages)
    for i, (p, q) in enumerate(zip(b.pages, m.pages, strict=True)):
        assert p == q, f"page {i} differs"
    return b


def reader_for(b: DiskBtreeBuilder, root: int, key_len: int, start_blk: int = 3) -> DiskBtreeReader:
    pages = b.pages

    async def read_page(blk: int) -> bytes:
        return pages[blk - start_blk]

    return DiskBtreeReader(read_page, start_blk, root, key_len)


# -- key generators ------------------------------------------------------------------------


def keys_with_prefix(n: int, key_len: int, common: int, rng: random.Random) -> list[bytes]:
    """``n`` sorted distinct keys sharing ``common`` leading bytes."""
    prefix = bytes(rng.randrange(256) for _ in range(common))
    rest = key_len - common
    seen: set[bytes] = set()
    n = min(n, 256**rest)
    while len(seen) < n:
        seen.add(prefix + rng.getrandbits(8 * rest).to_bytes(rest, "big"))
    return sorted(seen)


def sequential_keys(n: int, key_len: int, start: int = 0, step: int = 1) -> list[bytes]:
    return [(start + i * step).to_bytes(key_len, "big") for i in range(n)]


def delta_like_keys(n: int, versions: int, rng: random.Random) -> list[bytes]:
    """26-byte delta keys: a relation block key then a few LSNs per key."""
    out = []
    lsn = 0x10000
    for i in range(n // versions + 1):
        key = struct.pack(">BIIIBI", 0, 1663, 16384, 24576 + i // 1000, 0, i % 1000)
        for _ in range(versions):
            lsn += rng.randrange(1, 100)
            out.append(key + lsn.to_bytes(8, "big"))
    return out[:n]


# -- model comparison ----------------------------------------------------------------------


@pytest.mark.parametrize("key_len", [18, 26])
@pytest.mark.parametrize("n", [1, 2, 263, 264, 265, 1000, 20_000])
def test_sequential_keys_match_model(key_len: int, n: int) -> None:
    keys = sequential_keys(n, key_len, start=1 << 40, step=3)
    assert_same_as_model(keys, [8192 + 100 * i for i in range(n)], key_len)


@pytest.mark.parametrize("key_len", [18, 26])
@pytest.mark.parametrize("common", [0, 4, 12, 17])
def test_random_keys_with_common_prefix_match_model(key_len: int, common: int) -> None:
    rng = random.Random(common * 100 + key_len)
    keys = keys_with_prefix(5000, key_len, common, rng)
    assert_same_as_model(keys, [rng.randrange(MAX_VALUE + 1) for _ in keys], key_len)


def test_delta_like_keys_match_model() -> None:
    rng = random.Random(7)
    keys = delta_like_keys(30_000, 3, rng)
    assert_same_as_model(keys, [(8192 + 40 * i) << 1 | (i % 3 == 0) for i in range(len(keys))], 26)


@settings(max_examples=30)
@given(
    data=st.lists(st.binary(min_size=18, max_size=18), min_size=1, max_size=3000, unique=True),
    shift=st.integers(0, 17),
)
def test_hypothesis_keys_match_model(data: list[bytes], shift: int) -> None:
    # Zeroing leading bytes creates long common prefixes and prefix changes mid-node.
    keys = sorted({bytes(shift) + k[shift:] for k in data})
    assert_same_as_model(keys, list(range(len(keys))), 18)


# -- reader --------------------------------------------------------------------------------


async def _check_reader(keys: list[bytes], values: list[int], key_len: int, probes: int) -> None:
    b = build(keys, values, key_len)
    root = b.finish()
    r = reader_for(b, root, key_len)
    rng = random.Random(len(keys))
    # Full forward scan.
    got = [kv async for kv in r.iter(bytes(key_len))]
    assert got == list(zip(keys, values, strict=True))
    # Full backward scan.
    got = [kv async for kv in r.iter(b"\xff" * key_len, forward=False)]
    assert got == list(zip(reversed(keys), reversed(values), strict=True))
    # The same in small batches, both ways.
    for forward, start in ((True, bytes(key_len)), (False, b"\xff" * key_len)):
        it, got = r.iter(start, forward), []
        while batch := await it.next_batch(3):
            assert 1 <= len(batch) <= 3
            got += batch
        assert got == list(zip(keys, values, strict=True))[:: 1 if forward else -1]
    for _ in range(probes):
        i = rng.randrange(len(keys))
        assert await r.get(keys[i]) == values[i]
        # A probe key between existing ones (or past the ends).
        probe = rng.getrandbits(8 * key_len).to_bytes(key_len, "big")
        j = bisect.bisect_left(keys, probe)
        exact = j < len(keys) and keys[j] == probe
        assert await r.get(probe) == (values[j] if exact else None)
        fwd = await r.iter(probe).next_batch()
        if j < len(keys):
            assert fwd[0] == (keys[j], values[j])
        else:
            assert fwd == []
        back = await r.iter(probe, forward=False).next_batch()
        jb = j if exact else j - 1
        if jb >= 0:
            assert back[0] == (keys[jb], values[jb])
        else:
            assert back == []
        # A short forward range from an existing key.
        it = r.iter(keys[i])
        window = []
        async for kv in it:
            window.append(kv)
            if len(window) == 5:
                break
        assert window == list(zip(keys[i : i + 5], values[i : i + 5], strict=True))


@pytest.mark.parametrize("key_len", [18, 26])
@pytest.mark.parametrize("n", [1, 2, 300, 5000])
async def test_reader_round_trip(key_len: int, n: int) -> None:
    rng = random.Random(n)
    keys = keys_with_prefix(n, key_len, 10, rng)
    await _check_reader(keys, [rng.randrange(MAX_VALUE + 1) for _ in keys], key_len, 50)


@pytest.mark.parametrize("key_len", [18, 26])
async def test_reader_100k_multi_level(key_len: int) -> None:
    rng = random.Random(100_000 + key_len)
    # 26-byte keys without a common prefix barely compress: three levels.
    keys = keys_with_prefix(100_000, key_len, 0 if key_len == 26 else 6, rng)
    values = [8192 + i for i in range(len(keys))]
    b = assert_same_as_model(keys, values, key_len)
    root_page = Node(b.pages[-1], key_len)
    assert root_page.level >= (2 if key_len == 26 else 1)
    r = reader_for(b, len(b.pages) - 1, key_len)
    for _ in range(300):
        i = rng.randrange(len(keys))
        assert await r.get(keys[i]) == values[i]
    got = [kv async for kv in r.iter(bytes(key_len))]
    assert got == list(zip(keys, values, strict=True))
    back = await r.iter(keys[50_000], forward=False).next_batch()
    assert back[0] == (keys[50_000], values[50_000])


@settings(max_examples=25)
@given(
    keys=st.lists(st.binary(min_size=26, max_size=26), min_size=1, max_size=800, unique=True),
    shift=st.integers(0, 25),
)
async def test_hypothesis_reader_round_trip(keys: list[bytes], shift: int) -> None:
    ks = sorted({bytes(shift) + k[shift:] for k in keys})
    await _check_reader(ks, [i * 3 for i in range(len(ks))], 26, 10)


# -- errors --------------------------------------------------------------------------------


def test_unsorted_and_duplicate_keys_rejected() -> None:
    b = DiskBtreeBuilder(18)
    b.append(bytes(17) + b"\x05", 1)
    with pytest.raises(BtreeError):
        b.append(bytes(17) + b"\x05", 2)
    with pytest.raises(BtreeError):
        b.append(bytes(17) + b"\x04", 2)


def test_value_and_key_length_limits() -> None:
    b = DiskBtreeBuilder(18)
    with pytest.raises(BtreeError):
        b.append(bytes(18), MAX_VALUE + 1)
    with pytest.raises(BtreeError):
        b.append(bytes(17), 1)
    b.append(b"\x01" * 18, MAX_VALUE)
    root = b.finish()
    assert Node(b.pages[root], 18).value(0) == MAX_VALUE


def test_empty_tree_rejected() -> None:
    with pytest.raises(BtreeError):
        DiskBtreeBuilder(18).finish()


@pytest.mark.parametrize("key_len", [18, 26])
def test_extend_equals_append(key_len: int) -> None:
    rng = random.Random(key_len)
    keys = keys_with_prefix(20_000, key_len, 3, rng)
    values = [rng.randrange(MAX_VALUE + 1) for _ in keys]
    a = build(keys, values, key_len)
    b = DiskBtreeBuilder(key_len)
    pos = 0
    while pos < len(keys):  # uneven chunks, like the delta writer's staging flushes
        step = rng.randrange(1, 3000)
        b.extend(keys[pos : pos + step], values[pos : pos + step])
        pos += step
    assert a.finish() == b.finish()
    assert a.pages == b.pages
    with pytest.raises(BtreeError):
        b.extend([keys[-1]], [1])
