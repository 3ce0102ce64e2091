"""The error codes of SPEC section 5 and the exceptions that carry them.

This is a leaf every room may import: the wire encodes these codes, the tenant layer raises
them, the record vocabulary in :mod:`pageserver.layers` (ids, the put-batch check) raises
them too. It lives at the top of the package, not in :mod:`pageserver.wire`, because the
tenant layer must not depend on the protocol (see docs/ARCHITECTURE.md) and yet speaks the
same codes.

The server maps an exception to its reply with ``exc.code`` and ``str(exc)``; no other
translation table exists.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.StrEnum):
    """Every error code of SPEC section 5, and nothing else. Values are the wire strings."""

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_OP = "unknown_op"
    BAD_REQUEST = "bad_request"
    INVALID_ID = "invalid_id"
    BAD_VALUE = "bad_value"
    TENANT_NOT_FOUND = "tenant_not_found"
    TIMELINE_NOT_FOUND = "timeline_not_found"
    ALREADY_EXISTS = "already_exists"
    LSN_OUT_OF_ORDER = "lsn_out_of_order"
    LSN_TOO_OLD = "lsn_too_old"
    REDO_UNSUPPORTED = "redo_unsupported"
    REDO_FAILED = "redo_failed"
    NO_REMOTE_STORAGE = "no_remote_storage"
    STALE_GENERATION = "stale_generation"
    REMOTE_UNAVAILABLE = "remote_unavailable"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class PageserverError(Exception):
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL


class BadRequest(PageserverError):
    code = ErrorCode.BAD_REQUEST


class InvalidId(PageserverError, ValueError):
    """A tenant or timeline id that is not 32 hex digits (also a ``ValueError``, so
    argument parsers and tools can treat it as one)."""

    code = ErrorCode.INVALID_ID


class BadValue(PageserverError):
    code = ErrorCode.BAD_VALUE


class TenantNotFound(PageserverError):
    code = ErrorCode.TENANT_NOT_FOUND


class TimelineNotFound(PageserverError):
    code = ErrorCode.TIMELINE_NOT_FOUND


class AlreadyExists(PageserverError):
    code = ErrorCode.ALREADY_EXISTS


class LsnOutOfOrder(PageserverError):
    code = ErrorCode.LSN_OUT_OF_ORDER


class LsnTooOld(PageserverError):
    """A read below the timeline's ``gc_cutoff_lsn`` (SPEC section 11)."""

    code = ErrorCode.LSN_TOO_OLD


class NoRemoteStorage(PageserverError):
    """``tenant_attach`` on a pageserver without ``[remote_storage]`` (SPEC section 10)."""

    code = ErrorCode.NO_REMOTE_STORAGE


class StaleGeneration(PageserverError):
    """A newer attachment of the tenant exists elsewhere: this pageserver stopped writing
    and deleting for it (SPEC section 10)."""

    code = ErrorCode.STALE_GENERATION


class RemoteUnavailable(PageserverError):
    """Object storage did not answer in time where a client waits on it; may be retried."""

    code = ErrorCode.REMOTE_UNAVAILABLE


class RedoUnsupported(PageserverError):
    code = ErrorCode.REDO_UNSUPPORTED


class RedoFailed(PageserverError):
    code = ErrorCode.REDO_FAILED


class ShuttingDown(PageserverError):
    code = ErrorCode.SHUTTING_DOWN


class CorruptLayer(PageserverError, ValueError):
    """A file the pageserver wrote is not what it should be: a layer file that fails
    validation (stops startup) or a read (answers ``internal``), timeline metadata that
    does not decode. The message starts with the file's path and says what is wrong; it
    is what the client sees, never a Python repr."""

    code = ErrorCode.INTERNAL


# -- describing client data in error messages ------------------------------------------------

_DECODED_TYPE_NAMES: dict[type, str] = {
    type(None): "nil",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    tuple: "array",
    list: "array",
    dict: "map",
}


def type_name(v: object) -> str:
    """The msgpack name of a decoded value's type (``bin``, ``array``, ...), for messages."""
    return _DECODED_TYPE_NAMES.get(type(v), type(v).__name__)


def short_repr(v: object, limit: int = 40) -> str:
    """A bounded repr of client data for error messages (never echo megabytes back)."""
    if isinstance(v, str | bytes) and len(v) > limit:
        return repr(v[:limit]) + f"... ({len(v)} long)"
    r = repr(v)
    return r if len(r) <= limit + 10 else r[:limit] + "..."
