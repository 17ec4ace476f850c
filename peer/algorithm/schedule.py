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
from functools import lru_cache
from typing import NamedTuple, Protocol

from peer.algorithm.factors import A, B, Block

AUTO_SWITCH_CONSTANT = 1.0
AUTO_SWITCH_MAX = 20
FINE_LINK_RATES = 0.2


class Schedule(Protocol):
    """What a strategy asks of its phase schedule (fixed: ``PhaseSchedule``; agreed during the run by
    the daemons: ``AgreedSchedule``)."""

    @property
    def interval(self) -> int: ...

    def phase(self, round_: int) -> Block: ...


@dataclass(frozen=True)
class ScheduleGossip:
    """What every header tells a neighbour about the sender's phase schedule (``AgreedSchedule``, the
    daemons' ``switch-interval auto``): the phase of the round (its ``phase_start`` and length
    ``switch_interval``, decided in ``schedule_round``), the sender's largest proposal for the next
    decision, and its measured link rate. The transport carries it without reading it; a fixed schedule
    sends its interval only."""

    switch_interval: int = 0
    schedule_round: int = 0
    proposed_interval: int = 0
    phase_start: int = 0
    link_estimate: float = 0.0


class Segment(NamedTuple):
    """One phase of an ``AgreedSchedule``: ``length`` rounds from ``start`` training ``factor``, its
    length decided in round ``decided_at``."""

    start: int
    length: int
    factor: Block
    decided_at: int


@dataclass(frozen=True)
class PhaseSchedule:
    """Alternating B/A phases of ``interval`` rounds each, B first."""

    interval: int

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"switching interval must be >= 1 round, got {self.interval}")

    def phase(self, round_: int) -> Block:
        """``B`` or ``A``: the factor trained in ``round_``."""
        if round_ < 0:
            raise ValueError(f"rounds count from 0, got {round_}")
        return B if (round_ // self.interval) % 2 == 0 else A

    def is_switch(self, round_: int) -> bool:
        """True when ``round_`` trains a different factor than ``round_ - 1``."""
        return round_ > 0 and round_ % self.interval == 0


def auto_switch_interval(
    contraction: float, constant: float = AUTO_SWITCH_CONSTANT, t_max: int = AUTO_SWITCH_MAX
) -> int:
    """T = clip(round(constant / √(1 − ρ)), 1, t_max) for a mean-square contraction ρ ∈ [0, 1]."""
    if not 0.0 <= contraction <= 1.0:
        raise ValueError(f"contraction must lie in [0, 1], got {contraction}")
    gap = 1.0 - contraction
    if gap <= 0.0:
        return t_max  # no mixing at all: the longest phase is the least harmful
    return int(min(t_max, max(1, round(constant / math.sqrt(gap)))))


class AgreedSchedule:
    """Phases whose lengths are decided during the run, identically at every peer (daemon ``auto``).

    The schedule is a list of phases ``(start, length, factor, decided_at)``, alternating factors, B
    first. A *decision* fixes the length of the phases that follow; decisions happen only at phase
    boundaries at least ``gossip_rounds`` rounds after the previous decision.

    Why peers decide the same length: each peer proposes a length from what it measured, but only in
    the first half of the window (``proposals_close``); in the second half no new value appears and
    the largest proposal only spreads, peer to peer, in the exchange headers (tagged with the round of
    the previous decision). A late rise, which would reach only the last round's neighbours, cannot
    happen. All peers therefore decide the same maximum whenever the links that count during the
    second half connect every peer (a chain of ``gossip_rounds // 2`` rounds suffices for up to
    that many hops; 4 peers with links up half of the time are connected within 5 rounds with
    probability > 0.99).

    When that fails (a partition, a peer down through the window), peers do decide differently, and
    they reconcile on contact: every header carries the sender's phase of the round (``start``,
    ``length``, ``factor``, ``decided_at``), and a peer that sees a later one (by ``decided_at``, then
    ``start``, then ``length``) adopts it (``adopt``). The order is total, so every pair that keeps
    exchanging converges on the same phases, and a peer that was cut off takes the network's decision
    when it reconnects. The symptom of a split is ``phase`` refusals in the status counters.
    """

    def __init__(
        self, interval: int, start: int = 0, factor: str = B, gossip_rounds: int = 10, decided_at: int | None = None
    ) -> None:
        factor = Block(factor)
        if interval < 1:
            raise ValueError(f"switching interval must be >= 1 round, got {interval}")
        decided = start if decided_at is None else decided_at
        self.segments: list[Segment] = [Segment(start, interval, factor, decided)]
        self.gossip_rounds = gossip_rounds
        self.decided_at = decided
        self.proposals: dict[int, int] = {}

    @property
    def current(self) -> Segment:
        return self.segments[-1]

    @property
    def interval(self) -> int:
        return self.current.length

    @property
    def proposals_close(self) -> int:
        """The first round at which this peer no longer changes its own proposal."""
        return self.decided_at + max(1, self.gossip_rounds // 2)

    def segment(self, round_: int) -> Segment:
        """The phase containing ``round_``."""
        start, length, factor, decided = self.segments[0]
        for segment in self.segments:
            if segment.start <= round_:
                start, length, factor, decided = segment
        # beyond the decided phases: continue with the last length (provisional until decided)
        if round_ >= start + length:
            skipped = (round_ - start) // length
            start += skipped * length
            factor = factor if skipped % 2 == 0 else _other(factor)
        return Segment(start, length, factor, decided)

    def phase(self, round_: int) -> Block:
        if round_ < 0:
            raise ValueError(f"rounds count from 0, got {round_}")
        return self.segment(round_).factor

    def propose(self, interval: int, round_: int | None = None) -> None:
        """This peer's own proposal for the length decided next; ignored from ``proposals_close`` on."""
        if interval < 1 or (round_ is not None and round_ >= self.proposals_close):
            return
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
        start, length, factor, decided = self.current
        if round_ != start + length:
            return
        next_length = length
        if round_ - self.decided_at >= self.gossip_rounds:
            next_length = self.proposals.pop(self.decided_at, length)
            self.decided_at = decided = round_
        self.segments.append(Segment(round_, next_length, _other(factor), decided))

    def adopt(self, start: int, length: int, factor: str, decided_at: int, round_: int | None = None) -> bool:
        """Take a neighbour's phase if it is later than ours (see the class docstring); True if taken.
        ``round_``: the round about to start; a phase that ended before it is continued up to it, so
        that the schedule goes on deciding at its boundaries."""
        if length < 1 or factor not in (A, B) or decided_at > start:
            return False  # a decision is taken at the start of its phase or before: anything else is bogus
        length = min(int(length), AUTO_SWITCH_MAX)
        if round_ is not None and start + length <= round_:
            skipped = (round_ - start) // length
            start, factor = start + skipped * length, factor if skipped % 2 == 0 else _other(factor)
        mine = self.segment(start)
        if (decided_at, start, length) <= (mine.decided_at, mine.start, mine.length) or decided_at < self.decided_at:
            return False
        taken = Segment(start, length, Block(factor), decided_at)
        self.segments = [seg for seg in self.segments if seg.start < start] + [taken]
        if decided_at > self.decided_at:
            self.proposals = {k: v for k, v in self.proposals.items() if k >= decided_at}
            self.decided_at = decided_at
        return True

    @classmethod
    def continuing(
        cls, start: int, length: int, factor: str, decided_at: int, round_: int, gossip_rounds: int
    ) -> AgreedSchedule:
        """A schedule whose phases are a neighbour's phase ``(start, length, factor)`` continued (forward
        or backward) to the phase containing ``round_``: for a peer that jumps to ``round_``."""
        length = max(1, min(int(length), AUTO_SWITCH_MAX))
        skipped = (round_ - start) // length  # floor: negative when round_ lies before start
        factor = factor if skipped % 2 == 0 else _other(factor)
        return cls(length, start + skipped * length, factor, gossip_rounds, decided_at=min(decided_at, round_))

    def to_state(self) -> dict:
        return {
            "segments": [[seg.start, seg.length, str(seg.factor), seg.decided_at] for seg in self.segments],
            "proposals": dict(self.proposals),
            "gossip_rounds": self.gossip_rounds,
            "decided_at": self.decided_at,
        }

    @classmethod
    def from_state(cls, state: dict) -> AgreedSchedule:
        segments = [
            Segment(int(seg[0]), int(seg[1]), Block(seg[2]), int(seg[3]) if len(seg) > 3 else int(state["decided_at"]))
            for seg in state["segments"]
        ]
        start, length, factor, decided = segments[0]
        schedule = cls(length, start, factor, int(state["gossip_rounds"]), decided)
        schedule.segments = segments
        schedule.decided_at = int(state["decided_at"])
        schedule.proposals = {int(k): int(v) for k, v in state["proposals"].items()}
        return schedule


def _other(factor: str) -> Block:
    return A if factor == B else B


def interval_for_link_rate(n_peers: int, link_probability: float) -> int:
    """``auto_switch_interval`` of an Erdős–Rényi graph of ``n_peers`` with this link probability: the
    T a daemon proposes from its measured link rate, and the initial T of a run. One function for both,
    so a peer that measures the configured rate proposes the T it started with. The probability is
    rounded to 0.01 below FINE_LINK_RATES (where T is sensitive to it) and to 0.05 above: T is a coarse
    integer, and each new value costs ~50 ms of sampled graphs."""
    p = float(link_probability)
    step = 0.01 if p < FINE_LINK_RATES else 0.05
    return _interval_for_link_rate(int(n_peers), round(round(p / step) * step, 2))


@lru_cache(maxsize=512)
def _interval_for_link_rate(n_peers: int, link_probability: float) -> int:
    from peer.algorithm.topology import ErdosRenyi  # topology depends on mixing only; imported late for speed

    return auto_switch_interval(ErdosRenyi(n=n_peers, seed=0, p=link_probability).contraction())
