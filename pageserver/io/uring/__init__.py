"""A pure-Python (ctypes) io_uring binding, driven from the trio event loop.

No compiled extension and no liburing: the kernel ABI is transcribed in ``_abi``, the
syscalls go through ``libc.syscall`` (``_syscalls``), the rings are mapped with libc
``mmap`` (``_ring``), and ``_trio`` runs one ring per trio run with a batching submitter
and a single reaper. The io engine built on it is
:class:`pageserver.io.uring.engine.UringEngine`.

Public surface:

- :class:`Ring`: one io_uring instance (setup, mappings, opcode probe, close); trio-free.
- :class:`UringDriver`, :func:`current_driver`, :func:`existing_driver`: the current
  trio run's ring and its tasks; :class:`RingStats` its counters.
- the ABI structures (ctypes) and a few constants, re-exported for tests and tools.
"""

from pageserver.io.uring._abi import (
    IORING_FEAT_NODROP,
    IORING_FEAT_SINGLE_MMAP,
    OP_NAMES,
    IoCqringOffsets,
    IoSqringOffsets,
    IoUringCqe,
    IoUringParams,
    IoUringProbe,
    IoUringProbeHeader,
    IoUringProbeOp,
    IoUringSqe,
    Statx,
)
from pageserver.io.uring._ring import Ring
from pageserver.io.uring._trio import RingStats, UringDriver, current_driver, existing_driver

__all__ = [
    "IORING_FEAT_NODROP",
    "IORING_FEAT_SINGLE_MMAP",
    "OP_NAMES",
    "IoCqringOffsets",
    "IoSqringOffsets",
    "IoUringCqe",
    "IoUringParams",
    "IoUringProbe",
    "IoUringProbeHeader",
    "IoUringProbeOp",
    "IoUringSqe",
    "Ring",
    "RingStats",
    "Statx",
    "UringDriver",
    "current_driver",
    "existing_driver",
]
