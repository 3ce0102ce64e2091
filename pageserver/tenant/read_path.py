"""The read path: the history of one key at one LSN, walked from the newest layer down.

A read collects the key's records newest first and stops at the first image or
``will_init`` record: nothing older can change the result (:meth:`Reconstruction.take`
is that rule, the only copy of it). The walk keeps ``cont``, the exclusive upper bound of
the LSNs still missing, and looks at:

1. the in-memory layers, newest first (the open layer, then the frozen ones), each below
   ``cont``; after a layer, ``cont`` drops to its start;
2. the historic layers the layer map picks for the key below ``cont``
   (:meth:`LayerMap.search`), until none is left. A delta is read only down to the newest
   image layer inside its LSN range (:meth:`LayerMap.image_floor`); the walk goes on at
   that image, never past it, so what garbage collection keeps (the layers above an image)
   is all a read at or above the image needs.

A historic layer that is not resident (remote storage: evicted, or attached and not read
yet) is downloaded on demand before it is read (:meth:`LayerMap.make_resident`).

The timeline's ``get``/``get_history`` walk both parts; compaction's image creation walks
a private snapshot of the historic layers only. Both call :func:`reconstruct`.

**Readers.** A read counts itself on every layer it uses, so that nothing deletes a
layer's file under it: the in-memory layers are counted all at once before the first
await (a flush finishing meanwhile must not delete a frozen layer the walk has yet to
read) and released when the walk leaves them; a historic layer is counted from the moment
the search picks it (no await in between) until the walk moves on. Compaction, which reads
private copies under the timeline's compaction lock, passes ``track=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pageserver.io import IoContext
from pageserver.layers.value import decode_value, image_bytes, materialize, value_will_init
from pageserver.tenant.inmemory_layer import InMemoryLayer
from pageserver.tenant.layer_map import HistoricLayer, LayerMap


@dataclass(slots=True)
class Reconstruction:
    """What a walk found: a base image (if any) and the records above it, newest first."""

    image: bytes | None = None
    image_lsn: int | None = None
    #: ``(lsn, encoded value)`` above ``image_lsn``, newest first.
    records: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """No record at all: the key does not exist at this LSN."""
        return self.image is None and not self.records

    def take(self, lsn: int, raw: bytes, will_init: bool | None = None) -> bool:
        """Add the next older record; True once the history is complete (stop walking).

        An image ends the history as the base; a ``will_init`` record (``will_init`` if
        known, else read from ``raw``) ends it as the oldest record.
        """
        img = image_bytes(raw)
        if img is not None:
            self.image, self.image_lsn = img, lsn
            return True
        self.records.append((lsn, raw))
        return will_init if will_init is not None else value_will_init(raw)

    def materialize(self) -> bytes:
        """The value: the records applied oldest first to the image.

        Raises the value layer's ``RedoUnsupported``/``RedoError``/``BadValue``; the caller
        decides what they mean (an error reply, or a key left out of an image layer).
        """
        return materialize(self.image, [decode_value(raw) for _lsn, raw in reversed(self.records)])


async def reconstruct(
    ctx: IoContext,
    key: bytes,
    lsn: int,
    layer_map: LayerMap,
    in_memory: Sequence[InMemoryLayer] = (),
    *,
    track: bool = True,
) -> Reconstruction:
    """Walk ``in_memory`` (newest first), then ``layer_map``, for ``key`` at ``lsn``.

    ``track`` counts the read on each historic layer it uses (the in-memory layers are
    always counted); see the module docstring.
    """
    result = Reconstruction()
    cont = lsn + 1
    for mem in in_memory:
        mem.readers += 1
    try:
        for mem in in_memory:
            if mem.start_lsn >= cont:
                continue
            for rec_lsn, off, n, will_init in mem.entries_for(key, cont):
                if result.take(rec_lsn, await mem.read_value(off, n), will_init):
                    return result
            cont = mem.start_lsn
    finally:
        for mem in in_memory:
            mem.release_reader()
    # Image layers already looked at that did not hold the key. Such a layer says nothing
    # about the key, so the walk must not jump below its LSN: a delta ending at the same
    # LSN + 1 may hold a record *at* that LSN. Continue at the same ``cont`` without it.
    missed_images: list[HistoricLayer] = []
    while True:
        hl = layer_map.search(key, cont, missed_images)
        if hl is None:
            return result
        if track:
            hl.readers += 1
        try:
            # Remote storage: a layer known only from the index is downloaded first (once
            # for all reads waiting on it); counted above, so eviction leaves it alone.
            await layer_map.make_resident(hl)
            if hl.is_delta:
                # Only down to an image inside the delta's range: that image comes next.
                floor = layer_map.image_floor(key, hl, cont, missed_images)
                low = hl.lsn_start if floor is None else floor + 1
                delta = await hl.delta(ctx)
                values = await delta.get_values_reconstruct_data(key, (low, cont))
                for rec_lsn, raw in values:
                    if result.take(int(rec_lsn), raw):
                        return result
            else:
                image = await (await hl.image(ctx)).get(key)
                if image is not None:
                    result.image, result.image_lsn = image, hl.lsn_start
                    return result
                missed_images.append(hl)
                continue
        finally:
            if track:
                hl.release()
        cont = low
