"""The tenant manager: tenants and timelines on disk, and the Python API the server calls.

On disk (SPEC section 3)::

    DIR/tenants/<tenant_id>/config-v1                  overrides of [tenant_config], TOML (Neon's layout)
    DIR/tenants/<tenant_id>/timelines/<timeline_id>/   metadata + layer files

``config-v1`` and ``metadata`` are written with the crash-safe overwrite. A tenant
directory without ``config-v1``, or a timeline directory without ``metadata``, is what a
crash during creation leaves (the client never got a success reply): it is removed at
startup with a warning.

Every method raises the typed errors of :mod:`pageserver.errors`, which map one to
one to the wire error codes.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import trio

from pageserver import metrics
from pageserver.config import (
    ConfigError,
    PageserverConfig,
    TenantConfig,
    tenant_overrides_to_toml,
    validate_tenant_overrides,
)
from pageserver.errors import (
    AlreadyExists,
    BadRequest,
    InvalidId,
    NoRemoteStorage,
    PageserverError,
    RemoteUnavailable,
    ShuttingDown,
    TenantNotFound,
    TimelineNotFound,
)
from pageserver.io import TEMP_SUFFIX, IoContext
from pageserver.layers.batch import check_start_lsn
from pageserver.layers.key import TenantId, TimelineId
from pageserver.remote.generation import claim_generation, claim_owner, list_claims
from pageserver.remote.index import IndexPart, timelines_prefix
from pageserver.remote.s3 import open_remote_storage
from pageserver.remote.storage import RemoteStorage, retrying
from pageserver.remote.timeline_client import (
    RemoteTimelineClient,
    TenantRemote,
    load_newest_index,
)
from pageserver.tenant.compaction import CompactionResult
from pageserver.tenant.gc import GcResult
from pageserver.tenant.metadata import METADATA_FILE, TimelineMetadata, write_metadata
from pageserver.tenant.remote_timeline import evict_to_limit, reconcile
from pageserver.tenant.timeline import History, PutResult, Timeline

log = structlog.get_logger("pageserver.tenant")


CONFIG_FILE = "config-v1"
#: With remote storage: the tenant's generation on this pageserver (JSON, crash-safe).
GENERATION_FILE = "generation"
#: With remote storage: this data directory's identity, written in its generation claims.
NODE_ID_FILE = "node_id"
#: How long startup retries the object store before giving up on it.
STARTUP_REMOTE_ATTEMPTS_TIMEOUTS = 3
CONFIG_HEADER = (
    "# This file contains a specific per-tenant's config.\n"
    "#  It is read in case of pageserver restart.\n"
)
#: The table a ``config-v1`` holds its overrides in, after the header and a blank line: the
#: layout Neon's pageserver writes (and reads: a file of Neon's loads here as it is).
CONFIG_TABLE = "tenant_config"


parse_tenant_id = TenantId.parse
parse_timeline_id = TimelineId.parse


def render_toml(values: Mapping[str, Any]) -> str:
    """TOML for a flat map of ints, bools and strings (all a tenant config holds)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key} = "{escaped}"')
    return "".join(line + "\n" for line in lines)


class Tenant:
    def __init__(self, tenant_id: TenantId, path: str, defaults: TenantConfig, overrides: dict[str, Any]) -> None:
        self.tenant_id = tenant_id
        self.path = path
        self.defaults = defaults
        self.overrides = overrides
        self.config = defaults.with_overrides(tenant_overrides_to_toml(overrides))
        self.timelines: dict[TimelineId, Timeline] = {}
        self.lock = trio.Lock()
        #: With remote storage: the attachment (generation, staleness, the store).
        self.remote: TenantRemote | None = None

    def get_config(self) -> TenantConfig:
        return self.config

    def set_overrides(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self.config = self.defaults.with_overrides(tenant_overrides_to_toml(overrides))

    @property
    def timelines_dir(self) -> str:
        return os.path.join(self.path, "timelines")


class TenantManager:
    def __init__(self, ctx: IoContext, data_dir: str | os.PathLike[str], config: PageserverConfig) -> None:
        self.ctx = ctx
        self.data_dir = Path(data_dir)
        self.tenants_dir = self.data_dir / "tenants"
        self.config = config
        self.tenants: dict[TenantId, Tenant] = {}
        self.shutting_down = False
        #: Set when a graceful stop could not flush some timeline (the daemon exits 1).
        self.flush_failed = False
        self._nursery: trio.Nursery | None = None
        self._create_lock = trio.Lock()
        #: ``[remote_storage]``: the object store (None: a single-node pageserver).
        self.remote_storage: RemoteStorage | None = (
            open_remote_storage(config.remote_storage) if config.remote_storage is not None else None
        )
        self.node_id = ""
        #: Each timeline's background tasks: their cancel scope, and an event set once
        #: they have all exited (a detach waits for it before removing the directory).
        self._task_scopes: dict[tuple[TenantId, TimelineId], tuple[trio.CancelScope, trio.Event]] = {}
        self._evict_wakeup = trio.Event()
        self._evict_lock = trio.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        ctx: IoContext,
        data_dir: str | os.PathLike[str],
        config: PageserverConfig,
        *,
        flush_on_exit: bool = True,
    ) -> AsyncIterator[TenantManager]:
        """Load everything, run the flush tasks; on exit flush open layers and stop.

        ``flush_on_exit=False`` drops in-memory layers instead, which is what a crash does
        to them (tests use it to check that a restart keeps exactly what was durable).
        """
        mgr = cls(ctx, data_dir, config)
        await mgr.load()
        # Read at each scrape, with or without remote storage (it used to be set only by
        # the eviction pass, so it stayed 0 on a pageserver without one).
        # (Through a weak reference: the process-wide gauge must not keep a manager alive
        # after it closed, nor report its layers; tests open many in one process.)
        mgr_ref = weakref.ref(mgr)
        metrics.RESIDENT_LAYER_BYTES.set_function(
            lambda: m.resident_layer_bytes() if (m := mgr_ref()) is not None else 0.0
        )
        async with trio.open_nursery() as nursery:
            mgr._nursery = nursery
            for tenant in mgr.tenants.values():
                for tl in tenant.timelines.values():
                    mgr._start_background(tl)
            if mgr.remote_storage is not None and config.max_resident_layer_bytes is not None:
                nursery.start_soon(mgr._eviction_loop, config.max_resident_layer_bytes)
            elif config.max_resident_layer_bytes is not None:
                # Only uploaded layers can be evicted (their objects are the copy).
                log.warning(
                    "max_resident_layer_bytes is ignored without [remote_storage]",
                    max_resident_layer_bytes=config.max_resident_layer_bytes,
                )
            try:
                yield mgr
            finally:
                with trio.CancelScope(shield=True):
                    await mgr.shutdown(flush=flush_on_exit)
                nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            for tenant in mgr.tenants.values():
                for tl in tenant.timelines.values():
                    await tl.close_files()

    def _start_background(self, tl: Timeline) -> None:
        tl.image_compression = self.config.image_compression
        if self._nursery is not None:
            scope, done = trio.CancelScope(), trio.Event()
            self._nursery.start_soon(self._background, tl, scope, done)
            # Only once started: a detach waits for ``done``, which only the task sets.
            self._task_scopes[(tl.tenant_id, tl.timeline_id)] = (scope, done)

    async def _background(self, tl: Timeline, scope: trio.CancelScope, done: trio.Event) -> None:
        """A timeline's tasks: flush, compaction, GC, uploads (cancelled by a detach)."""
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(tl.flush_loop)
                    nursery.start_soon(tl.compaction_loop)
                    nursery.start_soon(tl.gc_loop)
                    if tl.remote is not None:
                        nursery.start_soon(tl.remote.run)
        finally:
            done.set()

    async def load(self) -> None:
        self.tenants_dir.mkdir(parents=True, exist_ok=True)
        if self.remote_storage is not None:
            self.node_id = await self._node_id()
            log.info(
                "remote storage", storage=self.remote_storage.description, node_id=self.node_id,
                concurrency_limit=self.remote_storage.concurrency_limit,
                timeout_s=self.remote_storage.timeout,
            )  # fmt: skip
        # SPEC section 3: every *.___temp goes at startup, those of the data directory and
        # of tenant directories too (a crash in a crash-safe overwrite of node_id, config-v1
        # or generation); the timelines' own are removed by Timeline.load.
        await self._remove_temp_files(self.data_dir)
        await self._remove_temp_files(self.tenants_dir)
        for entry in sorted(os.listdir(self.tenants_dir)):
            tpath = self.tenants_dir / entry
            if tpath.is_dir():
                await self._remove_temp_files(tpath)
            try:
                tenant_id = TenantId.parse(entry)
            except InvalidId:
                log.warning("ignoring unknown entry in tenants directory", entry=entry)
                continue
            cfg_path = tpath / CONFIG_FILE
            if not cfg_path.exists():
                log.warning("removing tenant directory without config-v1", tenant_id=entry)
                await self.ctx.remove_tree(str(tpath))
                continue
            overrides = await self._read_tenant_config(str(cfg_path))
            tenant = Tenant(tenant_id, str(tpath), self.config.tenant_config, overrides)
            if self.remote_storage is not None and not await self._reattach(tenant):
                continue
            tl_dir = Path(tenant.timelines_dir)
            tl_dir.mkdir(exist_ok=True)
            for tl_entry in sorted(os.listdir(tl_dir)):
                try:
                    timeline_id = TimelineId.parse(tl_entry)
                except InvalidId:
                    log.warning("ignoring unknown entry in timelines directory", entry=tl_entry)
                    continue
                path = tl_dir / tl_entry
                if not (path / METADATA_FILE).exists():
                    log.warning("removing timeline directory without metadata", timeline_id=tl_entry)
                    await self.ctx.remove_tree(str(path))
                    continue
                tl = await Timeline.load(
                    self.ctx, tenant_id, timeline_id, str(path), tenant.get_config
                )
                if tenant.remote is not None:
                    await self._connect_remote(tenant, tl, startup=True)
                tenant.timelines[timeline_id] = tl
            self.tenants[tenant_id] = tenant
        log.info(
            "tenants loaded",
            tenants=len(self.tenants),
            timelines=sum(len(t.timelines) for t in self.tenants.values()),
        )

    async def _remove_temp_files(self, directory: Path) -> None:
        """Unlink the ``*.___temp`` files directly in ``directory`` (leftovers of a crash in
        a crash-safe overwrite: the file they were to replace is whole)."""
        for entry in sorted(os.listdir(directory)):
            path = directory / entry
            if entry.endswith(TEMP_SUFFIX) and path.is_file():
                log.info("removing leftover file", file=str(path))
                await self.ctx.unlink(str(path))

    async def _read_tenant_config(self, path: str) -> dict[str, Any]:
        vf = await self.ctx.open(path)
        try:
            raw = await vf.read_exact_at((await vf.metadata()).size, 0)
        finally:
            await vf.close()
        try:
            data = tomllib.loads(raw.decode())
            # Neon's layout (and ours): the overrides in a [tenant_config] table. Files
            # written before we followed it hold the keys at the top level; they load too.
            if set(data) == {CONFIG_TABLE} and isinstance(data[CONFIG_TABLE], dict):
                data = data[CONFIG_TABLE]
            return validate_tenant_overrides(data)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ConfigError) as e:
            raise ConfigError(f"{path}: {e}") from None

    async def _write_tenant_config(self, tenant_path: str, overrides: Mapping[str, Any]) -> None:
        content = f"{CONFIG_HEADER}\n[{CONFIG_TABLE}]\n" + render_toml(tenant_overrides_to_toml(overrides))
        await self.ctx.crashsafe_overwrite(os.path.join(tenant_path, CONFIG_FILE), content.encode())

    async def shutdown(self, flush: bool = True) -> None:
        """Stop accepting writes and (by default) flush every open layer (graceful stop)."""
        if self.shutting_down:
            return
        self.shutting_down = True

        async def stop(tl: Timeline) -> None:
            if not await tl.shutdown(flush):
                self.flush_failed = True

        async with trio.open_nursery() as nursery:
            for tenant in self.tenants.values():
                for tl in tenant.timelines.values():
                    nursery.start_soon(stop, tl)
        if flush and self.remote_storage is not None:
            # A graceful stop waits for the upload queues (bounded: the store may be down).
            deadline = trio.current_time() + max(self.remote_storage.timeout, 1.0)
            for tenant in self.tenants.values():
                for tl in tenant.timelines.values():
                    if tl.remote is not None and not await tl.remote.wait_drained(deadline):
                        tl.log.warning(
                            "uploads still pending at shutdown; the next start uploads them",
                            disk_consistent_lsn=tl.disk_consistent_lsn,
                            remote_consistent_lsn=tl.remote.remote_consistent_lsn,
                        )

    # -- tenants and timelines ------------------------------------------------------------------

    def _check_running(self) -> None:
        if self.shutting_down:
            raise ShuttingDown("the pageserver is shutting down")

    def tenant(self, tenant_id: str) -> Tenant:
        tid = parse_tenant_id(tenant_id)
        tenant = self.tenants.get(tid)
        if tenant is None:
            raise TenantNotFound(f"tenant {tid} not found")
        return tenant

    def _check_attached(self, tenant: Tenant) -> None:
        """Raise ``TenantNotFound`` if ``tenant`` is no longer this server's: detached (or
        replaced) while the caller waited for a lock it took after :meth:`tenant`."""
        if self.tenants.get(tenant.tenant_id) is not tenant:
            raise TenantNotFound(f"tenant {tenant.tenant_id} not found")

    def timeline(self, tenant_id: str, timeline_id: str) -> Timeline:
        tenant = self.tenant(tenant_id)
        if tenant.remote is not None:
            tenant.remote.check_not_stale()
        tlid = parse_timeline_id(timeline_id)
        tl = tenant.timelines.get(tlid)
        if tl is None:
            raise TimelineNotFound(f"timeline {tlid} not found in tenant {tenant.tenant_id}")
        return tl

    @staticmethod
    def _validate_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        if overrides is None:
            return {}
        if not isinstance(overrides, Mapping):
            raise BadRequest("field 'config' must be a map")
        try:
            return validate_tenant_overrides(overrides, prefix="config.")
        except ConfigError as e:
            raise BadRequest(f"field {e}") from None

    async def create_tenant(self, tenant_id: str, overrides: Mapping[str, Any] | None = None) -> None:
        self._check_running()
        tid = parse_tenant_id(tenant_id)
        values = self._validate_overrides(overrides)
        async with self._create_lock:
            if tid in self.tenants:
                raise AlreadyExists(f"tenant {tid} already exists")
            remote = None
            if self.remote_storage is not None:
                remote = await self._claim_new(tid, must_be_new=True)
            path = self.tenants_dir / str(tid)
            if path.exists():  # a half-created leftover not loaded at startup
                await self._remove_tenant_dir(str(path))
            (path / "timelines").mkdir(parents=True)
            if remote is not None:
                await self._write_generation(str(path), remote.generation)
            await self._write_tenant_config(str(path), values)
            await self.ctx.fsync_dir(str(self.tenants_dir), force=True)
            tenant = Tenant(tid, str(path), self.config.tenant_config, values)
            tenant.remote = remote
            self.tenants[tid] = tenant
        log.info("tenant created", tenant_id=str(tid), overrides=tenant_overrides_to_toml(values))

    async def set_tenant_config(self, tenant_id: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """Replace all overrides (like Neon's PUT); returns the effective config."""
        self._check_running()
        tenant = self.tenant(tenant_id)
        values = self._validate_overrides(overrides if overrides is not None else {})
        async with tenant.lock:
            self._check_attached(tenant)
            await self._write_tenant_config(tenant.path, values)
            tenant.set_overrides(values)
        return tenant.config.to_toml_values()

    def effective_config(self, tenant_id: str) -> dict[str, Any]:
        return self.tenant(tenant_id).config.to_toml_values()

    async def create_timeline(self, tenant_id: str, timeline_id: str, start_lsn: int = 0) -> None:
        self._check_running()
        tenant = self.tenant(tenant_id)
        tlid = parse_timeline_id(timeline_id)
        check_start_lsn(start_lsn)
        if tenant.remote is not None:
            tenant.remote.check_not_stale()
        async with tenant.lock:
            self._check_attached(tenant)
            if tlid in tenant.timelines:
                raise AlreadyExists(f"timeline {tlid} already exists in tenant {tenant.tenant_id}")
            path = os.path.join(tenant.timelines_dir, str(tlid))
            if os.path.exists(path):
                await self.ctx.remove_tree(path)
            tl = await Timeline.create(
                self.ctx, tenant.tenant_id, tlid, path, tenant.get_config, start_lsn
            )
            if tenant.remote is not None:
                await self._connect_remote(tenant, tl, index=None)
            tenant.timelines[tlid] = tl
        self._start_background(tl)
        tl.log.info("timeline created", start_lsn=start_lsn)

    # -- data -------------------------------------------------------------------------------------

    async def put(self, tenant_id: str, timeline_id: str, records: Sequence[tuple[bytes, int, bytes]]) -> PutResult:
        self._check_running()
        return await self.timeline(tenant_id, timeline_id).put(records)

    async def get(self, tenant_id: str, timeline_id: str, key: bytes, lsn: int) -> bytes | None:
        return await self.timeline(tenant_id, timeline_id).get(key, lsn)

    async def get_history(self, tenant_id: str, timeline_id: str, key: bytes, lsn: int) -> History:
        return await self.timeline(tenant_id, timeline_id).get_history(key, lsn)

    async def compact(self, tenant_id: str, timeline_id: str) -> CompactionResult:
        self._check_running()
        return await self.timeline(tenant_id, timeline_id).compact()

    async def gc(self, tenant_id: str, timeline_id: str) -> GcResult:
        self._check_running()
        return await self.timeline(tenant_id, timeline_id).gc()

    async def flush(self, tenant_id: str, timeline_id: str) -> int:
        tl = self.timeline(tenant_id, timeline_id)
        return await tl.flush()

    def status(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        tenants = [self.tenant(tenant_id)] if tenant_id is not None else [
            self.tenants[t] for t in sorted(self.tenants, key=str)
        ]
        return [
            {
                "tenant_id": str(t.tenant_id),
                "generation": t.remote.generation if t.remote is not None else None,
                "timelines": [
                    t.timelines[tl].status() for tl in sorted(t.timelines, key=str)
                ],
            }
            for t in tenants
        ]

    # -- remote storage (SPEC section 10) --------------------------------------------------------

    def _require_remote(self) -> RemoteStorage:
        if self.remote_storage is None:
            raise NoRemoteStorage("this pageserver has no [remote_storage]")
        return self.remote_storage

    def _startup_deadline(self) -> float:
        storage = self._require_remote()
        return trio.current_time() + STARTUP_REMOTE_ATTEMPTS_TIMEOUTS * max(storage.timeout, 1.0)

    async def _node_id(self) -> str:
        """This data directory's identity (created once), written in generation claims."""
        path = self.data_dir / NODE_ID_FILE
        if path.exists():
            return path.read_text().strip()
        node = secrets.token_hex(16)
        await self.ctx.crashsafe_overwrite(str(path), (node + "\n").encode())
        return node

    async def _write_generation(self, tenant_path: str, generation: int) -> None:
        body = json.dumps({"generation": generation}).encode() + b"\n"
        await self.ctx.crashsafe_overwrite(os.path.join(tenant_path, GENERATION_FILE), body)

    def _read_generation(self, tenant_path: str) -> int | None:
        try:
            with open(os.path.join(tenant_path, GENERATION_FILE), "rb") as f:
                gen = json.loads(f.read()).get("generation")
        except (OSError, ValueError, AttributeError):
            return None
        return gen if isinstance(gen, int) and not isinstance(gen, bool) else None

    async def _claim_new(self, tid: TenantId, *, must_be_new: bool) -> TenantRemote:
        """Claim the next generation of ``tid`` (a client waits: ``remote_unavailable``)."""
        storage = self._require_remote()
        deadline = trio.current_time() + max(storage.timeout, 1.0)
        if must_be_new and await list_claims(storage, str(tid), deadline=deadline):
            raise AlreadyExists(
                f"tenant {tid} exists in remote storage; use tenant_attach to attach it"
            )
        gen = await claim_generation(storage, str(tid), self.node_id, deadline=deadline)
        log.info("claimed generation", tenant_id=str(tid), generation=gen)
        return TenantRemote(storage, str(tid), gen, self.node_id)

    async def _reattach(self, tenant: Tenant) -> bool:
        """Startup: claim a new generation for a tenant held here, unless another
        pageserver claimed a newer one than ours (then drop the local copy: False)."""
        storage = self._require_remote()
        tid = str(tenant.tenant_id)
        deadline = self._startup_deadline()
        ours = self._read_generation(tenant.path)
        claims = await list_claims(storage, tid, deadline=deadline)
        newest = claims[-1] if claims else 0
        if ours is not None and newest > ours:
            owner = await claim_owner(storage, tid, newest, deadline=deadline)
            if owner != self.node_id:
                log.warning(
                    "tenant was attached elsewhere with a newer generation; dropping the local copy",
                    tenant_id=tid, our_generation=ours, newer_generation=newest,
                )  # fmt: skip
                await self._remove_tenant_dir(tenant.path)
                return False
        gen = await claim_generation(storage, tid, self.node_id, deadline=deadline)
        await self._write_generation(tenant.path, gen)
        tenant.remote = TenantRemote(storage, tid, gen, self.node_id)
        log.info("claimed generation", tenant_id=tid, generation=gen, previous=ours)
        return True

    async def _connect_remote(
        self,
        tenant: Tenant,
        tl: Timeline,
        *,
        startup: bool = False,
        index: IndexPart | None = None,
    ) -> None:
        """Give ``tl`` its upload queue; at startup (or attach, with ``index``) reconcile
        the local layers with the newest remote index first."""
        remote = tenant.remote
        assert remote is not None
        if startup:
            found = await load_newest_index(
                remote.storage, remote.tenant_id, str(tl.timeline_id), remote.generation,
                deadline=self._startup_deadline(),
            )  # fmt: skip
            index = found[1] if found is not None else None
        client = RemoteTimelineClient(
            remote, str(tl.timeline_id), self.ctx, start_lsn=tl.start_lsn, remote_index=index
        )
        client.on_index_uploaded = self._poke_eviction
        await reconcile(self.ctx, tl.dir, tl.layer_map, client, index)
        inner = tl.layer_map.downloader
        assert inner is not None

        async def download_then_evict(layer: Any) -> None:
            limit = self.config.max_resident_layer_bytes
            if limit is not None:
                # Make room first, so the download does not take us over the limit.
                await self._evict_down_to(max(0, limit - layer.file_size))
            await inner(layer)
            self._poke_eviction()

        tl.layer_map.downloader = download_then_evict
        if index is not None:
            await tl.adopt_remote_state(index.disk_consistent_lsn, index.latest_gc_cutoff_lsn)
        tl.remote = client
        client.schedule_index_upload(tl.disk_consistent_lsn, tl.gc_cutoff_lsn)
        tl._update_gauges()

    async def attach_tenant(
        self, tenant_id: str, overrides: Mapping[str, Any] | None = None
    ) -> tuple[int, list[str]]:
        """``tenant_attach``: claim a generation, load each timeline's newest index not above
        it, serve reads at once (layers are downloaded on demand)."""
        self._check_running()
        storage = self._require_remote()
        tid = parse_tenant_id(tenant_id)
        values = self._validate_overrides(overrides)
        async with self._create_lock:
            held = self.tenants.get(tid)
            if held is not None:
                if held.remote is not None and not held.remote.stale:
                    return held.remote.generation, sorted(str(t) for t in held.timelines)
                raise AlreadyExists(f"tenant {tid} is held here with a stale generation; detach it first")
            remote = await self._claim_new(tid, must_be_new=False)
            deadline = remote.client_deadline()
            names = await retrying(
                "list timelines", lambda: storage.list_dirs(timelines_prefix(str(tid))), deadline=deadline
            )
            indexes: dict[TimelineId, IndexPart] = {}
            for name in names:
                try:
                    tlid = TimelineId.parse(name)
                except InvalidId:
                    continue
                found = await load_newest_index(
                    storage, str(tid), str(tlid), remote.generation, deadline=deadline
                )
                if found is None:
                    log.warning("remote timeline without an index; skipped", tenant_id=str(tid), timeline_id=str(tlid))
                    continue
                indexes[tlid] = found[1]
            path = self.tenants_dir / str(tid)
            if path.exists():
                await self._remove_tenant_dir(str(path))
            (path / "timelines").mkdir(parents=True)
            await self._write_generation(str(path), remote.generation)
            await self._write_tenant_config(str(path), values)
            tenant = Tenant(tid, str(path), self.config.tenant_config, values)
            tenant.remote = remote
            for tlid, index in sorted(indexes.items(), key=lambda kv: str(kv[0])):
                tl_path = os.path.join(tenant.timelines_dir, str(tlid))
                os.mkdir(tl_path)
                meta = TimelineMetadata(
                    index.disk_consistent_lsn,
                    index.initdb_lsn,
                    max(index.initdb_lsn, index.latest_gc_cutoff_lsn),
                )
                await write_metadata(self.ctx, tl_path, meta)
                tl = await Timeline.load(self.ctx, tid, tlid, tl_path, tenant.get_config)
                await self._connect_remote(tenant, tl, index=index)
                tenant.timelines[tlid] = tl
            await self.ctx.fsync_dir(tenant.timelines_dir, force=True)
            await self.ctx.fsync_dir(str(self.tenants_dir), force=True)
            self.tenants[tid] = tenant
            for tl in tenant.timelines.values():
                self._start_background(tl)
        log.info(
            "tenant attached", tenant_id=str(tid), generation=remote.generation,
            timelines=len(tenant.timelines),
        )  # fmt: skip
        return remote.generation, sorted(str(t) for t in tenant.timelines)

    async def _remove_tenant_dir(self, path: str) -> None:
        """Remove a tenant's local copy that this pageserver gave up (detached, or attached
        elsewhere with a newer generation). Its ``config-v1`` goes first, durably: a
        directory without one is removed at startup, never loaded, so a removal stopped
        half-way (an error, a crash) cannot bring the tenant back here, where loading it
        would claim a new generation and fence its new holder."""
        await self.ctx.remove_tree(path, first=CONFIG_FILE)

    async def detach_tenant(self, tenant_id: str) -> None:
        """``tenant_detach``: flush, wait for every pending upload, stop, remove the local copy."""
        self._check_running()
        storage = self._require_remote()
        tenant = self.tenant(tenant_id)
        # The tenant's lock too: no timeline is created (or config set) while it goes.
        async with self._create_lock, tenant.lock:
            self._check_attached(tenant)
            remote = tenant.remote
            live = remote is not None and not remote.stale
            deadline = trio.current_time() + max(storage.timeout, 1.0) * 3
            async with AsyncExitStack() as paused:
                if live:
                    # From here on puts are refused and no compaction or GC runs (none
                    # can queue uploads behind the wait), until the timelines are shut
                    # down; or, if the uploads do not finish in time, until the detach
                    # fails, and the tenant goes on as before. (It used to shut the
                    # timelines down before its last wait, which cannot be undone: after
                    # a failed wait every put answered shutting_down until a retried
                    # detach or a restart.)
                    with trio.move_on_at(deadline) as waiting:
                        for tl in tenant.timelines.values():
                            await paused.enter_async_context(tl.paused())
                    if waiting.cancelled_caught:
                        raise RemoteUnavailable(
                            f"tenant {tenant_id}: a compaction or GC did not finish in time;"
                            " retry the detach"
                        )
                    for tl in tenant.timelines.values():
                        await tl.flush()
                    await self._wait_uploads(tenant, deadline)
                # Nothing came in or was queued since: the shutdown's flush has nothing
                # to write, and there is nothing more to upload (checked: should that
                # ever change, the detach fails rather than remove a copy not uploaded).
                for tl in tenant.timelines.values():
                    await tl.shutdown(flush=live)
                if live:
                    await self._wait_uploads(tenant, deadline)
            for tlid, tl in tenant.timelines.items():
                entry = self._task_scopes.pop((tenant.tenant_id, tlid), None)
                with trio.CancelScope(shield=True):
                    if entry is not None:
                        # Gone before the directory is: a cancelled compaction still in
                        # its (shielded) commit would add a layer to a directory being
                        # removed.
                        entry[0].cancel()
                        await entry[1].wait()
                    await tl.close_files()
            del self.tenants[tenant.tenant_id]
            try:
                await self._remove_tenant_dir(tenant.path)
            except OSError as e:  # detached all the same: the copy is stale from now on
                log.warning(
                    "could not remove the detached tenant's directory",
                    tenant_id=str(tenant.tenant_id), error=str(e),
                )  # fmt: skip
            await self.ctx.fsync_dir(str(self.tenants_dir), force=True)
        log.info("tenant detached", tenant_id=str(tenant.tenant_id))

    async def _wait_uploads(self, tenant: Tenant, deadline: float) -> None:
        for tl in tenant.timelines.values():
            if tl.remote is not None and not await tl.remote.wait_drained(deadline):
                if tenant.remote is not None:
                    tenant.remote.check_not_stale()
                raise RemoteUnavailable(
                    f"timeline {tl.timeline_id}: uploads did not finish in time; retry the detach"
                )

    def resident_layer_bytes(self) -> float:
        """Bytes of layer files on local disk over every timeline: the
        ``pageserver_resident_layer_bytes`` gauge (what ``status`` reports per timeline)."""
        return float(
            sum(
                tl.layer_map.residency()[0]
                for tenant in list(self.tenants.values())
                for tl in list(tenant.timelines.values())
            )
        )

    def _poke_eviction(self) -> None:
        self._evict_wakeup.set()

    async def _eviction_loop(self, limit: int) -> None:
        """Keep resident layer bytes at or under ``max_resident_layer_bytes``: a pass every
        second, after each uploaded index and after each download (and a download makes
        room for itself first)."""
        while True:
            with trio.move_on_after(1.0):
                await self._evict_wakeup.wait()
            self._evict_wakeup = trio.Event()
            await self._evict_down_to(limit)

    async def _evict_down_to(self, target: int) -> int:
        """One eviction pass (one at a time); returns the resident layer bytes after it."""
        async with self._evict_lock:
            candidates = [
                (hl, tl.remote)
                for tenant in list(self.tenants.values())
                for tl in list(tenant.timelines.values())
                if tl.remote is not None
                for hl in list(tl.layer_map.layers)
            ]
            total = sum(hl.file_size for hl, _ in candidates if hl.resident)
            if total > target:
                try:
                    total = await evict_to_limit(self.ctx, candidates, total, target)
                except (OSError, PageserverError) as e:
                    log.error("eviction failed", error=repr(e))
            return total
