"""``pageserver run``: start-up and shutdown of the daemon process.

Start-up order: create DIR with a default config if it is missing, load and validate the
config, resolve the io engine once (config, ``PAGESERVER_VIRTUAL_FILE_IO_ENGINE``,
probe), raise ``RLIMIT_NOFILE``'s soft limit (every connection is an fd, and trio's
listener only backs off on ``EMFILE``), bind the listeners, load tenants, then serve the
wire protocol (:mod:`pageserver.server.server`) and ``/metrics`` until SIGINT/SIGTERM.
"""

from __future__ import annotations

import gc
import resource
import signal
import sys
from pathlib import Path

import structlog
import trio

from pageserver import metrics
from pageserver.config import ConfigError, PageserverConfig, ensure_data_dir, load_config
from pageserver.errors import PageserverError
from pageserver.io import IoContext, IoEngine, resolve_engine
from pageserver.server.metrics_http import serve_metrics
from pageserver.server.server import BindError, Server, listener_address, open_listeners
from pageserver.tenant.manager import TenantManager

log = structlog.get_logger("pageserver")


def raise_fd_limit() -> None:
    """Lift the soft fd limit to the hard one: many connections plus the fd table."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def prepare(data_dir: str) -> tuple[PageserverConfig, IoEngine]:
    created = ensure_data_dir(data_dir)
    config = load_config(data_dir)
    engine, warning = resolve_engine(config.virtual_file_io_engine)
    if warning:
        log.warning(warning)
    metrics.IO_ENGINE_KIND.info({"kind": engine.kind})
    log.info(
        "pageserver starting",
        data_dir=str(Path(data_dir).resolve()),
        created_data_dir=created,
        io_engine=engine.kind,
        listen_addr=config.listen_addr,
        metrics_addr=config.metrics_addr,
        max_file_descriptors=config.max_file_descriptors,
        no_sync=config.no_sync,
        image_compression=config.image_compression,
        tenant_config=config.tenant_config.to_toml_values(),
    )
    return config, engine


async def serve(data_dir: str, config: PageserverConfig, engine: IoEngine) -> int:
    """Bind, load tenants, serve until SIGINT/SIGTERM, then stop gracefully.

    Listeners are bound before tenants are loaded, so a taken port fails in milliseconds
    with :class:`BindError` instead of after a long load. The signal receiver is opened
    first, so a SIGTERM during start-up is not lost (it stops the daemon once serving).
    A second signal during the graceful stop abandons it (open layers are not flushed;
    whatever was flushed before stays durable) and exits 1; so does a stop whose final
    flush failed (e.g. a full disk).
    """
    ctx = IoContext(engine, config.max_file_descriptors, config.no_sync)
    listeners: list[trio.SocketListener] = []
    forced = False
    mgr_ref: TenantManager | None = None
    metrics_listeners: list[trio.SocketListener] = []
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            listeners = await open_listeners(config.listen_addr)
            if config.metrics_addr:
                metrics_listeners = await open_listeners(config.metrics_addr)
            async with TenantManager.open(ctx, data_dir, config) as mgr:
                mgr_ref = mgr
                server = Server(
                    mgr,
                    io_engine=engine.kind,
                    max_frame_bytes=config.max_frame_bytes,
                    auth_token=config.auth_token,
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.serve, listeners)
                    if metrics_listeners:
                        await nursery.start(serve_metrics, metrics_listeners)
                    freeze_startup_heap()
                    log.info(
                        "pageserver ready",
                        io_engine=engine.kind,
                        listen=server.addresses,
                        metrics=[listener_address(m) for m in metrics_listeners],
                    )
                    async for signum in signals:
                        log.info("shutting down", signal=signal.Signals(signum).name)
                        break
                    with trio.CancelScope() as stop_scope:

                        async def second_signal() -> None:
                            nonlocal forced
                            async for signum in signals:
                                log.warning(
                                    "second signal: stopping without finishing the flush",
                                    signal=signal.Signals(signum).name,
                                )
                                forced = True
                                stop_scope.cancel()
                                return

                        async with trio.open_nursery() as watch:
                            watch.start_soon(second_signal)
                            await server.shutdown()
                            watch.cancel_scope.cancel()
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for lst in [*listeners, *metrics_listeners]:
                await lst.aclose()
            await ctx.aclose()  # closes the engine too
    failed = mgr_ref is not None and mgr_ref.flush_failed
    log.info("pageserver stopped", graceful=not forced and not failed)
    return 1 if forced or failed else 0


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, trio's and structlog's tens of
    thousands of long-lived objects, the loaded tenants) to the permanent generation.

    A full (generation 2) collection walks every tracked object: with those it costs
    30-65 ms, one loop step during which no connection is served. Frozen, they are never
    walked again; later collections see only what the daemon allocated since (the ingest
    path allocates few objects per record: batches are arrays). Collected once first so
    that garbage is not frozen with the rest.
    """
    gc.collect()
    gc.freeze()


#: GIL switch interval of the daemon. Under std-fs a flush runs in a worker thread that is
#: busy with Python code, and the event loop gets the GIL back only when the interpreter
#: asks the worker to drop it: every 5 ms by default, which is then the loop's latency
#: floor during flushes. 1 ms cuts that floor (measured: p50 lateness of a 1 ms ticker
#: during flushes 3.1 -> 0.8 ms at 0.5 ms) for a few more GIL hand-offs per second.
SWITCH_INTERVAL_S = 0.001


def run(data_dir: str) -> int:
    """The ``run`` command: 0 after a graceful stop, 1 with a one-line message on failure."""
    raise_fd_limit()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    config, engine = prepare(data_dir)
    try:
        return trio.run(serve, data_dir, config, engine)
    except BindError as e:
        print(f"pageserver: {e}", file=sys.stderr)
        return 1
    except (ConfigError, PageserverError) as e:
        print(f"pageserver: {e}", file=sys.stderr)
        return 1
