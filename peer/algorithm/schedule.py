"""The shared A/B phase schedule and the topology-aware choice of the switching interval T.

Every peer derives the phase from the round number alone, so peers that agree on the round agree on
which factor trains. Rounds count from 0. The schedule starts with a B phase: with B = 0 at
initialisation, the gradient of A is zero, so an A phase first would waste T rounds.

    rounds [0, T)    train B (A frozen)
    rounds [T, 2T)   train A (B frozen)
    ...

Choosing T (``auto``)
---------------------
TAD-LoRA's analysis puts the best interval at T* = Θ(1/√(1−ρ)), ρ the mean-square contraction of
gossip on the topology (``Topology.contraction``): a longer phase gives the frozen factor time to
reach consensus, which removes the cross terms B_j·A_k, while a shorter one reduces the bias of
optimising one block at a time. No constant is published. We use

    T = clip(round(c / √(1−ρ)), 1, T_max),  c = AUTO_SWITCH_CONSTANT = 1.0, T_max = 20

With c = 1 a complete graph (ρ = 0) gets T = 1, a 10-node ring gets T = 2, an Erdős–Rényi graph on 10
nodes gets T = 2 at p = 0.5 and about T = 5 at p = 0.1. ``benchmarks/README.md`` reports how ``auto``
compares with fixed T on sparse graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peer.algorithm.factors import A, B

AUTO_SWITCH_CONSTANT = 1.0
AUTO_SWITCH_MAX = 20


@dataclass(frozen=True)
class PhaseSchedule:
    """Alternating B/A phases of ``interval`` rounds each, B first."""

    interval: int

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"switching interval must be >= 1 round, got {self.interval}")

    def phase(self, round_: int) -> str:
        """``"B"`` or ``"A"``: the factor trained in ``round_``."""
        if round_ < 0:
            raise ValueError(f"rounds count from 0, got {round_}")
        return B if (round_ // self.interval) % 2 == 0 else A

    def is_switch(self, round_: int) -> bool:
        """True when ``round_`` trains a different factor than ``round_ - 1``."""
        return round_ > 0 and round_ % self.interval == 0


def auto_switch_interval(contraction: float, constant: float = AUTO_SWITCH_CONSTANT,
                         t_max: int = AUTO_SWITCH_MAX) -> int:
    """T = clip(round(constant / √(1 − ρ)), 1, t_max) for a mean-square contraction ρ ∈ [0, 1]."""
    if not 0.0 <= contraction <= 1.0:
        raise ValueError(f"contraction must lie in [0, 1], got {contraction}")
    gap = 1.0 - contraction
    if gap <= 0.0:
        return t_max  # no mixing at all: the longest phase is the least harmful
    return int(min(t_max, max(1, round(constant / math.sqrt(gap)))))
