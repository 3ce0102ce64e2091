"""The ``local_path`` backend: an object store in a directory (tests, a shared file system).

An object ``a/b/c`` is the file ``DIR/a/b/c``. A put writes ``<file>.<random>.___temp``,
fsyncs it and renames it over the final name, so a reader never sees half an object. The
conditional create publishes the finished temp file with ``link(2)``, which fails with
``EEXIST`` exactly like ``open(O_CREAT|O_EXCL)`` on the final name would, but without the
moment where the final name holds an empty or partial object.

The directory stands in for a remote object store: its files are *not* the pageserver's
own layer or config files, so they do not go through VirtualFile or the io engine. Every
call is a plain blocking function run with ``trio.to_thread.run_sync`` under a
``CapacityLimiter(concurrency_limit)``, exactly as the S3 backend runs its network calls.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import trio

from pageserver.io import TEMP_SUFFIX
from pageserver.remote.storage import ObjectExists, ObjectInfo, ObjectNotFound, RemoteStorage

T = TypeVar("T")


class LocalPathStorage(RemoteStorage):
    def __init__(self, root: str, *, concurrency_limit: int = 100, timeout: float = 120.0) -> None:
        self.root = os.path.abspath(root)
        self.description = self.root
        self.timeout = timeout
        self.concurrency_limit = concurrency_limit
        self._limiter = trio.CapacityLimiter(concurrency_limit)
        os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.endswith(TEMP_SUFFIX):
            raise ValueError(f"invalid object key {key!r}")
        return os.path.join(self.root, *parts)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    # -- blocking bodies ------------------------------------------------------------------------

    def _write_temp(self, path: str, data: bytes | bytearray | memoryview) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _fsync_dir(self, path: str) -> None:
        fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        os.replace(tmp, path)
        self._fsync_dir(path)

    def _create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ObjectExists(key) from None
        finally:
            os.unlink(tmp)
        self._fsync_dir(path)

    def _get(self, key: str, start: int | None, end: int | None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if start:
                    f.seek(start)
                if end is None:
                    return f.read()
                return f.read(max(0, end - (start or 0)))
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def _head(self, key: str) -> int | None:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = os.path.join(self.root, *base.split("/")) if base else self.root
        for dirpath, _dirs, files in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.endswith(TEMP_SUFFIX):
                    continue
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    try:
                        size = os.stat(os.path.join(dirpath, name)).st_size
                    except FileNotFoundError:
                        continue
                    out.append(ObjectInfo(key, size))
        out.sort(key=lambda o: o.key)
        return out

    def _list_dirs(self, prefix: str) -> list[str]:
        base = prefix.rstrip("/")
        top = os.path.join(self.root, *base.split("/")) if base else self.root
        try:
            return sorted(e.name for e in os.scandir(top) if e.is_dir())
        except FileNotFoundError:
            return []

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    # -- the interface ----------------------------------------------------------------------------

    async def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        await self._run(partial(self._put, key, data))

    async def create(self, key: str, data: bytes) -> None:
        await self._run(partial(self._create, key, data))

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return await self._run(partial(self._get, key, start, end))

    async def head(self, key: str) -> int | None:
        return await self._run(partial(self._head, key))

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        return await self._run(partial(self._list, prefix))

    async def list_dirs(self, prefix: str) -> list[str]:
        return await self._run(partial(self._list_dirs, prefix))

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            await self._run(partial(self._delete, list(keys)))
