"""Mixed precision for the frozen base model's arithmetic: which dtype, and the autocast around it.

``--precision`` chooses the dtype that the forward and backward passes compute in; the LoRA factors
(what travels and what is checkpointed), the head and the optimizer state stay fp32 whatever it is,
so peers with different hardware exchange the same tensors and a checkpoint does not depend on it.

- ``fp32``: no autocast.
- ``bf16``: ``torch.autocast`` with bfloat16. Same exponent range as fp32, so no loss scaling.
- ``fp16``: CUDA only, with a gradient scaler (fp16's range is narrow enough for small LoRA
  gradients to underflow without one).
- ``auto`` (default): bf16 where the hardware computes it natively (a CUDA GPU that supports it, a CPU
  with AVX512-BF16 or AMX), fp16 on an older CUDA GPU, else fp32. The choice follows from the
  hardware's flags only, never from a timing, so that every process of a run on the same machine
  picks the same and the simulator and the daemon stay bit-identical.

Why ``auto`` refuses bf16 on other CPUs: PyTorch emulates it there. Measured on this project's
machine (AVX2, no AVX512): a MiniLM training step took 10.8 s in bf16 against 0.43 s in fp32. On a
CPU with AVX512-BF16 it is 1.5x faster than fp32 with the same loss curve (``machine-notes``).
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path

import torch

from peer.errors import ConfigError


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


_DTYPES = {Precision.FP32: None, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_computes_bf16_natively() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (bf16 matrix units); False where bf16 is emulated."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    try:  # PyTorch builds without the probes: the kernel's flags (Linux)
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def resolve_precision(name: str | Precision, device: torch.device) -> Precision:
    """The concrete precision (never ``auto``) for ``device``; a choice the device cannot run is an error."""
    precision = Precision(name)
    if precision is Precision.AUTO:
        if device.type == "cuda":
            return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
        return Precision.BF16 if device.type == "cpu" and cpu_computes_bf16_natively() else Precision.FP32
    if precision is Precision.FP16 and device.type != "cuda":
        raise ConfigError(f"precision fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32")
    return precision


def compute_dtype(precision: Precision) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32 (no autocast)."""
    return _DTYPES[precision]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The context the forward pass runs in: autocast to the precision's dtype, or nothing for fp32."""
    dtype = compute_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def gradient_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A scaler that is active only for fp16 (a no-op pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision is Precision.FP16)
