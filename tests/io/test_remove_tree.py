"""``IoContext.remove_tree``: a directory tree removed through the engine, as one job.

What is observed: the tree is gone and nothing a symlink points to is touched (both
engines); under std-fs every unlink and rmdir runs in a worker thread, none on the
event loop's thread; under trio-uring none is a Python ``os`` call at all (they are
io_uring operations); and a tenant detach removes its directory that way.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

from pageserver.config import RemoteStorageConfig
from pageserver.io import IoContext, create_engine
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


async def test_std_fs_removes_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    calls: list[tuple[str, bool]] = []
    real_unlink, real_rmdir = os.unlink, os.rmdir

    def unlink(path: str, *a: object, **kw: object) -> None:
        calls.append((path, threading.get_ident() == loop_thread))
        real_unlink(path, *a, **kw)  # type: ignore[arg-type]

    def rmdir(path: str, *a: object, **kw: object) -> None:
        calls.append((path, threading.get_ident() == loop_thread))
        real_rmdir(path, *a, **kw)  # type: ignore[arg-type]

    root = tmp_path / "tenant"
    entries = make_tree(root, tmp_path / "outside")
    ctx = IoContext(create_engine("std-fs"))
    try:
        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(os, "rmdir", rmdir)
        await ctx.remove_tree(str(root))
        monkeypatch.undo()
    finally:
        await ctx.aclose()
    assert not os.path.lexists(root)
    assert len(calls) == entries + 1  # every entry, then the root
    assert [p for p, on_loop in calls if on_loop] == []


async def test_uring_removes_with_no_unlink_syscall_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_engine("trio-uring")

    def refuse(path: str, *a: object, **kw: object) -> None:
        raise AssertionError(f"os call for {path}: trio-uring removes through the ring")

    root = tmp_path / "tenant"
    make_tree(root, tmp_path / "outside")
    ctx = IoContext(create_engine("trio-uring"))
    try:
        monkeypatch.setattr(os, "unlink", refuse)
        monkeypatch.setattr(os, "rmdir", refuse)
        await ctx.remove_tree(str(root))
        monkeypatch.undo()
    finally:
        await ctx.aclose()
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
    """Cancelled after its first unlink, the removal still removes the whole tree (a
    tenant directory is never left half-removed by a cancelled caller)."""
    root = tmp_path / "tenant"
    for d in range(3):
        (root / f"t{d}").mkdir(parents=True)
        for i in range(50):
            (root / f"t{d}" / f"f{i}").write_bytes(b"x")
    real = io_ctx.engine.unlink
    first = threading.Event()

    async def unlink(path: str) -> None:
        first.set()
        await real(path)

    monkeypatch.setattr(io_ctx.engine, "unlink", unlink)
    scope = trio.CancelScope()

    async def remove() -> None:
        with scope:
            await io_ctx.remove_tree(str(root))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(remove)
        while not first.is_set():
            await trio.sleep(0)
        scope.cancel()
    assert not os.path.lexists(root)


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
