#!/usr/bin/env python3
"""Layer-file fuzzing: mutate real delta and image layers and feed them to the readers.

Seeds are real layer files: a ``pageserver run`` daemon ingests test records and images,
flushes and compacts, which leaves L0 deltas, an L1 delta and a (zstd-compressed) image
layer with multi-level B-trees. Copies of them are then mutated (the format is SPEC section
4; this script parses it itself, so it does not depend on the package's internals):

    summary_bitflip   bits flipped in the summary's 88/96 bytes
    summary_field     summary fields set to edge values (index blocks, magic, version, ...)
    index_bitflip     bits flipped in B-tree pages
    btree_header      a node's num_children / level / prefix_len / suffix_len rewritten
    btree_cycle       an internal node's child pointer aimed at the root, itself or its parent
    btree_child       an internal child pointer out of the file, or without its 0x80 marker
    leaf_offset       a leaf's blob offset aimed outside the file, at the summary, mid-blob
    blob_header_bitflip / blob_data_bitflip   bits flipped in a blob's header / data
    huge_blob_len     a blob header announcing up to 0x0FFFFFFF bytes (or bad compression bits)
    zstd_bomb         a tiny zstd frame (RLE blocks) that inflates to GiBs, marked compressed
                      (0x90) and pointed at by a leaf entry
    zstd_garbage      a blob marked compressed whose data is not (or a truncated) zstd frame
    truncate          the file cut short (page-aligned or not)
    zero_page         a page (summary, data, index, root) zeroed
    havoc             several random overwrites, inserts and deletes

Each mutant goes through ``pageserver layer dump --values FILE`` and ``pageserver layer ls
DIR`` (the mutant alone in a directory, under its layer name), each in a child process with
``RLIMIT_AS`` (1 GiB) and a timeout, and with ``--daemon`` also through a daemon: a copy of
the seed data directory with the mutant in place of its layer, then ``get`` of the layer's
keys. Outcomes:

    ok            exit 0 (the mutant is still readable)
    clean_error   exit 1 with one line on stderr and no traceback (daemon: refused to start
                  naming the file, or get answered with an error reply)
    hang          the timeout passed
    traceback     a Python traceback (daemon: a raw Python error in a reply, or a crash)
    blowup        MemoryError, killed by the memory limit, or peak RSS above --rss-limit-mib
    unclean       any other exit (a signal, exit 1 without exactly one line, ...)

Bad mutants (hang, traceback, blowup, unclean) are saved, a few per (kind, outcome), under
``OUT/bad/`` with a ``repro.sh``; the exit status is 1 if there was any.

Usage::

    .venv/bin/python scripts/fuzz_layers.py --iterations 2000 --seed 1
    .venv/bin/python scripts/fuzz_layers.py --iterations 300 --daemon --json
    .venv/bin/python scripts/fuzz_layers.py --kinds btree_cycle,zstd_bomb --iterations 20
    .venv/bin/python scripts/fuzz_layers.py --atheris -- -max_total_time=600 -timeout=10 \
        -rss_limit_mb=2048          # libFuzzer options after --; crashes land in OUT/atheris/

Most runs happen in children forked from this (single-threaded) process with the package
already imported (``pageserver.cli.main`` called directly: the same code as the console
script, minus interpreter start-up); one mutant in ``--exec-every`` (at random) runs the
real ``pageserver`` executable instead, so what the installed command prints is checked
too. A run counts as hung after ``--timeout`` CPU seconds, so a loaded machine does not
turn slow runs into false hangs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("pageserver") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(REPO))

PAGE = 8192
DELTA_MAGIC = 0x5A61
IMAGE_MAGIC = 0x5A60
KEY_SIZE = 18
DELTA_SUMMARY = struct.Struct(">HH16s16s18s18sQQII")
IMAGE_SUMMARY = struct.Struct(">HH16s16s18s18sQII")
NODE_HDR = struct.Struct(">HBBB")
MAX_BLOB_LEN = 0x0FFF_FFFF
MIB = 1024 * 1024

OK, CLEAN, HANG, TRACEBACK, BLOWUP, UNCLEAN = (
    "ok", "clean_error", "hang", "traceback", "blowup", "unclean",
)  # fmt: skip
CLASSES = (OK, CLEAN, HANG, TRACEBACK, BLOWUP, UNCLEAN)
BAD = frozenset((HANG, TRACEBACK, BLOWUP, UNCLEAN))
_SEVERITY = {OK: 0, CLEAN: 1, UNCLEAN: 2, TRACEBACK: 3, HANG: 4, BLOWUP: 5}

#: Exceptions of the package whose appearance in an ``internal`` reply still names the
#: problem (a corrupt file); anything else there is a raw Python error leaking out.
PROJECT_ERRORS = frozenset(
    ("LayerFileError", "BtreeError", "BlobError", "SummaryError", "BadValue", "RedoError",
     "LayerCorrupt", "CorruptLayer", "LayerNameError")
)  # fmt: skip


def worst(classes: list[str]) -> str:
    return max(classes, key=lambda c: _SEVERITY[c]) if classes else OK


# ---------------------------------------------------------------------------------------
# The layer format (SPEC section 4), parsed independently of the package
# ---------------------------------------------------------------------------------------


class SeedError(ValueError):
    """A seed file this script cannot use (not a layer, or a broken one)."""


@dataclass
class Node:
    blk: int  # absolute block
    n: int
    level: int
    plen: int
    slen: int
    keys_off: int  # absolute file offsets
    vals_off: int


@dataclass
class Seed:
    """A parsed, valid layer file: what the mutators need to aim at its structures."""

    name: str
    data: bytes
    kind: str  # "delta" | "image"
    key_len: int
    index_start: int
    root_rel: int
    nodes: dict[int, Node]
    parents: dict[int, int]  # child abs block -> parent abs block
    # (index key, value, absolute offset of the 5-byte value field) of every leaf entry
    entries: list[tuple[bytes, int, int]]
    blobs: list[int]  # sorted distinct blob offsets
    lsn: int = 0  # image: the layer's LSN
    tag: str = ""
    leaf_first: dict[int, int] = field(default_factory=dict)  # leaf block -> first entry

    def first_entry_under(self, blk: int) -> int:
        """Index in :attr:`entries` of the first entry of the subtree at ``blk``."""
        node = self.nodes[blk]
        while node.level > 0:
            child = int.from_bytes(self.data[node.vals_off + 1 : node.vals_off + 5], "big")
            node = self.nodes[self.index_start + child]
        return self.leaf_first[node.blk]

    @property
    def root_abs(self) -> int:
        return self.index_start + self.root_rel

    @property
    def nblocks(self) -> int:
        return len(self.data) // PAGE

    @property
    def summary_size(self) -> int:
        return DELTA_SUMMARY.size if self.kind == "delta" else IMAGE_SUMMARY.size

    def blob_offset(self, value: int) -> int:
        return value >> 1 if self.kind == "delta" else value

    def internal_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.level > 0]

    def query(self, entry_index: int) -> tuple[str, int]:
        """(key hex, lsn) of a ``get`` that reads entry ``entry_index`` of this layer."""
        k = self.entries[entry_index][0]
        if self.kind == "delta":
            return k[:KEY_SIZE].hex().upper(), int.from_bytes(k[KEY_SIZE:], "big")
        return k.hex().upper(), self.lsn


def parse_seed(path: str | Path, data: bytes | None = None) -> Seed:
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    if len(data) < 2 * PAGE or len(data) % PAGE:
        raise SeedError(f"{path}: size {len(data)} is not a layer file's")
    magic, version = struct.unpack_from(">HH", data, 0)
    image_lsn = 0
    if magic == DELTA_MAGIC:
        kind, key_len = "delta", KEY_SIZE + 8
        *_, index_start, root_rel = DELTA_SUMMARY.unpack_from(data, 0)
    elif magic == IMAGE_MAGIC:
        kind, key_len = "image", KEY_SIZE
        *_, image_lsn, index_start, root_rel = IMAGE_SUMMARY.unpack_from(data, 0)
    else:
        raise SeedError(f"{path}: bad magic {magic:#x}")
    nblocks = len(data) // PAGE
    nodes: dict[int, Node] = {}
    parents: dict[int, int] = {}
    entries: list[tuple[bytes, int, int]] = []
    leaf_first: dict[int, int] = {}

    def walk(blk: int, depth: int) -> None:
        if blk in nodes or not index_start <= blk < nblocks or depth > 16:
            raise SeedError(f"{path}: bad B-tree (block {blk})")
        base = blk * PAGE
        n, level, plen, slen = NODE_HDR.unpack_from(data, base)
        if n == 0 or plen + slen != key_len:
            raise SeedError(f"{path}: bad B-tree node at block {blk}")
        keys_off = base + 5 + plen
        vals_off = keys_off + n * slen
        node = Node(blk, n, level, plen, slen, keys_off, vals_off)
        nodes[blk] = node
        prefix = data[base + 5 : base + 5 + plen]
        for i in range(n):
            voff = vals_off + 5 * i
            if level == 0:
                if i == 0:
                    leaf_first[blk] = len(entries)
                key = prefix + data[keys_off + i * slen : keys_off + (i + 1) * slen]
                entries.append((key, int.from_bytes(data[voff : voff + 5], "big"), voff))
            else:
                if data[voff] != 0x80:
                    raise SeedError(f"{path}: internal entry without 0x80 at block {blk}")
                child = index_start + int.from_bytes(data[voff + 1 : voff + 5], "big")
                parents[child] = blk
                walk(child, depth + 1)

    walk(index_start + root_rel, 0)
    seed = Seed(
        path.name,
        data,
        kind,
        key_len,
        index_start,
        root_rel,
        nodes,
        parents,
        entries,
        [],
        image_lsn,
    )
    seed.leaf_first = leaf_first
    seed.blobs = sorted({seed.blob_offset(v) for _k, v, _o in entries})
    return seed


def load_seeds(seed_dir: str | Path) -> list[Seed]:
    seeds = []
    for p in sorted(Path(seed_dir).iterdir()):
        if not p.is_file() or "__" not in p.name:
            continue
        seed = parse_seed(p)
        seed.tag = _seed_tag(seed)
        seeds.append(seed)
    if not seeds:
        raise SeedError(f"no layer files in {seed_dir}")
    return seeds


def _seed_tag(seed: Seed) -> str:
    depth = max(n.level for n in seed.nodes.values()) + 1
    if seed.kind == "image":
        what = "image"
    elif seed.name.startswith("000000000000000000000000000000000000-FFFFFFFFFFFF"):
        what = "L0"
    else:
        what = "L1"
    return f"{what}:{len(seed.entries)}e:d{depth}"


# ---------------------------------------------------------------------------------------
# zstd bombs
# ---------------------------------------------------------------------------------------


def zstd_bomb(total: int = 2 << 30, content_size: bool = False) -> bytes:
    """A valid zstd frame of RLE blocks (4 bytes per 128 KiB) inflating to ``total`` zeros.

    2 GiB take 64 KiB. With ``content_size`` the frame header declares the size (a reader
    can refuse it up front); without, only decompressing finds out.
    """
    block = 128 * 1024
    nblocks = max(1, total // block)
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    # Frame header descriptor: FCS field 8 bytes (flag 3) or none; window descriptor 2^17.
    out += bytes((0xC0 if content_size else 0x00, 0x38))
    if content_size:
        out += struct.pack("<Q", nblocks * block)
    rle = bytes(((1 << 1) | (block << 3)).to_bytes(3, "little")) + b"\0"
    out += rle * (nblocks - 1)
    out += (1 | (1 << 1) | (block << 3)).to_bytes(3, "little") + b"\0"
    return bytes(out)


_BOMBS: dict[tuple[int, bool], bytes] = {}


def _bomb(total: int, content_size: bool) -> bytes:
    key = (total, content_size)
    if key not in _BOMBS:
        _BOMBS[key] = zstd_bomb(total, content_size)
    return _BOMBS[key]


# ---------------------------------------------------------------------------------------
# Mutators
# ---------------------------------------------------------------------------------------


@dataclass
class Mutant:
    kind: str
    variant: str
    data: bytes
    detail: dict[str, Any]
    seed: Seed
    target: int | None = None  # leaf entry index the mutation aims at (daemon queries)


class NotApplicable(Exception):
    """This mutation cannot be applied to this seed (e.g. a cycle needs an internal node)."""


Mutator = Callable[[Seed, random.Random], Mutant]
MUTATORS: dict[str, Mutator] = {}


def mutator(name: str) -> Callable[[Mutator], Mutator]:
    def register(fn: Mutator) -> Mutator:
        MUTATORS[name] = fn
        return fn

    return register


def _flip(buf: bytearray, lo: int, hi: int, bits: int, rng: random.Random) -> list[list[int]]:
    flips = []
    for _ in range(bits):
        off = rng.randrange(lo, hi)
        bit = rng.randrange(8)
        buf[off] ^= 1 << bit
        flips.append([off, bit])
    return flips


def _nbits(rng: random.Random) -> int:
    return rng.choice((1, 1, 1, 2, 2, 3, 4, 8))


def _put5(buf: bytearray, off: int, value: int) -> None:
    buf[off : off + 5] = value.to_bytes(5, "big")


def _entry_near_blob(seed: Seed, blob: int) -> int | None:
    for i, (_k, v, _o) in enumerate(seed.entries):
        if seed.blob_offset(v) == blob:
            return i
    return None


@mutator("summary_bitflip")
def m_summary_bitflip(seed: Seed, rng: random.Random) -> Mutant:
    buf = bytearray(seed.data)
    flips = _flip(buf, 0, seed.summary_size, _nbits(rng), rng)
    return Mutant("summary_bitflip", "summary", bytes(buf), {"flips": flips}, seed)


@mutator("summary_field")
def m_summary_field(seed: Seed, rng: random.Random) -> Mutant:
    buf = bytearray(seed.data)
    tail = seed.summary_size - 8  # index_start_blk, index_root_blk
    nb = seed.nblocks
    field_name = rng.choice(("index_start", "index_root", "both", "magic", "version"))
    value: int | list[int]
    if field_name == "magic":
        value = rng.choice((0, 0x5A60, 0x5A61, 0xFFFF))
        struct.pack_into(">H", buf, 0, value)
    elif field_name == "version":
        value = rng.choice((0, 1, 2, 4, 0xFFFF))
        struct.pack_into(">H", buf, 2, value)
    else:
        leaves = [n.blk for n in seed.nodes.values() if n.level == 0]
        choices = [0, 1, nb - 1, nb, nb + 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(nb + 10)]
        start, root = seed.index_start, seed.root_rel
        if field_name in ("index_start", "both"):
            start = rng.choice(choices + [1, seed.index_start - 1])
        if field_name in ("index_root", "both"):
            root = rng.choice(choices + [rng.choice(leaves) - seed.index_start])
        start &= 0xFFFFFFFF
        root &= 0xFFFFFFFF
        struct.pack_into(">II", buf, tail, start, root)
        value = [start, root]
    return Mutant("summary_field", field_name, bytes(buf), {"value": value}, seed)


@mutator("index_bitflip")
def m_index_bitflip(seed: Seed, rng: random.Random) -> Mutant:
    buf = bytearray(seed.data)
    node = rng.choice(list(seed.nodes.values()))
    base = node.blk * PAGE
    if rng.random() < 0.75:
        hi = node.vals_off + 5 * node.n
        variant = "used"
    else:
        hi = base + PAGE
        variant = "page"
    flips = _flip(buf, base, hi, _nbits(rng), rng)
    variant += "-root" if node.blk == seed.root_abs else f"-level{node.level}"
    return Mutant("index_bitflip", variant, bytes(buf), {"block": node.blk, "flips": flips}, seed)


@mutator("btree_header")
def m_btree_header(seed: Seed, rng: random.Random) -> Mutant:
    buf = bytearray(seed.data)
    node = rng.choice(list(seed.nodes.values()))
    base = node.blk * PAGE
    what = rng.choice(("n", "level", "plen", "slen", "swap"))
    value: int | list[int]
    if what == "n":
        value = rng.choice((0, 1, node.n + 1, node.n * 2, 0xFFFF, rng.randrange(0x10000)))
        struct.pack_into(">H", buf, base, value)
    elif what == "level":
        value = rng.choice((0, 1, 2, node.level + 1, max(node.level - 1, 0), 255))
        buf[base + 2] = value
    elif what == "plen":
        value = rng.choice((0, node.plen + 1, max(node.plen - 1, 0), 255))
        buf[base + 3] = value
    elif what == "slen":
        value = rng.choice((0, node.slen + 1, max(node.slen - 1, 0), 255))
        buf[base + 4] = value
    else:
        buf[base + 3], buf[base + 4] = buf[base + 4], buf[base + 3]
        value = [node.slen, node.plen]
    return Mutant(
        "btree_header", what, bytes(buf), {"block": node.blk, "level": node.level, "value": value},
        seed,
    )  # fmt: skip


def make_cycle(seed: Seed, rng: random.Random, variant: str | None = None) -> Mutant:
    """Aim one child pointer of an internal node back up the tree (a cycle)."""
    internal = seed.internal_nodes()
    if not internal:
        raise NotApplicable("no internal B-tree node")
    node = rng.choice(internal)
    variant = variant or rng.choice(("to_root", "to_self", "to_parent"))
    if variant == "to_self":
        target = node.blk
    elif variant == "to_parent" and node.blk in seed.parents:
        target = seed.parents[node.blk]
    else:
        variant = "to_root"
        target = seed.root_abs
    i = rng.randrange(node.n)
    buf = bytearray(seed.data)
    voff = node.vals_off + 5 * i
    old_child = seed.index_start + int.from_bytes(seed.data[voff + 1 : voff + 5], "big")
    buf[voff] = 0x80
    buf[voff + 1 : voff + 5] = (target - seed.index_start).to_bytes(4, "big")
    detail = {"block": node.blk, "child_index": i, "points_to_block": target, "value_at": voff}
    # A lookup of the first key under the redirected child walks into the cycle.
    return Mutant("btree_cycle", variant, bytes(buf), detail, seed,
                  seed.first_entry_under(old_child))  # fmt: skip


@mutator("btree_cycle")
def m_btree_cycle(seed: Seed, rng: random.Random) -> Mutant:
    return make_cycle(seed, rng)


@mutator("btree_child")
def m_btree_child(seed: Seed, rng: random.Random) -> Mutant:
    internal = seed.internal_nodes()
    if not internal:
        raise NotApplicable("no internal B-tree node")
    node = rng.choice(internal)
    i = rng.randrange(node.n)
    voff = node.vals_off + 5 * i
    buf = bytearray(seed.data)
    rel_end = seed.nblocks - seed.index_start
    variant = rng.choice(("past_end", "max", "random", "marker", "leaf_elsewhere"))
    if variant == "marker":
        buf[voff] = rng.choice((0x00, 0x7F, 0x81, 0xFF))
    else:
        if variant == "past_end":
            rel = rel_end + rng.randrange(3)
        elif variant == "max":
            rel = 0xFFFFFFFF
        elif variant == "random":
            rel = rng.randrange(1 << 32)
        else:  # a valid leaf, but of another subtree (keys out of order; not a cycle)
            leaves = [b for b, n in seed.nodes.items() if n.level == 0]
            rel = rng.choice(leaves) - seed.index_start
        buf[voff + 1 : voff + 5] = rel.to_bytes(4, "big")
    return Mutant("btree_child", variant, bytes(buf), {"block": node.blk, "child_index": i}, seed)


@mutator("leaf_offset")
def m_leaf_offset(seed: Seed, rng: random.Random) -> Mutant:
    idx = rng.randrange(len(seed.entries))
    _k, v, voff = seed.entries[idx]
    off = seed.blob_offset(v)
    size = len(seed.data)
    variant = rng.choice(("zero", "summary", "past_end", "last_byte", "max", "mid_blob", "index"))
    new = {
        "zero": 0,
        "summary": rng.randrange(1, PAGE),
        "past_end": size + rng.randrange(0, 3 * PAGE),
        "last_byte": size - 1,
        "max": 0x3F_FFFF_FFFF,
        "mid_blob": off + rng.randrange(1, 6),
        "index": seed.index_start * PAGE + rng.randrange(0, size - seed.index_start * PAGE),
    }[variant]
    if seed.kind == "delta":
        new = (new << 1) | (v & 1)
    new &= 0x7F_FFFF_FFFF
    buf = bytearray(seed.data)
    _put5(buf, voff, new)
    return Mutant("leaf_offset", variant, bytes(buf), {"entry": idx, "value": new}, seed, idx)


def _blob_header_len(seed: Seed, off: int) -> int:
    return 1 if seed.data[off] < 0x80 else 4


@mutator("blob_header_bitflip")
def m_blob_header_bitflip(seed: Seed, rng: random.Random) -> Mutant:
    off = rng.choice(seed.blobs)
    buf = bytearray(seed.data)
    flips = _flip(buf, off, off + _blob_header_len(seed, off), _nbits(rng), rng)
    variant = "hdr1" if _blob_header_len(seed, off) == 1 else f"hdr4-{seed.data[off] & 0xF0:#x}"
    return Mutant(
        "blob_header_bitflip", variant, bytes(buf), {"blob": off, "flips": flips}, seed,
        _entry_near_blob(seed, off),
    )  # fmt: skip


@mutator("blob_data_bitflip")
def m_blob_data_bitflip(seed: Seed, rng: random.Random) -> Mutant:
    off = rng.choice(seed.blobs)
    h = _blob_header_len(seed, off)
    if h == 1:
        n = seed.data[off]
    else:
        n = int.from_bytes(seed.data[off : off + 4], "big") & MAX_BLOB_LEN
    if n == 0:
        raise NotApplicable("empty blob")
    start = off + h
    buf = bytearray(seed.data)
    flips = _flip(buf, start, start + min(n, 64), _nbits(rng), rng)
    variant = "zstd" if h == 4 and seed.data[off] & 0xF0 == 0x90 else "plain"
    return Mutant(
        "blob_data_bitflip", variant, bytes(buf), {"blob": off, "flips": flips}, seed,
        _entry_near_blob(seed, off),
    )  # fmt: skip


@mutator("huge_blob_len")
def m_huge_blob_len(seed: Seed, rng: random.Random) -> Mutant:
    off = rng.choice(seed.blobs)
    variant = rng.choice(("max_plain", "max_zstd", "past_end", "bad_bits", "just_below_end"))
    size = len(seed.data)
    if variant == "max_plain":
        word = 0x8000_0000 | MAX_BLOB_LEN
    elif variant == "max_zstd":
        word = 0x9000_0000 | MAX_BLOB_LEN
    elif variant == "past_end":
        word = 0x8000_0000 | min(size - off, MAX_BLOB_LEN)
    elif variant == "just_below_end":
        word = 0x8000_0000 | min(size - off - 4, MAX_BLOB_LEN)
    else:
        word = (rng.choice((0xA0, 0xB0, 0xC0, 0xF0)) << 24) | rng.randrange(MAX_BLOB_LEN)
    buf = bytearray(seed.data)
    buf[off : off + 4] = word.to_bytes(4, "big")
    return Mutant(
        "huge_blob_len", variant, bytes(buf), {"blob": off, "header": f"{word:#010x}"}, seed,
        _entry_near_blob(seed, off),
    )  # fmt: skip


def append_blob(seed: Seed, blob: bytes, entry: int) -> bytes:
    """The seed with ``blob`` (header included) appended after the index, page-padded, and
    leaf entry ``entry`` aimed at it. Blocks before the end keep their numbers."""
    buf = bytearray(seed.data)
    off = len(buf)
    buf += blob
    buf += bytes(-len(buf) % PAGE)
    _k, v, voff = seed.entries[entry]
    _put5(buf, voff, (off << 1) | (v & 1) if seed.kind == "delta" else off)
    return bytes(buf)


def make_zstd_bomb(
    seed: Seed, rng: random.Random, total: int | None = None, content_size: bool | None = None
) -> Mutant:
    total = total if total is not None else rng.choice((2 << 30, 2 << 30, 256 * MIB))
    if content_size is None:
        content_size = rng.random() < 0.5
    frame = _bomb(total, content_size)
    blob = (0x9000_0000 | len(frame)).to_bytes(4, "big") + frame
    entry = rng.randrange(len(seed.entries))
    data = append_blob(seed, blob, entry)
    variant = f"{total // MIB}MiB-{'size' if content_size else 'nosize'}"
    detail = {"entry": entry, "frame_bytes": len(frame), "inflates_to": total}
    return Mutant("zstd_bomb", variant, data, detail, seed, entry)


@mutator("zstd_bomb")
def m_zstd_bomb(seed: Seed, rng: random.Random) -> Mutant:
    return make_zstd_bomb(seed, rng)


@mutator("zstd_garbage")
def m_zstd_garbage(seed: Seed, rng: random.Random) -> Mutant:
    variant = rng.choice(("not_zstd", "truncated_frame", "small_bomb_truncated", "empty"))
    if variant == "not_zstd":
        off = rng.choice(seed.blobs)
        buf = bytearray(seed.data)
        n = 1 + rng.randrange(200)
        buf[off : off + 4] = (0x9000_0000 | n).to_bytes(4, "big")
        entry = _entry_near_blob(seed, off)
        return Mutant("zstd_garbage", variant, bytes(buf), {"blob": off, "len": n}, seed, entry)
    import zstandard

    if variant == "truncated_frame":
        frame = zstandard.ZstdCompressor().compress(rng.randbytes(64) * 40)
        frame = frame[: rng.randrange(1, len(frame))]
    elif variant == "small_bomb_truncated":
        frame = zstd_bomb(64 * MIB, rng.random() < 0.5)
        frame = frame[: rng.randrange(6, len(frame))]
    else:
        frame = b""
    blob = (0x9000_0000 | len(frame)).to_bytes(4, "big") + frame
    entry = rng.randrange(len(seed.entries))
    data = append_blob(seed, blob, entry)
    return Mutant("zstd_garbage", variant, data, {"entry": entry, "len": len(frame)}, seed, entry)


@mutator("truncate")
def m_truncate(seed: Seed, rng: random.Random) -> Mutant:
    size = len(seed.data)
    variant = rng.choice(("anywhere", "pages", "edge"))
    if variant == "anywhere":
        new = rng.randrange(size)
    elif variant == "pages":
        new = size - PAGE * rng.randrange(1, seed.nblocks)
    else:
        new = rng.choice((0, 1, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, size - 1, size - PAGE))
    return Mutant("truncate", variant, seed.data[:new], {"new_size": new, "size": size}, seed)


@mutator("zero_page")
def m_zero_page(seed: Seed, rng: random.Random) -> Mutant:
    variant = rng.choice(("summary", "data", "index", "root"))
    if variant == "summary":
        blk = 0
    elif variant == "data":
        blk = rng.randrange(1, max(2, seed.index_start))
    elif variant == "index":
        blk = rng.choice(list(seed.nodes))
    else:
        blk = seed.root_abs
    buf = bytearray(seed.data)
    buf[blk * PAGE : (blk + 1) * PAGE] = bytes(PAGE)
    return Mutant("zero_page", variant, bytes(buf), {"block": blk}, seed)


@mutator("havoc")
def m_havoc(seed: Seed, rng: random.Random) -> Mutant:
    buf = bytearray(seed.data)
    ops = []
    for _ in range(rng.randrange(1, 17)):
        op = rng.choice(("set", "copy", "insert", "delete", "random_chunk", "append_pages"))
        if not buf:
            break
        at = rng.randrange(len(buf))
        if op == "set":
            buf[at] = rng.choice((0, 0x7F, 0x80, 0x90, 0xFF, rng.randrange(256)))
        elif op == "copy":
            src = rng.randrange(len(buf))
            n = rng.randrange(1, 256)
            buf[at : at + n] = buf[src : src + n]
        elif op == "insert":
            buf[at:at] = rng.randbytes(rng.randrange(1, 64))
        elif op == "delete":
            del buf[at : at + rng.randrange(1, 64)]
        elif op == "random_chunk":
            n = rng.randrange(1, 512)
            buf[at : at + n] = rng.randbytes(n)
        else:
            buf += rng.randbytes(PAGE) if rng.random() < 0.5 else bytes(PAGE)
        ops.append([op, at])
    return Mutant("havoc", "mixed", bytes(buf), {"ops": ops[:20]}, seed)


KINDS = tuple(MUTATORS)


def mutate(seeds: list[Seed], kind: str, rng: random.Random) -> Mutant:
    """One mutant of ``kind`` from a seed it applies to."""
    order = list(seeds)
    rng.shuffle(order)
    for seed in order:
        try:
            return MUTATORS[kind](seed, rng)
        except NotApplicable:
            continue
    raise NotApplicable(f"{kind} applies to no seed")


# ---------------------------------------------------------------------------------------
# Seeds: a daemon run that leaves real L0, L1 and image layers
# ---------------------------------------------------------------------------------------

TENANT = "f0220000000000000000000000000001"
TIMELINE = "f0220000000000000000000000000002"


def pageserver_command() -> list[str]:
    exe = Path(sys.executable).with_name("pageserver")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "pageserver.cli"]


def _write_toml(data_dir: Path, listen: str, extra: str = "") -> None:
    (data_dir / "pageserver.toml").write_text(
        f'listen_addr = "{listen}"\n'
        'metrics_addr = ""\n'
        "no_sync = true\n"
        'image_compression = "zstd"\n'
        f"{extra}"
        "[tenant_config]\n"
        "checkpoint_distance = 268435456\n"
        'compaction_period = "0s"\n'
        "compaction_threshold = 3\n"
        "image_creation_threshold = 2\n"
    )


def _set_listen(toml: Path, listen: str) -> None:
    text = toml.read_text()
    text = re.sub(r'(?m)^listen_addr = ".*"$', f'listen_addr = "{listen}"', text)
    toml.write_text(text)


def _limits(mem_limit: int | None, nofile: int | None = None) -> Callable[[], None]:
    def apply() -> None:
        if mem_limit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return apply


def _wait_socket(path: str, exited: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return True
        except OSError:
            time.sleep(0.02)
    return False


def generate_seeds(out: Path, engine: str = "std-fs", cmd: list[str] | None = None) -> Path:
    """Run a daemon on ``out/template`` to make real layers; copy them to ``out/seeds``.

    Returns the seed directory. ``out/template`` stays: the data dir the daemon mode copies.
    """
    cmd = cmd or pageserver_command()
    template = out / "template"
    seeds_dir = out / "seeds"
    if template.exists():
        shutil.rmtree(template)
    template.mkdir(parents=True)
    sockdir = tempfile.mkdtemp(prefix="fzs", dir="/tmp")
    sock = os.path.join(sockdir, "s.sock")
    _write_toml(template, f"unix:{sock}")
    env = dict(os.environ, PAGESERVER_VIRTUAL_FILE_IO_ENGINE=engine)
    log = open(out / "seed-daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*cmd, "run", "-D", str(template)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip

    def cli(*args: str) -> str:
        p = subprocess.run(
            [*cmd, *args, "--addr", f"unix:{sock}"], capture_output=True, text=True, timeout=120
        )
        if p.returncode != 0:
            raise SeedError(f"seed generation: {' '.join(args[:2])} failed: {p.stderr.strip()}")
        return p.stdout.strip()

    try:
        if not _wait_socket(sock, lambda: proc.poll() is not None, 60):
            raise SeedError(f"seed daemon did not start (see {out / 'seed-daemon.log'})")
        cli("tenant", "create", TENANT)
        cli("timeline", "create", TENANT, TIMELINE)

        def feed(count: int, keys: int, size: int, kind: str, start: int) -> None:
            cli("feed", TENANT, TIMELINE, "--count", str(count), "--keys", str(keys),
                "--value-size", str(size), "--kind", kind, "--start-lsn", str(start),
                "--flush", "--no-progress")  # fmt: skip

        # Three L0s (test records with 1- and 4-byte blob headers, images), merged into an
        # L1 plus an image layer (zstd: the values compress), then two more L0s on top.
        # 1500 keys: the image layer (one entry per key) needs two index levels too.
        feed(1500, 1500, 200, "test", 1)
        feed(1000, 1500, 20, "test", 5000)
        feed(1500, 1500, 300, "image", 10000)
        cli("compact", TENANT, TIMELINE)
        feed(1000, 1500, 150, "test", 20000)
        feed(60, 60, 40, "image", 30000)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    tl_dir = template / "tenants" / TENANT / "timelines" / TIMELINE
    if seeds_dir.exists():
        shutil.rmtree(seeds_dir)
    seeds_dir.mkdir()
    for p in tl_dir.iterdir():
        if "__" in p.name and not p.name.endswith("___temp"):
            shutil.copy(p, seeds_dir / p.name)
    return seeds_dir


def timeline_dir(template: Path) -> Path:
    return template / "tenants" / TENANT / "timelines" / TIMELINE


# ---------------------------------------------------------------------------------------
# Running children: forked (package pre-imported) or exec'd, with limits and timeouts
# ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    rc: int | None  # exit status, None if killed by a signal
    sig: int | None
    timed_out: bool
    elapsed: float
    maxrss_kib: int
    stderr: str
    stdout: str
    cpu: float = 0.0  # CPU seconds of the child


@dataclass
class Job:
    """``fn(*args)`` in a forked child, or ``argv`` exec'd; stdout/stderr to files."""

    tag: Any
    timeout: float  # wall-clock seconds
    fn: Callable[..., int] | None = None
    args: tuple[Any, ...] = ()
    argv: list[str] | None = None
    keep_stdout: bool = False
    env: dict[str, str] | None = None
    #: CPU seconds (user + system) after which the child counts as hung. A loop burns
    #: CPU; a run that is merely slow because the machine is loaded does not, so this is
    #: the robust test, and the wall-clock ``timeout`` only catches a child that blocks.
    cpu_timeout: float | None = None


def _child_main(job: Job, mem_limit: int | None, out_path: str, err_path: str) -> None:
    """In the forked child: limits, redirections, then the call; never returns."""
    rc = 1
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        for fd in (devnull, fd_out, fd_err):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if mem_limit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        if job.argv is not None:
            os.execvpe(job.argv[0], job.argv, job.env or dict(os.environ))
        assert job.fn is not None
        # What the interpreter does around ``sys.exit(main())`` of a console script.
        try:
            ret = job.fn(*job.args)
            rc = 0 if ret is None else int(ret)
        except SystemExit as e:
            if e.code is None:
                rc = 0
            elif isinstance(e.code, int):
                rc = e.code
            else:
                print(e.code, file=sys.stderr)
                rc = 1
        except BaseException:
            rc = 1
            try:
                traceback.print_exc()
            except BaseException:
                os.write(2, b"Traceback (most recent call last):\n  (unprintable) MemoryError?\n")
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        rc = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(rc & 0xFF)


class _Stop:
    """Set by SIGTERM/SIGINT: a flag the pool polls (an exception raised from a signal
    handler can land inside ``fork``'s at-fork hooks and be swallowed there)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True


STOP = _Stop()


class Pool:
    """Runs jobs in up to ``jobs`` children at a time. This process must stay
    single-threaded (children are forked from it). Stops early once :data:`STOP` is set."""

    def __init__(self, jobs: int, mem_limit: int | None, tmp: Path) -> None:
        self.jobs = max(1, jobs)
        self.mem_limit = mem_limit
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self._running: dict[int, tuple[Job, float, str, str]] = {}
        self._n = 0
        self._tick = os.sysconf("SC_CLK_TCK")
        self._cpu_checked = 0.0

    def _start(self, job: Job) -> None:
        self._n += 1
        out_path = str(self.tmp / f"{self._n}.out") if job.keep_stdout else os.devnull
        err_path = str(self.tmp / f"{self._n}.err")
        for s in (sys.stdout, sys.stderr):
            s.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _child_main(job, self.mem_limit, out_path, err_path)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        self._running[pid] = (job, time.monotonic(), out_path, err_path)

    def _reap(self, pid: int, status: int, rusage: Any, timed_out: bool) -> tuple[Job, RunResult]:
        job, t0, out_path, err_path = self._running.pop(pid)
        elapsed = time.monotonic() - t0
        rc = os.waitstatus_to_exitcode(status)
        sig = -rc if rc < 0 else None
        stderr = _read_text(err_path, 20000)
        stdout = _read_text(out_path, 200000) if job.keep_stdout else ""
        for p in (out_path, err_path):
            if p != os.devnull:
                try:
                    os.unlink(p)
                except OSError:
                    pass
        res = RunResult(
            None if sig else rc, sig, timed_out, elapsed, rusage.ru_maxrss, stderr, stdout,
            rusage.ru_utime + rusage.ru_stime,
        )  # fmt: skip
        return job, res

    def _cpu_seconds(self, pid: int) -> float:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime

    def run(self, jobs: Iterator[Job] | list[Job]) -> Iterator[tuple[Job, RunResult]]:
        """Yield ``(job, result)`` as they finish. ``jobs`` may be a lazy iterator."""
        it = iter(jobs)
        exhausted = False
        try:
            while not STOP.requested:
                while not exhausted and len(self._running) < self.jobs:
                    try:
                        job = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    self._start(job)
                if not self._running:
                    return
                done_any = False
                now = time.monotonic()
                check_cpu = now - self._cpu_checked > 0.05
                if check_cpu:
                    self._cpu_checked = now
                for pid in list(self._running):
                    job, t0, _o, _e = self._running[pid]
                    wpid, status, rusage = os.wait4(pid, os.WNOHANG)
                    if wpid:
                        done_any = True
                        yield self._reap(pid, status, rusage, False)
                    elif now - t0 > job.timeout or (
                        check_cpu
                        and job.cpu_timeout is not None
                        and self._cpu_seconds(pid) > job.cpu_timeout
                    ):
                        _kill_group(pid)
                        _wpid, status, rusage = os.wait4(pid, 0)
                        done_any = True
                        yield self._reap(pid, status, rusage, True)
                if not done_any:
                    time.sleep(0.003)
        finally:
            for pid in list(self._running):
                _kill_group(pid)
                os.wait4(pid, 0)
                self._running.pop(pid)


def _kill_group(pid: int) -> None:
    for target in (-pid, pid):
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _read_text(path: str, limit: int) -> str:
    if path == os.devnull:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_exec(
    argv: list[str], timeout: float, mem_limit: int | None = 1024 * MIB,
    env: dict[str, str] | None = None,
) -> RunResult:  # fmt: skip
    """One subprocess with ``RLIMIT_AS`` (in ``preexec_fn``), a timeout that kills its
    process group, and its peak RSS (``wait4``). For callers that must not fork
    themselves (a test process with threads): this is ``subprocess``'s own fork+exec."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
            preexec_fn=_limits(mem_limit), start_new_session=True,
        )  # fmt: skip
        timed_out = False
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                timed_out = True
                _kill_group(proc.pid)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc
        out.seek(0)
        err.seek(0)
        return RunResult(
            None if rc < 0 else rc, -rc if rc < 0 else None, timed_out, elapsed,
            rusage.ru_maxrss, err.read().decode("utf-8", "replace"),
            out.read().decode("utf-8", "replace"),
        )  # fmt: skip


def _cli_main(argv: list[str]) -> int:
    from pageserver.cli import main

    return main(argv)


def preload_package(retries: int = 6) -> None:
    """Import the CLI (and the modules it loads) once, so forked children start warm.

    A parallel refactor can leave the package briefly unimportable: retry a few times."""
    for attempt in range(retries):
        try:
            import pageserver.cli

            pageserver.cli.build_parser()
            import pageserver.client  # noqa: F401 - for the daemon checks

            return
        except Exception:
            if attempt == retries - 1:
                raise
            for name in [
                m for m in sys.modules if m == "pageserver" or m.startswith("pageserver.")
            ]:
                del sys.modules[name]
            time.sleep(20)


# ---------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------


def classify_cli(res: RunResult, rss_limit_kib: int) -> tuple[str, str]:
    """(outcome class, one-line reason) of one ``pageserver layer ...`` run."""
    err = res.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else ""
    if res.timed_out:
        spent = f"no exit after {res.elapsed:.1f}s ({res.cpu:.1f} CPU-s)"
        if res.maxrss_kib > rss_limit_kib:
            return BLOWUP, f"peak RSS {res.maxrss_kib // 1024} MiB, {spent}"
        return HANG, spent
    if "MemoryError" in err or res.sig == signal.SIGKILL:
        return BLOWUP, last or f"killed by signal {res.sig}"
    if "Traceback (most recent call last)" in err:
        return TRACEBACK, last
    if res.sig is not None:
        return UNCLEAN, f"killed by signal {res.sig} ({signal.Signals(res.sig).name})"
    if res.maxrss_kib > rss_limit_kib:
        return BLOWUP, f"peak RSS {res.maxrss_kib // 1024} MiB (exit {res.rc})"
    if res.rc == 0:
        return OK, ""
    if res.rc == 1 and len(lines) == 1:
        return CLEAN, last
    if res.rc == 1:
        return UNCLEAN, f"exit 1 with {len(lines)} stderr lines: {last}"
    return UNCLEAN, f"exit {res.rc}: {last}"


_INTERNAL_RE = re.compile(r"internal error: (\w+)[(:]")


def classify_reply_error(code: str, message: str) -> str:
    if "MemoryError" in message:
        return BLOWUP
    if code != "internal":
        return CLEAN
    m = _INTERNAL_RE.search(message)
    if m and m.group(1) not in PROJECT_ERRORS:
        return TRACEBACK  # a raw Python error (IndexError, struct.error, ...) leaked out
    return CLEAN


def daemon_result(res: RunResult) -> dict[str, Any] | None:
    try:
        r: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return r
    except (ValueError, IndexError):
        return None


def classify_daemon(res: RunResult, layer_name: str, rss_limit_kib: int) -> tuple[str, str]:
    if res.timed_out:
        return HANG, f"daemon check did not finish in {res.elapsed:.0f}s"
    r = daemon_result(res)
    if r is None:
        return UNCLEAN, f"daemon check failed: {res.stderr.strip().splitlines()[-1:]}"
    return classify_daemon_result(r, layer_name, rss_limit_kib)


def classify_daemon_result(
    r: dict[str, Any], layer_name: str, rss_limit_kib: int
) -> tuple[str, str]:
    """(outcome class, reason) of a :func:`daemon_check_result`."""
    log = r.get("log", "")
    if r["phase"] == "start":
        if r.get("start_timeout"):
            return HANG, "daemon neither started nor exited"
        if "MemoryError" in log:
            return BLOWUP, "daemon start: MemoryError"
        if "Traceback (most recent call last)" in log:
            return TRACEBACK, "daemon start: traceback"
        if r.get("rc") not in (0, None) and layer_name in log:
            return CLEAN, "refused to start, naming the file"
        return UNCLEAN, f"daemon exited {r.get('rc')} without naming the file"
    classes = []
    reasons = []
    if "check_error" in r:
        err = r["check_error"]
        classes.append(BLOWUP if "MemoryError" in err else UNCLEAN)
        reasons.append(f"daemon check failed: {err.strip().splitlines()[-1][:200]}")
    for q in r.get("gets", []):
        if q["outcome"] == "timeout":
            classes.append(HANG)
            reasons.append(f"get {q['key']}@{q['lsn']} hung")
        elif q["outcome"] == "lost":
            classes.append(TRACEBACK)
            reasons.append(f"connection lost on get: {q['message'][:200]}")
        elif q["outcome"] == "error":
            c = classify_reply_error(q["code"], q["message"])
            classes.append(c)
            if c != CLEAN:
                reasons.append(f"get: {q['code']}: {q['message'][:200]}")
    if not r.get("running_after", True):
        classes.append(BLOWUP if "MemoryError" in log else TRACEBACK)
        reasons.append(f"daemon died (exit {r.get('daemon_rc')})")
    elif not r.get("alive_after", True):
        classes.append(HANG)
        reasons.append("daemon unresponsive afterwards (status to a new connection timed out)")
    if "MemoryError" in log:
        classes.append(BLOWUP)
        reasons.append("MemoryError in the daemon log")
    if r.get("daemon_maxrss_kib", 0) > rss_limit_kib:
        classes.append(BLOWUP)
        reasons.append(f"daemon peak RSS {r['daemon_maxrss_kib'] // 1024} MiB")
    if r.get("stop_timeout"):
        classes.append(HANG)
        reasons.append("daemon did not stop on SIGTERM")
    if not classes:
        classes.append(OK)
    cls = worst(classes)
    if cls == OK and any(q["outcome"] == "error" for q in r.get("gets", [])):
        cls = CLEAN
    return cls, "; ".join(reasons[:3])


# ---------------------------------------------------------------------------------------
# The daemon check (runs in a child)
# ---------------------------------------------------------------------------------------


def _reap(proc: subprocess.Popen[bytes], into: dict[str, Any], wait: float = 0.0) -> bool:
    """True once the daemon has exited (waiting up to ``wait`` s); reaps it with ``wait4``
    so that its exit status and peak RSS land in ``into``."""
    deadline = time.monotonic() + wait
    while proc.returncode is None:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            into["daemon_rc"] = proc.returncode
            into["daemon_maxrss_kib"] = rusage.ru_maxrss
            break
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _stop_daemon(
    proc: subprocess.Popen[bytes], into: dict[str, Any], timeout: float = 10.0
) -> None:
    """SIGTERM; SIGKILL (and ``stop_timeout``) if it has not exited after ``timeout``."""
    if _reap(proc, into):
        return
    proc.send_signal(signal.SIGTERM)
    if not _reap(proc, into, timeout):
        into["stop_timeout"] = True
        proc.kill()
        _reap(proc, into, 30.0)


def daemon_check(
    template: str,
    layer_name: str,
    mutant_path: str,
    queries: list[tuple[str, int]],
    engine: str,
    get_timeout: float,
    cmd: list[str],
) -> int:
    """:func:`daemon_check_result` as one JSON line on stdout (the forked-child form)."""
    r = daemon_check_result(template, layer_name, mutant_path, queries, engine, get_timeout, cmd)
    print(json.dumps(r))
    return 0


def daemon_check_result(
    template: str,
    layer_name: str,
    mutant_path: str,
    queries: list[tuple[str, int]],
    engine: str,
    get_timeout: float,
    cmd: list[str],
    mem_limit: int | None = None,
) -> dict[str, Any]:
    """Copy ``template``, put the mutant in place of ``layer_name``, start a daemon (with
    ``RLIMIT_AS`` = ``mem_limit`` if given; a forked child's own limit is inherited anyway)
    and ``get`` each query, ``get_timeout`` each. See :func:`classify_daemon_result`."""
    import trio

    from pageserver.client import Client, ConnectionLost, ServerError

    root = tempfile.mkdtemp(prefix="fzd", dir="/tmp")
    result: dict[str, Any] = {"phase": "start"}
    proc: subprocess.Popen[bytes] | None = None
    log_path = os.path.join(root, "daemon.log")
    try:
        data = os.path.join(root, "d")
        shutil.copytree(template, data)
        sock = os.path.join(root, "s.sock")
        _set_listen(Path(data, "pageserver.toml"), f"unix:{sock}")
        tl = timeline_dir(Path(data))
        shutil.copy(mutant_path, tl / layer_name)
        env = dict(os.environ, PAGESERVER_VIRTUAL_FILE_IO_ENGINE=engine)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*cmd, "run", "-D", data], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env=env, preexec_fn=_limits(mem_limit),
            )  # fmt: skip
        if not _wait_socket(sock, lambda: _reap(proc, result), 30):
            exited = _reap(proc, result)
            result.update(rc=proc.returncode, start_timeout=not exited)
            result["log"] = _read_text(log_path, 20000)
            return result
        result["phase"] = "get"

        async def gets() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            try:
                with trio.fail_after(get_timeout):
                    client = await Client.connect(f"unix:{sock}")
            except trio.TooSlowError:
                return [{"key": "", "lsn": 0, "outcome": "timeout", "message": "connect"}]
            except (ConnectionLost, ServerError) as e:
                return [{"key": "", "lsn": 0, "outcome": "lost", "message": f"connect: {e}"}]
            try:
                for key, lsn in queries:
                    q: dict[str, Any] = {"key": key, "lsn": lsn}
                    out.append(q)
                    with trio.move_on_after(get_timeout) as scope:
                        try:
                            v = await client.get(TENANT, TIMELINE, bytes.fromhex(key), lsn)
                            q["outcome"] = "ok"
                            q["len"] = None if v is None else len(v)
                        except ServerError as e:
                            q.update(outcome="error", code=e.code, message=e.message)
                        except ConnectionLost as e:
                            q.update(outcome="lost", message=str(e))
                    if scope.cancelled_caught:
                        q["outcome"] = "timeout"
                    if q["outcome"] in ("timeout", "lost"):
                        break  # the connection is no longer usable
            finally:
                await client.aclose()
            return out

        result["gets"] = []
        result["gets"] = trio.run(gets)

        hung = any(q["outcome"] == "timeout" for q in result["gets"])

        async def alive() -> bool:
            with trio.move_on_after(3 if hung else 10):
                try:
                    async with await Client.connect(f"unix:{sock}") as c:
                        await c.status()
                        return True
                except (ConnectionLost, ServerError, OSError):
                    return False
            return False

        connect_failed = bool(result["gets"][:1]) and not result["gets"][0]["key"]
        # A daemon may bind its socket, then refuse a layer while loading and exit: give it
        # time to finish exiting, and count that as a (refused) start.
        result["running_after"] = not _reap(proc, result, 10.0 if connect_failed else 0.0)
        if connect_failed and not result["running_after"]:
            result["phase"] = "start"
            result["rc"] = proc.returncode
        result["alive_after"] = result["running_after"] and trio.run(alive)
    except Exception:
        result["check_error"] = traceback.format_exc()[-3000:]
    finally:
        if proc is not None:
            _stop_daemon(proc, result, 5.0)
        if "log" not in result:
            result["log"] = _read_text(log_path, 20000)
        shutil.rmtree(root, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------
# The campaign
# ---------------------------------------------------------------------------------------


@dataclass
class Options:
    out: Path
    iterations: int = 1000
    seed: int = 0
    engine: str = "std-fs"
    daemon: bool = False
    daemon_every: int = 1
    daemon_gets: int = 12
    jobs: int = os.cpu_count() or 2
    timeout: float = 10.0
    daemon_timeout: float = 60.0
    get_timeout: float = 10.0
    mem_limit_mib: int = 1024
    rss_limit_mib: int = 512
    exec_every: int = 25
    save_per_kind_class: int = 3
    save_max: int = 60
    kinds: tuple[str, ...] = KINDS
    cmd: list[str] = field(default_factory=pageserver_command)
    progress: bool = True


@dataclass
class Record:
    """One mutant and its outcomes."""

    id: int
    kind: str
    variant: str
    seed: str
    seed_tag: str
    detail: dict[str, Any]
    path: str
    layer_name: str
    queries: list[tuple[str, int]]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: int = 0
    outcome: str = OK
    saved: str | None = None


def _queries(m: Mutant, n: int, rng: random.Random) -> list[tuple[str, int]]:
    entries = m.seed.entries
    picks = set()
    if m.target is not None:
        picks.add(m.target)
    picks.update(rng.sample(range(len(entries)), min(n, len(entries))))
    return [m.seed.query(i) for i in sorted(picks)][: n + 1]


def write_mutant(m: Mutant, where: Path) -> Path:
    """The mutant under its layer name in a directory of its own (for ``layer ls``)."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / m.seed.name
    path.write_bytes(m.data)
    return path


def cli_jobs(rec: Record, opts: Options, use_exec: bool) -> list[Job]:
    dump = ["layer", "dump", "--values", rec.path]
    ls = ["layer", "ls", str(Path(rec.path).parent)]
    jobs = []
    for tool, argv in (("dump", dump), ("ls", ls)):
        # Hung = ``--timeout`` CPU seconds (exec: plus interpreter start-up), or 20 times
        # that in wall-clock time (a child blocked without spinning; a loaded machine can
        # stretch a second of CPU a lot).
        if use_exec:
            cpu = opts.timeout + 1
            jobs.append(Job((rec.id, tool, "exec"), 20 * cpu + 10, argv=[*opts.cmd, *argv],
                            cpu_timeout=cpu))  # fmt: skip
        else:
            jobs.append(Job((rec.id, tool, "fork"), 20 * opts.timeout, fn=_cli_main,
                            args=(argv,), cpu_timeout=opts.timeout))  # fmt: skip
    return jobs


def daemon_job(rec: Record, opts: Options) -> Job:
    args = (str(opts.out / "template"), rec.layer_name, rec.path, rec.queries, opts.engine,
            opts.get_timeout, opts.cmd)  # fmt: skip
    return Job((rec.id, "daemon", "fork"), opts.daemon_timeout, fn=daemon_check, args=args,
               keep_stdout=True)  # fmt: skip


def repro_script(rec: Record, opts: Options, saved_file: Path) -> str:
    mem_kib = opts.mem_limit_mib * 1024
    ps = " ".join(opts.cmd)
    lines = [
        "#!/bin/sh",
        f"# mutant {rec.id}: {rec.kind}/{rec.variant} of {rec.seed} ({rec.seed_tag})",
        f"# outcome: {rec.outcome}",
        f"# detail: {json.dumps(rec.detail)[:500]}",
        'cd "$(dirname "$0")"',
        f"ulimit -v {mem_kib}",
        f"timeout -s KILL {int(opts.timeout)} {ps} layer dump --values '{saved_file.name}'",
        'echo "exit $?"',
        f"timeout -s KILL {int(opts.timeout)} {ps} layer ls .",
        'echo "exit $?"',
    ]
    if "daemon" in rec.runs:
        q = rec.queries[0]
        lines += [
            "# daemon: copy the seed data dir, put this file in place of the layer, then get:",
            f"#   D=$(mktemp -d); cp -r {opts.out / 'template'}/. $D/",
            f"#   cp '{saved_file.name}' $D/tenants/{TENANT}/timelines/{TIMELINE}/",
            "#   (edit listen_addr in $D/pageserver.toml if needed)",
            f"#   {ps} run -D $D &",
            f"#   {ps} get -D $D {TENANT} {TIMELINE} {q[0]} {q[1]}",
        ]
    return "\n".join(lines) + "\n"


class Campaign:
    def __init__(self, opts: Options, seeds: list[Seed]) -> None:
        self.opts = opts
        self.seeds = seeds
        self.records: dict[int, Record] = {}
        self.finished: list[Record] = []
        self.saved_counts: Counter[tuple[str, str]] = Counter()
        self.saved_total = 0
        self.rng = random.Random(opts.seed)
        self.picker = random.Random(opts.seed ^ 0x5EED)
        self.work = opts.out / "work"
        self.bad_dir = opts.out / "bad"
        self.not_applicable: Counter[str] = Counter()
        self.started = time.monotonic()

    def sample(self) -> tuple[bool, bool]:
        """(run the real executable?, also a daemon?) for the next mutant: at random, at
        rates 1/--exec-every and 1/--daemon-every (a modulus would pick the same few kinds
        out of the kinds' round robin)."""
        opts = self.opts
        use_exec = opts.exec_every > 0 and self.picker.random() * opts.exec_every < 1
        daemon = opts.daemon and self.picker.random() * max(1, opts.daemon_every) < 1
        return use_exec, daemon

    def mutants(self) -> Iterator[Mutant]:
        kinds = list(self.opts.kinds)
        produced = 0
        i = 0
        while produced < self.opts.iterations:
            kind = kinds[i % len(kinds)]
            i += 1
            try:
                m = mutate(self.seeds, kind, self.rng)
            except NotApplicable:
                self.not_applicable[kind] += 1
                if self.not_applicable[kind] > 50:
                    kinds.remove(kind)
                    if not kinds:
                        return
                continue
            produced += 1
            yield m

    def jobs(self, mutants: Iterator[Mutant] | None = None) -> Iterator[Job]:
        opts = self.opts
        for n, m in enumerate(mutants if mutants is not None else self.mutants()):
            rid = n + 1
            path = write_mutant(m, self.work / f"m{rid}")
            rec = Record(rid, m.kind, m.variant, m.seed.name, m.seed.tag, m.detail, str(path),
                         m.seed.name, _queries(m, opts.daemon_gets, self.rng))  # fmt: skip
            use_exec, with_daemon = self.sample()
            jobs = cli_jobs(rec, opts, use_exec)
            if with_daemon:
                jobs.append(daemon_job(rec, opts))
            rec.pending = len(jobs)
            self.records[rid] = rec
            yield from jobs

    def on_result(self, job: Job, res: RunResult) -> None:
        rid, tool, how = job.tag
        rec = self.records[rid]
        rss_kib = self.opts.rss_limit_mib * 1024
        if tool == "daemon":
            cls, reason = classify_daemon(res, rec.layer_name, rss_kib)
        else:
            cls, reason = classify_cli(res, rss_kib)
        rec.runs[tool] = {
            "class": cls, "reason": reason, "how": how, "rc": res.rc, "signal": res.sig,
            "elapsed": round(res.elapsed, 3), "maxrss_mib": round(res.maxrss_kib / 1024, 1),
        }  # fmt: skip
        if cls in BAD and tool != "daemon":
            rec.runs[tool]["stderr_tail"] = res.stderr[-3000:]
        elif cls in BAD:
            r = daemon_result(res) or {}
            rec.runs[tool]["daemon_log_tail"] = r.get("log", "")[-3000:]
            rec.runs[tool]["gets"] = [q for q in r.get("gets", []) if q["outcome"] != "ok"][:5]
        rec.pending -= 1
        if rec.pending == 0:
            self._finish(rec)

    def _finish(self, rec: Record) -> None:
        del self.records[rec.id]
        rec.outcome = worst([r["class"] for r in rec.runs.values()])
        mutant_dir = Path(rec.path).parent
        key = (rec.kind, rec.outcome)
        if (
            rec.outcome in BAD
            and self.saved_counts[key] < self.opts.save_per_kind_class
            and self.saved_total < self.opts.save_max
        ):
            self.saved_counts[key] += 1
            self.saved_total += 1
            dest = self.bad_dir / f"{rec.id:06d}-{rec.kind}-{rec.variant}-{rec.outcome}"
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(mutant_dir), dest)
            saved_file = dest / rec.layer_name
            repro = dest / "repro.sh"
            repro.write_text(repro_script(rec, self.opts, saved_file))
            repro.chmod(0o755)
            rec.saved = str(dest)
            (dest / "info.json").write_text(json.dumps(_record_json(rec), indent=2))
        else:
            shutil.rmtree(mutant_dir, ignore_errors=True)
        # Keep the records small: drop the mutation detail of uneventful ones.
        if rec.outcome not in BAD:
            rec.detail = {}
            rec.queries = []
        self.finished.append(rec)
        if self.opts.progress and len(self.finished) % 500 == 0:
            counts = Counter(r.outcome for r in self.finished)
            print(
                f"  {len(self.finished)} mutants, {time.monotonic() - self.started:.0f}s: "
                + ", ".join(f"{c} {counts[c]}" for c in CLASSES if counts[c]),
                file=sys.stderr,
                flush=True,
            )

    def run(self, mutants: Iterator[Mutant] | None = None) -> None:
        pool = Pool(self.opts.jobs, self.opts.mem_limit_mib * MIB, self.opts.out / "tmp")
        for job, res in pool.run(self.jobs(mutants)):
            self.on_result(job, res)

    def report(self) -> dict[str, Any]:
        recs = self.finished
        by_class = Counter(r.outcome for r in recs)
        by_kind: dict[str, Counter[str]] = defaultdict(Counter)
        by_variant: dict[str, Counter[str]] = defaultdict(Counter)
        by_tool: dict[str, Counter[str]] = defaultdict(Counter)
        ls_valid_dump_bad: Counter[str] = Counter()
        for r in recs:
            by_kind[r.kind][r.outcome] += 1
            by_variant[f"{r.kind}/{r.variant}"][r.outcome] += 1
            for tool, run in r.runs.items():
                by_tool[tool][run["class"]] += 1
            if (
                r.runs.get("ls", {}).get("class") == OK
                and r.runs.get("dump", {}).get("class") in BAD
            ):
                ls_valid_dump_bad[r.kind] += 1
        bad = [r for r in recs if r.outcome in BAD]
        return {
            "mutants": len(recs),
            "seconds": round(time.monotonic() - self.started, 1),
            "seed": self.opts.seed,
            "engine": self.opts.engine,
            "daemon": self.opts.daemon,
            "seeds": [{"name": s.name, "tag": s.tag, "size": len(s.data)} for s in self.seeds],
            "classes": {c: by_class[c] for c in CLASSES},
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "by_variant": {k: dict(v) for k, v in sorted(by_variant.items())},
            "by_tool": {k: dict(v) for k, v in sorted(by_tool.items())},
            "ls_says_valid_but_dump_bad": dict(ls_valid_dump_bad),
            "bad": len(bad),
            "saved": [r.saved for r in recs if r.saved],
            "first_bad": [_record_json(r) for r in bad[:20]],
            "out": str(self.opts.out),
        }


def _record_json(r: Record) -> dict[str, Any]:
    return {
        "id": r.id, "kind": r.kind, "variant": r.variant, "seed": r.seed, "seed_tag": r.seed_tag,
        "outcome": r.outcome, "detail": r.detail, "runs": r.runs, "queries": r.queries,
        "saved": r.saved,
    }  # fmt: skip


def print_report(rep: dict[str, Any]) -> None:
    cls = rep["classes"]
    print(f"seeds: {', '.join(s['tag'] for s in rep['seeds'])}")
    width = max(len(k) for k in rep["by_kind"]) if rep["by_kind"] else 10
    print(f"{'kind':<{width}}  " + "  ".join(f"{c:>11}" for c in CLASSES))
    for kind, counts in rep["by_kind"].items():
        print(f"{kind:<{width}}  " + "  ".join(f"{counts.get(c, 0):>11}" for c in CLASSES))
    for tool, counts in rep["by_tool"].items():
        print(f"  {tool}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    if rep["ls_says_valid_but_dump_bad"]:
        print(f"  layer ls called valid what dump choked on: {rep['ls_says_valid_but_dump_bad']}")
    for r in rep["first_bad"][:8]:
        reasons = "; ".join(f"{t}: {v['class']} {v['reason'][:120]}" for t, v in r["runs"].items()
                            if v["class"] in BAD)  # fmt: skip
        print(f"  bad #{r['id']} {r['kind']}/{r['variant']} ({r['seed_tag']}): {reasons}")
        if r["saved"]:
            print(f"      {r['saved']}/repro.sh")
    verdict = "FAIL" if rep["bad"] else "PASS"
    print(
        f"fuzz_layers: {rep['mutants']} mutants in {rep['seconds']}s: "
        + ", ".join(f"{c} {cls[c]}" for c in CLASSES)
        + f" -> {verdict} (output in {rep['out']})"
    )


# ---------------------------------------------------------------------------------------
# Manifest mode (the test suite builds mutants with hypothesis and has them run here)
# ---------------------------------------------------------------------------------------


def run_manifest(manifest: Path, opts: Options) -> dict[str, Any]:
    """Evaluate mutants already on disk. ``manifest``: a JSON list of objects with
    ``path`` (the layer file, alone in its directory), ``kind``, ``variant``, ``seed``,
    ``detail`` and ``queries``."""
    items = json.loads(manifest.read_text())
    camp = Campaign(opts, [])

    def jobs() -> Iterator[Job]:
        for n, item in enumerate(items, 1):
            rec = Record(n, item["kind"], item.get("variant", ""), item.get("seed", ""),
                         item.get("seed_tag", ""), item.get("detail", {}), item["path"],
                         Path(item["path"]).name,
                         [(q[0], q[1]) for q in item.get("queries", [])])  # fmt: skip
            use_exec, with_daemon = camp.sample()
            js = cli_jobs(rec, opts, use_exec)
            if with_daemon and rec.queries:
                js.append(daemon_job(rec, opts))
            rec.pending = len(js)
            camp.records[n] = rec
            yield from js

    pool = Pool(opts.jobs, opts.mem_limit_mib * MIB, opts.out / "tmp")
    for job, res in pool.run(jobs()):
        camp.on_result(job, res)
    return camp.report()


# ---------------------------------------------------------------------------------------
# atheris
# ---------------------------------------------------------------------------------------


def run_atheris(opts: Options, seeds: list[Seed], argv: list[str]) -> int:
    """Coverage-guided: the fuzzer's bytes pick a seed, a mutation and its randomness (or
    are spliced into the file raw); ``layer dump --values`` runs in-process. Any exception
    other than the CLI's clean exit is a finding; use libFuzzer's ``-timeout`` and
    ``-rss_limit_mb`` for hangs and blow-ups."""
    try:
        import atheris  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print(
            "fuzz_layers: atheris is not installed (pip install atheris; it has wheels for "
            "CPython on Linux x86_64, else it needs clang to build)",
            file=sys.stderr,
        )
        return 2
    # Coverage of the package only; build_parser() imports the subcommand modules.
    with atheris.instrument_imports(include=["pageserver"]):
        import pageserver.cli

        pageserver.cli.build_parser()
    from pageserver.cli import main

    work = opts.out / "atheris"
    work.mkdir(parents=True, exist_ok=True)
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        argv = [*argv, f"-artifact_prefix={work}/"]
    kinds = list(opts.kinds)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the fuzzer

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        seed = seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)]
        choice = fdp.ConsumeIntInRange(0, len(kinds))
        if choice == len(kinds):  # raw splice of the fuzzer's bytes
            at = fdp.ConsumeIntInRange(0, len(seed.data) - 1)
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
            buf = bytearray(seed.data)
            buf[at : at + len(chunk)] = chunk
            blob = bytes(buf)
        else:
            rng = random.Random(fdp.ConsumeBytes(16))
            try:
                blob = MUTATORS[kinds[choice]](seed, rng).data
            except NotApplicable:
                return
        d = work / "m"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        path = d / seed.name
        path.write_bytes(blob)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = devnull
        sys.stderr = devnull
        try:
            main(["layer", "dump", "--values", str(path)])
            main(["layer", "ls", str(d)])
        except SystemExit:
            pass
        finally:
            sys.stdout, sys.stderr = old_out, old_err

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()
    return 0


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Outcome classes and mutation kinds: see the module docstring.",
    )
    p.add_argument("--iterations", type=int, default=1000, help="mutants (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random, printed)")
    p.add_argument(
        "--engine",
        default="std-fs",
        choices=("std-fs", "trio-uring"),
        help="io engine of the daemons (seed generation, --daemon)",
    )
    p.add_argument("--daemon", action="store_true", help="also get through a daemon")
    p.add_argument(
        "--daemon-every",
        type=int,
        default=1,
        metavar="N",
        help="with --daemon: one mutant in N at random (a daemon start costs ~1 s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument(
        "--out", type=Path, default=None, help="output dir (default /tmp/fuzz-layers-<time>)"
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel children")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="a CLI run is hung after this many CPU seconds (or 20x in wall time)",
    )
    p.add_argument("--get-timeout", type=float, default=10.0, help="per daemon get, seconds")
    p.add_argument("--mem-limit-mib", type=int, default=1024, help="RLIMIT_AS of children")
    p.add_argument(
        "--rss-limit-mib", type=int, default=512, help="a peak RSS above this counts as a blow-up"
    )
    p.add_argument(
        "--exec-every",
        type=int,
        default=25,
        metavar="N",
        help="one mutant in N at random runs the real executable, not a fork (0: never)",
    )
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated mutation kinds (default all: {','.join(KINDS)})",
    )
    p.add_argument(
        "--seeds",
        type=Path,
        default=None,
        help="use the layer files in this dir as seeds (no --daemon then)",
    )
    p.add_argument("--save-max", type=int, default=60, help="bad mutants saved at most")
    p.add_argument(
        "--save-per-kind", type=int, default=3, help="bad mutants saved per (kind, outcome)"
    )
    p.add_argument(
        "--atheris",
        action="store_true",
        help="coverage-guided run with atheris; arguments after -- go to libFuzzer",
    )
    p.add_argument("--make-seeds", action="store_true", help="only generate seeds into --out")
    p.add_argument("--manifest", type=Path, default=None, help=argparse.SUPPRESS)
    if argv is None:
        argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    return p.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    out: Path = args.out or Path(tempfile.gettempdir(), time.strftime("fuzz-layers-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in MUTATORS]
    if unknown:
        print(f"fuzz_layers: unknown kinds {unknown}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    opts = Options(
        out=out.resolve(), iterations=args.iterations, seed=seed, engine=args.engine,
        daemon=args.daemon, daemon_every=args.daemon_every, jobs=args.jobs,
        timeout=args.timeout, get_timeout=args.get_timeout,
        daemon_timeout=max(60.0, 3 * args.get_timeout + 40),
        mem_limit_mib=args.mem_limit_mib, rss_limit_mib=args.rss_limit_mib,
        exec_every=args.exec_every, save_per_kind_class=args.save_per_kind,
        save_max=args.save_max, kinds=kinds, progress=not args.json,
    )  # fmt: skip
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if args.manifest is not None:
        preload_package()
        rep = run_manifest(args.manifest, opts)
        print(json.dumps(rep, indent=2) if args.json else "")
        if not args.json:
            print_report(rep)
        return 1 if rep["bad"] else 0
    t0 = time.monotonic()
    if args.seeds is not None:
        seeds = load_seeds(args.seeds)
        if args.daemon:
            print("fuzz_layers: --daemon needs generated seeds (drop --seeds)", file=sys.stderr)
            return 2
    else:
        log(f"fuzz_layers: generating seed layers with a daemon ({args.engine}) in {out} ...")
        seeds = load_seeds(generate_seeds(opts.out, args.engine, opts.cmd))
    log(f"fuzz_layers: seeds ready in {time.monotonic() - t0:.1f}s: "
        + ", ".join(s.tag for s in seeds))  # fmt: skip
    if args.make_seeds:
        return 0
    if args.atheris:
        return run_atheris(opts, seeds, extra)
    preload_package()

    def on_term(signum: int, frame: object) -> None:
        STOP.set()  # the pool stops, killing its children (and their daemons)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log(f"fuzz_layers: {opts.iterations} mutants, seed {seed}, {opts.jobs} jobs, "
        f"kinds {','.join(kinds)}")  # fmt: skip
    camp = Campaign(opts, seeds)
    camp.run()
    if STOP.requested:
        log("fuzz_layers: interrupted; reporting what finished")
    rep = camp.report()
    (opts.out / "report.json").write_text(json.dumps(rep, indent=2))
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_report(rep)
    return 1 if rep["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
