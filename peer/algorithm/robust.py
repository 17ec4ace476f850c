"""Mixing rules that bound what one faulty or hostile neighbour can do to a peer's factors.

Plain gossip ``x_i <- w_ii x_i + Σ_j w_ij x_j`` lets any neighbour move ``x_i`` by ``w_ij`` times
whatever it sends: one peer sending factors scaled by 100, or noise, ruins everyone within a few
rounds. Two rules, chosen per run with ``--mixing-rule``:

``clipped`` (self-centred clipping, as in ClippedGossip, He, Karimireddy & Jaggi 2022)
    Written as ``x_i <- x_i + Σ_j w_ij (x_j − x_i)``, plain gossip moves towards each neighbour by
    its deviation ``d_j = x_j − x_i``. The clipped rule scales each deviation down to a radius
    ``τ`` first: ``x_i <- x_i + Σ_j w_ij · min(1, τ/‖d_j‖) · d_j`` (‖·‖ over all tensors sent in
    the round). A hostile neighbour then moves ``x_i`` by at most ``w_ij τ`` per round, whatever it
    sends. ``τ = clip_multiplier × median`` of the deviation norms this peer has seen recently (its
    last 64, per set of factors: A and B deviate on different scales), so the radius follows the
    honest spread as training goes. While no deviation exceeds ``τ`` the rule *is* plain gossip: it
    keeps the network-wide sums exactly; each clipped link breaks that by the clipped amount.
    ``clip_multiplier``: 2 leaves honest peers (whose deviations sit around the median) untouched;
    closer to 1 clips honest peers too and slows consensus; much larger lets an attacker push further
    each round before the median reacts.

``trimmed-mean`` (coordinate-wise)
    Each coordinate becomes the mean of the values of this peer and its neighbours after dropping
    the ``trim`` largest and ``trim`` smallest. It tolerates up to ``trim`` hostile neighbours per
    coordinate, ignores the mixing weights (all kept values count equally) and does not keep the
    network-wide sums. With fewer than ``2·trim + 1`` values there is no majority to trust, and the
    peer keeps its own factors for that round. Needs ``2·trim`` neighbours or more to mix at all.

Pure functions and one small stateful object, over torch tensors; no I/O. Received tensors may be on
another device than the own ones (``mixing.to_like`` moves them): results live where ``own`` does.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping

import torch

from peer.algorithm.mixing import Node, to_like

RULES = ("average", "clipped", "trimmed-mean")


def _norm(tensors: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def _deviations(own: Mapping[str, torch.Tensor], received: Mapping[Node, Mapping[str, torch.Tensor]]) -> dict:
    return {
        peer: {name: to_like(tensors[name], own[name]) - own[name] for name in own}
        for peer, tensors in received.items()
    }


def _apply_clipped(
    own: Mapping[str, torch.Tensor], deviations: dict, norms: dict, weights: Mapping[Node, float], radius: float
) -> tuple[dict[str, torch.Tensor], dict]:
    scales = {peer: min(1.0, radius / norm) if norm > 0 else 1.0 for peer, norm in norms.items()}
    mixed = {name: value.clone() for name, value in own.items()}
    for peer, deviation in deviations.items():
        for name in own:
            mixed[name] = mixed[name] + deviation[name] * (weights[peer] * scales[peer])
    return mixed, {"norms": norms, "scales": scales}


def clipped_mix(
    own: Mapping[str, torch.Tensor],
    received: Mapping[Node, Mapping[str, torch.Tensor]],
    weights: Mapping[Node, float],
    radius: float,
) -> tuple[dict[str, torch.Tensor], dict]:
    """``own + Σ_j weights[j]·clip(received[j] − own, radius)``; also returns each neighbour's
    deviation norm and the scale applied to it (1.0: not clipped)."""
    deviations = _deviations(own, received)
    return _apply_clipped(own, deviations, {p: _norm(d) for p, d in deviations.items()}, weights, radius)


def trimmed_mean(
    own: Mapping[str, torch.Tensor], received: Mapping[Node, Mapping[str, torch.Tensor]], trim: int
) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean of own and received values without the ``trim`` largest and smallest
    (own values unchanged when there are fewer than ``2·trim + 1`` values)."""
    if trim < 0:
        raise ValueError(f"trim must be >= 0, got {trim}")
    n = 1 + len(received)
    if n < 2 * trim + 1:  # who is the outlier among two? nobody can tell: mix nothing
        return {name: value.clone() for name, value in own.items()}
    out = {}
    for name, value in own.items():
        stacked = torch.stack([value, *(to_like(tensors[name], value) for tensors in received.values())])
        out[name] = stacked.sort(dim=0).values[trim : n - trim].mean(dim=0)
    return out


class MixingRule:
    """A peer's mixing rule: ``average`` (the strategy's own combine), ``clipped`` or ``trimmed-mean``.

    Stateful only for ``clipped``: it remembers recent deviation norms to set the radius. One object
    per peer; ``last`` holds what the latest call did (for logs).
    """

    def __init__(self, rule: str = "average", clip_multiplier: float = 2.0, trim: int = 1, window: int = 64) -> None:
        if rule not in RULES:
            raise ValueError(f"mixing rule {rule!r} is not one of {', '.join(RULES)}")
        if clip_multiplier <= 0:
            raise ValueError(f"clip multiplier must be > 0, got {clip_multiplier}")
        self.rule, self.clip_multiplier, self.trim = rule, clip_multiplier, trim
        self.history: dict[frozenset[str], deque[float]] = {}
        self.window = window
        self.last: dict = {}

    def radius(self, names: frozenset[str], fresh_norms: list[float]) -> float:
        """``clip_multiplier × median`` of the recent deviation norms for these factors, this round's
        included (so that the very first round has a radius, from the neighbours themselves)."""
        seen = list(self.history.get(names, ())) + fresh_norms
        return self.clip_multiplier * statistics.median(seen) if seen else math.inf

    def __call__(self, combine, own, received, weights, self_weight, sent=None) -> dict:
        """``sent``: the own factors as neighbours received them (compressed); deviations are measured
        from it, as the difference form mixes (``mixing.mix``)."""
        if self.rule == "average" or not received:
            self.last = {}
            return combine(own, received, weights, self_weight, sent)
        if self.rule == "trimmed-mean":
            self.last = {"rule": "trimmed-mean", "trim": self.trim}
            return trimmed_mean(own, received, self.trim)
        names = frozenset(own)
        # once: the norms set the radius and the clipping uses them
        deviations = _deviations(own if sent is None else sent, received)
        norms = {peer: _norm(d) for peer, d in deviations.items()}
        fresh = list(norms.values())
        radius = self.radius(names, fresh)
        mixed, info = _apply_clipped(own, deviations, norms, weights, radius)
        # remember the norms after the radius is set: a hostile peer's huge norm enters the history
        # as one sample among many and cannot drag the median
        self.history.setdefault(names, deque(maxlen=self.window)).extend(fresh)
        self.last = {
            "rule": "clipped",
            "radius": radius,
            "clipped": sorted(str(p) for p, s in info["scales"].items() if s < 1.0),
        }
        return mixed


__all__ = ["RULES", "MixingRule", "clipped_mix", "trimmed_mean"]
