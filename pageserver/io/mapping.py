"""Read-only shared file mappings made with ``mmap(2)`` itself, through ctypes.

Why not Python's ``mmap.mmap``: given a descriptor it ``fstat``s it and keeps a ``dup`` of
it for as long as the mapping lives (Python 3.13's ``trackfd=False`` is the way out; we
run on 3.11). During a flush that was a descriptor outside VirtualFile's bounded slot
table (``max_file_descriptors`` exceeded by one per mapped file), and under trio-uring a
``newfstatat``, an ``fcntl(F_DUPFD_CLOEXEC)`` and a ``close`` on the event loop that were
not ring submissions (found by a SPEC section 6 audit). ``mmap(2)`` needs neither: the
mapping holds its own reference to the open file, so the descriptor can be closed, or its
slot reused, right after the call. What remains outside the ring is the ``mmap``/
``madvise``/``munmap`` of the mapping itself, which is memory management, not file I/O.

Lifetime: the mapping is unmapped when the last reference to its :class:`FileMapping`
goes, and every array from :meth:`FileMapping.array` holds one (through the ctypes array
it is a view of). So a view that outlives its owner's close (the flush's
``MappedFile.close``; say, a view in the traceback of a failed flush) stays valid, and the
memory goes with the last view, as with ``mmap.mmap``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["FileMapping", "map_readonly_fd"]

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64,
]  # fmt: skip
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_madvise = _libc.madvise
_madvise.restype = ctypes.c_int
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _oserror() -> OSError:
    e = ctypes.get_errno()
    return OSError(e, os.strerror(e))


class FileMapping:
    """``length`` bytes of a file mapped ``PROT_READ``/``MAP_SHARED`` at ``address``."""

    __slots__ = ("address", "length", "__weakref__")

    def __init__(self, address: int, length: int) -> None:
        self.address = address
        self.length = length

    def array(self) -> npt.NDArray[np.uint8]:
        """The mapped bytes as a read-only ``uint8`` array (a view: no copy); it keeps the
        mapping alive."""
        # numpy is imported here, not with the module: importing it starts its BLAS
        # threads, and pageserver.io is imported by processes (the strace tests' children)
        # that must start no thread.
        import numpy as np

        raw: Any = (ctypes.c_ubyte * self.length).from_address(self.address)
        raw.mapping = self  # the view's base holds the mapping
        arr = np.frombuffer(raw, np.uint8)
        arr.flags.writeable = False
        return arr

    def madvise(self, advice: int, start: int = 0, length: int | None = None) -> None:
        """``madvise`` of ``[start, start + length)`` (``start`` page-aligned; the whole
        mapping by default)."""
        if length is None:
            length = self.length - start
        if start < 0 or length < 0 or start + length > self.length or start % mmap.PAGESIZE:
            raise ValueError(f"madvise range {start}+{length} outside a {self.length}-byte mapping")
        if _madvise(self.address + start, length, advice) != 0:
            raise _oserror()

    def __del__(self) -> None:
        _munmap(self.address, self.length)


def map_readonly_fd(fd: int, length: int) -> FileMapping:
    """The first ``length`` (> 0) bytes of the open file ``fd``, mapped read-only and
    shared; ``fd`` may be closed as soon as this returns."""
    if length <= 0:
        raise ValueError("a mapping needs a positive length")
    address = _mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _MAP_FAILED:
        raise _oserror()
    return FileMapping(address, length)
