"""A lean, allocation-free validator for the Value encoding of SPEC section 1.

Why this exists: ``put`` must reject a whole batch with ``bad_value`` before anything is
applied, and a batch can hold thousands of records, so the check runs once per record on
the ingest hot path. Decoding every value into objects (what ``pageserver.layers.value``
does) is more than the protocol needs: it only has to know *whether* the bytes are exactly
one valid encoding. This module answers that with ``struct.unpack_from`` on the original
buffer, no slicing and no exceptions on the success path.

The protocol (``put`` batch checks) and the timeline (whole-batch validation of the Python
API) both use it; ``pageserver/layers/value.py`` is the full codec with the redo. The
differential test in ``tests/test_protocol_fuzz.py`` keeps the two in agreement.

Encoding recap (bincode: big-endian, fixed-width ints, ``u8`` bools that must be 0 or 1,
``u64`` length prefixes, ``u8`` option tags)::

    u32 0  Image      u64 len, bytes
    u32 1  WalRecord  u32 0  Postgres  u8 will_init, u64 len, bytes
                      u32 8  Test      u64 len, utf8 append, u8 clear, u8 will_init,
                                       u8 0 | u8 1 u64 len utf8 only_if

Ingest rule on top of the encoding: a Test record with ``will_init`` must also have
``clear`` (Neon's ``apply_neon.rs`` asserts it).
"""

from __future__ import annotations

import struct

from pageserver.layers.value import TAG_IMAGE, TAG_WAL_RECORD, WAL_TAG_POSTGRES, WAL_TAG_TEST

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U32U64 = struct.Struct(">IQ")


def _utf8_ok(b: bytes, start: int, end: int) -> bool:
    """Whether ``b[start:end]`` is valid UTF-8 (bincode's ``String`` demands it)."""
    if b.isascii():  # whole-buffer fast path: the common case, and no copy needed
        return True
    try:
        b[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def validate_value(b: bytes, *, ingest: bool = True) -> str | None:
    """Return why ``b`` is not exactly one valid Value encoding, or ``None`` if it is.

    The returned message is short and never echoes client bytes, so it can go into an
    error reply as is.
    """
    n = len(b)
    if n < 12:
        # The smallest valid value is an empty Image (12 bytes); anything shorter is cut
        # short unless its tag is already wrong, which is the more useful message.
        if n >= 4:
            tag = _U32.unpack_from(b)[0]
            if tag != TAG_IMAGE and tag != TAG_WAL_RECORD:
                return f"unknown value tag {tag}"
        return "value truncated"
    tag, length = _U32U64.unpack_from(b)
    if tag == TAG_IMAGE:
        end = 12 + length
        if end == n:
            return None
        return "value truncated" if end > n else f"{n - end} trailing bytes after value"
    if tag != TAG_WAL_RECORD:
        return f"unknown value tag {tag}"
    wtag = length >> 32  # the first four bytes of the "u64" are the record tag
    if wtag == WAL_TAG_POSTGRES:
        # u32 1, u32 0, u8 will_init, u64 len, bytes
        if n < 17:
            return "value truncated"
        if b[8] > 1:
            return f"invalid bool byte {b[8]} in will_init"
        end = 17 + _U64.unpack_from(b, 9)[0]
        if end == n:
            return None
        return "value truncated" if end > n else f"{n - end} trailing bytes after value"
    if wtag != WAL_TAG_TEST:
        return f"unsupported WAL record tag {wtag}"
    # u32 1, u32 8, u64 len, utf8 append, u8 clear, u8 will_init, u8 opt [, u64 len, utf8]
    if n < 16:
        return "value truncated"
    start = 16
    end = start + _U64.unpack_from(b, 8)[0]
    if end + 3 > n:
        return "value truncated"
    if not _utf8_ok(b, start, end):
        return "invalid UTF-8 in Test record append"
    clear, will_init, opt = b[end], b[end + 1], b[end + 2]
    if clear > 1:
        return f"invalid bool byte {clear} in clear"
    if will_init > 1:
        return f"invalid bool byte {will_init} in will_init"
    pos = end + 3
    if opt == 1:
        if pos + 8 > n:
            return "value truncated"
        start = pos + 8
        pos = start + _U64.unpack_from(b, pos)[0]
        if pos > n:
            return "value truncated"
        if not _utf8_ok(b, start, pos):
            return "invalid UTF-8 in Test record only_if"
    elif opt != 0:
        return f"invalid option tag {opt}"
    if pos != n:
        return f"{n - pos} trailing bytes after value"
    if ingest and will_init and not clear:
        return "Test record with will_init must also have clear"
    return None
