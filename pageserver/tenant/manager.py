"""The tenant manager: tenants and timelines on disk, and the Python API the server calls.

On disk (SPEC section 3)::

    DIR/tenants/<tenant_id>/config-v1                  overrides of [tenant_config], TOML
    DIR/tenants/<tenant_id>/timelines/<timeline_id>/   metadata + layer files

``config-v1`` and ``metadata`` are written with the crash-safe overwrite. A tenant
directory without ``config-v1``, or a timeline directory without ``metadata``, is what a
crash during creation leaves (the client never got a success reply): it is removed at
startup with a warning.

Every method raises the typed errors of :mod:`pageserver.errors`, which map one to
one to the wire error codes.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import trio

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
    ShuttingDown,
    TenantNotFound,
    TimelineNotFound,
)
from pageserver.io import IoContext
from pageserver.layers.batch import check_start_lsn
from pageserver.layers.key import TenantId, TimelineId
from pageserver.tenant.compaction import CompactionResult
from pageserver.tenant.metadata import METADATA_FILE
from pageserver.tenant.timeline import History, PutResult, Timeline

log = structlog.get_logger("pageserver.tenant")


CONFIG_FILE = "config-v1"
CONFIG_HEADER = (
    "# This file contains a specific per-tenant's config.\n"
    "#  It is read in case of pageserver restart.\n"
)


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
        async with trio.open_nursery() as nursery:
            mgr._nursery = nursery
            for tenant in mgr.tenants.values():
                for tl in tenant.timelines.values():
                    mgr._start_background(tl)
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
            self._nursery.start_soon(tl.flush_loop)
            self._nursery.start_soon(tl.compaction_loop)

    async def load(self) -> None:
        self.tenants_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(os.listdir(self.tenants_dir)):
            tpath = self.tenants_dir / entry
            try:
                tenant_id = TenantId.parse(entry)
            except InvalidId:
                log.warning("ignoring unknown entry in tenants directory", entry=entry)
                continue
            cfg_path = tpath / CONFIG_FILE
            if not cfg_path.exists():
                log.warning("removing tenant directory without config-v1", tenant_id=entry)
                shutil.rmtree(tpath)
                continue
            overrides = await self._read_tenant_config(str(cfg_path))
            tenant = Tenant(tenant_id, str(tpath), self.config.tenant_config, overrides)
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
                    shutil.rmtree(path)
                    continue
                tenant.timelines[timeline_id] = await Timeline.load(
                    self.ctx, tenant_id, timeline_id, str(path), tenant.get_config
                )
            self.tenants[tenant_id] = tenant
        log.info(
            "tenants loaded",
            tenants=len(self.tenants),
            timelines=sum(len(t.timelines) for t in self.tenants.values()),
        )

    async def _read_tenant_config(self, path: str) -> dict[str, Any]:
        vf = await self.ctx.open(path)
        try:
            raw = await vf.read_exact_at((await vf.metadata()).size, 0)
        finally:
            await vf.close()
        try:
            data = tomllib.loads(raw.decode())
            return validate_tenant_overrides(data)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ConfigError) as e:
            raise ConfigError(f"{path}: {e}") from None

    async def _write_tenant_config(self, tenant_path: str, overrides: Mapping[str, Any]) -> None:
        content = CONFIG_HEADER + render_toml(tenant_overrides_to_toml(overrides))
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

    def timeline(self, tenant_id: str, timeline_id: str) -> Timeline:
        tenant = self.tenant(tenant_id)
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
            path = self.tenants_dir / str(tid)
            if path.exists():  # a half-created leftover not loaded at startup
                shutil.rmtree(path)
            (path / "timelines").mkdir(parents=True)
            await self._write_tenant_config(str(path), values)
            await self.ctx.fsync_dir(str(self.tenants_dir), force=True)
            self.tenants[tid] = Tenant(tid, str(path), self.config.tenant_config, values)
        log.info("tenant created", tenant_id=str(tid), overrides=tenant_overrides_to_toml(values))

    async def set_tenant_config(self, tenant_id: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """Replace all overrides (like Neon's PUT); returns the effective config."""
        self._check_running()
        tenant = self.tenant(tenant_id)
        values = self._validate_overrides(overrides if overrides is not None else {})
        async with tenant.lock:
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
        async with tenant.lock:
            if tlid in tenant.timelines:
                raise AlreadyExists(f"timeline {tlid} already exists in tenant {tenant.tenant_id}")
            path = os.path.join(tenant.timelines_dir, str(tlid))
            if os.path.exists(path):
                shutil.rmtree(path)
            tl = await Timeline.create(
                self.ctx, tenant.tenant_id, tlid, path, tenant.get_config, start_lsn
            )
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
                "timelines": [
                    t.timelines[tl].status() for tl in sorted(t.timelines, key=str)
                ],
            }
            for t in tenants
        ]
