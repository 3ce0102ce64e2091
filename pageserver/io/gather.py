"""Gathered writes: one file range whose bytes lie in many places of memory.

Why. A flush writes each value of a frozen layer once more, now in key order, out of the
ephemeral file (mapped: :class:`~pageserver.tenant.ephemeral_file.MappedFile`), each
behind a blob header. Packed into a block first, every byte of a layer is copied twice in
this process: by Python (numpy, or a slice per value) into the block, holding the GIL,
then by the kernel into the page cache. For large values (8 KiB page images) the first
copy is the flush's main cost on the thread that runs it: the event loop under
trio-uring, a worker that holds the GIL under std-fs. A :class:`Gather` names the pieces
instead (an ``iovec`` array: header, value, header, value...), and the engine hands the
whole array to the kernel in one vectored write (``pwritev``, ``IORING_OP_WRITEV``): the
kernel's copy is the only one, made in an io-wq worker under trio-uring and with the GIL
released under std-fs.

Memory safety. The kernel reads the addresses in the array, not Python objects: a
:class:`Gather` keeps the objects that own that memory (``owners``) alive, and whoever
writes it keeps the :class:`Gather` until the write completed (the buffered writer's
in-flight table, as for a borrowed buffer). The owners must not change those bytes
meanwhile: a finished ephemeral file's mapping never does.

This module does not import numpy (only its callers make arrays): importing numpy starts
its BLAS threads, and nothing in :mod:`pageserver.io` may start a thread under
trio-uring (``tests/io/test_uring_strace.py``).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: Pieces per vectored write (``IOV_MAX`` on Linux): an engine writes at most this many
#: at once and reports a short write; the caller writes the rest (:meth:`Gather.tail`).
IOV_MAX = 1024


class Gather:
    """Bytes to write back to back from ``iov``'s pieces: rows ``(address, length)``.

    ``owners``: the objects whose memory the addresses point into (kept alive with the
    gather). Reading it back (:meth:`tobytes`, slicing) is for the rare paths that need
    the bytes themselves: a read of bytes still in flight, a write done again after a
    full disk, an engine without vectored writes.
    """

    __slots__ = ("iov", "nbytes", "_owners")

    def __init__(self, iov: npt.NDArray[np.uint64], owners: tuple[object, ...]) -> None:
        if iov.dtype.str != "<u8" or iov.ndim != 2 or iov.shape[1] != 2 or not iov.flags.c_contiguous:
            raise ValueError("a gather's iov is a contiguous (n, 2) array of native u64")
        if not iov[:, 1].all():
            # No empty pieces: a vectored write of only empty ones returns 0, which a
            # writer takes for a failing disk.
            iov = iov[iov[:, 1] != 0]
        self.iov = iov
        self.nbytes = int(iov[:, 1].sum())
        self._owners = owners

    def __len__(self) -> int:
        return self.nbytes

    @property
    def address(self) -> int:
        """Where the ``struct iovec`` array is (two ``u64`` per piece, as the kernel's)."""
        return int(self.iov.ctypes.data)

    @property
    def count(self) -> int:
        """Pieces."""
        return len(self.iov)

    def tail(self, done: int) -> Gather:
        """The gather without its first ``done`` bytes (after a short write)."""
        if done <= 0:
            return self
        ends = self.iov[:, 1].cumsum()
        i = int(ends.searchsorted(done, side="right"))
        rest = self.iov[i:].copy()
        if len(rest):
            skip = done - (int(ends[i - 1]) if i else 0)
            rest[0, 0] += skip
            rest[0, 1] -= skip
        return Gather(rest, self._owners)

    @property
    def owners(self) -> tuple[object, ...]:
        """The objects kept alive for the memory the pieces point into."""
        return self._owners

    @staticmethod
    def concat(first: Gather, second: Gather) -> Gather:
        """``first``'s bytes, then ``second``'s (owners kept once each)."""
        import numpy as np

        owners = tuple({id(o): o for o in first._owners + second._owners}.values())
        return Gather(np.concatenate((first.iov, second.iov)), owners)

    def bytes_in(self, pieces: int) -> int:
        """Bytes of the first ``pieces`` pieces."""
        return int(self.iov[:pieces, 1].sum())

    def head(self, n: int) -> Gather:
        """The gather's first ``n`` bytes (0 < ``n`` <= its length): the pieces up to the
        one byte ``n - 1`` is in, that one cut short."""
        if not 0 < n <= self.nbytes:
            raise ValueError(f"head of {n} bytes of a {self.nbytes}-byte gather")
        ends = self.iov[:, 1].cumsum()
        i = int(ends.searchsorted(n, side="left"))
        rows = self.iov[: i + 1].copy()
        rows[-1, 1] -= int(ends[i]) - n
        return Gather(rows, self._owners)

    def copy_into(self, start: int, n: int, dst: bytearray, at: int) -> None:
        """``dst[at : at + n] = self[start : start + n]``, one ``memmove`` per piece, with no
        intermediate ``bytes`` (how a buffered writer tops its buffer up from a gather)."""
        if n <= 0:
            return
        if start < 0 or start + n > self.nbytes or at < 0 or at + n > len(dst):
            raise ValueError(f"copy of {n} bytes from {start} to {at} out of range")
        rows = self.tail(start).head(n).iov.tolist()  # the pieces of the range, exactly
        anchor = ctypes.c_char.from_buffer(dst)  # pins dst (no resize) while it lives
        try:
            to = ctypes.addressof(anchor) + at
            memmove = ctypes.memmove
            for address, length in rows:
                memmove(to, address, length)
                to += length
        finally:
            del anchor

    def tobytes(self) -> bytes:
        return b"".join(ctypes.string_at(a, n) for a, n in self.iov.tolist() if n)

    def __getitem__(self, s: slice) -> bytes:
        start, stop, step = s.indices(self.nbytes)
        if step != 1:
            raise ValueError("a gather is read in contiguous ranges only")
        if stop <= start:
            return b""
        return self.tail(start).head(stop - start).tobytes()
