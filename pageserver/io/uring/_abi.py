"""The io_uring kernel ABI, transcribed by hand into ctypes.

Everything here mirrors ``include/uapi/linux/io_uring.h`` and ``include/uapi/linux/stat.h``
(``struct statx``). We do not parse headers at run time and we do not link liburing: the
uapi is a stable, append-only contract, so a transcription is as good as the header, and
``tests/test_uring_abi.py`` pins every size and offset to numbers read from the header
(not derived from these classes), so a typo here fails the test suite rather than
scribbling over kernel-shared memory.

Two representations of the same layouts live here:

* ctypes ``Structure`` classes, used where clarity beats speed: setup parameters, the
  probe, ``statx`` results, and the ABI tests.
* precompiled :class:`struct.Struct` formats for the SQE and the CQE, used on the hot path.
  Filling an SQE is one ``pack_into`` call on a memoryview of the mmapped SQE array;
  reading a CQE is two indexed loads from typed memoryviews (see ``_ring``). Neither
  allocates a ctypes object per operation.

Unions are flattened to the member we use; the other members have the same offset and
width, so the layout is identical. ``io_uring.h`` names the alternatives in comments.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Final

# --------------------------------------------------------------------------------------
# Structures


class IoSqringOffsets(ctypes.Structure):
    """``struct io_sqring_offsets``: where the SQ ring's fields live inside its mapping."""

    _fields_ = [
        ("head", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("dropped", ctypes.c_uint32),
        ("array", ctypes.c_uint32),
        ("resv1", ctypes.c_uint32),
        ("user_addr", ctypes.c_uint64),  # named resv2 in older headers
    ]


class IoCqringOffsets(ctypes.Structure):
    """``struct io_cqring_offsets``: where the CQ ring's fields live inside its mapping."""

    _fields_ = [
        ("head", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32),
        ("overflow", ctypes.c_uint32),
        ("cqes", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("resv1", ctypes.c_uint32),
        ("user_addr", ctypes.c_uint64),  # named resv2 in older headers
    ]


class IoUringParams(ctypes.Structure):
    """``struct io_uring_params``: in/out argument of ``io_uring_setup``."""

    _fields_ = [
        ("sq_entries", ctypes.c_uint32),
        ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32),
        ("resv", ctypes.c_uint32 * 3),
        ("sq_off", IoSqringOffsets),
        ("cq_off", IoCqringOffsets),
    ]


class IoUringSqe(ctypes.Structure):
    """``struct io_uring_sqe`` (64 bytes), unions flattened to their first/common member.

    ``off`` doubles as ``addr2`` (RENAMEAT's new path, STATX's result buffer);
    ``op_flags`` is the per-opcode flags word (``rw_flags``, ``fsync_flags``,
    ``sync_range_flags``, ``open_flags``, ``statx_flags``, ``rename_flags``,
    ``unlink_flags``...).
    """

    _fields_ = [
        ("opcode", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("ioprio", ctypes.c_uint16),
        ("fd", ctypes.c_int32),
        ("off", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("op_flags", ctypes.c_uint32),
        ("user_data", ctypes.c_uint64),
        ("buf_index", ctypes.c_uint16),
        ("personality", ctypes.c_uint16),
        ("splice_fd_in", ctypes.c_int32),
        ("addr3", ctypes.c_uint64),
        ("pad2", ctypes.c_uint64),
    ]


class IoUringCqe(ctypes.Structure):
    """``struct io_uring_cqe`` (16 bytes without IORING_SETUP_CQE32, which we never set)."""

    _fields_ = [
        ("user_data", ctypes.c_uint64),
        ("res", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class IoUringProbeOp(ctypes.Structure):
    """``struct io_uring_probe_op``."""

    _fields_ = [
        ("op", ctypes.c_uint8),
        ("resv", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("resv2", ctypes.c_uint32),
    ]


class IoUringProbeHeader(ctypes.Structure):
    """``struct io_uring_probe`` without its flexible ``ops[]`` tail."""

    _fields_ = [
        ("last_op", ctypes.c_uint8),
        ("ops_len", ctypes.c_uint8),
        ("resv", ctypes.c_uint16),
        ("resv2", ctypes.c_uint32 * 3),
    ]


#: Opcodes are a ``__u8``, so 256 probe slots cover every kernel, present and future.
PROBE_OPS: Final = 256


class IoUringProbe(ctypes.Structure):
    """A probe buffer with room for every possible opcode."""

    _fields_ = [
        ("hdr", IoUringProbeHeader),
        ("ops", IoUringProbeOp * PROBE_OPS),
    ]


class StatxTimestamp(ctypes.Structure):
    """``struct statx_timestamp``."""

    _fields_ = [
        ("tv_sec", ctypes.c_int64),
        ("tv_nsec", ctypes.c_uint32),
        ("reserved", ctypes.c_int32),
    ]


class Statx(ctypes.Structure):
    """``struct statx`` (256 bytes; the kernel never writes past that)."""

    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", StatxTimestamp),
        ("stx_btime", StatxTimestamp),
        ("stx_ctime", StatxTimestamp),
        ("stx_mtime", StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("stx_dio_mem_align", ctypes.c_uint32),
        ("stx_dio_offset_align", ctypes.c_uint32),
        ("spare3", ctypes.c_uint64 * 12),
    ]


# --------------------------------------------------------------------------------------
# Hot-path encodings. "=" is native byte order with no implicit padding: the SQE and CQE
# are naturally aligned already, so the formats reproduce the C layouts exactly (the ABI
# tests check ``SQE_STRUCT.size == 64`` and field positions by round-tripping).

#: opcode, flags, ioprio, fd, off, addr, len, op_flags, user_data, buf_index,
#: personality, splice_fd_in, addr3, pad2
SQE_STRUCT: Final = struct.Struct("=BBHiQQIIQHHiQQ")
CQE_STRUCT: Final = struct.Struct("=QiI")
SQE_SIZE: Final = 64
CQE_SIZE: Final = 16

# --------------------------------------------------------------------------------------
# Constants (io_uring.h unless noted)

# io_uring_setup flags
IORING_SETUP_IOPOLL: Final = 1 << 0
IORING_SETUP_SQPOLL: Final = 1 << 1
IORING_SETUP_CQSIZE: Final = 1 << 3
IORING_SETUP_CLAMP: Final = 1 << 4
IORING_SETUP_SUBMIT_ALL: Final = 1 << 7
IORING_SETUP_COOP_TASKRUN: Final = 1 << 8
IORING_SETUP_DEFER_TASKRUN: Final = 1 << 13

# features reported back by io_uring_setup
IORING_FEAT_SINGLE_MMAP: Final = 1 << 0
IORING_FEAT_NODROP: Final = 1 << 1
IORING_FEAT_SUBMIT_STABLE: Final = 1 << 2

# mmap offsets
IORING_OFF_SQ_RING: Final = 0
IORING_OFF_CQ_RING: Final = 0x8000000
IORING_OFF_SQES: Final = 0x10000000

# sq_ring->flags
IORING_SQ_NEED_WAKEUP: Final = 1 << 0
IORING_SQ_CQ_OVERFLOW: Final = 1 << 1
IORING_SQ_TASKRUN: Final = 1 << 2

# io_uring_enter flags
IORING_ENTER_GETEVENTS: Final = 1 << 0

# io_uring_register opcodes
IORING_REGISTER_PROBE: Final = 8
IO_URING_OP_SUPPORTED: Final = 1 << 0

# sqe->flags
IOSQE_FIXED_FILE: Final = 1 << 0
IOSQE_IO_DRAIN: Final = 1 << 1
IOSQE_IO_LINK: Final = 1 << 2
IOSQE_ASYNC: Final = 1 << 4

# sqe->fsync_flags
IORING_FSYNC_DATASYNC: Final = 1 << 0

# sqe->sync_range_flags (the flags of sync_file_range(2), linux/fs.h)
SYNC_FILE_RANGE_WRITE: Final = 2

# opcodes (enum io_uring_op; the numbering is the ABI)
IORING_OP_NOP: Final = 0
IORING_OP_WRITEV: Final = 2
IORING_OP_FSYNC: Final = 3
IORING_OP_SYNC_FILE_RANGE: Final = 8  # Linux 5.2
IORING_OP_ASYNC_CANCEL: Final = 14
IORING_OP_OPENAT: Final = 18
IORING_OP_CLOSE: Final = 19
IORING_OP_STATX: Final = 21
IORING_OP_READ: Final = 22
IORING_OP_WRITE: Final = 23
IORING_OP_RENAMEAT: Final = 35
IORING_OP_UNLINKAT: Final = 36
IORING_OP_FTRUNCATE: Final = 55  # Linux 6.9

OP_NAMES: Final[dict[int, str]] = {
    IORING_OP_NOP: "NOP",
    IORING_OP_WRITEV: "WRITEV",
    IORING_OP_FSYNC: "FSYNC",
    IORING_OP_SYNC_FILE_RANGE: "SYNC_FILE_RANGE",
    IORING_OP_ASYNC_CANCEL: "ASYNC_CANCEL",
    IORING_OP_OPENAT: "OPENAT",
    IORING_OP_CLOSE: "CLOSE",
    IORING_OP_STATX: "STATX",
    IORING_OP_READ: "READ",
    IORING_OP_WRITE: "WRITE",
    IORING_OP_RENAMEAT: "RENAMEAT",
    IORING_OP_UNLINKAT: "UNLINKAT",
    IORING_OP_FTRUNCATE: "FTRUNCATE",
}

# fcntl.h / stat.h values used by the path operations
AT_FDCWD: Final = -100
AT_EMPTY_PATH: Final = 0x1000
AT_REMOVEDIR: Final = 0x200
RENAME_NOREPLACE: Final = 1 << 0
STATX_BASIC_STATS: Final = 0x7FF

# Sanity at import: a mismatch here would be a transcription error.
assert ctypes.sizeof(IoUringSqe) == SQE_STRUCT.size == SQE_SIZE
assert ctypes.sizeof(IoUringCqe) == CQE_STRUCT.size == CQE_SIZE
