"""One peer's side of a round, shared by every driver (the simulator and the networked daemon).

A round is: train the plan's factors for K local steps, send the plan's mixed factors, combine them
with what arrived using the round's mixing weights, load the result. The drivers differ only in how
the factors travel and how the graph of the round is known; the arithmetic lives here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from peer.algorithm.factors import Block, factor_of
from peer.algorithm.mixing import Node, to_like
from peer.algorithm.robust import MixingRule
from peer.algorithm.strategies import RoundPlan, Strategy
from peer.training.adapters import Adapter
from peer.training.trainer import LocalTrainer


class LocalPeer:
    def __init__(
        self,
        peer_id: str,
        adapter: Adapter,
        trainer: LocalTrainer,
        strategy: Strategy,
        local_steps: int,
        rule: MixingRule | None = None,
    ) -> None:
        self.peer_id, self.adapter, self.trainer = peer_id, adapter, trainer
        self.strategy, self.local_steps = strategy, local_steps
        self.rule = rule or MixingRule()

    def plan(self, round_: int) -> RoundPlan:
        return self.strategy.plan(round_)

    def train(self, round_: int) -> float:
        """The round's local steps; a round that trains nothing (a consensus round) reports a NaN loss."""
        plan = self.plan(round_)
        if not plan.train:
            return float("nan")
        return self.trainer.train_round(round_, plan.train, self.local_steps)

    def outgoing(self, round_: int) -> dict[str, torch.Tensor]:
        """The factors this peer sends to its neighbours in ``round_``."""
        return self.adapter.factors(self.plan(round_).mix)

    def mix(
        self,
        round_: int,
        received: Mapping[Node, Mapping[str, torch.Tensor]],
        weights: Mapping[Node, float],
        self_weight: float,
        sent: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Replace the plan's mixed factors by the strategy's combination of own and received ones
        (or by the robust rule's, when the run asks for one). ``received`` may be on any device
        (decoded to CPU, say, beside a CUDA adapter): every rule returns tensors where the own
        factors are, and ``load_factors`` copies across devices. ``sent``: the own factors as the
        neighbours received them, when the wire compressed them (the difference form, ``mixing.mix``)."""
        own = self.outgoing(round_)
        if not received:
            return  # isolated this round: self_weight is 1, nothing changes
        self.adapter.load_factors(self.rule(self.strategy.combine, own, received, weights, self_weight, sent))

    def factors(self) -> dict[str, torch.Tensor]:
        return self.adapter.factors()

    def apply_correction(self, deltas: Mapping[str, torch.Tensor]) -> None:
        """Add ``deltas`` to the named factor tensors (a link's term of a past round's mix, settled late)."""
        current = self.adapter.factors(frozenset(factor_of(name) for name in deltas))
        self.adapter.load_factors(
            {name: current[name] + to_like(delta, current[name]) for name, delta in deltas.items()}
        )

    def state(self) -> dict:
        """Everything a restart needs to continue exactly: factors (and head), optimizer, trained set."""
        state = {
            "adapter": self.adapter.state(),
            "optimizer": self.trainer.optimizer.state_dict(),
            "last_trained": sorted(str(block) for block in self.trainer.last_trained),  # plain str: loadable
        }
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None and scaler.is_enabled():  # fp16: the loss scale is part of the state
            state["scaler"] = scaler.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        self.adapter.load_state(state["adapter"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.last_trained = frozenset(Block(name) for name in state["last_trained"])
        if "scaler" in state and getattr(self.trainer, "scaler", None) is not None:
            self.trainer.scaler.load_state_dict(state["scaler"])
