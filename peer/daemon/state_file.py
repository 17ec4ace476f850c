"""A peer's state as bytes: one safetensors file, whose metadata holds everything that is not a tensor.

A checkpoint, a round's write-ahead record and each of its links' records are nested dicts and lists
of tensors and plain values, written several times a round. ``torch.save`` pickles each tensor as a
record of its own: for MiniLM's adapter with its AdamW moments (about 100 small tensors) that is
2.5 to 3.5 ms a state, about a fifth of a consensus round's CPU among 4 daemons on 2 cores
(``benchmarks/README.md``, section 5). Here the tensors are laid end to end in one buffer, in the
safetensors layout (a JSON header names each one's dtype, shape and byte range), and the rest of
the state is JSON in the header's metadata, each tensor replaced by its index. Writing copies each
tensor once; reading parses JSON and views the one buffer: no pickle, so nothing in a file can run
code. A digest of every byte but its own makes a flipped byte anywhere an error, never a different
value (``torch.save``'s zip checks none).

The values a state may hold are those ``peer.daemon.checkpoint.loadable`` lets through: tensors,
``str``, ``int``, ``float`` (NaN too), ``bool``, ``None``, ``bytes``, ``torch.dtype``,
``torch.device``, in dicts (any such keys), lists, tuples and sets; each comes back as it went in,
tensors on CPU.
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
from enum import Enum
from typing import Any

import torch
import xxhash

from peer.errors import TadloraError
from peer.transport.codec import MAX_DIMENSION_SIZE, MAX_DIMENSIONS, SAFETENSORS_DTYPES, layout_json

# Metadata keys of the safetensors header; a reader of plain safetensors sees the tensors by index.
TREE_KEY = "tadlora-state"
DIGEST_KEY = "tadlora-digest"
_METADATA = "__metadata__"
_NO_DIGEST = "0" * 16  # where the digest goes, while the digest is computed: xxh3-64 in hex
_LENGTH = struct.Struct("<Q")
# the data starts at a multiple of 8, and tensors go widest dtype first: each starts aligned
_ALIGNMENT = 8
# A value the JSON cannot hold as itself is a one-key object whose key starts with this character; a
# dict whose own keys are not all plain strings free of it is written as a list of pairs instead.
_TAG = "\x00"
TENSOR, PAIRS, TUPLE, SET, BYTES, DTYPE, DEVICE = (
    _TAG + name for name in ("tensor", "pairs", "tuple", "set", "bytes", "dtype", "device")
)
# the format's dtypes, and the bounds on the dimensions a header may claim, as the wire codec has them
_DTYPES = SAFETENSORS_DTYPES


class StateFileError(TadloraError, ValueError):
    """Bytes that are not a whole state file of this format: torn, corrupted or foreign."""


def dumps(state: Any) -> bytearray:
    """``state`` (tensors and the plain values ``checkpoint.loadable`` lets through) as one file's
    bytes; a TypeError for any other value."""
    tensors: list[torch.Tensor] = []
    tree = json.dumps(_encode(state, tensors), separators=(",", ":"))
    cpu = {str(i): _contiguous_on_cpu(t) for i, t in enumerate(tensors)}
    order, members, end = layout_json(cpu)
    header = _header(members, tree)
    buffer = bytearray(_LENGTH.size + len(header) + end)
    start = len(buffer) - end
    buffer[: _LENGTH.size] = _LENGTH.pack(len(header))
    _copy_into(buffer, start, [cpu[name] for name in order])
    digest = _digest(header, memoryview(buffer)[start:])
    buffer[_LENGTH.size : start] = header.replace(_digest_field(_NO_DIGEST), _digest_field(digest))
    return buffer


def loads(data: bytes | bytearray | memoryview) -> Any:
    """The state that ``dumps`` wrote, its tensors on CPU; a ``StateFileError`` for anything else."""
    buffer = bytearray(data)  # the tensors view it: writable, and the caller's bytes stay as they were
    header, start = _read_header(buffer)
    metadata = header.pop(_METADATA, None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get(TREE_KEY), str):
        raise StateFileError("a safetensors file without a tadlora state in its metadata")
    tree, digest = metadata[TREE_KEY], metadata.get(DIGEST_KEY)
    if not _digest_matches(buffer, start, digest):
        raise StateFileError("its digest does not match its content: the file was altered or torn")
    tensors = {name: _tensor(buffer, start, name, entry) for name, entry in header.items()}
    try:
        return _decode(json.loads(tree), tensors)
    except (TypeError, ValueError, KeyError, RuntimeError, RecursionError) as exc:  # keys, tags, devices
        raise StateFileError(f"its state does not decode ({type(exc).__name__}: {str(exc)[:80]})") from None


def is_state_file(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts like this format (a safetensors header) rather than like a zip."""
    return len(data) >= _LENGTH.size + 1 and bytes(data[_LENGTH.size : _LENGTH.size + 1]) == b"{"


# -------------------------------------------------------------------------------------- writing


def _encode(value: Any, tensors: list[torch.Tensor]) -> Any:
    """``value`` as its JSON tree, its tensors appended to ``tensors``. The protocol's enumerations
    (values and keys) become the plain values they stand for, as ``checkpoint.loadable`` has them: one
    walk of the state, not a checked copy and then a walk of the copy (which cost twice this walk)."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return {TENSOR: len(tensors) - 1}
    kind = type(value)
    if kind is dict:
        if not _keys_are_plain_strings(value):
            value = {_plain(key): item for key, item in value.items()}
            if not _keys_are_plain_strings(value):
                return {PAIRS: [[_encode(key, tensors), _encode(item, tensors)] for key, item in value.items()]}
        return {key: _encode(item, tensors) for key, item in value.items()}
    if kind is list:
        return [_encode(item, tensors) for item in value]
    if kind in (tuple, set):
        return {TUPLE if kind is tuple else SET: [_encode(item, tensors) for item in value]}
    if kind is bytes:
        return {BYTES: value.hex()}
    if kind is torch.dtype:
        return {DTYPE: str(value).removeprefix("torch.")}
    if kind is torch.device:
        return {DEVICE: str(value)}
    if kind in (str, int, float, bool, type(None)):
        return value
    if isinstance(value, Enum) and isinstance(value, str | int):
        return value.value
    raise TypeError(f"a state holds no {kind.__name__}")  # dump_state then asks loadable() where it sits


def _keys_are_plain_strings(value: dict) -> bool:
    """Whether a dict can be a JSON object as it is: string keys, none of them starting with the tag."""
    return all(type(key) is str and not key.startswith(_TAG) for key in value)


def _plain(key: Any) -> Any:
    """A dict key as ``checkpoint.loadable`` writes it: an enumeration's plain value."""
    return key.value if isinstance(key, Enum) and isinstance(key, str | int) else key


def _contiguous_on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    # most of a state's tensors are so already: three torch calls each cost more than the copy
    return tensor if tensor.is_cpu and tensor.is_contiguous() else tensor.detach().cpu().contiguous()


def _header(members: str, tree: str) -> bytes:
    """The JSON header (the metadata, then the tensors' entries, ``members`` of ``layout_json``) with a
    placeholder digest of the same width as a digest, padded with spaces (which the format allows)
    so that the data starts aligned."""
    metadata = json.dumps({_METADATA: {TREE_KEY: tree, DIGEST_KEY: _NO_DIGEST}}, separators=(",", ":"))
    encoded = (metadata[:-1] + ("," + members if members else "") + "}").encode()
    return encoded + b" " * (-(_LENGTH.size + len(encoded)) % _ALIGNMENT)


def _copy_into(buffer: bytearray, start: int, tensors: list[torch.Tensor]) -> None:
    """Each tensor's bytes one after the other from ``start``: one memmove of each CPU tensor's memory
    (slicing a torch view of the buffer per tensor cost 2.5 times as long for 100 small tensors)."""
    if not tensors:
        return
    window = (ctypes.c_char * (len(buffer) - start)).from_buffer(buffer, start)
    try:
        at = ctypes.addressof(window)
        for tensor in tensors:
            size = tensor.numel() * tensor.element_size()
            if size:
                ctypes.memmove(at, tensor.data_ptr(), size)
                at += size
    finally:
        del window  # lets the bytearray be resized again


def _digest(header: bytes, data: bytes | memoryview) -> str:
    """Of the header as written with the placeholder, and of the data: every byte but the digest's."""
    digest = xxhash.xxh3_64(header)
    digest.update(data)
    return digest.hexdigest()


def _digest_field(digest: str) -> bytes:
    # the tree is a JSON string inside the header, its quotes escaped: this can occur only once
    return f'"{DIGEST_KEY}":"{digest}"'.encode()


def _digest_matches(buffer: bytearray, start: int, digest: object) -> bool:
    if not isinstance(digest, str) or len(digest) != len(_NO_DIGEST):
        return False
    header = bytes(buffer[_LENGTH.size : start])
    if header.count(_digest_field(digest)) != 1:
        return False
    written = header.replace(_digest_field(digest), _digest_field(_NO_DIGEST))
    return _digest(written, memoryview(buffer)[start:]) == digest


# -------------------------------------------------------------------------------------- reading


def _read_header(buffer: bytearray) -> tuple[dict, int]:
    if len(buffer) < _LENGTH.size:
        raise StateFileError(f"{len(buffer)} bytes: too short for a state file")
    (length,) = _LENGTH.unpack_from(buffer)
    start = _LENGTH.size + length
    if start > len(buffer):
        raise StateFileError(f"its header claims {length} bytes, beyond the file's {len(buffer)}")
    try:
        header = json.loads(bytes(buffer[_LENGTH.size : start]))
    except (ValueError, RecursionError) as exc:  # a UnicodeDecodeError is a ValueError
        raise StateFileError(f"its header is not JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise StateFileError("its header is not a JSON object")
    return header, start


def _tensor(buffer: bytearray, start: int, name: str, entry: Any) -> torch.Tensor:
    try:
        dtype, shape, (begin, end) = _DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
        if len(shape) > MAX_DIMENSIONS or not all(type(n) is int and 0 <= n < MAX_DIMENSION_SIZE for n in shape):
            raise ValueError("dimensions are counts")
        if not all(type(n) is int and n >= 0 for n in (begin, end)):
            raise ValueError("offsets are counts")  # and within the file: checked below
    except (TypeError, KeyError, ValueError) as exc:
        raise StateFileError(f"tensor {name[:20]!r} is not described by a dtype, shape and offsets ({exc})") from None
    count, size = math.prod(shape), end - begin
    if count * dtype.itemsize != size or start + end > len(buffer) or begin > end:
        raise StateFileError(f"tensor {name[:20]!r}: {shape} of {dtype} does not fit bytes {begin} to {end}")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype, count=count, offset=start + begin).reshape(shape)


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key.startswith(_TAG):
            return _decode_tagged(key, inner, tensors)
    return {key: _decode(item, tensors) for key, item in value.items()}


def _decode_tagged(tag: str, inner: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if tag == TENSOR:
        return tensors[str(inner)]
    if tag == PAIRS:
        return {_decode(key, tensors): _decode(item, tensors) for key, item in inner}
    if tag in (TUPLE, SET):
        items = (_decode(item, tensors) for item in _listed(inner))
        return tuple(items) if tag == TUPLE else set(items)
    if tag == BYTES:
        return bytes.fromhex(inner)
    if tag == DTYPE:
        dtype = getattr(torch, str(inner), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{str(inner)[:20]!r} is not a torch dtype")
        return dtype
    if tag == DEVICE:
        return torch.device(str(inner))
    raise ValueError(f"unknown tag {tag[1:20]!r}")


def _listed(value: Any) -> list:
    if not isinstance(value, list):
        raise TypeError("a tuple or set is written as a list")
    return value
