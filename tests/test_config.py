"""Configuration: keys, defaults, errors naming the key, durations, env override, `run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pageserver.config import (
    ConfigError,
    PageserverConfig,
    TenantConfig,
    config_from_mapping,
    ensure_data_dir,
    load_config,
    parse_duration,
)
from pageserver.io import EngineUnavailable, resolve_engine
from tests.helpers.crash import REPO_ROOT


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pageserver.toml").write_text(text)
    return tmp_path


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGESERVER_VIRTUAL_FILE_IO_ENGINE", raising=False)
    cfg = load_config(write(tmp_path, ""))
    assert cfg == PageserverConfig()
    assert cfg.listen_addr == "127.0.0.1:6400"
    assert cfg.metrics_addr == "127.0.0.1:9898"
    assert cfg.virtual_file_io_engine == "auto"
    assert cfg.max_file_descriptors == 100
    assert cfg.no_sync is False
    assert cfg.max_frame_bytes == 16777216
    assert cfg.auth_token is None
    assert cfg.image_compression == "disabled"
    t = cfg.tenant_config
    assert t.checkpoint_distance == 268435456
    assert t.checkpoint_timeout == 600.0
    assert t.compaction_threshold == 10
    assert t.image_creation_threshold == 3
    assert t.compaction_period == 20.0


def test_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGESERVER_VIRTUAL_FILE_IO_ENGINE", raising=False)
    cfg = load_config(
        write(
            tmp_path,
            """
listen_addr = "unix:/tmp/ps.sock"
metrics_addr = ""
virtual_file_io_engine = "tokio-epoll-uring"
max_file_descriptors = 8
no_sync = true
max_frame_bytes = 1024
auth_token = "s3cret"
image_compression = "zstd"
[tenant_config]
checkpoint_distance = 1000
checkpoint_timeout = "1h 30m"
compaction_threshold = 4
image_creation_threshold = 2
compaction_period = "500ms"
""",
        )
    )
    assert cfg.listen_addr == "unix:/tmp/ps.sock"
    assert cfg.metrics_addr == ""
    assert cfg.virtual_file_io_engine == "trio-uring"  # alias normalised
    assert cfg.max_file_descriptors == 8
    assert cfg.no_sync is True
    assert cfg.max_frame_bytes == 1024
    assert cfg.auth_token == "s3cret"
    assert cfg.image_compression == "zstd"
    assert cfg.tenant_config == TenantConfig(1000, 5400.0, 4, 2, 0.5)


@pytest.mark.parametrize(
    "text,key",
    [
        ("listen_adr = 'x'", "listen_adr"),
        ("[tenant_config]\ncheckpoint_distanse = 1", "tenant_config.checkpoint_distanse"),
        ("max_file_descriptors = '8'", "max_file_descriptors"),
        ("max_file_descriptors = true", "max_file_descriptors"),
        ("max_file_descriptors = 0", "max_file_descriptors"),
        ("max_file_descriptors = 1048577", "max_file_descriptors"),  # the slot table hung
        ("no_sync = 1", "no_sync"),
        ("listen_addr = 6400", "listen_addr"),
        ("virtual_file_io_engine = 'posix-aio'", "virtual_file_io_engine"),
        ("image_compression = 'lz4'", "image_compression"),
        ("auth_token = 5", "auth_token"),
        ("max_frame_bytes = 1.5", "max_frame_bytes"),
        ("[tenant_config]\ncheckpoint_timeout = 600", "tenant_config.checkpoint_timeout"),
        ("[tenant_config]\ncheckpoint_timeout = '10 parsecs'", "tenant_config.checkpoint_timeout"),
        ("[tenant_config]\ncompaction_threshold = 'ten'", "tenant_config.compaction_threshold"),
        ("tenant_config = 3", "tenant_config"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert repr(key) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "listen_addr = "))
    # Not UTF-8 (TOML is): a UnicodeDecodeError traceback before.
    (tmp_path / "pageserver.toml").write_bytes(b'listen_addr = "127.0.0.1:1" # \xff\n')
    with pytest.raises(ConfigError, match="invalid TOML: not UTF-8"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("10m", 600), ("20s", 20), ("1h 30m", 5400), ("500ms", 0.5), ("1d", 86400), ("2h5s", 7205),
        # humantime's long forms and larger units, case-sensitive (M is a month, m a minute)
        ("30 seconds", 30), ("2mins", 120), ("1hour", 3600), ("1w", 604800), ("1M", 2630016),
        ("1y", 31557600), ("3 days 4 hours", 3 * 86400 + 4 * 3600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "5 lightyears", "10m x", "10S", "1H"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_env_overrides_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, 'virtual_file_io_engine = "trio-uring"')
    monkeypatch.setenv("PAGESERVER_VIRTUAL_FILE_IO_ENGINE", "std-fs")
    assert load_config(tmp_path).virtual_file_io_engine == "std-fs"
    monkeypatch.setenv("PAGESERVER_VIRTUAL_FILE_IO_ENGINE", "tokio-epoll-uring")
    assert load_config(tmp_path).virtual_file_io_engine == "trio-uring"
    monkeypatch.setenv("PAGESERVER_VIRTUAL_FILE_IO_ENGINE", "bogus")
    with pytest.raises(ConfigError, match="PAGESERVER_VIRTUAL_FILE_IO_ENGINE"):
        load_config(tmp_path)


def test_resolve_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, warning = resolve_engine("std-fs")
    assert engine.kind == "std-fs" and warning is None
    import pageserver.io.select as eng

    monkeypatch.setattr(eng, "uring_refusal_reason", lambda: "io_uring_disabled=2")
    monkeypatch.delenv("PAGESERVER_REQUIRE_URING", raising=False)
    engine, warning = resolve_engine("auto")
    assert engine.kind == "std-fs"
    assert warning is not None and "io_uring_disabled=2" in warning
    monkeypatch.setenv("PAGESERVER_REQUIRE_URING", "1")
    with pytest.raises(EngineUnavailable, match="io_uring_disabled=2"):
        resolve_engine("auto")
    with pytest.raises(EngineUnavailable):
        resolve_engine("trio-uring")


def test_default_file_roundtrips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGESERVER_VIRTUAL_FILE_IO_ENGINE", raising=False)
    d = tmp_path / "new" / "dir"
    assert ensure_data_dir(d) is True
    assert ensure_data_dir(d) is False
    assert load_config(d) == PageserverConfig()
    assert config_from_mapping({}) == PageserverConfig()


def test_run_creates_dir_and_stops_on_signals(tmp_path: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        data_dir = tmp_path / f"d{sig}"
        env = dict(os.environ, PAGESERVER_VIRTUAL_FILE_IO_ENGINE="std-fs")
        env["PYTHONPATH"] = str(REPO_ROOT)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pageserver.cli", "run", "-D", str(data_dir)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "pageserver ready" in line:
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(lines) + err
        text = "".join(lines)
        assert "io_engine='std-fs'" in text
        assert "shutting down" in err
        assert (data_dir / "pageserver.toml").is_file()


@pytest.mark.parametrize("where", ["after run", "before run"])
def test_run_logs_json_with_log_format_json(tmp_path: Path, where: str) -> None:
    """``--log-format json`` (SPEC section 2) after ``run`` as before it: every stderr line
    of a daemon's start and stop is a JSON object."""
    env = dict(os.environ, PAGESERVER_VIRTUAL_FILE_IO_ENGINE="std-fs", PYTHONPATH=str(REPO_ROOT))
    run = ["run", "-D", str(tmp_path / "d")]
    flag = ["--log-format", "json"]
    argv = run + flag if where == "after run" else flag + run
    proc = subprocess.Popen(
        [sys.executable, "-m", "pageserver.cli", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "pageserver ready" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + err
    records = [json.loads(line) for line in lines + err.splitlines() if line.strip()]
    assert any(r.get("event") == "pageserver ready" and r.get("io_engine") == "std-fs" for r in records)


def test_run_rejects_bad_config(tmp_path: Path) -> None:
    write(tmp_path, "bogus_key = 1")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "pageserver.cli", "run", "-D", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 1
    assert "bogus_key" in res.stderr
