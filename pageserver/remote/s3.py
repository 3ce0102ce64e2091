"""The S3 backend: any S3-compatible object store, through ``obstore``'s synchronous API.

**Why threads, and why that does not contradict trio-uring.** obstore's asyncio API needs a
running asyncio loop and fails under trio; its synchronous API releases the GIL while its
Rust runtime does the HTTP request. So each request is one ``trio.to_thread.run_sync`` call,
bounded by a ``trio.CapacityLimiter(concurrency_limit)`` (requests in flight per
pageserver). trio-uring is about *file* I/O: layer, ephemeral and config files go through
VirtualFile on io_uring, never through a worker thread. A network request to an object store
is not a file operation; io_uring has no S3 client, and running the HTTP client of a Rust
library in a thread is what blocking network libraries need under trio. The layer *files*
an upload reads and a download writes still go through VirtualFile and the configured io
engine (see :mod:`pageserver.remote.download` and :mod:`pageserver.remote.timeline_client`).

**Timeouts and retries.** obstore's own retries are turned off (``max_retries = 0``) and
its client timeout is the config's ``timeout``: one request either answers within it or
fails, and :func:`pageserver.remote.storage.retrying` decides what happens next (back-off and
retry; ``remote_unavailable`` for a client past its deadline). A thread cannot be cancelled:
a cancelled read abandons its thread (it ends within ``timeout``); a cancelled write waits
for it, so that an index upload never lands after a newer one.

**Credentials** come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and
``AWS_SESSION_TOKEN``) in the environment and are required: without them obstore would ask
the instance metadata service, which is not what a user of this config expects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import obstore
import obstore.exceptions as obx
import trio
from obstore.store import S3Store

from pageserver.config import ConfigError, RemoteStorageConfig
from pageserver.remote.storage import ObjectExists, ObjectInfo, ObjectNotFound, RemoteStorage

T = TypeVar("T")


def s3_credentials_from_env() -> dict[str, str]:
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise ConfigError(
            "remote_storage.bucket_name needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "in the environment"
        )
    creds = {"access_key_id": key, "secret_access_key": secret}
    token = os.environ.get("AWS_SESSION_TOKEN")
    if token:
        creds["session_token"] = token
    return creds


class ObjectStoreClientPanic(RuntimeError):
    """obstore's Rust code panicked (pyo3's ``PanicException``)."""


def _no_panic(fn: Callable[[], T]) -> T:
    """``fn()``, with a Rust panic turned into an ordinary error.

    pyo3 raises a panic as ``PanicException``, a ``BaseException``: it passed every
    ``except Exception`` (the retry loop's included) and ended the daemon. One request's
    panic is that request's failure, retried like any other error (the known cause, an
    endpoint that is not a URL, is refused at startup now).
    """
    try:
        return fn()
    except Exception:
        raise
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise ObjectStoreClientPanic(f"object store client panicked: {e}") from None


class S3Storage(RemoteStorage):
    def __init__(self, conf: RemoteStorageConfig) -> None:
        assert conf.bucket_name is not None
        self.bucket = conf.bucket_name
        self.prefix = conf.prefix_in_bucket.strip("/")
        if self.prefix:
            self.prefix += "/"
        self.timeout = conf.timeout
        self.description = f"s3://{self.bucket}/{self.prefix}"
        client: dict[str, Any] = {
            "timeout": timedelta(seconds=conf.timeout),
            "connect_timeout": timedelta(seconds=min(conf.timeout, 10.0)),
        }
        config: dict[str, Any] = {"region": conf.bucket_region, **s3_credentials_from_env()}
        if conf.endpoint:
            config["endpoint"] = conf.endpoint
            config["virtual_hosted_style_request"] = False
            if conf.endpoint.startswith("http://"):
                client["allow_http"] = True
        self._store = S3Store(
            self.bucket,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=conf.timeout)},
        )
        self.concurrency_limit = conf.concurrency_limit
        self._limiter = trio.CapacityLimiter(conf.concurrency_limit)

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def _run(self, fn: Callable[[], T], *, abandon: bool) -> T:
        return await trio.to_thread.run_sync(
            _no_panic, fn, limiter=self._limiter, abandon_on_cancel=abandon
        )

    async def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        await self._run(partial(obstore.put, self._store, self._k(key), data), abandon=False)

    async def create(self, key: str, data: bytes) -> None:
        fn = partial(obstore.put, self._store, self._k(key), data, mode="create")
        try:
            await self._run(fn, abandon=False)
        except (obx.AlreadyExistsError, obx.PreconditionError):
            raise ObjectExists(key) from None

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        def body() -> bytes:
            if start is None and end is None:
                return obstore.get(self._store, self._k(key)).bytes().to_bytes()
            if end is None:
                size = obstore.head(self._store, self._k(key))["size"]
                return obstore.get_range(self._store, self._k(key), start=start or 0, end=size).to_bytes()
            return obstore.get_range(self._store, self._k(key), start=start or 0, end=end).to_bytes()

        try:
            return await self._run(body, abandon=True)
        except (obx.NotFoundError, FileNotFoundError):
            raise ObjectNotFound(key) from None

    async def head(self, key: str) -> int | None:
        try:
            meta = await self._run(partial(obstore.head, self._store, self._k(key)), abandon=True)
        except (obx.NotFoundError, FileNotFoundError):
            return None
        return int(meta["size"])

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        # obstore's prefix is a whole path: list the parent "directory", filter by prefix.
        parent = self._k(prefix).rsplit("/", 1)[0] if "/" in self._k(prefix) else None

        def body() -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            for chunk in obstore.list(self._store, prefix=parent):
                for meta in chunk:
                    path = str(meta["path"])
                    if path.startswith(self._k(prefix)):
                        out.append(ObjectInfo(path[len(self.prefix) :], int(meta["size"])))
            return out

        return sorted(await self._run(body, abandon=True), key=lambda o: o.key)

    async def list_dirs(self, prefix: str) -> list[str]:
        full = self._k(prefix)

        def body() -> list[str]:
            res = obstore.list_with_delimiter(self._store, prefix=full.rstrip("/"))
            names = []
            for p in res["common_prefixes"]:
                rest = str(p)[len(full) :].strip("/") if str(p).startswith(full) else ""
                if rest:
                    names.append(rest.split("/")[0])
            return sorted(set(names))

        return await self._run(body, abandon=True)

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            full = [self._k(k) for k in keys]
            await self._run(partial(obstore.delete, self._store, full), abandon=False)


def open_remote_storage(conf: RemoteStorageConfig) -> RemoteStorage:
    """The backend the config names (``local_path`` or S3)."""
    if conf.local_path is not None:
        from pageserver.remote.local_fs import LocalPathStorage

        prefix = [p for p in conf.prefix_in_bucket.split("/") if p]
        return LocalPathStorage(
            os.path.join(conf.local_path, *prefix),
            concurrency_limit=conf.concurrency_limit,
            timeout=conf.timeout,
        )
    return S3Storage(conf)
