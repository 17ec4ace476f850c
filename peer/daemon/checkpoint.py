"""Atomic checkpoints: one file, written beside the old one and renamed over it.

``os.replace`` is atomic on POSIX file systems, so at every instant ``checkpoint.pt`` is either the
previous complete checkpoint or the new complete one; ``kill -9`` at any moment cannot leave a torn
file. The file holds only tensors and plain values and is read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(directory: Path, state: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / CHECKPOINT)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return directory / CHECKPOINT


def load_checkpoint(directory: Path) -> dict | None:
    path = directory / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file we did not write, or from an incompatible version
        raise CheckpointError(f"{path} cannot be read ({exc}); move it away to start afresh") from exc
