"""A timeline: ingest into the in-memory layer, freeze, flush to L0 deltas, restart, reads
(argument checks here; the walk over the layers is :mod:`pageserver.tenant.read_path`).

LSN bookkeeping (SPEC sections 5 and 7):

``last_record_lsn``      the highest LSN accepted by ``put``.
``disk_consistent_lsn``  every record at or below it is in durable layer files; it
                         advances only after the layer file *and* its directory entry are
                         durable and then the ``metadata`` file says so. A reply that
                         reports it therefore never promises more than a restart keeps.
``next_layer_start``     the start LSN of the next open layer: one above the end of the last
                         frozen layer (or ``disk_consistent_lsn + 1``). A record below it can
                         no longer be placed and fails with ``lsn_out_of_order``.

Writes are serialised by a per-timeline ``trio.Lock`` held for validation plus append, so
two connections' batches never interleave. One flush task per timeline turns frozen layers
into L0 delta layers, oldest first, through the conditional-offload helper
(``ctx.run_job``): one worker thread per flush under std-fs, the loop under trio-uring.
When ``MAX_FROZEN_LAYERS`` are waiting, ``put`` waits (backpressure) instead of letting
memory grow.

``gc_cutoff_lsn`` (SPEC section 11, :mod:`pageserver.tenant.gc`): reads below it answer
``lsn_too_old``. GC runs under the compaction lock (the two never change the layer map at
once) and writes the ``metadata`` file under the metadata lock, which the flush also holds
from writing its layer until it has published the new ``disk_consistent_lsn``: each of the
two writers writes the other's latest value, never an older one.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import structlog
import trio

from pageserver import failpoints, metrics
from pageserver.config import PageserverConfig, TenantConfig
from pageserver.errors import (
    BadRequest,
    CorruptLayer,
    LsnOutOfOrder,
    LsnTooOld,
    PageserverError,
    RedoFailed,
    RedoUnsupported,
    ShuttingDown,
)
from pageserver.io import TEMP_SUFFIX, IoContext, cleanup_shield
from pageserver.layers.batch import CheckedBatch, check_put_batch
from pageserver.layers.common import LayerFileError, LayerInfo
from pageserver.layers.key import KEY_SIZE, MAX_LSN, TenantId, TimelineId
from pageserver.layers.layer_name import LayerName, try_parse_layer_name
from pageserver.layers.validate import validate_layer_file
from pageserver.layers.value import (
    BadValue as ValueDecodeError,
)
from pageserver.layers.value import RedoError
from pageserver.layers.value import (
    RedoUnsupported as ValueRedoUnsupported,
)
from pageserver.remote.index import bare_name
from pageserver.tenant.compaction import (
    CompactionResult,
    create_image_layer,
    delta_generations_above,
    merge_l0_layers,
    private_copy,
    redundant_layers,
    remove_layers,
)
from pageserver.tenant.ephemeral_file import EphemeralFile
from pageserver.tenant.gc import GcResult, keys_covered, next_cutoff, plan
from pageserver.tenant.inmemory_layer import Entries, InMemoryLayer
from pageserver.tenant.layer_map import HistoricLayer, LayerMap
from pageserver.tenant.metadata import (
    METADATA_FILE,
    TimelineMetadata,
    read_metadata,
    write_metadata,
)
from pageserver.tenant.read_path import Reconstruction, reconstruct
from pageserver.tenant.remote_timeline import adopt_generation, pin, unpin

if TYPE_CHECKING:
    from pageserver.remote.timeline_client import RemoteTimelineClient

log = structlog.get_logger("pageserver.timeline")

#: Records of one step of a ``put`` (one append and index update, then a checkpoint).
PUT_STEP_RECORDS = 16384

#: How long a GC pass waits for the reads that began before it (``Timeline._reads_drained``).
READ_DRAIN_TIMEOUT = 30.0

#: Frozen layers allowed to wait for the flush task before ``put`` waits. One (the layer
#: being flushed) keeps ingest memory at about one open layer's index plus one flush.
MAX_FROZEN_LAYERS = 1


@dataclass(frozen=True, slots=True)
class PutResult:
    last_record_lsn: int
    disk_consistent_lsn: int
    skipped: int


@dataclass(frozen=True, slots=True)
class History:
    image: bytes | None
    image_lsn: int | None
    #: ``(lsn, encoded value)`` above ``image_lsn``, oldest first.
    records: list[tuple[int, bytes]]


class Timeline:
    def __init__(
        self,
        ctx: IoContext,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        timeline_dir: str,
        conf: Callable[[], TenantConfig],
        start_lsn: int,
        disk_consistent_lsn: int,
        gc_cutoff_lsn: int | None = None,
    ) -> None:
        self.ctx = ctx
        self.tenant_id = tenant_id
        self.timeline_id = timeline_id
        self.dir = timeline_dir
        self._conf = conf
        self.start_lsn = start_lsn
        self.disk_consistent_lsn = disk_consistent_lsn
        self.last_record_lsn = disk_consistent_lsn
        self.next_layer_start = disk_consistent_lsn + 1
        #: Reads below it answer ``lsn_too_old`` (SPEC section 11); only ever rises.
        self.gc_cutoff_lsn = start_lsn if gc_cutoff_lsn is None else max(gc_cutoff_lsn, start_lsn)
        #: Reads walking the layers right now, by the GC epoch they began in (a GC pass
        #: starts a new epoch and waits for the older reads before removing layers).
        self._read_epoch = 0
        self._reads: Counter[int] = Counter()
        self._read_ended = trio.Event()
        self.open_layer: InMemoryLayer | None = None
        self.frozen: deque[InMemoryLayer] = deque()
        self.layer_map = LayerMap()
        self._write_lock = trio.Lock()
        #: One compaction at a time per timeline (the background loop and ``compact``).
        self._compaction_lock = trio.Lock()
        #: Serialises the writers of the ``metadata`` file (flush, GC); module docstring.
        self._metadata_lock = trio.Lock()
        #: ``image_compression`` of the pageserver config (set by the tenant manager).
        self.image_compression = PageserverConfig.image_compression
        self._ephemeral_seq = 0
        #: Set (and replaced) whenever the flush task made progress or failed.
        self._progress = trio.Event()
        self._frozen_added = trio.Event()
        self._flush_error: BaseException | None = None
        #: Shutdown has begun: no new puts, backpressure waits give up.
        self._stopping = False
        #: A detach waits for the uploads (:meth:`paused`): puts are refused.
        self._writes_paused = False
        self._closed = False
        #: With remote storage: the upload queue and downloads (set by the tenant manager).
        self.remote: RemoteTimelineClient | None = None
        self.log = log.bind(tenant_id=str(tenant_id), timeline_id=str(timeline_id))
        labels = {"tenant_id": str(tenant_id), "timeline_id": str(timeline_id)}
        self._m_last_record = metrics.LAST_RECORD_LSN.labels(**labels)
        self._m_dcl = metrics.DISK_CONSISTENT_LSN.labels(**labels)
        self._m_gc_cutoff = metrics.GC_CUTOFF_LSN.labels(**labels)
        self._m_layers = {k: metrics.LAYER_COUNT.labels(kind=k, **labels) for k in ("l0", "delta", "image")}
        self._update_gauges()

    # -- creation and loading ---------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        ctx: IoContext,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        timeline_dir: str,
        conf: Callable[[], TenantConfig],
        start_lsn: int,
    ) -> Timeline:
        os.mkdir(timeline_dir)
        meta = TimelineMetadata(start_lsn, start_lsn, start_lsn)
        await write_metadata(ctx, timeline_dir, meta)
        await ctx.fsync_dir(os.path.dirname(timeline_dir), force=True)
        return cls(ctx, tenant_id, timeline_id, timeline_dir, conf, start_lsn, start_lsn)

    @classmethod
    async def load(
        cls,
        ctx: IoContext,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        timeline_dir: str,
        conf: Callable[[], TenantConfig],
    ) -> Timeline:
        """Restart rules of SPEC section 3. A layer failing validation raises CorruptLayer."""
        meta = await read_metadata(ctx, timeline_dir)
        dcl = meta.disk_consistent_lsn
        tl = cls(
            ctx, tenant_id, timeline_id, timeline_dir, conf, meta.start_lsn, dcl, meta.gc_cutoff_lsn
        )
        for entry in sorted(os.listdir(timeline_dir)):
            path = os.path.join(timeline_dir, entry)
            if entry == METADATA_FILE:
                continue
            if entry.endswith(TEMP_SUFFIX) or EphemeralFile.is_file_name(entry):
                tl.log.info("removing leftover file", file=entry)
                await ctx.unlink(path)
                continue
            name = try_parse_layer_name(entry)
            if name is None:
                tl.log.warning("ignoring unknown file in timeline directory", file=entry)
                continue
            if name.is_in_future(dcl):
                tl.log.warning("removing future layer", layer=entry, disk_consistent_lsn=dcl)
                await ctx.unlink(path)
                continue
            try:
                name, _summary, size = await validate_layer_file(
                    ctx, path, tenant_id=tenant_id, timeline_id=timeline_id
                )
            except (LayerFileError, OSError) as e:
                raise CorruptLayer(f"layer file failed validation: {e}") from None
            tl.layer_map.add(HistoricLayer(name, path, size))
        # What a compaction that crashed between writing and removing left behind.
        for layer in redundant_layers(tl.layer_map.layers):
            tl.log.warning("removing layer left by an interrupted compaction", layer=str(layer.name))
            tl.layer_map.remove(layer)
            await ctx.unlink(layer.path)
        await ctx.fsync_dir(timeline_dir)
        tl._update_gauges()
        return tl

    # -- ingest -------------------------------------------------------------------------------

    async def put(self, records: Sequence[tuple[bytes, int, bytes]]) -> PutResult:
        """Check the whole batch (once: a ``CheckedBatch`` from the wire is not checked
        again), then apply it (SPEC section 5 ``put`` rules).

        Column-wise: the batch's LSNs are non-decreasing, so the records at or below
        ``disk_consistent_lsn`` (skipped) are a prefix, and the first record after it
        decides whether the rest may be placed (every later one is at least as high).
        """
        batch = check_put_batch(records)
        async with self._write_lock:
            self._check_running()
            if self._writes_paused:
                raise ShuttingDown("the tenant is being detached")
            self._check_not_broken()
            dcl = self.disk_consistent_lsn
            last = self.last_record_lsn
            floor = self.open_layer.start_lsn if self.open_layer is not None else self.next_layer_start
            skipped = int(np.searchsorted(batch.lsns, np.uint64(dcl), side="right"))
            accepted = batch.slice(skipped, len(batch))
            if len(accepted):
                first = int(accepted.lsns[0])
                if first < last or first < floor:
                    raise LsnOutOfOrder(
                        f"lsn {first} is below the last record lsn {self.last_record_lsn} "
                        f"or the open layer's start {floor} (disk_consistent_lsn {dcl})"
                    )
                # Shielded: a batch is applied whole or (on an I/O error) the timeline is
                # broken, never left half-applied because the caller went away.
                with trio.CancelScope(shield=True):
                    await self._apply(accepted)
                metrics.INGEST_RECORDS.inc(len(accepted))
                metrics.INGEST_BYTES.inc(accepted.value_bytes)
                self._m_last_record.set(self.last_record_lsn)
            return PutResult(self.last_record_lsn, self.disk_consistent_lsn, skipped)

    async def _apply(self, batch: CheckedBatch) -> None:
        conf = self._conf()
        distance = conf.checkpoint_distance
        timeout = conf.checkpoint_timeout
        now = time.monotonic()
        start = 0
        n = len(batch)
        lsns, starts = batch.lsns, batch.starts
        # Steps appended to the open layer, published (indexed) only once the last step
        # for this layer is appended: a failed append (a full disk) then leaves none of
        # them applied, and the client may send the same batch again. (A batch that rolls
        # the layer is applied up to the roll when a later part fails: the frozen layer
        # cannot take its records back. last_record_lsn says how far it got.)
        pending: list[Entries] = []
        while start < n:
            layer = await self._writable_layer()
            # How far this layer may take the batch: a roll happens only at an LSN
            # boundary (an LSN above the one before it, or above the layer's last when the
            # layer is not empty), once the LSN distance or the layer's size reaches the
            # threshold; the size counts the values of the records before the boundary.
            lsn = lsns[start:]
            timed_out = now - layer.created_at >= timeout
            if (
                not timed_out
                and int(lsn[-1]) - layer.start_lsn < distance
                and layer.size + int(starts[-1] - starts[start]) < distance
            ):
                # The common case: neither threshold is reached within the batch (both
                # only grow along it), so it all goes to this layer.
                cut = len(lsn)
            else:
                prev = np.empty_like(lsn)
                prev[0] = np.uint64(layer.max_lsn) if layer.max_lsn >= 0 else lsn[0]
                prev[1:] = lsn[:-1]
                boundary = lsn != prev
                if not timed_out:
                    over = np.zeros(len(lsn), np.bool_)
                    if layer.start_lsn + distance <= MAX_LSN:
                        over |= lsn >= np.uint64(layer.start_lsn + distance)
                    size_before = layer.size + (starts[start:] - starts[start])
                    over |= size_before >= min(distance, 1 << 62)
                    boundary &= over
                cut = int(np.argmax(boundary)) if boundary.any() else len(lsn)
            end = start + cut
            # A large batch goes in steps of about PUT_STEP_RECORDS, cut at LSN
            # boundaries (as if the client had sent smaller batches), so that one request
            # is not one long step of the event loop.
            roll = end < n
            if cut > PUT_STEP_RECORDS:
                step = lsn[PUT_STEP_RECORDS:cut] != lsn[PUT_STEP_RECORDS - 1 : cut - 1]
                if step.any():
                    end = start + PUT_STEP_RECORDS + int(np.argmax(step))
                    roll = False
            if end > start:
                pending.append(await layer.append_values(batch.slice(start, end)))
            if roll or end == n:
                for i, entries in enumerate(pending):
                    if i:
                        await trio.lowlevel.checkpoint()  # a step each, as the appends
                    await layer.publish(entries)
                    self.last_record_lsn = int(entries.lsns[-1])
                pending.clear()
            if roll:
                await self._freeze_open_layer()
            elif end < n:
                await trio.lowlevel.checkpoint()
            start = end

    async def _writable_layer(self) -> InMemoryLayer:
        if self.open_layer is not None:
            return self.open_layer
        # Backpressure: do not start another layer while too many wait for the flush.
        # (This waits holding the write lock, so it must give up when the timeline
        # stops, or shutdown could never take the lock.)
        while len(self.frozen) >= MAX_FROZEN_LAYERS:
            self._check_running()
            if self._flush_error is not None:
                raise PageserverError(f"flush is failing: {self._flush_error}")
            await self._progress.wait()
        seq = self._ephemeral_seq
        self._ephemeral_seq += 1
        self.open_layer = await InMemoryLayer.create(self.ctx, self.dir, seq, self.next_layer_start)
        return self.open_layer

    def _check_running(self) -> None:
        """Refuse new work once shutdown has begun."""
        if self._closed or self._stopping:
            raise ShuttingDown("timeline is shutting down")

    def _check_not_broken(self) -> None:
        layer = self.open_layer
        if layer is not None and layer.broken is not None:
            raise PageserverError(
                f"timeline is broken by a failed write to its in-memory layer ({layer.broken!r}); "
                "records above disk_consistent_lsn were lost; restart the pageserver"
            )

    async def _freeze_open_layer(self) -> None:
        layer = self.open_layer
        if layer is None or layer.is_empty:
            return
        self._check_not_broken()
        end_lsn = layer.max_lsn + 1
        await layer.freeze(end_lsn)
        self.open_layer = None
        self.next_layer_start = end_lsn
        self.frozen.append(layer)
        self._frozen_added.set()

    async def flush(self) -> int:
        """Freeze the open layer and wait until everything received is durable."""
        async with self._write_lock:
            target = self.last_record_lsn
            self._check_not_broken()
            await self._freeze_open_layer()
        while self.disk_consistent_lsn < target:
            if self._flush_error is not None:
                raise PageserverError(f"flush failed: {self._flush_error}")
            if self._closed and not self.frozen:
                raise ShuttingDown("timeline is shutting down")
            await self._progress.wait()
        return self.disk_consistent_lsn

    # -- the flush task -----------------------------------------------------------------------

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def flush_loop(self) -> None:
        """Flush frozen layers oldest first, forever (runs in the manager's nursery)."""
        while True:
            if not self.frozen:
                if self._closed:
                    return
                self._frozen_added = trio.Event()
                await self._frozen_added.wait()
                continue
            try:
                await self._flush_one(self.frozen[0])
                self._flush_error = None
            except trio.Cancelled:
                raise
            except PageserverError:
                raise
            except Exception as e:  # noqa: BLE001 - a failed flush is retried
                self._flush_error = e
                self.log.error("flush failed; retrying", error=repr(e))
                self._notify_progress()
                await trio.sleep(1.0)

    async def _flush_job(self, layer: InMemoryLayer) -> LayerInfo:
        """The I/O of one flush, as one job: layer file, then the metadata that adopts it.

        Runs through ``ctx.run_job`` (one worker thread under std-fs). If the metadata
        update fails, the new layer is removed again: the retry must not collide with it.
        """
        assert layer.end_lsn is not None
        info = await layer.write_delta_layer(self.dir, self.tenant_id, self.timeline_id)
        try:
            await failpoints.failpoint("flush-before-dcl-update")
            await write_metadata(self.ctx, self.dir, self.metadata(disk_consistent_lsn=layer.end_lsn - 1))
        except BaseException:
            with cleanup_shield():
                await self.ctx.unlink(info.path)
            raise
        return info

    async def _flush_one(self, layer: InMemoryLayer) -> None:
        assert layer.end_lsn is not None
        t0 = time.perf_counter()
        # Held until the new disk_consistent_lsn is published (module docstring).
        async with self._metadata_lock:
            info = await self.ctx.run_job(self._flush_job, layer)
            name, path = info.name, info.path
            if self.remote is not None:
                name, path = await adopt_generation(
                    self.ctx, self.dir, name, path, self.remote.generation
                )
            # The layer and the metadata naming its end are durable: publish both at once
            # (no await between), so a reader sees the records either in the frozen layer
            # or in the new delta layer.
            self.layer_map.add(HistoricLayer(name, path, info.file_size))
            self.frozen.popleft()
            new_dcl = layer.end_lsn - 1
            self.disk_consistent_lsn = new_dcl
        elapsed = time.perf_counter() - t0
        metrics.FLUSH_SECONDS.observe(elapsed)
        metrics.FLUSH_BYTES.inc(info.file_size)
        self._m_dcl.set(new_dcl)
        self._update_gauges()
        if self.remote is not None:
            self.remote.schedule_layer_upload(_bare(name), path, info.file_size)
            self.remote.schedule_index_upload(new_dcl, self.gc_cutoff_lsn)
        self.log.info(
            "flushed layer",
            layer=str(info.name),
            records=layer.num_records,
            bytes=info.file_size,
            duration_s=round(elapsed, 4),
            mib_per_s=round(info.file_size / max(elapsed, 1e-9) / 2**20, 1),
            io_engine=self.ctx.engine_kind,
            disk_consistent_lsn=new_dcl,
        )
        self._notify_progress()
        await layer.delete()

    async def compact(self) -> CompactionResult:
        """L0 -> L1 merge and image creation where the thresholds say so (SPEC section 7)."""
        async with self._compaction_lock:
            self._check_running()
            conf = self._conf()
            created = removed = 0
            # Counted before the merge: merging L0s into one L1 generation must not hide
            # the deltas that piled up above the last image.
            last_image = max(
                (lay.lsn_start for lay in self.layer_map.layers if not lay.is_delta), default=-1
            )
            generations = delta_generations_above(self.layer_map.layers, last_image)
            l0 = sorted(
                (lay for lay in self.layer_map.layers if lay.is_delta and lay.level0),
                key=lambda lay: lay.lsn_start,
            )
            if len(l0) >= max(2, conf.compaction_threshold):
                pinned = await self._pin_resident(l0)
                try:
                    infos = await self.ctx.run_job(
                        merge_l0_layers, self.ctx, self.dir, self.tenant_id, self.timeline_id,
                        [lay.path for lay in l0], conf.checkpoint_distance,
                    )  # fmt: skip
                    new_layers = [await self._adopt(info) for info in infos]
                finally:
                    unpin(pinned)
                # Publish in one step (no await): readers see the old or the new layers.
                for hl in new_layers:
                    self.layer_map.add(hl)
                for layer in l0:
                    self.layer_map.remove(layer)
                self._schedule_remote(new_layers, l0)
                await remove_layers(self.ctx, self.dir, l0)
                created += len(infos)
                removed += len(l0)
            lsn = self.disk_consistent_lsn
            if lsn > last_image and generations >= conf.image_creation_threshold:
                below = [lay for lay in self.layer_map.layers if lay.lsn_start <= lsn]
                pinned = await self._pin_resident(below)
                try:
                    copies = [private_copy(lay) for lay in below]
                    image_info: LayerInfo | None = await self.ctx.run_job(
                        create_image_layer, self.ctx, self.dir, self.tenant_id, self.timeline_id,
                        copies, lsn, self.image_compression,
                    )  # fmt: skip
                    image_layer = await self._adopt(image_info) if image_info is not None else None
                finally:
                    unpin(pinned)
                if image_layer is not None:
                    self.layer_map.add(image_layer)
                    self._schedule_remote([image_layer], [])
                    created += 1
            if created or removed:
                self._update_gauges()
                self.log.info(
                    "compacted", layers_created=created, layers_removed=removed,
                    io_engine=self.ctx.engine_kind,
                )  # fmt: skip
            return CompactionResult(created, removed)

    async def _pin_resident(self, layers: list[HistoricLayer]) -> list[HistoricLayer]:
        """Count compaction as a reader of ``layers`` and download the non-resident ones."""
        pinned = pin(layers)
        try:
            for hl in pinned:
                await self.layer_map.make_resident(hl)
        except BaseException:
            unpin(pinned)
            raise
        return pinned

    async def _adopt(self, info: LayerInfo) -> HistoricLayer:
        """A new layer file as a layer-map entry (renamed to our generation's local name)."""
        name, path = info.name, info.path
        if self.remote is not None:
            name, path = await adopt_generation(
                self.ctx, self.dir, name, path, self.remote.generation
            )
        return HistoricLayer(name, path, info.file_size)

    def _schedule_remote(self, added: list[HistoricLayer], removed: list[HistoricLayer]) -> None:
        """Compaction changed the layer map: upload the new layers, then an index without
        the removed ones, then delete those (the upload queue's ordering)."""
        if self.remote is None:
            return
        for hl in added:
            self.remote.schedule_layer_upload(_bare(hl.name), hl.path, hl.file_size)
        for hl in removed:
            self.remote.schedule_layer_removal(_bare(hl.name))
        self.remote.schedule_index_upload(self.disk_consistent_lsn, self.gc_cutoff_lsn)

    async def compaction_loop(self) -> None:
        """Compact every ``compaction_period`` (runs in the manager's nursery)."""
        await self._every("compaction", lambda conf: conf.compaction_period, self.compact)

    async def gc_loop(self) -> None:
        """Collect garbage every ``gc_period`` (runs in the manager's nursery)."""
        await self._every("gc", lambda conf: conf.gc_period, self.gc)

    async def _every(
        self,
        what: str,
        period_of: Callable[[TenantConfig], float],
        job: Callable[[], Awaitable[object]],
    ) -> None:
        """Run ``job`` every period of the tenant config; ``0`` turns it off, as in Neon.

        The period is read again at least every second, so a ``tenant_config`` change (say
        ``gc_period`` from ``"1h"`` to ``"10s"``) applies at once rather than after the
        period already being waited out. A failure is logged; the job runs again next period.
        """
        last = trio.current_time()
        while not (self._closed or self._stopping):
            period = period_of(self._conf())
            if period <= 0:
                last = trio.current_time()
                await trio.sleep(1.0)
                continue
            due = last + period
            now = trio.current_time()
            if now < due:
                await trio.sleep(min(due - now, 1.0))
                continue
            try:
                await job()
            except ShuttingDown:
                return
            except Exception as e:  # noqa: BLE001 - logged, retried next period
                self.log.error(f"{what} failed", error=repr(e))
            last = trio.current_time()

    # -- garbage collection (SPEC section 11) ------------------------------------------------------

    def metadata(
        self, *, disk_consistent_lsn: int | None = None, gc_cutoff_lsn: int | None = None
    ) -> TimelineMetadata:
        """What the ``metadata`` file says, with one of its LSNs replaced by a new value."""
        return TimelineMetadata(
            self.disk_consistent_lsn if disk_consistent_lsn is None else disk_consistent_lsn,
            self.start_lsn,
            self.gc_cutoff_lsn if gc_cutoff_lsn is None else gc_cutoff_lsn,
        )

    async def gc(self) -> GcResult:
        """One GC pass (the ``gc`` op, and every ``gc_period``): raise the cutoff, then
        remove the layers no read at or above it needs (:mod:`pageserver.tenant.gc`)."""
        async with self._compaction_lock:
            self._check_running()
            if self.remote is not None:
                self.remote.tenant.check_not_stale()
            conf = self._conf()
            cutoff = next_cutoff(
                self.gc_cutoff_lsn, self.last_record_lsn, conf.gc_horizon, self.start_lsn,
                self.disk_consistent_lsn,
            )  # fmt: skip
            if cutoff > self.gc_cutoff_lsn:
                # Durable before anything goes: a restart must not serve below it again.
                async with self._metadata_lock:
                    meta = self.metadata(gc_cutoff_lsn=cutoff)
                    await write_metadata(self.ctx, self.dir, meta)
                    self.gc_cutoff_lsn = cutoff
                self._m_gc_cutoff.set(cutoff)
                if self.remote is not None:
                    self.remote.schedule_index_upload(self.disk_consistent_lsn, cutoff)
            # Reads that begin from here on walk the layer map as ``plan`` sees it.
            self._read_epoch += 1
            barrier = self._read_epoch
            candidates = plan(self.layer_map.layers, cutoff)
            doomed: list[HistoricLayer] = []
            pinned: list[HistoricLayer] = []
            try:
                if candidates:
                    needed = list(
                        {id(hl): hl for c in candidates for hl in (c.layer, *c.images)}.values()
                    )
                    # Pinned until they leave the layer map: eviction must not make a doomed
                    # layer remote-only while a read that began during the wait below may
                    # still walk into it (its download would find no index naming it).
                    pinned = await self._pin_resident(needed)
                    covered = await self.ctx.run_job(keys_covered, self.ctx, candidates)
                    doomed = [c.layer for c, ok in zip(candidates, covered, strict=True) if ok]
                if doomed and not await self._reads_drained(barrier):
                    self.log.warning(
                        "gc: reads older than this pass still running; nothing removed this time",
                        gc_cutoff_lsn=cutoff, layers=len(doomed),
                    )  # fmt: skip
                    doomed = []
                # Out of the layer map in one step (no await): no new read picks them.
                for hl in doomed:
                    self.layer_map.remove(hl)
            finally:
                unpin(pinned)
            t0 = time.perf_counter()
            if doomed:
                with cleanup_shield():
                    self._update_gauges()
                    await failpoints.failpoint("gc-before-delete")
                    # Waits for the reads still using them, then deletes the local files; only
                    # then the index without them (remote deletions follow that index).
                    await remove_layers(self.ctx, self.dir, doomed)
                    self._schedule_remote([], doomed)
                metrics.GC_LAYERS_REMOVED.inc(len(doomed))
            self.log.info(
                "gc", gc_cutoff_lsn=cutoff, layers_removed=len(doomed),
                candidates=len(candidates), delete_s=round(time.perf_counter() - t0, 4),
            )  # fmt: skip
            return GcResult(len(doomed), cutoff)

    async def _reads_drained(self, barrier: int) -> bool:
        """Wait until every read that began before epoch ``barrier`` has ended.

        Such a read may have started before compaction published the image that GC counts
        on (or below the cutoff GC just raised) and walk into layers the plan removes; a
        read pins only the layer it is reading, not the ones below (as Neon's GC waits for
        the readers of the old ``latest_gc_cutoff_lsn``). False after
        ``READ_DRAIN_TIMEOUT`` (a read stuck on a download from an unreachable store):
        the pass then removes nothing, and the next one tries again.
        """
        with trio.move_on_after(READ_DRAIN_TIMEOUT):
            while any(epoch < barrier for epoch in self._reads):
                self._read_ended = trio.Event()
                await self._read_ended.wait()
            return True
        return False

    async def adopt_remote_state(self, disk_consistent_lsn: int, gc_cutoff_lsn: int) -> None:
        """The newest remote index is ahead of the local metadata (startup, attach): take
        its ``disk_consistent_lsn`` and cutoff, durably, before serving."""
        dcl = max(disk_consistent_lsn, self.disk_consistent_lsn)
        cutoff = max(gc_cutoff_lsn, self.gc_cutoff_lsn)
        if (dcl, cutoff) == (self.disk_consistent_lsn, self.gc_cutoff_lsn):
            return
        async with self._metadata_lock:
            meta = self.metadata(disk_consistent_lsn=dcl, gc_cutoff_lsn=cutoff)
            await write_metadata(self.ctx, self.dir, meta)
            self.disk_consistent_lsn = self.last_record_lsn = dcl
            self.next_layer_start = dcl + 1
            self.gc_cutoff_lsn = cutoff
        self._update_gauges()

    def _update_gauges(self) -> None:
        for kind, count in self.layer_map.counts().items():
            self._m_layers[kind].set(count)
        self._m_dcl.set(self.disk_consistent_lsn)
        self._m_last_record.set(self.last_record_lsn)
        self._m_gc_cutoff.set(self.gc_cutoff_lsn)

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """While a detach waits for the uploads: no compaction or GC (they would queue
        more uploads and deletions) and puts refused (``shutting_down``); both resume
        when the block ends, say because the wait failed. Unlike :meth:`shutdown`, which
        cannot be undone, this stops nothing (the flush and upload tasks go on)."""
        async with self._compaction_lock:
            self._writes_paused = True
            try:
                yield
            finally:
                self._writes_paused = False

    async def shutdown(self, flush: bool) -> bool:
        """Stop ingest; with ``flush``, write every in-memory record to a layer first.

        Returns False if that flush failed (the records it could not write are lost).
        """
        ok = True
        # Set before taking the lock: a put waiting for backpressure holds it and must
        # see this to give up.
        self._stopping = True
        self._notify_progress()
        if flush and not self._closed:
            try:
                await self.flush()
            except Exception as e:  # noqa: BLE001 - stop anyway; what is durable stays
                self.log.error("flush at shutdown failed", error=repr(e))
                ok = False
        async with self._write_lock:
            self._closed = True
        self._frozen_added.set()
        self._notify_progress()
        return ok

    async def close_files(self) -> None:
        for layer in [*self.frozen, *([self.open_layer] if self.open_layer else [])]:
            await layer.delete()
        self.frozen.clear()
        self.open_layer = None
        await self.layer_map.close_all()

    # -- reads ----------------------------------------------------------------------------------

    async def _reconstruct(self, key: bytes, lsn: int) -> Reconstruction:
        """Check the arguments, then walk the in-memory layers and the layer map."""
        if len(key) != KEY_SIZE:
            raise BadRequest(f"field 'key' must be {KEY_SIZE} bytes")
        if lsn > self.last_record_lsn:
            raise BadRequest(
                f"field 'lsn' ({lsn}) is above last_record_lsn ({self.last_record_lsn})"
            )
        if lsn < self.gc_cutoff_lsn:
            raise LsnTooOld(f"lsn {lsn} is below the timeline's gc_cutoff_lsn {self.gc_cutoff_lsn}")
        return await self._walk(key, lsn)

    async def _walk(self, key: bytes, lsn: int) -> Reconstruction:
        """The read walk (the one of :mod:`pageserver.tenant.read_path`) of ``key`` at
        ``lsn``, counted as a read in flight (layers it may open stay until it ends)."""
        in_memory = ([self.open_layer] if self.open_layer is not None else []) + list(
            reversed(self.frozen)
        )
        epoch = self._read_epoch
        self._reads[epoch] += 1
        try:
            return await reconstruct(self.ctx, key, lsn, self.layer_map, in_memory)
        finally:
            self._reads[epoch] -= 1
            if not self._reads[epoch]:
                del self._reads[epoch]
            self._read_ended.set()

    async def get(self, key: bytes, lsn: int) -> bytes | None:
        found = await self._reconstruct(key, lsn)
        if found.is_empty:
            return None
        try:
            return found.materialize()
        except ValueRedoUnsupported as e:
            raise RedoUnsupported(str(e)) from None
        except (RedoError, ValueDecodeError) as e:
            raise RedoFailed(str(e)) from None

    async def get_history(self, key: bytes, lsn: int) -> History:
        """SPEC section 5: ``image`` is the newest Image value at or below ``lsn`` (nil if
        none), and the records are those a read applies, from the newest ``will_init``
        record when no image is newer than it. The read walk stops at that record; the
        image, if an older one exists, is then found by walking on below it (a ``get``
        never needs it, so only ``get_history`` pays for that)."""
        found = await self._reconstruct(key, lsn)
        image, image_lsn = found.image, found.image_lsn
        below = found
        while image is None and below.records:
            oldest = below.records[-1][0]  # the will_init record the walk stopped at
            if oldest == 0:
                break
            below = await self._walk(key, oldest - 1)
            image, image_lsn = below.image, below.image_lsn
        return History(image, image_lsn, found.records[::-1])

    def status(self) -> dict[str, object]:
        resident_bytes, remote_only = self.layer_map.residency()
        return {
            "timeline_id": str(self.timeline_id),
            "last_record_lsn": self.last_record_lsn,
            "disk_consistent_lsn": self.disk_consistent_lsn,
            "gc_cutoff_lsn": self.gc_cutoff_lsn,
            "remote_consistent_lsn": (
                self.remote.remote_consistent_lsn if self.remote is not None else None
            ),
            "layers": {
                **self.layer_map.counts(),
                "resident_bytes": resident_bytes,
                "remote_only": remote_only,
            },
        }


def _bare(name: LayerName) -> str:
    """The layer's name without generation suffix (the remote index's key)."""
    return bare_name(name)

