"""Image layers: one materialised image per key at a single LSN (SPEC section 4).

File: summary (magic ``0x5A60``) at 0; image blobs (raw bytes, optionally zstd when
``image_compression = "zstd"`` and smaller) from 8192 in key order; a B-tree with
18-byte keys whose values are the blobs' absolute offsets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from pageserver.io import IoContext
from pageserver.io.offload import cooperative_checkpoint
from pageserver.layers.blob_io import (
    COMPRESSION_DISABLED,
    COMPRESSION_KINDS,
    BlobWriter,
)
from pageserver.layers.common import BatchIterator, LayerFileWriter, LayerInfo, OpenLayerFile
from pageserver.layers.disk_btree import DiskBtreeBuilder
from pageserver.layers.key import KEY_SIZE, Key, Lsn, TenantId, TimelineId
from pageserver.layers.layer_name import ImageLayerName
from pageserver.layers.summary import ImageSummary

CHECKPOINT_EVERY: Final = 256


class ImageLayerWriter:
    """Writes one image layer. Images must come in strictly increasing key order.

    ``key_end`` (exclusive) may be given here or to :meth:`finish`.
    """

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
        self.tenant_id = tenant_id
        self.timeline_id = timeline_id
        self.key_start = Key(key_start)
        self.key_end = None if key_end is None else Key(key_end)
        self.lsn = Lsn(lsn)
        self.image_compression = image_compression
        stem = (
            f"{self.key_start}-{'XXX' if key_end is None else self.key_end}__{self.lsn:016X}"
        )
        self._file = LayerFileWriter(ctx, timeline_dir, stem)
        self._tree = DiskBtreeBuilder(KEY_SIZE)
        self._blobs: BlobWriter | None = None
        self._write_blob: Callable[[bytes | bytearray | memoryview], Awaitable[int]] | None = None
        # Validate the compression name now, not at the first image.
        if image_compression not in COMPRESSION_KINDS:
            raise ValueError(f"unknown image_compression {image_compression!r}")
        self.num_entries = 0

    @property
    def temp_path(self) -> str:
        return self._file.temp_path

    async def __aenter__(self) -> ImageLayerWriter:
        return self

    async def __aexit__(self, et: object, e: object, tb: object) -> None:
        if not self._file.done:
            await self.abandon()

    async def put_image(self, key: bytes, image: bytes | bytearray | memoryview) -> None:
        try:
            write_blob = self._write_blob
            if write_blob is None:
                bw = await self._file.open()
                self._blobs = BlobWriter(bw, self.image_compression)
                write_blob = self._write_blob = self._blobs.write_blob
            if key < self.key_start or (self.key_end is not None and key >= self.key_end):
                raise ValueError(f"key {Key(key)} outside the layer's key range")
            off = await write_blob(image)
            self._tree.append(bytes(key), off)
            self.num_entries += 1
            if not self.num_entries % CHECKPOINT_EVERY:
                await cooperative_checkpoint()
        except BaseException:
            await self._file.abandon()
            raise

    async def finish(self, key_end: Key | None = None) -> LayerInfo:
        try:
            if key_end is None:
                key_end = self.key_end
            elif self.key_end is not None and key_end != self.key_end:
                raise ValueError("key_end differs from the one given at creation")
            if key_end is None:
                raise ValueError("key_end must be given at creation or to finish()")
            if self.num_entries == 0:
                raise ValueError("refusing to write an empty image layer")
            last_key = Key(self._tree._last_key)
            if key_end <= last_key:
                raise ValueError(f"key_end {Key(key_end)} is not above the last key {last_key}")
            name = ImageLayerName(self.key_start, Key(key_end), self.lsn)

            def make_summary(index_start_blk: int, root_blk: int) -> ImageSummary:
                return ImageSummary(
                    self.tenant_id, self.timeline_id, name.key_start, name.key_end, name.lsn,
                    index_start_blk, root_blk,
                )  # fmt: skip

            summary, size = await self._file.finish(self._tree, make_summary, str(name))
        except BaseException:
            await self._file.abandon()
            raise
        assert self._file.final_path is not None
        return LayerInfo(self._file.final_path, name, summary, size, self.num_entries)

    async def abandon(self) -> None:
        await self._file.abandon()


class ImageLayer(OpenLayerFile[ImageSummary]):
    """An image layer file opened for reading."""

    SUMMARY = ImageSummary
    INDEX_KEY_SIZE = KEY_SIZE

    @property
    def lsn(self) -> Lsn:
        return self.summary.lsn

    async def get(self, key: bytes) -> bytes | None:
        """The image of ``key``, or ``None`` if this layer has none."""
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
        batch = await self._it.next_batch()
        read_blob = self._layer._reader.read_blob
        out: list[ImageEntry] = []
        for k, off in batch:
            out.append((Key(k), off, await read_blob(off) if self._with_values else b""))
        return out
