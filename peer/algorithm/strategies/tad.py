"""TAD-LoRA: alternate the trained factor every T rounds (B first) and mix BOTH factors every round.

Mixing the frozen factor too drives it to consensus during the phase; once all A_k are equal the
mixed product is exact (Σ_j W_ij B_j · A), which is what removes the cross terms of plain mixing.
"""

from peer.algorithm.factors import Phase
from peer.algorithm.strategies.base import BOTH, RoundPlan, Strategy


class TADLoRA(Strategy):
    name = "tad"
    summary = "alternate A/B every T rounds (B first); mix A and B"
    default_switch_interval = 5

    def plan_factors(self, round_: int) -> RoundPlan:
        factor = self.schedule.phase(round_)
        return RoundPlan(round_, Phase(factor), frozenset({factor}), BOTH)
