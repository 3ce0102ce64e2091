"""Keys, LSNs, ids, Values (with the Test redo), blob headers and layer names."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pageserver.errors import InvalidId
from pageserver.layers.blob_io import (
    BYTE_UNCOMPRESSED,
    BYTE_ZSTD,
    COMPRESSION_DISABLED,
    COMPRESSION_ZSTD,
    MAX_BLOB_LEN,
    PAGE_SZ,
    BlobError,
    BlobWriter,
    decode_blob_header,
    decompress,
    encode_blob_header,
)
from pageserver.layers.key import Key, Lsn, TenantId, TimelineId
from pageserver.layers.layer_name import (
    DeltaLayerName,
    ImageLayerName,
    LayerNameError,
    layer_name_text,
    parse_layer_name,
)
from pageserver.layers.value import (
    BadValue,
    Image,
    PostgresRecord,
    RedoError,
    RedoUnsupported,
    TestRecord,
    apply_test_redo,
    decode_value,
    encode_value,
    materialize,
    value_will_init,
)

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
LAYERNAMES = TESTDATA / "neon-large-layer-map-layernames.txt"

u32 = st.integers(0, 2**32 - 1)
u8 = st.integers(0, 255)
keys = st.binary(min_size=18, max_size=18).map(Key)
texts = st.text(max_size=40)
values = st.one_of(
    st.binary(max_size=300).map(Image),
    st.builds(PostgresRecord, st.booleans(), st.binary(max_size=300)),
    st.builds(TestRecord, texts, st.booleans(), st.booleans(), st.none() | texts),
)


# -- keys and ids --------------------------------------------------------------------------


@given(u8, u32, u32, u32, u8, u32)
def test_key_fields_and_hex_round_trip(f1: int, f2: int, f3: int, f4: int, f5: int, f6: int) -> None:
    k = Key.from_fields(f1, f2, f3, f4, f5, f6)
    assert k.fields == (f1, f2, f3, f4, f5, f6)
    text = str(k)
    assert text == f"{f1:02X}{f2:08X}{f3:08X}{f4:08X}{f5:02X}{f6:08X}"
    assert Key.from_hex(text) == k and Key.from_hex(text.lower()) == k


@given(keys, keys)
def test_key_order_is_byte_order(a: Key, b: Key) -> None:
    assert (a < b) == (bytes(a) < bytes(b))
    assert (a < b) == (a.to_int() < b.to_int())


def test_key_min_max_and_validation() -> None:
    assert str(Key.MIN) == "0" * 36 and str(Key.MAX) == "F" * 36
    assert Key.MIN.next() == Key.from_int(1)
    for bad in ["", "0" * 35, "0" * 37, "G" * 36, "+" + "0" * 35]:
        with pytest.raises(ValueError):
            Key.from_hex(bad)
    with pytest.raises(ValueError):
        Key(b"short")


@given(st.integers(0, 2**64 - 1))
def test_lsn_text_forms(v: int) -> None:
    lsn = Lsn(v)
    assert str(lsn) == f"{v >> 32:X}/{v & 0xFFFFFFFF:X}"
    assert Lsn.parse(str(lsn)) == v
    assert Lsn.parse(lsn.file_hex()) == v and len(lsn.file_hex()) == 16
    # What users write (client commands, feed files): decimal, 0x hex, HI/LO.
    assert Lsn.from_text(str(v)) == Lsn.from_text(hex(v)) == Lsn.from_text(str(lsn)) == v


def test_lsn_examples_and_errors() -> None:
    assert str(Lsn(0x16B5A50)) == "0/16B5A50"
    assert Lsn.parse("1/0") == 1 << 32
    for bad in ["", "/", "x/1", "1/2/3", "123456789/0"]:
        with pytest.raises(ValueError):
            Lsn.parse(bad)
    with pytest.raises(ValueError):
        Lsn(-1)
    with pytest.raises(ValueError):
        Lsn(2**64)
    for bad in ["", "-1", "0x", "1.5", "0/100000000", str(2**64), " 1 2", "0x-1"]:
        with pytest.raises(ValueError):
            Lsn.from_text(bad)


@given(st.binary(min_size=16, max_size=16))
def test_ids_round_trip_lowercase(raw: bytes) -> None:
    for cls in (TenantId, TimelineId):
        i = cls(raw)
        assert str(i) == raw.hex()
        assert cls.parse(raw.hex().upper()) == i


@pytest.mark.parametrize(
    "bad", ["", "..", "../" + "0" * 29, "0" * 31, "0" * 33, "g" * 32, "0" * 30 + "/0", 5, None]
)
def test_invalid_ids_rejected(bad: object) -> None:
    with pytest.raises(InvalidId) as e:
        TenantId.parse(bad)
    assert e.value.code == "invalid_id"


# -- values --------------------------------------------------------------------------------


@given(values)
def test_value_round_trip_and_will_init(v: Image | PostgresRecord | TestRecord) -> None:
    raw = encode_value(v)
    assert decode_value(raw) == v
    assert value_will_init(raw) == v.will_init


def test_value_encodings_by_hand() -> None:
    assert encode_value(Image(b"ab")) == bytes.fromhex("00000000" "0000000000000002") + b"ab"
    assert encode_value(PostgresRecord(True, b"r")) == bytes.fromhex(
        "00000001" "00000000" "01" "0000000000000001"
    ) + b"r"
    assert encode_value(TestRecord("hi", True, True, None)) == bytes.fromhex(
        "00000001" "00000008" "0000000000000002"
    ) + b"hi" + b"\x01\x01\x00"
    assert encode_value(TestRecord("", False, False, "x")) == bytes.fromhex(
        "00000001" "00000008" "0000000000000000" "00" "00" "01" "0000000000000001"
    ) + b"x"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes.fromhex("00000002"),  # unknown value tag
        bytes.fromhex("00000001" "00000003"),  # unsupported WAL record tag
        bytes.fromhex("00000000" "0000000000000005") + b"abc",  # truncated
        bytes.fromhex("00000000" "0000000000000001") + b"ab",  # trailing byte
        bytes.fromhex("00000001" "00000000" "02" "0000000000000000"),  # bool 2
        bytes.fromhex("00000001" "00000008" "0000000000000000" "00" "00" "02"),  # option 2
        bytes.fromhex("00000001" "00000008" "0000000000000001") + b"\xff\x00\x00\x00",  # utf-8
        bytes.fromhex("00000000" "ffffffffffffffff"),  # huge length
    ],
)
def test_bad_values_rejected(raw: bytes) -> None:
    with pytest.raises(BadValue):
        decode_value(raw)


def test_test_redo() -> None:
    assert apply_test_redo(b"ab", TestRecord("c")) == b"abc"
    assert apply_test_redo(b"ab", TestRecord("c", clear=True)) == b"c"
    assert apply_test_redo(b"ab", TestRecord("c", only_if="ab")) == b"abc"
    # only_if is checked after clear, as in Neon's apply_neon.rs.
    assert apply_test_redo(b"ab", TestRecord("c", clear=True, only_if="")) == b"c"
    with pytest.raises(RedoError):
        apply_test_redo(b"ab", TestRecord("c", only_if="x"))
    assert materialize(None, [TestRecord("a", True, True), TestRecord("b")]) == b"ab"
    assert materialize(b"base", [TestRecord("1"), Image(b"img"), TestRecord("2")]) == b"img2"
    with pytest.raises(RedoError):
        materialize(None, [TestRecord("b")])
    with pytest.raises(RedoUnsupported):
        materialize(b"x", [PostgresRecord(False, b"r")])
    # A Postgres record comes first among the redo errors (SPEC section 5's order), even
    # when an older record could not be applied either.
    with pytest.raises(RedoUnsupported):
        materialize(None, [TestRecord("orphan"), PostgresRecord(False, b"r")])
    with pytest.raises(RedoUnsupported):
        materialize(b"ab", [TestRecord("c", only_if="x"), PostgresRecord(False, b"r")])


# -- blob headers --------------------------------------------------------------------------


@given(st.one_of(st.integers(0, 300), st.integers(MAX_BLOB_LEN - 300, MAX_BLOB_LEN)))
def test_blob_header_round_trip(n: int) -> None:
    h = encode_blob_header(n)
    assert len(h) == (1 if n < 128 else 4)
    assert decode_blob_header(h + b"rest") == (len(h), n, BYTE_UNCOMPRESSED)
    z = encode_blob_header(n, BYTE_ZSTD)
    assert len(z) == 4 and z[0] >> 4 == 0x9
    assert decode_blob_header(z) == (4, n, BYTE_ZSTD)


def test_blob_header_boundaries() -> None:
    assert encode_blob_header(127) == b"\x7f"
    assert encode_blob_header(128) == bytes.fromhex("80000080")
    assert encode_blob_header(MAX_BLOB_LEN) == bytes.fromhex("8fffffff")
    assert encode_blob_header(200, BYTE_ZSTD) == bytes.fromhex("900000c8")
    with pytest.raises(BlobError):
        encode_blob_header(MAX_BLOB_LEN + 1)
    with pytest.raises(BlobError):
        decode_blob_header(bytes.fromhex("a0000001"))  # unknown compression bits
    with pytest.raises(BlobError):
        decode_blob_header(b"\x80\x00")  # truncated 4-byte header


def test_blob_header_decodes_at_an_offset() -> None:
    buf = b"junk" + encode_blob_header(5) + b"hello" + encode_blob_header(300)
    assert decode_blob_header(buf, 4) == (1, 5, BYTE_UNCOMPRESSED)
    assert decode_blob_header(buf, 10) == (4, 300, BYTE_UNCOMPRESSED)
    with pytest.raises(BlobError):
        decode_blob_header(buf, len(buf))


class _ListWriter:
    """The two things a BlobWriter uses of a BufferedWriter: ``offset`` and ``write``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.offset = PAGE_SZ

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        start = self.offset
        self.data += data
        self.offset += len(data)
        return start


BLOBS = [b"", b"a", b"x" * 127, b"y" * 128, bytes(range(256)) * 40, b"z" * 5000]


@pytest.mark.parametrize("compression", [COMPRESSION_DISABLED, COMPRESSION_ZSTD])
async def test_blob_writer_staged_and_direct_agree_with_the_codec(compression: str) -> None:
    staged, direct = _ListWriter(), _ListWriter()
    sw = BlobWriter(staged, compression)  # type: ignore[arg-type]
    dw = BlobWriter(direct, compression)  # type: ignore[arg-type]
    offsets = [sw.stage_blob(b) for b in BLOBS]
    assert staged.data == b""  # staging does no I/O
    await sw.flush()
    assert [await dw.write_blob(b) for b in BLOBS] == offsets
    assert staged.data == direct.data and sw.offset == dw.offset == staged.offset
    # Every blob is its codec header and its stored bytes, back to back.
    pos = 0
    for off, blob in zip(offsets, BLOBS, strict=True):
        assert off == PAGE_SZ + pos
        hdr_len, data_len, bits = decode_blob_header(staged.data, pos)
        stored = bytes(staged.data[pos + hdr_len : pos + hdr_len + data_len])
        assert staged.data[pos : pos + hdr_len] == encode_blob_header(data_len, bits)
        assert (decompress(stored) if bits == BYTE_ZSTD else stored) == blob
        if compression == COMPRESSION_DISABLED or len(blob) < 128:
            assert bits == BYTE_UNCOMPRESSED
        pos += hdr_len + data_len
    assert pos == len(staged.data)


def test_blob_writer_refuses_unknown_compression() -> None:
    with pytest.raises(ValueError):
        BlobWriter(_ListWriter(), "lz4")  # type: ignore[arg-type]


# -- layer names ---------------------------------------------------------------------------


def test_temp_stems_are_spelt_like_layer_names() -> None:
    ks, ke = Key.from_int(1), Key.from_int(2)
    assert layer_name_text(ks, None, (Lsn(16), None)) == f"{ks}-XXX__{16:016X}-XXX"
    assert layer_name_text(ks, ke, (Lsn(16),)) == str(ImageLayerName(ks, ke, Lsn(16)))
    d = DeltaLayerName(ks, ke, Lsn(1), Lsn(2), "-v1-00000001")
    assert layer_name_text(ks, ke, (Lsn(1), Lsn(2)), "-v1-00000001") == str(d)


def test_every_neon_layer_name_round_trips() -> None:
    if not LAYERNAMES.is_file():
        pytest.skip(f"{LAYERNAMES} is not present")
    lines = LAYERNAMES.read_text().splitlines()
    assert len(lines) > 1000
    kinds = set()
    for line in lines:
        name = parse_layer_name(line)
        assert str(name) == line
        kinds.add(name.kind)
    assert kinds == {"delta", "image"}


lsns = st.integers(0, 2**64 - 1)
gens = st.sampled_from(["", "-v1-00000001", "-0000abcd", "-v1-ffffffff"])


@given(keys, keys, lsns, lsns, gens)
def test_generated_names_round_trip(a: Key, b: Key, l1: int, l2: int, gen: str) -> None:
    lo, hi = sorted((a, b))
    img = ImageLayerName(lo, hi, Lsn(l1), gen)
    assert parse_layer_name(str(img)) == img
    if lo < hi and l1 != l2:
        d = DeltaLayerName(lo, hi, Lsn(min(l1, l2)), Lsn(max(l1, l2)), gen)
        parsed = parse_layer_name(str(d))
        assert parsed == d and str(parsed) == str(d)
        assert parsed.generation == (int(gen.rsplit("-", 1)[1], 16) if gen else None)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "foo",
        "0" * 36 + "-" + "0" * 36 + "__" + "0" * 16 + "-" + "0" * 16,  # empty key range
        "0" * 36 + "-" + "1" * 36 + "__" + "2" * 16 + "-" + "1" * 16,  # empty LSN range
        "0" * 36 + "-" + "1" * 36 + "__" + "1" * 15,  # short LSN
        "0" * 36 + "-" + "1" * 36 + "__" + "1" * 16 + "-123",  # junk suffix
        "0" * 36 + "-" + "1" * 36 + "__" + "1" * 16 + ".1.___temp",
        "0" * 36 + "-XXX__" + "1" * 16 + "-" + "2" * 16 + ".1.___temp",
        "ephemeral-1",
    ],
)
def test_bad_names_rejected(bad: str) -> None:
    with pytest.raises(LayerNameError):
        parse_layer_name(bad)


def test_future_layers() -> None:
    d = parse_layer_name("0" * 36 + "-" + "F" * 36 + "__" + f"{10:016X}-{21:016X}")
    assert not d.is_in_future(20) and d.is_in_future(19)
    i = parse_layer_name("0" * 36 + "-" + "F" * 36 + "__" + f"{20:016X}")
    assert not i.is_in_future(20) and i.is_in_future(19)
    assert struct.calcsize(">BIIIBI") == 18


def test_generation_suffixes_neon_accepts() -> None:
    from pageserver.layers.layer_name import parse_layer_name

    base = "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF__0000000000000001"
    for suffix, gen in (("-v1-0000000a", 10), ("-v2-0000000A", 10), ("-0000000B", 11), ("", None)):
        for name in (base + "-0000000000000002" + suffix, base + suffix):
            parsed = parse_layer_name(name)
            assert str(parsed) == name
            assert parsed.generation == gen
