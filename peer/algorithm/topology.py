"""Seeded communication graphs for experiments: which undirected edges are up in round r.

Every topology answers ``edges(round)`` deterministically from its seed and the round number alone,
independent of the order of queries. That matters for the networked daemon: two peers that agree on
the seed and the round agree on the graph without exchanging a message.

- ``complete``: every pair, every round.
- ``ring``: i — i+1 (mod n), every round.
- ``er``: time-varying Erdős–Rényi; each round every edge is up independently with probability p.
- ``pairwise``: pairwise encounters (gossip); each round the nodes are paired by a random perfect
  matching and each pair meets with probability p. A node talks to at most one peer per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from peer.algorithm.mixing import Edge, metropolis_hastings_matrix


def _round_rng(seed: int, round_: int) -> np.random.Generator:
    # A generator per (seed, round): the graph of round r does not depend on which rounds came before.
    return np.random.default_rng([seed, round_, 0x70B0])


@dataclass(frozen=True)
class Topology:
    """Base class. Subclasses implement ``edges``; ``n`` is the number of nodes."""

    n: int
    seed: int = 0

    name = "base"
    time_varying = False

    def edges(self, round_: int) -> frozenset[Edge]:
        raise NotImplementedError

    def mixing_matrix(self, round_: int) -> np.ndarray:
        return metropolis_hastings_matrix(self.n, self.edges(round_))

    def contraction(self, samples: int = 400) -> float:
        """Mean-square contraction factor ρ of gossip on this topology.

        ρ = λ_max(E[WᵀW] − J), J = 11ᵀ/n: one mixing step shrinks the expected squared distance to
        consensus by at least a factor ρ. ``1 − ρ`` is the spectral gap. The expectation is taken over
        the first ``samples`` rounds of the (seeded) graph process; fixed graphs need one sample.
        """
        return _contraction(self, samples if self.time_varying else 1)

    def describe(self) -> str:
        return self.name


def _contraction(topology: Topology, samples: int) -> float:
    n = topology.n
    if n == 1:
        return 0.0
    second_moment = np.zeros((n, n))
    for r in range(samples):
        w = topology.mixing_matrix(r)
        second_moment += w.T @ w
    second_moment /= samples
    centred = second_moment - np.full((n, n), 1.0 / n)
    return float(max(0.0, np.linalg.eigvalsh(centred).max()))


@dataclass(frozen=True)
class Complete(Topology):
    name = "complete"

    @cached_property
    def _edges(self) -> frozenset[Edge]:
        return frozenset((i, j) for i in range(self.n) for j in range(i + 1, self.n))

    def edges(self, round_: int) -> frozenset[Edge]:
        return self._edges


@dataclass(frozen=True)
class Ring(Topology):
    name = "ring"

    def edges(self, round_: int) -> frozenset[Edge]:
        if self.n < 2:
            return frozenset()
        return frozenset((min(i, (i + 1) % self.n), max(i, (i + 1) % self.n)) for i in range(self.n))


@dataclass(frozen=True)
class ErdosRenyi(Topology):
    p: float = 0.5
    name = "er"
    time_varying = True

    def edges(self, round_: int) -> frozenset[Edge]:
        rng = _round_rng(self.seed, round_)
        up = rng.random((self.n, self.n)) < self.p
        return frozenset((i, j) for i in range(self.n) for j in range(i + 1, self.n) if up[i, j])

    def describe(self) -> str:
        return f"er(p={self.p:g})"


@dataclass(frozen=True)
class PairwiseEncounters(Topology):
    p: float = 0.1
    name = "pairwise"
    time_varying = True

    def edges(self, round_: int) -> frozenset[Edge]:
        rng = _round_rng(self.seed, round_)
        order = rng.permutation(self.n)
        meets = rng.random(self.n // 2) < self.p
        return frozenset(
            (int(min(order[2 * k], order[2 * k + 1])), int(max(order[2 * k], order[2 * k + 1])))
            for k in range(self.n // 2)
            if meets[k]
        )

    def describe(self) -> str:
        return f"pairwise(p={self.p:g})"


TOPOLOGIES = {"complete": Complete, "ring": Ring, "er": ErdosRenyi, "pairwise": PairwiseEncounters}


def make_topology(name: str, n: int, p: float = 0.5, seed: int = 0) -> Topology:
    """Build a topology by name; ``p`` is used by ``er`` and ``pairwise`` only."""
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    if n < 1:
        raise ValueError(f"a topology needs at least one node, got n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"edge probability must lie in [0, 1], got p={p}")
    if name == "er":
        return ErdosRenyi(n=n, seed=seed, p=p)
    if name == "pairwise":
        return PairwiseEncounters(n=n, seed=seed, p=p)
    return TOPOLOGIES[name](n=n, seed=seed)
