"""Layer file names (SPEC section 4; Neon's ``layer_name.rs``).

::

    delta: {key_start}-{key_end}__{lsn_start:016X}-{lsn_end:016X}[gen]
    image: {key_start}-{key_end}__{lsn:016X}[gen]
    gen:   -v1-{generation:08x}  |  -{generation:08x}   (other versions / cases accepted)

The parser accepts only the canonical form Neon prints (uppercase hex of fixed width),
which makes ``str(parse_layer_name(s)) == s`` an invariant rather than a hope: a name
that does not print back unchanged is not a layer name. The generation suffix is kept
as written, so both suffix styles round-trip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pageserver.layers.key import KEY_SIZE, Key, Lsn

# The file-name fields as Neon prints them (``str(Key)`` and ``Lsn.file_hex``).
_KEY = rf"[0-9A-F]{{{2 * KEY_SIZE}}}"
_LSN = r"[0-9A-F]{16}"
# Neon prints ``-v1-{:08x}`` (and older ``-{:08x}``); its parser takes other versions and
# either case too, so we do (the suffix is kept as written, so it still round-trips).
_GEN = r"(?P<gen>-v[0-9]+-[0-9a-fA-F]{8}|-[0-9a-fA-F]{8})?"
_DELTA_RE = re.compile(
    rf"(?P<ks>{_KEY})-(?P<ke>{_KEY})__(?P<ls>{_LSN})-(?P<le>{_LSN}){_GEN}"
)
_IMAGE_RE = re.compile(rf"(?P<ks>{_KEY})-(?P<ke>{_KEY})__(?P<lsn>{_LSN}){_GEN}")

#: What a writer's temp name shows for a range end it does not know yet.
UNKNOWN_END = "XXX"


def layer_name_text(
    key_start: Key, key_end: Key | None, lsns: Sequence[Lsn | None], gen_suffix: str = ""
) -> str:
    """The one spelling of a layer name, ``{key_start}-{key_end}__{lsn}[-{lsn}]{gen}``.

    ``lsns`` is ``(lsn_start, lsn_end)`` for a delta layer, ``(lsn,)`` for an image layer.
    A writer's temp-name stem is spelt the same way, with :data:`UNKNOWN_END` for an end
    that is not known yet (``None``).
    """
    ke = UNKNOWN_END if key_end is None else str(key_end)
    lsn_text = "-".join(UNKNOWN_END if lsn is None else lsn.file_hex() for lsn in lsns)
    return f"{key_start}-{ke}__{lsn_text}{gen_suffix}"


class LayerNameError(ValueError):
    """Not a layer file name."""


def _gen_value(suffix: str) -> int | None:
    if not suffix:
        return None
    return int(suffix.rsplit("-", 1)[1], 16)


@dataclass(frozen=True, slots=True, order=True)
class DeltaLayerName:
    key_start: Key
    key_end: Key
    lsn_start: Lsn
    lsn_end: Lsn  # exclusive
    gen_suffix: str = ""

    def __post_init__(self) -> None:
        if self.key_start >= self.key_end:
            raise LayerNameError("delta layer key start must be below key end")
        if self.lsn_start >= self.lsn_end:
            raise LayerNameError("delta layer LSN start must be below LSN end")

    @property
    def kind(self) -> str:
        return "delta"

    @property
    def is_delta(self) -> bool:
        return True

    @property
    def generation(self) -> int | None:
        return _gen_value(self.gen_suffix)

    @property
    def lsn_range(self) -> tuple[Lsn, Lsn]:
        return self.lsn_start, self.lsn_end

    def is_in_future(self, disk_consistent_lsn: int) -> bool:
        """Left by a crash between a rename and the metadata update (SPEC section 3)."""
        return self.lsn_end > disk_consistent_lsn + 1

    def __str__(self) -> str:
        return layer_name_text(
            self.key_start, self.key_end, (self.lsn_start, self.lsn_end), self.gen_suffix
        )


@dataclass(frozen=True, slots=True, order=True)
class ImageLayerName:
    key_start: Key
    key_end: Key
    lsn: Lsn
    gen_suffix: str = ""

    @property
    def kind(self) -> str:
        return "image"

    @property
    def is_delta(self) -> bool:
        return False

    @property
    def generation(self) -> int | None:
        return _gen_value(self.gen_suffix)

    @property
    def lsn_range(self) -> tuple[Lsn, Lsn]:
        """``lsn..lsn+1``, as Neon's ``lsn_as_range``."""
        return self.lsn, Lsn(self.lsn + 1)

    def is_in_future(self, disk_consistent_lsn: int) -> bool:
        return self.lsn > disk_consistent_lsn

    def __str__(self) -> str:
        return layer_name_text(self.key_start, self.key_end, (self.lsn,), self.gen_suffix)


LayerName = DeltaLayerName | ImageLayerName


def parse_layer_name(name: str) -> LayerName:
    """Parse a layer file name; raise :class:`LayerNameError` if it is not one."""
    m = _DELTA_RE.fullmatch(name)
    if m is not None:
        return DeltaLayerName(
            Key.from_hex(m["ks"]),
            Key.from_hex(m["ke"]),
            Lsn(int(m["ls"], 16)),
            Lsn(int(m["le"], 16)),
            m["gen"] or "",
        )
    m = _IMAGE_RE.fullmatch(name)
    if m is not None:
        return ImageLayerName(
            Key.from_hex(m["ks"]), Key.from_hex(m["ke"]), Lsn(int(m["lsn"], 16)), m["gen"] or ""
        )
    raise LayerNameError(f"not a layer file name: {name!r}")


def try_parse_layer_name(name: str) -> LayerName | None:
    try:
        return parse_layer_name(name)
    except LayerNameError:
        return None


def delta_name(key_start: Key, key_end: Key, lsn_start: int, lsn_end: int) -> DeltaLayerName:
    return DeltaLayerName(key_start, key_end, Lsn(lsn_start), Lsn(lsn_end))


def image_name(key_start: Key, key_end: Key, lsn: int) -> ImageLayerName:
    return ImageLayerName(key_start, key_end, Lsn(lsn))
