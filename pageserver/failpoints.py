"""Failpoints: named places in the code where a test can inject a failure or a crash.

Configured from ``PAGESERVER_FAILPOINTS="name=action;name=action"`` when the module is
first used (so a subprocess started with that variable crashes exactly where asked), or
from tests with :func:`configure`. Actions (SPEC section 6):

``return(ERRNO)``  the operation fails with ``OSError(ERRNO)``
``sleep(MS)``      the operation pauses for MS milliseconds
``panic``          ``os.abort()`` (SIGABRT)
``exit``           ``os._exit(1)`` at once: no clean-up, no flushing of anything
``off``            disabled

A failpoint may be hit on the trio loop or inside an offloaded worker thread, so the
``sleep`` action sleeps with ``trio.sleep`` on the loop and ``time.sleep`` in a thread.
The disabled case costs one dict lookup on an (almost always) empty dict.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import trio

ENV_VAR = "PAGESERVER_FAILPOINTS"

#: The points the code base defines (SPEC section 6). Configuring another name is an error,
#: so that a typo in a test does not silently test nothing.
KNOWN_POINTS = frozenset(
    {
        "virtual-file-open",
        "virtual-file-write",
        "virtual-file-fsync",
        "layer-before-rename",
        "layer-after-rename",
        "crashsafe-before-rename",
        "crashsafe-after-write",
        "crashsafe-after-rename",
        "flush-before-dcl-update",
        "remote-before-index-upload",
        "remote-before-delete",
        "gc-before-delete",
    }
)

_ACTION_RE = re.compile(r"^(?:(off|panic|exit)|return\((\d+)\)|sleep\((\d+)\))$")


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # "off" | "panic" | "exit" | "return" | "sleep"
    arg: int = 0


_points: dict[str, Action] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()
_loaded_env = False


def parse_action(text: str) -> Action:
    m = _ACTION_RE.match(text.strip())
    if m is None:
        raise ValueError(
            f"invalid failpoint action {text!r}: expected return(ERRNO), sleep(MS), panic, exit, off"
        )
    if m.group(1):
        return Action(m.group(1))
    if m.group(2):
        return Action("return", int(m.group(2)))
    return Action("sleep", int(m.group(3)))


def parse_spec(spec: str) -> dict[str, Action]:
    """Parse ``"a=exit;b=return(5)"`` into a mapping, rejecting unknown names."""
    result: dict[str, Action] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, action = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"invalid failpoint {part!r}: expected name=action")
        if name not in KNOWN_POINTS:
            raise ValueError(f"unknown failpoint {name!r}")
        result[name] = parse_action(action)
    return result


def _ensure_env_loaded() -> None:
    global _loaded_env
    if _loaded_env:
        return
    with _lock:
        if not _loaded_env:
            spec = os.environ.get(ENV_VAR, "")
            if spec:
                _points.update(parse_spec(spec))
            _loaded_env = True


def configure(points: Mapping[str, str] | str) -> None:
    """Replace the active failpoints (tests). Accepts a spec string or a name->action map."""
    global _loaded_env
    parsed = parse_spec(points) if isinstance(points, str) else {
        name: parse_action(action) for name, action in points.items()
    }
    for name in parsed:
        if name not in KNOWN_POINTS:
            raise ValueError(f"unknown failpoint {name!r}")
    with _lock:
        _points.clear()
        _points.update({k: v for k, v in parsed.items() if v.kind != "off"})
        _hits.clear()
        _loaded_env = True


def clear() -> None:
    configure({})


def hits(name: str) -> int:
    """How many times an active failpoint fired (tests)."""
    return _hits.get(name, 0)


def _fire(name: str) -> Action | None:
    """Return the action to perform, doing the ones that need no waiting here."""
    _ensure_env_loaded()
    action = _points.get(name)
    if action is None:
        return None
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
    if action.kind == "exit":
        # No clean-up at all: this simulates a power cut as far as this process goes.
        os._exit(1)
    if action.kind == "panic":
        sys.stderr.write(f"failpoint {name}: panic\n")
        sys.stderr.flush()
        os.abort()
    if action.kind == "return":
        raise OSError(action.arg, f"{os.strerror(action.arg)} (failpoint {name})")
    return action


def failpoint_sync(name: str) -> None:
    """Hit a failpoint from synchronous code (``sleep`` blocks the calling thread)."""
    action = _fire(name)
    if action is not None and action.kind == "sleep":
        time.sleep(action.arg / 1000)


async def failpoint(name: str) -> None:
    """Hit a failpoint from async code, on the loop or inside an offloaded job."""
    if not _points and _loaded_env:
        return
    action = _fire(name)
    if action is not None and action.kind == "sleep":
        # "May I use trio here?": this is ``pageserver.io.on_trio_loop()``, asked of trio
        # directly because failpoints is a leaf that io imports (so it may not import io).
        if trio.lowlevel.in_trio_task():
            await trio.sleep(action.arg / 1000)
        else:
            time.sleep(action.arg / 1000)
