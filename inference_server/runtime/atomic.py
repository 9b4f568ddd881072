"""Atomic file writes: readers see the old file or the new one, never a half-written one.

Shared by everything that rewrites files other processes read: the model registry, ML job outputs,
the INT8 ONNX cache.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it,
    which races with other threads creating files); Linux reports it in /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def replacement_mode(path: Path) -> int:
    """Permissions for a file that replaces ``path``: the existing file's, so that a rewrite never
    narrows who may read it (other users' processes, a pod sharing the volume), or what a plain
    ``open`` would give a new file (0666 less the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def write_bytes_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``.

    ``mode``: permissions for the new file; by default those of the file it replaces, or what ``open``
    would give a new one (mkstemp alone creates 0600, which locked other users and pods out of a
    shared registry or dataset manifest after its first rewrite). ``durable``: fsync the file and its
    directory, so that the rename itself survives a power loss — for files that are the only copy of
    their content (the registry, a reprocess checkpoint).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, replacement_mode(path) if mode is None else mode)
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
