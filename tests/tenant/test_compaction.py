"""Compaction: L0 -> L1 merge and image layers keep every read identical (both engines)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pageserver.config import PageserverConfig, TenantConfig
from pageserver.errors import RedoFailed, RedoUnsupported
from tests.helpers.tenant import TENANT, TIMELINE, Model, image, key, manager, pg_rec, trec


def cfg(distance: int = 3000, threshold: int = 4, images: int = 3) -> PageserverConfig:
    return PageserverConfig(
        no_sync=True,
        tenant_config=TenantConfig(
            checkpoint_distance=distance,
            compaction_threshold=threshold,
            image_creation_threshold=images,
            compaction_period=3600.0,
        ),
    )


def tl_dir(data_dir: Path) -> Path:
    return data_dir / "tenants" / TENANT / "timelines" / TIMELINE


def layer_names(data_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(tl_dir(data_dir)) if "__" in n)


async def ingest(mgr, model: Model, lsns: range, nkeys: int = 40) -> None:  # type: ignore[no-untyped-def]
    for lsn in lsns:
        k = key(lsn * 7 % nkeys)
        if lsn % 5 == 0 or not model.history.get(k):
            v = image(bytes([lsn % 251]) * (50 + lsn % 200))
        else:
            v = trec(f"+{lsn}")
        await mgr.put(TENANT, TIMELINE, [(k, lsn, v)])
        model.put(k, lsn, v)


async def check_all(mgr, model: Model, lsns: list[int], nkeys: int = 40) -> None:  # type: ignore[no-untyped-def]
    for at in lsns:
        for i in range(nkeys):
            assert await mgr.get(TENANT, TIMELINE, key(i), at) == model.get(key(i), at), (i, at)


async def test_merge_and_images_keep_reads(engine_kind: str, tmp_path: Path) -> None:
    model = Model()
    c = cfg()
    async with manager(engine_kind, tmp_path, c) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await ingest(mgr, model, range(1, 400))
        await mgr.flush(TENANT, TIMELINE)
        before = mgr.status()[0]["timelines"][0]["layers"]
        assert before["l0"] >= 8 and before["delta"] == 0 and before["image"] == 0
        probe = [1, 57, 133, 200, 350, 399]
        await check_all(mgr, model, probe)
        res = await mgr.compact(TENANT, TIMELINE)
        after = mgr.status()[0]["timelines"][0]["layers"]
        assert res.layers_removed == before["l0"]
        assert after["image"] == 1  # one merge = one generation; the L0s were >= 3
        assert after["l0"] == 0 and after["delta"] >= 1  # L1s never look like L0s
        assert res.layers_created == after["delta"] + after["l0"] + after["image"]
        await check_all(mgr, model, probe)
        # More L0s on top, then compaction again: the new L0s merge into their own L1s.
        await ingest(mgr, model, range(400, 700))
        await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)
        await check_all(mgr, model, [*probe, 450, 699])
    names = layer_names(tmp_path)
    async with manager(engine_kind, tmp_path, c) as mgr:
        assert layer_names(tmp_path) == names  # nothing redundant after clean compactions
        await check_all(mgr, model, [1, 200, 399, 450, 699])
        # A second compaction with nothing new to do is a no-op.
        res = await mgr.compact(TENANT, TIMELINE)
        assert (res.layers_created, res.layers_removed) == (0, 0)


async def test_restart_removes_leftovers_of_interrupted_compaction(
    engine_kind: str, tmp_path: Path
) -> None:
    model = Model()
    c = cfg(distance=2000, threshold=3, images=100)
    async with manager(engine_kind, tmp_path, c) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await ingest(mgr, model, range(1, 300))
        await mgr.flush(TENANT, TIMELINE)
    saved = tmp_path / "saved"
    saved.mkdir()
    l0_names = layer_names(tmp_path)
    for n in l0_names:
        shutil.copy(tl_dir(tmp_path) / n, saved / n)
    async with manager(engine_kind, tmp_path, c) as mgr:
        await mgr.compact(TENANT, TIMELINE)
    l1_names = [n for n in layer_names(tmp_path) if n not in l0_names]
    assert len(l1_names) >= 2, l1_names  # the merge was cut into several key ranges
    # Crash after the L1s were written, before the L0s were removed: both sets present.
    for n in l0_names:
        shutil.copy(saved / n, tl_dir(tmp_path) / n)
    async with manager(engine_kind, tmp_path, c) as mgr:
        assert layer_names(tmp_path) == sorted(l1_names)
        await check_all(mgr, model, [1, 150, 299])
    # Crash in the middle of writing the L1s: some of them, and every L0.
    os.unlink(tl_dir(tmp_path) / l1_names[-1])
    for n in l0_names:
        shutil.copy(saved / n, tl_dir(tmp_path) / n)
    async with manager(engine_kind, tmp_path, c) as mgr:
        assert layer_names(tmp_path) == sorted(l0_names)
        await check_all(mgr, model, [1, 150, 299])


def cfg_images(threshold: int, images: int) -> PageserverConfig:
    return PageserverConfig(
        no_sync=True,
        tenant_config=TenantConfig(
            checkpoint_distance=1 << 28,
            compaction_threshold=threshold,
            image_creation_threshold=images,
            compaction_period=3600.0,
        ),
    )


@pytest.mark.parametrize("threshold", [10, 2])
async def test_key_missing_from_image_keeps_record_at_image_lsn(
    engine_kind: str, tmp_path: Path, threshold: int
) -> None:
    """A key the image layer left out (it could not be materialised) still sees the record
    *at* the image's LSN, in the delta that ends right above it (found in review)."""
    a, b, c = key(1), key(2), key(3)
    async with manager(engine_kind, tmp_path, cfg_images(threshold, 3)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        await mgr.put(TENANT, TIMELINE, [(a, 1, image(b"a1")), (c, 1, image(b"c"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [(b, 2, image(b"b2"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [(a, 3, pg_rec(b"pg")), (c, 3, trec("x", only_if="nope"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)
        assert mgr.status()[0]["timelines"][0]["layers"]["image"] == 1
        h = await mgr.get_history(TENANT, TIMELINE, a, 3)
        assert [lsn for lsn, _ in h.records] == [3] and (h.image, h.image_lsn) == (b"a1", 1)
        with pytest.raises(RedoUnsupported):
            await mgr.get(TENANT, TIMELINE, a, 3)
        with pytest.raises(RedoFailed):
            await mgr.get(TENANT, TIMELINE, c, 3)
        assert await mgr.get(TENANT, TIMELINE, b, 3) == b"b2"
        # The next image must not bake a wrong value for ``a`` either.
        await mgr.put(TENANT, TIMELINE, [(a, 5, trec("z"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [(b, 7, image(b"b"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.put(TENANT, TIMELINE, [(b, 8, image(b"b8"))])
        await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)
        assert mgr.status()[0]["timelines"][0]["layers"]["image"] == 2
        with pytest.raises(RedoUnsupported):
            await mgr.get(TENANT, TIMELINE, a, 8)


async def test_compaction_period_zero_turns_background_off(engine_kind: str, tmp_path: Path) -> None:
    import resource

    import trio

    c = PageserverConfig(no_sync=True, tenant_config=TenantConfig(compaction_period=0.0))
    async with manager(engine_kind, tmp_path, c) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        await trio.sleep(1.0)
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)
        assert cpu < 0.5, cpu  # a spinning loop would use about the whole second


async def test_small_merge_is_one_l1_not_an_l0(engine_kind: str, tmp_path: Path) -> None:
    model = Model()
    async with manager(engine_kind, tmp_path, cfg(distance=1 << 28, threshold=3, images=100)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        for start in (1, 50, 100):
            await ingest(mgr, model, range(start, start + 49))
            await mgr.flush(TENANT, TIMELINE)
        res = await mgr.compact(TENANT, TIMELINE)
        assert (res.layers_created, res.layers_removed) == (1, 3)
        layers = mgr.status()[0]["timelines"][0]["layers"]
        assert {k: layers[k] for k in ("l0", "delta", "image")} == {"l0": 0, "delta": 1, "image": 0}
        (name,) = layer_names(tmp_path)
        assert not name.startswith("0" * 36 + "-") and name.split("__")[0].endswith("F" * 36)
        # A later compaction merges only new L0s; the L1 stays as it is.
        await ingest(mgr, model, range(150, 199))
        await mgr.flush(TENANT, TIMELINE)
        res = await mgr.compact(TENANT, TIMELINE)
        assert (res.layers_created, res.layers_removed) == (0, 0)
        await check_all(mgr, model, [1, 60, 149, 198])


async def test_every_crash_state_of_a_merge(engine_kind: str, tmp_path: Path) -> None:
    """Restart after a merge interrupted at any point: any prefix of its files (renamed in
    key order), or all of them with any of its inputs already removed. An earlier,
    single-file merge result sits beside them and must survive untouched."""
    import itertools

    model = Model()
    d = tmp_path / "d"
    async with manager(engine_kind, d, cfg(distance=1 << 28, threshold=3, images=1000)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=0)
        for start in (1, 30, 60):
            await ingest(mgr, model, range(start, start + 29))
            await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)
    (m1,) = layer_names(d)
    c = cfg(distance=1500, threshold=3, images=1000)
    async with manager(engine_kind, d, c) as mgr:
        await ingest(mgr, model, range(90, 200))
        await mgr.flush(TENANT, TIMELINE)
    pre = layer_names(d)
    l0s = [n for n in pre if n != m1]
    assert len(l0s) >= 3
    base = tmp_path / "base"
    shutil.copytree(d, base)
    async with manager(engine_kind, d, c) as mgr:
        await mgr.compact(TENANT, TIMELINE)
    group = sorted(n for n in layer_names(d) if n not in pre)
    assert len(group) >= 3 and layer_names(d) == sorted([m1, *group])
    cases: list[tuple[list[str], list[str]]] = [(l0s, group[:k]) for k in range(len(group))]
    cases += [(list(sub), group) for r in range(len(l0s) + 1) for sub in itertools.combinations(l0s, r)][:12]
    for inputs, outs in cases:
        work = tmp_path / "w"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        for n in l0s:
            if n not in inputs:
                os.unlink(tl_dir(work) / n)
        for n in outs:
            shutil.copy(tl_dir(d) / n, tl_dir(work) / n)
        (tl_dir(work) / "x.1.___temp").write_bytes(b"half-written layer")
        async with manager(engine_kind, work, c) as mgr:
            complete = outs == group
            want = sorted([m1, *group]) if complete else sorted([m1, *l0s])
            assert layer_names(work) == want, (len(inputs), len(outs))
            await check_all(mgr, model, [1, 45, 89, 120, 199])
