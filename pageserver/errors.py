"""Typed errors of the tenant layer, one class per wire error code (SPEC section 5).

The server maps an exception to its reply with ``exc.code`` and ``str(exc)``; no other
translation table exists.
"""

from __future__ import annotations


class PageserverError(Exception):
    code = "internal"


class BadRequest(PageserverError):
    code = "bad_request"


class InvalidId(PageserverError):
    code = "invalid_id"


class BadValue(PageserverError):
    code = "bad_value"


class TenantNotFound(PageserverError):
    code = "tenant_not_found"


class TimelineNotFound(PageserverError):
    code = "timeline_not_found"


class AlreadyExists(PageserverError):
    code = "already_exists"


class LsnOutOfOrder(PageserverError):
    code = "lsn_out_of_order"


class RedoUnsupported(PageserverError):
    code = "redo_unsupported"


class RedoFailed(PageserverError):
    code = "redo_failed"


class ShuttingDown(PageserverError):
    code = "shutting_down"


class CorruptLayer(PageserverError):
    """A layer file failed validation at startup (stops startup, naming the file)."""

    code = "internal"
