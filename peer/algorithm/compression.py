"""Compressed gossip: the wire forms a peer's factors may travel in, and how they come back.

A peer sends ``Q(x_i)`` instead of ``x_i``: fp32 (``Q`` is the identity), bf16 or fp16 (half the
bytes) or int8 with one bf16 scale per block of ``INT8_BLOCK`` values of a factor (a quarter of
fp32's bytes, plus 1/256 of them for the scales). Plain quantized gossip
``x_i <- w_ii x_i + Σ_j w_ij Q(x_j)`` breaks the network-wide sums that mixing promises: each peer
keeps its exact ``x_i`` in the self term but its neighbours saw only ``Q(x_i)``, and the difference
is created from nothing every round.

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
import math
from collections.abc import Mapping

import torch

# values per int8 scale: small enough that one large value costs little precision to its block
# (a factor row of MiniLM has 384 values), large enough that the scales add 1/256 of fp32's bytes
INT8_BLOCK = 128
INT8_LEVELS = 127  # symmetric: -127..127, so that 0 is exact and -x quantizes to -Q(x)
# the scales travel as bf16: fp32's range in half the bytes (fp16 would flush a factor's small scales
# to zero), each rounded up so that the block's largest value still fits in 127 steps
INT8_SCALE_DTYPE = torch.bfloat16
# fp16 has no infinity to spare: larger magnitudes are clamped rather than sent as inf (a LoRA
# factor never comes near; a receiver refuses non-finite values)
FP16_MAX = float(torch.finfo(torch.float16).max)
# An int8 message is two tensors, whatever it carries: every factor's values, flattened and joined in
# the order of their names, and every factor's block scales joined the same way (a factor's blocks
# are its own: a small bias beside a large weight keeps its precision). The names and shapes are not
# sent again: both ends know them (the header's schema digest and factor blocks), which keeps a small
# adapter's message at a quarter of fp32's instead of paying for each name twice.
INT8_VALUES = "::int8"
INT8_SCALES = "::scale"
PACKED_INT8 = frozenset({INT8_VALUES, INT8_SCALES})


class WireDtype(enum.StrEnum):
    """How factors travel (``--wire-dtype``); mixing itself always runs in fp32."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


WIRE_DTYPES = tuple(w.value for w in WireDtype)
_HALF = {WireDtype.BF16: torch.bfloat16, WireDtype.FP16: torch.float16}


def int8_blocks(numel: int) -> int:
    """How many scales an int8 vector of ``numel`` values carries."""
    return -(-numel // INT8_BLOCK)


def is_packed_int8(wire_tensors: Mapping[str, torch.Tensor]) -> bool:
    """True for an int8 message (``compress``'s two packed tensors) rather than one tensor per factor."""
    return INT8_VALUES in wire_tensors or INT8_SCALES in wire_tensors


def _blocked(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` padded with zeros to whole blocks, as ``(blocks, INT8_BLOCK)``."""
    pad = int8_blocks(flat.numel()) * INT8_BLOCK - flat.numel()
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, INT8_BLOCK)


def quantize_int8(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)`` of a 1-D tensor: int8 values and one bf16 scale per block of ``INT8_BLOCK``."""
    blocks = _blocked(flat.detach().reshape(-1).float())
    exact = blocks.abs().amax(dim=1) / INT8_LEVELS
    scales = exact.to(INT8_SCALE_DTYPE)
    low = scales.float() < exact  # rounded down: take the next bf16 up, never clip the block's largest
    scales = torch.where(low, torch.nextafter(scales, torch.full_like(scales, math.inf)), scales)
    wide = scales.float()
    safe = torch.where(wide > 0, wide, torch.ones_like(wide))  # an all-zero block stays zero
    q = torch.round(blocks / safe[:, None]).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q.reshape(-1)[: flat.numel()], scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 values of the 1-D ``q``: each value times its block's scale."""
    blocks = _blocked(q.reshape(-1).float())
    return (blocks * scales.float()[:, None]).reshape(-1)[: q.numel()]


def compress(tensors: Mapping[str, torch.Tensor], wire: WireDtype) -> dict[str, torch.Tensor]:
    """The tensors as they travel: cast to a half type, or int8 packed into two tensors (``INT8_VALUES``,
    ``INT8_SCALES``) in the order of the names."""
    if wire == WireDtype.FP32:  # uncompressed: as they are (a float64 test peer keeps its float64)
        return {name: t.detach() for name, t in tensors.items()}
    if wire in _HALF:
        half = _HALF[wire]
        if half == torch.float16:
            return {name: t.detach().float().clamp(-FP16_MAX, FP16_MAX).to(half) for name, t in tensors.items()}
        return {name: t.detach().to(half) for name, t in tensors.items()}
    packed = [quantize_int8(tensors[name]) for name in sorted(tensors)]
    values = torch.cat([q for q, _ in packed]) if packed else torch.zeros(0, dtype=torch.int8)
    scales = torch.cat([s for _, s in packed]) if packed else torch.zeros(0, dtype=INT8_SCALE_DTYPE)
    return {INT8_VALUES: values, INT8_SCALES: scales}


def decompress(
    wire_tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, torch.Tensor]:
    """Float tensors back from ``compress``'s output: fp32 for a compressed one (a half type told by
    its dtype, an int8 message by its two names), an uncompressed one as it came. ``shapes``: the
    names and shapes an int8 message carries (the receiver's own, which the message does not repeat);
    its values and scales must count exactly as many (``ValueError`` otherwise)."""
    if not is_packed_int8(wire_tensors):
        # a half type widens to fp32; fp32 (or a float64 test peer's values) stay as they are
        return {name: t.float() if t.dtype in _HALF.values() else t for name, t in wire_tensors.items()}
    if shapes is None:
        raise ValueError("an int8 message needs the names and shapes of the factors it carries")
    values, scales = wire_tensors[INT8_VALUES].reshape(-1), wire_tensors[INT8_SCALES].reshape(-1)
    names = sorted(shapes)
    sizes = [math.prod(shapes[name]) for name in names]
    blocks = [int8_blocks(size) for size in sizes]
    if sum(sizes) != values.numel() or sum(blocks) != scales.numel():
        raise ValueError(
            f"an int8 message of {values.numel()} values and {scales.numel()} scales for factors of "
            f"{sum(sizes)} values in {sum(blocks)} blocks"
        )
    parts = zip(names, values.split(sizes), scales.split(blocks), strict=True)
    return {name: dequantize_int8(q, s).reshape(shapes[name]) for name, q, s in parts}


def round_trip(tensors: Mapping[str, torch.Tensor], wire: WireDtype) -> dict[str, torch.Tensor]:
    """``Q(x)``: what a receiver decodes of ``tensors`` sent as ``wire``, bit for bit (before its cast
    to the local dtype, which is exact for fp32 and float64 adapters)."""
    return decompress(compress(tensors, wire), {name: tuple(t.shape) for name, t in tensors.items()})


def wire_bytes(numel: int, wire: WireDtype) -> int:
    """Payload bytes (without the safetensors header) of a factor of ``numel`` values sent as ``wire``."""
    if wire == WireDtype.INT8:
        return numel + INT8_SCALE_DTYPE.itemsize * int8_blocks(numel)
    return numel * (2 if wire in _HALF else 4)


__all__ = [
    "INT8_BLOCK",
    "INT8_SCALES",
    "INT8_VALUES",
    "PACKED_INT8",
    "WIRE_DTYPES",
    "WireDtype",
    "compress",
    "decompress",
    "dequantize_int8",
    "is_packed_int8",
    "quantize_int8",
    "round_trip",
    "wire_bytes",
]
