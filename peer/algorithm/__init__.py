"""Pure algorithm code: what trains, what is mixed, with which weights, over which graph.

Nothing here touches a model, a file or a socket, so every piece is testable with plain arrays.
The simulator (``peer.sim``) and the networked daemon are two drivers of this same code.
"""

from peer.algorithm.factors import FACTORS, A, B, factor_of
from peer.algorithm.mixing import consensus_distance, metropolis_hastings_matrix, metropolis_hastings_weights, mix
from peer.algorithm.schedule import PhaseSchedule, auto_switch_interval
from peer.algorithm.strategies import RoundPlan, Strategy, available_strategies, make_strategy
from peer.algorithm.topology import Topology, make_topology

__all__ = [
    "FACTORS",
    "A",
    "B",
    "PhaseSchedule",
    "RoundPlan",
    "Strategy",
    "Topology",
    "auto_switch_interval",
    "available_strategies",
    "consensus_distance",
    "factor_of",
    "make_strategy",
    "make_topology",
    "metropolis_hastings_matrix",
    "metropolis_hastings_weights",
    "mix",
]
