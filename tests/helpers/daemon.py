"""Helpers for tests that run the real daemon and CLI as subprocesses (test_e2e*, metrics).

The daemon listens on a unix socket under a short ``/tmp`` directory (pytest's ``tmp_path``
is often too long for the 108-byte limit) and serves metrics on a free TCP port; its
stderr goes to a file, never to a pipe nobody reads.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pageserver.client.feed import FeedGenerator

PAGESERVER = str(Path(sys.executable).with_name("pageserver"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    """``pageserver run -D DIR`` as a subprocess."""

    def __init__(self, engine: str, checkpoint_distance: int = 1 << 20) -> None:
        self.root = tempfile.mkdtemp(prefix="pse", dir="/tmp")
        self.data_dir = os.path.join(self.root, "d")
        self.sock = os.path.join(self.root, "s.sock")
        self.addr = f"unix:{self.sock}"
        self.metrics_port = free_port()
        self.engine = engine
        os.makedirs(self.data_dir)
        with open(os.path.join(self.data_dir, "pageserver.toml"), "w") as f:
            f.write(
                f'listen_addr = "{self.addr}"\n'
                f'metrics_addr = "127.0.0.1:{self.metrics_port}"\n'
                "no_sync = true\n"
                "[tenant_config]\n"
                f"checkpoint_distance = {checkpoint_distance}\n"
            )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, f"daemon-{self.starts}.log")

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        env = dict(os.environ, PAGESERVER_VIRTUAL_FILE_IO_ENGINE=self.engine)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PAGESERVER, "run", "-D", self.data_dir],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"daemon did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-5000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"daemon did not stop on {sig}:\n{self.log()}") from None
        self.proc = None
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def scrape(self, path: str = "/metrics") -> str:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body: bytes = r.read()
            return body.decode()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a client subcommand against this daemon (``-D`` supplies the address)."""
        p = subprocess.run(
            [PAGESERVER, *args, "-D", self.data_dir],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: {p.stderr}\n{self.log()}")
        return p


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue
        if labels:
            head = rest.split("}", 1)[0]
            if not all(f'{k}="{v}"' in head for k, v in labels.items()):
                continue
        total += float(line.rsplit(" ", 1)[1])
        found = True
    if not found:
        raise KeyError(f"no sample of {name} {labels or ''}")
    return total


class FeedModel:
    """What ``get`` must return for every (key index, lsn) after a :class:`FeedGenerator`
    feed: the generator is deterministic, so the test rebuilds the history per key."""

    def __init__(self, gen: FeedGenerator) -> None:
        self.gen = gen
        # key index -> list of (lsn, will_init, payload), in LSN order; a later record at
        # the same (key, lsn) replaces an earlier one (SPEC section 5).
        self.history: dict[int, list[tuple[int, bool, bytes]]] = {}
        for i in range(gen.count):
            k = gen.key_index(i)
            entry = (gen.lsn_of(i), gen.will_init(i), gen.payload(i))
            hist = self.history.setdefault(k, [])
            if hist and hist[-1][0] == entry[0]:
                hist[-1] = entry
            else:
                hist.append(entry)

    @property
    def last_lsn(self) -> int:
        return self.gen.lsn_of(self.gen.count - 1)

    def expected(self, k: int, lsn: int) -> bytes | None:
        hist = [e for e in self.history.get(k, []) if e[0] <= lsn]
        if not hist:
            return None
        start = max(i for i, e in enumerate(hist) if e[1])
        if self.gen.kind == "image":
            return hist[-1][2]
        return b"".join(e[2] for e in hist[start:])

    def samples(self, rng: Any, n: int) -> list[tuple[int, int]]:
        lo = self.gen.start_lsn
        return [
            (rng.randrange(self.gen.keys), rng.randint(lo - 1, self.last_lsn)) for _ in range(n)
        ]
