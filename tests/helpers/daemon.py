"""Helpers for tests that run the real daemon and CLI as subprocesses (test_e2e*, metrics).

The daemon itself is :class:`pageserver.testing.Daemon`, the one implementation behind the
pytest plugin's fixtures (``pageserver_daemon``, ...) that users' own tests get too; it is
re-exported here for the tests that drive one by hand. What is left here is ours: the
metrics parser and the model of ``feed``'s generator.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pageserver.client.feed import FeedGenerator
from pageserver.testing import Daemon

__all__ = ["PAGESERVER", "Daemon", "FeedModel", "metric_value"]

#: The console script (``pageserver``) next to this interpreter.
PAGESERVER = str(Path(sys.executable).with_name("pageserver"))


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue
        if labels:
            head = rest.split("}", 1)[0]
            if not all(f'{k}="{v}"' in head for k, v in labels.items()):
                continue
        total += float(line.rsplit(" ", 1)[1])
        found = True
    if not found:
        raise KeyError(f"no sample of {name} {labels or ''}")
    return total


class FeedModel:
    """What ``get`` must return for every (key index, lsn) after a :class:`FeedGenerator`
    feed: the generator is deterministic, so the test rebuilds the history per key."""

    def __init__(self, gen: FeedGenerator) -> None:
        self.gen = gen
        # key index -> list of (lsn, will_init, payload), in LSN order; a later record at
        # the same (key, lsn) replaces an earlier one (SPEC section 5).
        self.history: dict[int, list[tuple[int, bool, bytes]]] = {}
        for i in range(gen.count):
            k = gen.key_index(i)
            entry = (gen.lsn_of(i), gen.will_init(i), gen.payload(i))
            hist = self.history.setdefault(k, [])
            if hist and hist[-1][0] == entry[0]:
                hist[-1] = entry
            else:
                hist.append(entry)

    @property
    def last_lsn(self) -> int:
        return self.gen.lsn_of(self.gen.count - 1)

    def expected(self, k: int, lsn: int) -> bytes | None:
        hist = [e for e in self.history.get(k, []) if e[0] <= lsn]
        if not hist:
            return None
        start = max(i for i, e in enumerate(hist) if e[1])
        if self.gen.kind == "image":
            return hist[-1][2]
        return b"".join(e[2] for e in hist[start:])

    def samples(self, rng: Any, n: int) -> list[tuple[int, int]]:
        lo = self.gen.start_lsn
        return [
            (rng.randrange(self.gen.keys), rng.randint(lo - 1, self.last_lsn)) for _ in range(n)
        ]
