"""One io_uring instance: setup, the three mappings, the opcode probe, teardown.

This module knows nothing about trio. It owns the ring fd and the shared memory, and
exposes typed memoryviews over that memory that the driver (``_trio``) reads and writes
directly on its hot path. The layout facts it relies on:

* ``io_uring_setup`` tells us, in ``io_uring_params.sq_off``/``cq_off``, at which byte
  offsets inside each mapping the kernel keeps the head, tail, mask, flags and so on. We
  never hardcode those offsets: they are the kernel's business and it reports them.
* There are three regions: the SQ ring (head, tail, flags, and the index array), the CQ
  ring (head, tail, overflow counter, and the CQEs themselves), and the SQE array. With
  ``IORING_FEAT_SINGLE_MMAP`` (Linux 5.4+) the two rings share one mapping, which must be
  as large as the larger of the two; we handle both cases.
* The SQ index array is an indirection (ring slot -> SQE index) that lets applications
  submit SQEs out of order. We never do, so we fill it with the identity once, at setup,
  and after that a submission is just "fill SQE ``tail & mask``, bump the tail".
* Ownership of the four counters: we write the SQ tail and the CQ head; the kernel writes
  the SQ head and the CQ tail. We only submit from inside ``io_uring_enter`` (no SQPOLL),
  so the kernel reads our SQ tail, and consumes SQEs, only while our own thread is in that
  syscall: between two ``enter`` calls an SQE we filled is ours to rewrite (the driver
  uses this to withdraw a cancelled, not yet submitted operation).

Memory ordering. The kernel publishes the CQ tail with a store-release after filling the
CQE. On x86_64 (TSO) our plain loads see the CQE once they see the tail. On aarch64 the
CPython interpreter executes a great many loads, stores and a few atomic reference-count
operations between our load of the tail and our load of the CQE, but nothing that is
formally an acquire barrier; in practice we always read the tail right after a syscall
returned (``io_uring_enter`` or ``epoll_wait``), which is a full barrier, and the CQEs that
the kernel posted before that syscall are the ones we read. A CQE posted concurrently by an
io-wq worker after the syscall is the only theoretical exposure, and only on weakly
ordered CPUs; it is listed as a known gap rather than papered over.
"""

from __future__ import annotations

import ctypes
import errno
import os

from pageserver.io.uring import _abi, _syscalls

_U32_MASK = 0xFFFFFFFF


class Ring:
    """An io_uring instance with its rings mapped. Not thread-safe; not trio-aware.

    Attributes named ``*_i`` are indices into the ``sq_u32``/``cq_u32`` views (byte
    offset // 4), precomputed so the driver pays one memoryview subscript per access.
    """

    def __init__(
        self,
        entries: int = 256,
        *,
        cq_entries: int | None = None,
        flags: int = _abi.IORING_SETUP_CLAMP | _abi.IORING_SETUP_SUBMIT_ALL,
    ) -> None:
        self.fd = -1
        self._maps: list[tuple[int, int]] = []
        self._views: list[memoryview] = []
        params = _abi.IoUringParams()
        params.flags = flags
        if cq_entries is not None:
            params.flags |= _abi.IORING_SETUP_CQSIZE
            params.cq_entries = cq_entries
        try:
            fd = _syscalls.io_uring_setup(entries, ctypes.addressof(params))
        except OSError as e:
            # SUBMIT_ALL is 5.18+; anything older says EINVAL to an unknown flag.
            if e.errno != errno.EINVAL or not params.flags & _abi.IORING_SETUP_SUBMIT_ALL:
                raise
            saved = params.flags & ~_abi.IORING_SETUP_SUBMIT_ALL
            ctypes.memset(ctypes.addressof(params), 0, ctypes.sizeof(params))
            params.flags = saved
            params.cq_entries = cq_entries or 0
            fd = _syscalls.io_uring_setup(entries, ctypes.addressof(params))
        self.fd = fd
        try:
            self._map(params)
        except BaseException:
            self.close()
            raise

    def _map(self, p: _abi.IoUringParams) -> None:
        self.features = int(p.features)
        self.setup_flags = int(p.flags)
        self.sq_entries = int(p.sq_entries)
        self.cq_entries = int(p.cq_entries)
        sq_size = p.sq_off.array + self.sq_entries * 4
        cq_size = p.cq_off.cqes + self.cq_entries * _abi.CQE_SIZE
        if self.features & _abi.IORING_FEAT_SINGLE_MMAP:
            size = max(sq_size, cq_size)
            sq_addr = _syscalls.mmap_ring(self.fd, size, _abi.IORING_OFF_SQ_RING)
            self._maps.append((sq_addr, size))
            cq_addr = sq_addr
            sq_size = cq_size = size
        else:
            sq_addr = _syscalls.mmap_ring(self.fd, sq_size, _abi.IORING_OFF_SQ_RING)
            self._maps.append((sq_addr, sq_size))
            cq_addr = _syscalls.mmap_ring(self.fd, cq_size, _abi.IORING_OFF_CQ_RING)
            self._maps.append((cq_addr, cq_size))
        sqes_size = self.sq_entries * _abi.SQE_SIZE
        sqes_addr = _syscalls.mmap_ring(self.fd, sqes_size, _abi.IORING_OFF_SQES)
        self._maps.append((sqes_addr, sqes_size))

        sq_bytes = self._view(_syscalls.memory_view(sq_addr, sq_size))
        cq_bytes = (
            sq_bytes if cq_addr == sq_addr else self._view(_syscalls.memory_view(cq_addr, cq_size))
        )
        self.sq_u32 = self._view(sq_bytes.cast("I"))
        self.cq_u32 = self.sq_u32 if cq_bytes is sq_bytes else self._view(cq_bytes.cast("I"))
        so, co = p.sq_off, p.cq_off
        self.sq_head_i = so.head // 4
        self.sq_tail_i = so.tail // 4
        self.sq_flags_i = so.flags // 4
        self.sq_dropped_i = so.dropped // 4
        self.sq_mask = self.sq_u32[so.ring_mask // 4]
        self.cq_head_i = co.head // 4
        self.cq_tail_i = co.tail // 4
        self.cq_overflow_i = co.overflow // 4
        self.cq_mask = self.cq_u32[co.ring_mask // 4]
        # Identity SQ index array: ring slot i always names SQE i (see module docstring).
        array_i = so.array // 4
        for i in range(self.sq_entries):
            self.sq_u32[array_i + i] = i
        cqes = self._view(_syscalls.memory_view(cq_addr + co.cqes, self.cq_entries * _abi.CQE_SIZE))
        #: CQE i: user_data is ``cqe_u64[2*i]``, res is ``cqe_i32[4*i + 2]``.
        self.cqe_u64 = self._view(cqes.cast("Q"))
        self.cqe_i32 = self._view(cqes.cast("i"))
        #: The SQE array, written with ``_abi.SQE_STRUCT.pack_into(sqes, i * 64, ...)``.
        self.sqes = self._view(_syscalls.memory_view(sqes_addr, sqes_size))

    def _view(self, mv: memoryview) -> memoryview:
        self._views.append(mv)
        return mv

    # ----------------------------------------------------------------------------------

    def probe(self) -> frozenset[int]:
        """The opcodes this kernel supports (``IORING_REGISTER_PROBE``)."""
        pr = _abi.IoUringProbe()
        _syscalls.io_uring_register(
            self.fd, _abi.IORING_REGISTER_PROBE, ctypes.addressof(pr), _abi.PROBE_OPS
        )
        n = min(int(pr.hdr.ops_len), _abi.PROBE_OPS)
        return frozenset(
            int(pr.ops[i].op) for i in range(n) if pr.ops[i].flags & _abi.IO_URING_OP_SUPPORTED
        )

    def enter(self, to_submit: int, min_complete: int = 0, flags: int = 0) -> int:
        """``io_uring_enter`` on this ring; negative errno on failure (see _syscalls)."""
        return _syscalls.io_uring_enter(self.fd, to_submit, min_complete, flags)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Release the views, unmap, close the fd. Idempotent.

        The caller must have waited for every in-flight operation: closing the fd makes
        the kernel cancel what it can, but the buffers those operations point at are the
        caller's, and nothing here keeps them alive.
        """
        # Derived (cast) views were appended after their parents: release newest first,
        # since a parent refuses to release while a cast of it is alive.
        while self._views:
            self._views.pop().release()
        while self._maps:
            addr, size = self._maps.pop()
            _syscalls.munmap(addr, size)
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
