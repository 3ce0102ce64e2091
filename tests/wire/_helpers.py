"""Shared by the example-based wire tests: ids, a key, and the Value encodings of SPEC section 4."""

from __future__ import annotations

import struct
from typing import Any

import msgpack

T = "0123456789abcdef0123456789abcdef"
TL = "fedcba9876543210fedcba9876543210"
KEY = bytes(range(18))


def img(data: bytes) -> bytes:
    return struct.pack(">IQ", 0, len(data)) + data


def pg(rec: bytes, will_init: int = 0) -> bytes:
    return struct.pack(">IIBQ", 1, 0, will_init, len(rec)) + rec


def trec(append: str, clear: int = 0, will_init: int = 0, only_if: str | None = None) -> bytes:
    a = append.encode()
    out = struct.pack(">IIQ", 1, 8, len(a)) + a + bytes((clear, will_init))
    if only_if is None:
        return out + b"\x00"
    o = only_if.encode()
    return out + b"\x01" + struct.pack(">Q", len(o)) + o


def payload(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
