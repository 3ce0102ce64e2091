"""``python -m pageserver.bench._poller ADDR INTERVAL OUT``: the benchmark's second client.

It connects to the daemon at ``ADDR``, prints ``ready`` once connected, then sends
``status`` every ``INTERVAL`` seconds and times each round trip until it gets SIGTERM (or
its stdin closes); then it writes ``(start, round trip)`` pairs to ``OUT`` as native
doubles (``CLOCK_MONOTONIC`` seconds, the clock of ``time.perf_counter`` in every process
on Linux, so the benchmark can keep the samples of its ingest and flush window).

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

import trio

from pageserver.client import Client


async def _poll(addr: str, interval: float, out: array[float]) -> None:
    clock = time.perf_counter
    async with await Client.connect(addr) as client:
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                while True:
                    t0 = clock()
                    await client.status()
                    out.append(t0)
                    out.append(clock() - t0)
                    await trio.sleep(interval)


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
