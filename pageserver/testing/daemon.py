"""``pageserver run -D DIR`` as a subprocess, for tests and for ``compare-engines``.

A :class:`Daemon` owns a temporary directory with the data dir and one log file per start.
It listens on a Unix socket (default; the socket lives in a short ``/tmp`` directory when
the root's path is too long for the 108-byte limit) or on a free TCP port, and serves
``/metrics`` on another free port unless ``metrics=False``. Its stdout and stderr go to the
log file, never to a pipe nobody reads.

The io engine is pinned twice, in ``pageserver.toml`` and in
``PAGESERVER_VIRTUAL_FILE_IO_ENGINE``, so a kernel that refuses io_uring makes ``start``
fail (the daemon says why) rather than fall back; and :meth:`Daemon.start` checks the
engine the running daemon reports in its ``hello`` reply.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pageserver.addresses import parse_address
from pageserver.client import ConnectionLost
from pageserver.config import CONFIG_FILE_NAME, ENGINE_ENV_VAR
from pageserver.io import TRIO_URING, normalize_engine_kind, uring_refusal_reason
from pageserver.layers.layer_name import try_parse_layer_name
from pageserver.testing.blocking import BlockingClient

__all__ = [
    "Daemon",
    "DaemonError",
    "StopResult",
    "TimelineRef",
    "free_tcp_port",
    "pageserver_command",
    "require_engine_reason",
]

#: Unix socket paths must be shorter than this (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 100
#: How many times ``start`` picks new ports when the daemon could not bind one it chose.
_BIND_RETRIES = 3


class DaemonError(Exception):
    """The daemon did not start, stop or answer as expected (the message has its log tail)."""


def pageserver_command() -> list[str]:
    """How to run ``pageserver``: the console script next to this interpreter, or
    ``python -m pageserver.cli`` with it."""
    script = Path(sys.executable).with_name("pageserver")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pageserver.cli"]


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (``start`` retries a lost race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_engine_reason(engine: str) -> str | None:
    """Why ``engine`` cannot run on this machine (the io_uring probe's answer), or None."""
    if normalize_engine_kind(engine) != TRIO_URING:
        return None
    return uring_refusal_reason()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    raise TypeError(f"cannot write {value!r} to pageserver.toml")


@dataclass(frozen=True, slots=True)
class StopResult:
    """How a :meth:`Daemon.terminate` ended."""

    #: the exit status (negative: killed by that signal)
    returncode: int
    #: SIGTERM did not stop it within the timeout, so it was SIGKILLed
    killed: bool
    #: it had exited (crashed?) before :meth:`Daemon.terminate` was called
    exited_before: bool = False

    @property
    def clean(self) -> bool:
        """Stopped by SIGTERM alone, with exit status 0 (a graceful stop)."""
        return self.returncode == 0 and not self.killed and not self.exited_before

    def describe(self, timeout: float) -> str:
        """What went wrong, for a message (``"stopped cleanly"`` if nothing)."""
        if self.exited_before:
            return f"had already exited (status {self.returncode}) before teardown"
        if self.killed:
            return f"did not stop within {timeout:g}s of SIGTERM and was SIGKILLed"
        if self.returncode != 0:
            return f"exited {self.returncode} on SIGTERM"
        return "stopped cleanly"


@dataclass(frozen=True, slots=True)
class TimelineRef:
    """A tenant and timeline on a daemon, and where its files are."""

    tenant_id: str
    timeline_id: str
    #: ``DIR/tenants/<tenant>/timelines/<timeline>``
    path: Path

    def layer_files(self) -> list[Path]:
        """The timeline's layer files (by name), sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if try_parse_layer_name(p.name) is not None)


class Daemon:
    """``pageserver run -D DIR`` as a subprocess, pinned to one io engine.

    ``Daemon(engine)`` only prepares the directory and config; :meth:`start` runs it (and may
    be called again after a stop, on the same data), :meth:`terminate`/:meth:`stop`/:meth:`kill`
    end it, :meth:`cleanup` kills it if needed and removes what it created. As a context
    manager it starts on entry and terminates and cleans up on exit.

    Options: ``transport`` ``"unix"`` or ``"tcp"``; ``metrics`` serves ``/metrics`` on a free
    port; ``checkpoint_distance`` (default 1 MiB, so tests get layer files quickly; None:
    the server's default) and ``tenant_config`` are written to ``[tenant_config]``; ``config``
    adds top-level keys of ``pageserver.toml`` (``auth_token``, ``image_compression``, ...);
    ``no_sync`` (default True) skips fsyncs; ``env`` adds environment variables (the rest is
    inherited from this process at each start, so e.g. ``PAGESERVER_FAILPOINTS`` set before
    ``start`` applies); ``root`` is the directory to use (default: a new temporary one,
    removed by :meth:`cleanup`; a given root is left in place).
    """

    def __init__(
        self,
        engine: str,
        *,
        transport: Literal["unix", "tcp"] = "unix",
        metrics: bool = True,
        checkpoint_distance: int | None = 1 << 20,
        tenant_config: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        no_sync: bool = True,
        env: Mapping[str, str] | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        if transport not in ("unix", "tcp"):
            raise ValueError(f"transport must be 'unix' or 'tcp', not {transport!r}")
        self.engine = normalize_engine_kind(engine)
        self.transport = transport
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="pageserver-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = str(self.root / "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self._socket_dir: str | None = None
        self.sock: str | None = None
        if transport == "unix":
            path = str(self.root / "pageserver.sock")
            if len(path.encode()) >= _MAX_SOCKET_PATH:
                self._socket_dir = tempfile.mkdtemp(prefix="ps", dir="/tmp")
                path = os.path.join(self._socket_dir, "s.sock")
            self.sock = path
        self._metrics = metrics
        self._tenant_config: dict[str, Any] = dict(tenant_config or {})
        if checkpoint_distance is not None:
            self._tenant_config.setdefault("checkpoint_distance", checkpoint_distance)
        self._config: dict[str, Any] = dict(config or {})
        self._fixed_listen = "listen_addr" in self._config
        self._fixed_metrics = "metrics_addr" in self._config
        self._no_sync = no_sync
        self._env = dict(env or {})
        self.token: str | None = self._config.get("auth_token")
        self.addr = ""
        self.metrics_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_cache: str | None = None
        self._pick_addresses()
        self._write_config()

    # -- configuration ---------------------------------------------------------------------------

    def _pick_addresses(self) -> None:
        if self._fixed_listen:
            self.addr = str(self._config["listen_addr"])
            try:
                parse_address(self.addr)
            except ValueError as e:
                raise DaemonError(f"listen_addr: {e}") from None
        elif self.sock is not None:
            self.addr = f"unix:{self.sock}"
        else:
            self.addr = f"127.0.0.1:{free_tcp_port()}"
        if self._fixed_metrics:
            metrics_addr = str(self._config["metrics_addr"])
            try:
                self.metrics_port = parse_address(metrics_addr).port if metrics_addr else None
            except ValueError as e:
                raise DaemonError(f"metrics_addr: {e}") from None
        else:
            self.metrics_port = free_tcp_port() if self._metrics else None

    def _write_config(self) -> None:
        top: dict[str, Any] = {
            "listen_addr": self.addr,
            "metrics_addr": f"127.0.0.1:{self.metrics_port}" if self.metrics_port else "",
            "virtual_file_io_engine": self.engine,
            "no_sync": self._no_sync,
            **self._config,
        }
        lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
        if self._tenant_config:
            lines.append("[tenant_config]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in self._tenant_config.items()]
        Path(self.config_path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def config_path(self) -> str:
        return os.path.join(self.data_dir, CONFIG_FILE_NAME)

    # -- running ---------------------------------------------------------------------------------

    @property
    def log_path(self) -> str:
        """The log file of the current (or last) start."""
        return str(self.root / f"daemon-{self.starts}.log")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Run the daemon and wait until it answers ``hello`` on its own engine.

        Raises :class:`DaemonError` (with the log's tail) if it exits, does not answer within
        ``timeout`` seconds, or reports another io engine than the one asked for.
        """
        if self.running:
            raise DaemonError("the daemon is already running")
        for attempt in range(_BIND_RETRIES):
            try:
                self._start_once(timeout)
                return
            except _BindRace:
                if attempt == _BIND_RETRIES - 1:
                    raise DaemonError(f"daemon could not bind its ports:\n{self.log()}") from None
                self._pick_addresses()
                self._write_config()

    def _start_once(self, timeout: float) -> None:
        self.starts += 1
        self._log_cache = None
        env = {**os.environ, **self._env, ENGINE_ENV_VAR: self.engine}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*pageserver_command(), "run", "-D", self.data_dir],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                log_text = self.log()
                if "cannot listen on" in log_text and not self._fixed_listen:
                    raise _BindRace
                raise DaemonError(f"daemon ({self.engine}) exited {rc} at start:\n{log_text}")
            if time.monotonic() >= deadline:
                self.kill()
                raise DaemonError(
                    f"daemon ({self.engine}) did not answer within {timeout:g}s"
                    f"{f' ({last_error})' if last_error else ''}:\n{self.log()}"
                )
            if self._accepts():
                # Whoever accepts may not be our daemon (a TCP port taken meanwhile): only
                # a hello reply counts, and the exit check above catches a failed bind.
                try:
                    with self.client(timeout=min(2.0, max(0.1, deadline - time.monotonic()))) as c:
                        reported = c.server_info.get("io_engine")
                    break
                except ConnectionLost as e:
                    last_error = e
                except Exception as e:  # e.g. ServerError unauthorized: a wrong token
                    self.kill()
                    raise DaemonError(f"daemon ({self.engine}) refused hello: {e}") from e
            time.sleep(0.02)
        if reported != self.engine:
            self.kill()
            raise DaemonError(
                f"asked for io engine {self.engine}, but the daemon runs {reported} "
                f"(a silent fallback?)\n{self.log()}"
            )

    def _accepts(self) -> bool:
        try:
            addr = parse_address(self.addr)
            if addr.unix_path is not None:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(addr.unix_path)
            else:
                with socket.create_connection((addr.host or "127.0.0.1", addr.port), 1):
                    pass
            return True
        except OSError:
            return False

    def terminate(self, timeout: float = 30.0) -> StopResult:
        """SIGTERM; SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.proc is None:
            raise DaemonError("the daemon is not running")
        proc = self.proc
        killed = False
        exited_before = proc.poll() is not None
        if not exited_before:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = True
        self.proc = None
        return StopResult(proc.returncode, killed, exited_before)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and return the exit status; :class:`DaemonError` (after a SIGKILL)
        if the daemon has not exited within ``timeout`` seconds."""
        if self.proc is None:
            raise DaemonError("the daemon is not running")
        proc = self.proc
        proc.send_signal(sig)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.proc = None
            raise DaemonError(f"daemon did not stop on signal {sig}:\n{self.log()}") from None
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL and wait (a crash, as far as the data dir can tell)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        """Kill the daemon if it still runs; remove the directories this object created.
        The logs stay readable through :meth:`log_text`."""
        self.kill()
        self._log_cache = self.log_text()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.proc is not None:
                self.terminate()
        finally:
            self.cleanup()

    # -- logs ------------------------------------------------------------------------------------

    def log(self, limit: int = 5000) -> str:
        """The last ``limit`` characters of the current (or last) start's log."""
        try:
            return Path(self.log_path).read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def log_text(self, limit: int = 20000) -> str:
        """Every start's log (the last ``limit`` characters of each), with a header line."""
        if self._log_cache is not None:
            return self._log_cache
        parts = []
        for n in range(1, self.starts + 1):
            path = self.root / f"daemon-{n}.log"
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            cut = f"[... {len(text) - limit} characters cut ...]\n" if len(text) > limit else ""
            parts.append(f"==> start {n} of {self.starts}: {path} <==\n{cut}{text[-limit:]}")
        return "\n".join(parts)

    # -- talking to it ---------------------------------------------------------------------------

    def client(self, timeout: float = 60.0) -> BlockingClient:
        """A new blocking connection (``hello`` said); close it, or use ``with``."""
        return BlockingClient(self.addr, self.token, timeout=timeout)

    def timeline_path(self, tenant_id: str, timeline_id: str) -> Path:
        return Path(self.data_dir) / "tenants" / tenant_id / "timelines" / timeline_id

    def create_timeline(
        self,
        tenant_id: str | None = None,
        timeline_id: str | None = None,
        *,
        tenant_config: dict[str, Any] | None = None,
        start_lsn: int = 0,
    ) -> TimelineRef:
        """Create a tenant (with ``tenant_config`` overrides) and a timeline in it."""
        with self.client() as c:
            t = c.create_tenant(tenant_id, tenant_config)
            tl = c.create_timeline(t, timeline_id, start_lsn)
        return TimelineRef(t, tl, self.timeline_path(t, tl))

    def scrape(self, path: str = "/metrics") -> str:
        """GET ``path`` from the metrics endpoint (the daemon must have ``metrics=True``)."""
        if not self.metrics_port:
            raise DaemonError("this daemon serves no metrics (metrics=False)")
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body: bytes = r.read()
            return body.decode()

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pageserver ARGS -D DIR`` (a client command finds this daemon through ``-D``).

        With ``check`` a non-zero exit raises :class:`DaemonError` with its stderr and the
        daemon's log.
        """
        p = subprocess.run(
            [*pageserver_command(), *args, "-D", self.data_dir],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise DaemonError(f"{args} exited {p.returncode}: {p.stderr}\n{self.log()}")
        return p

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Daemon {self.engine} {self.addr} {state} data_dir={self.data_dir}>"


class _BindRace(Exception):
    """The daemon exited because a port it was given was taken meanwhile."""
