"""Atomic file writes, shared by the image store, model files and reports."""

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
