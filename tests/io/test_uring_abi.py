"""The ctypes transcription of the io_uring ABI against the kernel's uapi headers.

Every expected number below was read from ``include/uapi/linux/io_uring.h`` and
``include/uapi/linux/stat.h`` (and checked with ``offsetof`` in C); none is derived from
the classes under test.
"""

from __future__ import annotations

import ctypes

import pytest

from pageserver.io.uring import _abi

SIZES = [
    (_abi.IoUringSqe, 64),
    (_abi.IoUringCqe, 16),
    (_abi.IoUringParams, 120),
    (_abi.IoSqringOffsets, 40),
    (_abi.IoCqringOffsets, 40),
    (_abi.Statx, 256),
    (_abi.StatxTimestamp, 16),
    (_abi.IoUringProbeHeader, 16),
    (_abi.IoUringProbeOp, 8),
]

OFFSETS = {
    _abi.IoUringSqe: {
        "opcode": 0,
        "flags": 1,
        "ioprio": 2,
        "fd": 4,
        "off": 8,  # union with addr2
        "addr": 16,
        "len": 24,
        "op_flags": 28,  # rw_flags / fsync_flags / open_flags / rename_flags ...
        "user_data": 32,
        "buf_index": 40,
        "personality": 42,
        "splice_fd_in": 44,
        "addr3": 48,
        "pad2": 56,
    },
    _abi.IoUringCqe: {"user_data": 0, "res": 8, "flags": 12},
    _abi.IoUringParams: {
        "sq_entries": 0,
        "cq_entries": 4,
        "flags": 8,
        "sq_thread_cpu": 12,
        "sq_thread_idle": 16,
        "features": 20,
        "wq_fd": 24,
        "resv": 28,
        "sq_off": 40,
        "cq_off": 80,
    },
    _abi.IoSqringOffsets: {
        "head": 0,
        "tail": 4,
        "ring_mask": 8,
        "ring_entries": 12,
        "flags": 16,
        "dropped": 20,
        "array": 24,
        "resv1": 28,
        "user_addr": 32,
    },
    _abi.IoCqringOffsets: {
        "head": 0,
        "tail": 4,
        "ring_mask": 8,
        "ring_entries": 12,
        "overflow": 16,
        "cqes": 20,
        "flags": 24,
        "resv1": 28,
        "user_addr": 32,
    },
    _abi.Statx: {
        "stx_mask": 0,
        "stx_blksize": 4,
        "stx_attributes": 8,
        "stx_nlink": 16,
        "stx_uid": 20,
        "stx_gid": 24,
        "stx_mode": 28,
        "stx_ino": 32,
        "stx_size": 40,
        "stx_blocks": 48,
        "stx_attributes_mask": 56,
        "stx_atime": 64,
        "stx_btime": 80,
        "stx_ctime": 96,
        "stx_mtime": 112,
        "stx_rdev_major": 128,
        "stx_rdev_minor": 132,
        "stx_dev_major": 136,
        "stx_dev_minor": 140,
        "stx_mnt_id": 144,
        "stx_dio_mem_align": 152,
        "stx_dio_offset_align": 156,
    },
    _abi.StatxTimestamp: {"tv_sec": 0, "tv_nsec": 8},
    _abi.IoUringProbeHeader: {"last_op": 0, "ops_len": 1, "resv": 2, "resv2": 4},
    _abi.IoUringProbeOp: {"op": 0, "resv": 1, "flags": 2, "resv2": 4},
}


@pytest.mark.parametrize(("cls", "size"), SIZES, ids=[c.__name__ for c, _ in SIZES])
def test_struct_sizes(cls: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(cls) == size


@pytest.mark.parametrize("cls", list(OFFSETS), ids=[c.__name__ for c in OFFSETS])
def test_field_offsets(cls: type[ctypes.Structure]) -> None:
    actual = {name: getattr(cls, name).offset for name in OFFSETS[cls]}
    assert actual == OFFSETS[cls]


def test_probe_buffer_layout() -> None:
    # header (16) + 256 ops of 8 bytes: the ops[] flexible array starts at 16.
    assert _abi.IoUringProbe.ops.offset == 16
    assert ctypes.sizeof(_abi.IoUringProbe) == 16 + 256 * 8


def test_hot_path_sqe_format_matches_struct() -> None:
    """``SQE_STRUCT.pack_into`` must put each field where the ctypes struct (and C) has it."""
    assert _abi.SQE_STRUCT.size == 64
    assert _abi.CQE_STRUCT.size == 16
    buf = bytearray(64)
    _abi.SQE_STRUCT.pack_into(
        buf, 0, 0x17, 0x10, 0x0203, -100, 0x1122334455667788, 0xAABBCCDDEEFF0011,
        0x01020304, 0x0A0B0C0D, 0xDEADBEEFCAFEF00D, 0x0102, 0x0304, -7,
        0x0123456789ABCDEF, 0,
    )  # fmt: skip
    sqe = _abi.IoUringSqe.from_buffer(buf)
    assert (sqe.opcode, sqe.flags, sqe.ioprio, sqe.fd) == (0x17, 0x10, 0x0203, -100)
    assert sqe.off == 0x1122334455667788
    assert sqe.addr == 0xAABBCCDDEEFF0011
    assert (sqe.len, sqe.op_flags) == (0x01020304, 0x0A0B0C0D)
    assert sqe.user_data == 0xDEADBEEFCAFEF00D
    assert (sqe.buf_index, sqe.personality, sqe.splice_fd_in) == (0x0102, 0x0304, -7)
    assert sqe.addr3 == 0x0123456789ABCDEF
    del sqe
    cqe_buf = bytearray(16)
    cqe = _abi.IoUringCqe.from_buffer(cqe_buf)
    cqe.user_data, cqe.res, cqe.flags = 42, -2, 3
    assert _abi.CQE_STRUCT.unpack_from(cqe_buf) == (42, -2, 3)


def test_constants_from_uapi() -> None:
    # enum io_uring_op numbering (the ABI): spot-check every opcode we use.
    assert _abi.IORING_OP_NOP == 0
    assert _abi.IORING_OP_FSYNC == 3
    assert _abi.IORING_OP_SYNC_FILE_RANGE == 8
    assert _abi.IORING_OP_ASYNC_CANCEL == 14
    assert _abi.IORING_OP_OPENAT == 18
    assert _abi.IORING_OP_CLOSE == 19
    assert _abi.IORING_OP_STATX == 21
    assert _abi.IORING_OP_READ == 22
    assert _abi.IORING_OP_WRITE == 23
    assert _abi.IORING_OP_RENAMEAT == 35
    assert _abi.IORING_OP_UNLINKAT == 36
    assert _abi.IORING_OP_FTRUNCATE == 55
    assert _abi.IORING_OFF_SQ_RING == 0
    assert _abi.IORING_OFF_CQ_RING == 0x8000000
    assert _abi.IORING_OFF_SQES == 0x10000000
    assert _abi.IORING_FEAT_SINGLE_MMAP == 1
    assert _abi.IORING_FEAT_NODROP == 2
    assert _abi.IORING_SQ_CQ_OVERFLOW == 2
    assert _abi.IORING_ENTER_GETEVENTS == 1
    assert _abi.IORING_REGISTER_PROBE == 8
    assert _abi.IORING_FSYNC_DATASYNC == 1
    assert _abi.SYNC_FILE_RANGE_WRITE == 2  # linux/fs.h
    assert _abi.IOSQE_ASYNC == 16
    assert _abi.IORING_SETUP_CLAMP == 16
    assert _abi.IORING_SETUP_SUBMIT_ALL == 128
    assert _abi.AT_FDCWD == -100
    assert _abi.AT_EMPTY_PATH == 0x1000
    assert _abi.RENAME_NOREPLACE == 1
    assert _abi.STATX_BASIC_STATS == 0x7FF
