"""Real small file systems for full-disk tests (we run as root; a refused mount fails the
test rather than skipping it: only a kernel refusing io_uring may skip)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_tmpfs(size: str = "4m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted on a temporary directory, unmounted afterwards."""
    mnt = tempfile.mkdtemp(prefix="ps-tmpfs-")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], capture_output=True, text=True
    )
    assert r.returncode == 0, f"mounting a tmpfs failed (tests run as root): {r.stderr.strip()}"
    try:
        yield Path(mnt)
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def fill(path: Path, chunk: int = 16 * 1024) -> int:
    """Write zeros to ``path`` until the file system is full; the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        block = bytes(chunk)
        while True:
            try:
                n += f.write(block)
            except OSError:
                if chunk == 512:
                    return n
                chunk //= 2
                block = bytes(chunk)
