"""The link protocol, both of its sides: one swap of a round's factors between two peers.

    client (smaller id)                         server
    ----- Header, Chunk* (its factors) ------->  respond: validate, stage
    <---- Header, Chunk* (own factors) -------
    validate, write to the WAL (tentative)
    ----- Commit ----------------------------->  commit: write to the WAL (final), decide COUNTED
    <---- CommitAck --------------------------
    decide COUNTED

The server's decision is final when it is taken: COUNTED at the commit (after the WAL write), REFUSED
when the stream ends without a commit (``abort``) or when an outcome query arrives first. An outcome
query is therefore answered at once and the answer never changes. A client whose ack is lost asks
(``Transport.outcome``) until its deadline plus one frame timeout; an answer settles the link. If no
answer comes (the server is down or cut off), the link is left *unresolved*: the round mixes without
it, and the daemon settles it later (``settlement.py``) when the answer arrives, adding the missing term
of the mix from the round's kept tensors, so that the network-wide sums come out exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from peer.algorithm.factors import select
from peer.daemon.persistence import Persistence
from peer.daemon.rounds import Decision, Received, RoundBook, RoundState
from peer.daemon.timing import AHEAD_RETRY_S, OUTCOME_QUERY_TIMEOUT_S, OUTCOME_RETRY_S
from peer.transport.base import (
    ExchangeFailed,
    ExchangeOutcomeUnknown,
    FactorMessage,
    Header,
    Reason,
    Rejected,
    Transport,
    shown,
)
from peer.transport.codec import DecodeError, Schema, decode_factors
from peer.transport.ids import MAX_RUN_ID_LENGTH, peer_id_problem

log = logging.getLogger("tadlora.daemon")


@dataclass
class Identity:
    peer_id: str
    run_id: str
    schema: Schema
    digest: bytes
    device: torch.device | str = "cpu"


class LinkProtocol:
    def __init__(
        self,
        me: Identity,
        book: RoundBook,
        persistence: Persistence,
        transport: Transport,
        frame_timeout: float,
        current_round: Callable[[], int],
        on_header: Callable[[Header], None],
        on_later_round: Callable[[str, int], None],
        on_phase_refused: Callable[[str], None] = lambda address: None,
        on_refused: Callable[[Reason, str, str], None] = lambda reason, detail, source: None,
    ) -> None:
        self.me, self.book, self.persistence, self.transport = me, book, persistence, transport
        self.frame_timeout = frame_timeout
        self.current_round = current_round
        self.on_header = on_header  # every header of this run a neighbour sends: schedule gossip
        self.on_later_round = on_later_round  # a neighbour told us it is at a later round than ours
        self.on_refused = on_refused  # this peer refused a neighbour's answer: counted like any refusal
        self.on_phase_refused = on_phase_refused  # a neighbour's phase differs from ours (auto T split)
        self.unresolved: dict[tuple[int, str], Received] = {}

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ validation, both sides

    def check_identity(self, h: Header) -> None:
        if h.run_id != self.me.run_id:
            raise Rejected(
                Reason.RUN,
                f"run {h.run_id[:MAX_RUN_ID_LENGTH]!r}, this peer belongs to {self.me.run_id!r}",
                self.current_round(),
            )
        if why := peer_id_problem(h.sender_id):
            raise Rejected(Reason.IDENTITY, f"sender id {why}", self.current_round())
        if h.schema_digest != self.me.digest:
            raise Rejected(
                Reason.SCHEMA, "adapter schema differs (model, rank, targets or --train-head)", self.current_round()
            )
        if h.sender_id == self.me.peer_id:
            raise Rejected(Reason.SELF, "a message from this peer's own id", self.current_round())

    def decode(self, message: FactorMessage, own: Header) -> dict[str, torch.Tensor]:
        h = message.header
        if h.phase != own.phase or tuple(h.factors) != tuple(own.factors):
            raise Rejected(
                Reason.PHASE,
                f"phase {h.phase} {h.factors}, this round is {own.phase} {own.factors}",
                self.current_round(),
            )
        wanted = set(select(self.me.schema, own.factors))
        try:
            return decode_factors(message.payload, self.me.schema, wanted, device=self.me.device)
        except DecodeError as exc:
            raise Rejected(exc.reason, exc.detail, self.current_round()) from None

    # ------------------------------------------------------------------ server side

    async def screen(self, h: Header, max_payload_bytes: int, wait_for_round: float) -> FactorMessage:
        """Everything ``respond`` checks but the payload, from the header alone and before any payload
        is read: run, schema and sender id, the declared size against this run's factors, the round,
        and, once that round is open here, that the sender is a link of it not yet decided, with a
        degree of at least one. While it waits for the round, the payload stays with the sender (the
        transport reads no further, so flow control holds it back): a stranger or a replay costs a
        stream slot, never payload memory.

        Returns this round's own factors: the reply does not depend on the sender's (only the commit
        does), so the transport streams it while the sender's are still arriving; ``respond`` still
        validates and stages them, and the link counts only at the commit."""
        self.check_identity(h)
        if h.payload_size > max_payload_bytes:
            raise Rejected(
                Reason.TOO_LARGE,
                f"{h.payload_size} bytes announced; this run's factors take at most {max_payload_bytes}",
                self.current_round(),
            )
        state = await self._link_of_round(h, wait_for_round)
        # only now: a header of a sender that is no link of the round (any machine can forge one
        # without TLS) must not reset a dormant peer's back-off or steer the phase schedule
        self.on_header(h)
        return state.own

    async def respond(self, incoming: FactorMessage, wait_for_round: float) -> FactorMessage:
        h = incoming.header
        self.check_identity(h)
        state = await self._link_of_round(h, wait_for_round)  # again: the round may have moved on meanwhile
        self.on_header(h)
        tensors = self.decode(incoming, state.own.header)
        state.staged[h.sender_id] = Received(tensors, h.degree, h.payload_size, incoming.payload, tuple(h.factors))
        return state.own

    async def _link_of_round(self, h: Header, wait: float) -> RoundState:
        """The open round of ``h``, where its sender is a link not yet decided; else Rejected."""
        state = await self._round_for(h.round, h.sender_id, wait)
        if h.sender_id not in state.candidates:
            raise Rejected(
                Reason.NOT_A_LINK, f"{h.sender_id} is not a link of round {h.round} here", self.current_round()
            )
        if h.sender_id in state.decisions:
            raise Rejected(
                Reason.REPLAY, f"the link with {h.sender_id} in round {h.round} is decided", self.current_round()
            )
        if h.degree < 1:
            raise Rejected(
                Reason.DEGREE, f"degree {h.degree}: a sender attempts at least this link", self.current_round()
            )
        return state

    async def _round_for(self, round_: int, sender: str, wait: float) -> RoundState:
        if round_ <= self.book.closed_upto:
            raise Rejected(Reason.ROUND_BEHIND, f"round {round_} is over here", self.current_round())
        if round_ > self.current_round() + 1:
            self.on_later_round(sender, round_)
            raise Rejected(Reason.ROUND_AHEAD, f"this peer is at round {self.current_round()}", self.current_round())
        try:
            await asyncio.wait_for(self.book.ready_event(round_).wait(), wait)
        except TimeoutError:
            raise Rejected(Reason.ROUND_AHEAD, f"round {round_} not reached in time", self.current_round()) from None
        state = self.book.get(round_)
        if state is None:  # closed (or skipped) while we waited
            raise Rejected(Reason.ROUND_BEHIND, f"round {round_} is over here", self.current_round())
        return state

    def commit(self, header: Header) -> bool:
        """Final: write the link ahead, then count it. A repeated commit gets the same answer."""
        state = self.book.get(header.round)
        if state is None:
            return self.book.decision(header.round, header.sender_id) is Decision.COUNTED
        decided = state.decisions.get(header.sender_id)
        if decided is not None:
            return decided is Decision.COUNTED
        staged = state.staged.get(header.sender_id)
        if staged is None:
            return False
        self.persistence.record_link(header.round, header.sender_id, staged, final=True)
        state.decide(header.sender_id, Decision.COUNTED, staged, self.now())
        return True

    def abort(self, header: Header) -> None:
        """The stream ended without a commit: the link is refused for good (a late query says so)."""
        state = self.book.get(header.round)
        if state is not None and header.sender_id in state.staged:
            state.decide(header.sender_id, Decision.REFUSED)

    def outcome(self, peer_id: str, round_: int) -> bool | None:
        """Did the link with ``peer_id`` count in ``round_``? Answered at once, and final: a link not
        committed yet is refused by the question itself. None only for rounds too old to remember."""
        if peer_id >= self.me.peer_id:
            return None  # this peer opens links to higher ids: only the opener (lower id) may ask
        state = self.book.get(round_)
        if state is not None:
            if peer_id not in state.candidates:
                return False  # not a link of that round here (and nothing recorded for a stranger)
            return state.decide(peer_id, Decision.REFUSED) is Decision.COUNTED
        if round_ in self.book.history:
            return self.book.history[round_].get(peer_id) is Decision.COUNTED
        if round_ <= self.book.closed_upto and self.book.history and round_ < min(self.book.history):
            return None  # forgotten
        return False  # a round never opened here (skipped, or not reached): nothing counted in it

    # ------------------------------------------------------------------ client side

    async def open_link(self, state: RoundState, peer_id: str, address: str | None, until: float) -> None:
        """Swap with a neighbour of higher id and settle the link: counted, refused, or unresolved."""
        staged: dict[str, Received] = {}

        async def validate(reply: FactorMessage) -> None:
            try:
                await check(reply)
            except Rejected as r:  # our refusal of its answer: counted and logged like an incoming one
                self.on_refused(r.reason, r.detail, address or peer_id)
                raise

        async def check(reply: FactorMessage) -> None:
            self.check_identity(reply.header)
            if reply.header.sender_id != peer_id or reply.header.round != state.round:
                raise Rejected(Reason.ROUND, f"answer for round {reply.header.round} from {reply.header.sender_id}")
            self.on_header(reply.header)  # before the phase check: a split schedule is learned from it
            tensors = self.decode(reply, state.own.header)
            h = reply.header
            received = Received(tensors, h.degree, h.payload_size, reply.payload, tuple(h.factors))
            # before the commit: after it the server may count the link, and we must be able to as well
            self.persistence.record_link(state.round, peer_id, received, final=False)
            staged["received"] = received

        try:
            if address is None:
                raise ExchangeFailed(f"{peer_id} has no address")
            await self._exchange_retrying_while_ahead(
                address, state, peer_id, validate, until, answered=lambda: "received" in staged
            )
            state.decide(peer_id, Decision.COUNTED, staged["received"], self.now())
        except ExchangeOutcomeUnknown:
            await self.settle_by_query(state, peer_id, address, staged["received"], until)
        except Rejected as r:
            if r.reason in (Reason.ROUND_BEHIND, Reason.ROUND_CLOSED) and r.current_round > state.round:
                self.on_later_round(peer_id, r.current_round)
            if r.reason == Reason.PHASE and address is not None:
                self.on_phase_refused(address)
            log.info("%s: link to %s in round %d refused: %s", self.me.peer_id, peer_id, state.round, shown(str(r)))
            state.decide(peer_id, Decision.REFUSED)
        except ExchangeFailed as exc:
            log.info("%s: link to %s in round %d failed: %s", self.me.peer_id, peer_id, state.round, shown(str(exc)))
            state.decide(peer_id, Decision.REFUSED)

    async def _exchange_retrying_while_ahead(
        self, address: str, state: RoundState, peer_id: str, validate, until: float, answered: Callable[[], bool]
    ) -> None:
        """``answered``: whether the server's factors already came (and were written ahead): a server
        that answered has reached the round, so a later "not reached yet" is refused, never retried
        (retrying would write the link ahead again, as often as a hostile server asks)."""
        while True:
            left = until - self.now()
            if left <= 0:
                raise ExchangeFailed("deadline passed")
            try:
                await self.transport.exchange(address, state.own, validate, timeout=left, expect=peer_id)
                return
            except Rejected as r:
                # the server has not reached this round yet: it will soon, ask again
                if r.reason != Reason.ROUND_AHEAD or r.current_round >= state.round or state.closed or answered():
                    raise
                await asyncio.sleep(min(AHEAD_RETRY_S, max(0.0, until - self.now())))

    async def ask_outcome(self, peer_id: str, address: str | None, round_: int, until: float) -> bool | None:
        while True:
            try:
                answer = (
                    None
                    if not address
                    else await self.transport.outcome(
                        address,
                        self.me.run_id,
                        self.me.peer_id,
                        round_,
                        timeout=OUTCOME_QUERY_TIMEOUT_S,
                        expect=peer_id,
                    )
                )
            except Exception as exc:
                log.debug("%s: outcome query to %s failed: %s", self.me.peer_id, address, exc)
                answer = None
            if answer is not None or self.now() >= until:
                return answer
            await asyncio.sleep(OUTCOME_RETRY_S)

    async def settle_by_query(
        self, state: RoundState, peer_id: str, address: str | None, received: Received, until: float
    ) -> None:
        answer = await self.ask_outcome(peer_id, address, state.round, until + self.frame_timeout)
        if answer is None:
            log.warning(
                "%s: outcome of the link to %s in round %d unknown; settled when it is learned",
                self.me.peer_id,
                peer_id,
                state.round,
            )
            self.unresolved[(state.round, peer_id)] = received
            state.event(peer_id).set()
            return
        state.decide(peer_id, Decision.COUNTED if answer else Decision.REFUSED, received, self.now())
