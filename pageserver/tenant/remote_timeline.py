"""Where a timeline meets remote storage (SPEC section 10): local names with generations,
startup/attach reconciliation with the remote index, on-demand download, eviction.

**Local names.** A layer this pageserver writes while it holds generation G is renamed,
before it enters the layer map, from ``<name>`` to ``<name>-v1-<G:08x>`` (Neon's local
form); a layer downloaded from an object of generation G gets the same local name. So the
local file always says which remote object it is a copy of. A bare-named file (written
before remote storage was configured, or left by a crash between the layer's rename and
this one) is adopted at the next load.

**Reconciliation** (:func:`reconcile`, at startup and at attach), with the newest index
whose generation is not above ours:

- a local layer the index names with the same generation is uploaded already;
- a local layer the index names with another generation (or none) and the same size is
  the same layer (names are key and LSN ranges, the writer is deterministic): the local
  file is renamed to the index's generation; with another size, the local copy is dropped
  and the remote object used;
- a local layer the index does not name is scheduled for upload (the queue is not
  persistent; this is "re-upload what is missing");
- a layer the index names that is not local enters the layer map as *remote only*
  (``resident = False``): a read downloads it on demand;
- what a crashed compaction left redundant (the union may hold remote L0s beside local L1s
  made from them) is removed from the map, locally and (after the next index) remotely;
- ``disk_consistent_lsn`` becomes the larger of the local metadata's and the index's, and
  an index is uploaded under our generation.

**Eviction** (:func:`evict_to_limit`): with ``max_resident_layer_bytes``, the least recently
read resident layers whose object the last uploaded index names lose their local file
until the total is under the limit. Never one a read or a compaction uses (``readers``),
never one being downloaded (its residency lock).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import structlog

from pageserver import metrics
from pageserver.io import IoContext, cleanup_shield
from pageserver.layers.layer_name import LayerName, parse_layer_name
from pageserver.remote.index import IndexPart, bare_name, local_suffix
from pageserver.remote.timeline_client import RemoteTimelineClient
from pageserver.tenant.compaction import redundant_layers
from pageserver.tenant.layer_map import HistoricLayer, LayerMap

log = structlog.get_logger("pageserver.remote")


def local_name(bare: str, generation: int | None) -> LayerName:
    return parse_layer_name(bare + (local_suffix(generation) if generation is not None else ""))


async def adopt_generation(
    ctx: IoContext, timeline_dir: str, name: LayerName, path: str, generation: int | None
) -> tuple[LayerName, str]:
    """Rename a local layer file to its local name for ``generation``."""
    new_name = local_name(bare_name(name), generation)
    new_path = os.path.join(timeline_dir, str(new_name))
    if new_path != path:
        try:
            await ctx.rename_noreplace(path, new_path)
        except OSError as e:
            # The file is durable under its old name, and the caller has already adopted
            # it (metadata): keep that name; the next load renames it.
            log.warning("could not rename layer to its generation's name", layer=path, error=repr(e))
            return name, path
        await ctx.fsync_dir(timeline_dir)
    return new_name, new_path


def install_downloader(layer_map: LayerMap, client: RemoteTimelineClient) -> None:
    async def download(layer: HistoricLayer) -> None:
        await client.download_layer(bare_name(layer.name), layer.path)

    layer_map.downloader = download


async def reconcile(
    ctx: IoContext,
    timeline_dir: str,
    layer_map: LayerMap,
    client: RemoteTimelineClient,
    index: IndexPart | None,
) -> list[HistoricLayer]:
    """The reconciliation of the module docstring. Returns the layers it removed as
    redundant (the caller's layer map no longer holds them; their files are deleted)."""
    remote = index.layers if index is not None else {}
    gen = client.generation
    tl_log = client.log
    for hl in list(layer_map.layers):
        bare = bare_name(hl.name)
        meta = remote.get(bare)
        if meta is not None and hl.name.generation == meta.generation:
            continue
        if meta is not None and meta.file_size == hl.file_size:
            name, path = await adopt_generation(ctx, timeline_dir, hl.name, hl.path, meta.generation)
            layer_map.remove(hl)
            layer_map.add(HistoricLayer(name, path, hl.file_size))
            continue
        if meta is not None:
            tl_log.warning("local layer differs from the remote one; using the remote", layer=str(hl.name))
            layer_map.remove(hl)
            await hl.close()
            await _unlink(ctx, hl.path)
            continue
        # Not in the index: ours to upload, under our generation.
        name, path = await adopt_generation(ctx, timeline_dir, hl.name, hl.path, gen)
        layer_map.remove(hl)
        layer_map.add(HistoricLayer(name, path, hl.file_size))
        client.schedule_layer_upload(bare, path, hl.file_size)
    local = {bare_name(hl.name) for hl in layer_map.layers}
    for bare, meta in remote.items():
        if bare in local:
            continue
        name = local_name(bare, meta.generation)
        path = os.path.join(timeline_dir, str(name))
        layer_map.add(HistoricLayer(name, path, meta.file_size, resident=False))
    removed = redundant_layers(layer_map.layers)
    for hl in removed:
        tl_log.info("removing redundant layer", layer=str(hl.name), resident=hl.resident)
        layer_map.remove(hl)
        client.schedule_layer_removal(bare_name(hl.name))
        if hl.resident:
            await hl.close()
            await _unlink(ctx, hl.path)
    await ctx.fsync_dir(timeline_dir)
    install_downloader(layer_map, client)
    return removed


async def _unlink(ctx: IoContext, path: str) -> None:
    with cleanup_shield():
        try:
            await ctx.unlink(path)
        except FileNotFoundError:
            pass


async def evict_to_limit(
    ctx: IoContext,
    candidates: Iterable[tuple[HistoricLayer, RemoteTimelineClient]],
    total: int,
    limit: int,
) -> int:
    """Evict least recently read uploaded layers until ``total`` <= ``limit``; returns the
    new total."""
    order = sorted(
        (
            (hl, client)
            for hl, client in candidates
            if hl.resident and client.is_uploaded(bare_name(hl.name), hl.name.generation)
        ),
        key=lambda pair: pair[0].last_read,
    )
    for hl, _client in order:
        if total <= limit:
            break
        lock = hl.residency_lock()
        if hl.readers or lock.locked() or not hl.resident:
            continue
        async with lock:
            # Checked and flipped with no await in between: a read that counts itself
            # after this sees resident = False and downloads again (under this lock).
            if hl.readers or not hl.resident:
                continue
            hl.resident = False
            await hl.close()
            await _unlink(ctx, hl.path)
        total -= hl.file_size
        metrics.LAYER_EVICTIONS.inc()
        log.debug("evicted layer", layer=str(hl.name), bytes=hl.file_size)
    return total


def pin(layers: Iterable[HistoricLayer]) -> list[HistoricLayer]:
    """Count a compaction as a reader of ``layers`` (eviction and removal wait)."""
    pinned = list(layers)
    for hl in pinned:
        hl.readers += 1
    return pinned


def unpin(layers: Iterable[HistoricLayer]) -> None:
    for hl in layers:
        hl.release()


__all__ = [
    "adopt_generation",
    "evict_to_limit",
    "install_downloader",
    "local_name",
    "pin",
    "reconcile",
    "unpin",
]
