"""``IoContext.remove_tree``: a directory tree removed through the engine, as one job.

What is observed: the tree is gone and nothing a symlink points to is touched (both
engines); under std-fs every unlink and rmdir runs in a worker thread, none on the
event loop's thread; under trio-uring none is a Python ``os`` call at all (they are
io_uring operations); and a tenant detach removes its directory that way.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from pageserver.config import RemoteStorageConfig
from pageserver.errors import TenantNotFound
from pageserver.io import IoContext, create_engine, on_trio_loop
from pageserver.io import context as context_mod
from tests.conftest import require_engine
from tests.helpers.tenant import TENANT, TIMELINE, image, key, manager
from tests.remote.test_attach import rconfig


def make_tree(root: Path, outside: Path) -> int:
    """A tenant-like tree under ``root`` (files, nested and empty directories, a symlink
    to ``outside`` and a dangling one); returns how many entries it holds."""
    outside.mkdir()
    (outside / "keep").write_bytes(b"not ours")
    tl = root / "timelines" / "t1"
    tl.mkdir(parents=True)
    (root / "timelines" / "empty").mkdir()
    (root / "config-v1").write_bytes(b"x")
    for i in range(5):
        (tl / f"layer-{i}").write_bytes(bytes(4096 * (i + 1)))
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to(root / "nowhere")
    return sum(1 for _ in root.rglob("*"))


async def test_remove_tree_removes_everything_and_follows_no_symlink(
    io_ctx: IoContext, tmp_path: Path
) -> None:
    root = tmp_path / "tenant"
    assert make_tree(root, tmp_path / "outside") == 11
    await io_ctx.remove_tree(str(root))
    assert not os.path.lexists(root)
    assert (tmp_path / "outside" / "keep").read_bytes() == b"not ours"
    # A missing path is not an error (a leftover may be gone already).
    await io_ctx.remove_tree(str(root))


async def test_remove_tree_refuses_a_symlink(io_ctx: IoContext, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"1")
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(OSError, match="symbolic link"):
        await io_ctx.remove_tree(str(tmp_path / "alias"))
    assert (tmp_path / "real" / "f").read_bytes() == b"1"


async def remove_with_os_calls_replaced(
    kind: str, root: Path, monkeypatch: pytest.MonkeyPatch, replace: Callable[[Any], Any]
) -> None:
    """``remove_tree(root)`` on a fresh ``kind`` context, with ``os.unlink`` and
    ``os.rmdir`` replaced by ``replace(real)`` while it runs."""
    ctx = IoContext(create_engine(kind))
    try:
        monkeypatch.setattr(os, "unlink", replace(os.unlink))
        monkeypatch.setattr(os, "rmdir", replace(os.rmdir))
        await ctx.remove_tree(str(root))
        monkeypatch.undo()
    finally:
        await ctx.aclose()


async def test_std_fs_removes_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    calls: list[tuple[str, bool]] = []

    def recording(real: Any) -> Any:
        def call(path: str, *a: object, **kw: object) -> None:
            calls.append((path, threading.get_ident() == loop_thread))
            real(path, *a, **kw)

        return call

    root = tmp_path / "tenant"
    entries = make_tree(root, tmp_path / "outside")
    await remove_with_os_calls_replaced("std-fs", root, monkeypatch, recording)
    assert not os.path.lexists(root)
    assert len(calls) == entries + 1  # every entry, then the root
    assert [p for p, on_loop in calls if on_loop] == []


async def test_uring_removes_with_no_unlink_syscall_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_engine("trio-uring")

    def refusing(real: Any) -> Any:
        def call(path: str, *a: object, **kw: object) -> None:
            raise AssertionError(f"os call for {path}: trio-uring removes through the ring")

        return call

    root = tmp_path / "tenant"
    make_tree(root, tmp_path / "outside")
    await remove_with_os_calls_replaced("trio-uring", root, monkeypatch, refusing)
    assert not os.path.lexists(root)


async def test_detach_removes_the_tenant_directory_off_the_loop(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detached tenant's directory (layers, metadata, config) goes through
    ``remove_tree``: gone afterwards, and under std-fs no unlink on the loop's thread."""
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    real_unlink = os.unlink

    def unlink(path: str, *a: object, **kw: object) -> None:
        if threading.get_ident() == loop_thread:
            on_loop.append(path)
        real_unlink(path, *a, **kw)  # type: ignore[arg-type]

    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    async with manager(engine_kind, tmp_path / "ps", rconfig(remote)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        for lsn in range(1, 4):
            await mgr.put(TENANT, TIMELINE, [(key(lsn), lsn, image(b"v" * 100))])
            await mgr.flush(TENANT, TIMELINE)
        tenant_dir = tmp_path / "ps" / "tenants" / TENANT
        assert len(list(tenant_dir.rglob("*"))) > 5
        monkeypatch.setattr(os, "unlink", unlink)
        await mgr.detach_tenant(TENANT)
        monkeypatch.undo()
        assert not tenant_dir.exists()
        assert mgr.status() == []
    assert on_loop == []


async def test_remove_tree_goes_past_an_error_and_raises_it(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry that cannot be removed stops nothing else: it (and the directories
    holding it) stay, everything else goes, then its error is raised."""
    root = tmp_path / "tenant"
    make_tree(root, tmp_path / "outside")
    real = io_ctx.engine.unlink
    stuck = str(root / "timelines" / "t1" / "layer-2")

    async def unlink(path: str) -> None:
        if path == stuck:
            raise PermissionError(13, "refused by the test", path)
        await real(path)

    monkeypatch.setattr(io_ctx.engine, "unlink", unlink)
    with pytest.raises(PermissionError, match="refused by the test"):
        await io_ctx.remove_tree(str(root))
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert left == ["timelines", "timelines/t1", "timelines/t1/layer-2"]


async def test_remove_tree_runs_to_its_end_when_cancelled(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while removing ``first``, the removal still fsyncs the directory (a
    cancellable operation on both engines: a std-fs job stops at its next data operation
    once cancelled, a trio-uring open/fsync is a checkpoint) and removes the whole tree:
    a tenant directory is never left half-removed by a cancelled caller."""
    root = tmp_path / "tenant"
    for d in range(3):
        (root / f"t{d}").mkdir(parents=True)
        for i in range(20):
            (root / f"t{d}" / f"f{i}").write_bytes(b"x")
    (root / "config-v1").write_bytes(b"c")
    real = io_ctx.engine.unlink
    first, cancelled = threading.Event(), threading.Event()

    async def unlink(path: str) -> None:
        first.set()
        if on_trio_loop():  # trio-uring: the job runs on the loop
            while not cancelled.is_set():
                await trio.sleep(0)
        else:  # std-fs: in the job's worker thread
            assert cancelled.wait(10)
        await real(path)

    monkeypatch.setattr(io_ctx.engine, "unlink", unlink)
    scope = trio.CancelScope()

    async def remove() -> None:
        with scope:
            await io_ctx.remove_tree(str(root), first="config-v1")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(remove)
        while not first.is_set():
            await trio.sleep(0)
        scope.cancel()
        cancelled.set()
    assert not os.path.lexists(root)


async def test_remove_tree_goes_past_a_directory_it_cannot_list(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tenant"
    for d in ("a", "b", "c"):
        (root / d).mkdir(parents=True)
        (root / d / "f").write_bytes(b"1")
    (root / "config-v1").write_bytes(b"1")
    # The directory listed first is the one that cannot be listed: all the rest comes
    # after it.
    stuck = next(name for name in os.listdir(root) if name != "config-v1")
    real = os.scandir

    def scandir(path: str) -> Any:
        if str(path) == str(root / stuck):
            raise PermissionError(13, "refused by the test", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError, match="refused by the test"):
        await io_ctx.remove_tree(str(root))
    monkeypatch.undo()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [stuck, f"{stuck}/f"]


async def test_remove_tree_first_fsync_eio_is_fatal(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory fsync after ``first`` goes through the context's: an EIO is fatal
    (the process aborts), as for every directory fsync, not an error a caller may log."""
    root = tmp_path / "tenant"
    root.mkdir()
    (root / "config-v1").write_bytes(b"1")
    (root / "layer").write_bytes(b"1")

    async def fsync_dir(path: str) -> None:
        raise OSError(errno.EIO, "injected", path)

    class Fatal(Exception):
        pass

    def fatal(op: str, path: str, exc: OSError) -> None:
        raise Fatal(op, path, exc.errno)

    monkeypatch.setattr(io_ctx.engine, "fsync_dir", fsync_dir)
    monkeypatch.setattr(context_mod, "fatal_io_error", fatal)
    with pytest.raises(Fatal) as info:
        await io_ctx.remove_tree(str(root), first="config-v1")
    assert info.value.args == ("fsync", str(root), errno.EIO)
    assert sorted(os.listdir(root)) == ["layer"]  # nothing after first was removed


async def test_a_detach_stopped_half_way_never_brings_the_tenant_back(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detached copy's config-v1 goes first: when nothing after it can be removed
    (here every later unlink fails), the leftover is not a tenant at the next start
    (loading it would claim a new generation and fence the pageserver the tenant moved
    to); startup removes it."""
    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    tenant_dir = tmp_path / "ps" / "tenants" / TENANT
    async with manager(engine_kind, tmp_path / "ps", rconfig(remote)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [(key(1), 1, image(b"v"))])
        await mgr.flush(TENANT, TIMELINE)
        layer = next(p for p in tenant_dir.rglob("*__*"))
        real = mgr.ctx.engine.unlink
        refused: list[str] = []

        async def unlink(path: str) -> None:
            if not (tenant_dir / "config-v1").exists():
                refused.append(path)
                raise PermissionError(13, "refused by the test", path)
            await real(path)

        monkeypatch.setattr(mgr.ctx.engine, "unlink", unlink)
        await mgr.detach_tenant(TENANT)
        monkeypatch.undo()
        assert str(layer) in refused and str(tenant_dir / "generation") in refused
        assert layer.exists() and not (tenant_dir / "config-v1").exists()
    async with manager(engine_kind, tmp_path / "ps", rconfig(remote)) as mgr:
        assert mgr.status() == []
        assert not tenant_dir.exists()


async def test_detach_waits_for_the_timelines_background_tasks(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background task still finishing a shielded step after its cancellation (a
    compaction's commit) is done before the directory goes: nothing is written into a
    directory being removed, and the detach leaves none behind."""
    from pageserver.tenant import timeline as timeline_mod

    events: list[str] = []

    async def gc_loop(self: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                # Give a removal that did not wait the time to reach this directory
                # (its metadata gone: listed already), then add a file to it.
                metadata = Path(self.dir) / "metadata"
                for _ in range(50):
                    if not metadata.exists():
                        break
                    await trio.sleep(0.005)
                (Path(self.dir) / "late-layer").write_bytes(b"x")
                events.append("late write")

    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    tenant_dir = tmp_path / "ps" / "tenants" / TENANT
    async with manager(engine_kind, tmp_path / "ps", rconfig(remote)) as mgr:
        await mgr.create_tenant(TENANT)
        monkeypatch.setattr(timeline_mod.Timeline, "gc_loop", gc_loop)
        await mgr.create_timeline(TENANT, TIMELINE)
        await trio.sleep(0.01)  # the background tasks are running
        await mgr.detach_tenant(TENANT)
        events.append("detached")
        assert not tenant_dir.exists()
    assert events == ["late write", "detached"]


async def test_no_timeline_or_config_change_gets_in_during_a_detach(
    engine_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create_timeline or set_tenant_config arriving while the tenant is being detached
    waits for the detach, then finds no tenant (before: a timeline created in the middle
    of it, or a config-v1 written back into a directory being removed)."""
    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    tenant_dir = tmp_path / "ps" / "tenants" / TENANT
    async with manager(engine_kind, tmp_path / "ps", rconfig(remote)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        in_detach, go_on = trio.Event(), trio.Event()
        real_wait = mgr._wait_uploads

        async def wait_uploads(*a: Any) -> None:
            in_detach.set()
            await go_on.wait()
            await real_wait(*a)

        monkeypatch.setattr(mgr, "_wait_uploads", wait_uploads)
        refused: list[str] = []

        async def expect_not_found(name: str, fn: Any, *a: Any) -> None:
            with pytest.raises(TenantNotFound):
                await fn(*a)
            refused.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mgr.detach_tenant, TENANT)
            await in_detach.wait()
            other = "ab" * 16
            nursery.start_soon(expect_not_found, "timeline", mgr.create_timeline, TENANT, other)
            nursery.start_soon(expect_not_found, "config", mgr.set_tenant_config, TENANT, {})
            await trio.sleep(0.05)
            go_on.set()
        assert sorted(refused) == ["config", "timeline"]
        assert not tenant_dir.exists() and mgr.status() == []
