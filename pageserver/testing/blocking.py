"""A synchronous client of the wire protocol, for tests and scripts that do not run trio.

It uses plain blocking sockets and the same sans-IO encoder and decoder as the trio
:class:`pageserver.client.Client` (:func:`pageserver.wire.encode_request`,
:class:`pageserver.wire.ReplyDecoder`), so the two cannot disagree on the protocol, and it
raises the same exceptions: :class:`~pageserver.client.ServerError` for an error reply,
:class:`~pageserver.client.ConnectionLost` for anything wrong with the connection.

One request at a time (no pipelining): for bulk ingest use ``pageserver feed`` or the trio
client's ``put_pipelined``.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from pageserver.addresses import parse_address
from pageserver.client import ConnectionLost, ServerError, next_reply
from pageserver.layers.batch import PutRecord
from pageserver.layers.key import TenantId, TimelineId
from pageserver.wire import Reply, ReplyDecoder, encode_request

__all__ = ["BlockingClient"]

_RECEIVE_CHUNK = 256 * 1024


def _connect(addr: str, timeout: float) -> socket.socket:
    parsed = parse_address(addr)
    try:
        if parsed.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(parsed.unix_path)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection((parsed.host or "127.0.0.1", parsed.port), timeout)
    except OSError as e:
        raise ConnectionLost(f"cannot connect to {addr}: {e.strerror or e}") from e


class BlockingClient:
    """One blocking connection to a pageserver; ``with BlockingClient(addr) as c: ...``.

    ``hello`` (with ``token`` when given) is sent on connect; its reply is kept in
    :attr:`server_info` (``version``, ``io_engine``). Every call waits at most ``timeout``
    seconds for the socket.
    """

    def __init__(
        self, addr: str, token: str | None = None, *, timeout: float = 60.0, hello: bool = True
    ) -> None:
        self.addr = addr
        self._sock = _connect(addr, timeout)
        self._decoder = ReplyDecoder()
        self._ids = itertools.count(1)
        #: What the server's ``hello`` reply said (``version``, ``io_engine``).
        self.server_info: dict[str, Any] = {}
        if hello:
            try:
                self.server_info = self.request("hello", token=token)
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # -- the protocol ------------------------------------------------------------------------

    def _receive(self) -> Reply:
        while (reply := next_reply(self._decoder, self.addr)) is None:
            try:
                data = self._sock.recv(_RECEIVE_CHUNK)
            except OSError as e:
                raise ConnectionLost(f"connection to {self.addr} lost: {e}") from e
            self._decoder.receive_data(data)
        return reply

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op`` with ``fields`` (``None`` values left out) and return the reply's
        fields; an error reply raises :class:`~pageserver.client.ServerError`."""
        rid = next(self._ids)
        body = {k: v for k, v in fields.items() if v is not None}
        try:
            self._sock.sendall(encode_request(op, rid, **body))
        except OSError as e:
            raise ConnectionLost(f"connection to {self.addr} lost while sending: {e}") from e
        reply = self._receive()
        if reply.id != rid:
            raise ConnectionLost(f"reply id {reply.id!r} does not match request id {rid}")
        if not reply.ok:
            raise ServerError(reply.code or "internal", reply.message or "")
        return reply.fields

    # -- requests ----------------------------------------------------------------------------

    def create_tenant(
        self, tenant_id: str | None = None, config: dict[str, Any] | None = None
    ) -> str:
        """Create a tenant (a random id unless given); returns its id."""
        tenant_id = tenant_id or str(TenantId.generate())
        self.request("tenant_create", tenant_id=tenant_id, config=config)
        return tenant_id

    def create_timeline(
        self, tenant_id: str, timeline_id: str | None = None, start_lsn: int = 0
    ) -> str:
        """Create a timeline (a random id unless given); returns its id."""
        timeline_id = timeline_id or str(TimelineId.generate())
        self.request(
            "timeline_create", tenant_id=tenant_id, timeline_id=timeline_id, start_lsn=start_lsn
        )
        return timeline_id

    def put(self, tenant_id: str, timeline_id: str, records: Sequence[PutRecord]) -> dict[str, Any]:
        """One ``put`` batch of ``(key, lsn, encoded value)`` records."""
        return self.request(
            "put", tenant_id=tenant_id, timeline_id=timeline_id, records=list(records)
        )

    def get(self, tenant_id: str, timeline_id: str, key: bytes, lsn: int) -> bytes | None:
        """The materialised value of ``key`` at ``lsn`` (None: no record at or below it)."""
        fields = self.request(
            "get", tenant_id=tenant_id, timeline_id=timeline_id, key=bytes(key), lsn=lsn
        )
        value = fields.get("value")
        assert value is None or isinstance(value, bytes)
        return value

    def get_history(self, tenant_id: str, timeline_id: str, key: bytes, lsn: int) -> dict[str, Any]:
        return self.request(
            "get_history", tenant_id=tenant_id, timeline_id=timeline_id, key=bytes(key), lsn=lsn
        )

    def status(self, tenant_id: str | None = None) -> dict[str, Any]:
        return self.request("status", tenant_id=tenant_id)

    def timeline_status(self, tenant_id: str, timeline_id: str) -> dict[str, Any]:
        """The ``status`` entry of one timeline (``ServerError`` timeline_not_found if absent)."""
        for tenant in self.status(tenant_id).get("tenants", []):
            for tl in tenant.get("timelines", []):
                if tl.get("timeline_id") == timeline_id.lower():
                    return dict(tl)
        raise ServerError("timeline_not_found", f"timeline {timeline_id} not found")

    def flush(self, tenant_id: str, timeline_id: str) -> int:
        """Make everything received durable; returns the new ``disk_consistent_lsn``."""
        dcl = self.request("flush", tenant_id=tenant_id, timeline_id=timeline_id)[
            "disk_consistent_lsn"
        ]
        assert isinstance(dcl, int)
        return dcl

    def gc(self, tenant_id: str, timeline_id: str) -> dict[str, Any]:
        """``gc``: ``{"layers_removed", "gc_cutoff_lsn"}``."""
        return self.request("gc", tenant_id=tenant_id, timeline_id=timeline_id)

    def compact(self, tenant_id: str, timeline_id: str) -> dict[str, Any]:
        """Compact now; the reply has ``layers_created`` and ``layers_removed``."""
        return self.request("compact", tenant_id=tenant_id, timeline_id=timeline_id)
