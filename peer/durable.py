"""fsync helpers shared by the checkpoint (``peer.daemon.checkpoint``) and the adapter export
(``peer.training.adapters``): what makes a written file, and the name that points at it, survive a
power cut rather than only a crash of the process."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a file already written and closed (by a library that does not fsync) to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new or removed file) durable.

    A file's own fsync does not cover its name: after a power cut the rename may be lost and the old
    file back. Platforms that cannot open a directory (Windows) skip this: there is nothing to do.
    """
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
