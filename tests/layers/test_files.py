"""Whole delta/image layers on both engines: round trips, parity, abandon, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pageserver import failpoints
from pageserver.io import STD_FS, TRIO_URING, IoContext, create_engine
from pageserver.layers.common import LayerFileError
from pageserver.layers.delta_layer import DeltaLayer, DeltaLayerWriter
from pageserver.layers.image_layer import ImageLayer, ImageLayerWriter
from pageserver.layers.key import Key, Lsn, TenantId, TimelineId
from pageserver.layers.layer_name import parse_layer_name
from pageserver.layers.validate import validate_layer_file
from pageserver.layers.value import Image, PostgresRecord, TestRecord, encode_value
from tests.conftest import require_engine

TENANT = TenantId(bytes(range(16)))
TIMELINE = TimelineId(bytes(range(16, 32)))
REPO = Path(__file__).resolve().parents[2]

value_st = st.one_of(
    st.binary(max_size=600).map(Image),
    st.builds(PostgresRecord, st.booleans(), st.binary(max_size=300)),
    st.builds(TestRecord, st.text(max_size=20), st.booleans(), st.booleans()),
)
delta_entries_st = st.dictionaries(
    st.tuples(st.integers(0, 2**20).map(lambda i: Key.from_int(i * 977)), st.integers(5, 5000)),
    value_st,
    min_size=1,
    max_size=400,
)
image_entries_st = st.dictionaries(
    st.binary(min_size=18, max_size=18).map(Key).filter(lambda k: k < Key.MAX),
    st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: b * 300)),
    min_size=1,
    max_size=200,
)


async def write_delta(
    ctx: IoContext, d: str, entries: list[tuple[Key, int, bytes]], lsn_start: int, lsn_end: int
) -> str:
    async def job() -> str:
        w = DeltaLayerWriter(ctx, d, TENANT, TIMELINE, entries[0][0], lsn_start, lsn_end)
        for k, lsn, v in entries:
            await w.put_value(k, lsn, v)
        return (await w.finish(Key(entries[-1][0]).next())).path

    return await ctx.run_job(job)


async def write_image(
    ctx: IoContext, d: str, entries: list[tuple[Key, bytes]], lsn: int, compression: str
) -> str:
    async def job() -> str:
        w = ImageLayerWriter(
            ctx, d, TENANT, TIMELINE, Key.MIN, lsn, image_compression=compression
        )
        for k, v in entries:
            await w.put_image(k, v)
        return (await w.finish(Key.MAX)).path

    return await ctx.run_job(job)


# -- round trips ---------------------------------------------------------------------------


@settings(max_examples=15)
@given(entries=delta_entries_st)
async def test_delta_layer_round_trip(io_ctx: IoContext, entries: dict[tuple[Key, int], object]) -> None:
    rows = sorted((k, lsn, encode_value(v)) for (k, lsn), v in entries.items())  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as d:
        path = await write_delta(io_ctx, d, rows, 5, 5001)
        name, summary, size = await validate_layer_file(io_ctx, path, tenant_id=TENANT)
        assert size == os.path.getsize(path) and size % 8192 == 0
        async with await DeltaLayer.open(io_ctx, path) as layer:
            assert await layer.load_all() == rows
            # Reconstruct data for a few keys at a few LSNs against a model.
            by_key: dict[Key, list[tuple[int, bytes]]] = {}
            for k, lsn, raw in rows:
                by_key.setdefault(k, []).append((lsn, raw))
            for k, versions in list(by_key.items())[:20]:
                for upto in {versions[0][0], versions[-1][0], 3000, 5000}:
                    want = []
                    for lsn, raw in reversed(versions):
                        if lsn > upto:
                            continue
                        want.append((lsn, raw))
                        v = entries[(Key(k), lsn)]
                        if v.will_init:  # type: ignore[attr-defined]
                            break
                    got = await layer.get_values_reconstruct_data(k, (0, upto + 1))
                    assert got == want
            missing = Key.from_int(977 * 2**20 + 1)
            assert await layer.get_values_reconstruct_data(missing, (0, 10**6)) == []


@settings(max_examples=15)
@given(entries=image_entries_st, compression=st.sampled_from(["disabled", "zstd"]))
async def test_image_layer_round_trip(
    io_ctx: IoContext, entries: dict[Key, bytes], compression: str
) -> None:
    rows = sorted(entries.items())
    with tempfile.TemporaryDirectory() as d:
        path = await write_image(io_ctx, d, rows, 77, compression)
        await validate_layer_file(io_ctx, path)
        async with await ImageLayer.open(io_ctx, path) as layer:
            assert await layer.load_all() == rows
            for k, v in rows[:30]:
                assert await layer.get(k) == v
            probe = Key(bytes(17) + b"\x01")
            if probe not in entries:
                assert await layer.get(probe) is None


async def test_zstd_images_are_compressed_and_readable(io_ctx: IoContext, tmp_path: Path) -> None:
    rows = [(Key.from_int(i), bytes([i]) * 8192) for i in range(50)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = await write_image(io_ctx, str(tmp_path / "a"), rows, 5, "disabled")
    packed = await write_image(io_ctx, str(tmp_path / "b"), rows, 5, "zstd")
    assert os.path.getsize(packed) < os.path.getsize(plain) // 4
    assert Path(packed).read_bytes()[8192] >> 4 == 0x9  # the first blob has the zstd bits
    async with await ImageLayer.open(io_ctx, packed) as layer:
        assert await layer.load_all() == rows


async def test_large_multi_page_values(io_ctx: IoContext, tmp_path: Path) -> None:
    """Values bigger than a page and 4-byte headers straddling page boundaries."""
    rows = []
    for i in range(300):
        # Sizes chosen so blob starts drift across every offset within a page.
        rows.append((Key.from_int(i), 10, encode_value(Image(os.urandom(8190 + i * 37)))))
    path = await write_delta(io_ctx, str(tmp_path), rows, 10, 11)
    async with await DeltaLayer.open(io_ctx, path) as layer:
        assert await layer.load_all() == rows
        assert (await layer.get_values_reconstruct_data(rows[123][0], (0, 11)))[0][1] == rows[123][2]


async def test_put_values_batch_equals_put_value(io_ctx: IoContext, tmp_path: Path) -> None:
    rows = [(Key.from_int(i // 3), 10 + i % 3, encode_value(Image(bytes(i % 700)))) for i in range(9000)]
    one = await write_delta(io_ctx, str(tmp_path), rows, 10, 13)
    data = Path(one).read_bytes()
    os.unlink(one)

    async def job() -> str:
        w = DeltaLayerWriter(io_ctx, str(tmp_path), TENANT, TIMELINE, rows[0][0], 10, 13)
        await w.put_values(rows[:5000])
        await w.put_values(iter(rows[5000:]))
        return (await w.finish(rows[-1][0].next())).path

    assert Path(await io_ctx.run_job(job)).read_bytes() == data


# -- parity between engines --------------------------------------------------------------------


def _uring_or_skip() -> None:
    require_engine("trio-uring")  # skips only where the kernel refuses; fails in CI


async def test_engines_write_byte_identical_layers(tmp_path: Path) -> None:
    _uring_or_skip()
    rows = [
        (Key.from_int(i // 4 * 1000), 100 + i % 4, encode_value(TestRecord("v" * (i % 300), i % 4 == 0, i % 4 == 0)))
        for i in range(20_000)
    ]
    images = [(Key.from_int(i * 3), os.urandom(100) * (i % 90)) for i in range(2000)]
    blobs: dict[str, tuple[bytes, bytes, bytes]] = {}
    for kind in (STD_FS, TRIO_URING):
        engine = create_engine(kind)
        assert engine.kind == kind
        ctx = IoContext(engine, no_sync=True)
        d = tmp_path / kind
        d.mkdir()
        try:
            dp = await write_delta(ctx, str(d), rows, 100, 200)
            ip = await write_image(ctx, str(d), images, 300, "disabled")
            zp = await write_image(ctx, str(d), images, 301, "zstd")
        finally:
            await ctx.aclose()  # closes the engine too
        blobs[kind] = (Path(dp).read_bytes(), Path(ip).read_bytes(), Path(zp).read_bytes())
    assert blobs[STD_FS] == blobs[TRIO_URING]


# -- abandon: errors and cancellation leave nothing behind ---------------------------------


def _entries(n: int, size: int) -> list[tuple[Key, int, bytes]]:
    return [(Key.from_int(i), 1, encode_value(Image(b"z" * size))) for i in range(n)]


async def test_failed_write_leaves_nothing(io_ctx: IoContext, tmp_path: Path) -> None:
    failpoints.configure({"virtual-file-write": "return(28)"})  # ENOSPC, not fatal
    with pytest.raises(OSError) as e:
        await write_delta(io_ctx, str(tmp_path), _entries(200, 8000), 1, 2)
    assert e.value.errno == 28
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("point", ["layer-before-rename", "layer-after-rename"])
async def test_failure_around_rename_leaves_nothing(
    io_ctx: IoContext, tmp_path: Path, point: str
) -> None:
    failpoints.configure({point: "return(28)"})
    with pytest.raises(OSError):
        await write_delta(io_ctx, str(tmp_path), _entries(10, 100), 1, 2)
    with pytest.raises(OSError):
        await write_image(io_ctx, str(tmp_path), [(Key.from_int(1), b"x")], 1, "disabled")
    assert list(tmp_path.iterdir()) == []


async def test_error_in_caller_abandons(io_ctx: IoContext, tmp_path: Path) -> None:
    async def job() -> None:
        async with DeltaLayerWriter(io_ctx, str(tmp_path), TENANT, TIMELINE, Key.MIN, 1, 2) as w:
            for k, lsn, v in _entries(100, 5000):
                await w.put_value(k, lsn, v)
            assert any(p.name.endswith(".___temp") for p in tmp_path.iterdir())
            raise RuntimeError("caller gave up")

    with pytest.raises(RuntimeError):
        await io_ctx.run_job(job)
    assert list(tmp_path.iterdir()) == []


async def test_out_of_order_put_abandons(io_ctx: IoContext, tmp_path: Path) -> None:
    rows = _entries(5, 10)
    with pytest.raises(ValueError):
        await write_delta(io_ctx, str(tmp_path), [rows[1], rows[0]], 1, 2)

    async def below_key_start() -> None:
        w = DeltaLayerWriter(io_ctx, str(tmp_path), TENANT, TIMELINE, Key.from_int(5), 1, 2)
        await w.put_value(Key.from_int(4), 1, rows[0][2])

    with pytest.raises(ValueError):
        await io_ctx.run_job(below_key_start)
    with pytest.raises(ValueError):
        await write_delta(io_ctx, str(tmp_path), rows, 1, 1)  # lsn_end not above the lsns
    assert list(tmp_path.iterdir()) == []


async def test_cancelled_writer_leaves_nothing(io_ctx: IoContext, tmp_path: Path) -> None:
    # Slow every write down so that the cancellation lands in the middle of the job.
    failpoints.configure({"virtual-file-write": "sleep(20)"})
    with trio.move_on_after(0.3) as scope:
        await write_delta(io_ctx, str(tmp_path), _entries(2000, 8000), 1, 2)
    assert scope.cancelled_caught
    assert failpoints.hits("virtual-file-write") >= 2
    assert list(tmp_path.iterdir()) == []


async def test_temp_name_and_no_overwrite(io_ctx: IoContext, tmp_path: Path) -> None:
    rows = _entries(3, 10)
    first = await write_delta(io_ctx, str(tmp_path), rows, 1, 2)
    before = Path(first).read_bytes()
    # The same layer again: the rename must not replace the existing file.
    with pytest.raises(FileExistsError):
        await write_delta(io_ctx, str(tmp_path), _entries(3, 20), 1, 2)
    assert Path(first).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [Path(first).name]
    w = DeltaLayerWriter(io_ctx, str(tmp_path), TENANT, TIMELINE, Key.MIN, 1)
    name = Path(w.temp_path).name
    assert name.startswith(f"{Key.MIN}-XXX__{1:016X}-XXX.") and name.endswith(".___temp")
    n = name.split(".")[1]
    assert n == f"{int(n, 16):x}"


# -- crashes (subprocess) ----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, trio
    from pageserver.io import IoContext, create_engine
    from pageserver.layers.delta_layer import DeltaLayerWriter
    from pageserver.layers.key import Key, TenantId, TimelineId
    from pageserver.layers.value import Image, encode_value

    async def main(d, engine, n):
        ctx = IoContext(create_engine(engine), no_sync=False)
        async def job():
            w = DeltaLayerWriter(ctx, d, TenantId(bytes(16)), TimelineId(bytes(16)), Key.MIN, 1, 2)
            for i in range(n):
                await w.put_value(Key.from_int(i), 1, encode_value(Image(bytes([i % 251]) * 3000)))
            print("finishing", flush=True)
            await w.finish(Key.MAX)
        await ctx.run_job(job)
        print("done", flush=True)

    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


def _run_child(d: Path, engine: str, n: int, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(d), engine, str(n)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _assert_no_or_valid_layer(d: Path, n: int) -> list[str]:
    ctx = IoContext(create_engine(STD_FS), no_sync=True)
    layers = [p for p in d.iterdir() if not p.name.endswith(".___temp")]
    assert len(layers) <= 1
    for p in layers:
        name, summary, _ = await validate_layer_file(ctx, str(p))
        assert str(name) == p.name
        async with await DeltaLayer.open(ctx, str(p)) as layer:
            rows = await layer.load_all()
        assert len(rows) == n
        assert rows[-1] == (Key.from_int(n - 1), Lsn(1), encode_value(Image(bytes([(n - 1) % 251]) * 3000)))
    await ctx.aclose()
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("engine", [STD_FS, TRIO_URING])
@pytest.mark.parametrize("point", ["layer-before-rename", "layer-after-rename"])
async def test_exit_at_rename_failpoints(tmp_path: Path, engine: str, point: str) -> None:
    if engine == TRIO_URING:
        _uring_or_skip()
    n = 500
    proc = _run_child(tmp_path, engine, n, {"PAGESERVER_FAILPOINTS": f"{point}=exit"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err.decode()
    assert b"finishing" in out and b"done" not in out
    names = await _assert_no_or_valid_layer(tmp_path, n)
    if point == "layer-before-rename":
        # Only the complete temp file (deleted at startup) and no layer.
        assert len(names) == 1 and names[0].endswith(".___temp")
    else:
        assert len(names) == 1 and parse_layer_name(names[0]).kind == "delta"


async def test_sigkill_mid_write_leaves_no_or_valid_layer(tmp_path: Path) -> None:
    n = 3000
    for delay in (0.3, 0.6):
        d = tmp_path / f"d{delay}"
        d.mkdir()
        proc = _run_child(d, STD_FS, n, {})
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        await _assert_no_or_valid_layer(d, n)


async def test_validation_rejects_damaged_files(io_ctx: IoContext, tmp_path: Path) -> None:
    path = Path(await write_delta(io_ctx, str(tmp_path), _entries(10, 100), 1, 2))
    good = path.read_bytes()
    cases = {
        "truncated": good[:-1],
        "bad magic": b"\x00\x00" + good[2:],
        "bad version": good[:2] + b"\x00\x02" + good[4:],
        "index outside": good[:88] + (99).to_bytes(4, "big") + good[92:],
    }
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(LayerFileError) as e:
            await validate_layer_file(io_ctx, str(path))
        assert str(path) in str(e.value), what
    # A summary whose ranges differ from the name.
    path.write_bytes(good)
    other = tmp_path / (
        f"{Key.MIN}-{Key.MAX}__{1:016X}-{3:016X}"
    )
    path.rename(other)
    with pytest.raises(LayerFileError, match="differs from the file name"):
        await validate_layer_file(io_ctx, str(other))
