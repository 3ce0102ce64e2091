"""``pageserver run``: start-up and shutdown of the daemon process.

Start-up order: create DIR with a default config if it is missing, load and validate the
config, resolve the io engine once (config, ``PAGESERVER_VIRTUAL_FILE_IO_ENGINE``,
probe), raise ``RLIMIT_NOFILE``'s soft limit, then serve until SIGINT/SIGTERM.
"""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import structlog
import trio

from pageserver import metrics
from pageserver.config import PageserverConfig, ensure_data_dir, load_config
from pageserver.io import IoContext
from pageserver.io.engine import IoEngine, resolve_engine

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


async def serve(data_dir: str, config: PageserverConfig, engine: IoEngine) -> None:
    ctx = IoContext(engine, config.max_file_descriptors, config.no_sync)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            log.info("pageserver ready", io_engine=engine.kind)
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                break
    finally:
        await ctx.aclose()
        await engine.aclose()
    log.info("pageserver stopped")


def run(data_dir: str) -> int:
    raise_fd_limit()
    config, engine = prepare(data_dir)
    trio.run(serve, data_dir, config, engine)
    return 0
