"""Compaction (SPEC section 7): L0 deltas into L1 deltas, and image layers.

**L0 -> L1.** Once ``compaction_threshold`` L0 deltas exist (each spans the whole key
space and one flush's LSN range), they are merged, in (key, lsn) order, into L1 deltas
over the union of the L0s' LSN ranges, cut at key boundaries into files of about
``checkpoint_distance`` bytes; the files tile the key space from the first key present to
Key.MAX. Reads then touch one L1
file per key instead of every L0.

**Image layers.** Once ``image_creation_threshold`` delta generations (an L0, or one L1
merge; counted before this compaction's merge) lie above the newest image layer, an image
layer at ``disk_consistent_lsn`` is
written: every key's value materialised with the Test redo. Keys that cannot be
materialised (Postgres WAL records, a broken history) are left out; a read that finds
no image for its key in an image layer simply continues into the layers below.

**Crash safety without a manifest.** Every new layer is written with the usual protocol
(temp file, fsync, rename without replacing, directory fsync) *before* anything is
removed, and the layer map is changed in one step on the loop (no await in between).
A crash can therefore leave new layers *beside* the ones they replace; reads are correct
with both present (either copy holds the same records). Startup then removes what is
redundant (:func:`redundant_layers`): an L0 whose LSN range lies inside a complete merge
result, and the files of an incomplete merge (a group of L1 files of one LSN range without
its last file, the one ending at Key.MAX, while the L0s it was merged from are still there;
without them it is a group garbage collection thinned out, and stays).

Both jobs run through ``ctx.run_job`` (a worker thread under std-fs, the loop under
trio-uring) and use their own layer readers, so nothing they do races with reads on the
loop; a timeline runs one compaction at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from pageserver.io import IoContext, cleanup_shield, cooperative_checkpoint
from pageserver.layers.batch import KEY_DTYPE
from pageserver.layers.blob_io import PAGE_SZ, STAGING_BYTES, blob_sizes
from pageserver.layers.common import DELTA_KEY_SIZE, LayerInfo
from pageserver.layers.delta_layer import STAGING_ENTRIES, DeltaLayer, DeltaLayerWriter
from pageserver.layers.image_layer import ImageLayer, ImageLayerWriter
from pageserver.layers.key import KEY_SIZE, Key, TenantId, TimelineId
from pageserver.layers.value import BadValue, RedoError
from pageserver.tenant.layer_map import HistoricLayer, LayerMap
from pageserver.tenant.read_path import reconstruct


@dataclass(frozen=True, slots=True)
class CompactionResult:
    layers_created: int
    layers_removed: int


# -- L0 -> L1 ---------------------------------------------------------------------------------


#: Index entries buffered per L0 and records merged per slice (the arrays of one step),
#: and value bytes read per slice: what a merge holds in memory, whatever the L0s' sizes.
SLICE_RECORDS: Final = 16384
SLICE_BYTES: Final = 4 << 20
_DK = f"S{DELTA_KEY_SIZE}"


class _L0Source:
    """One L0's index entries not merged yet (columns, in (key, lsn) order)."""

    def __init__(self, layer: DeltaLayer) -> None:
        self.layer = layer
        self.it = layer.iter_index_columns()
        self.done = False
        self.dk = np.empty((0, DELTA_KEY_SIZE), np.uint8)
        self.refs = np.empty(0, np.uint64)

    async def fill(self, want: int) -> None:
        """Read leaves until ``want`` entries are buffered or the index ends."""
        if self.done or len(self.refs) >= want:
            return
        dks, refs = [self.dk], [self.refs]
        have = len(self.refs)
        while have < want:
            batch = await self.it.next_batch()
            if batch is None:
                self.done = True
                break
            dks.append(batch[0])
            refs.append(batch[1])
            have += len(batch[1])
        self.dk = np.concatenate(dks)
        self.refs = np.concatenate(refs)

    def flat(self) -> npt.NDArray[np.bytes_]:
        return self.dk.view(_DK).ravel()


async def merge_l0_layers(
    ctx: IoContext,
    timeline_dir: str,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    paths: list[str],
    target_size: int,
) -> list[LayerInfo]:
    """Merge L0 delta files into L1 files (an offloaded job). On error, removes its output.

    Batch-wise: each step merges a slice of at most :data:`SLICE_RECORDS` entries (and
    about :data:`SLICE_BYTES` of values) of all L0s in (key, lsn) order with array
    operations and hands it to :meth:`DeltaLayerWriter.put_sorted`. The files are byte
    for byte those of feeding every entry to :meth:`DeltaLayerWriter.put_value` and
    starting a new file at the first key boundary where ``size_estimate`` reaches
    ``target_size``: that estimate (values so far, plus the index pages the per-value
    writer had built, which it extends every :data:`STAGING_ENTRIES` values or
    :data:`STAGING_BYTES` of blobs) is reproduced here, see :class:`_Cutter`.
    """
    readers: list[DeltaLayer] = []
    cutter: _Cutter | None = None
    try:
        for path in paths:
            readers.append(await DeltaLayer.open(ctx, path))
        lsn_start = min(r.lsn_range[0] for r in readers)
        lsn_end = max(r.lsn_range[1] for r in readers)
        cutter = _Cutter(ctx, timeline_dir, tenant_id, timeline_id, lsn_start, lsn_end, target_size)
        sources = [_L0Source(r) for r in readers]
        per_source = max(256, SLICE_RECORDS // len(sources))
        while True:
            for src in sources:
                await src.fill(per_source)
            live = [s for s in sources if len(s.refs)]
            if not live:
                break
            # Every entry up to the smallest last buffered (key, lsn) of the L0s not read
            # to the end may go: whatever those L0s hold beyond is above it.
            open_ends = [s.dk[-1].tobytes() for s in live if not s.done]
            bound = min(open_ends) if open_ends else None
            takes = [
                len(s.refs) if bound is None else int(s.flat().searchsorted(bound, "right"))
                for s in live
            ]
            dk = np.concatenate([s.dk[:t] for s, t in zip(live, takes, strict=True)])
            refs = np.concatenate([s.refs[:t] for s, t in zip(live, takes, strict=True)])
            src_of = np.repeat(np.arange(len(live)), takes)
            # (key, lsn) is unique across the L0s (disjoint LSN ranges): any sort will do.
            order = np.argsort(dk.view(_DK).ravel(), kind="stable")
            # Value bytes, estimated from the blob offsets (blobs lie in index order), to
            # keep the slice within SLICE_BYTES: a prefix of the merged order.
            offs = (refs >> np.uint64(1)).astype(np.int64)
            est = np.zeros(len(offs), np.int64)
            firsts = (np.cumsum(takes) - np.asarray(takes)).tolist()
            for b0, t in zip(firsts, takes, strict=True):
                if t > 1:
                    est[b0 : b0 + t - 1] = offs[b0 + 1 : b0 + t] - offs[b0 : b0 + t - 1]
            m = max(1, int(np.cumsum(est[order]).searchsorted(SLICE_BYTES, "right")))
            order = order[:m]
            counts = np.bincount(src_of[order], minlength=len(live))
            # Read each L0's share of the slice's values (one span per L0).
            datas: list[npt.NDArray[np.uint8]] = []
            vstart = np.empty(len(offs), np.int64)
            vlen = np.empty(len(offs), np.int64)
            base = 0
            for j, (s, b0) in enumerate(zip(live, firsts, strict=True)):
                c = int(counts[j])
                if not c:
                    continue
                buf, st, ln = await s.layer.read_values(offs[b0 : b0 + c])
                vstart[b0 : b0 + c] = st + base
                vlen[b0 : b0 + c] = ln
                base += len(buf)
                datas.append(buf)
                s.dk = s.dk[c:]
                s.refs = s.refs[c:]
            data = np.concatenate(datas) if len(datas) > 1 else datas[0]
            sdk = dk[order]
            keys = np.ascontiguousarray(sdk[:, :KEY_SIZE]).view(KEY_DTYPE).ravel()
            lsns = np.ascontiguousarray(sdk[:, KEY_SIZE:]).view(">u8").ravel().astype(np.uint64)
            will_init = (refs[order] & np.uint64(1)).astype(np.bool_)
            await cutter.put(sdk, keys, lsns, data, vstart[order], vlen[order], will_init)
            del data, datas
            await cooperative_checkpoint()
        infos = await cutter.finish()
        cutter = None
        return infos
    except BaseException:
        if cutter is not None:
            with cleanup_shield():
                await cutter.abandon()
        raise
    finally:
        with cleanup_shield():
            for r in readers:
                await r.close()


class _Cutter:
    """Writes the merged entries into L1 files, cut where the per-value merge cut them.

    The per-value merge started a new file before an entry of a new key once the writer's
    ``size_estimate`` reached the target: ``PAGE_SZ`` + the blobs so far + ``PAGE_SZ``
    per index page built so far + one. That writer staged values and extended its index
    after every :data:`STAGING_ENTRIES` values or once :data:`STAGING_BYTES` of blobs were
    staged (a "staging run"), so the index part of the estimate only changes at the ends
    of staging runs. Here the entries of a run go to :meth:`DeltaLayerWriter.put_sorted`
    (whose index pages are the per-value writer's, page for page), the index part is read
    from the writer at each run's end (``tree_part``), and within a run the estimate is
    ``PAGE_SZ + blob bytes + tree_part``, non-decreasing: its first entry at or above the
    target and at a new key is a binary search.
    """

    def __init__(
        self, ctx: IoContext, timeline_dir: str, tenant_id: TenantId, timeline_id: TimelineId,
        lsn_start: int, lsn_end: int, target_size: int,
    ) -> None:  # fmt: skip
        self.ctx = ctx
        self.args = (ctx, timeline_dir, tenant_id, timeline_id)
        self.lsn_start = lsn_start
        self.lsn_end = lsn_end
        self.target = target_size
        self.infos: list[LayerInfo] = []
        self.writer: DeltaLayerWriter | None = None
        self.w_bytes = 0  # blob bytes in the current file
        self.run_bytes = 0  # blob bytes of the current staging run
        self.run_count = 0  # entries of the current staging run
        self.tree_part = PAGE_SZ  # PAGE_SZ * (index pages + 1) at the last run's end
        self.last_key: bytes | None = None

    def _new_writer(self, key: bytes) -> None:
        # Like Neon's L1 files, the first starts at the first key present (not at
        # Key.MIN): an L1 never looks like an L0 (whole key range), even when the
        # merge fits in one file. The last file ends at Key.MAX, which is what
        # tells a complete merge from an interrupted one (see redundant_layers).
        self.writer = DeltaLayerWriter(*self.args, Key(key), self.lsn_start, self.lsn_end)
        self.w_bytes = self.run_bytes = self.run_count = 0
        self.tree_part = PAGE_SZ

    async def put(
        self,
        dk: npt.NDArray[np.uint8],
        keys: npt.NDArray[np.bytes_],
        lsns: npt.NDArray[np.uint64],
        data: npt.NDArray[np.uint8],
        offs: npt.NDArray[np.int64],
        lens: npt.NDArray[np.int64],
        will_init: npt.NDArray[np.bool_],
    ) -> None:
        """The next entries in (key, lsn) order (``dk``: their index keys, ``(n, 26)``)."""
        n = len(lsns)
        if not n:
            return
        kb = dk[:, :KEY_SIZE]
        newkey = np.empty(n, np.bool_)
        newkey[1:] = (kb[1:] != kb[:-1]).any(axis=1)
        newkey[0] = self.last_key is None or kb[0].tobytes() != self.last_key
        key_starts = np.flatnonzero(newkey)
        sizes = blob_sizes(lens)
        cum = np.zeros(n + 1, np.int64)  # cum[i]: blob bytes of entries [0, i)
        np.cumsum(sizes, out=cum[1:])

        async def write(writer: DeltaLayerWriter, a: int, b: int) -> None:
            """Entries [a, b) of this call into ``writer``; counted against the file."""
            await writer.put_sorted(keys[a:b], lsns[a:b], data, offs[a:b], lens[a:b], will_init[a:b])
            await cooperative_checkpoint()
            self._account(cum, a, b)

        i = 0
        fresh = False  # entry i is the first of its file (never a cut)
        if self.writer is None:
            self._new_writer(kb[0].tobytes())
            fresh = True
        while i < n:
            writer = self.writer
            assert writer is not None
            # The end of the staging run (inclusive, maybe beyond this slice).
            run_end = i + STAGING_ENTRIES - self.run_count - 1
            by_bytes = int(cum.searchsorted(cum[i] + STAGING_BYTES - self.run_bytes, "left")) - 1
            run_end = min(run_end, by_bytes) if by_bytes >= i else run_end
            stop = min(run_end, n - 1)
            # First entry c in [i (+1 if fresh), stop] at a new key whose estimate
            # PAGE_SZ + w_bytes + (cum[c] - cum[i]) + tree_part reaches the target.
            need = self.target - PAGE_SZ - self.w_bytes - self.tree_part + int(cum[i])
            t = max(int(cum[:n].searchsorted(need, "left")), i + 1 if fresh else i)
            k = int(key_starts.searchsorted(t, "left"))
            c = int(key_starts[k]) if k < len(key_starts) else n
            if c <= stop:
                if c > i:
                    await write(writer, i, c)
                self.infos.append(await writer.finish(Key(kb[c].tobytes())))
                self.writer = None
                self._new_writer(kb[c].tobytes())
                fresh = True
                i = c
                continue
            await write(writer, i, stop + 1)
            if stop == run_end:  # the run ended: the per-value writer extended its index
                self.tree_part = writer.size_estimate - PAGE_SZ - self.w_bytes
                self.run_bytes = self.run_count = 0
            fresh = False
            i = stop + 1
        self.last_key = kb[n - 1].tobytes()

    def _account(self, cum: npt.NDArray[np.int64], a: int, b: int) -> None:
        got = int(cum[b] - cum[a])
        self.w_bytes += got
        self.run_bytes += got
        self.run_count += b - a

    async def finish(self) -> list[LayerInfo]:
        if self.writer is not None:
            self.infos.append(await self.writer.finish(Key.MAX))
            self.writer = None
        return self.infos

    async def abandon(self) -> None:
        if self.writer is not None:
            await self.writer.abandon()
        for info in self.infos:
            try:
                await self.ctx.unlink(info.path)
            except FileNotFoundError:
                pass


# -- image layers -------------------------------------------------------------------------------


async def _distinct_keys(readers: list[DeltaLayer | ImageLayer]) -> list[bytes]:
    """Every key any of the layers holds, sorted, each once."""
    keys: set[bytes] = set()
    for r in readers:
        it = r.iter_index()
        while batch := await it.next_batch():
            keys.update(bytes(e[0]) for e in batch)
            await cooperative_checkpoint()
    return sorted(keys)


async def create_image_layer(
    ctx: IoContext,
    timeline_dir: str,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    layers: list[HistoricLayer],
    lsn: int,
    image_compression: str,
) -> LayerInfo | None:
    """Materialise every key at ``lsn`` from ``layers`` (private copies) into an image layer."""
    snapshot = LayerMap()
    for layer in layers:
        snapshot.add(layer)
    writer: ImageLayerWriter | None = None
    try:
        readers: list[DeltaLayer | ImageLayer] = []
        for layer in snapshot.layers:
            readers.append(await (layer.delta(ctx) if layer.is_delta else layer.image(ctx)))
        keys = await _distinct_keys(readers)
        writer = ImageLayerWriter(
            ctx, timeline_dir, tenant_id, timeline_id, Key.MIN, lsn, Key.MAX,
            image_compression=image_compression,
        )  # fmt: skip
        written = 0
        for i, key in enumerate(keys):
            found = await reconstruct(ctx, key, lsn, snapshot, track=False)
            if found.is_empty:
                continue
            try:
                value = found.materialize()
            except (RedoError, BadValue):
                continue  # left to the deltas below the image (see module docstring)
            await writer.put_image(key, value)
            written += 1
            if not i % 256:
                await cooperative_checkpoint()
        if not written:
            await writer.abandon()
            return None
        info = await writer.finish(Key.MAX)
        writer = None
        return info
    except BaseException:
        if writer is not None:
            with cleanup_shield():
                await writer.abandon()
        raise
    finally:
        with cleanup_shield():
            for layer in snapshot.layers:
                await layer.close()


# -- what to do, and startup clean-up -------------------------------------------------------------


def delta_generations_above(layers: Iterable[HistoricLayer], lsn: int) -> int:
    """Distinct delta LSN ranges (an L0, or one L1 merge) with records above ``lsn``."""
    return len({(lay.lsn_start, lay.lsn_end) for lay in layers if lay.is_delta and lay.lsn_end - 1 > lsn})


def redundant_layers(layers: list[HistoricLayer]) -> list[HistoricLayer]:
    """Layers a crashed compaction left behind that are safe to delete (module docstring)."""
    full = [lay for lay in layers if lay.is_delta and lay.level0]
    groups: dict[tuple[int, int], list[HistoricLayer]] = {}
    for lay in layers:
        if lay.is_delta and not lay.level0:
            groups.setdefault((lay.lsn_start, lay.lsn_end), []).append(lay)
    units: list[tuple[int, int]] = [(lay.lsn_start, lay.lsn_end) for lay in full]
    doomed: list[HistoricLayer] = []
    for rng, group in groups.items():
        group.sort(key=lambda lay: lay.name.key_start)
        # A merge renames its files in key order and only the last one ends at Key.MAX, so
        # an interrupted merge left a contiguous prefix without it.
        complete = group[-1].name.key_end == Key.MAX and all(
            a.name.key_end == b.name.key_start for a, b in zip(group, group[1:], strict=False)
        )
        if complete:
            units.append(rng)
        elif any(rng[0] <= lay.lsn_start and lay.lsn_end <= rng[1] for lay in full):
            # Its L0s are all still there: an interrupted merge. (A group with gaps and no
            # L0s left is what garbage collection thinned out: it removes the files of a
            # merge one by one, keeping those holding a key no image has.)
            doomed.extend(group)
    for lay in full:
        rng = (lay.lsn_start, lay.lsn_end)
        if any(u != rng and u[0] <= rng[0] and rng[1] <= u[1] for u in units):
            doomed.append(lay)
    return doomed


async def remove_layers(ctx: IoContext, timeline_dir: str, layers: list[HistoricLayer]) -> None:
    """Delete layer files already taken out of the layer map, once no read uses them."""
    with cleanup_shield():
        for layer in layers:
            await layer.wait_unused()
            await layer.close()
            try:
                await ctx.unlink(layer.path)
            except FileNotFoundError:
                pass
        await ctx.fsync_dir(timeline_dir)


def private_copy(layer: HistoricLayer) -> HistoricLayer:
    """A HistoricLayer with its own (not yet opened) reader, for a compaction job."""
    return HistoricLayer(layer.name, layer.path, layer.file_size)
