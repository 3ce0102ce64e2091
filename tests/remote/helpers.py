"""Helpers of the remote-storage tests: a daemon with ``[remote_storage]``, status polling."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pageserver.config import RemoteStorageConfig, format_duration
from pageserver.testing import Daemon


def remote_toml(conf: RemoteStorageConfig) -> str:
    lines = ["[remote_storage]"]
    if conf.local_path is not None:
        lines.append(f'local_path = "{conf.local_path}"')
    else:
        lines += [
            f'bucket_name = "{conf.bucket_name}"',
            f'bucket_region = "{conf.bucket_region}"',
            f'endpoint = "{conf.endpoint}"',
            f'prefix_in_bucket = "{conf.prefix_in_bucket}"',
        ]
    lines += [f"concurrency_limit = {conf.concurrency_limit}", f'timeout = "{format_duration(conf.timeout)}"']
    return "\n".join(lines) + "\n"


class RemoteDaemon(Daemon):
    """A :class:`Daemon` whose ``pageserver.toml`` has a ``[remote_storage]`` table."""

    def __init__(self, engine: str, remote: RemoteStorageConfig, **kw: Any) -> None:
        self._remote_toml = remote_toml(remote)
        super().__init__(engine, **kw)

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config_path, "a", encoding="utf-8") as f:
            f.write(self._remote_toml)

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            return c.status()

    def timeline_status(self) -> dict[str, Any]:
        tl: dict[str, Any] = self.status()["tenants"][0]["timelines"][0]
        return tl

    def wait_remote_consistent(self, lsn: int, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.timeline_status()
            rcl = st["remote_consistent_lsn"]
            if rcl is not None and rcl >= lsn:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"remote_consistent_lsn {rcl} < {lsn}:\n{self.log()}")
            time.sleep(0.05)

    def layer_files(self) -> list[Path]:
        return sorted(Path(self.data_dir, "tenants").glob("*/timelines/*/0*"))
