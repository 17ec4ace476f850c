"""Compressed gossip: the wire forms a peer's factors may travel in, and how they come back.

A peer sends ``Q(x_i)`` instead of ``x_i``: fp32 (``Q`` is the identity), bf16 or fp16 (half the
bytes) or int8 with one fp32 scale per block of ``INT8_BLOCK`` values (a quarter, plus 1/16 for the
scales). Plain quantized gossip ``x_i <- w_ii x_i + Σ_j w_ij Q(x_j)`` breaks the network-wide sums
that mixing promises: each peer keeps its exact ``x_i`` in the self term but its neighbours saw only
``Q(x_i)``, and the difference is created from nothing every round.

The difference form keeps them exact whatever ``Q`` is (``peer.algorithm.mixing.mix`` with ``sent``):
``x_i <- x_i + Σ_j w_ij (Q(x_j) − Q(x_i))``. Over a link ``(i, j)`` peer ``i`` adds
``w_ij (Q(x_j) − Q(x_i))`` and peer ``j`` adds ``w_ij (Q(x_i) − Q(x_j))``: the same two quantized
values, known bit for bit at both ends (each decodes the very bytes that travelled), so the two terms
cancel exactly and the sum over all peers does not move. What compression costs is only that a peer
moves towards a slightly perturbed neighbour: an error of the order of the quantization step, which
does not accumulate (each round quantizes afresh) and does not bias the network average.

This is CHOCO-gossip's idea (Koloskova, Stich & Jaggi 2019) with the public copy of a peer renewed
every round (``x̂_i = Q(x_i)``) rather than kept and updated by quantized increments: no state per
link, so a topology that changes every round, a crash or a lost link cannot leave two ends with
different copies. The price: the error does not shrink as peers agree, so very coarse compressors
(4 bits, top-k) would need CHOCO's kept copies; bf16 and blockwise int8 do not (see
``benchmarks/README.md``, compressed gossip).

Pure tensor arithmetic, no I/O; the codec (``peer.transport.codec``) puts these forms in safetensors.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import torch

# values per int8 scale: small enough that one large value costs little precision to its block
# (a factor row of MiniLM has 384 values), large enough that the scales add 1/16 to the bytes
INT8_BLOCK = 64
INT8_LEVELS = 127  # symmetric: -127..127, so that 0 is exact and -x quantizes to -Q(x)
# fp16 has no infinity to spare: larger magnitudes are clamped rather than sent as inf (a LoRA
# factor never comes near; a receiver refuses non-finite values)
FP16_MAX = float(torch.finfo(torch.float16).max)
# the name of an int8 tensor's scales: the tensor's own name with this after it
SCALE_SUFFIX = "::scale"


class WireDtype(enum.StrEnum):
    """How factors travel (``--wire-dtype``); mixing itself always runs in fp32."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


WIRE_DTYPES = tuple(w.value for w in WireDtype)
_HALF = {WireDtype.BF16: torch.bfloat16, WireDtype.FP16: torch.float16}


def scale_name(name: str) -> str:
    return name + SCALE_SUFFIX


def int8_blocks(numel: int) -> int:
    """How many scales an int8 tensor of ``numel`` values carries."""
    return -(-numel // INT8_BLOCK)


def _blocked(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` padded with zeros to whole blocks, as ``(blocks, INT8_BLOCK)``."""
    pad = int8_blocks(flat.numel()) * INT8_BLOCK - flat.numel()
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, INT8_BLOCK)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)``: int8 values of ``x``'s shape and one fp32 scale per block of ``INT8_BLOCK``."""
    blocks = _blocked(x.detach().reshape(-1).float())
    scales = blocks.abs().amax(dim=1) / INT8_LEVELS
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero block stays zero
    q = torch.round(blocks / safe[:, None]).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q.reshape(-1)[: x.numel()].reshape(x.shape), scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 values of ``q``'s shape: each value times its block's scale."""
    blocks = _blocked(q.reshape(-1).float())
    return (blocks * scales.float()[:, None]).reshape(-1)[: q.numel()].reshape(q.shape)


def compress(tensors: Mapping[str, torch.Tensor], wire: WireDtype) -> dict[str, torch.Tensor]:
    """The tensors as they travel: cast to a half type, or int8 plus a ``name::scale`` tensor each."""
    if wire == WireDtype.FP32:  # uncompressed: as they are (a float64 test peer keeps its float64)
        return {name: t.detach() for name, t in tensors.items()}
    if wire in _HALF:
        half = _HALF[wire]
        if half == torch.float16:
            return {name: t.detach().float().clamp(-FP16_MAX, FP16_MAX).to(half) for name, t in tensors.items()}
        return {name: t.detach().to(half) for name, t in tensors.items()}
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        out[name], out[scale_name(name)] = quantize_int8(t)
    return out


def decompress(wire_tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors back from ``compress``'s output (each tensor's form is told by its dtype): fp32
    for a compressed one, an uncompressed one as it came."""
    out: dict[str, torch.Tensor] = {}
    for name, t in wire_tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if t.dtype == torch.int8:
            out[name] = dequantize_int8(t, wire_tensors[scale_name(name)])
        else:  # a half type widens to fp32; fp32 (or a float64 test peer's values) stay as they are
            out[name] = t.float() if t.dtype in _HALF.values() else t
    return out


def round_trip(tensors: Mapping[str, torch.Tensor], wire: WireDtype) -> dict[str, torch.Tensor]:
    """``Q(x)``: what a receiver decodes of ``tensors`` sent as ``wire``, bit for bit."""
    return decompress(compress(tensors, wire))


def wire_bytes(numel: int, wire: WireDtype) -> int:
    """Payload bytes (without the safetensors header) of one tensor of ``numel`` values sent as ``wire``."""
    if wire == WireDtype.INT8:
        return numel + 4 * int8_blocks(numel)
    return numel * (2 if wire in _HALF else 4)


__all__ = [
    "INT8_BLOCK",
    "SCALE_SUFFIX",
    "WIRE_DTYPES",
    "WireDtype",
    "compress",
    "decompress",
    "dequantize_int8",
    "quantize_int8",
    "round_trip",
    "scale_name",
    "wire_bytes",
]
