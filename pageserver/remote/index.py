"""``index_part.json`` (Neon's ``IndexPart``, version 15) and the object layout of SPEC 10.

Object keys, below ``prefix_in_bucket``::

    tenants/<tenant_id>/generations/<generation:08x>                 a claim
    tenants/<tenant_id>/timelines/<timeline_id>/<layer name>-<generation:08x>
    tenants/<tenant_id>/timelines/<timeline_id>/index_part.json-<generation:08x>

The index this project writes::

    {"version": 15,
     "layer_metadata": {"<layer name>": {"file_size": N, "generation": G}, ...},
     "disk_consistent_lsn": "X/X",
     "metadata_bytes": {"disk_consistent_lsn": "X/X", "prev_record_lsn": null,
                        "ancestor_timeline": null, "ancestor_lsn": "0/0",
                        "latest_gc_cutoff_lsn": "X/X", "initdb_lsn": "X/X", "pg_version": 16}}

Layer names in ``layer_metadata`` are bare (no generation suffix): the generation is the
field beside the size, as in Neon. The decoder accepts what Neon's reader accepts for these
fields: ``metadata`` as an alias of ``metadata_bytes``, a missing ``generation`` (Neon's
"none", written by pageservers without generations: the object has no suffix), and any
further fields of later or earlier versions (ignored).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pageserver.layers.key import Lsn
from pageserver.layers.layer_name import LayerName, LayerNameError, parse_layer_name

INDEX_VERSION = 15
INDEX_FILE_NAME = "index_part.json"
#: ``pg_version`` of the metadata: this server stores no Postgres data; Neon's reader
#: needs a supported major version there.
PG_VERSION = 16


class IndexDecodeError(ValueError):
    """An index that does not decode (names the object)."""


@dataclass(frozen=True, slots=True)
class LayerMeta:
    file_size: int
    #: the generation that uploaded the object; None = an object without suffix
    generation: int | None


@dataclass(slots=True)
class IndexPart:
    disk_consistent_lsn: int
    initdb_lsn: int
    latest_gc_cutoff_lsn: int
    #: bare layer name -> size and generation
    layers: dict[str, LayerMeta] = field(default_factory=dict)

    def encode(self) -> bytes:
        dcl = str(Lsn(self.disk_consistent_lsn))
        doc: dict[str, Any] = {
            "version": INDEX_VERSION,
            "layer_metadata": {
                name: _layer_json(meta) for name, meta in sorted(self.layers.items())
            },
            "disk_consistent_lsn": dcl,
            "metadata_bytes": {
                "disk_consistent_lsn": dcl,
                "prev_record_lsn": None,
                "ancestor_timeline": None,
                "ancestor_lsn": "0/0",
                "latest_gc_cutoff_lsn": str(Lsn(self.latest_gc_cutoff_lsn)),
                "initdb_lsn": str(Lsn(self.initdb_lsn)),
                "pg_version": PG_VERSION,
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, what: str = "index_part.json") -> IndexPart:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            meta = doc.get("metadata_bytes", doc.get("metadata"))
            if not isinstance(meta, dict):
                raise ValueError("missing metadata_bytes")
            layers: dict[str, LayerMeta] = {}
            lm = doc["layer_metadata"]
            if not isinstance(lm, dict):
                raise ValueError("layer_metadata is not an object")
            for name, entry in lm.items():
                parsed = parse_layer_name(name)
                if parsed.generation is not None:
                    raise ValueError(f"layer name {name!r} carries a generation suffix")
                size = entry["file_size"]
                gen = entry.get("generation")
                if not _uint(size) or (gen is not None and not _uint(gen)):
                    raise ValueError(f"bad metadata of layer {name!r}")
                layers[name] = LayerMeta(size, gen)
            dcl = int(Lsn.parse(meta["disk_consistent_lsn"]))
            return cls(
                disk_consistent_lsn=dcl,
                initdb_lsn=int(Lsn.parse(meta.get("initdb_lsn", "0/0"))),
                latest_gc_cutoff_lsn=int(Lsn.parse(meta.get("latest_gc_cutoff_lsn", "0/0"))),
                layers=layers,
            )
        except (ValueError, KeyError, TypeError, AttributeError, LayerNameError) as e:
            raise IndexDecodeError(f"{what}: invalid index: {e}") from None


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _layer_json(meta: LayerMeta) -> dict[str, int]:
    out = {"file_size": meta.file_size}
    if meta.generation is not None:
        out["generation"] = meta.generation
    return out


# -- names and keys ----------------------------------------------------------------------------


def bare_name(name: LayerName) -> str:
    """The layer name without any generation suffix (the index's key)."""
    text = str(name)
    return text[: len(text) - len(name.gen_suffix)] if name.gen_suffix else text


def local_suffix(generation: int) -> str:
    """Neon's local form: ``<layer name>-v1-<generation:08x>``."""
    return f"-v1-{generation:08x}"


def gen_suffix(generation: int | None) -> str:
    return "" if generation is None else f"-{generation:08x}"


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/"


def generations_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/generations/"


def generation_key(tenant_id: str, generation: int) -> str:
    return f"{generations_prefix(tenant_id)}{generation:08x}"


def timelines_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/timelines/"


def timeline_prefix(tenant_id: str, timeline_id: str) -> str:
    return f"tenants/{tenant_id}/timelines/{timeline_id}/"


def layer_key(tenant_id: str, timeline_id: str, name: str, generation: int | None) -> str:
    return f"{timeline_prefix(tenant_id, timeline_id)}{name}{gen_suffix(generation)}"


def index_key(tenant_id: str, timeline_id: str, generation: int) -> str:
    return f"{timeline_prefix(tenant_id, timeline_id)}{INDEX_FILE_NAME}-{generation:08x}"


_INDEX_RE = re.compile(re.escape(INDEX_FILE_NAME) + r"(?:-([0-9a-f]{8}))?$")
_GEN_RE = re.compile(r"[0-9a-f]{8}$")


def index_generation(key: str) -> int | None:
    """The generation of an index object key (-1 for one without suffix), or None."""
    m = _INDEX_RE.search(key.rsplit("/", 1)[-1])
    if m is None or not key.rsplit("/", 1)[-1].startswith(INDEX_FILE_NAME):
        return None
    return int(m.group(1), 16) if m.group(1) else -1


def parse_generation_key(key: str) -> int | None:
    last = key.rsplit("/", 1)[-1]
    return int(last, 16) if _GEN_RE.fullmatch(last) else None
