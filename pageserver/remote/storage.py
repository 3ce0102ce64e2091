"""The object-storage interface (SPEC section 10) and the retry rules around it.

A backend is a small async interface over immutable objects addressed by ``/``-separated
keys (below ``prefix_in_bucket`` for S3, below the directory for ``local_path``):

``put(key, data)``            write an object whole (a reader never sees half of it)
``create(key, data)``         the conditional create: :class:`ObjectExists` if it exists
``get(key, start, end)``      the bytes, or a range of them; :class:`ObjectNotFound`
``head(key)``                 the size, or None
``list_objects(prefix)``       every object under a prefix (key and size)
``list_dirs(prefix)``         the next path components under a prefix ("directories")
``delete(keys)``              a batch delete; missing keys are not an error

Everything else a backend raises (connection refused, a timeout, a 5xx, an OSError of
the ``local_path`` directory) is *transient*: :func:`retrying` retries it with back-off,
forever for the background upload queue, or until a deadline where a client waits on the
result, which then gets :class:`~pageserver.errors.RemoteUnavailable`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
import trio

from pageserver import metrics
from pageserver.errors import RemoteUnavailable

T = TypeVar("T")

log = structlog.get_logger("pageserver.remote")

#: First and largest pause between two attempts of one request.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0


class ObjectNotFound(Exception):
    """The object does not exist (definitive: never retried)."""


class ObjectExists(Exception):
    """A conditional create found the object already there (definitive)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int


class RemoteStorage(ABC):
    """One object store. Every method may raise a transient error (anything other than
    :class:`ObjectNotFound`/:class:`ObjectExists`); callers go through :func:`retrying`."""

    #: a short description for logs (``s3://bucket/prefix`` or the directory)
    description: str = ""
    #: seconds one request may take (the config's ``timeout``)
    timeout: float = 120.0
    #: requests in flight (the config's ``concurrency_limit``)
    concurrency_limit: int = 100
    _upload_slots: trio.CapacityLimiter | None = None

    def upload_slots(self) -> trio.CapacityLimiter:
        """Layer uploads in progress at once, process-wide: an upload holds its whole
        layer file in memory, so this bounds that memory (at most 8 layers, or
        ``concurrency_limit`` if lower)."""
        if self._upload_slots is None:
            self._upload_slots = trio.CapacityLimiter(min(8, self.concurrency_limit))
        return self._upload_slots

    @abstractmethod
    async def put(self, key: str, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    async def create(self, key: str, data: bytes) -> None:
        """Write ``key`` only if no object has that key; else :class:`ObjectExists`."""

    @abstractmethod
    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes (``[start, end)`` when given); :class:`ObjectNotFound`."""

    @abstractmethod
    async def head(self, key: str) -> int | None: ...

    @abstractmethod
    async def list_objects(self, prefix: str) -> list[ObjectInfo]: ...

    @abstractmethod
    async def list_dirs(self, prefix: str) -> list[str]:
        """The distinct next components of keys below ``prefix`` (which ends with ``/``)
        that have a further ``/`` after them."""

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> None: ...

    async def aclose(self) -> None:  # noqa: B027 - optional
        pass


def backoff_delays(first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> Any:
    """Exponential back-off with jitter: 0.1, 0.2, 0.4 ... capped, each +-25%."""
    delay = first
    while True:
        yield delay * random.uniform(0.75, 1.25)
        delay = min(cap, delay * 2)


def is_definitive(exc: BaseException) -> bool:
    return isinstance(exc, ObjectNotFound | ObjectExists)


async def retrying(
    what: str,
    fn: Callable[[], Awaitable[T]],
    *,
    deadline: float | None,
    on_error: Callable[[BaseException, int], None] | None = None,
) -> T:
    """``await fn()`` until it succeeds or fails definitively.

    ``deadline`` (``trio.current_time()`` based): past it, the last transient error becomes
    :class:`RemoteUnavailable` (a client waits on this request); None = retry forever (the
    upload queue). Cancellation ends the loop at once.
    """
    attempt = 0
    delays = backoff_delays()
    while True:
        attempt += 1
        try:
            return await fn()
        except (ObjectNotFound, ObjectExists):
            raise
        except trio.Cancelled:
            raise
        except Exception as e:  # noqa: BLE001 - every other error is transient
            metrics.REMOTE_ERRORS.inc()
            if on_error is not None:
                on_error(e, attempt)
            elif attempt in (1, 3) or attempt % 20 == 0:
                log.warning("remote request failed; retrying", what=what, attempt=attempt, error=_short(e))
            delay = next(delays)
            if deadline is not None and trio.current_time() + delay > deadline:
                raise RemoteUnavailable(
                    f"object storage did not answer {what} after {attempt} attempts: {_short(e)}"
                ) from None
            await trio.sleep(delay)


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    first = text.splitlines()[0] if text else text
    return first[:300]
