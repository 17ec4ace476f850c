"""Names of the blocks a peer trains and mixes, and how a tensor name tells which block it is in.

A LoRA update is ``ΔW = B·A`` with ``A: r×d_in`` and ``B: d_out×r``. PEFT names the tensors
``...lora_A.weight`` and ``...lora_B.weight`` (also ``lora_embedding_A/B`` for embeddings).

When the run trains the classification head (``--train-head 1``), the head is a third block, ``H``.
It is an ordinary linear layer: averaging it has no cross term, so every strategy trains and mixes it
in every round, beside whatever factors the round's plan names. Its tensors travel under their PEFT
name with ``HEAD_PREFIX`` in front, which is how ``factor_of`` tells them apart from the factors.
"""

from enum import StrEnum
from functools import lru_cache


class Block(StrEnum):
    """A block of tensors that trains and travels as one: a LoRA factor, or the head."""

    A = "A"
    B = "B"
    HEAD = "H"


class Phase(StrEnum):
    """What a round trains, as headers, logs and metrics name it: one factor, or both (``lora``,
    ``fedsa``)."""

    A = "A"
    B = "B"
    AB = "AB"


A, B, HEAD = Block.A, Block.B, Block.HEAD
FACTORS = (A, B)
HEAD_PREFIX = "head/"


# names a peer checks are its adapter's, and each name is looked up a dozen times a round (``select``,
# ``blocks_of``): kept once; a neighbour's odd names are refused earlier, and the cache is bounded anyway
_NAMES_KEPT = 4096


@lru_cache(maxsize=_NAMES_KEPT)
def factor_of(tensor_name: str) -> Block:
    """Return ``"A"``, ``"B"`` or ``"H"`` for a tensor name; raise ValueError for anything else."""
    if tensor_name.startswith(HEAD_PREFIX):
        return HEAD
    if "lora_A" in tensor_name or "lora_embedding_A" in tensor_name:
        return A
    if "lora_B" in tensor_name or "lora_embedding_B" in tensor_name:
        return B
    raise ValueError(f"{tensor_name!r} is not a LoRA factor tensor (expected 'lora_A' or 'lora_B' in its name)")


def select(tensors: dict, factors) -> dict:
    """The subset of ``tensors`` (name -> array) that belongs to the given factors."""
    wanted = frozenset(factors)
    return {name: value for name, value in tensors.items() if factor_of(name) in wanted}


def blocks_of(tensors) -> tuple[str, ...]:
    """The blocks (``A``, ``B``, ``H``) that the named tensors belong to, sorted."""
    return tuple(sorted({factor_of(name) for name in tensors}))
