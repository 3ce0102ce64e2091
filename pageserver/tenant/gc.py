"""Garbage collection (SPEC section 11): which layers no read at or above the cutoff needs.

``gc_cutoff_lsn = last_record_lsn - gc_horizon``, never going back and never below the
timeline's ``start_lsn`` (:func:`next_cutoff`). Reads below it answer ``lsn_too_old``;
every read at or above it must return what it returned before. The timeline persists a new
cutoff (metadata, then the remote index) *before* it removes anything, so a restart can
never serve an LSN whose layers are gone.

**The removal rule.** A read at ``lsn >= cutoff`` walks down from the newest layers and
stops at the first image layer that holds its key. So a layer ``L`` is never needed again
when image layers with LSNs in ``[end of L's LSNs, cutoff]`` stand above it for every key
it holds:

- a delta layer qualifies when its LSN range ends at or below the cutoff (exclusive end
  ``<= cutoff + 1``), an image layer when its LSN is below the cutoff;
- the *names* of the image layers in that window must cover ``L``'s whole key range (an L0
  spans the whole key space, so only images over the whole key space cover it), which
  :func:`plan` checks from the layer map alone;
- and every key ``L`` holds must really be in one of those images, which
  :func:`keys_covered` checks by reading the indexes. This second check is ours, not
  Neon's: image creation leaves out a key it cannot materialise (a Postgres WAL record, a
  broken history; see :mod:`pageserver.tenant.compaction`), and a read of such a key walks
  on below the image, into exactly the layers a name-only rule would delete. It costs one
  pass over the candidate's index and the covering images' indexes from the candidate's
  first key (keys are sorted in both), in a job (a worker thread under std-fs).

The newest image holding a key is never itself removed for that key (no newer image
within the window holds it), so removing several layers in one pass is as safe as
removing them one by one.

**Reads in flight.** A read that began before the pass (below the cutoff it just raised,
or before compaction published the image the plan counts on) may still walk into the
layers the plan removes: the timeline waits for every such read to end before it takes
anything out of the layer map (``Timeline._reads_drained``), and a running read pins the
layer it is reading (``HistoricLayer.readers``) so its file outlives it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pageserver.io import IoContext, cleanup_shield, cooperative_checkpoint
from pageserver.layers.delta_layer import DeltaLayer
from pageserver.layers.image_layer import ImageLayer
from pageserver.layers.key import Key
from pageserver.tenant.layer_map import HistoricLayer


@dataclass(frozen=True, slots=True)
class GcResult:
    layers_removed: int
    gc_cutoff_lsn: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """A layer the names say may go, and the images that would stand in for it."""

    layer: HistoricLayer
    images: tuple[HistoricLayer, ...]


def next_cutoff(
    previous: int, last_record_lsn: int, gc_horizon: int, start_lsn: int, disk_consistent_lsn: int
) -> int:
    """The cutoff a GC pass moves to: ``last_record_lsn - gc_horizon``, never back, never
    below ``start_lsn``, and never above ``disk_consistent_lsn``.

    The last bound is ours: the cutoff is durable, ``last_record_lsn`` is not. A cutoff
    above ``disk_consistent_lsn`` would, after a crash (``last_record_lsn`` back at
    ``disk_consistent_lsn``) or an attach elsewhere, leave no LSN readable at all. It costs
    GC nothing: every image layer is at or below ``disk_consistent_lsn``.
    """
    return max(previous, start_lsn, min(last_record_lsn - gc_horizon, disk_consistent_lsn))


def _window_start(layer: HistoricLayer) -> int:
    """The lowest image LSN that stands above every record of ``layer``.

    A delta's range ``[start, end)`` is exclusive at the end; an image at LSN ``x`` is
    named ``x`` and ranges over ``[x, x + 1)``. Either way: the layer's exclusive end.
    """
    return layer.lsn_end


def _names_cover(start: Key | bytes, end: Key | bytes, images: list[HistoricLayer]) -> bool:
    """Whether the key ranges of ``images`` together cover ``[start, end)``."""
    reach = bytes(start)
    for img in sorted(images, key=lambda i: i.name.key_start):
        if img.name.key_start > reach:
            return False
        reach = max(reach, bytes(img.name.key_end))
        if reach >= end:
            return True
    return reach >= end


def plan(layers: list[HistoricLayer], cutoff: int) -> list[Candidate]:
    """The layers whose LSNs and the image layers' names allow removal at ``cutoff``."""
    images = [lay for lay in layers if not lay.is_delta and lay.lsn_start <= cutoff]
    out: list[Candidate] = []
    for layer in layers:
        if layer.is_delta:
            if layer.lsn_end > cutoff + 1:
                continue
        elif layer.lsn_start >= cutoff:
            continue
        lo = _window_start(layer)
        start, end = layer.name.key_start, layer.name.key_end
        above = [
            img
            for img in images
            if img is not layer
            and lo <= img.lsn_start
            and img.name.key_start < end
            and start < img.name.key_end
        ]
        if layer.is_delta and layer.level0:
            # SPEC section 11: an L0 (the whole key range) goes only when *an* image
            # covers the whole key range, not a union of narrower ones.
            above = [img for img in above if _names_cover(start, end, [img])]
        if above and _names_cover(start, end, above):
            out.append(Candidate(layer, tuple(above)))
    return out


class _KeyCursor:
    """The distinct keys of one layer's index, in order, from a start key."""

    def __init__(self, reader: DeltaLayer | ImageLayer, start: bytes) -> None:
        self._it = reader.iter_index(start)
        self._batch: list[bytes] = []
        self._pos = 0
        self._done = False

    async def peek(self) -> bytes | None:
        while self._pos >= len(self._batch):
            if self._done:
                return None
            batch = await self._it.next_batch()
            if not batch:
                self._done = True
                return None
            self._batch = [bytes(e[0]) for e in batch]
            self._pos = 0
            await cooperative_checkpoint()
        return self._batch[self._pos]

    def advance(self) -> None:
        self._pos += 1

    async def skip_below(self, key: bytes) -> bytes | None:
        """Move past every key below ``key``; the first key at or above it (or None)."""
        while (k := await self.peek()) is not None and k < key:
            self.advance()
        return k


async def _open(ctx: IoContext, layer: HistoricLayer) -> DeltaLayer | ImageLayer:
    return await (DeltaLayer.open(ctx, layer.path) if layer.is_delta else ImageLayer.open(ctx, layer.path))


async def keys_covered(ctx: IoContext, candidates: list[Candidate]) -> list[bool]:
    """For each candidate: is every key it holds in one of its images? (an offloaded job)

    Opens its own readers (the layers are pinned by the caller), so it never shares a
    reader with reads on the loop.
    """
    readers: dict[str, DeltaLayer | ImageLayer] = {}

    async def reader(layer: HistoricLayer) -> DeltaLayer | ImageLayer:
        r = readers.get(layer.path)
        if r is None:
            r = readers[layer.path] = await _open(ctx, layer)
        return r

    out: list[bool] = []
    try:
        for cand in candidates:
            start = bytes(cand.layer.name.key_start)
            mine = _KeyCursor(await reader(cand.layer), start)
            theirs = [_KeyCursor(await reader(img), start) for img in cand.images]
            covered = True
            while (key := await mine.peek()) is not None:
                found = False
                for cur in theirs:
                    if await cur.skip_below(key) == key:
                        found = True
                if not found:
                    covered = False
                    break
                # A delta lists a key once per record: step over all of them.
                while await mine.peek() == key:
                    mine.advance()
            out.append(covered)
        return out
    finally:
        with cleanup_shield():
            for r in readers.values():
                await r.close()
