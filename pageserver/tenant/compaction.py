"""Compaction (SPEC section 7): L0 deltas into L1 deltas, and image layers.

**L0 -> L1.** Once ``compaction_threshold`` L0 deltas exist (each spans the whole key
space and one flush's LSN range), they are merged, in (key, lsn) order, into L1 deltas
over the union of the L0s' LSN ranges, cut at key boundaries into files of about
``checkpoint_distance`` bytes; the files tile the key space from the first key present to
Key.MAX. Reads then touch one L1
file per key instead of every L0.

**Image layers.** Once ``image_creation_threshold`` delta generations (an L0, or one L1
merge; counted before this compaction's merge) lie above the newest image layer, an image
layer at ``disk_consistent_lsn`` is
written: every key's value materialised with the Test redo. Keys that cannot be
materialised (Postgres WAL records, a broken history) are left out; a read that finds
no image for its key in an image layer simply continues into the layers below.

**Crash safety without a manifest.** Every new layer is written with the usual protocol
(temp file, fsync, rename without replacing, directory fsync) *before* anything is
removed, and the layer map is changed in one step on the loop (no await in between).
A crash can therefore leave new layers *beside* the ones they replace; reads are correct
with both present (either copy holds the same records). Startup then removes what is
redundant (:func:`redundant_layers`): an L0 whose LSN range lies inside a complete merge
result, and the files of an incomplete merge (a group of L1 files of one LSN range without
its last file, the one ending at Key.MAX, while the L0s it was merged from are still there;
without them it is a group garbage collection thinned out, and stays).

Both jobs run through ``ctx.run_job`` (a worker thread under std-fs, the loop under
trio-uring) and use their own layer readers, so nothing they do races with reads on the
loop; a timeline runs one compaction at a time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from pageserver.io import IoContext, cleanup_shield, cooperative_checkpoint
from pageserver.layers.common import LayerInfo
from pageserver.layers.delta_layer import DeltaEntry, DeltaLayer, DeltaLayerWriter
from pageserver.layers.image_layer import ImageLayer, ImageLayerWriter
from pageserver.layers.key import Key, TenantId, TimelineId
from pageserver.layers.value import BadValue, RedoError
from pageserver.tenant.layer_map import HistoricLayer, LayerMap
from pageserver.tenant.read_path import reconstruct


@dataclass(frozen=True, slots=True)
class CompactionResult:
    layers_created: int
    layers_removed: int


# -- L0 -> L1 ---------------------------------------------------------------------------------


async def merge_l0_layers(
    ctx: IoContext,
    timeline_dir: str,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    paths: list[str],
    target_size: int,
) -> list[LayerInfo]:
    """Merge L0 delta files into L1 files (an offloaded job). On error, removes its output."""
    readers: list[DeltaLayer] = []
    infos: list[LayerInfo] = []
    writer: DeltaLayerWriter | None = None
    try:
        for path in paths:
            readers.append(await DeltaLayer.open(ctx, path))
        lsn_start = min(r.lsn_range[0] for r in readers)
        lsn_end = max(r.lsn_range[1] for r in readers)
        iters = [r.iter_all() for r in readers]
        # k-way merge by (key, lsn): the L0s' LSN ranges are disjoint, so (key, lsn) is
        # unique across them and the heap never compares the batch lists.
        heap: list[tuple[bytes, int, int]] = []
        state: list[tuple[list[DeltaEntry], int]] = []
        for idx, it in enumerate(iters):
            batch = await it.next_batch()
            state.append((batch, 0))
            if batch:
                heap.append((batch[0][0], batch[0][1], idx))
        heapq.heapify(heap)
        last_key: bytes | None = None
        n = 0
        while heap:
            key, lsn, idx = heapq.heappop(heap)
            batch, pos = state[idx]
            entry = batch[pos]
            pos += 1
            if pos == len(batch):
                batch, pos = await iters[idx].next_batch(), 0
            state[idx] = (batch, pos)
            if batch:
                heapq.heappush(heap, (batch[pos][0], batch[pos][1], idx))
            if writer is None:
                # Like Neon's L1 files, the first starts at the first key present (not at
                # Key.MIN): an L1 never looks like an L0 (whole key range), even when the
                # merge fits in one file. The last file ends at Key.MAX, which is what
                # tells a complete merge from an interrupted one (see redundant_layers).
                writer = DeltaLayerWriter(
                    ctx, timeline_dir, tenant_id, timeline_id, Key(key), lsn_start, lsn_end
                )
            elif key != last_key and writer.size_estimate >= target_size:
                infos.append(await writer.finish(Key(key)))
                writer = DeltaLayerWriter(
                    ctx, timeline_dir, tenant_id, timeline_id, Key(key), lsn_start, lsn_end
                )
            await writer.put_value(key, lsn, entry[4], entry[3])
            last_key = key
            n += 1
            if not n % 1024:
                await cooperative_checkpoint()
        if writer is not None:
            infos.append(await writer.finish(Key.MAX))
            writer = None
        return infos
    except BaseException:
        with cleanup_shield():
            if writer is not None:
                await writer.abandon()
            for info in infos:
                try:
                    await ctx.unlink(info.path)
                except FileNotFoundError:
                    pass
        raise
    finally:
        with cleanup_shield():
            for r in readers:
                await r.close()


# -- image layers -------------------------------------------------------------------------------


async def _distinct_keys(readers: list[DeltaLayer | ImageLayer]) -> list[bytes]:
    """Every key any of the layers holds, sorted, each once."""
    keys: set[bytes] = set()
    for r in readers:
        it = r.iter_index()
        while batch := await it.next_batch():
            keys.update(bytes(e[0]) for e in batch)
            await cooperative_checkpoint()
    return sorted(keys)


async def create_image_layer(
    ctx: IoContext,
    timeline_dir: str,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    layers: list[HistoricLayer],
    lsn: int,
    image_compression: str,
) -> LayerInfo | None:
    """Materialise every key at ``lsn`` from ``layers`` (private copies) into an image layer."""
    snapshot = LayerMap()
    for layer in layers:
        snapshot.add(layer)
    writer: ImageLayerWriter | None = None
    try:
        readers: list[DeltaLayer | ImageLayer] = []
        for layer in snapshot.layers:
            readers.append(await (layer.delta(ctx) if layer.is_delta else layer.image(ctx)))
        keys = await _distinct_keys(readers)
        writer = ImageLayerWriter(
            ctx, timeline_dir, tenant_id, timeline_id, Key.MIN, lsn, Key.MAX,
            image_compression=image_compression,
        )  # fmt: skip
        written = 0
        for i, key in enumerate(keys):
            found = await reconstruct(ctx, key, lsn, snapshot, track=False)
            if found.is_empty:
                continue
            try:
                value = found.materialize()
            except (RedoError, BadValue):
                continue  # left to the deltas below the image (see module docstring)
            await writer.put_image(key, value)
            written += 1
            if not i % 256:
                await cooperative_checkpoint()
        if not written:
            await writer.abandon()
            return None
        info = await writer.finish(Key.MAX)
        writer = None
        return info
    except BaseException:
        if writer is not None:
            with cleanup_shield():
                await writer.abandon()
        raise
    finally:
        with cleanup_shield():
            for layer in snapshot.layers:
                await layer.close()


# -- what to do, and startup clean-up -------------------------------------------------------------


def delta_generations_above(layers: Iterable[HistoricLayer], lsn: int) -> int:
    """Distinct delta LSN ranges (an L0, or one L1 merge) with records above ``lsn``."""
    return len({(lay.lsn_start, lay.lsn_end) for lay in layers if lay.is_delta and lay.lsn_end - 1 > lsn})


def redundant_layers(layers: list[HistoricLayer]) -> list[HistoricLayer]:
    """Layers a crashed compaction left behind that are safe to delete (module docstring)."""
    full = [lay for lay in layers if lay.is_delta and lay.level0]
    groups: dict[tuple[int, int], list[HistoricLayer]] = {}
    for lay in layers:
        if lay.is_delta and not lay.level0:
            groups.setdefault((lay.lsn_start, lay.lsn_end), []).append(lay)
    units: list[tuple[int, int]] = [(lay.lsn_start, lay.lsn_end) for lay in full]
    doomed: list[HistoricLayer] = []
    for rng, group in groups.items():
        group.sort(key=lambda lay: lay.name.key_start)
        # A merge renames its files in key order and only the last one ends at Key.MAX, so
        # an interrupted merge left a contiguous prefix without it.
        complete = group[-1].name.key_end == Key.MAX and all(
            a.name.key_end == b.name.key_start for a, b in zip(group, group[1:], strict=False)
        )
        if complete:
            units.append(rng)
        elif any(rng[0] <= lay.lsn_start and lay.lsn_end <= rng[1] for lay in full):
            # Its L0s are all still there: an interrupted merge. (A group with gaps and no
            # L0s left is what garbage collection thinned out: it removes the files of a
            # merge one by one, keeping those holding a key no image has.)
            doomed.extend(group)
    for lay in full:
        rng = (lay.lsn_start, lay.lsn_end)
        if any(u != rng and u[0] <= rng[0] and rng[1] <= u[1] for u in units):
            doomed.append(lay)
    return doomed


async def remove_layers(ctx: IoContext, timeline_dir: str, layers: list[HistoricLayer]) -> None:
    """Delete layer files already taken out of the layer map, once no read uses them."""
    with cleanup_shield():
        for layer in layers:
            await layer.wait_unused()
            await layer.close()
            try:
                await ctx.unlink(layer.path)
            except FileNotFoundError:
                pass
        await ctx.fsync_dir(timeline_dir)


def private_copy(layer: HistoricLayer) -> HistoricLayer:
    """A HistoricLayer with its own (not yet opened) reader, for a compaction job."""
    return HistoricLayer(layer.name, layer.path, layer.file_size)
