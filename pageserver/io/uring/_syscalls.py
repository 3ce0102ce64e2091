"""The three io_uring syscalls, ``mmap``/``munmap``, and a raw-memory memoryview, via ctypes.

Why ``libc.syscall`` and not liburing: the project must run with nothing but the Python
standard library and a kernel. glibc has no wrappers for io_uring, so we call the
generic ``syscall(2)`` entry point with the syscall number.

Syscall numbers: io_uring arrived (Linux 5.1) after the architectures agreed on a common
numbering for new syscalls, so ``io_uring_setup``/``enter``/``register`` are 425/426/427
on x86_64 *and* on aarch64 (and on every other architecture except alpha, which we do
not support).

Why a typed function pointer per syscall: ``syscall`` is variadic. On the two ABIs we
care about (SysV x86_64, AAPCS64 on Linux) variadic integer arguments travel in the same
registers as fixed ones, so calling through a prototype with fixed argument types is
exact, and the prototype lets ctypes convert arguments in C instead of us boxing every
one into a ``c_long`` on the hot path (``io_uring_enter`` runs once per loop tick).

Why libc ``mmap`` and not Python's :mod:`mmap`: a Python ``mmap`` object refuses to close
while any buffer export (a ``memoryview``, a ``ctypes.from_buffer`` view) is alive, and we
keep typed memoryviews over the rings for the whole life of the ring. With libc ``mmap`` we
own the address; :func:`memory_view` makes a memoryview over it (``PyMemoryView_FromMemory``,
which owns nothing), and the ring releases those views itself before ``munmap``.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Final

_SYSCALL_NUMBERS: Final[dict[str, tuple[int, int, int]]] = {
    "x86_64": (425, 426, 427),
    "amd64": (425, 426, 427),
    "aarch64": (425, 426, 427),
    "arm64": (425, 426, 427),
}
#: Every architecture but alpha uses the unified numbers; trying them is harmless (a wrong
#: number is ENOSYS, which the probe reports).
NR_SETUP, NR_ENTER, NR_REGISTER = _SYSCALL_NUMBERS.get(platform.machine().lower(), (425, 426, 427))

PROT_READ: Final = 0x1
PROT_WRITE: Final = 0x2
MAP_SHARED: Final = 0x01
MAP_POPULATE: Final = 0x8000
_MAP_FAILED: Final = ctypes.c_void_p(-1).value

# ``CDLL(None)`` is ``dlopen(NULL)``: the global namespace of the running interpreter,
# which includes libc. ``ctypes.util.find_library("c")`` would also work but runs
# ``ldconfig -p`` in a subprocess at import time.
_libc = ctypes.CDLL(None, use_errno=True)
_syscall_addr: int = ctypes.cast(_libc.syscall, ctypes.c_void_p).value or 0

# long syscall(long nr, int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
#              void *arg, size_t argsz)
_enter_proto = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_size_t,
    use_errno=True,
)
_raw_enter = _enter_proto(_syscall_addr)

# long syscall(long nr, unsigned entries, struct io_uring_params *p)
_setup_proto = ctypes.CFUNCTYPE(
    ctypes.c_long, ctypes.c_long, ctypes.c_uint, ctypes.c_void_p, use_errno=True
)
_raw_setup = _setup_proto(_syscall_addr)

# long syscall(long nr, int fd, unsigned opcode, void *arg, unsigned nr_args)
_register_proto = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_uint,
    use_errno=True,
)
_raw_register = _register_proto(_syscall_addr)

_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

_PyBUF_WRITE: Final = 0x200
_memview_from_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_memview_from_memory.restype = ctypes.py_object
_memview_from_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def io_uring_setup(entries: int, params_addr: int) -> int:
    """``io_uring_setup(entries, params)``; returns the ring fd or raises ``OSError``."""
    fd = _raw_setup(NR_SETUP, entries, params_addr)
    if fd < 0:
        _raise_errno("io_uring_setup")
    return int(fd)


def io_uring_enter(fd: int, to_submit: int, min_complete: int, flags: int) -> int:
    """``io_uring_enter`` without a signal mask; returns the count of consumed SQEs.

    Errors are returned as ``-errno`` (not raised): the caller decides which ones are
    transient (EINTR, EAGAIN, EBUSY) and the hot path avoids a try/except frame.
    """
    n = _raw_enter(NR_ENTER, fd, to_submit, min_complete, flags, None, 0)
    if n < 0:
        return -ctypes.get_errno()
    return int(n)


def io_uring_register(fd: int, opcode: int, arg_addr: int, nr_args: int) -> int:
    res = _raw_register(NR_REGISTER, fd, opcode, arg_addr, nr_args)
    if res < 0:
        _raise_errno("io_uring_register")
    return int(res)


def mmap_ring(fd: int, length: int, offset: int) -> int:
    """Map ``length`` bytes of the ring fd at the magic ``offset``; returns the address."""
    addr = _mmap(None, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        _raise_errno("mmap")
    assert addr is not None
    return int(addr)


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        _raise_errno("munmap")


def memory_view(addr: int, length: int) -> memoryview:
    """A writable byte memoryview over raw memory that it does not own.

    The caller must ``release()`` it (and every view derived from it by ``cast``) before
    the memory goes away; using it afterwards would touch unmapped memory.
    """
    mv = _memview_from_memory(addr, length, _PyBUF_WRITE)
    assert isinstance(mv, memoryview)
    return mv


def close_fd(fd: int) -> None:
    os.close(fd)
