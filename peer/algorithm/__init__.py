"""Pure algorithm code: what trains, what is mixed, with which weights, over which graph.

Nothing here touches a model, a file or a socket, so every piece is testable with plain arrays.
The simulator (``peer.sim``) and the networked daemon are two drivers of this same code.
"""

from peer.algorithm.factors import A, B, FACTORS, factor_of
from peer.algorithm.mixing import consensus_distance, metropolis_hastings_matrix, metropolis_hastings_weights, mix
from peer.algorithm.schedule import PhaseSchedule, auto_switch_interval
from peer.algorithm.strategies import RoundPlan, Strategy, available_strategies, make_strategy
from peer.algorithm.topology import Topology, make_topology

__all__ = [
    "A", "B", "FACTORS", "factor_of",
    "consensus_distance", "metropolis_hastings_matrix", "metropolis_hastings_weights", "mix",
    "PhaseSchedule", "auto_switch_interval",
    "RoundPlan", "Strategy", "available_strategies", "make_strategy",
    "Topology", "make_topology",
]
