"""Keys, LSNs and tenant/timeline ids: the vocabulary of SPEC section 1.

``Key`` subclasses ``bytes`` and ``Lsn`` subclasses ``int`` on purpose: layer writers and
B-tree code handle millions of them, and as plain ``bytes``/``int`` they compare, hash,
slice and concatenate at C speed, with no per-entry wrapper objects. The subclasses only
add validation at construction and the text forms Neon prints.

Ids are validated before anything else sees them: an id that is not exactly 32 hex digits
(``..``, ``/``, wrong length) raises :class:`InvalidId`, so it can never become part of a
file-system path.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from pageserver.errors import InvalidId

KEY_SIZE = 18
ID_SIZE = 16
MAX_LSN = (1 << 64) - 1
#: The highest LSN a record (and a timeline's ``start_lsn``) may have: a layer ends at its
#: last record's LSN + 1 (exclusive), and that end must still be a u64.
MAX_RECORD_LSN = MAX_LSN - 1
#: ``Key.MAX`` as plain bytes: the exclusive end of the key space, never a record's key.
KEY_MAX_BYTES = b"\xff" * KEY_SIZE

_KEY_STRUCT = struct.Struct(">BIIIBI")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


class Key(bytes):
    """An 18-byte key; ordering is the byte-wise ordering of the encoding.

    Fields (big-endian): ``field1:u8 field2:u32 field3:u32 field4:u32 field5:u8
    field6:u32``. ``str()`` is the 36-digit uppercase hex form used in layer names.
    """

    __slots__ = ()

    MIN: ClassVar[Key]
    MAX: ClassVar[Key]

    def __new__(cls, raw: bytes | bytearray | memoryview) -> Key:
        b = bytes.__new__(cls, raw)
        if len(b) != KEY_SIZE:
            raise ValueError(f"a key is {KEY_SIZE} bytes, got {len(b)}")
        return b

    @classmethod
    def from_fields(
        cls, field1: int, field2: int, field3: int, field4: int, field5: int, field6: int
    ) -> Key:
        return cls(_KEY_STRUCT.pack(field1, field2, field3, field4, field5, field6))

    @classmethod
    def from_int(cls, value: int) -> Key:
        """The key whose big-endian 144-bit integer value is ``value`` (tests, ranges)."""
        return cls(value.to_bytes(KEY_SIZE, "big"))

    @classmethod
    def from_hex(cls, text: str) -> Key:
        """Parse the 36-hex-digit form (either case)."""
        if len(text) != 2 * KEY_SIZE or not _HEX_RE.fullmatch(text):
            raise ValueError(f"invalid key {text!r}: expected {2 * KEY_SIZE} hex digits")
        return cls(bytes.fromhex(text))

    @property
    def fields(self) -> tuple[int, int, int, int, int, int]:
        f: tuple[int, int, int, int, int, int] = _KEY_STRUCT.unpack(self)
        return f

    def to_int(self) -> int:
        return int.from_bytes(self, "big")

    def next(self) -> Key:
        """The smallest key greater than this one (raises at ``Key.MAX``)."""
        return Key.from_int(self.to_int() + 1)

    def hex_upper(self) -> str:
        return self.hex().upper()

    __str__ = hex_upper

    def __repr__(self) -> str:
        return f"Key({self})"


Key.MIN = Key(bytes(KEY_SIZE))
Key.MAX = Key(KEY_MAX_BYTES)


class Lsn(int):
    """An unsigned 64-bit log sequence number; ``str()`` is Neon's ``{hi:X}/{lo:X}``."""

    __slots__ = ()

    def __new__(cls, value: int) -> Lsn:
        v = int.__new__(cls, value)
        if not 0 <= v <= MAX_LSN:
            raise ValueError(f"LSN out of range: {value}")
        return v

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse ``HI/LO`` (two hex numbers of at most 8 digits) or a bare hex number."""
        hi, sep, lo = text.strip().partition("/")
        if sep:
            if not (_is_hex(hi, 8) and _is_hex(lo, 8)):
                raise ValueError(f"invalid LSN {text!r}")
            return cls((int(hi, 16) << 32) | int(lo, 16))
        if not _is_hex(hi, 16):
            raise ValueError(f"invalid LSN {text!r}")
        return cls(int(hi, 16))

    @classmethod
    def from_text(cls, text: str) -> Lsn:
        """An LSN as a user writes it: a decimal number, ``0x`` hex, or Neon's ``HI/LO``
        (what the client commands and ``feed``'s JSON-lines files take)."""
        t = text.strip()
        if "/" in t:
            return cls.parse(t)
        # ASCII digits only: int() also takes "0x_1", "1_000" and other scripts' digits.
        if t[:2].lower() == "0x":
            if not _HEX_RE.fullmatch(t[2:] or "-"):
                raise ValueError(f"invalid LSN {text!r}")
            return cls(int(t[2:], 16))
        if not (t.isascii() and t.isdigit()):
            raise ValueError(f"invalid LSN {text!r}")
        return cls(int(t, 10))

    def file_hex(self) -> str:
        """The 16-digit uppercase form used in layer file names."""
        return f"{int(self):016X}"

    def __str__(self) -> str:
        return lsn_str(self)

    def __repr__(self) -> str:
        return f"Lsn({self})"


def _is_hex(text: str, max_digits: int) -> bool:
    return 0 < len(text) <= max_digits and _HEX_RE.fullmatch(text) is not None


def lsn_str(value: int) -> str:
    """Format any int LSN as ``HI/LO`` without constructing an :class:`Lsn`."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True, order=True)
class _Id:
    """16 bytes; text form is 32 lowercase hex digits (uppercase input is accepted)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != ID_SIZE:
            raise InvalidId(f"an id is {ID_SIZE} bytes")

    @classmethod
    def parse(cls, text: object) -> Self:
        return cls(bytes.fromhex(parse_id_text(text)))

    @classmethod
    def generate(cls) -> Self:
        return cls(os.urandom(ID_SIZE))

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw.hex()})"


class TenantId(_Id):
    __slots__ = ()


class TimelineId(_Id):
    __slots__ = ()



def is_id_text(text: str) -> bool:
    """Whether ``text`` is a tenant/timeline id: exactly 32 hex digits, either case."""
    return len(text) == 2 * ID_SIZE and _HEX_RE.fullmatch(text) is not None


def parse_id_text(text: object, what: str = "id") -> str:
    """The one id check: 32 hex digits (either case) -> the canonical lowercase text.

    Raises :class:`~pageserver.errors.InvalidId` (also a ``ValueError``) naming ``what``;
    the wire, the tenant manager, the client CLI and the layer-name parser all call this.
    """
    if not isinstance(text, str) or not is_id_text(text):
        shown = repr(text) if len(repr(text)) <= 50 else repr(text)[:47] + "..."
        raise InvalidId(f"invalid {what} {shown}: must be {2 * ID_SIZE} hex digits")
    return text.lower()
