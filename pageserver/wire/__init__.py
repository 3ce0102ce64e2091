"""The wire protocol of SPEC section 5, sans-IO: bytes in, events out (h11's shape).

Nothing here opens a socket or a file; the trio server (:mod:`pageserver.server`) and the
client (:mod:`pageserver.client`) own the I/O and feed bytes through these objects.
"""

from pageserver.wire._protocol import *  # noqa: F403
from pageserver.wire._protocol import __all__ as __all__
