"""Split a labelled dataset across peers: the paper's fixed label skew, Dirichlet(α) or IID.

Pure numpy, seeded; returns one array of example indices per peer, disjoint across peers.

Fixed label skew (the paper's, generalised to any number of peers N and classes C)
-----------------------------------------------------------------------------------
- C = 2: ``round(0.3·N)`` peers hold [0.9, 0.1], as many hold [0.1, 0.9], the rest [0.5, 0.5]
  (10 peers: 3 / 3 / 4, exactly the paper's SST-2/QNLI/QQP split).
- C ≥ 3: peers are dealt round-robin into C groups (group sizes differ by at most one, the first
  groups get the extra peers); group c holds 0.9 of class c and 0.1/(C−1) of every other class
  (C = 3: [0.9, 0.05, 0.05] and its rotations; 10 peers: 4 / 3 / 3, the paper's MNLI split).

Every peer gets the same number of examples m, the largest for which no class is over-drawn:
``m = min(len(labels) // N, min_c supply_c / Σ_i share_ic)``, or ``samples_per_peer`` if smaller.
"""

from __future__ import annotations

import numpy as np

from peer.errors import DataError

SCHEMES = ("label-skew", "dirichlet", "iid")


def label_skew_shares(n_peers: int, n_classes: int) -> np.ndarray:
    """The ``n_peers × n_classes`` matrix of class shares of the fixed label skew (rows sum to 1)."""
    if n_classes < 2:
        raise DataError(f"label skew needs at least two classes, got {n_classes}")
    shares = np.empty((n_peers, n_classes))
    if n_classes == 2:
        skewed = round(0.3 * n_peers)
        for i in range(n_peers):
            if i < skewed:
                shares[i] = [0.9, 0.1]
            elif i < 2 * skewed:
                shares[i] = [0.1, 0.9]
            else:
                shares[i] = [0.5, 0.5]
        return shares
    other = 0.1 / (n_classes - 1)
    group_of_peer = _round_robin_groups(n_peers, n_classes)
    for i, group in enumerate(group_of_peer):
        shares[i] = other
        shares[i, group] = 0.9
    return shares


def _round_robin_groups(n_peers: int, n_groups: int) -> list[int]:
    """Contiguous groups whose sizes differ by at most one, the first groups larger."""
    base, extra = divmod(n_peers, n_groups)
    groups: list[int] = []
    for g in range(n_groups):
        groups += [g] * (base + (1 if g < extra else 0))
    return groups


def _draw_by_shares(
    labels: np.ndarray, shares: np.ndarray, rng: np.random.Generator, samples_per_peer: int | None
) -> list[np.ndarray]:
    n_peers, n_classes = shares.shape
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    supply = np.array([len(p) for p in pools], dtype=float)
    demand_per_example = shares.sum(axis=0)
    with np.errstate(divide="ignore"):
        limits = np.where(demand_per_example > 0, supply / demand_per_example, np.inf)
    m = int(min(len(labels) // n_peers, limits.min()))
    if samples_per_peer is not None:
        m = min(m, samples_per_peer)
    if m < 1:
        raise DataError(
            f"not enough examples to give each of {n_peers} peers its share (class sizes {supply.astype(int).tolist()})"
        )
    counts_per_peer = [_counts_for(share, m) for share in shares]
    while m > 1 and (np.sum(counts_per_peer, axis=0) > supply).any():  # rounding can over-draw a class
        m -= 1
        counts_per_peer = [_counts_for(share, m) for share in shares]
    taken = [0] * n_classes
    parts = []
    for counts in counts_per_peer:
        idx = []
        for c, k in enumerate(counts):
            idx.append(pools[c][taken[c] : taken[c] + k])
            taken[c] += k
        parts.append(rng.permutation(np.concatenate(idx)))
    return parts


def _counts_for(share: np.ndarray, m: int) -> list[int]:
    """Integer class counts summing to m, proportional to ``share`` (largest remainders)."""
    raw = share * m
    counts = np.floor(raw).astype(int)
    for c in np.argsort(-(raw - counts))[: m - counts.sum()]:
        counts[c] += 1
    return counts.tolist()


def partition(
    labels,
    n_peers: int,
    scheme: str = "label-skew",
    seed: int = 0,
    alpha: float = 0.5,
    samples_per_peer: int | None = None,
) -> list[np.ndarray]:
    """Indices of each peer's examples. ``alpha`` is the Dirichlet concentration (smaller: more skew)."""
    labels = np.asarray(labels)
    if n_peers < 1:
        raise ValueError(f"need at least one peer, got {n_peers}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition {scheme!r}; choose one of {', '.join(SCHEMES)}")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    rng = np.random.default_rng([seed, 0xDA7A])
    if scheme == "label-skew":
        return _draw_by_shares(labels, label_skew_shares(n_peers, n_classes), rng, samples_per_peer)
    if scheme == "iid":
        return _draw_by_shares(
            labels, np.tile(np.bincount(labels, minlength=n_classes) / len(labels), (n_peers, 1)), rng, samples_per_peer
        )
    if alpha <= 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    return _dirichlet(labels, n_peers, n_classes, alpha, rng, samples_per_peer)


def _dirichlet(
    labels: np.ndarray,
    n_peers: int,
    n_classes: int,
    alpha: float,
    rng: np.random.Generator,
    samples_per_peer: int | None,
) -> list[np.ndarray]:
    # The usual per-class split: each class is divided among peers by a Dirichlet(α) draw, so peer
    # sizes vary. A peer left empty would have nothing to train on, so the draw is repeated.
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n_peers)]
        for c in range(n_classes):
            pool = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_peers)) * len(pool)).astype(int)[:-1]
            for i, chunk in enumerate(np.split(pool, cuts)):
                parts[i].extend(chunk.tolist())
        if min(len(p) for p in parts) > 0:
            out = [rng.permutation(np.array(p)) for p in parts]
            return [p[:samples_per_peer] if samples_per_peer else p for p in out]
    raise DataError(f"Dirichlet(alpha={alpha}) keeps leaving a peer without data; raise alpha or use fewer peers")
