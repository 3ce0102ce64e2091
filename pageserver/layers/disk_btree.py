"""The on-disk B-tree that indexes delta and image layers (SPEC section 4).

Byte compatibility with Neon's ``disk_btree.rs`` depends on reproducing its page-filling
decisions exactly, not just the node format, so the builder follows the same rules:

- a node accepts an entry while ``5 + prefix_len + n * (suffix_len + 5) < 8192``
  (``n`` counting the new entry) and, once it has entries, only keys that start with its
  prefix;
- when a push fails the node is *compressed* (the common prefix of its first and last
  suffix moves into the prefix) and the push retried, even when the failure was a prefix
  mismatch: compression changes the written page, so it must happen exactly when Neon
  does it;
- when it still fails the node is written, its first full key plus block number becomes
  an entry of the level above (recursively), and a new node of the same level starts;
- ``finish`` writes every open node bottom-up; the root is the last page.

Hot path: an entry is appended to its leaf as two ``bytearray +=`` of the full key and
the 5-byte value; suffixes are cut out only when a page is packed, with one strided slice
assignment per suffix byte rather than one slice per entry.

The reader takes an async ``read_page(blk)`` callable, so it works on any page source
(the layer's :class:`~pageserver.layers.blob_io.PagedReader`, or a list in tests).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from pageserver.layers.blob_io import PAGE_SZ

VALUE_SZ: Final = 5
NODE_HDR_SIZE: Final = 5
MAX_VALUE: Final = 0x7F_FFFF_FFFF

_HDR = struct.Struct(">HBBB")
#: A B-tree entry's value, 5 bytes big-endian, as a byte and a u32 (packed: no padding).
_VALUE5: Final = np.dtype([("hi", "u1"), ("lo", ">u4")])
_ZEROS: Final = bytes(PAGE_SZ)


def _common_prefix(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """How many leading bytes two equally long keys share: their XOR as an integer has
    as many leading zero bytes."""
    return len(a) - ((int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_length() + 7) // 8


class BtreeError(ValueError):
    """Unsorted input, oversized values, or a corrupt node on read."""


def _capacities(key_len: int) -> list[int]:
    """Max entries of a node for each prefix length (the node-full rule)."""
    caps = []
    for p in range(key_len + 1):
        s = key_len - p
        caps.append((PAGE_SZ - 1 - NODE_HDR_SIZE - p) // (s + VALUE_SZ))
    return caps


def _entry_error(key: bytes, value: int, last: bytes, key_len: int) -> BtreeError:
    if key <= last:
        return BtreeError(f"unsorted input: key {key.hex()} <= last key {last.hex()}")
    if len(key) != key_len:
        return BtreeError(f"key length {len(key)} != {key_len}")
    return BtreeError(f"value {value:#x} does not fit in a B-tree entry")


class _BuildNode:
    """A node being filled. Keys are kept whole; the prefix is a property of the node."""

    __slots__ = ("level", "n", "plen", "prefix", "cap", "keys", "vals", "key_len", "caps")

    def __init__(self, level: int, key_len: int, caps: list[int]) -> None:
        self.level = level
        self.n = 0
        self.plen = 0
        self.prefix = b""
        self.key_len = key_len
        self.caps = caps
        self.cap = caps[0]
        self.keys = bytearray()
        self.vals = bytearray()

    def push(self, key: bytes, val5: bytes) -> bool:
        if self.n:
            if self.plen and not key.startswith(self.prefix):
                return False
            if self.n >= self.cap:
                return False
        self.keys += key
        self.vals += val5
        self.n += 1
        return True

    def compress(self) -> bool:
        kl = self.key_len
        keys = self.keys
        last = (self.n - 1) * kl
        p = self.plen
        c = _common_prefix(keys[p:kl], keys[last + p : last + kl])
        if c == 0:
            return False
        self.plen = p + c
        self.prefix = bytes(keys[: self.plen])
        self.cap = self.caps[self.plen]
        return True

    def first_key(self) -> bytes:
        return bytes(self.keys[: self.key_len])

    def pack(self) -> bytes:
        kl, p, n = self.key_len, self.plen, self.n
        s = kl - p
        if p == 0:
            suffixes: bytes | bytearray = self.keys
        else:
            # The keys as rows, less their first ``p`` bytes: one strided copy.
            suffixes = np.frombuffer(self.keys, np.uint8).reshape(n, kl)[:, p:].tobytes()
        return b"".join(
            (_HDR.pack(n, self.level, p, s), self.prefix, suffixes, self.vals,
             bytes(PAGE_SZ - NODE_HDR_SIZE - p - n * (s + VALUE_SZ)))
        )  # fmt: skip


class DiskBtreeBuilder:
    """Builds a tree bottom-up from strictly increasing keys.

    Pages accumulate in :attr:`pages` (block ``i`` of the index is ``pages[i]``), as in
    Neon, which buffers the index in memory and writes it after the values.
    """

    def __init__(self, key_len: int) -> None:
        if not 1 <= key_len <= 255:
            raise ValueError("key_len must be 1..255")
        self.key_len = key_len
        self._caps = _capacities(key_len)
        self._stack: list[_BuildNode] = [_BuildNode(0, key_len, self._caps)]
        self._last_key = b""
        self.pages: list[bytes] = []
        self.num_entries = 0

    def append(self, key: bytes, value: int) -> None:
        """Append ``key`` -> ``value`` (``0 <= value <= 0x7F_FFFF_FFFF``)."""
        if key <= self._last_key or len(key) != self.key_len or not 0 <= value <= MAX_VALUE:
            raise _entry_error(key, value, self._last_key, self.key_len)
        self._last_key = key
        self.num_entries += 1
        val5 = value.to_bytes(VALUE_SZ, "big")
        leaf = self._stack[-1]
        n = leaf.n
        # Fast path: room left and the key carries the leaf's prefix.
        if n == 0 or (n < leaf.cap and (not leaf.plen or key.startswith(leaf.prefix))):
            leaf.keys += key
            leaf.vals += val5
            leaf.n = n + 1
            return
        self._append_internal(key, val5)

    def extend(self, keys: Sequence[bytes], values: Sequence[int]) -> None:
        """Append many entries; same result as :meth:`append` in a loop, with less overhead.

        The leaf's state lives in locals for the tight loop and is written back before
        the slow path (a push that fails) and at the end.
        """
        if len(keys) != len(values):
            raise ValueError("keys and values differ in length")
        kl = self.key_len
        last = self._last_key
        leaf = self._stack[-1]
        n, cap, plen, prefix = leaf.n, leaf.cap, leaf.plen, leaf.prefix
        lkeys, lvals = leaf.keys, leaf.vals
        count = 0
        try:
            for key, value in zip(keys, values, strict=True):
                if key <= last or len(key) != kl or not 0 <= value <= MAX_VALUE:
                    raise _entry_error(key, value, last, kl)
                last = key
                count += 1
                if n == 0 or (n < cap and (not plen or key.startswith(prefix))):
                    lkeys += key
                    lvals += value.to_bytes(VALUE_SZ, "big")
                    n += 1
                    continue
                leaf.n = n
                self._append_internal(key, value.to_bytes(VALUE_SZ, "big"))
                leaf = self._stack[-1]
                n, cap, plen, prefix = leaf.n, leaf.cap, leaf.plen, leaf.prefix
                lkeys, lvals = leaf.keys, leaf.vals
        finally:
            leaf.n = n
            self._last_key = last
            self.num_entries += count

    def extend_sorted(
        self, keys: npt.NDArray[np.uint8], values: npt.NDArray[np.uint64], *, ordered: bool = False
    ) -> None:
        """Append many entries given as arrays: ``keys`` is ``(n, key_len)`` bytes, strictly
        increasing, ``values`` one ``uint64`` each. Same pages as :meth:`append` in a loop.

        ``ordered=True``: the caller has checked that the keys are strictly increasing
        (:meth:`~pageserver.layers.delta_layer.DeltaLayerWriter.put_sorted` does, once per
        batch); only the first key against the last one appended is checked here.

        The Python work is per leaf, not per entry: a leaf that starts and ends inside the
        batch is worked out from a few keys (:meth:`_leaf_end`) and written straight from
        the batch's bytes; the leaf left open at either end of the batch takes whole ranges
        of keys (:meth:`_fill_open_leaf`). Either way the key a leaf refuses takes
        :meth:`append`'s slow path in the same order (compress, retry, else write the node
        and start a new one), so the pages are the same, and so is the number of pages
        written at any point (the compaction's cut rule reads it).
        """
        n = len(values)
        kl = self.key_len
        if keys.shape != (n, kl):
            raise ValueError(f"keys must be an array of shape ({n}, {kl})")
        if not n:
            return
        keys = np.ascontiguousarray(keys)
        flat = keys.view(f"S{kl}").ravel()
        kb = keys.tobytes()
        if (
            kb[:kl] <= self._last_key
            or int(values.max()) > MAX_VALUE
            or (not ordered and n > 1 and not bool((flat[1:] > flat[:-1]).all()))
        ):
            # Not sorted, or a value too large: the per-entry path finds and names it.
            self.extend([kb[i * kl : (i + 1) * kl] for i in range(n)], values.tolist())
            return
        # The values as 5 big-endian bytes each (a byte and a u32 per entry: ~3x faster
        # than cutting 5 of 8 bytes out of each big-endian u64).
        v5 = np.empty(n, _VALUE5)
        v5["hi"] = values >> np.uint64(32)
        v5["lo"] = values  # the low 32 bits (a narrowing assignment)
        vb = v5.tobytes()
        i = self._fill_open_leaf(kb, vb, flat, 0) if self._stack[-1].n else 0
        while i < n:
            i = self._fill_open_leaf(kb, vb, flat, self._write_leaves(keys, kb, vb, flat, i))
        self._last_key = kb[(n - 1) * kl :]
        self.num_entries += n

    def _fill_open_leaf(self, kb: bytes, vb: bytes, flat: npt.NDArray[np.bytes_], i: int) -> int:
        """Append entries ``i``... of the batch to the open leaf, until it is written out
        or the batch ends; where the batch now stands."""
        kl = self.key_len
        n = len(flat)
        stack = self._stack
        while i < n:
            leaf = stack[-1]
            # The range [i, j) the leaf takes as it stands (without a prefix, a leaf takes
            # any key while it has room; an empty one always has).
            j = min(n, i + leaf.cap - leaf.n)
            if leaf.plen and j > i:
                upper = leaf.prefix + b"\xff" * (kl - leaf.plen)
                j = min(j, int(flat.searchsorted(upper, "right")))
            if j > i:
                leaf.keys += kb[i * kl : j * kl]
                leaf.vals += vb[i * VALUE_SZ : j * VALUE_SZ]
                leaf.n += j - i
                i = j
                continue
            # Key i is refused as the leaf stands: append's slow path.
            key = kb[i * kl : (i + 1) * kl]
            if leaf.compress() and leaf.n < leaf.cap and key.startswith(leaf.prefix):
                continue  # the compressed leaf takes it (and maybe more): the range above
            self._flush_node()
            stack.append(_BuildNode(0, kl, self._caps))
            return i
        return i

    def _write_leaves(
        self, keys: npt.NDArray[np.uint8], kb: bytes, vb: bytes, flat: npt.NDArray[np.bytes_], i: int
    ) -> int:
        """Write the leaves that start at entry ``i`` (an empty leaf is open) and end
        inside the batch; where the first leaf that does not starts."""
        kl = self.key_len
        stack = self._stack
        assert stack[-1].n == 0 and stack[-1].level == 0
        leaf = stack.pop()
        try:
            while True:
                end = self._leaf_end(kb, flat, i)
                if end is None:
                    return i
                e, p = end
                s = kl - p
                m = e - i
                suffixes = keys[i:e, p:].tobytes() if p else kb[i * kl : e * kl]
                blk = len(self.pages)
                self.pages.append(
                    b"".join(
                        (_HDR.pack(m, 0, p, s), kb[i * kl : i * kl + p], suffixes,
                         vb[i * VALUE_SZ : e * VALUE_SZ], _ZEROS[: PAGE_SZ - NODE_HDR_SIZE - p - m * (s + VALUE_SZ)])
                    )
                )  # fmt: skip
                # As _flush_node: the leaf's first key into the level above.
                if not stack:
                    stack.append(_BuildNode(1, kl, self._caps))
                self._append_internal(kb[i * kl : (i + 1) * kl], b"\x80" + blk.to_bytes(4, "big"))
                i = e
        finally:
            stack.append(leaf)

    def _leaf_end(self, kb: bytes, flat: npt.NDArray[np.bytes_], i: int) -> tuple[int, int] | None:
        """``(end, prefix length)`` of the leaf :meth:`append` would build from entry ``i``
        on (an empty leaf), if the batch holds the key that ends it; else None.

        What append does, worked out: the leaf takes ``caps[0]`` keys (no prefix yet);
        the next is refused, so the leaf is compressed: its prefix is what its first and
        last keys share (``c`` bytes). If ``c > 0`` the leaf goes on taking the keys with
        that prefix up to ``caps[c]``; the first key refused then makes it compress again,
        which finds nothing more (the first and the last key share exactly the prefix,
        keys being sorted) unless, against that reasoning, it does: then None, and
        :meth:`_fill_open_leaf` follows append step by step.
        """
        kl = self.key_len
        n = len(flat)
        caps = self._caps
        e = i + caps[0]
        if e >= n:
            return None
        first = kb[i * kl : (i + 1) * kl]
        c = _common_prefix(first, kb[(e - 1) * kl : e * kl])
        if c == 0:
            return e, 0
        e = min(i + caps[c], int(flat.searchsorted(first[:c] + b"\xff" * (kl - c), "right")))
        if e >= n or _common_prefix(first, kb[(e - 1) * kl : e * kl]) != c:
            return None
        return e, c

    def _append_internal(self, key: bytes, val5: bytes) -> None:
        last = self._stack[-1]
        if last.push(key, val5):
            return
        if last.compress() and last.push(key, val5):
            return
        level = last.level
        self._flush_node()
        node = _BuildNode(level, self.key_len, self._caps)
        if not node.push(key, val5):  # pragma: no cover - an empty node always accepts
            raise BtreeError("could not push to a new node")
        self._stack.append(node)

    def _flush_node(self) -> None:
        last = self._stack.pop()
        blk = len(self.pages)
        self.pages.append(last.pack())
        if not self._stack:
            self._stack.append(_BuildNode(last.level + 1, self.key_len, self._caps))
        self._append_internal(last.first_key(), b"\x80" + blk.to_bytes(4, "big"))

    def finish(self) -> int:
        """Write out every open node; return the root's block number (relative)."""
        if self.num_entries == 0:
            raise BtreeError("cannot build an empty B-tree")
        while len(self._stack) > 1:
            self._flush_node()
        root_blk = len(self.pages)
        self.pages.append(self._stack[0].pack())
        return root_blk


# --------------------------------------------------------------------------------------
# Reading


class Node:
    """A parsed node page."""

    __slots__ = ("n", "level", "plen", "slen", "prefix", "keys_off", "vals_off", "page")

    def __init__(self, page: bytes, key_len: int) -> None:
        n, level, plen, slen = _HDR.unpack_from(page, 0)
        if n == 0 or plen + slen != key_len:
            raise BtreeError(
                f"corrupt B-tree node: {n} children, prefix {plen} + suffix {slen} != {key_len}"
            )
        self.n = n
        self.level = level
        self.plen = plen
        self.slen = slen
        self.prefix = page[NODE_HDR_SIZE : NODE_HDR_SIZE + plen]
        self.keys_off = NODE_HDR_SIZE + plen
        self.vals_off = self.keys_off + n * slen
        if self.vals_off + n * VALUE_SZ > len(page):
            raise BtreeError("corrupt B-tree node: entries overflow the page")
        self.page = page

    def key(self, i: int) -> bytes:
        o = self.keys_off + i * self.slen
        return self.prefix + self.page[o : o + self.slen]

    def value(self, i: int) -> int:
        o = self.vals_off + i * VALUE_SZ
        return int.from_bytes(self.page[o : o + VALUE_SZ], "big")

    def child(self, i: int) -> int:
        o = self.vals_off + i * VALUE_SZ
        if self.page[o] != 0x80:
            raise BtreeError("corrupt B-tree node: internal entry without the 0x80 marker")
        return int.from_bytes(self.page[o + 1 : o + VALUE_SZ], "big")

    def search(self, key: bytes) -> tuple[bool, int]:
        """Binary search: ``(True, i)`` on an exact match, else ``(False, insertion point)``."""
        plen = self.plen
        kp = key[:plen]
        if kp != self.prefix:
            return False, (0 if kp < self.prefix else self.n)
        ks = key[plen:]
        page, base, slen = self.page, self.keys_off, self.slen
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            o = base + mid * slen
            s = page[o : o + slen]
            if s < ks:
                lo = mid + 1
            elif s > ks:
                hi = mid
            else:
                return True, mid
        return False, lo


ReadPage = Callable[[int], Awaitable[bytes]]
#: A node with the key range ``[lo, hi)`` its keys must lie in (None: unbounded).
Span = tuple[Node, bytes | None, bytes | None]


def _check_span(node: Node, blk: int, lo: bytes | None, hi: bytes | None) -> None:
    """``node``'s keys are in order end to end and lie in ``[lo, hi)``, or BtreeError."""
    first = node.key(0)
    last = node.key(node.n - 1) if node.n > 1 else first
    if (
        (node.n > 1 and last <= first)
        or (lo is not None and first < lo)
        or (hi is not None and last >= hi)
    ):
        raise BtreeError(
            f"corrupt B-tree: node {blk} (level {node.level}) holds keys {first.hex()}.."
            f"{last.hex()}, outside the range [{_hex(lo)}, {_hex(hi)}) its parent gives it "
            "(a node referenced twice, or keys out of order)"
        )


def _hex(k: bytes | None) -> str:
    return "-" if k is None else k.hex()


#: Deeper than any real tree: a leaf page holds >= 2 entries and an internal page >= 2
#: children, so 2^32 entries need at most 32 levels (an 8 KiB page holds hundreds).
MAX_LEVEL: Final = 32


class DiskBtreeReader:
    """Point lookups and ordered iteration. ``read_page(blk)`` takes absolute blocks.

    Every walk checks that a child's level is its parent's minus one (and the root's at
    most :data:`MAX_LEVEL`), so a damaged file whose child pointer leads back up (a cycle)
    ends the walk with :class:`BtreeError` instead of looping for ever on the event loop.

    Levels alone let a DAG through: a subtree referenced from many entries (every child
    pointer of every internal node naming the same node below, say) passes them, and an
    iteration over it visits ``fanout ** depth`` nodes, returning the same entries again
    and again. So every walk also checks key ranges (:meth:`descend`): entry ``i`` of an
    internal node gives its child the range ``[key(i), key(i + 1))`` (the last entry its
    node's own upper bound), clipped to the node's range; the child's first and last keys
    must lie in it, and the separators visited must increase. Sibling ranges are then
    disjoint, so no node can be entered twice in one walk (a node whose keys fit two
    disjoint ranges does not exist): a walk is linear in the file, and a DAG ends it with
    :class:`BtreeError` on the second visit. The iterator also checks that the keys it
    returns keep strictly increasing (decreasing backwards) from one leaf to the next.
    Cheap: two keys per node entered and one compare per batch.
    """

    def __init__(self, read_page: ReadPage, start_blk: int, root_blk: int, key_len: int) -> None:
        self._read_page = read_page
        self.start_blk = start_blk
        self.root_blk = root_blk
        self.key_len = key_len

    async def node(self, rel_blk: int, level: int | None = None) -> Node:
        """The node at ``rel_blk``; ``level`` is the level it must have (None: the root)."""
        node = Node(await self._read_page(self.start_blk + rel_blk), self.key_len)
        if level is None:
            if node.level > MAX_LEVEL:
                raise BtreeError(f"corrupt B-tree: root level {node.level} > {MAX_LEVEL}")
        elif node.level != level:
            raise BtreeError(
                f"corrupt B-tree: node {rel_blk} has level {node.level}, its parent says {level}"
            )
        return node

    async def child(self, node: Node, i: int) -> Node:
        """Child ``i`` of an internal node, checked to be one level below it."""
        return await self.node(node.child(i), node.level - 1)

    async def root(self) -> Node:
        """The root node, its keys checked to be in order (first < last)."""
        root = await self.node(self.root_blk)
        _check_span(root, self.root_blk, None, None)
        return root

    async def descend(self, node: Node, i: int, lo: bytes | None, hi: bytes | None) -> Span:
        """Child ``i`` of ``node`` (whose keys must lie in ``[lo, hi)``, None unbounded),
        with the range its keys must lie in, checked: see the class docstring."""
        clo = node.key(i)
        chi = hi
        if i + 1 < node.n:
            nxt = node.key(i + 1)
            if nxt <= clo:
                raise BtreeError(
                    f"corrupt B-tree: internal node keys out of order (entries {i} and {i + 1} "
                    f"of a level-{node.level} node)"
                )
            if hi is None or nxt < hi:
                chi = nxt
        if lo is not None and clo < lo:
            clo = lo
        blk = node.child(i)
        child = await self.node(blk, node.level - 1)
        _check_span(child, blk, clo, chi)
        return child, clo, chi

    async def get(self, key: bytes) -> int | None:
        node = await self.root()
        lo: bytes | None = None
        hi: bytes | None = None
        while True:
            found, i = node.search(key)
            if node.level == 0:
                return node.value(i) if found else None
            if not found:
                if i == 0:
                    return None
                i -= 1
            node, lo, hi = await self.descend(node, i, lo, hi)

    async def check(self, nblocks: int) -> int:
        """Walk every internal node once (leaves are not read): each child one level below
        its parent, no block reached twice, every child block inside the file of
        ``nblocks`` pages. Cheap: the internal nodes are a few hundredths of the index.
        Returns the nodes visited."""
        root = await self.node(self.root_blk)
        seen = {self.root_blk}
        level = [root]
        while level and level[0].level > 0:
            below: list[Node] = []
            for node in level:
                for i in range(node.n):
                    blk = node.child(i)
                    if blk in seen:
                        raise BtreeError(f"corrupt B-tree: node {blk} is reached twice")
                    seen.add(blk)
                    if not 0 <= self.start_blk + blk < nblocks:
                        raise BtreeError(f"corrupt B-tree: child block {blk} outside the file")
                    if node.level > 1:
                        below.append(await self.child(node, i))
            level = below
        return len(seen)

    def iter(self, start_key: bytes, forward: bool = True) -> BtreeIterator:
        """Entries with key >= ``start_key`` ascending (or <= it, descending)."""
        return BtreeIterator(self, start_key, forward)

    async def visit(
        self, start_key: bytes, forward: bool, visitor: Callable[[bytes, int], bool]
    ) -> bool:
        """Call ``visitor(key, value)`` in order until it returns False; False if stopped."""
        it = self.iter(start_key, forward)
        while True:
            batch = await it.next_batch()
            if not batch:
                return True
            for k, v in batch:
                if not visitor(k, v):
                    return False


class BtreeIterator:
    """Walks the tree like Neon's ``visit``: a stack of (node, next index) pairs.

    A class rather than an async generator: layer jobs may run in a worker thread without
    a trio run, where async-generator finalisation hooks are not available. Entries come
    a leaf at a time (:meth:`next_batch`), which keeps per-entry overhead low.
    """

    def __init__(self, reader: DiskBtreeReader, start_key: bytes, forward: bool) -> None:
        self._reader = reader
        self._start = start_key
        self._forward = forward
        # (node, next index, the node's key range): see DiskBtreeReader's docstring.
        self._stack: list[tuple[Node, int, bytes | None, bytes | None]] = []
        self._pending: deque[tuple[bytes, int]] = deque()
        self._started = False
        self._last: bytes | None = None  # the last key returned

    def __aiter__(self) -> BtreeIterator:
        return self

    async def __anext__(self) -> tuple[bytes, int]:
        if not self._pending:
            batch = await self.next_batch()
            if not batch:
                raise StopAsyncIteration
            self._pending.extend(batch)
        return self._pending.popleft()

    def _first_index(self, node: Node) -> int:
        found, i = node.search(self._start)
        if self._forward:
            if found or node.level == 0:
                return i
            return max(i - 1, 0)
        return i if found else i - 1

    async def next_batch(self, max_entries: int = PAGE_SZ) -> list[tuple[bytes, int]]:
        """Up to ``max_entries`` next entries, never spanning two leaves (empty at the end).

        Point-like scans (a key's few versions) ask for a handful; full scans take a
        whole leaf at a time.
        """
        if self._pending:
            out = list(self._pending)
            self._pending.clear()
            return out
        r = self._reader
        if not self._started:
            self._started = True
            root = await r.root()
            self._stack.append((root, self._first_index(root), None, None))
        forward = self._forward
        step = 1 if forward else -1
        while self._stack:
            node, i, lo, hi = self._stack.pop()
            if not 0 <= i < node.n:
                continue
            if node.level == 0:
                end = min(node.n, i + max_entries) if forward else max(-1, i - max_entries)
                if 0 <= end < node.n:
                    self._stack.append((node, end, lo, hi))
                key, value = node.key, node.value
                batch = [(key(j), value(j)) for j in range(i, end, step)]
                last = self._last
                if last is not None and (batch[0][0] <= last if forward else batch[0][0] >= last):
                    raise BtreeError(
                        f"corrupt B-tree: key {batch[0][0].hex()} follows {last.hex()} "
                        f"in a {'forward' if forward else 'backward'} scan (keys out of order)"
                    )
                self._last = batch[-1][0]
                return batch
            self._stack.append((node, i + step, lo, hi))
            child, clo, chi = await r.descend(node, i, lo, hi)
            self._stack.append((child, self._first_index(child), clo, chi))
        return []
