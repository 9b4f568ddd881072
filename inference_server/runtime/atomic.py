"""Atomic file writes: readers see the old file or the new one, never a half-written one.

Shared by everything that rewrites files other processes read: the model registry, ML job outputs,
the INT8 ONNX cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``.

    ``mode``: permissions for the new file (mkstemp creates 0600, too tight for a cache that other
    users' processes share). ``durable``: fsync the file and its directory, so that the rename itself
    survives a power loss — for files that are the only copy of their content (the registry).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
