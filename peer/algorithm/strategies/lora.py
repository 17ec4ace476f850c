"""Vanilla decentralized LoRA: both factors trained and both mixed every round."""

from peer.algorithm.factors import Phase
from peer.algorithm.strategies.base import BOTH, RoundPlan, Strategy


class LoRA(Strategy):
    name = "lora"
    summary = "train A and B, mix A and B"

    def plan_factors(self, round_: int) -> RoundPlan:
        return RoundPlan(round_, Phase.AB, BOTH, BOTH)
