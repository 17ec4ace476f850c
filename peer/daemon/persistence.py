"""What a peer keeps on disk, and in which order it writes it, so that a crash at any instant is survivable.

Six files; the first three are written atomically and durably (temp file, fsync, rename, directory
fsync), the others are appended and fsynced:

``checkpoint.pt``  the state at the start of a round: factors, optimizer, schedule, the decisions of
                   recent rounds (to answer a neighbour's outcome query after a restart), and links
                   whose outcome is still unknown (``pending``). Each one has a random id.
``checkpoint-consensus.pt``  the same, written instead by a round that trained nothing (a consensus
                   round), without the optimizer's moments, which it did not change: it names the id of
                   the ``checkpoint.pt`` that holds them, and a restart reads the two together. The
                   next whole checkpoint makes it stale (another id) and removes it. The moments are
                   two thirds of MiniLM's state, and twice a large adapter's factors.
``wal.pt``         the write-ahead record of the round in progress: the factors after local training
                   (what this peer sends) and its candidate links, written when the round opens. A
                   round that trained nothing (a consensus round) and changed nothing since the
                   checkpoint of that round does not write the state again: its record says that the
                   checkpoint holds it (``LOCAL_STATE_IN_CHECKPOINT``), a restart reads it there.
``wal-links.bin``  its links, one appended record each: every link this peer is about to count
                   (``final``: the server side, written before its ack) or may count (``tentative``:
                   the client side, written before its commit). Appended, not rewritten with the
                   round's state: a link costs one fsync of its own payload (rewriting ``wal.pt``
                   cost two fsyncs and a rename of everything, per link). A record holds the payload
                   as it arrived, which a restart decodes again: one tensor to write, not one per
                   factor, and a compressed payload stays compressed on disk. Each record carries its
                   round, the random id of its ``wal.pt`` and a checksum; a torn last record was
                   never durable and is not read, nor is a record of another ``wal.pt``.
``rounds.jsonl``   one line per finished round, appended and fsynced right after the checkpoint of the
                   next round (which holds the same line, so a crash between the two loses nothing).
``events.jsonl``   what happens between rounds: a jump forward to a neighbour's round, a link of a past
                   round settled after the last round.

Order in a round: train, write the WAL (open), answer/commit links (each written to the WAL before the
commit or ack that makes it count elsewhere), mix, write the checkpoint of the next round (which
carries the round's line too), append the line, delete the WAL. A restart finds either a WAL of the
checkpoint's round, and finishes that round from it exactly, without training again and with the same
degree and the links it had written, so its neighbours' mixing and its own agree; or no WAL, or a
stale one (the checkpoint is current), and appends the checkpoint's line if the crash came before it.
Every round is logged exactly once.

Each state is one safetensors file (``peer.daemon.state_file``), its plain values as JSON in the
header. The bytes go through a ``Store`` (a folder, or memory for the fault simulator, which crashes peers
between any two writes).
"""

from __future__ import annotations

import copy
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import xxhash

from peer import strict_json
from peer.daemon.checkpoint import (
    CHECKPOINT,
    dump_state,
    load_state,
    remove_stale_temp_files,
    unreadable,
    write_atomically,
)
from peer.daemon.rounds import Received
from peer.durable import fsync_directory
from peer.transport.codec import Buffer

WAL = "wal.pt"
WAL_LINKS = "wal-links.bin"
ROUNDS_LOG = "rounds.jsonl"
EVENTS_LOG = "events.jsonl"
# the local state of a write-ahead record whose round trained nothing: the checkpoint of that round
# holds the state (a consensus round wrote the optimizer's moments and the factors twice per round)
LOCAL_STATE_IN_CHECKPOINT = "in_checkpoint_of_round"
# A round that trains nothing changes the factors, not the optimizer's moments: its checkpoint goes to
# this file without them, naming the whole checkpoint (``checkpoint.pt``) that holds them by its id.
CONSENSUS_CHECKPOINT = "checkpoint-consensus.pt"
CHECKPOINT_ID = "checkpoint_id"
BASE_CHECKPOINT = "base_checkpoint"
OPTIMIZER = "optimizer"
# a record of ``wal-links.bin``: this magic, the data's length and its xxh3-64 digest, then the data
RECORD_MAGIC = b"TDLR"
_RECORD_HEAD = struct.Struct("<4sQQ")


class Store(Protocol):
    def write(self, name: str, data: bytes | bytearray) -> None: ...
    def read(self, name: str) -> bytes | None: ...
    def delete(self, name: str) -> None: ...
    def append_line(self, name: str, line: str) -> None: ...
    def lines(self, name: str) -> list[str]: ...
    def append_record(self, name: str, data: Any) -> None: ...
    def records(self, name: str) -> list[Any]: ...
    def clear_records(self, name: str) -> None: ...


class FolderStore:
    """A ``Store`` in a folder on disk: atomic, durable writes and fsynced appends."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.directory)
        self._records_end: dict[str, int] = {}  # where the next record goes, once the file was checked
        self._lines_checked: set[str] = set()  # logs whose torn last line (a crash's) this process cut

    def write(self, name: str, data: bytes | bytearray) -> None:
        write_atomically(self.directory / name, lambda f: f.write(data))

    def read(self, name: str) -> bytes | None:
        path = self.directory / name
        return path.read_bytes() if path.exists() else None

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)

    def append_line(self, name: str, line: str) -> None:
        """Append one line and fsync it. A torn last line (a crash's, or an append of this process
        that raised) is cut first: checked at the first append, and again after one that raised; an
        append that returned ended with its newline (the check cost each round an open and a read)."""
        path = self.directory / name
        if name not in self._lines_checked:
            _cut_torn_line(path)
            self._lines_checked.add(name)
        try:
            with path.open("a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self._lines_checked.discard(name)
            raise

    def lines(self, name: str) -> list[str]:
        path = self.directory / name
        if not path.exists():
            return []
        # a line torn by a crash mid-append has no newline: it was never durable, drop it
        text = path.read_text()
        return [line for line in text.split("\n")[:-1] if line]

    def append_record(self, name: str, data: bytes | bytearray) -> None:
        """Append one checksummed record and fsync it. The first append of this process to a file
        cuts a torn record a crash left at its end; a new file's name is made durable too."""
        path = self.directory / name
        if name not in self._records_end:
            created = not path.exists()
            self._records_end[name] = 0 if created else _valid_records(path.read_bytes())[1]
            with path.open("ab") as f:
                f.truncate(self._records_end[name])
                os.fsync(f.fileno())
            if created:
                fsync_directory(self.directory)
        with path.open("r+b") as f:
            f.seek(self._records_end[name])
            try:
                f.write(_RECORD_HEAD.pack(RECORD_MAGIC, len(data), xxhash.xxh3_64_intdigest(data)))
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:  # not durable, so the link must not count: nor may a restart find the record
                f.truncate(self._records_end[name])
                raise
            self._records_end[name] = f.tell()

    def records(self, name: str) -> list[bytes]:
        path = self.directory / name
        return _valid_records(path.read_bytes())[0] if path.exists() else []

    def clear_records(self, name: str) -> None:
        """Empty the file, keeping its name. Not fsynced: every record names its round, so records of
        a finished round that a power cut brings back are ignored."""
        path = self.directory / name
        if path.exists():
            os.truncate(path, 0)
            self._records_end[name] = 0


def _as_uint8(payload: Buffer) -> torch.Tensor:
    """A payload's bytes as a tensor, which a state file writes in one copy (a read-only buffer is
    copied first: ``torch.frombuffer`` warns on one, and nothing may write through the view)."""
    return torch.frombuffer(bytearray(payload) if memoryview(payload).readonly else payload, dtype=torch.uint8)


def recorded_payload(link: dict) -> memoryview:
    """The payload of a link read back from its record, for the decoder."""
    return memoryview(link["payload"].numpy())


def _valid_records(data: bytes) -> tuple[list[bytes], int]:
    """The records of ``data`` up to the first torn or damaged one, and where they end."""
    records, at = [], 0
    while at + _RECORD_HEAD.size <= len(data):
        magic, size, digest = _RECORD_HEAD.unpack_from(data, at)
        start = at + _RECORD_HEAD.size
        body = data[start : start + size]
        if magic != RECORD_MAGIC or len(body) != size or xxhash.xxh3_64_intdigest(body) != digest:
            break
        records.append(body)
        at = start + size
    return records, at


def _cut_torn_line(path: Path) -> None:
    """A crash mid-append leaves a last line without its newline: cut it, so the next line starts clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


class MemoryStore:
    """A ``Store`` in memory, for the fault simulator. ``crash_after_writes``: raise ``SimulatedCrash``
    instead of the n-th next write (the write does not happen: an atomic write either happened or not)."""

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}  # bytes (FileFormat), or a private deep copy of a state (CopyFormat)
        self.logs: dict[str, list[str]] = {}
        self.appended: dict[str, list[Any]] = {}  # binary records (FileFormat) or private copies
        self.crash_after_writes: int | None = None
        self.frozen = False
        self.on_crash = lambda: None  # the simulator's: stop the peer at the instant of the crash

    def _tick(self) -> None:
        if self.frozen:
            raise SimulatedCrash("this peer is dead")
        if self.crash_after_writes is not None:
            if self.crash_after_writes <= 0:
                self.frozen = True
                self.on_crash()
                raise SimulatedCrash("crashed while writing")
            self.crash_after_writes -= 1

    def write(self, name: str, data: bytes | bytearray) -> None:
        self._tick()
        self.files[name] = data  # bytes that nobody changes after, or a private deep copy (CopyFormat)

    def read(self, name: str) -> bytes | None:
        return self.files.get(name)

    def delete(self, name: str) -> None:
        self._tick()
        self.files.pop(name, None)

    def append_line(self, name: str, line: str) -> None:
        self._tick()
        self.logs.setdefault(name, []).append(line)

    def lines(self, name: str) -> list[str]:
        return list(self.logs.get(name, []))

    def append_record(self, name: str, data: Any) -> None:
        self._tick()
        self.appended.setdefault(name, []).append(data)

    def records(self, name: str) -> list[Any]:
        return list(self.appended.get(name, []))

    def clear_records(self, name: str) -> None:
        self._tick()
        self.appended.pop(name, None)

    def snapshot(self) -> MemoryStore:
        """What survives a crash now: a copy that the dead process can no longer touch."""
        copy = MemoryStore()
        copy.files, copy.logs = dict(self.files), {k: list(v) for k, v in self.logs.items()}
        copy.appended = {k: list(v) for k, v in self.appended.items()}
        return copy


class SimulatedCrash(BaseException):
    """Raised by a ``MemoryStore`` in place of a write when the fault simulator crashes its peer.
    A BaseException, like a kill -9, so that no ``except Exception`` in the daemon can survive it."""


class FileFormat:
    """How states become bytes: one safetensors file each (``peer.daemon.state_file``; checked, and
    enumerations made plain, first), read back without pickle; an earlier version's ``torch.save``
    files are read too."""

    dumps = staticmethod(dump_state)
    loads = staticmethod(load_state)


class CopyFormat:
    """States kept as private copies instead of bytes: for the fault simulator's ``MemoryStore``, where
    writing files would cost most of a schedule's time. Some of its schedules use ``FileFormat``."""

    @staticmethod
    def dumps(state):
        return snapshot(state)

    loads = dumps


def snapshot(value):
    """A copy that shares nothing mutable with ``value`` (states hold dicts, lists, tensors, scalars)."""
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.copy(value) if not isinstance(value, (str, int, float, bool, bytes, type(None))) else value


@dataclass
class WriteAhead:
    """The round in progress, as written to ``wal.pt``."""

    round: int
    local_state: dict
    candidates: list[str]
    extras: dict = field(default_factory=dict)  # what else finishing the round needs (schedule, ...)
    # peer -> {tensors, degree, bytes, final}; a link read back from its record has its payload (a
    # uint8 tensor, ``recorded_payload``) and no tensors until the daemon decodes it (``_recorded``)
    links: dict[str, dict] = field(default_factory=dict)
    # a random id of this record, carried by each of its links' records: only those are its links
    # (not those of another run's record of the same round number left in the same folder)
    nonce: str = field(default_factory=lambda: os.urandom(8).hex())

    @property
    def local_state_in_checkpoint(self) -> bool:
        """Whether the checkpoint of this round holds the local state (a round that trained nothing)."""
        return LOCAL_STATE_IN_CHECKPOINT in self.local_state

    def as_dict(self) -> dict:
        return {
            "nonce": self.nonce,
            "round": self.round,
            "local_state": self.local_state,
            "candidates": self.candidates,
            "extras": self.extras,
            "links": self.links,
        }


@dataclass(frozen=True)
class RoundFiles:
    """What ``finish_round`` writes: the round's line, and the next round's checkpoint (holding the
    line too), already encoded: a whole one (``checkpoint_id`` its new id), or one of a round that
    trained nothing (``base`` the id of the whole one that holds its optimizer)."""

    record: dict
    checkpoint: Any  # bytes (FileFormat) or a private copy of the state (CopyFormat)
    next_round: int
    checkpoint_id: str | None = None
    base: str | None = None


class Persistence:
    def __init__(self, store: Store, form=FileFormat) -> None:
        self.store, self.form = store, form
        self.wal: WriteAhead | None = None
        self.last_logged_round = self._scan_last_logged_round()  # read once: the log only grows here
        self.checkpoint_round: int | None = None  # the round of the checkpoint last written or read
        self.checkpoint_id: str | None = None  # the id of the whole checkpoint on disk (written or read)
        self.consensus_on_disk = False  # whether a consensus checkpoint may be there (written or read)

    # checkpoint -------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        self._write_checkpoint(self._whole(state, int(state["round"])))

    def _whole(self, state: dict, round_: int, record: dict | None = None) -> RoundFiles:
        checkpoint_id = os.urandom(8).hex()
        extra = {CHECKPOINT_ID: checkpoint_id, **({"record": record} if record is not None else {})}
        return RoundFiles(record or {}, self.form.dumps({**state, **extra}), round_, checkpoint_id=checkpoint_id)

    def _consensus(self, state: dict, round_: int, record: dict) -> RoundFiles:
        """The state without the optimizer's moments, which the whole checkpoint holds unchanged."""
        assert self.checkpoint_id is not None
        local = {key: value for key, value in state["local"].items() if key != OPTIMIZER}
        light = {**state, "local": local, "record": record, BASE_CHECKPOINT: self.checkpoint_id}
        return RoundFiles(record, self.form.dumps(light), round_, base=self.checkpoint_id)

    def _write_checkpoint(self, files: RoundFiles) -> None:
        if files.base is None:
            self.store.write(CHECKPOINT, files.checkpoint)
            self.checkpoint_id = files.checkpoint_id
            if self.consensus_on_disk:  # stale now (made over another id): a lost removal is harmless
                try:
                    self.store.delete(CONSENSUS_CHECKPOINT)
                    self.consensus_on_disk = False
                except OSError:  # so is one that failed: the next whole checkpoint tries again
                    pass
        else:
            if files.base != self.checkpoint_id:  # raised, not asserted: it would be a state no restart finds
                raise AssertionError("a consensus checkpoint is written over the whole checkpoint it was made for")
            self.store.write(CONSENSUS_CHECKPOINT, files.checkpoint)
            self.consensus_on_disk = True
        self.checkpoint_round = files.next_round

    def load_checkpoint(self) -> dict | None:
        """The state of the last checkpoint written: the whole one, or a consensus round's made over it
        (with the whole one's optimizer). A consensus checkpoint of another whole one is stale."""
        data = self.store.read(CHECKPOINT)
        if data is None:
            return None
        state = self._load(data, CHECKPOINT)
        self.checkpoint_id = state.pop(CHECKPOINT_ID, None)  # an earlier build's checkpoint has none
        consensus = self.store.read(CONSENSUS_CHECKPOINT)
        self.consensus_on_disk = consensus is not None
        if consensus is not None and self.checkpoint_id is not None:
            light = self._load(consensus, CONSENSUS_CHECKPOINT)
            if light.pop(BASE_CHECKPOINT, None) == self.checkpoint_id and int(light["round"]) > int(state["round"]):
                state = {**light, "local": {**light["local"], OPTIMIZER: state["local"][OPTIMIZER]}}
        self.checkpoint_round = int(state["round"])
        return state

    def _load(self, data: bytes, what: str) -> dict:
        try:
            return self.form.loads(data)
        except Exception as exc:  # not ours, or from an incompatible version
            raise unreadable(what, exc) from exc

    # write-ahead record -----------------------------------------------------------------------
    def open_round(self, round_: int, local_state: dict | None, candidates: list[str], extras: dict) -> None:
        """``local_state`` None: the checkpoint of ``round_`` (written or read last) holds it, unchanged."""
        if local_state is None:
            if self.checkpoint_round != round_:  # raised, not asserted: python -O must not write a false record
                raise AssertionError("only the checkpoint of the round holds its state")
            local_state = {LOCAL_STATE_IN_CHECKPOINT: round_}
        self.wal = WriteAhead(round_, local_state, sorted(candidates), extras)
        self._write_wal()

    def record_link(self, round_: int, peer_id: str, received: Received, final: bool) -> None:
        """Before a commit (client, ``final=False``) or an ack (server, ``final=True``): the payload
        as it arrived, which decodes to ``received.tensors`` again."""
        assert self.wal is not None and self.wal.round == round_, "a link is recorded in the open round"
        assert received.payload is not None and received.factors, "a link is recorded as it came: payload, factors"
        counts = {"degree": received.degree, "bytes": received.payload_bytes, "final": final}
        record = {
            "round": round_,
            "nonce": self.wal.nonce,
            "peer": peer_id,
            "payload": _as_uint8(received.payload),
            # an int8 payload does not name its tensors: a restart checks it reads them as these factors
            "factors": list(received.factors),
            **counts,
        }
        self.store.append_record(WAL_LINKS, self.form.dumps(record))
        self.wal.links[peer_id] = {"tensors": received.tensors, **counts}

    def _write_wal(self) -> None:
        assert self.wal is not None
        self.store.write(WAL, self.form.dumps(self.wal.as_dict()))

    def load_wal(self) -> WriteAhead | None:
        data = self.store.read(WAL)
        if data is None:
            return None
        state = self._load(data, WAL)
        round_, nonce = int(state["round"]), str(state.get("nonce", ""))
        links = dict(state.get("links", {}))  # a WAL of an earlier build kept its links inside
        for record in self.store.records(WAL_LINKS):
            link = self._load(record, WAL_LINKS)
            # this record's links only: not an earlier round's (a power cut undid their clearing), nor
            # those of another record of the same round (files of a run started over in this folder)
            if (link.pop("round"), link.pop("nonce", "")) == (round_, nonce):
                links[link.pop("peer")] = link
        extras = dict(state.get("extras", {}))
        return WriteAhead(round_, state["local_state"], list(state["candidates"]), extras, links, nonce)

    def discard_wal(self) -> None:
        self.store.delete(WAL)
        self.store.clear_records(WAL_LINKS)
        self.wal = None

    def round_files(self, record: dict, next_state: dict, optimizer_unchanged: bool = False) -> RoundFiles:
        """A finished round's files, encoded now (``finish_round`` writes them). Nothing may change
        ``record`` after: its line is written from it. ``optimizer_unchanged``: the round trained
        nothing, so the optimizer's moments are those of the whole checkpoint on disk: a consensus
        checkpoint leaves them out (MiniLM's AdamW moments are two thirds of its state; a large
        adapter's, twice its factors)."""
        round_ = int(next_state["round"])
        if optimizer_unchanged and self.checkpoint_id is not None:
            return self._consensus(next_state, round_, record)
        return self._whole(next_state, round_, record)

    def finish_round(self, files: RoundFiles) -> None:
        """The next round's checkpoint (holding this round's line), then the line, then the WAL goes."""
        self._write_checkpoint(files)
        self.log_round(files.record)
        self.discard_wal()

    def log_round(self, record: dict) -> None:
        """Append a round's line unless it is the last one there (a restart after a crash between the
        checkpoint and the line writes it from the checkpoint; exactly once either way)."""
        if self.last_logged_round is None or record["round"] > self.last_logged_round:
            self.store.append_line(ROUNDS_LOG, strict_json.dumps(record))
            self.last_logged_round = record["round"]

    def append_event(self, record: dict) -> None:
        """What happens between rounds (a jump forward, a link settled after the last round), in
        ``events.jsonl``: ``rounds.jsonl`` keeps one line per round."""
        self.store.append_line(EVENTS_LOG, strict_json.dumps(record))

    def _scan_last_logged_round(self) -> int | None:
        lines = self.store.lines(ROUNDS_LOG)
        return int(json.loads(lines[-1])["round"]) if lines else None

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.store.lines(ROUNDS_LOG)]
