"""Engine selection: the one module that knows both engines.

The engines are siblings that implement :mod:`pageserver.io.engine` and know nothing of
each other (as trio's ``_io_epoll`` and ``_io_kqueue`` do not); choosing between them,
by name, by probing the kernel, or for an offline tool, happens here and only here.
"""

from __future__ import annotations

import os

from pageserver.io.engine import STD_FS, TRIO_URING, IoEngine
from pageserver.io.std_fs import StdFsEngine
from pageserver.io.uring.engine import UringEngine, probe_uring

ENGINE_ALIASES = {"tokio-epoll-uring": TRIO_URING}
ENGINE_KINDS = (STD_FS, TRIO_URING)

REQUIRE_URING_ENV_VAR = "PAGESERVER_REQUIRE_URING"


def normalize_engine_kind(value: str) -> str:
    """Map a configured engine name to its canonical kind, or raise ``ValueError``."""
    kind = ENGINE_ALIASES.get(value, value)
    if kind not in ENGINE_KINDS:
        raise ValueError(
            f"unknown io engine {value!r}: expected one of "
            f"{', '.join(ENGINE_KINDS + tuple(ENGINE_ALIASES))} or 'auto'"
        )
    return kind


def tool_engine() -> IoEngine:
    """The engine of offline tools (``layer dump``/``ls``): plain blocking reads.

    A one-shot command reading a few pages gains nothing from a ring it would have to
    set up and tear down, and must work where the kernel refuses io_uring.
    """
    return StdFsEngine()


def create_engine(kind: str) -> IoEngine:
    """Create an engine of the given (possibly aliased) kind, without probing."""
    kind = normalize_engine_kind(kind)
    if kind == STD_FS:
        return StdFsEngine()
    return UringEngine()


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run on this machine (the message says why)."""


def uring_refusal_reason() -> str | None:
    """Why io_uring cannot be used here, or None if the probe succeeded."""
    return probe_uring()


def uring_required() -> bool:
    return os.environ.get(REQUIRE_URING_ENV_VAR, "") not in ("", "0")


def resolve_engine(configured: str) -> tuple[IoEngine, str | None]:
    """Choose the daemon's engine once: returns it and, for a fallback, the warning.

    ``auto`` takes trio-uring when the probe succeeds and falls back to std-fs, naming the
    reason; with ``PAGESERVER_REQUIRE_URING=1`` the fallback is an error instead. An
    explicitly configured ``trio-uring`` that the kernel refuses is always an error.
    """
    if configured == "auto":
        reason = uring_refusal_reason()
        if reason is None:
            return create_engine(TRIO_URING), None
        if uring_required():
            raise EngineUnavailable(
                f"io_uring refused ({reason}) and {REQUIRE_URING_ENV_VAR}=1 is set"
            )
        return StdFsEngine(), f"io_uring unavailable, falling back to std-fs: {reason}"
    kind = normalize_engine_kind(configured)
    if kind == TRIO_URING:
        reason = uring_refusal_reason()
        if reason is not None:
            raise EngineUnavailable(f"virtual_file_io_engine = trio-uring, but {reason}")
    return create_engine(kind), None
