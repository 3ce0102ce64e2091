"""Conditional offload: the one helper through which every layer-writing job runs.

Why this exists (the upstream change this project follows, ``shared/seeds/000_*``):
layer-writing code is written once, as ``async`` code over ``VirtualFile``. Under the
``trio-uring`` engine its file operations really suspend on the event loop, so the job
is simply awaited. Under ``std-fs`` the very same operations are blocking syscalls:
awaiting the job on the loop would stall every other connection for the whole flush.
So under ``std-fs`` the job runs *as a whole* in one worker thread, and the thread
drives the coroutine to completion without an event loop. That works because std-fs
operations never suspend: ``coro.send(None)`` runs the job from start to
``StopIteration`` in one call. A job that does try to suspend (it used a trio
primitive) gets a clear ``RuntimeError`` thrown in at the point where it suspended, so
its clean-up code runs, and the error propagates to the caller.

Per-operation offload (what ``trio.open_file`` does) would pay a thread round trip per
write; offloading the whole job pays it once.

Cancellation. ``trio.to_thread.run_sync`` cannot interrupt a thread, and returning to a
cancelled caller while the job still runs would let it rename a layer file after the
caller gave up. Instead the caller parks with ``wait_task_rescheduled`` and an abort
callback that only *sets the job's cancel flag* and answers ``Abort.FAILED``: the caller
stays parked. The engine checks the flag before each data operation and raises
:class:`JobCancelled` there; the job's ``finally`` blocks delete its temp file; the
thread ends and reschedules the caller, which then lets trio's cancellation propagate
(by checkpointing inside its already-cancelled scope).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar, cast

import outcome
import trio

from pageserver.io._jobstate import JobCancelled, JobState, current_job, set_job
from pageserver.io.engine import IoEngine

T = TypeVar("T")

__all__ = [
    "JobCancelled",
    "cleanup_shield",
    "cooperative_checkpoint",
    "drive_to_completion",
    "on_trio_loop",
    "run_job",
]


class JobSuspendedError(RuntimeError):
    """An offloaded job tried to suspend, which only works on an event loop."""


def drive_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, without any event loop."""
    exc: BaseException | None = None
    attempts = 0
    while True:
        try:
            if exc is None:
                yielded = coro.send(None)
            else:
                yielded = coro.throw(exc)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        attempts += 1
        if attempts > 3:
            coro.close()
            raise JobSuspendedError("offloaded io job keeps suspending; gave up")
        exc = JobSuspendedError(
            "an offloaded io job tried to suspend (it awaited a trio primitive, which has no "
            f"event loop in a worker thread; it yielded {yielded!r}). Layer-writing code may "
            "only await VirtualFile/engine operations and cooperative_checkpoint()."
        )


def on_trio_loop() -> bool:
    """True on a trio run's own thread; False in an offloaded job or any plain thread.

    The one test of "may I use trio primitives here?" (waiting, sleeping, shielding).
    It is trio's own ``in_trio_task()``: trio keeps the running task in a thread-local, so
    an offloaded job's worker thread (like any thread without a trio run) has none.
    (:mod:`pageserver.failpoints` asks trio the same question directly: it is a leaf that
    ``io`` imports, so it may not import ``io``.)
    """
    return trio.lowlevel.in_trio_task()


async def cooperative_checkpoint() -> None:
    """Let other tasks run, when on the loop; nothing inside an offloaded worker thread.

    CPU-heavy loops of layer-writing jobs call this so that, under trio-uring (where the
    job runs on the loop), they do not hold the loop for the whole job.
    """
    if on_trio_loop():
        await trio.lowlevel.checkpoint()


def cleanup_shield() -> contextlib.AbstractContextManager[object]:
    """A block that runs to its end even if the caller is being cancelled.

    For clean-up code (close, unlink of a temp file) and for the commit step of a
    multi-step update (rename + fsync of the directory), which must not stop half-way. On
    the loop (trio-uring, or std-fs code outside a job) it is a shielded cancel scope. In
    an offloaded worker thread there is no trio run to shield from; there it makes the
    engine ignore the job's cancel flag until the block ends.
    """
    state = current_job()
    if state is not None and state.in_worker:
        return _suppress_job_cancel(state)
    if not on_trio_loop():  # a plain thread with no trio run: nothing cancels it
        return contextlib.nullcontext()
    return trio.CancelScope(shield=True)


@contextlib.contextmanager
def _suppress_job_cancel(state: JobState) -> Iterator[None]:
    state.shielded += 1
    try:
        yield
    finally:
        state.shielded -= 1


async def run_job(
    engine: IoEngine, fn: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """Run the async job ``fn(*args)`` the way ``engine`` wants layer writes to run.

    Called from inside a job (already in its worker thread), or from any thread without a
    trio run, it runs ``fn`` right there: so a helper that offloads itself (the crash-safe
    overwrite, a directory fsync) can be called both from the loop and from a job.
    """
    if not engine.runs_jobs_in_thread or not on_trio_loop():
        return await fn(*args)

    state = JobState(in_worker=True)
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    context = contextvars.copy_context()

    def body() -> T:
        set_job(state)
        coro = fn(*args)
        if not isinstance(coro, Coroutine):  # pragma: no cover - misuse
            raise TypeError("run_job needs an async function")
        return cast(T, drive_to_completion(coro))

    def in_thread() -> T:
        return context.run(body)

    def deliver(result: outcome.Outcome[T]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
        # Do not leave yet: the job may be in the middle of a syscall. Ask it to stop at
        # its next operation; ``deliver`` wakes us once the thread is done.
        state.cancelled.set()
        return trio.lowlevel.Abort.FAILED

    trio.lowlevel.start_thread_soon(in_thread, deliver, name="pageserver-io-job")
    try:
        result = cast(T, await trio.lowlevel.wait_task_rescheduled(abort))
    except JobCancelled:
        # The job stopped because we were cancelled: raise trio's Cancelled in our
        # (cancelled) scope. If the scope is somehow not cancelled, re-raise as is.
        await trio.lowlevel.checkpoint()
        raise
    return result
