"""Instruments for tests about *where* I/O happens: a recording engine, a thread-call
counter, and a 1 ms ticker that measures the event loop's responsiveness."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from pageserver.io import Gather, StdFsEngine


class RecordingEngine(StdFsEngine):
    """std-fs that notes (operation, thread id, path) of every open/read/write/fsync."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def _note(self, op: str, fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = "?"
        self.calls.append((op, threading.get_ident(), path))

    @property
    def threads(self) -> list[int]:
        return [tid for _op, tid, _path in self.calls]

    async def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = await super().open(path, flags, mode)
        self._note("open", fd)
        return fd

    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        self._note("write", fd)
        return await super().write_at(fd, data, offset)

    async def write_gather_at(self, fd: int, gather: Gather, offset: int) -> int:
        self._note("write", fd)
        return await super().write_gather_at(fd, gather, offset)

    async def read_at(self, fd: int, buf: bytearray | memoryview, offset: int) -> int:
        self._note("read", fd)
        return await super().read_at(fd, buf, offset)

    async def fsync(self, fd: int) -> None:
        self._note("fsync", fd)
        await super().fsync(fd)


@contextmanager
def count_thread_calls() -> Iterator[list[int]]:
    """Count ``trio.lowlevel.start_thread_soon`` calls inside the block (one-element list)."""
    count = [0]
    original = trio.lowlevel.start_thread_soon

    def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    trio.lowlevel.start_thread_soon = counting  # type: ignore[assignment]
    try:
        yield count
    finally:
        trio.lowlevel.start_thread_soon = original  # type: ignore[assignment]


class Ticker:
    """Sleeps 1 ms at a time on the loop until stopped; records ticks and the longest gap."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0
        self._stop = False

    async def run(self) -> None:
        last = trio.current_time()
        while not self._stop:
            await trio.sleep(0.001)
            now = trio.current_time()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self.ticks += 1

    def stop(self) -> None:
        self._stop = True


@contextmanager
def no_new_python_threads() -> Iterator[None]:
    """Assert that the block starts no Python thread (the kernel's ``iou-*`` workers, which
    show up in /proc/self/task too, are allowed)."""
    before = {t.ident for t in threading.enumerate()}
    tasks_before = set(os.listdir("/proc/self/task"))
    yield
    assert {t.ident for t in threading.enumerate()} == before
    names = []
    for tid in set(os.listdir("/proc/self/task")) - tasks_before:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            pass
    assert all(n.startswith("iou-") for n in names), names
