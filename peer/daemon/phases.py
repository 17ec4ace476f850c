"""``--switch-interval auto`` in the daemon: the agreed schedule, the link rate it is proposed from, and
the later phase a neighbour showed (adopted at the start of the next round, never in the middle of one).

The algorithm (proposals, the window, the decision, the order in which a later decision wins) is
``peer.algorithm.schedule.AgreedSchedule``; this is what a networked peer feeds it.
"""

from __future__ import annotations

import logging
from collections import deque

from peer.algorithm.factors import A, B, Block
from peer.algorithm.schedule import AgreedSchedule, ScheduleGossip, Segment, interval_for_link_rate
from peer.algorithm.strategies import Strategy
from peer.daemon.timing import LINK_WINDOW_ROUNDS, SCHEDULE_WINDOW_ROUNDS
from peer.transport.base import Header

log = logging.getLogger("tadlora.daemon")


class PhaseAgreement:
    def __init__(self, strategy: Strategy, window: int = SCHEDULE_WINDOW_ROUNDS) -> None:
        self.strategy = strategy
        self.schedule = AgreedSchedule(strategy.switch_interval, gossip_rounds=window)
        strategy.schedule = self.schedule
        self.adoption: Segment | None = None
        self.link_window: deque[tuple[int, int]] = deque(maxlen=LINK_WINDOW_ROUNDS)  # (counted, possible)

    def use(self, schedule: AgreedSchedule) -> None:
        self.schedule = schedule
        self.strategy.schedule = schedule

    # ---------------------------------------------------------------- measuring and proposing

    def observe_links(self, counted: int, possible: int) -> None:
        self.link_window.append((counted, possible))

    def link_estimate(self) -> float | None:
        """Fraction of possible links that counted over the recent rounds; None before any round."""
        counted, possible = map(sum, zip(*self.link_window)) if self.link_window else (0, 0)
        return counted / possible if possible else None

    def own_proposal(self, peers: int) -> int:
        """T for the next phase from this peer's measurement (0: no proposal). A peer that counted no
        link over the window proposes nothing: it knows nothing of the network, and the maximum rule
        must not let its T = T_max be imposed on everyone."""
        estimate = self.link_estimate()
        return interval_for_link_rate(peers, estimate) if estimate else 0

    # ---------------------------------------------------------------- what neighbours show

    def heard(self, h: Header) -> None:
        gossip = h.schedule
        self.schedule.merge(gossip.schedule_round, gossip.proposed_interval)
        self.consider(gossip.phase_start, gossip.switch_interval, h.phase, gossip.schedule_round)

    def consider(self, start: int, length: int, factor: str, decided_at: int) -> None:
        """Remember the latest phase seen (by decision, then start, then length)."""
        if length < 1 or factor not in (A, B):
            return
        seen = Segment(int(start), int(length), Block(factor), int(decided_at))
        if self.adoption is None or _order(seen) > _order(self.adoption):
            self.adoption = seen

    # ---------------------------------------------------------------- at the start of a round

    def advance(self, round_: int, peers: int) -> dict:
        """Adopt a later phase seen, start the next phase at a boundary, propose; what the round logs."""
        if self.adoption is not None:
            if self.schedule.adopt(*self.adoption, round_=round_):
                log.info("adopted a neighbour's phase %s", self.adoption)
            self.adoption = None
        self.schedule.decide(round_)
        proposal = self.own_proposal(peers)
        self.schedule.propose(proposal, round_)
        start, length, _, decided = self.schedule.segment(round_)
        return {
            "switch_interval": length,
            "phase_start": start,
            "decided_at": decided,
            "proposal": proposal,
            "link_estimate": self.link_estimate(),
        }

    def continue_from(self, h: Header, round_: int) -> None:
        """Take a neighbour's phases, continued to ``round_`` (a peer that jumps forward)."""
        gossip = h.schedule
        self.use(
            AgreedSchedule.continuing(
                gossip.phase_start,
                gossip.switch_interval,
                h.phase if h.phase in (A, B) else B,
                gossip.schedule_round,
                round_,
                self.schedule.gossip_rounds,
            )
        )
        self.schedule.merge(gossip.schedule_round, gossip.proposed_interval)

    # ---------------------------------------------------------------- headers, status, files

    def gossip(self, round_: int) -> ScheduleGossip:
        """What this round's headers tell the neighbours about the schedule."""
        start, length, _, decided = self.schedule.segment(round_)
        return ScheduleGossip(
            switch_interval=length,
            schedule_round=decided,
            phase_start=start,
            proposed_interval=self.schedule.proposal(),
            link_estimate=self.link_estimate() or 0.0,
        )

    def to_state(self) -> dict:
        return {"schedule": self.schedule.to_state(), "link_window": [list(x) for x in self.link_window]}

    def load_state(self, state: dict) -> None:
        if state.get("schedule"):
            self.use(AgreedSchedule.from_state(state["schedule"]))
        self.link_window.clear()
        self.link_window.extend(tuple(x) for x in state.get("link_window", []))


def _order(phase: Segment) -> tuple[int, int, int]:
    return phase.decided_at, phase.start, phase.length
