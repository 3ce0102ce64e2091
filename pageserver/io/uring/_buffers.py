"""Turning Python buffers and paths into (address, keep-alive) pairs for SQEs.

The kernel gets a raw address; Python must neither free nor move that memory until the
CQE arrives. Each helper returns the address and an object whose lifetime guarantees
it; the driver stores that object in the in-flight table entry and drops it only when
the CQE has been dispatched.

* ``bytes`` are immutable and their storage is inline in the object, so keeping the
  object alive is enough; the address is ``id(obj)`` plus the fixed offset of the data
  in a ``PyBytesObject`` (measured at import against ``ctypes``, not assumed), which
  costs no allocation. CPython keeps a NUL after the data, so this is also how paths are
  passed as C strings.
* Writable buffers (``bytearray``, writable ``memoryview``): ``c_char.from_buffer`` takes
  a buffer export. While it exists a ``bytearray`` refuses to resize (``BufferError``), so
  its storage cannot move under the kernel.
* Any other read-only buffer (a read-only ``memoryview``, e.g. a slice of ``bytes``):
  ``PyObject_GetBuffer`` through ``ctypes.pythonapi``, released by the keep-alive
  object's finaliser. Slower, but correct for every contiguous buffer.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

_PyBUF_SIMPLE: Final = 0


class _PyBuffer(ctypes.Structure):
    # ``Py_buffer`` from CPython's include/pybuffer.h (a stable-ABI struct since 3.11).
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.c_void_p]
_release_buffer.restype = None


class BufferPin:
    """A ``PyObject_GetBuffer`` export, released when this object is collected."""

    __slots__ = ("_view", "addr", "__weakref__")

    def __init__(self, obj: object) -> None:
        view = _PyBuffer()
        _get_buffer(obj, ctypes.addressof(view), _PyBUF_SIMPLE)  # raises on failure
        self._view = view
        self.addr: int = view.buf or 0

    def __del__(self) -> None:
        view = getattr(self, "_view", None)
        if view is not None and view.obj:
            _release_buffer(ctypes.addressof(view))
            view.obj = None


def _measure_bytes_offset() -> int:
    probe = b"pageserver"
    addr = ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value
    assert addr is not None
    off = addr - id(probe)
    assert ctypes.string_at(id(probe) + off, len(probe)) == probe
    return off


BYTES_DATA_OFFSET: Final = _measure_bytes_offset()

_from_buffer = ctypes.c_char.from_buffer
_addressof = ctypes.addressof


def readable(data: bytes | bytearray | memoryview) -> tuple[int, object]:
    """Address and keep-alive for a buffer the kernel will read (WRITE)."""
    t = type(data)
    if t is bytes:
        return id(data) + BYTES_DATA_OFFSET, data
    if t is bytearray or (t is memoryview and not data.readonly):  # type: ignore[union-attr]
        pin = _from_buffer(data)
        return _addressof(pin), pin
    bpin = BufferPin(data)
    return bpin.addr, bpin


def writable(buf: bytearray | memoryview) -> tuple[int, object]:
    """Address and keep-alive for a buffer the kernel will fill (READ)."""
    pin = _from_buffer(buf)  # TypeError for a read-only buffer, like os.preadv
    return _addressof(pin), pin


def c_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> tuple[int, bytes]:
    """A NUL-terminated path for the kernel: (address, the bytes object to keep)."""
    p = os.fsencode(path)
    if b"\0" in p:
        raise ValueError("embedded null byte")
    return id(p) + BYTES_DATA_OFFSET, p
