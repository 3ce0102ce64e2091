"""The client side: :class:`Client` (async, pipelined), the client commands (:mod:`.cli`)
and ``feed``'s record streams and resend loop (:mod:`.feed`).

This package's public surface is the list below; ``Address``/``parse_address``/``DEFAULT_ADDR``
live in :mod:`pageserver.addresses` (the server parses the same addresses) and are re-exported
here for client users.
"""

from pageserver.addresses import DEFAULT_ADDR, Address, parse_address
from pageserver.client._client import Client, ConnectionLost, PutBatch, ServerError, next_reply

__all__ = [
    "DEFAULT_ADDR",
    "Address",
    "Client",
    "ConnectionLost",
    "PutBatch",
    "ServerError",
    "next_reply",
    "parse_address",
]
