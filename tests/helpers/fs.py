"""Real small file systems for tests: a tmpfs to fill up, an ext4 on a loop device to see
writeback on (we run as root; a refused mount fails the test rather than skipping it: only
a kernel refusing io_uring may skip)."""

from __future__ import annotations

import os
import shutil
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


@contextmanager
def small_ext4(size_mib: int = 64) -> Iterator[Path]:
    """A fresh ext4 of ``size_mib`` on a loop device, mounted on a temporary directory,
    unmounted (and its image removed) afterwards.

    What a test about writeback needs whatever the test directory is on: tmpfs has no
    writeback at all, and on overlayfs ``sync_file_range`` reaches the overlay's empty
    mapping instead of the real file's pages. The image lives in the system temporary
    directory; the loop device writes it back into that directory's page cache, so a
    flush of this file system is quick and touches no disk of its own.
    """
    root = tempfile.mkdtemp(prefix="ps-ext4-")
    image = os.path.join(root, "fs.img")
    mnt = os.path.join(root, "mnt")
    os.mkdir(mnt)
    try:
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        r = subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True, text=True)
        assert r.returncode == 0, f"mkfs.ext4 failed (e2fsprogs is needed): {r.stderr.strip()}"
        r = subprocess.run(["mount", "-o", "loop", image, mnt], capture_output=True, text=True)
        assert r.returncode == 0, (
            f"mounting a loop ext4 failed (tests run as root): {r.stderr.strip()}"
        )
        try:
            yield Path(mnt)
        finally:
            subprocess.run(["umount", "-l", mnt], check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
