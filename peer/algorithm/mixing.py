"""Gossip mixing: Metropolis–Hastings weights over the round's undirected edge set, and the mix itself.

Metropolis–Hastings (MH) weights for an undirected graph with degrees ``d``::

    w_ij = 1 / (1 + max(d_i, d_j))      for every edge (i, j)
    w_ii = 1 - sum_j w_ij

The matrix is symmetric and every row sums to one, hence doubly stochastic: a mixing step
``x_i <- sum_j w_ij x_j`` keeps the network-wide sum (and average) of every tensor exactly, up to
floating-point rounding. Each node can compute its own row from its degree and its neighbours'
degrees alone, which is what a networked peer needs.

The functions are duck-typed over the array type: numpy arrays and torch tensors both work. Received
tensors may sit on another device than the peer's own (decoded to CPU, own factors on CUDA): every
rule meets them through ``to_like``, which puts each on the device and dtype of the own tensor.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar, cast

import numpy as np
import torch

Edge = tuple[int, int]
# a neighbour's key: a peer index in the simulator, a peer id in the daemon
Node = TypeVar("Node", bound=Hashable)
# mixing is the same arithmetic on torch tensors and numpy arrays
TensorLike = Any


def degrees(n: int, edges: Iterable[Edge]) -> list[int]:
    """Degree of each of the ``n`` nodes in the undirected edge set."""
    deg = [0] * n
    for i, j in edges:
        deg[i] += 1
        deg[j] += 1
    return deg


def metropolis_hastings_weights(
    own_degree: int, neighbour_degrees: Mapping[Node, int]
) -> tuple[float, dict[Node, float]]:
    """One node's row of the MH matrix: ``(self_weight, {neighbour: weight})``.

    ``neighbour_degrees`` maps each neighbour of this round to its degree in this round's graph.
    Both ends of an edge compute the same ``w_ij``, which is what keeps the matrix symmetric.
    """
    weights = {nb: 1.0 / (1 + max(own_degree, d)) for nb, d in neighbour_degrees.items()}
    return 1.0 - sum(weights.values()), weights


def metropolis_hastings_matrix(n: int, edges: Iterable[Edge]) -> np.ndarray:
    """The full ``n×n`` MH mixing matrix of an undirected edge set (self-loops are ignored)."""
    edges = sorted({(min(i, j), max(i, j)) for i, j in edges if i != j})
    deg = degrees(n, edges)
    neighbours: list[dict[int, int]] = [{} for _ in range(n)]
    for i, j in edges:
        neighbours[i][j] = deg[j]
        neighbours[j][i] = deg[i]
    w = np.zeros((n, n))
    for i in range(n):
        self_weight, row = metropolis_hastings_weights(deg[i], neighbours[i])
        w[i, i] = self_weight
        for j, wij in row.items():
            w[i, j] = wij
    return w


def to_like(value, like):
    """``value`` on the device and dtype of ``like``, so that the two can meet in one expression.

    Torch refuses arithmetic between a CUDA and a CPU tensor, and received factors are decoded
    wherever the wire left them; the own tensor decides where the result lives. Duck-typed like the
    rest of this module: anything without ``.to`` (numpy arrays) passes through unchanged, and a
    tensor already in place is returned as is (no copy).
    """
    if not (hasattr(value, "to") and hasattr(like, "to")):
        return value
    if value.device == like.device and value.dtype == like.dtype:
        return value
    return value.to(device=like.device, dtype=like.dtype)


def mix(
    own: Mapping[str, TensorLike],
    neighbours: Mapping[Node, Mapping[str, TensorLike]],
    weights: Mapping[Node, float],
    self_weight: float,
    sent: Mapping[str, TensorLike] | None = None,
) -> dict[str, TensorLike]:
    """``self_weight·own + Σ_j weights[j]·neighbours[j]``, tensor by tensor.

    ``sent``: the own factors as the neighbours received them, when that is not ``own`` exactly
    (compressed on the wire): then the difference form ``own + Σ_j weights[j]·(neighbours[j] − sent)``,
    which keeps the network-wide sums exact whatever the compression (``peer.algorithm.compression``).

    Every neighbour must carry exactly the tensor names of ``own``; a mismatch is a ValueError
    rather than a silently half-mixed model. The result lives where ``own`` does, whatever device
    the received tensors are on. Neighbours are summed in the order of their names, not of the
    mapping: a daemon's links commit in an order that varies from run to run, and floating-point sums
    taken in another order differ in the last bits, which training then magnifies. (The daemon also
    hands its links over in that order, for the self weight and the robust rules.)
    """
    for peer, tensors in neighbours.items():
        if set(tensors) != set(own):
            missing, extra = set(own) - set(tensors), set(tensors) - set(own)
            raise ValueError(
                f"factors from {peer!r} do not match the local adapter: "
                f"missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
            )
    neighbours = _in_order_of_names(neighbours)
    if sent is not None:
        return _mix_differences(own, neighbours, weights, sent)
    if own and all(isinstance(value, torch.Tensor) for value in own.values()):
        return _mix_tensors(own, neighbours, weights, self_weight)
    mixed: dict[str, TensorLike] = {}
    for name, value in own.items():
        acc = value * self_weight
        for peer, tensors in neighbours.items():
            acc = acc + to_like(tensors[name], value) * weights[peer]
        mixed[name] = acc
    return mixed


def _mix_tensors(own, neighbours, weights, self_weight) -> dict[str, TensorLike]:
    """``mix`` of torch tensors, each step one call over all of them (``torch._foreach_*``): the same
    operations in the same order, so the same bits, at two thirds of the time of a call per tensor
    (MiniLM's 26 factors and two neighbours: 0.25 ms against 0.39)."""
    names, values = list(own), list(own.values())
    mixed = torch._foreach_mul(values, self_weight)
    for peer, tensors in neighbours.items():
        theirs = [to_like(tensors[name], value) for name, value in zip(names, values)]
        torch._foreach_add_(mixed, torch._foreach_mul(theirs, weights[peer]))
    return dict(zip(names, mixed))


def _in_order_of_names(neighbours: Mapping[Node, Any]) -> dict[Node, Any]:
    """The same mapping, ordered by node: ints in the simulator in numeric order, peer ids in a daemon
    in theirs; ids of mixed kinds (a test's honest ints beside an ``"evil"`` one) by kind first."""
    return dict(sorted(neighbours.items(), key=lambda item: (type(item[0]).__name__, cast(Any, item[0]))))


def _mix_differences(own, neighbours, weights, sent) -> dict[str, TensorLike]:
    """``own + Σ_j w_j (x_j − sent)``: the two ends of a link add exact opposites, ``w (x_j − x_i)`` and
    ``w (x_i − x_j)`` of the same two sent values."""
    mixed: dict[str, TensorLike] = {}
    for name, value in own.items():
        mine = to_like(sent[name], value)
        acc = value
        for peer, tensors in neighbours.items():
            acc = acc + (to_like(tensors[name], value) - mine) * weights[peer]
        mixed[name] = acc
    return mixed


def consensus_distance(states: list[Mapping[str, TensorLike]]) -> float:
    """Mean over nodes of the squared Frobenius distance to the network average.

    ``(1/N) Σ_i Σ_tensors ||x_i − x̄||²``. Zero exactly when all nodes hold the same tensors.
    """
    if not states:
        return 0.0
    total = 0.0
    for name in states[0]:
        mean = sum(s[name] for s in states) / len(states)
        total += sum(float(((s[name] - mean) ** 2).sum()) for s in states)
    return total / len(states)
