"""The layer map: which historic (on-disk) layers a timeline has, searchable in memory.

A read at (key, lsn) must look at layers newest to oldest and never open a file that
cannot hold the key. The map keeps each layer's name (key range, LSN range) in memory and
opens a reader lazily, the first time a search picks that layer; readers stay open
(their descriptors are VirtualFile slots, so "open" costs nothing once evicted).

Search rule (Neon's, simplified to what this server creates): among layers whose key
range contains the key and whose LSN range starts below the continuation LSN ``cont``
(exclusive upper bound of what is still missing), take the one whose LSN range reaches
highest (capped at ``cont``); on a tie prefer an image layer, which ends the search.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import trio

from pageserver.io import IoContext
from pageserver.layers.delta_layer import DeltaLayer
from pageserver.layers.image_layer import ImageLayer
from pageserver.layers.key import Key
from pageserver.layers.layer_name import LayerName


@dataclass(eq=False)
class HistoricLayer:
    name: LayerName
    path: str
    file_size: int
    _reader: DeltaLayer | ImageLayer | None = field(default=None, repr=False)
    #: Reads using this layer right now (on the loop); removal waits for them.
    readers: int = 0
    _unused: trio.Event | None = field(default=None, repr=False)
    #: With remote storage: whether the local file exists (False: remote only, downloaded
    #: on demand). Changed only under :meth:`residency_lock` (download, eviction).
    resident: bool = True
    #: ``time.monotonic()`` of the last read that used this layer (eviction order).
    last_read: float = 0.0
    _residency: trio.Lock | None = field(default=None, repr=False)

    def residency_lock(self) -> trio.Lock:
        if self._residency is None:
            self._residency = trio.Lock()
        return self._residency

    @property
    def is_delta(self) -> bool:
        return self.name.is_delta

    @property
    def level0(self) -> bool:
        """Written by a flush (L0: full key range) rather than by compaction (L1)."""
        return is_level0(self.name)

    @property
    def lsn_start(self) -> int:
        return int(self.name.lsn_range[0])

    @property
    def lsn_end(self) -> int:
        return int(self.name.lsn_range[1])

    def contains_key(self, key: bytes) -> bool:
        return self.name.key_start <= key < self.name.key_end

    async def delta(self, ctx: IoContext) -> DeltaLayer:
        if self._reader is None:
            await self._adopt(await DeltaLayer.open(ctx, self.path))
        assert isinstance(self._reader, DeltaLayer)
        return self._reader

    async def image(self, ctx: IoContext) -> ImageLayer:
        if self._reader is None:
            await self._adopt(await ImageLayer.open(ctx, self.path))
        assert isinstance(self._reader, ImageLayer)
        return self._reader

    async def _adopt(self, reader: DeltaLayer | ImageLayer) -> None:
        """Keep the first reader opened; a concurrent first read closes its own again."""
        if self._reader is None:
            self._reader = reader
        else:
            await reader.close()

    async def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()

    def release(self) -> None:
        self.readers -= 1
        if self.readers == 0 and self._unused is not None:
            self._unused.set()

    async def wait_unused(self) -> None:
        """Wait until no read uses this layer (before closing and deleting it)."""
        while self.readers:
            self._unused = trio.Event()
            await self._unused.wait()


class LayerMap:
    def __init__(self) -> None:
        self.layers: list[HistoricLayer] = []
        #: With remote storage: fetches a non-resident layer's file (set by the tenant).
        self.downloader: Callable[[HistoricLayer], Awaitable[None]] | None = None

    async def make_resident(self, layer: HistoricLayer) -> None:
        """Make sure ``layer``'s file is local (download it once, however many reads wait).

        The caller counts itself in ``layer.readers`` first, so eviction leaves it alone.
        """
        layer.last_read = time.monotonic()
        if layer.resident:
            return
        async with layer.residency_lock():
            if layer.resident:
                return
            if self.downloader is None:
                raise FileNotFoundError(f"{layer.path}: layer is not resident and there is no remote storage")
            await self.downloader(layer)
            layer.resident = True

    def residency(self) -> tuple[int, int]:
        """``(bytes of resident layer files, count of remote-only layers)``."""
        resident = sum(lay.file_size for lay in self.layers if lay.resident)
        return resident, sum(1 for lay in self.layers if not lay.resident)

    def add(self, layer: HistoricLayer) -> None:
        self.layers.append(layer)
        # Newest first by LSN end, so searches usually stop at the first candidates.
        self.layers.sort(key=lambda layer: (-layer.lsn_end, layer.is_delta))

    def remove(self, layer: HistoricLayer) -> None:
        self.layers.remove(layer)

    def search(
        self, key: bytes, cont_lsn: int, exclude: Collection[HistoricLayer] = ()
    ) -> HistoricLayer | None:
        """The layer to read next for ``key`` below ``cont_lsn`` (``exclude``: already read)."""
        best: HistoricLayer | None = None
        best_top = -1
        for layer in self.layers:
            if layer.lsn_start >= cont_lsn or not layer.contains_key(key) or layer in exclude:
                continue
            top = min(layer.lsn_end, cont_lsn)
            if top > best_top or (
                top == best_top and best is not None and best.is_delta and not layer.is_delta
            ):
                best, best_top = layer, top
        return best

    def image_floor(
        self, key: bytes, delta: HistoricLayer, cont_lsn: int, exclude: Collection[HistoricLayer] = ()
    ) -> int | None:
        """The LSN of the newest image layer for ``key`` inside ``delta``'s LSN range and
        below ``cont_lsn - 1``, if any (``exclude``: images known not to hold the key).

        A delta that starts at or below an image's LSN and ends above it (an L1 merged from
        L0s on both sides of the image) outranks the image in :meth:`search`; a read must
        then take from the delta only the records above the image and continue at the
        image (Neon's ``lsn_floor``), or it would walk past the image into older layers --
        the ones garbage collection removes once the image stands above them.
        """
        best: int | None = None
        lo = delta.lsn_start
        for layer in self.layers:
            if layer.is_delta or layer in exclude or not layer.contains_key(key):
                continue
            x = layer.lsn_start
            if lo <= x < cont_lsn - 1 and (best is None or x > best):
                best = x
        return best

    def counts(self) -> dict[str, int]:
        l0 = sum(1 for layer in self.layers if layer.is_delta and layer.level0)
        delta = sum(1 for layer in self.layers if layer.is_delta and not layer.level0)
        image = sum(1 for layer in self.layers if not layer.is_delta)
        return {"l0": l0, "delta": delta, "image": image}

    async def close_all(self) -> None:
        for layer in self.layers:
            await layer.close()


def is_level0(name: LayerName) -> bool:
    """A flush writes deltas over the whole key space; compaction writes narrower ones."""
    return name.is_delta and name.key_start == Key.MIN and name.key_end == Key.MAX
