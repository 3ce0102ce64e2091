"""The Value stored for a (key, lsn), in Neon's bincode encoding (SPEC section 1).

Bincode here means big-endian, fixed-width integers, ``u32`` enum tags, ``u64`` length
prefixes for byte strings and strings, ``u8`` booleans (only 0 or 1) and ``u8`` option
tags. Decoding is strict (unknown tags, bad booleans, invalid UTF-8 and trailing bytes are
all rejected with :class:`BadValue`): what a client sends is decoded once at ingest and
must mean exactly one thing.

Delta layers store the encoded bytes verbatim; :func:`value_will_init` reads the
``will_init`` flag straight from the encoding so the writer need not decode every value.

The Test record redo (:func:`apply_test_redo`, :func:`materialize`) is Neon's
``apply_neon.rs`` behaviour for ``NeonWalRecord::Test``, the only redo this server has.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

TAG_IMAGE = 0
TAG_WAL_RECORD = 1
WAL_TAG_POSTGRES = 0
WAL_TAG_TEST = 8

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U32U64 = struct.Struct(">IQ")
_U32U32U8U64 = struct.Struct(">IIBQ")


class BadValue(ValueError):
    """A value that does not decode (error code ``bad_value``)."""

    code = "bad_value"


class RedoError(Exception):
    """Reconstruction failed (error code ``redo_failed``)."""

    code = "redo_failed"


class RedoUnsupported(RedoError):
    """Reconstruction needs a Postgres record (error code ``redo_unsupported``)."""

    code = "redo_unsupported"


@dataclass(frozen=True, slots=True)
class Image:
    """A full materialised value (e.g. an 8 KiB page)."""

    data: bytes

    @property
    def will_init(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class PostgresRecord:
    """A Postgres WAL record, stored and returned verbatim (no Postgres redo here)."""

    will_init: bool
    rec: bytes


@dataclass(frozen=True, slots=True)
class TestRecord:
    """Neon's ``NeonWalRecord::Test``: clear and/or append, optionally conditional."""

    __test__ = False  # not a pytest test class

    append: str
    clear: bool = False
    will_init: bool = False
    only_if: str | None = None


Value = Image | PostgresRecord | TestRecord
WalRecord = PostgresRecord | TestRecord


def encode_value(value: Value) -> bytes:
    if isinstance(value, Image):
        return _U32U64.pack(TAG_IMAGE, len(value.data)) + value.data
    if isinstance(value, PostgresRecord):
        return (
            _U32U32U8U64.pack(TAG_WAL_RECORD, WAL_TAG_POSTGRES, value.will_init, len(value.rec))
            + value.rec
        )
    if isinstance(value, TestRecord):
        append = value.append.encode("utf-8")
        parts = [
            _U32.pack(TAG_WAL_RECORD),
            _U32.pack(WAL_TAG_TEST),
            _U64.pack(len(append)),
            append,
            bytes((int(value.clear), int(value.will_init))),
        ]
        if value.only_if is None:
            parts.append(b"\x00")
        else:
            only_if = value.only_if.encode("utf-8")
            parts += [b"\x01", _U64.pack(len(only_if)), only_if]
        return b"".join(parts)
    raise TypeError(f"not a Value: {value!r}")


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise BadValue("value truncated")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        v: int = _U32.unpack(self.take(4))[0]
        return v

    def u64(self) -> int:
        v: int = _U64.unpack(self.take(8))[0]
        return v

    def boolean(self) -> bool:
        b = self.u8()
        if b > 1:
            raise BadValue(f"invalid bool byte {b}")
        return b == 1

    def byte_string(self) -> bytes:
        n = self.u64()
        if n > len(self.buf) - self.pos:
            raise BadValue("value truncated")
        return self.take(n)

    def string(self) -> str:
        try:
            return self.byte_string().decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadValue(f"invalid UTF-8 in string: {e}") from None


def decode_value(raw: bytes | bytearray | memoryview) -> Value:
    """Decode a Value, raising :class:`BadValue` on anything but an exact encoding."""
    c = _Cursor(bytes(raw))
    tag = c.u32()
    value: Value
    if tag == TAG_IMAGE:
        value = Image(c.byte_string())
    elif tag == TAG_WAL_RECORD:
        wtag = c.u32()
        if wtag == WAL_TAG_POSTGRES:
            will_init = c.boolean()
            value = PostgresRecord(will_init, c.byte_string())
        elif wtag == WAL_TAG_TEST:
            append = c.string()
            clear = c.boolean()
            will_init = c.boolean()
            opt = c.u8()
            if opt == 0:
                only_if = None
            elif opt == 1:
                only_if = c.string()
            else:
                raise BadValue(f"invalid option tag {opt}")
            value = TestRecord(append, clear, will_init, only_if)
        else:
            raise BadValue(f"unsupported WAL record tag {wtag}")
    else:
        raise BadValue(f"unknown value tag {tag}")
    if c.pos != len(c.buf):
        raise BadValue(f"{len(c.buf) - c.pos} trailing bytes after value")
    return value


def value_will_init(raw: bytes | bytearray | memoryview) -> bool:
    """``will_init`` of an encoded value without decoding it (the writer's hot path).

    Assumes ``raw`` is a valid encoding (validated at ingest); only the tag bytes and the
    flag are looked at.
    """
    if raw[3] == TAG_IMAGE and raw[0] == raw[1] == raw[2] == 0:
        return True
    wtag = raw[7]
    if wtag == WAL_TAG_POSTGRES:
        return raw[8] == 1
    if wtag == WAL_TAG_TEST:
        n: int = _U64.unpack_from(raw, 8)[0]
        return bool(raw[16 + n + 1] == 1)
    return False


def image_bytes(raw: bytes) -> bytes | None:
    """The image payload of an encoded Image value, or ``None`` for a WAL record."""
    if raw[:4] == b"\x00\x00\x00\x00":
        return raw[12:]
    return None


def check_ingest(value: Value) -> None:
    """Ingest-time rules beyond decoding: a ``will_init`` Test record must also ``clear``."""
    if isinstance(value, TestRecord) and value.will_init and not value.clear:
        raise BadValue("a will_init Test record must also have clear")


def apply_test_redo(image: bytes, rec: TestRecord) -> bytes:
    """Apply one Test record to ``image`` (Neon's ``apply_neon.rs`` semantics)."""
    if rec.will_init and not rec.clear:
        raise RedoError("init record must be clear")
    page = b"" if rec.clear else image
    if rec.only_if is not None and page != rec.only_if.encode("utf-8"):
        raise RedoError("the current image does not match only_if; cannot append")
    return page + rec.append.encode("utf-8")


def materialize(base: bytes | None, records: Iterable[Value]) -> bytes:
    """Reconstruct a value from an optional base image and the records above it.

    ``records`` are oldest first. An Image replaces the page; a ``will_init`` record starts
    from an empty page; anything else needs a page to apply to, else :class:`RedoError`.
    A Postgres record anywhere in ``records`` raises :class:`RedoUnsupported`, before any
    other redo error (SPEC section 5 lists ``redo_unsupported`` first: the history cannot
    be reconstructed here whatever else is wrong with it).
    """
    records = list(records)
    if any(isinstance(rec, PostgresRecord) for rec in records):
        raise RedoUnsupported("reconstruction needs Postgres WAL redo")
    page = base
    for rec in records:
        if isinstance(rec, Image):
            page = rec.data
        else:
            assert not isinstance(rec, PostgresRecord)
            if rec.will_init:
                page = b""
            elif page is None:
                raise RedoError("no image or will_init record starts the history")
            page = apply_test_redo(page, rec)
    if page is None:
        raise RedoError("no image or will_init record starts the history")
    return page
