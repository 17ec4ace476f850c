"""The strategy interface: for each round, what trains, what is sent, and how received factors combine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

from peer.algorithm.factors import HEAD, A, B, Block, Phase
from peer.algorithm.mixing import Node, mix
from peer.algorithm.schedule import PhaseSchedule, Schedule

BOTH = frozenset({A, B})


@dataclass(frozen=True)
class RoundPlan:
    """What one round does: the phase it is in, the blocks that train, the blocks that are mixed."""

    round: int
    phase: Phase
    train: frozenset[Block]
    mix: frozenset[Block]


class Strategy:
    """Base class of a decentralized LoRA strategy.

    A subclass sets ``name`` (the ``--strategy`` value) and implements ``plan_factors``: which LoRA
    factors train and mix in a round. ``plan`` adds the classification head to both sets when the run
    trains it (``train_head``; see ``peer.algorithm.factors``), and from round ``training_rounds`` on
    (the run's consensus rounds) trains nothing: the strategy keeps mixing what it mixes, so the peers'
    own models draw together towards their average instead of drifting apart again. The blocks in
    ``plan.mix`` are sent to the round's neighbours and replaced by ``combine``'s result; the others
    stay local. ``combine`` defaults to the plain weighted average with the round's mixing weights.
    An override must return tensors on the device of ``own`` whatever device ``received`` is on
    (the adapter may be on CUDA, received factors on CPU): meet them through ``mixing.to_like``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    default_switch_interval: ClassVar[int] = 1

    def __init__(
        self, switch_interval: int | None = None, train_head: bool = False, training_rounds: int | None = None
    ) -> None:
        self.schedule: Schedule = PhaseSchedule(switch_interval or self.default_switch_interval)
        self.train_head = train_head
        self.training_rounds = training_rounds  # None: every round trains

    @property
    def switch_interval(self) -> int:
        """The current phase length (fixed, or the latest decided one of an ``AgreedSchedule``)."""
        return self.schedule.interval

    def plan(self, round_: int) -> RoundPlan:
        plan = self.plan_factors(round_)
        if self.train_head:
            plan = replace(plan, train=plan.train | {HEAD}, mix=plan.mix | {HEAD})
        if self.is_consensus_round(round_):
            plan = replace(plan, train=frozenset())
        return plan

    def is_consensus_round(self, round_: int) -> bool:
        """A round after the last training round: it only mixes."""
        return self.training_rounds is not None and round_ >= self.training_rounds

    def plan_factors(self, round_: int) -> RoundPlan:
        raise NotImplementedError

    def combine(
        self,
        own: Mapping[str, object],
        received: Mapping[Node, Mapping[str, object]],
        weights: Mapping[Node, float],
        self_weight: float,
        sent: Mapping[str, object] | None = None,
    ) -> dict[str, object]:
        """``sent``: the own factors as neighbours received them, when compressed (``mixing.mix``)."""
        return mix(own, received, weights, self_weight, sent)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(switch_interval={self.switch_interval})"
