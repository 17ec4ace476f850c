"""Which links a peer attempts in a round: the peers it knows, thinned by seeded synthetic drops.

``--edge-prob p`` keeps the link between peers a and b in round r when
``u(seed, r, min(a, b), max(a, b)) < p``, u a uniform number from a hash of those values. Both ends
compute the same u, so they agree on the synthetic graph without a message; the real network then
decides which of those links actually carry an exchange.
"""

from __future__ import annotations

import hashlib


def synthetic_link_up(seed: int, round_: int, a: str, b: str, p: float) -> bool:
    if p >= 1.0:
        return True
    if p <= 0.0:
        return False
    lo, hi = sorted((a, b))
    digest = hashlib.sha256(f"{seed}|{round_}|{lo}|{hi}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < p
