"""ByteBudget.acquire is cancel-safe: a cancelled acquire holds nothing (issue 11)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pageserver.server.server import ByteBudget


async def test_cancelled_fast_path_acquire_leaks_nothing() -> None:
    budget = ByteBudget(100)
    with trio.CancelScope() as cs:
        cs.cancel()
        await budget.acquire(40)  # fits at once: the fast path
    assert cs.cancelled_caught
    assert budget.used == 0, "a cancelled acquire kept its grant"
    # A deadline that passed is the same cancellation.
    with trio.move_on_after(0):
        await budget.acquire(100)
    assert budget.used == 0
    await budget.acquire(100)  # the whole capacity is available again
    assert budget.used == 100
    budget.release(100)


async def test_uncancelled_fast_path_acquire_still_yields() -> None:
    """The fast path is still a checkpoint (a scheduling point), like every trio await.
    (Whether another task runs first at that point is up to trio's scheduler, which
    shuffles each batch: ``assert_checkpoints`` asks the question itself.)"""
    budget = ByteBudget(10)
    with trio.testing.assert_checkpoints():
        await budget.acquire(5)
    assert budget.used == 5


async def test_cancelled_queued_acquire_leaks_nothing() -> None:
    budget = ByteBudget(10)
    await budget.acquire(10)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(budget.acquire, 6)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.waiting == 3
        nursery.cancel_scope.cancel()
    assert budget.waiting == 0 and budget.used == 10
    budget.release(10)
    assert budget.used == 0


async def test_too_large_is_an_error() -> None:
    with pytest.raises(ValueError):
        await ByteBudget(10).acquire(11)
