"""Atomic file writes (image store, model files, reports) and hard links into the image store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path``, replacing what is there, folders made as needed: written to a
    hidden temporary file in the same folder, then renamed, so readers never see a partial file.
    ``durable``: flushed to disk (fsync) before the rename."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = f"{folder or '.'}/.{name}.{os.getpid()}.tmp"  # one writer per process, no thread writes
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # the first file of its folder
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def link_or_copy(path: str, data: bytes, source: str, source_stat: os.stat_result) -> bool:
    """Make ``path`` a hard link to ``source``, the file ``data`` was read from, folders made as
    needed; a ``path`` already there is kept. ``data`` is written instead (``write_atomic``) when
    no link can be made (another filesystem, links not allowed) or when ``source`` is no longer
    the file that was read (``source_stat``: its inode, size and mtime then). True when ``data``
    was written."""
    try:
        try:
            os.link(source, path)
        except FileNotFoundError:  # the first file of its folder (or the source is gone: copied below)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(source, path)
    except FileExistsError:
        return False
    except OSError:  # EXDEV, EPERM (protected_hardlinks), EMLINK, ENOTSUP, ENOENT...
        write_atomic(path, data)
        return True
    st = os.stat(path)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
            source_stat.st_dev, source_stat.st_ino, source_stat.st_size, source_stat.st_mtime_ns):
        write_atomic(path, data)  # changed or replaced since it was read: keep the bytes that were hashed
        return True
    return False
