"""Factor tensors on the wire: safetensors bytes, a schema digest, and validation on arrival.

The payload of a message is one safetensors file holding the factors being sent, with PEFT's
adapter-free tensor names, each in the wire form the sender chose (``--wire-dtype``: fp32, bf16,
fp16), or, for int8, two tensors that pack every factor in the order of their names
(``peer.algorithm.compression``). The receiver checks it against its own adapter's schema before
anything touches the model: names, wire dtypes, shapes (an int8 message: its total size against the
factors announced), finite values; then decodes it to the local dtype. Any failure is a ``DecodeError`` whose
``reason`` is a short stable code (for counters) and whose message says what was wrong.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
from collections.abc import Mapping
from functools import lru_cache

import torch
import xxhash

from peer.algorithm.compression import (
    INT8_SCALE_DTYPE,
    INT8_SCALES,
    INT8_VALUES,
    PACKED_INT8,
    WireDtype,
    compress,
    decompress,
    int8_blocks,
    is_packed_int8,
)
from peer.errors import TadloraError
from peer.transport.base import Reason, shown

# bytes, bytearray, memoryview: what a payload may be (typing.Buffer once 3.12 is the floor)
Buffer = bytes | bytearray | memoryview

Schema = dict[str, tuple[str, tuple[int, ...]]]

# The safetensors format: an 8-byte little-endian header length, a JSON header naming each tensor's
# dtype, shape and byte range, the data. Only the dtypes a factor may travel in are read.
_SAFETENSORS_CODE = {
    torch.float64: "F64",  # the fault simulator's stand-in peers: float64 keeps their sums tight
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int8: "I8",
}
# read: every dtype of the format, so that a tensor of another dtype is refused as such (tensor-dtype);
# a peer's state files (``peer.daemon.state_file``) hold any of them
SAFETENSORS_DTYPES = {
    **{code: dtype for dtype, code in _SAFETENSORS_CODE.items()},
    **{"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "U8": torch.uint8},
    "BOOL": torch.bool,
}
SAFETENSORS_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
_METADATA_KEY = "__metadata__"
_HEADER_ALIGNMENT = 8
# a header names each tensor in ~100 bytes: 16 MiB is far beyond any adapter's, and bounds the parse
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
# a tensor of no elements may still name absurd dimensions ([0, 2**70]): bounded before torch sees them
MAX_DIMENSIONS = 8
MAX_DIMENSION_SIZE = 1 << 40
# a float factor travels as its own dtype or in a compressed form (``peer.algorithm.compression``)
_FLOATS = ("float64", "float32", "bfloat16", "float16")
_HALF_FORMS = ("bfloat16", "float16")


class DecodeError(TadloraError, ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def schema_of(tensors: Mapping[str, torch.Tensor]) -> Schema:
    return {name: (str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in tensors.items()}


def schema_digest(schema: Schema) -> bytes:
    """sha256 over the sorted (name, dtype, shape) triples: equal iff two adapters can mix."""
    h = hashlib.sha256()
    for name in sorted(schema):
        dtype, shape = schema[name]
        h.update(f"{name}|{dtype}|{','.join(map(str, shape))}\n".encode())
    return h.digest()


def encode_factors(tensors: Mapping[str, torch.Tensor], wire: WireDtype = WireDtype.FP32) -> bytes:
    """One safetensors file of ``tensors`` as they travel in ``wire`` form (``compress``), written
    with one copy of the data: the header, then each tensor's bytes joined after it (widest types
    first, so every tensor sits at an offset aligned to its type; any safetensors reader loads it)."""
    sent = {name: t.detach().to("cpu").contiguous() for name, t in compress(tensors, wire).items()}
    order, members, _ = layout_json(sent)
    header = ("{" + members + "}").encode()
    header += b" " * (-len(header) % _HEADER_ALIGNMENT)  # the data starts aligned, as safetensors pads it
    parts: list[bytes | memoryview] = [len(header).to_bytes(8, "little"), header]
    parts += [sent[name].reshape(-1).view(torch.uint8).numpy().data for name in order]
    return b"".join(parts)


def safetensors_layout(tensors: Mapping[str, torch.Tensor]) -> tuple[list[str], dict[str, dict], int]:
    """Where each of ``tensors`` (CPU, contiguous) goes in a safetensors file, as the wire codec and a
    peer's state files (``peer.daemon.state_file``) both lay them out: the names widest dtype first,
    then by name, so that each tensor starts at an offset aligned to its type; each one's header entry
    (dtype, shape, byte range); and the data's size. A dtype the format lacks is a TypeError."""
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    entries, offset = {}, 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in SAFETENSORS_CODES:
            raise TypeError(f"safetensors holds {', '.join(map(str, SAFETENSORS_CODES))}, not {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": SAFETENSORS_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    return order, entries, offset


# layouts kept (``layout_json``): a peer's messages and its state files repeat a handful of them
_LAYOUTS_KEPT = 32


def layout_json(tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, ...], str, int]:
    """``safetensors_layout``'s order and data size, and its header entries as JSON members (the
    object without its braces), kept per set of names, dtypes and shapes: a peer's messages and its
    states repeat the same few every round, and building the entries and their JSON again cost 0.2 ms
    of a consensus round's checkpoint (its 104 tensors) and 0.1 ms of each message."""
    return _layout_json(tuple((name, t.dtype, t.shape) for name, t in tensors.items()))


@lru_cache(maxsize=_LAYOUTS_KEPT)
def _layout_json(signature: tuple[tuple[str, torch.dtype, torch.Size], ...]) -> tuple[tuple[str, ...], str, int]:
    stand_ins = {name: torch.empty(shape, dtype=dtype, device="meta") for name, dtype, shape in signature}
    order, entries, end = safetensors_layout(stand_ins)
    return tuple(order), json.dumps(entries, separators=(",", ":"))[1:-1], end


def payload_digest(payload: bytes) -> bytes:
    """The payload checksum carried in headers: xxh3-128. It catches corruption and bugs at ~10x the
    speed of sha256; it is not a defence against tampering (an attacker on the path rewrites the
    header as easily as the payload): mutual TLS is (see peer/transport/tls.py)."""
    return xxhash.xxh3_128_digest(payload)


# CPython's constructor leaves a new bytearray's bytes as malloc gave them when it is given no source
_new_bytearray = getattr(getattr(ctypes, "pythonapi", None), "PyByteArray_FromStringAndSize", None)
if _new_bytearray is not None:
    _new_bytearray.argtypes, _new_bytearray.restype = (ctypes.c_char_p, ctypes.c_ssize_t), ctypes.py_object


def unfilled_bytearray(size: int) -> bytearray:
    """A bytearray of ``size`` bytes, not zeroed: for a payload received whole before any of it is
    read (a receive that ends short raises, and its buffer is dropped), on the lane or in chunks.
    ``bytearray(size)`` zeroes it, which held the event loop 2 ms at 30 MB and 13 ms at 200 MB (on
    the lane, ahead of the other direction's start).

    Call it on the main thread, where the event loop runs: glibc serves another thread's allocation
    of over 64 MiB with a mapping of its own (``peer.daemon.memory``), unmapped again when freed; a
    lane that made its buffer in its receiving thread held the loop 10 ms at each next swap's start
    at 200 MB."""
    if _new_bytearray is None:  # not CPython
        return bytearray(size)
    return _new_bytearray(None, size)


def new_payload_digest():
    """An incremental ``payload_digest`` (update chunk by chunk, then ``digest()``)."""
    return xxhash.xxh3_128()


def decode_factors(
    payload: Buffer, schema: Schema, expected_names: set[str] | None = None, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Parse and validate a payload against the local ``schema``; the factors in the local dtype.

    ``payload``: any bytes-like object; a writable one (``bytearray``) is read in place, without a copy.
    Each tensor may arrive in any ``WireDtype`` form; it comes back as the local dtype.
    ``expected_names``: exactly these tensors must be present (the factors the header announced; an
    int8 message carries them without their names, so it needs them). ``device``: where the returned
    tensors go (the adapter's device), so that they meet the own factors without a device mismatch;
    None leaves them on CPU. Validation runs on CPU before the move: a refused payload never costs a
    transfer to the accelerator.
    """
    tensors, spans = _parse_safetensors(payload)
    if is_packed_int8(tensors):
        if expected_names is None:
            raise DecodeError(Reason.TENSOR_NAMES, "an int8 message, and no announced factors to read it as")
        shapes = _check_packed_int8(tensors, schema, expected_names)
        decoded = _in_local_dtypes(decompress(tensors, shapes), schema)
        for name, tensor in decoded.items():  # finite scales times 127 may still overflow the local type
            _check_finite(name, tensor)
    else:
        _check_names(tensors, schema, expected_names)
        for name, tensor in tensors.items():
            _check_tensor(name, tensor, schema)
        _check_all_finite(tensors, spans)
        decoded = _in_local_dtypes(decompress(tensors), schema)
    if device is None:
        return decoded
    return {name: tensor.to(device) for name, tensor in decoded.items()}


def _parse_safetensors(payload: Buffer) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The tensors of a safetensors file, read in place where the buffer allows it, and its float
    spans (``_float_spans``); DecodeError for anything that is not a well-formed file of the dtypes a
    factor may travel in."""
    view = memoryview(payload).cast("B")
    if view.readonly:  # torch reads only writable buffers in place (one copy, as any decoder makes)
        view = memoryview(bytearray(view))
    if len(view) < 8:
        raise DecodeError(Reason.MALFORMED_PAYLOAD, f"{len(view)} bytes: shorter than a safetensors header")
    size = int.from_bytes(view[:8], "little")
    if size > min(len(view) - 8, MAX_SAFETENSORS_HEADER_BYTES):
        raise DecodeError(Reason.MALFORMED_PAYLOAD, f"a header of {size} bytes in a payload of {len(view)}")
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
    except (ValueError, RecursionError):
        raise DecodeError(Reason.MALFORMED_PAYLOAD, "the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise DecodeError(Reason.MALFORMED_PAYLOAD, "the safetensors header is not a JSON object")
    start = 8 + size
    entries = {name: entry for name, entry in header.items() if name != _METADATA_KEY}
    tensors = {name: _tensor_at(view, start, name, entry) for name, entry in entries.items()}
    return tensors, _float_spans(view, start, entries, tensors)


def _float_spans(view: memoryview, start: int, entries: dict, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The float tensors' bytes as few tensors as their layout allows: each a run of tensors of one
    dtype that lie end to end (``encode_factors`` writes all factors as one such run), so that the
    finite check is one pass per run instead of a dozen torch calls per tensor (entries were checked
    by ``_tensor_at``)."""
    floats = sorted(
        (int(entries[name]["data_offsets"][0]), int(entries[name]["data_offsets"][1]), tensor.dtype)
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and tensor.numel()
    )
    runs: list[list] = []
    for first, last, dtype in floats:
        if runs and runs[-1][1] == first and runs[-1][2] == dtype:
            runs[-1][1] = last
        else:
            runs.append([first, last, dtype])
    return [
        torch.frombuffer(view, dtype=dtype, count=(last - first) // dtype.itemsize, offset=start + first)
        for first, last, dtype in runs
    ]


def _in_local_dtypes(floats: Mapping[str, torch.Tensor], schema: Schema) -> dict[str, torch.Tensor]:
    wanted = {name: _torch_dtype(schema[name][0]) for name in floats}
    return {name: t if t.dtype == wanted[name] else t.to(wanted[name]) for name, t in floats.items()}


def _tensor_at(view: memoryview, start: int, name: str, entry: object) -> torch.Tensor:
    """One header entry's tensor, a view of ``view`` (no copy)."""
    try:
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]  # type: ignore[index]
        shape = entry["shape"]  # type: ignore[index]
        first, last = entry["data_offsets"]  # type: ignore[index]
        # JSON gives ints as ints: a float, a bool or a string where a count belongs is malformed
        if not (type(shape) is list and len(shape) <= MAX_DIMENSIONS and type(first) is int and type(last) is int):
            raise ValueError
        if not all(type(d) is int and 0 <= d < MAX_DIMENSION_SIZE for d in shape) or not (
            0 <= first <= last <= len(view) - start
        ):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise DecodeError(Reason.MALFORMED_PAYLOAD, f"bad safetensors entry for {shown(str(name), 80)}") from None
    numel = math.prod(shape)
    if (last - first) != numel * dtype.itemsize:
        raise DecodeError(Reason.MALFORMED_PAYLOAD, f"{shown(name, 80)}: {last - first} bytes for shape {shape}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(view, dtype=dtype, count=numel, offset=start + first).reshape(shape)


def _check_known(names: set[str], schema: Schema) -> None:
    unknown = names - set(schema)
    if unknown:
        raise DecodeError(Reason.TENSOR_NAMES, f"tensors not in the local adapter: {_names(unknown)}")


def _check_names(tensors: Mapping[str, torch.Tensor], schema: Schema, expected: set[str] | None) -> None:
    _check_known(set(tensors), schema)
    if expected is not None and set(tensors) != expected:
        missing, extra = expected - set(tensors), set(tensors) - expected
        what = f"missing announced tensors: {_names(missing)}" if missing else f"tensors not announced: {_names(extra)}"
        raise DecodeError(Reason.TENSOR_NAMES, what)


def _names(names: set[str]) -> list[str]:
    """The first few of ``names``, each cut short: a peer's names in an error stay one short line."""
    return [shown(name, 80) for name in sorted(names)[:3]]


def _check_tensor(name: str, tensor: torch.Tensor, schema: Schema) -> None:
    dtype, shape = schema[name]
    wire = str(tensor.dtype).removeprefix("torch.")
    if wire != dtype and not (dtype in _FLOATS and wire in _HALF_FORMS):
        raise DecodeError(Reason.TENSOR_DTYPE, f"{name}: dtype {wire} != local {dtype}")
    if tuple(tensor.shape) != shape:
        raise DecodeError(Reason.TENSOR_SHAPE, f"{name}: shape {tuple(tensor.shape)} != local {shape}")


def _check_all_finite(tensors: Mapping[str, torch.Tensor], spans: list[torch.Tensor]) -> None:
    """One pass per span; only if one holds NaN or Inf, tensor by tensor, to name the one that does."""
    if all(_finite(span) for span in spans):
        return
    for name in sorted(tensors):
        _check_finite(name, tensors[name])


def _check_packed_int8(
    tensors: Mapping[str, torch.Tensor], schema: Schema, names: set[str]
) -> dict[str, tuple[int, ...]]:
    """An int8 message against the factors it stands for: its two tensors and nothing else, int8
    values that count exactly those factors' elements, one finite, non-negative bf16 scale per block
    of each factor. Returns the factors' names and shapes, which ``decompress`` splits the message into."""
    if set(tensors) != PACKED_INT8:
        odd = set(tensors) ^ PACKED_INT8
        only = f"an int8 message holds {INT8_VALUES} and {INT8_SCALES} only"
        raise DecodeError(Reason.TENSOR_NAMES, f"{only}: {_names(odd)}")
    _check_known(names, schema)
    not_float = {name for name in names if schema[name][0] not in _FLOATS}
    if not_float:
        raise DecodeError(Reason.TENSOR_DTYPE, f"int8 for tensors that are not floats: {_names(not_float)}")
    values, scales = tensors[INT8_VALUES], tensors[INT8_SCALES]
    sizes = [math.prod(schema[name][1]) for name in names]
    total, blocks = sum(sizes), sum(int8_blocks(size) for size in sizes)
    if values.dtype != torch.int8 or scales.dtype != INT8_SCALE_DTYPE:
        raise DecodeError(Reason.TENSOR_DTYPE, f"int8 message of {values.dtype} values and {scales.dtype} scales")
    if tuple(values.shape) != (total,) or tuple(scales.shape) != (blocks,):
        raise DecodeError(
            Reason.TENSOR_SHAPE,
            f"int8 message of {tuple(values.shape)} values and {tuple(scales.shape)} scales for {total} values "
            f"in {blocks} blocks",
        )
    _check_finite(INT8_SCALES, scales)
    if scales.numel() and float(scales.min()) < 0:
        raise DecodeError(Reason.MALFORMED_PAYLOAD, "negative int8 scales")
    return {name: schema[name][1] for name in names}


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and tensor.numel() and not _finite(tensor):
        raise DecodeError(Reason.NON_FINITE, f"{name} holds NaN or Inf")


def _finite(tensor: torch.Tensor) -> bool:
    # one pass, nothing allocated (a mask or abs() would be a copy): min and max propagate NaN, and
    # one of them is ±inf if any value is
    return bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all())


@lru_cache(maxsize=len(SAFETENSORS_DTYPES))  # the local schema's names of dtypes: a handful
def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype), name
    return dtype
