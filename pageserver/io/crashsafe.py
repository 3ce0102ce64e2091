"""Crash-safe overwrite of small files (tenant config, timeline metadata).

The sequence (SPEC section 6, after upstream ``shared/seeds/003_*``):

1. remove ``path.___temp`` if a previous crash left it;
2. create it with ``O_CREAT|O_EXCL`` (so two writers can never share it);
3. write all of the content; fsync it; close it;
4. rename it over ``path`` (atomic replace within one directory);
5. fsync the parent directory, which makes the rename itself durable (an error there
   aborts the process: see the comment in the code).

At every point a crash leaves ``path`` with the whole old content (before step 4's
rename is durable) or the whole new content (after). The file is fsynced even with
``no_sync``: these few files are what a restart trusts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pageserver import failpoints
from pageserver.io.offload import cleanup_shield
from pageserver.io.virtual_file import fatal_io_error

if TYPE_CHECKING:
    from pageserver.io.context import IoContext

#: The suffix of every file written before its rename into place (Neon's ``.___temp``):
#: crash-safe overwrites, layer files being written, the daemon's own config. Startup
#: removes leftovers by this suffix. The one definition; everyone imports it from ``pageserver.io``.
#: It lives here, in the foundation, and not with the layer names: io may not import layers
#: (docs/ARCHITECTURE.md), and the crash-safe overwrite, below layers, needs it too.
TEMP_SUFFIX = ".___temp"


async def crashsafe_overwrite(ctx: IoContext, path: str, content: bytes) -> None:
    path = os.fspath(path)
    temp = path + TEMP_SUFFIX
    engine = ctx.engine
    try:
        await engine.unlink(temp)
    except FileNotFoundError:
        pass
    vf = await ctx.create_new(temp)
    try:
        await vf.write_all_at(content, 0)
        await failpoints.failpoint("crashsafe-after-write")
        await vf.sync_all(force=True)
    except BaseException:
        with cleanup_shield():
            await vf.close()
            try:
                await engine.unlink(temp)
            except FileNotFoundError:
                pass
        raise
    await vf.close()
    await failpoints.failpoint("crashsafe-before-rename")
    # The commit point: once the rename is issued, finish it (and make it durable) even
    # if the caller is being cancelled, so that "returned with an error" always means
    # "the old content is still in place" to the caller.
    #
    # After the rename, an error must not be reported as "the overwrite failed": the new
    # content may already be what a reader (and, once the directory is written back, a
    # restart) sees, and callers may undo things they believe the old content still
    # describes. Nor can the fsync be retried (fsyncgate). So any error of the
    # directory fsync aborts the process; the restart sees one content or the other.
    directory = os.path.dirname(path) or "."
    with cleanup_shield():
        await engine.rename(temp, path)
        try:
            await failpoints.failpoint("crashsafe-after-rename")
            await ctx.fsync_dir(directory, force=True)
        except OSError as e:
            fatal_io_error("fsync", directory, e)
