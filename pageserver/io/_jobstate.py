"""Per-job state shared by the offload helper and the engines.

A layer-writing job that the ``std-fs`` engine runs in a worker thread has no trio run
around it, so trio's cancellation cannot reach it. The offload helper installs a
:class:`JobState` in a context variable for the duration of the job; the engine checks
its flag before each data operation, which makes "the job stops at its next
operation" true without any cooperation from the job's code.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field


class JobCancelled(Exception):
    """Raised inside an offloaded job once its caller has been cancelled.

    The job's own ``try``/``finally`` blocks run as for any exception, which is where
    writers delete their temp files. The offload helper turns it back into trio's
    cancellation on the caller's side.
    """


@dataclass
class JobState:
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: True while running in a worker thread (no trio run is available).
    in_worker: bool = False
    #: Depth of ``cleanup_shield`` blocks: while positive, the cancel flag is ignored.
    shielded: int = 0


_current: contextvars.ContextVar[JobState | None] = contextvars.ContextVar(
    "pageserver_io_job", default=None
)


def current_job() -> JobState | None:
    return _current.get()


def set_job(state: JobState | None) -> contextvars.Token[JobState | None]:
    return _current.set(state)


def reset_job(token: contextvars.Token[JobState | None]) -> None:
    _current.reset(token)


def raise_if_job_cancelled() -> None:
    state = _current.get()
    if state is not None and state.cancelled.is_set() and not state.shielded:
        raise JobCancelled("the caller of this io job was cancelled")
