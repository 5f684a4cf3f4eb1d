"""Replacing a file atomically: a reader sees the old content or the new, never a mix or a torn file.

    atomic_write(path, data)                  temp file beside it, write all, fsync it, rename over
                                              the old one, fsync the directory: survives a crash of
                                              the host (power loss) as well as of the process
    atomic_write(path, data, durable=False)   temp file, write all, rename: survives a crash of the
                                              process (for files that are regenerated or advisory:
                                              ready and stats files, feed checkpoints, the gateway journal)

The temp file is ``path + ".tmp"`` (directories that hold such files remove ``*.tmp`` left by a
crash at start-up). A write that fails removes its temp file and raises: the old file stays as it was.
Every replaced file in the appliance goes through here; called from any thread, one writer per path.
"""
from __future__ import annotations

import os

__all__ = ["atomic_write", "fsync_dir", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: str) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, durable: bool = True, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` atomically (module docstring); ``mode`` for a new file."""
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(os.path.dirname(path) or ".")
