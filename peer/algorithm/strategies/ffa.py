"""FFA-LoRA: A stays frozen at the shared initialisation; only B is trained and mixed."""

from peer.algorithm.factors import B, Phase
from peer.algorithm.strategies.base import RoundPlan, Strategy


class FFALoRA(Strategy):
    name = "ffa"
    summary = "A frozen at the shared init; train and mix B"

    def plan_factors(self, round_: int) -> RoundPlan:
        return RoundPlan(round_, Phase.B, frozenset({B}), frozenset({B}))
