"""Crash-safe files: written beside the old one, made durable, then renamed over it.

``write_atomically`` writes a temporary file in the target's directory, flushes and fsyncs it,
``os.replace``s it over the target (atomic on POSIX file systems) and fsyncs the directory, so that
at every instant the target is either the previous complete file or the new complete one: ``kill
-9`` or a power cut at any moment cannot leave a torn file, and once the call returns the new file
survives a power cut (the directory fsync makes the rename itself durable, not only the bytes).

A ``kill -9`` between creating the temporary file and the rename leaves that file behind; its name
starts with ``TEMP_PREFIX`` so that ``remove_stale_temp_files`` can find it at the next start
(``load_checkpoint`` calls it).

The checkpoint holds only tensors and plain values, written as one safetensors file
(``peer.daemon.state_file``: no pickle, and a digest over all of it); a checkpoint of an earlier
version, written by ``torch.save``, is still read, with ``weights_only=True``.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import torch

from peer.daemon import state_file
from peer.durable import fsync_directory
from peer.errors import TadloraError, UsageError

CHECKPOINT = "checkpoint.pt"
TEMP_PREFIX = ".partial."
# what versions before write_atomically named their checkpoint temp files: a kill -9 of one of them
# left such files, and they are ours to remove too
LEGACY_TEMP_PREFIXES = (".checkpoint.",)


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that cannot be read (torn, foreign, of another peer) or could not be read again;
    the message names the file and says what to do."""


class UnloadableState(TadloraError, TypeError):
    """A state that a ``weights_only`` load would refuse: a bug in whatever built it (a numpy scalar
    where a float belongs, say), so it keeps its traceback; the previous checkpoint stays."""


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Replace ``path`` by what ``write`` writes into the open binary file it is given.

    If ``write`` raises, ``path`` keeps its previous content and the temporary file is removed; the
    exception propagates. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: no temp file outlives a failed write
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Remove the temporary files that a killed writer left in ``directory``; returns them.

    Call it only while no other writer works in ``directory`` (at start-up): a live writer's
    temporary file looks the same as a dead one's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    prefixes = (TEMP_PREFIX, *LEGACY_TEMP_PREFIXES)
    stale = [p for p in directory.iterdir() if p.name.startswith(prefixes) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# What a state file holds, and what ``torch.load(weights_only=True)`` reads back: exactly these types
# (a numpy scalar is a float subclass, and would not come back as itself), in these containers.
_PLAIN_TYPES = (str, int, float, bool, bytes, type(None), torch.dtype, torch.device)
_CONTAINERS = (dict, list, tuple, set)


def loadable(value: object, where: str = "state") -> Any:
    """``value`` as a state file holds it: the protocol's enumerations (``StrEnum``s
    such as a phase) become the plain strings they stand for; anything else that such a load refuses
    (a numpy scalar, say) is an UnloadableState that says where it sits, before anything is written."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, Enum) and isinstance(value, str | int):
        return value.value
    if type(value) is dict:
        return {loadable(key, f"{where}: a key"): loadable(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, list | tuple | set) and type(value) in _CONTAINERS:
        return type(value)(loadable(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise UnloadableState(
        f"not saved, it could not be loaded again: {where} is a {type(value).__module__}.{type(value).__name__}"
    )


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Replace the checkpoint by ``state`` (tensors and plain values only: checked first, so that a
    state the next start could not read never replaces a good checkpoint)."""
    data = dump_state(state)
    return write_atomically(Path(directory) / CHECKPOINT, lambda f: f.write(data))


def dump_state(state: dict) -> bytearray:
    """A state's bytes, as a checkpoint or write-ahead file holds them. A ``bytearray``, never changed
    after: a copy into ``bytes`` cost 8 times the encoding itself at 30 MB (fresh pages to fault in).
    A value it cannot hold is an ``UnloadableState`` that says where it sits (``loadable``, asked only
    then: building every value's path cost as much as encoding the state)."""
    try:
        return state_file.dumps(state)
    except TypeError:
        loadable(state)  # raises the error with the value's path
        raise  # not a value of the state: a dtype safetensors lacks, say


def load_state(data: bytes | bytearray) -> dict:
    """A state from its bytes: this version's state file, or an earlier version's ``torch.save`` zip
    (read with ``weights_only``: tensors and plain values only, nothing that runs). Raises what the
    reader raised; callers turn it into a ``CheckpointError`` with ``unreadable``."""
    if state_file.is_state_file(data):
        return state_file.loads(data)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_checkpoint(directory: Path) -> dict | None:
    """The saved state, on CPU (the caller moves it to its device), or None without a checkpoint.

    Also removes temporary files left by an earlier process killed while it wrote.
    """
    directory = Path(directory)
    remove_stale_temp_files(directory)
    path = directory / CHECKPOINT
    if not path.exists():
        return None
    try:
        return load_state(path.read_bytes())
    except Exception as exc:  # a torn or foreign file, or one of an incompatible version
        raise unreadable(path, exc) from exc


def unreadable(what: object, exc: Exception) -> CheckpointError:
    """The error for a file that does not load: only the first line of torch's message (the rest of it
    advises an unsafe load, ``weights_only=False``)."""
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    return CheckpointError(f"{what} cannot be read ({first}); move it away to start afresh")
