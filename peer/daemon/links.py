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


# A neighbour whose link failed this many rounds in a row becomes suspect ...
SUSPECT_AFTER_FAILURES = 2
# ... and is attempted only in rounds divisible by 2, 4, 8, ... up to this (one more doubling per failure) ...
MAX_BACKOFF_ROUNDS = 16
# ... and after this many failed attempts in a row it is dormant: never attempted, not in the degree,
# only asked for its status in the background until it answers. A vanished neighbour so costs at most
# this many rounds that wait for it, spread over its first 1+1+2+4+8 = 16 rounds of absence. Raise it
# where links fail often but briefly (the symptom of too small: a flapping neighbour left out of
# rounds it could have joined; a Status answer brings it back the next round).
DORMANT_AFTER_FAILURES = 5


class LinkBackoff:
    """Attempt neighbours that keep failing less often: exponential backoff, aligned on the round number.

    A suspect neighbour at level k is attempted only in rounds divisible by 2**k. Aligning on the round
    number (rather than counting from the last failure) makes both ends of a link meet again: whatever
    levels the two ends have, a round divisible by the larger power is an attempt at both. A hung or
    cut-off neighbour then costs one waiting round per backoff period instead of every round, and after
    ``DORMANT_AFTER_FAILURES`` failed attempts none at all (dormant: never attempted). In the rounds it
    is skipped, the daemon asks it for its status in the background; an answer ends the backoff, so a
    neighbour that comes back is attempted again at once.

    Only this peer's own view: its degree counts the links it attempts, and both ends of a link agree on
    whether it counted whatever each attempts, so skipping a neighbour never breaks the sums; the other
    end's swap is refused (``not-a-link``) and counts at neither end.
    """

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}

    def period(self, peer_id: str) -> int:
        excess = self.failures.get(peer_id, 0) - SUSPECT_AFTER_FAILURES
        return 1 if excess < 0 else min(MAX_BACKOFF_ROUNDS, 2 ** (excess + 1))

    def dormant(self, peer_id: str) -> bool:
        return self.failures.get(peer_id, 0) >= DORMANT_AFTER_FAILURES

    def attempt(self, peer_id: str, round_: int) -> bool:
        return not self.dormant(peer_id) and round_ % self.period(peer_id) == 0

    def outcome(self, peer_id: str, counted: bool) -> None:
        if counted:
            self.failures.pop(peer_id, None)
        else:
            self.failures[peer_id] = self.failures.get(peer_id, 0) + 1
