"""Names of the two LoRA factors and how a tensor name tells which factor it belongs to.

A LoRA update is ``ΔW = B·A`` with ``A: r×d_in`` and ``B: d_out×r``. PEFT names the tensors
``...lora_A.weight`` and ``...lora_B.weight`` (also ``lora_embedding_A/B`` for embeddings).
"""

A = "A"
B = "B"
FACTORS = (A, B)


def factor_of(tensor_name: str) -> str:
    """Return ``"A"`` or ``"B"`` for a PEFT LoRA tensor name; raise ValueError for anything else."""
    if "lora_A" in tensor_name or "lora_embedding_A" in tensor_name:
        return A
    if "lora_B" in tensor_name or "lora_embedding_B" in tensor_name:
        return B
    raise ValueError(f"{tensor_name!r} is not a LoRA factor tensor (expected 'lora_A' or 'lora_B' in its name)")


def select(tensors: dict, factors) -> dict:
    """The subset of ``tensors`` (name -> array) that belongs to the given factors."""
    wanted = frozenset(factors)
    return {name: value for name, value in tensors.items() if factor_of(name) in wanted}
