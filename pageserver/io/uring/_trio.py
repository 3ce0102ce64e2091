"""Driving an io_uring from a trio run: one ring per run, one submitter, one reaper.

Some facts about io_uring on a trio loop
=========================================

An io_uring is two queues in memory shared with the kernel. We write submission queue
entries (SQEs) and bump the SQ tail; the kernel consumes them when we call
``io_uring_enter``; it later appends completion queue entries (CQEs), each carrying back the
64-bit ``user_data`` we put in the SQE. Everything below follows from three questions: when
do we call ``io_uring_enter``, how do we notice CQEs, and what happens to memory the kernel
may still touch when a trio task goes away.

**When to enter.** A syscall per operation would throw away the point of a ring. Trio runs
tasks in batches: every task that became runnable since the last I/O wait runs once, then
the loop polls for I/O again. So the natural unit of batching is the batch. When the first
SQE of a batch is queued we reschedule one parked system task, the *submitter*. Trio does
not run a task rescheduled during a batch until the *next* batch, so by the time the
submitter runs, every other task of this batch has had its chance to queue its SQE, and one
``io_uring_enter`` submits them all. Rescheduling a parked task costs no syscall, unlike
``TrioToken.run_sync_soon`` (which writes to the loop's wake-up socket) and unlike an
``Instrument.before_io_wait`` hook (which runs after the loop has computed its epoll
timeout, so tasks woken there could sleep until an unrelated event; see
``notes/pitfalls.md``). The submitter drains the CQ right after ``enter`` returns,
because many file operations (reads from the page cache, most buffered writes) complete
inline inside ``io_uring_enter``: their tasks are runnable again in the very next batch,
without the ring fd ever becoming readable.

**Eager submission.** Batching has a price at queue depth one: the submitter runs a
tick after the task queued its SQE, and the task resumes a tick after that, two trips
around the loop for one operation. So when a task queues an SQE into an idle ring (no
other operation queued or in flight) and no eager submission happened since the
submitter last ran, it calls ``io_uring_enter`` itself; if the operation completed
inline it takes a single ``cancel_shielded_checkpoint`` (every operation stays a
schedule point, so a loop of writes cannot starve the other tasks) and returns. The
eager submission kicks the submitter, and only the submitter's next run re-arms the
fast path, so a crowd of tasks arriving in one batch still shares one ``enter``: the
first goes eagerly, the rest batch behind it. A task whose scope is already cancelled
never takes the fast path: it parks, and the withdrawal below makes the operation not
happen, as it would without the fast path.

**Never sleep in the kernel.** ``min_complete`` is always 0. Waiting is epoll's job: the
loop waits for everything at once in one ``epoll_wait``.

**Noticing completions.** An io_uring fd is pollable: it reports readable while the CQ
is non-empty. Operations that could not complete inline are handed to the kernel's io-wq
workers (``iou-wrk-*`` threads in ``/proc/self/task``; they are the kernel's, not ours);
their completion is posted to the CQ by task work that runs in *our* thread the next time
it enters or leaves the kernel -- without ``IORING_SETUP_COOP_TASKRUN`` or
``DEFER_TASKRUN`` the kernel forces that with a signal-like notification, which
interrupts our ``epoll_wait``, runs the task work, and makes the ring fd readable, so
``epoll_wait`` (restarted transparently) returns it. That is why we set neither flag. One
system task, the *reaper*, sits in ``trio.lowlevel.wait_readable(ring_fd)`` and drains the
CQ when it fires. Only one task may wait on an fd in trio, so the reaper is the only one;
everyone else waits on their own task slot.

**Dispatch.** ``user_data`` is a counter; the in-flight table maps it to an ``_Op``
(task, result, and the objects whose memory the kernel uses). Draining pops each CQE's
entry and ``reschedule``s its task with the result. The table, not the task, owns the
buffers: a task that is cancelled, or a write-behind handle that is dropped, leaves its
entry in the table until the CQE comes, so the kernel never reads or writes memory Python
has freed or reused.

**Overflow.** The CQ is twice the SQ and we never keep more operations in flight than
the CQ has entries, so it cannot overflow in the first place; should the kernel still
report ``IORING_SQ_CQ_OVERFLOW`` (it keeps overflowed CQEs on a list under
``IORING_FEAT_NODROP``, which we require), the drain calls ``io_uring_enter`` with
``GETEVENTS`` and ``min_complete=0`` to have them copied into the ring, and drains again.

**Backpressure.** A task that finds the SQ full (256 unsubmitted SQEs this batch) or the
in-flight limit reached parks on a ``ParkingLot`` until the submitter or the reaper frees
room. That wait is cancellable: nothing has been submitted yet.

**Cancellation.** This is the part to get right, and there are two cases.

1. The SQE is still only in our memory (queued this batch, ``enter`` not called yet).
   Nobody but us has seen it, so we withdraw it: the slot is rewritten in place as a NOP
   with the same ``user_data`` (the ring has no way to take back a queued slot, so the
   NOP keeps the slot accounting simple) and the abort callback reports
   ``Abort.SUCCEEDED``. The task gets ``Cancelled`` at once and the operation never
   happened, which is exactly what trio's cancellation promises.
2. The kernel has the SQE. Now the operation may be running in an io-wq worker, writing
   into the buffer this very moment. We return ``Abort.FAILED`` -- the same choice trio
   makes for overlapped I/O on Windows -- so the task stays parked until the CQE arrives,
   then gets the result normally, and trio raises ``Cancelled`` at its next checkpoint.
   The operation did happen, the caller learns so, and no memory was released early.

We deliberately do not send ``IORING_OP_ASYNC_CANCEL`` in case 2. For the operations
this server issues (regular-file reads and writes, fsync, open, statx, rename), an
operation that reached io-wq is either queued behind others for microseconds or is
executing a file-system call that the signal the cancel sends cannot interrupt usefully:
buffered writes and fsync run to completion anyway, and one that *is* interrupted reports
a short count or ``-EINTR``, which is just a murkier way of saying "some of it happened".
So ASYNC_CANCEL would buy a shorter wait only in cases that barely exist, at the price of
a second SQE and CQE per cancellation (cancellation storms are when the ring is busiest)
and of a third result state every caller would have to reason about. The wait is bounded
by the latency of one disk operation. (``OPENAT`` is special-cased by the engine: a
cancelled open that succeeded closes its fd and raises ``Cancelled``, so the caller never
sees, and cannot leak, an fd from a cancelled open.)

**End of run.** The ring lives in a ``RunVar`` and is created on first use, so each trio
run (each test) gets its own ring and nothing outlives its run. The owning system task is
cancelled when the run's main task has finished; it then, shielded, submits whatever is
still queued and waits (on the ring fd, never blocking in the kernel) until the in-flight
table is empty -- only write-behind operations nobody awaited can be left at that point --
and only then unmaps the rings and closes the fd. ``UringDriver.aclose`` does the same
on demand, and the next operation in the run simply creates a fresh ring.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import outcome
import trio
from trio import current_effective_deadline
from trio.lowlevel import (
    Abort,
    ParkingLot,
    RaiseCancelT,
    RunVar,
    Task,
    cancel_shielded_checkpoint,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from pageserver.io.uring import _abi
from pageserver.io.uring._ring import Ring

_U32: Final = 0xFFFFFFFF
_NOP: Final = _abi.IORING_OP_NOP
_pack_sqe = _abi.SQE_STRUCT.pack_into
_Value = outcome.Value
_NEG_INF: Final = float("-inf")

DEFAULT_SQ_ENTRIES: Final = 256


@dataclass
class RingStats:
    """Counters of one ring (one trio run). Cheap ints, read by tests and benchmarks."""

    #: ``io_uring_enter`` calls (submissions and overflow flushes).
    enters: int = 0
    #: SQEs handed to the kernel.
    submitted: int = 0
    #: CQEs dispatched.
    completed: int = 0
    #: Largest number of SQEs submitted by one ``io_uring_enter``.
    max_batch: int = 0
    #: Cancellations that found their SQE not yet submitted (withdrawn as NOPs).
    cancel_withdrawn: int = 0
    #: Cancellations that found the operation in the kernel (waited for its CQE).
    cancel_in_flight: int = 0
    #: Times the kernel reported CQ overflow and we flushed its backlog.
    overflow_flushes: int = 0
    #: Times a task had to wait for SQ/CQ room.
    room_waits: int = 0


class _Op:
    """One submitted operation: the in-flight table's entry.

    ``keep`` holds whatever memory the kernel may access (buffer pins, path bytes, a
    statx buffer) until the CQE arrives; dropping the entry is what releases it.
    """

    __slots__ = ("driver", "ud", "pos", "task", "res", "keep", "done", "cancelled", "callback")

    def __init__(self, driver: UringDriver, ud: int, pos: int, keep: object) -> None:
        self.driver = driver
        self.ud = ud
        self.pos = pos
        self.task: Task | None = None
        self.res = 0
        self.keep = keep
        self.done = False
        #: Called (no arguments) by the reaper when the CQE arrives; see PendingIo.
        self.callback: Callable[[], None] | None = None
        #: True when the waiting task was cancelled while the kernel had the operation.
        self.cancelled = False

    def abort(self, raise_cancel: RaiseCancelT) -> Abort:
        drv = self.driver
        if drv._withdraw(self):
            self.task = None
            drv.stats.cancel_withdrawn += 1
            return Abort.SUCCEEDED
        self.cancelled = True
        drv.stats.cancel_in_flight += 1
        return Abort.FAILED


def _abort_failed(raise_cancel: RaiseCancelT) -> Abort:
    return Abort.FAILED


def _abort_succeeded(raise_cancel: RaiseCancelT) -> Abort:
    return Abort.SUCCEEDED


class UringDriver:
    """The ring of one trio run, with its submitter and reaper system tasks.

    Get it with :func:`current_driver`; do not construct it directly inside a run that
    already has one.
    """

    def __init__(
        self,
        sq_entries: int = DEFAULT_SQ_ENTRIES,
        *,
        cq_entries: int | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        ring = Ring(sq_entries, cq_entries=cq_entries)
        if not ring.features & _abi.IORING_FEAT_NODROP:
            ring.close()
            raise OSError(errno.ENOTSUP, "io_uring without IORING_FEAT_NODROP (Linux < 5.5)")
        self.ring = ring
        self.fd = ring.fd
        self.stats = RingStats()
        self.closing = False
        self._closed = trio.Event()
        # Hot-path copies of ring attributes (attribute loads on self are cheaper than
        # two-level loads through self.ring).
        self._sqes = ring.sqes
        self._sq_u32 = ring.sq_u32
        self._cq_u32 = ring.cq_u32
        self._cqe_u64 = ring.cqe_u64
        self._cqe_i32 = ring.cqe_i32
        self._sq_mask = ring.sq_mask
        self._cq_mask = ring.cq_mask
        self._sq_entries = ring.sq_entries
        self._sq_tail_i = ring.sq_tail_i
        self._sq_head_i = ring.sq_head_i
        self._sq_flags_i = ring.sq_flags_i
        self._cq_head_i = ring.cq_head_i
        self._cq_tail_i = ring.cq_tail_i
        self._sq_tail = ring.sq_u32[ring.sq_tail_i]
        self._sq_head = ring.sq_u32[ring.sq_head_i]
        self._unsubmitted = 0
        self._max_in_flight = max_in_flight or ring.cq_entries
        self._inflight: dict[int, _Op] = {}
        self._next_ud = 1
        self._room = ParkingLot()
        # True while the submitter is runnable (or not started / gone): do not reschedule.
        self._kicked = True
        #: May the next submission enter the kernel at once (see "Eager submission")?
        self._eager_ok = False
        self._submitter_task: Task | None = None
        self._cancel_scope = trio.CancelScope()

    # ----------------------------------------------------------------------------------
    # Submission side

    def has_room(self) -> bool:
        return (
            self._unsubmitted < self._sq_entries
            and len(self._inflight) < self._max_in_flight
            and not self.closing
        )

    def push(
        self,
        opcode: int,
        sqe_flags: int,
        fd: int,
        off: int,
        addr: int,
        length: int,
        op_flags: int,
        keep: object,
    ) -> _Op:
        """Queue one SQE (caller checked :meth:`has_room`) and return its table entry."""
        ud = self._next_ud
        self._next_ud = ud + 1
        pos = self._sq_tail
        _pack_sqe(
            self._sqes,
            (pos & self._sq_mask) << 6,
            opcode,
            sqe_flags,
            0,
            fd,
            off,
            addr,
            length,
            op_flags,
            ud,
            0,
            0,
            0,
            0,
            0,
        )
        self._sq_tail = (pos + 1) & _U32
        self._unsubmitted += 1
        op = _Op(self, ud, pos, keep)
        self._inflight[ud] = op
        if not self._kicked:
            self._kicked = True
            assert self._submitter_task is not None
            reschedule(self._submitter_task)
        return op

    async def wait(self, op: _Op) -> int:
        """Park until ``op``'s CQE arrives; returns ``cqe.res`` (negative errno on error).

        Cancellation: see the module docstring. If the SQE had not been submitted yet,
        ``Cancelled`` is raised here and the operation never happens; otherwise this
        returns the real result and ``op.cancelled`` is set.
        """
        if (
            self._eager_ok
            and self._unsubmitted == 1
            and len(self._inflight) == 1
            and current_effective_deadline() != _NEG_INF
        ):
            # The idle-ring fast path (see "Eager submission" in the module docstring).
            self._eager_ok = False
            self._flush()
            if not self._kicked:
                self._kicked = True
                assert self._submitter_task is not None
                reschedule(self._submitter_task)
            if op.done:
                await cancel_shielded_checkpoint()
                return op.res
        op.task = current_task()
        res: int = await wait_task_rescheduled(op.abort)
        return res

    async def wait_uncancellable(self, op: _Op) -> int:
        """Like :meth:`wait`, but a cancellation never interrupts it (write-behind)."""
        if op.done:
            return op.res
        op.task = current_task()
        res: int = await wait_task_rescheduled(_abort_failed)
        return res

    def _withdraw(self, op: _Op) -> bool:
        """Turn ``op``'s SQE into a NOP if the kernel has not consumed it yet."""
        if ((op.pos - self._sq_head) & _U32) >= self._unsubmitted:
            return False
        _pack_sqe(
            self._sqes, (op.pos & self._sq_mask) << 6, _NOP, 0, 0, -1, 0, 0, 0, 0, op.ud,
            0, 0, 0, 0, 0,
        )  # fmt: skip
        op.keep = None  # the kernel will never see the old addresses
        return True

    async def wait_for_room(self) -> None:
        self.stats.room_waits += 1
        await self._room.park()

    def _flush(self) -> None:
        """Submit everything queued, then drain the CQ (inline completions)."""
        n = self._unsubmitted
        if n:
            self._sq_u32[self._sq_tail_i] = self._sq_tail  # publish our SQEs
            stats = self.stats
            while n:
                r = self.ring.enter(n, 0, 0)
                stats.enters += 1
                if r < 0:
                    if r == -errno.EINTR:
                        continue
                    if r in (-errno.EAGAIN, -errno.EBUSY):
                        # Kernel short of memory or holding a CQ backlog: the rest goes
                        # out on the next kick (the drain below re-kicks if needed).
                        break
                    raise OSError(-r, f"io_uring_enter: {os.strerror(-r)}")
                if r == 0:
                    break
                stats.submitted += r
                if r > stats.max_batch:
                    stats.max_batch = r
                n -= r
            self._sq_head = self._sq_u32[self._sq_head_i]
            self._unsubmitted = (self._sq_tail - self._sq_head) & _U32
        self._drain()

    # ----------------------------------------------------------------------------------
    # Completion side

    def _drain(self) -> None:
        """Dispatch every CQE in the ring (loops until the tail stops moving)."""
        cq = self._cq_u32
        head_i = self._cq_head_i
        tail_i = self._cq_tail_i
        head = cq[head_i]
        tail = cq[tail_i]
        if head != tail:
            mask = self._cq_mask
            u64 = self._cqe_u64
            i32 = self._cqe_i32
            pop = self._inflight.pop
            count = 0
            while head != tail:
                while head != tail:
                    idx = head & mask
                    op = pop(u64[idx << 1])
                    res = i32[(idx << 2) | 2]
                    head = (head + 1) & _U32
                    op.res = res
                    op.done = True
                    op.keep = None
                    task = op.task
                    if task is not None:
                        op.task = None
                        reschedule(task, _Value(res))
                    if op.callback is not None:
                        callback, op.callback = op.callback, None
                        callback()
                    count += 1
                cq[head_i] = head  # hand the slots back before looking again
                tail = cq[tail_i]
            self.stats.completed += count
        if self._sq_u32[self._sq_flags_i] & _abi.IORING_SQ_CQ_OVERFLOW:
            self.stats.overflow_flushes += 1
            self.stats.enters += 1
            self.ring.enter(0, 0, _abi.IORING_ENTER_GETEVENTS)
            self._drain()
            return
        if len(self._room):
            free = min(
                self._sq_entries - self._unsubmitted,
                self._max_in_flight - len(self._inflight),
            )
            if free > 0:
                self._room.unpark(count=free)
        if self._unsubmitted and not self._kicked and not self.closing:
            self._kicked = True
            assert self._submitter_task is not None
            reschedule(self._submitter_task)

    # ----------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> None:
        trio.lowlevel.spawn_system_task(self._owner, name="pageserver-uring-driver")

    async def _owner(self) -> None:
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._submitter, name="pageserver-uring-submitter")
                    nursery.start_soon(self._reaper, name="pageserver-uring-reaper")
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown()

    async def _submitter(self) -> None:
        self._submitter_task = current_task()
        while True:
            self._kicked = False
            self._eager_ok = True
            self._flush()
            await wait_task_rescheduled(_abort_succeeded)

    async def _reaper(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            self._drain()

    async def _teardown(self) -> None:
        self.closing = True
        self._kicked = True  # the submitter is gone; we flush ourselves from here on
        if _RUN_DRIVER.get() is self:
            _RUN_DRIVER.set(None)
        try:
            while True:
                self._flush()
                if not self._inflight:
                    break
                await trio.lowlevel.wait_readable(self.fd)
        finally:
            # Tasks parked for room on this ring retry on a fresh one.
            self._room.unpark_all()
            if not self._inflight:
                trio.lowlevel.notify_closing(self.fd)
                self.ring.close()
            # else: an unexpected error left operations in the kernel. Leaking the ring
            # (and the buffers its table references) is the only memory-safe choice.
            self._closed.set()

    async def aclose(self) -> None:
        """Submit what is queued, wait for every in-flight operation, close the ring."""
        if _RUN_DRIVER.get() is self:
            _RUN_DRIVER.set(None)
        self.closing = True
        self._cancel_scope.cancel()
        await self._closed.wait()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)


_RUN_DRIVER: RunVar[UringDriver | None] = RunVar("pageserver_uring_driver", default=None)


def current_driver(**kwargs: Any) -> UringDriver:
    """The ring of the current trio run, created (and its tasks started) on first use."""
    drv = _RUN_DRIVER.get()
    if drv is None or drv.closing:
        drv = UringDriver(**kwargs)
        drv.start()
        _RUN_DRIVER.set(drv)
    return drv


def existing_driver() -> UringDriver | None:
    """The current run's ring if one was created (and is not closing), else ``None``."""
    drv = _RUN_DRIVER.get()
    if drv is None or drv.closing:
        return None
    return drv


async def driver_with_room(**kwargs: Any) -> UringDriver:
    """The slow path of every submission: a ring that can take one more SQE now."""
    while True:
        drv = current_driver(**kwargs)
        if drv.has_room():
            return drv
        await drv.wait_for_room()
