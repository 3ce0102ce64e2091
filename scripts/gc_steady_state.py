#!/usr/bin/env python3
"""Steady state under garbage collection (issue 14): does disk use stop growing?

    .venv/bin/python scripts/gc_steady_state.py [--records 5000000] [--plot docs/gc_steady_state.png]

Starts a real daemon (``pageserver.testing.Daemon``, one io engine) and ingests
``--records`` records over a fixed key set (``--keys``, each value an Image of
``--value-size`` bytes) through the client library's columnar ``put``s, pipelined. The
LSN advances by each record's value size, as WAL positions do, so ``gc_horizon`` is "bytes
of WAL" (the default 8 MiB: about 80k records). The tenant has a small
``checkpoint_distance`` (4 MiB), compaction every ``--compaction-period`` and GC every
``--gc-period`` (both background loops of the daemon; ``--explicit`` instead calls
``compact`` and ``gc`` at every sample, which makes a run deterministic: the short test).

Every ``--sample-every`` records it samples: the local layer bytes (the sizes of the layer
files in the timeline directory), the layer counts (L0, L1 delta, image), the timeline's
``gc_cutoff_lsn`` and, with ``--remote-local-path DIR`` (the daemon then has a
``[remote_storage] local_path``), the bytes of the layer objects under DIR. It prints a
table, and with ``--plot FILE.png`` a figure of the bytes over records ingested.

Without GC a timeline keeps every layer below every image forever, so its bytes grow with
the records; with GC they should level off once a few horizons have been ingested: the
layers above the newest image at or below the cutoff, the images, and what compaction has
not merged yet. ``--json`` prints the samples and a summary (the short test reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from pageserver.client import Client, PutBatch  # noqa: E402
from pageserver.layers.batch import PutColumns  # noqa: E402
from pageserver.layers.value import Image, encode_value  # noqa: E402
from pageserver.testing import Daemon  # noqa: E402

TENANT = "9c0ffee0" * 4
TIMELINE = "57eadd00" * 4
MIB = 1 << 20

LAYER_RE = re.compile(r"^[0-9A-F]{36}-[0-9A-F]{36}__[0-9A-F]{16}(?:-[0-9A-F]{16})?(?:-v1-[0-9a-f]{8})?$")
REMOTE_LAYER_RE = re.compile(r"^[0-9A-F]{36}-[0-9A-F]{36}__[0-9A-F]{16}(?:-[0-9A-F]{16})?(?:-[0-9a-f]{8})?$")
FULL_KEYS = "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"


@dataclass
class Sample:
    records: int
    seconds: float
    last_record_lsn: int
    gc_cutoff_lsn: int
    local_bytes: int
    l0: int
    delta: int
    image: int
    remote_bytes: int | None


def key(i: int) -> bytes:
    return bytes([0]) + struct.pack(">IIIBI", 1663, 7, 24576, 0, i)


def layer_stats(tl_dir: str) -> tuple[int, int, int, int]:
    """(bytes, L0s, L1 deltas, images) of the layer files in a timeline directory."""
    total = l0 = delta = image = 0
    for entry in os.scandir(tl_dir):
        if LAYER_RE.match(entry.name) is None:
            continue
        try:
            total += entry.stat().st_size
        except FileNotFoundError:  # removed while we looked
            continue
        lsns = entry.name.split("__")[1]
        if "-" in lsns.split("-v1-")[0]:
            if entry.name.startswith(FULL_KEYS):
                l0 += 1
            else:
                delta += 1
        else:
            image += 1
    return total, l0, delta, image


def remote_bytes(remote_dir: str) -> int:
    tl = os.path.join(remote_dir, "tenants", TENANT, "timelines", TIMELINE)
    total = 0
    try:
        entries = list(os.scandir(tl))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if REMOTE_LAYER_RE.match(entry.name) is not None:
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                pass
    return total


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples: list[Sample] = []
        self.rng = random.Random(args.seed)
        tenant_config: dict[str, Any] = {
            "checkpoint_distance": args.checkpoint_distance,
            "compaction_threshold": args.compaction_threshold,
            "image_creation_threshold": args.image_creation_threshold,
            "compaction_period": "0s" if args.explicit else f"{int(args.compaction_period * 1000)}ms",
            "gc_horizon": args.gc_horizon,
            "gc_period": "0s" if args.explicit else f"{int(args.gc_period * 1000)}ms",
        }
        config: dict[str, Any] = {}
        if args.remote_local_path:
            os.makedirs(args.remote_local_path, exist_ok=True)
        self.daemon = Daemon(
            args.engine,
            metrics=False,
            checkpoint_distance=args.checkpoint_distance,
            tenant_config=tenant_config,
            config=config,
            no_sync=not args.sync,
        )
        if args.remote_local_path:
            with open(self.daemon.config_path, "a", encoding="utf-8") as f:
                f.write(f'[remote_storage]\nlocal_path = "{os.path.abspath(args.remote_local_path)}"\n')
        self.tl_dir = str(self.daemon.timeline_path(TENANT, TIMELINE))
        self.values = [encode_value(Image(self.rng.randbytes(args.value_size))) for _ in range(64)]

    def batches(self, start: int, count: int, lsn: int) -> tuple[list[PutBatch], int]:
        out = []
        a = self.args
        for first in range(start, start + count, a.batch):
            n = min(a.batch, start + count - first)
            recs = []
            for _ in range(n):
                lsn += a.value_size
                recs.append((key(self.rng.randrange(a.keys)), lsn, self.values[self.rng.randrange(64)]))
            out.append(PutBatch(PutColumns.from_records(recs)))
        return out, lsn

    async def sample(self, client: Client, records: int, t0: float) -> Sample:
        a = self.args
        if a.explicit:
            await client.flush(TENANT, TIMELINE)
            await client.request("compact", tenant_id=TENANT, timeline_id=TIMELINE)
            await client.request("gc", tenant_id=TENANT, timeline_id=TIMELINE)
        tl = await client.timeline_status(TENANT, TIMELINE)
        b, l0, delta, image = layer_stats(self.tl_dir)
        s = Sample(
            records=records,
            seconds=round(time.monotonic() - t0, 2),
            last_record_lsn=tl["last_record_lsn"],
            gc_cutoff_lsn=tl["gc_cutoff_lsn"],
            local_bytes=b,
            l0=l0,
            delta=delta,
            image=image,
            remote_bytes=remote_bytes(a.remote_local_path) if a.remote_local_path else None,
        )
        self.samples.append(s)
        if a.progress:
            print(format_row(s, a.gc_horizon), file=sys.stderr, flush=True)
        return s

    async def main(self) -> None:
        a = self.args
        self.daemon.start()
        try:
            client = await Client.connect(self.daemon.addr)
            async with client:
                await client.request("tenant_create", tenant_id=TENANT)
                await client.request("timeline_create", tenant_id=TENANT, timeline_id=TIMELINE, start_lsn=0)
                t0 = time.monotonic()
                lsn = 0
                done = 0
                await self.sample(client, 0, t0)
                while done < a.records:
                    n = min(a.sample_every, a.records - done)
                    batches, lsn = self.batches(done, n, lsn)
                    await client.put_pipelined(TENANT, TIMELINE, batches, window=4)
                    done += n
                    await self.sample(client, done, t0)
                # Let the background loops catch up once more (not with --explicit).
                if not a.explicit and a.settle > 0:
                    await client.flush(TENANT, TIMELINE)
                    await trio.sleep(a.settle)
                    await self.sample(client, done, t0)
        finally:
            self.daemon.terminate()
            if not a.keep:
                self.daemon.cleanup()

    def bound(self) -> int:
        """A generous bound on the layer bytes of a steady state, from the config: twice
        (a layer file holds a record in about twice its LSN advance: key, LSN, value
        header, index) the LSNs GC must keep readable and those it cannot yet drop:
        the horizon, an L0 backlog and one merge's L1s (``compaction_threshold`` flushes
        each), an image's lag (``image_creation_threshold`` flushes) and one more flush;
        plus four images of every key."""
        a = self.args
        flushes = 2 * a.compaction_threshold + a.image_creation_threshold + 1
        lsns: int = a.gc_horizon + flushes * a.checkpoint_distance
        images: int = 4 * a.keys * (a.value_size + 64)
        return 2 * lsns + images

    def summary(self) -> dict[str, Any]:
        a = self.args
        last = self.samples[-1]
        ingested = a.records * a.value_size
        # Bytes after the first third of the run vs at the end: growth once steady.
        third = [s for s in self.samples if s.records >= a.records // 3]
        peak_after_third = max(s.local_bytes for s in third) if third else last.local_bytes
        return {
            "engine": a.engine,
            "records": a.records,
            "keys": a.keys,
            "value_size": a.value_size,
            "gc_horizon": a.gc_horizon,
            "checkpoint_distance": a.checkpoint_distance,
            "explicit": a.explicit,
            "ingested_value_bytes": ingested,
            "bound_bytes": self.bound(),
            "final_local_bytes": last.local_bytes,
            "max_local_bytes": max(s.local_bytes for s in self.samples),
            "max_local_bytes_after_first_third": peak_after_third,
            "final_remote_bytes": last.remote_bytes,
            "final_gc_cutoff_lsn": last.gc_cutoff_lsn,
            "final_layers": {"l0": last.l0, "delta": last.delta, "image": last.image},
            "seconds": last.seconds,
            "records_per_s": round(a.records / max(last.seconds, 1e-9)),
        }


def format_row(s: Sample, horizon: int) -> str:
    horizons = s.last_record_lsn / horizon if horizon else 0.0
    remote = f"{s.remote_bytes / MIB:10.1f}" if s.remote_bytes is not None else f"{'-':>10}"
    return (
        f"{s.records:>10,} {horizons:>8.1f} {s.seconds:>8.1f} {s.local_bytes / MIB:>10.1f} {remote} "
        f"{s.l0:>4} {s.delta:>5} {s.image:>5} {s.last_record_lsn / MIB:>9.1f} {s.gc_cutoff_lsn / MIB:>9.1f}"
    )


HEADER = (
    f"{'records':>10} {'horizons':>8} {'seconds':>8} {'local MiB':>10} {'remote MiB':>10} "
    f"{'L0':>4} {'delta':>5} {'image':>5} {'lrl MiB':>9} {'cutoff MiB':>9}"
)


def plot(samples: list[Sample], summary: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [s.records / 1e6 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 2))
    ax1.plot(recs, [s.local_bytes / MIB for s in samples], label="local layer bytes", color="tab:blue")
    if any(s.remote_bytes is not None for s in samples):
        ax1.plot(recs, [(s.remote_bytes or 0) / MIB for s in samples], label="remote layer bytes",
                 color="tab:orange", linestyle="--")  # fmt: skip
    ingested = [s.records * summary["value_size"] / MIB for s in samples]
    ax1.plot(recs, ingested, label="values ingested (no GC would keep about this)", color="tab:gray",
             linestyle=":")  # fmt: skip
    ax1.set_ylim(0, max(max(s.local_bytes for s in samples) / MIB * 1.6, 1))
    ax1.set_ylabel("MiB")
    ax1.set_title(
        f"GC steady state: {summary['keys']:,} keys, {summary['value_size']} B values, "
        f"gc_horizon {summary['gc_horizon'] / MIB:g} MiB, checkpoint_distance "
        f"{summary['checkpoint_distance'] / MIB:g} MiB ({summary['engine']})",
        fontsize=9,
    )
    ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.plot(recs, [s.l0 for s in samples], label="L0")
    ax2.plot(recs, [s.delta for s in samples], label="L1 delta")
    ax2.plot(recs, [s.image for s in samples], label="image")
    ax2.set_ylabel("layer files")
    ax2.set_xlabel("records ingested (millions)")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Measure layer bytes over a long ingest with compaction and GC on.")
    p.add_argument("--engine", default="std-fs", choices=("std-fs", "trio-uring"))
    p.add_argument("--records", type=int, default=5_000_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--batch", type=int, default=2000, help="records per put")
    p.add_argument("--sample-every", type=int, default=None, help="records between samples (default records/50)")
    p.add_argument("--checkpoint-distance", type=int, default=4 * MIB)
    p.add_argument("--compaction-threshold", type=int, default=10)
    p.add_argument("--image-creation-threshold", type=int, default=3)
    p.add_argument("--compaction-period", type=float, default=1.0, help="seconds")
    p.add_argument("--gc-horizon", type=int, default=8 * MIB, help="LSN distance (the LSN advances by the value size)")
    p.add_argument("--gc-period", type=float, default=1.0, help="seconds")
    p.add_argument("--explicit", action="store_true",
                   help="background loops off; flush, compact and gc at every sample (deterministic)")  # fmt: skip
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait for the loops after the ingest")
    p.add_argument("--remote-local-path", default=None, help="run with [remote_storage] local_path = DIR")
    p.add_argument("--sync", action="store_true", help="fsync (default: no_sync)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.add_argument("--json", action="store_true", help="print the samples and the summary as JSON")
    p.add_argument("--progress", action="store_true", help="print each sample as it is taken (stderr)")
    p.add_argument("--keep", action="store_true", help="keep the daemon's directory")
    args = p.parse_args(argv)
    if args.sample_every is None:
        args.sample_every = max(args.batch, args.records // 50)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    trio.run(run.main)
    summary = run.summary()
    if args.plot:
        plot(run.samples, summary, args.plot)
    if args.json:
        print(json.dumps({"summary": summary, "samples": [asdict(s) for s in run.samples]}, indent=1))
        return 0
    print(HEADER)
    for s in run.samples:
        print(format_row(s, args.gc_horizon))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
