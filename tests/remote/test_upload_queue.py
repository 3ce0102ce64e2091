"""The upload queue's ordering rules (SPEC section 10), checked on every request a real
workload (ingest, flushes, compactions) sends to the object store:

- an index is uploaded only after every layer it names;
- a layer object is deleted only after an index that no longer names it;
- consecutive index uploads coalesce while the store is slow;
- nothing is ever overwritten except the own generation's index.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from pageserver import failpoints
from pageserver.config import ConfigError, RemoteStorageConfig, config_from_mapping
from pageserver.io import IoContext
from pageserver.remote.download import CHUNK, read_layer_file
from pageserver.remote.local_fs import LocalPathStorage
from pageserver.remote.storage import ObjectInfo, RemoteStorage
from tests.helpers.tenant import TENANT, TIMELINE, Model, manager
from tests.remote.test_attach import check_reads, ingest, rconfig, wait_remote


class RecordingStorage(RemoteStorage):
    def __init__(self, inner: RemoteStorage) -> None:
        self.inner = inner
        self.timeout = inner.timeout
        self.ops: list[tuple[str, str, bytes | bytearray | memoryview | None]] = []

    async def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        await self.inner.put(key, data)
        self.ops.append(("put", key, data))

    async def create(self, key: str, data: bytes) -> None:
        await self.inner.create(key, data)
        self.ops.append(("create", key, data))

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return await self.inner.get(key, start, end)

    async def head(self, key: str) -> int | None:
        return await self.inner.head(key)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        return await self.inner.list_objects(prefix)

    async def list_dirs(self, prefix: str) -> list[str]:
        return await self.inner.list_dirs(prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        self.ops.append(("delete-start", "\n".join(keys), None))
        await self.inner.delete(keys)


def check_ordering(ops: list[tuple[str, str, bytes | bytearray | memoryview | None]]) -> tuple[int, int]:
    present: set[str] = set()
    named: set[str] = set()  # objects the last uploaded index names
    indexes = deletions = 0
    prefix = f"tenants/{TENANT}/timelines/{TIMELINE}/"
    for op, key, data in ops:
        if op == "put" and "index_part.json" in key:
            assert data is not None
            doc = json.loads(bytes(data))
            names = {
                f"{prefix}{n}-{m['generation']:08x}" for n, m in doc["layer_metadata"].items()
            }
            missing = names - present
            assert not missing, f"index names layers not uploaded yet: {missing}"
            named = names
            indexes += 1
        elif op == "put":
            assert key not in present, f"{key} overwritten"
            present.add(key)
        elif op == "delete-start":
            for k in key.split("\n"):
                assert k not in named, f"{k} deleted while the last index names it"
                present.discard(k)
                deletions += 1
    return indexes, deletions


async def test_uploads_follow_neons_ordering_and_coalesce(engine_kind: str, tmp_path: Path) -> None:
    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    rng = random.Random(12)
    model = Model()
    async with manager(engine_kind, tmp_path / "d", rconfig(remote)) as mgr:
        rec = RecordingStorage(LocalPathStorage(str(tmp_path / "remote")))
        mgr.remote_storage = rec
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE)
        lsn = 1
        for _round in range(3):
            for _ in range(4):
                lsn = await ingest(mgr, model, lsn, 15, rng)
                await mgr.flush(TENANT, TIMELINE)
            await mgr.compact(TENANT, TIMELINE)
        dcl = await mgr.flush(TENANT, TIMELINE)
        await wait_remote(mgr, dcl)
        client = mgr.timeline(TENANT, TIMELINE).remote
        assert client is not None and await client.wait_drained()
        indexes, deletions = check_ordering(rec.ops)
        assert deletions >= 8, "compaction removed L0s: their objects must go"
        assert indexes >= 2
        # A slow store: ten flushes while an index upload waits become a few uploads.
        failpoints.configure({"remote-before-index-upload": "sleep(300)"})
        before = indexes
        for _ in range(10):
            lsn = await ingest(mgr, model, lsn, 3, rng)
            await mgr.flush(TENANT, TIMELINE)
        dcl = await mgr.flush(TENANT, TIMELINE)
        await wait_remote(mgr, dcl, timeout=30)
        failpoints.clear()
        assert await client.wait_drained()
        indexes, _ = check_ordering(rec.ops)
        assert indexes - before < 10 / 2, (indexes, before)
        await check_reads(mgr, model, dcl, random.Random(2), n=200)


@pytest.mark.parametrize(
    "table,message",
    [
        ({}, "exactly one of"),
        ({"local_path": "/x", "bucket_name": "abc"}, "exactly one of"),
        ({"local_path": "/x", "endpoint": "http://h"}, "remote_storage.endpoint"),
        ({"bucket_name": "ab"}, "3 characters"),
        ({"bucket_name": "abc", "timeout": 5}, "remote_storage.timeout"),
        ({"bucket_name": "abc", "concurrency_limit": 0}, "remote_storage.concurrency_limit"),
        ({"bucket_name": "abc", "secret": "x"}, "remote_storage.secret"),
        ({"local_path": "/x", "prefix_in_bucket": "a/../b"}, "remote_storage.prefix_in_bucket"),
        ({"bucket_name": "abc", "prefix_in_bucket": "a/../b"}, "remote_storage.prefix_in_bucket"),
        ({"bucket_name": "abc", "prefix_in_bucket": "./a"}, "remote_storage.prefix_in_bucket"),
        ({"bucket_name": "abc", "prefix_in_bucket": "a//b"}, "remote_storage.prefix_in_bucket"),
        ({"local_path": "/x", "prefix_in_bucket": "a//b"}, "remote_storage.prefix_in_bucket"),
        ({"bucket_name": "abc", "prefix_in_bucket": "a\tb"}, "remote_storage.prefix_in_bucket"),
        ({"bucket_name": "abc", "endpoint": "127.0.0.1:8333"}, "remote_storage.endpoint.*http://"),
        ({"bucket_name": "abc", "endpoint": "not a url"}, "remote_storage.endpoint"),
        ({"bucket_name": "abc", "endpoint": "ftp://h"}, "remote_storage.endpoint"),
        ({"bucket_name": "abc", "endpoint": "http://"}, "remote_storage.endpoint"),
        ({"bucket_name": "abc", "endpoint": "http://h:99999"}, "remote_storage.endpoint"),
    ],
)
def test_remote_storage_config_errors_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"remote_storage": table})


def test_remote_storage_config() -> None:
    cfg = config_from_mapping(
        {
            "max_resident_layer_bytes": 1 << 30,
            "remote_storage": {
                "bucket_name": "pageserver", "bucket_region": "eu-west-1",
                "endpoint": "http://127.0.0.1:9000", "prefix_in_bucket": "ps1",
                "concurrency_limit": 7, "timeout": "3s",
            },
        }
    )  # fmt: skip
    assert cfg.max_resident_layer_bytes == 1 << 30
    assert cfg.remote_storage == RemoteStorageConfig(
        bucket_name="pageserver", bucket_region="eu-west-1", endpoint="http://127.0.0.1:9000",
        prefix_in_bucket="ps1", concurrency_limit=7, timeout=3.0,
    )  # fmt: skip
    assert config_from_mapping({}).remote_storage is None


async def test_local_path_objects_go_below_prefix_in_bucket(tmp_path: Path) -> None:
    """``prefix_in_bucket`` applies under ``local_path`` too (SPEC section 10: the object
    layout is below it): a directory below ``local_path``; an empty one is the root."""
    from pageserver.remote.s3 import open_remote_storage

    for prefix, where in (("ps1/a", tmp_path / "r" / "ps1" / "a"), ("", tmp_path / "r")):
        cfg = config_from_mapping(
            {"remote_storage": {"local_path": str(tmp_path / "r"), "prefix_in_bucket": prefix}}
        )
        assert cfg.remote_storage is not None
        storage = open_remote_storage(cfg.remote_storage)
        await storage.put("tenants/t/x", b"object bytes")
        assert (where / "tenants" / "t" / "x").read_bytes() == b"object bytes"
        assert [o.key for o in await storage.list_objects("tenants/t/")] == ["tenants/t/x"]
        await storage.delete(["tenants/t/x"])


def test_s3_needs_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pageserver.remote.s3 import open_remote_storage

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        open_remote_storage(RemoteStorageConfig(bucket_name="abc", endpoint="http://127.0.0.1:1"))


def test_relative_local_path_is_below_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ``local_path`` is resolved against the data directory, not the working
    directory the daemon was started from (which would find another, empty store)."""
    from pageserver.config import CONFIG_FILE_NAME, load_config

    data = tmp_path / "data"
    data.mkdir()
    (data / CONFIG_FILE_NAME).write_text('[remote_storage]\nlocal_path = "remote/store"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    remote = load_config("../data").remote_storage
    assert remote is not None and remote.local_path == str(data / "remote" / "store")
    (data / CONFIG_FILE_NAME).write_text('[remote_storage]\nlocal_path = "/abs/store"\n')
    remote = load_config(data).remote_storage
    assert remote is not None and remote.local_path == "/abs/store"


async def test_an_object_store_client_panic_is_a_retried_error_not_the_end_of_the_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """obstore panics (pyo3's ``PanicException``, a ``BaseException``) on a request to an
    endpoint that is not a URL; such a config is refused at startup now, but a panic of
    one request must stay that request's (retried) failure, not pass every ``except
    Exception`` and end the process. A real panic: the config check bypassed."""
    import trio

    from pageserver.errors import RemoteUnavailable
    from pageserver.remote.s3 import ObjectStoreClientPanic, S3Storage
    from pageserver.remote.storage import retrying

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    storage = S3Storage(RemoteStorageConfig(bucket_name="abc", endpoint="127.0.0.1:1", timeout=1.0))
    with pytest.raises(ObjectStoreClientPanic, match="panicked"):
        await storage.list_objects("tenants/")
    with pytest.raises(RemoteUnavailable, match="ObjectStoreClientPanic"):
        await retrying("list", lambda: storage.list_objects("tenants/"), deadline=trio.current_time() + 0.3)


async def test_read_layer_file_reads_the_whole_file_into_memory_not_zero_filled(
    io_ctx: IoContext, tmp_path: Path
) -> None:
    """The upload's read of a layer: every byte, over several chunks and a short last one,
    into memory numpy allocated (left unfilled until the reads) rather than a bytearray,
    which CPython zero-fills first: a pass over the whole layer holding the GIL, on the
    loop under trio-uring (256 MiB: ~110 ms)."""
    data = random.Random(7).randbytes(3 * CHUNK + 12345)
    path = tmp_path / "layer"
    path.write_bytes(data)
    view = await io_ctx.run_job(read_layer_file, io_ctx, str(path))
    assert len(view) == len(data) and view == data
    assert not isinstance(view.obj, bytearray)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert len(await io_ctx.run_job(read_layer_file, io_ctx, str(empty))) == 0
