"""File I/O: io engines, VirtualFile, the buffered writer, offload, crash-safe overwrite.

Everything above this package receives an :class:`IoContext` and never asks which engine
is active. This module is the package's one door: code outside ``pageserver.io`` imports
from here and from nowhere deeper.

Inside, as in trio's ``_core``: :mod:`~pageserver.io.engine` is the interface, the two
engines are siblings that implement it (:mod:`~pageserver.io.std_fs`,
:mod:`~pageserver.io.uring.engine`), and :mod:`~pageserver.io.select` is the one module
that knows both and chooses between them.
"""

from pageserver.io._jobstate import JobCancelled
from pageserver.io.buffered_writer import BufferedWriter
from pageserver.io.context import IoContext
from pageserver.io.crashsafe import TEMP_SUFFIX
from pageserver.io.engine import STD_FS, TRIO_URING, FileStat, IoEngine, PendingIo
from pageserver.io.gather import Gather
from pageserver.io.mapping import FileMapping
from pageserver.io.offload import (
    JobSuspendedError,
    cleanup_shield,
    cooperative_checkpoint,
    drive_to_completion,
    on_trio_loop,
)
from pageserver.io.select import (
    ENGINE_KINDS,
    REQUIRE_URING_ENV_VAR,
    EngineUnavailable,
    create_engine,
    normalize_engine_kind,
    resolve_engine,
    tool_engine,
    uring_refusal_reason,
    uring_required,
)
from pageserver.io.std_fs import StdFsEngine
from pageserver.io.uring.engine import UringEngine
from pageserver.io.virtual_file import UnexpectedEof, VirtualFile

__all__ = [
    "BufferedWriter",
    "ENGINE_KINDS",
    "EngineUnavailable",
    "FileMapping",
    "FileStat",
    "Gather",
    "IoContext",
    "IoEngine",
    "JobCancelled",
    "JobSuspendedError",
    "PendingIo",
    "REQUIRE_URING_ENV_VAR",
    "STD_FS",
    "StdFsEngine",
    "TEMP_SUFFIX",
    "TRIO_URING",
    "UnexpectedEof",
    "UringEngine",
    "VirtualFile",
    "cleanup_shield",
    "cooperative_checkpoint",
    "create_engine",
    "drive_to_completion",
    "normalize_engine_kind",
    "on_trio_loop",
    "resolve_engine",
    "tool_engine",
    "uring_refusal_reason",
    "uring_required",
]
