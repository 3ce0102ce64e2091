"""How the ephemeral file is written: small values are gathered into whole buffers of
``EPHEMERAL_BUFFER_BYTES`` (each write costs trio-uring a submission, an io-wq hand-off
and a completion on the loop, so their number matters), and the file holds exactly the
values appended, in order."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from pageserver.io import IoContext, VirtualFile
from pageserver.layers.batch import check_put_batch
from pageserver.tenant import ephemeral_file
from pageserver.tenant.inmemory_layer import InMemoryLayer
from tests.helpers.recording import RecordingEngine
from tests.helpers.tenant import image, key


class _SizeRecorder(RecordingEngine):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[str, int]] = []

    async def write_at(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        n = await super().write_at(fd, data, offset)
        self.sizes.append((self.calls[-1][2], n))
        return n


async def _freeze(layer: InMemoryLayer, engine: _SizeRecorder, end_lsn: int) -> tuple[list[int], bytes]:
    """Freeze ``layer``: the sizes of the writes its ephemeral file got, and its bytes."""
    await layer.freeze(end_lsn)
    path = layer.path
    return [n for p, n in engine.sizes if p == path], Path(path).read_bytes()


async def test_small_values_are_written_in_whole_buffers(tmp_path: Path) -> None:
    engine = _SizeRecorder()
    ctx = IoContext(engine, no_sync=True)
    rnd = random.Random(3)
    layer = await InMemoryLayer.create(ctx, str(tmp_path), 0, 10)
    values: list[bytes] = []
    lsn = 10
    try:
        for _ in range(12):  # 12 puts of 1000 x ~100 B: ~1.3 MB
            batch = []
            for _ in range(1000):
                lsn += 1
                v = image(rnd.randbytes(100))
                values.append(v)
                batch.append((key(rnd.randrange(5000)), lsn, v))
            await layer.put_batch(check_put_batch(batch))
        writes, data = await _freeze(layer, engine, lsn + 1)
    finally:
        await layer.delete()
        await ctx.aclose()
    assert data == b"".join(values)
    buf = ephemeral_file.EPHEMERAL_BUFFER_BYTES
    # Whole buffers, then the tail written by the freeze.
    tail = [len(data) % buf] if len(data) % buf else []
    assert writes == [buf] * (len(data) // buf) + tail
    assert len(writes) <= 6  # ~1.3 MB: 21 writes with the writer's default 64 KiB buffers


async def test_large_puts_are_written_whole_from_the_batch(tmp_path: Path) -> None:
    """A put whose values fill a buffer or more (8 KiB pages, ~1 MiB a frame) is one write
    of exactly its values, straight from the batch: no top-up of the buffer before, no
    tail copied after (``whole_buffers=False``). A small put before one is written as it
    is, cut short."""
    engine = _SizeRecorder()
    ctx = IoContext(engine, no_sync=True)
    rnd = random.Random(4)
    layer = await InMemoryLayer.create(ctx, str(tmp_path), 0, 10)
    values: list[bytes] = []
    expected: list[int] = []
    lsn = 10
    try:
        for count, size in [(3, 100), (127, 8192), (127, 8192), (40, 100), (200, 8192)]:
            batch = []
            for _ in range(count):
                lsn += 1
                v = image(rnd.randbytes(size))
                values.append(v)
                batch.append((key(rnd.randrange(5000)), lsn, v))
            checked = check_put_batch(batch)
            nbytes = len(checked.value_buffer())
            if nbytes >= ephemeral_file.EPHEMERAL_BUFFER_BYTES:
                pending = sum(len(v) for v in values[: len(values) - count]) - sum(expected)
                expected += [pending] if pending else []
                expected.append(nbytes)
            await layer.put_batch(checked)
        writes, data = await _freeze(layer, engine, lsn + 1)
    finally:
        await layer.delete()
        await ctx.aclose()
    assert data == b"".join(values)
    assert writes == expected  # the last put was a large one: no tail for the freeze


async def test_large_puts_are_written_off_the_loop_under_std_fs(
    io_ctx: IoContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one write of a large put (``whole_buffers=False``) is started through the
    context's ``run_job``: under std-fs its pwrite of ~1 MiB runs in a worker thread, not on
    the event loop; under trio-uring it is a submission on the loop."""
    loop_thread = threading.get_ident()
    started: list[tuple[int, bool]] = []  # (length, on the loop's thread)
    original = VirtualFile.start_write_all_at

    async def spy(self: VirtualFile, data: bytes | bytearray | memoryview, offset: int):  # type: ignore[no-untyped-def]
        started.append((len(data), threading.get_ident() == loop_thread))
        return await original(self, data, offset)

    monkeypatch.setattr(VirtualFile, "start_write_all_at", spy)
    layer = await InMemoryLayer.create(io_ctx, str(tmp_path), 0, 10)
    try:
        batch = [(key(i), 11 + i, image(bytes([i]) * 8192)) for i in range(127)]
        checked = check_put_batch(batch)
        await layer.put_batch(checked)
        large = [on_loop for n, on_loop in started if n == len(checked.value_buffer())]
        assert large == [not io_ctx.engine.runs_jobs_in_thread]
    finally:
        await layer.delete()
