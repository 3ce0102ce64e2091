"""Prometheus text exposition at ``metrics_addr`` ``/metrics`` (SPEC section 8), on trio.

prometheus-client's own HTTP server runs in a thread; this one is a minimal HTTP/1.0
responder on the daemon's event loop instead, so the process stays single-threaded under
the trio-uring engine (its tests count Python threads) and shuts down with the nursery.
``generate_latest`` is synchronous and takes well under a millisecond for this registry.

Anything but ``GET``/``HEAD /metrics`` gets 404 (unknown path) or 405 (method); a request
head larger than 8 KiB or slower than 10 s is dropped, so a client cannot hold memory or a
task for long.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["handle_http", "serve_metrics"]

log = structlog.get_logger("pageserver.metrics_http")

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0


async def serve_metrics(
    listeners: Sequence[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on already-bound ``listeners`` until cancelled."""
    try:
        async with trio.open_nursery() as nursery:
            for lst in listeners:
                nursery.start_soon(_accept_loop, lst, nursery)
            task_status.started()
    finally:
        for lst in listeners:
            with trio.CancelScope(shield=True):
                await lst.aclose()


async def _accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as e:  # EMFILE and friends: back off rather than die
            log.warning("metrics accept failed; backing off", error=str(e))
            await trio.sleep(0.1)
            continue
        nursery.start_soon(handle_http, stream)


def _response(status: str, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.0 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


def respond(request_head: bytes) -> bytes:
    """The full HTTP response to one request head (pure, for tests)."""
    line = request_head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1", "replace")
    parts = line.split()
    text = "text/plain; charset=utf-8"
    if len(parts) < 2:
        return _response("400 Bad Request", b"bad request\n", text)
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    if path != "/metrics":
        return _response("404 Not Found", b"not found; try /metrics\n", text)
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n", text)
    return _response("200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST, method == "HEAD")


async def handle_http(stream: trio.abc.Stream) -> None:
    """Read one request head, answer it, close."""
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            buf = bytearray()
            while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
                if len(buf) >= MAX_REQUEST_HEAD:
                    return
                data = await stream.receive_some(MAX_REQUEST_HEAD - len(buf))
                if not data:
                    break
                buf += data
            if not buf:
                return
            await stream.send_all(respond(bytes(buf)))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception as e:  # never let one request stop the listener
        log.error("metrics request failed", error=repr(e), exc_info=True)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
