"""Fixtures for remote storage tests: a real S3 server (SeaweedFS) and ``local_path``.

``seaweedfs`` is one server per test worker (session scope; each test uses its own
``prefix_in_bucket``); ``private_seaweedfs`` is a server of the test's own, for tests that
kill and restart it. Both FAIL the test when SeaweedFS cannot start (never skip).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from pageserver.config import RemoteStorageConfig
from pageserver.io import TEMP_SUFFIX
from tests.helpers.seaweed import SeaweedFS


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    w = SeaweedFS()
    try:
        w.start()
        yield w
    finally:
        w.cleanup()


@pytest.fixture
def private_seaweedfs() -> Iterator[SeaweedFS]:
    w = SeaweedFS()
    try:
        w.start()
        yield w
    finally:
        w.cleanup()


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    for k, v in seaweedfs.env.items():
        monkeypatch.setenv(k, v)
    return seaweedfs


@pytest.fixture(params=["local_path", "s3"])
def remote_conf(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> RemoteStorageConfig:
    """A ``[remote_storage]`` of each backend (S3: a fresh prefix in the shared server)."""
    if request.param == "local_path":
        return RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    w: SeaweedFS = request.getfixturevalue("seaweedfs")
    for k, v in w.env.items():
        monkeypatch.setenv(k, v)
    return RemoteStorageConfig(
        bucket_name=w.bucket,
        endpoint=w.endpoint,
        prefix_in_bucket=f"t-{secrets.token_hex(4)}",
        concurrency_limit=16,
        timeout=5.0,
    )


def listing(conf: RemoteStorageConfig, seaweed: SeaweedFS | None = None) -> dict[str, int]:
    """key -> size of every object, seen independently of the pageserver (os / boto3).

    Under ``local_path`` the backend may be writing meanwhile: an upload's temporary file
    (``TEMP_SUFFIX``) is not an object, and a file renamed into place or deleted between
    the walk and its ``getsize`` is left out, as the backend's own listing does (a
    ``FileNotFoundError`` here made a generations test flaky under load)."""
    if conf.local_path is not None:
        out = {}
        for dirpath, _dirs, files in os.walk(conf.local_path):
            for f in files:
                if f.endswith(TEMP_SUFFIX):
                    continue
                full = os.path.join(dirpath, f)
                try:
                    out[os.path.relpath(full, conf.local_path)] = os.path.getsize(full)
                except FileNotFoundError:
                    continue
        return out
    assert seaweed is not None
    prefix = conf.prefix_in_bucket + "/"
    return {k[len(prefix) :]: v for k, v in seaweed.objects(prefix).items()}
