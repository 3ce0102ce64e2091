"""Image layers: one materialised image per key at a single LSN (SPEC section 4).

File: summary (magic ``0x5A60``) at 0; image blobs (raw bytes, optionally zstd when
``image_compression = "zstd"`` and smaller) from 8192 in key order; a B-tree with
18-byte keys whose values are the blobs' absolute offsets.
"""

from __future__ import annotations

from typing import Final

from pageserver.io import IoContext, cooperative_checkpoint
from pageserver.layers.blob_io import COMPRESSION_DISABLED
from pageserver.layers.common import BatchIterator, LayerInfo, OpenLayerFile, reading_layer
from pageserver.layers.key import KEY_SIZE, Key, Lsn, TenantId, TimelineId
from pageserver.layers.layer_name import ImageLayerName, layer_name_text
from pageserver.layers.summary import ImageSummary
from pageserver.layers.writer import LayerWriter, resolve_end

CHECKPOINT_EVERY: Final = 256


class ImageLayerWriter(LayerWriter):
    """Writes one image layer. Images must come in strictly increasing key order.

    ``key_end`` (exclusive) may be given here or to :meth:`finish`.
    """

    KIND = "image"

    def __init__(
        self,
        ctx: IoContext,
        timeline_dir: str,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        key_start: Key,
        lsn: int,
        key_end: Key | None = None,
        image_compression: str = COMPRESSION_DISABLED,
    ) -> None:
        key_start = Key(key_start)
        self.key_end = None if key_end is None else Key(key_end)
        self.lsn = Lsn(lsn)
        self.image_compression = image_compression
        super().__init__(
            ctx, timeline_dir, tenant_id, timeline_id, key_start,
            layer_name_text(key_start, self.key_end, (self.lsn,)), KEY_SIZE, image_compression,
        )  # fmt: skip

    async def put_image(self, key: bytes, image: bytes | bytearray | memoryview) -> None:
        try:
            blobs = self._blobs
            if blobs is None:
                blobs = await self._open()
            if key < self.key_start or (self.key_end is not None and key >= self.key_end):
                raise ValueError(f"key {Key(key)} outside the layer's key range")
            off = await blobs.write_blob(image)
            self._tree.append(bytes(key), off)
            self.num_entries += 1
            if not self.num_entries % CHECKPOINT_EVERY:
                await cooperative_checkpoint()
        except BaseException:
            await self._file.abandon()
            raise

    async def finish(self, key_end: Key | None = None) -> LayerInfo:
        try:
            key_end = resolve_end(key_end, self.key_end, "key_end")
            self._check_not_empty()
            self._check_key_end(key_end, Key(self._tree._last_key))
            name = ImageLayerName(self.key_start, Key(key_end), self.lsn)

            def make_summary(index_start_blk: int, root_blk: int) -> ImageSummary:
                return ImageSummary(
                    self.tenant_id, self.timeline_id, name.key_start, name.key_end, name.lsn,
                    index_start_blk, root_blk,
                )  # fmt: skip

            return await self._write_out(name, make_summary)
        except BaseException:
            await self._file.abandon()
            raise


class ImageLayer(OpenLayerFile[ImageSummary]):
    """An image layer file opened for reading."""

    SUMMARY = ImageSummary

    @property
    def lsn(self) -> Lsn:
        return self.summary.lsn

    async def get(self, key: bytes) -> bytes | None:
        """The image of ``key``, or ``None`` if this layer has none."""
        with reading_layer(self.path):
            off = await self.index.get(bytes(key))
            if off is None:
                return None
            return await self._reader.read_blob(off)

    def iter_index(self, start_key: bytes = Key.MIN) -> ImageIterator:
        """``(key, blob offset, b"")`` in key order, from ``start_key``."""
        return ImageIterator(self, start_key, with_values=False)

    def iter_all(self, start_key: bytes = Key.MIN) -> ImageIterator:
        """``(key, blob offset, image bytes)`` in key order, from ``start_key``."""
        return ImageIterator(self, start_key, with_values=True)

    async def load_all(self) -> list[tuple[Key, bytes]]:
        out: list[tuple[Key, bytes]] = []
        it = self.iter_all()
        while batch := await it.next_batch():
            out.extend((k, v) for k, _o, v in batch)
        return out


ImageEntry = tuple[Key, int, bytes]


class ImageIterator(BatchIterator[ImageEntry]):
    """Iterates an image layer in key order, a leaf page at a time."""

    def __init__(self, layer: ImageLayer, start_key: bytes, with_values: bool) -> None:
        super().__init__()
        self._layer = layer
        self._it = layer.index.iter(bytes(start_key), forward=True)
        self._with_values = with_values

    async def next_batch(self) -> list[ImageEntry]:
        with reading_layer(self._layer.path):
            batch = await self._it.next_batch()
            read_blob = self._layer._reader.read_blob
            out: list[ImageEntry] = []
            for k, off in batch:
                out.append((Key(k), off, await read_blob(off) if self._with_values else b""))
            return out
