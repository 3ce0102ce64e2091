"""Framing (SPEC section 5): a 4-byte big-endian length ``N``, then ``N`` bytes of msgpack.

:class:`FrameDecoder` is the incremental framer both sides use (the server through
:class:`~pageserver.wire.ServerConnection`, the client through
:class:`~pageserver.wire.ReplyDecoder`). It never holds more than one incomplete frame, and
rejects an oversized frame from its header alone, before buffering any of its payload.
:func:`encode_frame` is the one place a length prefix is written.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import msgpack
import numpy as np

from pageserver.config import DEFAULT_MAX_FRAME_BYTES
from pageserver.wire.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from 3.12

__all__ = [
    "BUSY",
    "CLOSED",
    "DEFAULT_MAX_FRAME_BYTES",
    "DIRECT_FRAME_BYTES",
    "HEADER_LEN",
    "MAX_ALLOWED_FRAME",
    "NEED_DATA",
    "Frame",
    "FrameDecoder",
    "Sentinel",
    "encode_frame",
    "encode_frame_parts",
]


HEADER_LEN: Final = 4

#: Frames at least this large are read into a buffer of their own (see
#: :meth:`FrameDecoder.direct_view`) and handed over without a copy.
DIRECT_FRAME_BYTES: Final = 64 * 1024

MAX_ALLOWED_FRAME: Final = 0xFFFFFFFF  # what a 4-byte length can express


class Sentinel(enum.Enum):
    """Non-event results of ``next_event`` (an Enum so mypy can narrow on ``is``)."""

    NEED_DATA = "NEED_DATA"
    """Nothing complete yet: feed more bytes."""
    CLOSED = "CLOSED"
    """Nothing more will ever come out: the stream ended or the connection must close."""
    BUSY = "BUSY"
    """A step of work on a large request was done (``ServerConnection.next_event(
    stepwise=True)``): let other tasks run, then ask again; nothing to read meanwhile."""


NEED_DATA: Final = Sentinel.NEED_DATA
CLOSED: Final = Sentinel.CLOSED
BUSY: Final = Sentinel.BUSY


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame's payload (the msgpack bytes, without the length prefix)."""

    payload: bytes | memoryview
    """A read-only ``memoryview`` for a frame read through :meth:`FrameDecoder.direct_view`:
    the buffer it was read into, handed over (the decoder keeps no reference to it, so
    nothing ever writes into it again); ``bytes`` otherwise. The view's ``.obj`` (a numpy
    array) is read-only too: nothing reached from the frame can change it."""


class FrameDecoder:
    """Incremental framer: ``feed`` bytes, then call ``next_event`` until ``NEED_DATA``.

    ``next_event`` returns a :class:`Frame`, ``NEED_DATA``, ``CLOSED`` (after
    :meth:`feed_eof` once the buffer is drained, and forever after ``frame_too_large``), or a
    :class:`ProtocolError`:

    * ``bad_frame`` for ``N == 0``: the 4 header bytes are skipped and decoding continues
      with the next frame (the connection survives, as SPEC section 5 says);
    * ``frame_too_large`` for ``N > max_frame_bytes``, decided from the header alone: the
      buffer is dropped, later input is discarded unbuffered, and the decoder is closed.

    Memory bound: the *incomplete* tail of the buffer never exceeds ``max_frame_bytes + 4``
    bytes. A caller that reads only after ``NEED_DATA`` and at most :attr:`room` bytes at a
    time therefore never has more than ``max_frame_bytes + 4`` bytes buffered in total.

    Large frames (at least :data:`DIRECT_FRAME_BYTES`) may skip the stream buffer: a
    reader that asks for :meth:`direct_view` once the header is in gets the rest of the
    frame's own buffer to read into (then :meth:`commit`), and the frame is handed over in
    that buffer. A reader that only ever calls :meth:`feed` sees no difference.
    """

    __slots__ = ("_array", "_buf", "_closed", "_eof", "_fill", "_frame", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if not 1 <= max_frame_bytes <= MAX_ALLOWED_FRAME:
            raise ValueError(f"max_frame_bytes must be in 1..{MAX_ALLOWED_FRAME}")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._closed = False
        self._eof = False
        # The head frame's own payload buffer once :meth:`direct_view` made one, and how
        # much of it is filled; ``_buf`` then holds only bytes that came after the frame.
        self._frame: memoryview | None = None
        self._array: np.ndarray | None = None  # _frame's owner, made read-only at hand-over
        self._fill = 0

    @property
    def closed(self) -> bool:
        """True once ``frame_too_large`` was reported: nothing more will be decoded."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes held, not yet returned as frames.

        While the head frame has a buffer of its own (:meth:`direct_view`) its 4 header
        bytes still count, as they did in the stream buffer: the count is the same whichever
        way the bytes came in, so :attr:`room` and a caller's ``head_frame_bytes -
        buffered`` do not change meaning.
        """
        if self._frame is not None:
            return HEADER_LEN + self._fill + len(self._buf)
        return len(self._buf)

    @property
    def room(self) -> int:
        """How many bytes may be fed now without exceeding ``max_frame_bytes + 4`` buffered.

        At least 1 whenever ``next_event`` just returned ``NEED_DATA``; 0 once closed.
        """
        if self._closed or self._eof:
            return 0
        return max(0, self.max_frame_bytes + HEADER_LEN - self.buffered)

    @property
    def head_frame_bytes(self) -> int:
        """Total size (header included) of the frame at the head of the buffer, or 0.

        0 while fewer than 4 bytes are buffered, once closed, and for a length that will
        be rejected (0 or above ``max_frame_bytes``). A server with a global memory budget
        uses it to reserve a whole frame at once, so a connection never waits for budget
        in the middle of a frame it was allowed to start (no hold-and-wait deadlock).
        """
        if self._closed:
            return 0
        if self._frame is not None:
            return HEADER_LEN + len(self._frame)
        buf = self._buf
        if len(buf) < HEADER_LEN:
            return 0
        n = int.from_bytes(buf[:HEADER_LEN], "big")
        return HEADER_LEN + n if 0 < n <= self.max_frame_bytes else 0

    def feed(self, data: Buffer) -> None:
        """Append received bytes. Ignored once closed (a rejected frame is not buffered)."""
        if self._closed or self._eof:
            return
        frame = self._frame
        if frame is None:
            self._buf += data
            return
        # The head frame has its own buffer: fill it first, the rest goes after it. Cast
        # to bytes: any buffer is accepted above (``bytearray +=``), whatever its format.
        fill = self._fill
        with memoryview(data) as raw, raw.cast("B") as mv:
            take = min(len(mv), len(frame) - fill)
            frame[fill : fill + take] = mv[:take]
            self._fill = fill + take
            if take < len(mv):
                self._buf += mv[take:]

    def direct_view(self) -> memoryview | None:
        """The unfilled rest of the head frame's own buffer, to read into directly (then
        :meth:`commit` the count): one copy less than reading into a buffer of one's own
        and :meth:`feed` ing it, and none when the frame is handed over. ``None`` unless the
        head frame's header is in, its length is valid and at least
        :data:`DIRECT_FRAME_BYTES`, and it is incomplete (then every buffered byte is
        part of it): ``None``, not an empty view, once it is full.

        The buffer is made here, on the first call, not when the header arrives: a server
        asks only once it holds the frame's reservation, so a connection that waits for
        budget keeps nothing but what it buffered. It comes from ``numpy.empty``: a
        ``bytearray(n)`` would be zero-filled first (CPython memsets it), a pass over the
        whole frame for bytes that are all overwritten before anyone sees them (a frame
        is handed over only when full). The view handed out is writable: keep it no
        longer than the read, since the frame it belongs to is handed over once filled.
        """
        if self._closed or self._eof:
            return None
        frame = self._frame
        if frame is None:
            buf = self._buf
            have = len(buf)
            if have < HEADER_LEN:
                return None
            n = int.from_bytes(buf[:HEADER_LEN], "big")
            if not DIRECT_FRAME_BYTES <= n <= self.max_frame_bytes or have >= HEADER_LEN + n:
                return None
            array = np.empty(n, np.uint8)
            frame = array.data.cast("B")
            with memoryview(buf) as mv:
                frame[: have - HEADER_LEN] = mv[HEADER_LEN:]
            buf.clear()
            self._frame = frame
            self._array = array
            self._fill = have - HEADER_LEN
        elif self._fill >= len(frame):
            return None  # full, waiting for next_event to hand it over
        return frame[self._fill :]

    def commit(self, n: int) -> None:
        """``n`` bytes were written at the start of the last :meth:`direct_view`."""
        frame = self._frame
        if frame is None or not 0 <= n <= len(frame) - self._fill:
            raise ValueError(f"commit({n}) does not fit the last direct_view")
        self._fill += n

    def feed_eof(self) -> None:
        """The peer finished sending: complete frames still come out, then ``CLOSED``."""
        self._eof = True

    def next_event(self) -> Frame | ProtocolError | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]:
        """Return the next complete frame or framing error, without blocking."""
        if self._closed:
            return CLOSED
        frame = self._frame
        if frame is not None:
            if self._fill < len(frame):
                return CLOSED if self._eof else NEED_DATA
            # Handed over: the decoder forgets it, so nothing writes into it again. The
            # array goes read-only too: the view's ``.obj`` is a way to it that
            # ``toreadonly`` does not close. (Views exported before stay writable: the
            # decoder's ``frame`` is dropped here, and direct_view's end with the read.)
            array = self._array
            assert array is not None
            array.flags.writeable = False
            self._frame = None
            self._array = None
            self._fill = 0
            return Frame(frame.toreadonly())
        buf = self._buf
        have = len(buf)
        if have < HEADER_LEN:
            return CLOSED if self._eof else NEED_DATA
        n = int.from_bytes(buf[:HEADER_LEN], "big")
        if n == 0:
            del buf[:HEADER_LEN]
            return ProtocolError(ErrorCode.BAD_FRAME, "frame length 0 (must be at least 1)")
        if n > self.max_frame_bytes:
            self._closed = True
            buf.clear()
            return ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame length {n} exceeds max_frame_bytes {self.max_frame_bytes}",
            )
        end = HEADER_LEN + n
        if have < end:
            return CLOSED if self._eof else NEED_DATA
        with memoryview(buf) as mv:
            payload = mv[HEADER_LEN:end].tobytes()  # one copy; the slice view dies here
        del buf[:end]  # bytearray drops a prefix without moving the rest (amortised O(1))
        return Frame(payload)


def encode_frame(obj: object) -> bytes:
    """Pack any msgpack-able object as one frame (length prefix + payload).

    ``bytes`` become msgpack ``bin``, ``str`` become ``str``. Raises ``TypeError`` for
    objects msgpack cannot pack (a caller bug, not client input).
    """
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return len(payload).to_bytes(HEADER_LEN, "big") + payload


#: ``bytes`` values at least this long are left out of line by :func:`encode_frame_parts`.
OUT_OF_LINE_BYTES: Final = 64 * 1024


def _bin_header(n: int) -> bytes:
    """The msgpack ``bin`` header of an ``n``-byte value (what ``packb`` writes before it)."""
    if n < 0x100:
        return bytes((0xC4, n))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def encode_frame_parts(
    obj: Mapping[str, object], out_of_line: int = OUT_OF_LINE_BYTES
) -> list[bytes]:
    """The frame :func:`encode_frame` makes of the map ``obj``, as a list of buffers whose
    concatenation is exactly those bytes, with no copy of large values.

    Every top-level ``bytes`` value of at least ``out_of_line`` bytes is a part of its own:
    the very object given, not a copy (its ``bin`` header ends the part before it). A
    ``put`` of 8 KiB pages is then sent with ``sendmsg`` straight from the caller's columns,
    instead of being copied twice (``packb`` of the whole map, then the length prefix) before
    the kernel copies it once more.
    """
    parts: list[bytes] = []
    cur = bytearray(_map_header(len(obj)))
    total = 0
    for k, v in obj.items():
        cur += msgpack.packb(k, use_bin_type=True)
        if type(v) is bytes and len(v) >= out_of_line:
            cur += _bin_header(len(v))
            parts.append(bytes(cur))
            parts.append(v)
            total += len(cur) + len(v)
            cur = bytearray()
        else:
            cur += msgpack.packb(v, use_bin_type=True)
    if cur or not parts:
        parts.append(bytes(cur))
        total += len(cur)
    parts[0] = total.to_bytes(HEADER_LEN, "big") + parts[0]
    return parts
