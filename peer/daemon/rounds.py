"""The state of one round at one peer: one object per round instead of a table per field.

A round goes through three stages at a peer:

``open``    its own factors are sealed (after local training) and its candidate links are fixed;
            neighbours may swap with it, the server side stages what they sent.
``decided`` every link it attempted has a final decision (counted or not), or the deadline passed.
``closed``  its mixing is done; a late commit gets the decision already taken (a repeated commit of a
            counted link is acknowledged again; anything else is refused, ``round-closed``).

A link's decision is final the moment it is taken (``Decision``): the server decides at commit, or
refuses for good when an outcome query arrives first; the client decides when the ack arrives or when
the server answers its outcome query. Nothing ever flips a decision, which is what lets both ends of a
link count it identically.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

import torch

from peer.transport.base import FactorMessage
from peer.transport.codec import Buffer

# Rounds of decisions kept to answer late outcome queries; a client that has not learned its outcome
# within this many rounds has lost its neighbour for good (it is dead or partitioned away).
DECISION_MEMORY_ROUNDS = 64


class Decision(enum.Enum):
    COUNTED = "counted"
    REFUSED = "refused"


@dataclass
class Received:
    """What a neighbour sent for a link: its factors, its degree (for the weights), the payload size,
    and the payload as it arrived with the factors it holds (``A``, ``B``...: what the link's record
    holds; None and empty for a link rebuilt from its record, which is never recorded again)."""

    tensors: dict[str, torch.Tensor]
    degree: int
    payload_bytes: int
    payload: Buffer | None = None
    factors: tuple[str, ...] = ()


@dataclass
class RoundState:
    round: int
    candidates: frozenset[str]
    own: FactorMessage
    staged: dict[str, Received] = field(default_factory=dict)  # server side, before the commit
    counted: dict[str, Received] = field(default_factory=dict)  # links that counted
    decisions: dict[str, Decision] = field(default_factory=dict)
    settled: dict[str, asyncio.Event] = field(default_factory=dict)
    last_counted_at: float | None = None  # loop time of the last link counted
    closed: bool = False

    @property
    def degree(self) -> int:
        return len(self.candidates)

    def event(self, peer_id: str) -> asyncio.Event:
        return self.settled.setdefault(peer_id, asyncio.Event())

    def decide(
        self, peer_id: str, decision: Decision, received: Received | None = None, at: float | None = None
    ) -> Decision:
        """Record a final decision for the link with ``peer_id``; the first decision wins."""
        if peer_id in self.decisions:
            return self.decisions[peer_id]
        self.decisions[peer_id] = decision
        self.staged.pop(peer_id, None)
        if decision is Decision.COUNTED:
            assert received is not None, "a counted link needs what the neighbour sent"
            self.counted[peer_id] = received
            self.last_counted_at = at
        self.event(peer_id).set()
        return decision

    def all_settled(self) -> bool:
        return all(pid in self.decisions for pid in self.candidates)


class RoundBook:
    """The open round of a peer, and the decisions of the recent closed ones (to answer the outcome
    queries of late clients)."""

    def __init__(self) -> None:
        self.open: dict[int, RoundState] = {}
        self.ready: dict[int, asyncio.Event] = {}
        self.history: dict[int, dict[str, Decision]] = {}
        self.closed_upto = -1  # rounds <= this are mixed

    def opened(self, state: RoundState) -> RoundState:
        self.open[state.round] = state
        self.ready_event(state.round).set()
        return state

    def ready_event(self, round_: int) -> asyncio.Event:
        return self.ready.setdefault(round_, asyncio.Event())

    def get(self, round_: int) -> RoundState | None:
        return self.open.get(round_)

    def close(self, round_: int) -> RoundState:
        state = self.open.pop(round_)
        state.closed = True
        self.closed_upto = max(self.closed_upto, round_)
        self.history[round_] = dict(state.decisions)
        self.ready.pop(round_, None)
        # by count, not by distance: a peer that jumps forward still remembers the rounds before the jump
        for old in sorted(self.history)[:-DECISION_MEMORY_ROUNDS]:
            del self.history[old]
        return state

    def skip_to(self, round_: int) -> None:
        """Rounds below ``round_`` are over here (a restart or a jump forward): refuse them."""
        for r in [r for r in self.open if r < round_]:
            self.close(r)
        for r in [r for r in self.ready if r < round_]:
            self.ready.pop(r).set()  # a server waiting for it finds it over (round-behind), at once
        self.closed_upto = max(self.closed_upto, round_ - 1)

    def decision(self, round_: int, peer_id: str) -> Decision | None:
        state = self.open.get(round_)
        if state is not None:
            return state.decisions.get(peer_id)
        return self.history.get(round_, {}).get(peer_id)

    def to_state(self) -> dict:
        return {str(r): {pid: d.value for pid, d in ds.items()} for r, ds in self.history.items()}

    def load_state(self, state: dict) -> None:
        self.history = {int(r): {pid: Decision(v) for pid, v in ds.items()} for r, ds in state.items()}
