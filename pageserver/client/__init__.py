"""The client side: :class:`Client` (async, pipelined), the client commands and ``feed``."""

from pageserver.client._client import *  # noqa: F403
from pageserver.client._client import __all__ as __all__
