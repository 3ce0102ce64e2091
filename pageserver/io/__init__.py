"""File I/O: io engines, VirtualFile, the buffered writer, offload, crash-safe overwrite.

Everything above this package receives an :class:`IoContext` and never asks which engine
is active.
"""

from pageserver.io._jobstate import JobCancelled
from pageserver.io.buffered_writer import BufferedWriter
from pageserver.io.context import IoContext
from pageserver.io.crashsafe import TEMP_SUFFIX
from pageserver.io.engine import FileStat, IoEngine, create_engine
from pageserver.io.offload import cleanup_shield, cooperative_checkpoint
from pageserver.io.virtual_file import UnexpectedEof, VirtualFile

__all__ = [
    "BufferedWriter",
    "FileStat",
    "IoContext",
    "IoEngine",
    "JobCancelled",
    "TEMP_SUFFIX",
    "UnexpectedEof",
    "VirtualFile",
    "cleanup_shield",
    "cooperative_checkpoint",
    "create_engine",
]
