"""Links of past rounds whose outcome the opener could not learn in their round, settled when it can.

The opener mixed its round without such a link. When the answerer's final answer arrives (a
background outcome query per link), a link that counted gets its missing term of the mix added,
``w · (x_j − x_i)`` from the tensors kept of that round, between two rounds: the network-wide sums
come out as if the link had been mixed in its round. A link that did not count needs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from peer.algorithm.factors import Block, factor_of
from peer.daemon.protocol import LinkProtocol

log = logging.getLogger("tadlora.daemon")


@dataclass
class PendingLink:
    round: int
    peer_id: str
    address: str
    weight: float
    sent: dict[str, torch.Tensor]  # this peer's factors as sent in that round (mixed names only)
    received: dict[str, torch.Tensor]  # the neighbour's

    def correction(self) -> dict[str, torch.Tensor]:
        """``weight · (x_j − x_i)`` for every mixed tensor: the missing term of the round's mix."""
        return {name: (self.received[name] - self.sent[name]) * self.weight for name in self.sent}


def block_sums(tensors: dict[str, torch.Tensor], key: str) -> dict[str, float]:
    """The float64 sum of each block present, under ``key`` with the block's letter in place of
    ``{}``: ``block_sums(t, "sum_{}_after")`` gives ``sum_a_after``, ``sum_b_after`` (and
    ``sum_h_after`` when the head trains). The fault simulator adds these up across the network.
    One sum over each block's tensors laid end to end: a round takes these sums twice, and three
    torch calls per tensor cost a tenth of a millisecond each time at MiniLM's 39 tensors."""
    by_block: dict[Block, list[torch.Tensor]] = {}
    for name, tensor in tensors.items():
        by_block.setdefault(factor_of(name), []).append(tensor.reshape(-1))
    return {
        key.format(block.lower()): float(torch.cat(parts).sum(dtype=torch.float64))
        for block, parts in sorted(by_block.items())
    }


class Settlements:
    def __init__(
        self, protocol: LinkProtocol, address_of: Callable[[str], str | None], spawn, query_seconds: float
    ) -> None:
        self.protocol, self.address_of, self.spawn, self.query_seconds = protocol, address_of, spawn, query_seconds
        self.pending: dict[tuple[int, str], PendingLink] = {}
        self.answers: dict[tuple[int, str], bool] = {}
        self.asking: dict[tuple[int, str], asyncio.Task] = {}

    def add(self, link: PendingLink) -> None:
        self.pending[(link.round, link.peer_id)] = link

    def is_pending(self, round_: int, peer_id: str) -> bool:
        return (round_, peer_id) in self.pending

    def ask(self) -> None:
        """One background query per pending link (none while one is running)."""
        for key, link in self.pending.items():
            if key not in self.asking and key not in self.answers:
                self.asking[key] = task = self.spawn(self._query(key, link))
                task.add_done_callback(lambda _, key=key: self.asking.pop(key, None))

    async def _query(self, key: tuple[int, str], link: PendingLink) -> None:
        address = self.address_of(link.peer_id) or link.address
        now = asyncio.get_running_loop().time()
        answer = await self.protocol.ask_outcome(link.peer_id, address, link.round, now + self.query_seconds)
        if answer is not None:
            self.answers[key] = answer

    def apply(self, add_to_factors: Callable[[dict[str, torch.Tensor]], bool]) -> list[dict]:
        """Between rounds: add the mix term of each pending link that counted (``add_to_factors`` says
        whether it was added); what was settled."""
        settled = []
        for key, counted in list(self.answers.items()):
            del self.answers[key]
            link = self.pending.pop(key, None)
            if link is None:
                continue
            entry = {"round": link.round, "peer": link.peer_id, "counted": counted}
            if counted:
                correction = link.correction()
                if add_to_factors(correction):
                    entry.update(block_sums(correction, "delta_{}"))
                else:
                    entry["applied"] = False
            settled.append(entry)
            log.info(
                "link to %s in round %d settled late: %s",
                link.peer_id,
                link.round,
                "counted" if counted else "did not count",
            )
        return settled

    def to_state(self) -> list[dict]:
        return [dict(vars(link)) for link in self.pending.values()]

    def load_state(self, state: list[dict]) -> None:
        self.pending = {(p["round"], p["peer_id"]): PendingLink(**p) for p in state}
