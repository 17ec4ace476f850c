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

With c = 1, on 10 nodes: a complete graph (ρ = 0) gets T = 1, a ring T = 2, an Erdős–Rényi graph
T = 1 at p = 0.5, T = 2 at p = 0.1 and T = 4 at p = 0.02. ``benchmarks/README.md`` reports how
``auto`` compares with fixed T on sparse graphs.
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


class AgreedSchedule:
    """Phases whose lengths are decided during the run, identically at every peer (daemon ``auto``).

    The schedule is a list of phases ``(start, length, factor)``, alternating factors, B first. A
    *decision* fixes the length of the phases that follow; decisions happen only at phase boundaries
    that lie at least ``gossip_rounds`` rounds after the previous decision. Between two decisions
    every peer proposes a length (from what it measured, see ``peer.daemon``) and every exchange
    header carries the largest proposal the sender holds, tagged with the round of the previous
    decision. Peers keep the maximum; at the next decision each takes the maximum it holds (its
    current length when it holds none).

    The maximum of a set does not depend on the order in which its elements arrive, so all peers
    decide the same length whenever the largest proposal reached every peer within the window: true
    when the links that count during ``gossip_rounds`` rounds connect all peers (a window of 10 rounds
    of an Erdős–Rényi graph with p = 0.3 on 4 peers holds 18 links on average). A peer that missed it
    switches at other rounds than its neighbours; the symptom is ``phase`` rejections in the status
    counters; the fix is a longer window.
    """

    def __init__(self, interval: int, start: int = 0, factor: str = B, gossip_rounds: int = 10,
                 decided_at: int | None = None) -> None:
        if interval < 1:
            raise ValueError(f"switching interval must be >= 1 round, got {interval}")
        self.segments: list[tuple[int, int, str]] = [(start, interval, factor)]
        self.gossip_rounds = gossip_rounds
        self.decided_at = start if decided_at is None else decided_at
        self.proposals: dict[int, int] = {}

    @property
    def current(self) -> tuple[int, int, str]:
        return self.segments[-1]

    @property
    def interval(self) -> int:
        return self.current[1]

    def _segment(self, round_: int) -> tuple[int, int, str]:
        start, length, factor = self.segments[0]
        for segment in self.segments:
            if segment[0] <= round_:
                start, length, factor = segment
        # beyond the decided phases: continue with the last length (provisional until decided)
        if round_ >= start + length:
            skipped = (round_ - start) // length
            start += skipped * length
            factor = factor if skipped % 2 == 0 else (A if factor == B else B)
        return start, length, factor

    def phase(self, round_: int) -> str:
        if round_ < 0:
            raise ValueError(f"rounds count from 0, got {round_}")
        return self._segment(round_)[2]

    def propose(self, interval: int) -> None:
        """This peer's own proposal for the length decided next."""
        self.proposals[self.decided_at] = max(self.proposals.get(self.decided_at, 0), int(interval))

    def merge(self, decided_at: int, proposal: int) -> None:
        """A neighbour's largest proposal, tagged with the round of its previous decision. Proposals
        above AUTO_SWITCH_MAX are clipped: one peer must not be able to freeze everyone in one phase."""
        if proposal > 0 and decided_at == self.decided_at:
            proposal = min(int(proposal), AUTO_SWITCH_MAX)
            self.proposals[decided_at] = max(self.proposals.get(decided_at, 0), proposal)

    def proposal(self) -> int:
        return self.proposals.get(self.decided_at, 0)

    def decide(self, round_: int) -> None:
        """Call at the start of every round: at a phase boundary, start the next phase (deciding its
        length when the window is over). Idempotent."""
        start, length, factor = self.current
        if round_ != start + length:
            return
        next_length = length
        if round_ - self.decided_at >= self.gossip_rounds:
            next_length = self.proposals.pop(self.decided_at, length)
            self.decided_at = round_
        self.segments.append((round_, next_length, A if factor == B else B))

    def to_state(self) -> dict:
        return {"segments": [list(seg) for seg in self.segments], "proposals": dict(self.proposals),
                "gossip_rounds": self.gossip_rounds, "decided_at": self.decided_at}

    @classmethod
    def from_state(cls, state: dict) -> "AgreedSchedule":
        start, length, factor = state["segments"][0]
        schedule = cls(int(length), int(start), factor, int(state["gossip_rounds"]), int(state["decided_at"]))
        schedule.segments = [(int(a), int(b), c) for a, b, c in state["segments"]]
        schedule.proposals = {int(k): int(v) for k, v in state["proposals"].items()}
        return schedule
