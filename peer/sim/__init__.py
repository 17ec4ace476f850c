"""The in-process simulator: N virtual peers in one process, driven by the same algorithm code as the daemon."""

from peer.sim.simulator import simulate

__all__ = ["simulate"]
