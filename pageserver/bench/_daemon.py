"""``python -m pageserver.bench._daemon DIR TICKS``: the daemon of ``pageserver bench``.

Exactly what ``pageserver run -D DIR`` runs (:func:`pageserver.daemon.serve` after
:func:`~pageserver.daemon.prepare`, the same switch interval and fd limit), plus one more
task on the same trio loop: a ticker that sleeps 1 ms at a time and keeps, for every tick,
when it started and how late it woke (``CLOCK_MONOTONIC`` seconds, the clock of
``time.perf_counter`` in every process on Linux). At exit the ticks are written to
``TICKS`` as native doubles, ``(start, lateness)`` pairs; the benchmark keeps those that
started while its ``flush`` request was outstanding (SPEC section 9: the lateness of a 1 ms
ticker in the daemon during a flush). A tick costs the loop ~25 us of CPU (trio's sleep is
a cancel scope with a deadline: measured with a trio instrument, 1,211 steps in 30 ms), ~2.5%
of it; in four alternating pairs of 60k x 8 KiB durable ingests with and without the
ticker the daemon ran at the same speed (within the runs' spread). The samples live in an
``array`` (no Python object per tick).
"""

from __future__ import annotations

import logging
import sys
import time
from array import array

import trio

from pageserver import daemon
from pageserver.logging import configure_logging

#: The ticker's period (seconds).
TICK = 0.001


async def _ticker(out: array[float]) -> None:
    clock = time.perf_counter
    while True:
        t0 = clock()
        await trio.sleep(TICK)
        out.append(t0)
        out.append(clock() - t0 - TICK)


async def _serve_with_ticker(data_dir: str, ticks: array[float]) -> int:
    config, engine = daemon.prepare(data_dir)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ticker, ticks)
        rc = await daemon.serve(data_dir, config, engine)
        nursery.cancel_scope.cancel()
    return rc


def main(argv: list[str]) -> int:
    data_dir, ticks_path = argv
    configure_logging("kv", logging.INFO)
    daemon.raise_fd_limit()
    sys.setswitchinterval(daemon.SWITCH_INTERVAL_S)
    ticks: array[float] = array("d")
    try:
        return trio.run(_serve_with_ticker, data_dir, ticks)
    finally:
        with open(ticks_path, "wb") as f:
            ticks.tofile(f)


if __name__ == "__main__":  # pragma: no cover - run as a subprocess by the benchmark
    sys.exit(main(sys.argv[1:]))
