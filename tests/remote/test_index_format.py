"""index_part.json (SPEC section 10, issue 13 (e)): what this project writes has the field
names and types of Neon's ``IndexPart`` version 15, and Neon's own form parses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio

from pageserver.config import RemoteStorageConfig
from pageserver.remote.index import IndexDecodeError, IndexPart, LayerMeta, index_generation
from tests.helpers.tenant import TENANT, TIMELINE, image, key, manager
from tests.remote.test_attach import rconfig, wait_remote

# An index in the shape Neon's pageserver writes at version 15 (a delta and an image layer,
# generations, and the optional fields later versions added, which a reader ignores).
NEON_V15_EXAMPLE = r"""{
  "version": 15,
  "layer_metadata": {
    "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF__00000000016B5A50-00000000016B5B01": {"file_size": 24576, "generation": 3},
    "000000067F00004000000040010000000000-000000067F00004000000040010000002000__00000000016B5A50": {"file_size": 16384, "generation": 2}
  },
  "disk_consistent_lsn": "0/16B5B00",
  "metadata_bytes": {
    "disk_consistent_lsn": "0/16B5B00",
    "prev_record_lsn": null,
    "ancestor_timeline": null,
    "ancestor_lsn": "0/0",
    "latest_gc_cutoff_lsn": "0/16B5A50",
    "initdb_lsn": "0/16B5A50",
    "pg_version": 16
  },
  "gc_compaction": {"last_completed_lsn": "0/16B5A50"},
  "rel_size_migration": "legacy",
  "marked_invisible_at": "2025-01-02T03:04:05.678",
  "rel_size_migrated_at": "0/16B5A50"
}"""

LSN_TEXT = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")


def shape(v: object) -> object:
    """The JSON type of every field, recursively (maps of layers by one example entry)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, str) and LSN_TEXT.match(v):
        return "lsn"
    return type(v).__name__


def test_neon_example_parses() -> None:
    part = IndexPart.decode(NEON_V15_EXAMPLE.encode())
    assert part.disk_consistent_lsn == 0x16B5B00
    assert part.initdb_lsn == part.latest_gc_cutoff_lsn == 0x16B5A50
    assert part.layers == {
        "000000000000000000000000000000000000-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF__00000000016B5A50-00000000016B5B01": LayerMeta(24576, 3),
        "000000067F00004000000040010000000000-000000067F00004000000040010000002000__00000000016B5A50": LayerMeta(16384, 2),
    }  # fmt: skip
    # Older indexes: "metadata" instead of "metadata_bytes", no generation (objects without
    # suffix).
    old = json.loads(NEON_V15_EXAMPLE)
    old["metadata"] = old.pop("metadata_bytes")
    for meta in old["layer_metadata"].values():
        del meta["generation"]
    part = IndexPart.decode(json.dumps(old).encode())
    assert {m.generation for m in part.layers.values()} == {None}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("layer_metadata"),
        lambda d: d["metadata_bytes"].update(disk_consistent_lsn=5),
        lambda d: next(iter(d["layer_metadata"].values())).update(file_size="1"),
        lambda d: d["layer_metadata"].update({"not-a-layer": {"file_size": 1}}),
    ],
)
def test_bad_indexes_are_refused(mutate: object) -> None:
    doc = json.loads(NEON_V15_EXAMPLE)
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(IndexDecodeError):
        IndexPart.decode(json.dumps(doc).encode())


def test_roundtrip_and_keys() -> None:
    part = IndexPart.decode(NEON_V15_EXAMPLE.encode())
    again = IndexPart.decode(part.encode())
    assert again == part
    assert index_generation("tenants/t/timelines/tl/index_part.json-0000000a") == 10
    assert index_generation("tenants/t/timelines/tl/index_part.json") == -1
    assert index_generation("tenants/t/timelines/tl/index_part.json-zz") is None


async def test_an_uploaded_index_has_neon_v15_field_names_and_types(
    tmp_path: Path,
) -> None:
    remote = RemoteStorageConfig(local_path=str(tmp_path / "remote"), timeout=5.0)
    async with manager("std-fs", tmp_path / "d", rconfig(remote)) as mgr:
        await mgr.create_tenant(TENANT)
        await mgr.create_timeline(TENANT, TIMELINE, start_lsn=7)
        for lsn in range(8, 40):
            await mgr.put(TENANT, TIMELINE, [(key(i), lsn, image(b"v%d" % lsn)) for i in range(5)])
        dcl = await mgr.flush(TENANT, TIMELINE)
        await mgr.compact(TENANT, TIMELINE)
        with trio.fail_after(20):
            await wait_remote(mgr, dcl)
    path = tmp_path / "remote" / "tenants" / TENANT / "timelines" / TIMELINE / "index_part.json-00000001"
    ours = json.loads(path.read_bytes())
    neon = json.loads(NEON_V15_EXAMPLE)
    # Every field we write is one of Neon's, with the same JSON type (LSNs as "X/X").
    assert set(ours) == {"version", "layer_metadata", "disk_consistent_lsn", "metadata_bytes"}
    for field in ours:
        if field != "layer_metadata":
            assert shape(ours[field]) == shape(neon[field]), field
    assert ours["version"] == 15
    assert ours["disk_consistent_lsn"] == f"0/{dcl:X}"
    assert ours["metadata_bytes"]["initdb_lsn"] == "0/7"
    neon_entry = shape(next(iter(neon["layer_metadata"].values())))
    assert ours["layer_metadata"]
    for name, meta in ours["layer_metadata"].items():
        assert shape(meta) == neon_entry, name
        assert re.fullmatch(r"[0-9A-F]{36}-[0-9A-F]{36}__[0-9A-F]{16}(-[0-9A-F]{16})?", name)
        obj = path.parent / f"{name}-{meta['generation']:08x}"
        assert obj.stat().st_size == meta["file_size"]
