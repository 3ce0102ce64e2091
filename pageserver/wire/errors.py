"""What the wire says when input is rejected: :class:`ProtocolError`, and :class:`ErrorCode`.

:class:`ErrorCode` is re-exported, not defined, here: its one home is :mod:`pageserver.errors`
(the tenant manager raises the same codes the wire returns). This module is the leaf of
:mod:`pageserver.wire`; every other module of the package may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from pageserver.errors import ErrorCode

__all__ = ["ErrorCode", "Id", "ProtocolError"]

Id: TypeAlias = Any
"""A request id: any msgpack scalar (nil, bool, int, float, str, bin, ext), echoed as is."""


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Why a frame or request is rejected: the ``error`` of the reply, and the id to echo.

    Returned (never raised) by the decoder and the parsers, so that hostile input can only
    ever produce values, not exceptions.
    """

    code: ErrorCode
    message: str
    id: Id = None

    @property
    def close_after(self) -> bool:
        """Whether SPEC section 5 says the connection closes after this error's reply."""
        return self.code is ErrorCode.FRAME_TOO_LARGE
