"""Per-tenant remote state and the upload queue of one timeline (SPEC section 10).

:class:`TenantRemote` holds what a tenant's attachment is: the object store, the
generation this pageserver claimed, and whether it has become *stale* (a newer claim
exists: another pageserver holds the tenant). Stale is final: uploads and deletions stop,
and the tenant manager answers the tenant's requests with ``stale_generation``.

:class:`RemoteTimelineClient` is the upload queue of one timeline, after Neon's
``remote_timeline_client``. The timeline *schedules*:

- ``schedule_layer_upload(name, path, size)``: a new layer (flush, compaction);
- ``schedule_layer_removal(name)``: a layer that left the layer map (compaction, GC);
- ``schedule_index_upload(disk_consistent_lsn, gc_cutoff_lsn)``: the index should say this.

The scheduled state is a *projected index*: the layers the next index will name and its
``disk_consistent_lsn``. One background task (:meth:`run`) turns it into uploads, in rounds:

1. take a snapshot: the projected index, the layers not uploaded yet, the deletions due;
2. upload those layers in parallel (at most 8 at once per process, each holding its file
   in memory; at most ``concurrency_limit`` requests in flight), each retried with
   back-off for ever;
3. check no newer generation was claimed, then upload the snapshot's index: every layer it
   names is now in the bucket (uploaded in step 2 or named by an earlier index);
4. check the generation again, then delete the removed layers' objects: the index just
   uploaded no longer names them (first the timeline's indexes of older generations,
   which may: ``_delete_old_indexes``).

Everything scheduled between two rounds is coalesced into the next round: ten flushes while
an upload is slow become one index upload. A layer that a compaction removed before its
upload began is never uploaded; one that vanished while being uploaded (its file is gone)
makes the round skip its index (the snapshot named it) and go again at once. Failures never
stall ingest or reads: nothing waits on this queue but ``tenant_detach``, a graceful stop and
callers who ask for ``remote_consistent_lsn``.

``remote_consistent_lsn`` is the ``disk_consistent_lsn`` of the last index uploaded. The
queue is not persistent: at startup the tenant manager compares the local layers with the
newest remote index and schedules whatever is missing again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import structlog
import trio

from pageserver import failpoints, metrics
from pageserver.errors import PageserverError, StaleGeneration
from pageserver.io import IoContext
from pageserver.remote.download import read_layer_file, write_downloaded_layer
from pageserver.remote.generation import newest_claim
from pageserver.remote.index import (
    INDEX_FILE_NAME,
    IndexPart,
    LayerMeta,
    index_generation,
    index_key,
    layer_key,
    timeline_prefix,
)
from pageserver.remote.storage import ObjectNotFound, RemoteStorage, retrying

log = structlog.get_logger("pageserver.remote")


class TenantRemote:
    """One tenant's attachment: storage, generation, staleness."""

    def __init__(self, storage: RemoteStorage, tenant_id: str, generation: int, node_id: str) -> None:
        self.storage = storage
        self.tenant_id = tenant_id
        self.generation = generation
        self.node_id = node_id
        self.stale = False
        self.stale_reason = ""
        self.log = log.bind(tenant_id=tenant_id, generation=generation)

    def client_deadline(self) -> float:
        """The deadline of a request a client waits on: one ``timeout`` from now."""
        return trio.current_time() + max(self.storage.timeout, 1.0)

    def check_not_stale(self) -> None:
        if self.stale:
            raise StaleGeneration(self.stale_reason)

    def mark_stale(self, newer: int) -> None:
        if not self.stale:
            self.stale = True
            self.stale_reason = (
                f"tenant {self.tenant_id} was attached elsewhere with generation {newer} "
                f"(ours is {self.generation}); this pageserver no longer writes for it"
            )
            self.log.error("stale generation: a newer attachment exists; stopping writes", newer_generation=newer)

    async def still_current(self, *, deadline: float | None = None) -> bool:
        """List the claims; a newer one than ours makes this attachment stale (final).

        Whoever made the newer claim: a running attachment knows its own generation, so a
        newer claim is always another attachment, even one naming this ``node_id``. That
        is a copy of this data directory (a restored snapshot, a cloned VM) started
        elsewhere; exempting it let this process go on compacting and deleting the
        objects the copy's index names. (Only a restart, which cannot tell its own claim
        whose reply was lost from a copy's, goes by the ``node_id``: ``_reattach``.)
        """
        if self.stale:
            return False
        newest = await newest_claim(self.storage, self.tenant_id, deadline=deadline)
        if newest > self.generation:
            self.mark_stale(newest)
            return False
        return True


async def index_objects(
    storage: RemoteStorage, tenant_id: str, timeline_id: str, *, deadline: float | None
) -> list[tuple[int, str]]:
    """``(generation, key)`` of every index object of the timeline, newest first (-1 for
    one without a generation suffix)."""
    prefix = timeline_prefix(tenant_id, timeline_id)
    objs = await retrying(
        f"list {prefix}", lambda: storage.list_objects(prefix + INDEX_FILE_NAME), deadline=deadline
    )
    found = [(g, o.key) for o in objs if (g := index_generation(o.key)) is not None]
    return sorted(found, reverse=True)


async def load_newest_index(
    storage: RemoteStorage, tenant_id: str, timeline_id: str, max_generation: int,
    *, deadline: float | None,
) -> tuple[int, IndexPart] | None:  # fmt: skip
    """The index with the highest generation not above ``max_generation``, or None."""
    for gen, key in await index_objects(storage, tenant_id, timeline_id, deadline=deadline):
        if gen > max_generation:
            continue
        try:
            raw = await retrying(f"get {key}", partial(storage.get, key), deadline=deadline)
        except ObjectNotFound:
            continue
        return gen, IndexPart.decode(raw, key)
    return None


@dataclass(slots=True)
class _Upload:
    path: str
    meta: LayerMeta


class RemoteTimelineClient:
    def __init__(
        self,
        tenant: TenantRemote,
        timeline_id: str,
        ctx: IoContext,
        *,
        start_lsn: int,
        remote_index: IndexPart | None,
    ) -> None:
        self.tenant = tenant
        self.storage = tenant.storage
        self.timeline_id = timeline_id
        self.ctx = ctx
        self.start_lsn = start_lsn
        #: what the last uploaded index names (bare name -> meta); the eviction candidates
        self.uploaded: dict[str, LayerMeta] = dict(remote_index.layers) if remote_index else {}
        self.remote_consistent_lsn: int | None = (
            remote_index.disk_consistent_lsn if remote_index else None
        )
        self._projected: dict[str, LayerMeta] = dict(self.uploaded)
        self._projected_dcl = remote_index.disk_consistent_lsn if remote_index else start_lsn
        self._gc_cutoff = remote_index.latest_gc_cutoff_lsn if remote_index else start_lsn
        self._pending_uploads: dict[str, _Upload] = {}
        #: object key -> bare name, deletions waiting for an index without them
        self._pending_deletions: dict[str, str] = {}
        self._dirty = False
        self._wakeup = trio.Event()
        self._progress = trio.Event()
        self._busy = False
        self._stopped = False
        self.log = tenant.log.bind(timeline_id=timeline_id)
        labels = {"tenant_id": tenant.tenant_id, "timeline_id": timeline_id}
        self._m_rcl = metrics.REMOTE_CONSISTENT_LSN.labels(**labels)
        if self.remote_consistent_lsn is not None:
            self._m_rcl.set(self.remote_consistent_lsn)
        #: called after each uploaded index (the eviction task listens)
        self.on_index_uploaded: Callable[[], None] | None = None

    # -- scheduling (synchronous: called from the timeline without awaiting) --------------

    @property
    def generation(self) -> int:
        return self.tenant.generation

    def layer_meta(self, name: str) -> LayerMeta | None:
        """The projected index's entry of a layer (None if it names none)."""
        return self._projected.get(name)

    def is_uploaded(self, name: str, generation: int | None) -> bool:
        meta = self.uploaded.get(name)
        return meta is not None and meta.generation == generation

    def schedule_layer_upload(self, name: str, path: str, file_size: int) -> None:
        meta = LayerMeta(file_size, self.generation)
        self._projected[name] = meta
        self._pending_uploads[name] = _Upload(path, meta)
        self._pending_deletions.pop(self._layer_key(name, meta.generation), None)
        self._poke()

    def schedule_layer_removal(self, name: str) -> None:
        meta = self._projected.pop(name, None)
        self._pending_uploads.pop(name, None)
        if meta is not None:
            # Maybe uploaded (or being uploaded): delete after an index without it.
            self._pending_deletions[self._layer_key(name, meta.generation)] = name
        self._poke()

    def schedule_index_upload(self, disk_consistent_lsn: int, gc_cutoff_lsn: int | None = None) -> None:
        """The next index says ``disk_consistent_lsn`` (and, when given, the timeline's
        ``gc_cutoff_lsn`` as ``latest_gc_cutoff_lsn``); neither ever goes back."""
        self._projected_dcl = max(self._projected_dcl, disk_consistent_lsn)
        if gc_cutoff_lsn is not None:
            self._gc_cutoff = max(self._gc_cutoff, gc_cutoff_lsn)
        self._poke()

    def _poke(self) -> None:
        self._dirty = True
        self._wakeup.set()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    @property
    def drained(self) -> bool:
        return not (self._dirty or self._busy or self._pending_uploads or self._pending_deletions)

    async def wait_drained(self, deadline: float | None = None) -> bool:
        """Wait until everything scheduled is uploaded and deleted. False on the deadline
        (or when the queue stopped: stale generation)."""
        while not self.drained:
            if self._stopped or self.tenant.stale:
                return False
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._progress.wait()
                continue
            return False
        return True

    # -- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                if not self._dirty:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                if self.tenant.stale:
                    return
                self._busy = True
                try:
                    again = await self._round()
                finally:
                    self._busy = False
                    self._notify()
                if self.tenant.stale:
                    return
                if again:
                    self._dirty = True
        finally:
            self._stopped = True
            self._notify()

    async def _round(self) -> bool:
        """One round of the module docstring; True if it must go again at once."""
        self._dirty = False
        index = IndexPart(
            disk_consistent_lsn=self._projected_dcl,
            initdb_lsn=self.start_lsn,
            latest_gc_cutoff_lsn=self._gc_cutoff,
            layers=dict(self._projected),
        )
        uploads = dict(self._pending_uploads)
        deletions = dict(self._pending_deletions)
        vanished: list[str] = []

        async def upload_one(name: str, up: _Upload) -> None:
            if not await self._upload_layer(name, up):
                vanished.append(name)

        async with trio.open_nursery() as nursery:
            for name, up in uploads.items():
                nursery.start_soon(upload_one, name, up)
        for name, up in uploads.items():
            if self._pending_uploads.get(name) is up:
                del self._pending_uploads[name]
        if self.tenant.stale:
            return False
        if vanished:
            self.log.info("layers removed while uploading; rebuilding the index", layers=vanished)
            return True
        await self._upload_index(index)
        if self.tenant.stale:
            return False
        # Never delete an object the index just uploaded names (a name re-created with
        # the same generation after its removal was scheduled).
        named = {self._layer_key(n, m.generation) for n, m in index.layers.items()}
        due = [k for k in deletions if k not in named]
        if due:
            await self._delete_old_indexes()
            if self.tenant.stale:
                return False
            await self._delete(due)
            for k in due:
                self._pending_deletions.pop(k, None)
        return False

    async def _upload_layer(self, name: str, up: _Upload) -> bool:
        """Upload one layer file (retried for ever); False if its file is gone and no
        index needs it any more (a compaction removed it meanwhile)."""
        key = self._layer_key(name, up.meta.generation)

        async def attempt() -> None:
            if self.tenant.stale:
                return
            async with self.storage.upload_slots():
                data = await self.ctx.run_job(read_layer_file, self.ctx, up.path)
                if len(data) != up.meta.file_size:
                    raise PageserverError(
                        f"{up.path}: {len(data)} bytes, expected {up.meta.file_size}"
                    )
                await self.storage.put(key, data)
            metrics.REMOTE_UPLOAD_BYTES.inc(up.meta.file_size)
            metrics.REMOTE_UPLOADS.labels(kind="layer").inc()

        def on_error(e: BaseException, attempt_no: int) -> None:
            if isinstance(e, FileNotFoundError) and self._projected.get(name) != up.meta:
                raise _Vanished() from None
            if attempt_no in (1, 3) or attempt_no % 20 == 0:
                self.log.warning(
                    "layer upload failed; retrying", key=key, attempt=attempt_no, error=_short(e)
                )

        try:
            await retrying(f"upload {key}", attempt, deadline=None, on_error=on_error)
        except _Vanished:
            return False
        return True

    def _layer_key(self, name: str, generation: int | None) -> str:
        return layer_key(self.tenant.tenant_id, self.timeline_id, name, generation)

    async def _upload_index(self, index: IndexPart) -> None:
        key = index_key(self.tenant.tenant_id, self.timeline_id, self.generation)
        body = index.encode()

        async def attempt() -> None:
            await failpoints.failpoint("remote-before-index-upload")
            if not await self.tenant.still_current(deadline=None):
                return
            await self.storage.put(key, body)

        await retrying(f"upload {key}", attempt, deadline=None)
        if self.tenant.stale:
            return
        metrics.REMOTE_UPLOAD_BYTES.inc(len(body))
        metrics.REMOTE_UPLOADS.labels(kind="index").inc()
        self.uploaded = index.layers
        self.remote_consistent_lsn = index.disk_consistent_lsn
        self._m_rcl.set(index.disk_consistent_lsn)
        if self.on_index_uploaded is not None:
            self.on_index_uploaded()

    async def _delete_old_indexes(self) -> None:
        """Before this generation deletes layer objects: delete the indexes of older
        generations (of this timeline), which may name them.

        SPEC section 10: "every layer an uploaded index names exists in the bucket". An
        older generation's index names the layers of its time; once this generation's
        index is uploaded, nothing reads those any more (an attach loads the newest index
        not above its own generation), but a layer this generation deletes would leave
        them naming a missing object. So they go first; an index is never deleted before
        a newer one exists (ours, just uploaded). Listed before every round of deletions,
        not once: the older pageserver's index upload that passed its stale check just
        before our claim may still land later (a slow PUT), and it would stay.
        """
        indexes = await index_objects(self.storage, self.tenant.tenant_id, self.timeline_id, deadline=None)
        old = [key for gen, key in indexes if gen < self.generation]
        if old:
            await self._delete(old)
            if not self.tenant.stale:
                self.log.info("deleted the indexes of older generations", indexes=len(old))

    async def _delete(self, keys: list[str]) -> None:
        async def attempt() -> None:
            await failpoints.failpoint("remote-before-delete")
            if not await self.tenant.still_current(deadline=None):
                self.log.error("refusing to delete objects: stale generation", objects=len(keys))
                return
            await self.storage.delete(keys)
            metrics.REMOTE_DELETIONS.inc(len(keys))

        await retrying(f"delete {len(keys)} objects", attempt, deadline=None)

    # -- downloads ------------------------------------------------------------------------------

    async def download_layer(self, name: str, final_path: str) -> None:
        """Fetch a layer the index names to ``final_path`` (a client waits: deadline)."""
        meta = self.uploaded.get(name) or self._projected.get(name)
        if meta is None:
            raise PageserverError(f"layer {name} is not local and no index names it")
        key = layer_key(self.tenant.tenant_id, self.timeline_id, name, meta.generation)
        try:
            if os.stat(final_path).st_size == meta.file_size:
                # Already here: a download whose reader went away after its rename (a std-fs
                # job notices the cancel only at its next operation), or an eviction whose
                # unlink failed. The file was fsynced and renamed whole; adopt it.
                await self.ctx.fsync_dir(os.path.dirname(final_path))
                return
        except FileNotFoundError:
            pass
        t0 = time.perf_counter()
        try:
            data = await retrying(
                f"download {key}", lambda: self.storage.get(key), deadline=self.tenant.client_deadline()
            )
        except ObjectNotFound:
            raise PageserverError(f"layer object {key} is missing from remote storage") from None
        await self.ctx.run_job(write_downloaded_layer, self.ctx, final_path, data, meta.file_size)
        elapsed = time.perf_counter() - t0
        metrics.REMOTE_DOWNLOAD_BYTES.inc(len(data))
        metrics.REMOTE_DOWNLOAD_SECONDS.observe(elapsed)
        self.log.info("downloaded layer", layer=os.path.basename(final_path), bytes=len(data), duration_s=round(elapsed, 4))


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else repr(e)
    return text[:300]


class _Vanished(Exception):
    """A layer's file disappeared before its upload and no index needs it any more."""
