"""Socket addresses as written in ``listen_addr``/``metrics_addr`` and ``--addr`` (SPEC
sections 2 and 3): TCP ``host:port`` (``[v6]:port``, ``:port``) or ``unix:/path``.

Pure parsing, no I/O. It lives at the top of the package, not in :mod:`pageserver.client`
or :mod:`pageserver.server`, because both parse the same text: the server binds
``listen_addr`` and ``metrics_addr`` with it, the client connects to ``--addr`` (or the
config's ``listen_addr``) with it, and the server must not depend on the client.
(:mod:`pageserver.config` only checks that ``listen_addr`` is a string; binding reports a
bad address.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_ADDR", "Address", "parse_address"]

#: Where a client connects when neither ``--addr`` nor a config's ``listen_addr`` says.
DEFAULT_ADDR = "127.0.0.1:6400"


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed ``listen_addr``: TCP ``host:port`` (``[v6]:port``) or ``unix:/path``."""

    host: str | None
    port: int
    unix_path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = self.host or ""
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``host:port``, ``[v6addr]:port``, ``:port`` (every interface) or ``unix:/path``.

    Raises ``ValueError`` with a message that quotes the address.
    """
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ValueError(f"invalid address {text!r}: empty unix socket path")
        if len(path.encode()) >= 108:
            raise ValueError(f"invalid address {text!r}: unix socket paths must be < 108 bytes")
        return Address(None, 0, path)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"invalid address {text!r}: expected [v6addr]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {text!r}: expected host:port or unix:/path")
    # ASCII digits only: int() also takes "+6400", " 6400" and other scripts' digits.
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"invalid address {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid address {text!r}: port out of range")
    return Address(host or None, port)
