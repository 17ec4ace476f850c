"""RoLoRA ported to the decentralized setting: alternate factors (T = 1 by default) and mix only the
factor being trained, so the frozen factor of each peer drifts apart from its neighbours'."""

from peer.algorithm.factors import Phase
from peer.algorithm.strategies.base import RoundPlan, Strategy


class RoLoRA(Strategy):
    name = "rolora"
    summary = "alternate A/B every T rounds (T=1 default); mix only the trained factor"
    default_switch_interval = 1

    def plan_factors(self, round_: int) -> RoundPlan:
        factor = self.schedule.phase(round_)
        return RoundPlan(round_, Phase(factor), frozenset({factor}), frozenset({factor}))
