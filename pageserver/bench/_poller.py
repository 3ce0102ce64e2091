"""``python -m pageserver.bench._poller ADDR INTERVAL OUT``: the benchmark's second client.

It connects to the daemon at ``ADDR``, prints ``ready`` once connected (and its SIGTERM
handler in place), then sends ``status`` every ``INTERVAL`` seconds and times each round
trip until it gets SIGTERM; the round trip in flight then is finished and kept (a reply
held up by a stalled daemon comes out together with the flush reply that ends the
benchmark's window: it is the sample that matters most). Then it writes ``(start, round
trip)`` pairs to ``OUT`` as native doubles (``CLOCK_MONOTONIC`` seconds, the clock of
``time.perf_counter`` in every process on Linux, so the benchmark can keep the samples of
its ingest and flush window).

Why a process of its own: the round trip is what *another* client of the daemon feels
while one client ingests. Polled from the ingesting benchmark's own trio loop, it also
measured that process: the sender's steps (a 1 MiB frame built and written) and the
freeing of the sent batches (~20 ms for 480 MiB of 8 KiB values, right when the flush
starts) delayed the poll's reply being read, and showed up as daemon latency.
"""

from __future__ import annotations

import signal
import sys
import time
from array import array
from typing import Any

import trio

from pageserver.client import Client

#: How long a round trip may take before the poller stops waiting for it.
_LAST_REPLY_S = 60.0


async def _poll(addr: str, interval: float, out: array[float]) -> None:
    clock = time.perf_counter
    stop = trio.Event()

    async def stop_on_signal(signals: Any) -> None:
        async for _ in signals:
            stop.set()
            return

    async with await Client.connect(addr) as client:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_on_signal, signals)
                print("ready", flush=True)
                while not stop.is_set():
                    t0 = clock()
                    with trio.move_on_after(_LAST_REPLY_S):  # a wedged daemon: give up
                        await client.status()
                        out.append(t0)
                        out.append(clock() - t0)
                    with trio.move_on_after(interval):
                        await stop.wait()
                nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    addr, interval, path = argv[0], float(argv[1]), argv[2]
    samples: array[float] = array("d")
    try:
        trio.run(_poll, addr, interval, samples)
    finally:
        with open(path, "wb") as f:
            samples.tofile(f)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a subprocess by the benchmark
    sys.exit(main(sys.argv[1:]))
