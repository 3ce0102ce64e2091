"""``DIR/pageserver.toml``: the daemon's configuration (SPEC section 2).

Parsed with :mod:`tomllib`. Every key is checked: an unknown key or a value of the wrong
type is a :class:`ConfigError` whose message names the key (``tenant_config.checkpoint_timeout``
for nested ones), because a typo that silently falls back to a default is the worst kind
of configuration bug. Durations are humantime-style strings as in Neon (``"10m"``,
``"20s"``, ``"1h 30m"``, ``"500ms"``).

The environment variable ``PAGESERVER_VIRTUAL_FILE_IO_ENGINE`` overrides
``virtual_file_io_engine``; see :func:`pageserver.io.resolve_engine` for what
``auto`` does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

CONFIG_FILE_NAME = "pageserver.toml"
ENGINE_ENV_VAR = "PAGESERVER_VIRTUAL_FILE_IO_ENGINE"
DEFAULT_DATA_DIR = ".pageserver"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


#: humantime's units (what Neon's config durations are parsed with), case-sensitive as
#: there: ``m`` is a minute and ``M`` a month (30.44 days), ``y`` a year of 365.25 days.
_DURATION_UNITS = {
    **dict.fromkeys(("nanos", "nsec", "ns"), 1e-9),
    **dict.fromkeys(("usec", "us"), 1e-6),
    **dict.fromkeys(("millis", "msec", "ms"), 1e-3),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1.0),
    **dict.fromkeys(("minutes", "minute", "mins", "min", "m"), 60.0),
    **dict.fromkeys(("hours", "hour", "hrs", "hr", "h"), 3600.0),
    **dict.fromkeys(("days", "day", "d"), 86400.0),
    **dict.fromkeys(("weeks", "week", "w"), 7 * 86400.0),
    **dict.fromkeys(("months", "month", "M"), 2_630_016.0),
    **dict.fromkeys(("years", "year", "y"), 31_557_600.0),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+)")


def parse_duration(text: str) -> float:
    """Parse a humantime duration (``"1h 30m"``, ``"2 hours"``, ``"1M"``) into seconds.

    A superset of humantime's syntax: decimals (``"0.5s"``) are taken too."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if s[pos : m.start()].strip():
            raise ValueError(f"invalid duration {text!r}")
        unit = m.group(2)
        if unit not in _DURATION_UNITS:
            raise ValueError(f"invalid duration unit {unit!r} in {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[unit]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"invalid duration {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for whole numbers of units."""
    if seconds and seconds == int(seconds):
        secs = int(seconds)
        parts = []
        for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
            if secs >= size:
                parts.append(f"{secs // size}{unit}")
                secs %= size
        return " ".join(parts)
    return f"{round(seconds * 1000)}ms"


# Field kinds used by the validator: "int" (not bool), "pos_int", "nonneg_int", "fd_count"
# (a positive int up to MAX_FILE_DESCRIPTORS), "bool", "str", "duration".
@dataclass(frozen=True)
class TenantConfig:
    """Per-tenant settings; a tenant's ``config-v1`` holds overrides of the defaults."""

    checkpoint_distance: int = 268_435_456
    checkpoint_timeout: float = 600.0
    compaction_threshold: int = 10
    image_creation_threshold: int = 3
    compaction_period: float = 20.0
    #: LSN distance below ``last_record_lsn`` that stays readable (SPEC section 11).
    gc_horizon: int = 67_108_864
    #: How often the background GC pass runs; ``0`` turns it off.
    gc_period: float = 3600.0

    def with_overrides(self, overrides: Mapping[str, Any], prefix: str = "") -> TenantConfig:
        """Return a copy with ``overrides`` (TOML/wire values) applied and validated."""
        return dataclasses.replace(self, **_validate(overrides, _TENANT_KINDS, prefix))

    def to_toml_values(self) -> dict[str, Any]:
        """The values as they are written to TOML (durations as strings)."""
        return _to_wire(self, _TENANT_KINDS)


_TENANT_KINDS: dict[str, str] = {
    "checkpoint_distance": "pos_int",
    "checkpoint_timeout": "duration",
    "compaction_threshold": "pos_int",
    "image_creation_threshold": "pos_int",
    "compaction_period": "duration",
    "gc_horizon": "nonneg_int",
    "gc_period": "duration",
}


def validate_tenant_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Validate a tenant config override map; return it with durations in seconds."""
    return _validate(overrides, _TENANT_KINDS, prefix)


def tenant_overrides_to_toml(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn validated overrides back into their TOML/wire form."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        out[k] = format_duration(v) if _TENANT_KINDS[k] == "duration" else v
    return out


#: SPEC section 2's default ``max_frame_bytes`` (the wire's decoders default to it too).
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: The values of ``image_compression`` (the blob writer names them too: layers/blob_io).
IMAGE_COMPRESSION_KINDS = ("disabled", "zstd")


@dataclass(frozen=True)
class RemoteStorageConfig:
    """``[remote_storage]`` (SPEC section 10): exactly one of ``local_path`` / ``bucket_name``.

    Credentials for S3 come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and
    ``AWS_SESSION_TOKEN``) in the environment, never from this file.
    """

    local_path: str | None = None
    bucket_name: str | None = None
    bucket_region: str = "us-east-1"
    endpoint: str | None = None
    prefix_in_bucket: str = ""
    concurrency_limit: int = 100
    #: seconds one request may take; past it the request is retried
    timeout: float = 120.0


_REMOTE_KINDS: dict[str, str] = {
    "local_path": "str",
    "bucket_name": "str",
    "bucket_region": "str",
    "endpoint": "str",
    "prefix_in_bucket": "str",
    "concurrency_limit": "pos_int",
    "timeout": "duration",
}


def _check_endpoint(endpoint: str) -> None:
    """An S3 ``endpoint`` is an ``http://`` or ``https://`` URL with a host (and a valid
    port, if any): obstore takes anything at startup and panics on the first request
    otherwise, e.g. for ``127.0.0.1:8333`` without its scheme."""
    try:
        url = urllib.parse.urlsplit(endpoint)
        _ = url.port  # ValueError for a port that is not a number in range
    except ValueError as e:
        raise ConfigError(f"config key 'remote_storage.endpoint' is not a URL ({e}): {endpoint!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            "config key 'remote_storage.endpoint' must be an http:// or https:// URL with a"
            f" host, like \"http://127.0.0.1:8333\", not {endpoint!r}"
        )


def remote_storage_from_mapping(raw: Any) -> RemoteStorageConfig:
    """Validate the ``[remote_storage]`` table (key names prefixed ``remote_storage.``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config key 'remote_storage' must be a table")
    values = _validate(raw, _REMOTE_KINDS, "remote_storage.")
    has_path = values.get("local_path") is not None
    has_bucket = values.get("bucket_name") is not None
    if has_path == has_bucket:
        raise ConfigError(
            "config key 'remote_storage' needs exactly one of 'local_path' and 'bucket_name'"
        )
    if has_path:
        # prefix_in_bucket applies to both backends (SPEC section 10: the object layout is
        # "below prefix_in_bucket"; under local_path, a directory below it).
        allowed = ("local_path", "prefix_in_bucket", "concurrency_limit", "timeout")
        extra = sorted(k for k in values if k not in allowed)
        if extra:
            raise ConfigError(
                f"config key 'remote_storage.{extra[0]}' applies to S3 only, not to local_path"
            )
        if not values["local_path"]:
            raise ConfigError("config key 'remote_storage.local_path' must not be empty")
    elif len(values["bucket_name"]) < 3:
        raise ConfigError("config key 'remote_storage.bucket_name' must have 3 characters or more")
    # Both backends: a key below the prefix is a path (a directory below local_path; for S3
    # obstore refuses such a path on every request, which would look like a store that is
    # down and be retried forever).
    prefix = values.get("prefix_in_bucket", "").strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/") if prefix) or any(
        ord(c) < 0x20 or ord(c) == 0x7F for c in prefix
    ):
        raise ConfigError(
            "config key 'remote_storage.prefix_in_bucket' must be parts separated by single"
            " '/', none of them '.' or '..', without control characters"
        )
    if values.get("endpoint") is not None:
        _check_endpoint(values["endpoint"])
    if values.get("timeout", 1.0) <= 0:
        raise ConfigError("config key 'remote_storage.timeout' must be positive")
    return RemoteStorageConfig(**values)


@dataclass(frozen=True)
class PageserverConfig:
    listen_addr: str = "127.0.0.1:6400"
    metrics_addr: str = "127.0.0.1:9898"
    #: ``"auto"`` unless set; canonical kinds are resolved by the engine module.
    virtual_file_io_engine: str = "auto"
    max_file_descriptors: int = 100
    no_sync: bool = False
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    auth_token: str | None = None
    image_compression: str = IMAGE_COMPRESSION_KINDS[0]
    #: with remote storage: the bound on local layer bytes (SPEC section 10, eviction)
    max_resident_layer_bytes: int | None = None
    #: ``[remote_storage]``; None = a single-node pageserver
    remote_storage: RemoteStorageConfig | None = None
    tenant_config: TenantConfig = field(default_factory=TenantConfig)


_TOP_KINDS: dict[str, str] = {
    "listen_addr": "str",
    "metrics_addr": "str",
    "virtual_file_io_engine": "engine",
    "max_file_descriptors": "fd_count",
    "no_sync": "bool",
    "max_frame_bytes": "pos_int",
    "auth_token": "str",
    "image_compression": "compression",
    "max_resident_layer_bytes": "pos_int",
}


def _validate(values: Mapping[str, Any], kinds: Mapping[str, str], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        kind = kinds.get(key)
        if kind is None:
            raise ConfigError(f"unknown config key {name!r}")
        out[key] = _check_value(name, kind, value)
    return out


#: The most VirtualFile slots (``max_file_descriptors``): Linux's default ``nr_open``, the
#: most descriptors a process may have. The slot table is made up front, a Python object
#: a slot: a billion slots never got the daemon to "ready".
MAX_FILE_DESCRIPTORS: Final = 1 << 20


def _check_value(name: str, kind: str, value: Any) -> Any:
    if kind == "fd_count":
        value = _check_value(name, "pos_int", value)
        if value > MAX_FILE_DESCRIPTORS:
            raise ConfigError(
                f"config key {name!r} must be at most {MAX_FILE_DESCRIPTORS} (the kernel's "
                f"default limit of open files per process), got {value!r}"
            )
        return value
    if kind in ("int", "pos_int", "nonneg_int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
        if kind == "pos_int" and value < 1:
            raise ConfigError(f"config key {name!r} must be positive, got {value!r}")
        if kind == "nonneg_int" and value < 0:
            raise ConfigError(f"config key {name!r} must not be negative, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be a boolean, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
    if kind == "duration":
        try:
            return parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"config key {name!r}: {e}") from None
    if kind == "engine":
        from pageserver.io import normalize_engine_kind

        if value == "auto":
            return value
        try:
            return normalize_engine_kind(value)
        except ValueError as e:
            raise ConfigError(f"config key {name!r}: {e}") from None
    if kind == "compression" and value not in IMAGE_COMPRESSION_KINDS:
        raise ConfigError(f"config key {name!r} must be 'disabled' or 'zstd', got {value!r}")
    return value


def _to_wire(obj: Any, kinds: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in kinds.items():
        value = getattr(obj, key)
        out[key] = format_duration(value) if kind == "duration" else value
    return out


def config_from_mapping(data: Mapping[str, Any]) -> PageserverConfig:
    """Build a config from parsed TOML (tests use this directly)."""
    top = {k: v for k, v in data.items() if k not in ("tenant_config", "remote_storage")}
    values = _validate(top, _TOP_KINDS, "")
    if "remote_storage" in data:
        values["remote_storage"] = remote_storage_from_mapping(data["remote_storage"])
    tenant_raw = data.get("tenant_config", {})
    if not isinstance(tenant_raw, Mapping):
        raise ConfigError("config key 'tenant_config' must be a table")
    tenant = TenantConfig().with_overrides(tenant_raw, prefix="tenant_config.")
    return PageserverConfig(**values, tenant_config=tenant)


def load_config(data_dir: str | os.PathLike[str]) -> PageserverConfig:
    """Read ``DIR/pageserver.toml``, applying the environment's engine override."""
    path = Path(data_dir) / CONFIG_FILE_NAME
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    config = config_from_mapping(data)
    remote = config.remote_storage
    if remote is not None and remote.local_path is not None and not os.path.isabs(remote.local_path):
        # Relative to the data directory (Neon's paths are relative to its workdir), not to
        # wherever the daemon happens to be started: the same config must find the same
        # store from any working directory.
        local_path = os.path.join(os.path.abspath(data_dir), remote.local_path)
        config = dataclasses.replace(
            config, remote_storage=dataclasses.replace(remote, local_path=local_path)
        )
    return apply_env_overrides(config)


def apply_env_overrides(config: PageserverConfig) -> PageserverConfig:
    env = os.environ.get(ENGINE_ENV_VAR)
    if env:
        engine = _check_value(ENGINE_ENV_VAR, "engine", env)
        config = dataclasses.replace(config, virtual_file_io_engine=engine)
    return config


DEFAULT_CONFIG_TOML = """\
# mini pageserver configuration (see SPEC section 2). Unknown keys are an error.
listen_addr = "127.0.0.1:6400"
metrics_addr = "127.0.0.1:9898"
# "std-fs", "trio-uring" (alias "tokio-epoll-uring"), or "auto": trio-uring when the
# io_uring probe succeeds, else std-fs with a warning naming the reason.
virtual_file_io_engine = "auto"
max_file_descriptors = 100
no_sync = false
max_frame_bytes = 16777216
# auth_token = "secret"
image_compression = "disabled"
# With [remote_storage]: keep local layer files under this many bytes (evicting the
# least recently read layers that are uploaded; they are downloaded again on demand).
# max_resident_layer_bytes = 10737418240

# Object storage for layers and indexes (SPEC section 10). Exactly one of local_path /
# bucket_name. S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
# [remote_storage]
# bucket_name = "pageserver"
# bucket_region = "us-east-1"
# endpoint = "http://127.0.0.1:8333"      # omit for AWS itself
# prefix_in_bucket = ""
# concurrency_limit = 100
# timeout = "120s"

[tenant_config]
checkpoint_distance = 268435456
checkpoint_timeout = "10m"
compaction_threshold = 10
image_creation_threshold = 3
compaction_period = "20s"
gc_horizon = 67108864
gc_period = "1h"
"""


def ensure_data_dir(data_dir: str | os.PathLike[str]) -> bool:
    """Create DIR with a default config file if missing. Returns True if it created one."""
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tenants").mkdir(exist_ok=True)
    cfg = path / CONFIG_FILE_NAME
    if cfg.exists():
        return False
    from pageserver.io import TEMP_SUFFIX  # here, so that reading a config loads no engine

    tmp = cfg.with_name(CONFIG_FILE_NAME + TEMP_SUFFIX)
    with open(tmp, "w") as f:
        f.write(DEFAULT_CONFIG_TOML)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, cfg)
    return True
