"""FedSA-LoRA ported to the decentralized setting: train both factors, share only A; B stays local."""

from peer.algorithm.factors import A, Phase
from peer.algorithm.strategies.base import BOTH, RoundPlan, Strategy


class FedSALoRA(Strategy):
    name = "fedsa"
    summary = "train A and B; mix A only, B stays local"

    def plan_factors(self, round_: int) -> RoundPlan:
        return RoundPlan(round_, Phase.AB, BOTH, frozenset({A}))
