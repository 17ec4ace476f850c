"""The defects the fault simulator was built to find, put back on demand.

Each is a context manager that patches one piece of the daemon back to how it behaved before (issue
10 of the tracker). Tests use them to show that the checker catches each defect
(``tests/inprocess/test_fault_simulator.py``); ``benchmarks/faultsim_before_after.py`` counts what it finds with
and without them, and ``benchmarks/hung_peer.py`` times the old deadline. Never used by the daemon.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from peer.algorithm.factors import HEAD_PREFIX
from peer.algorithm.schedule import AgreedSchedule, interval_for_link_rate
from peer.algorithm.strategies import Strategy
from peer.core.local_peer import LocalPeer
from peer.daemon import node, phases, protocol
from peer.daemon.persistence import Persistence
from peer.daemon.rounds import Decision
from peer.transport.codec import decode_factors


@contextlib.contextmanager
def _patched(target, name: str, value) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


def client_gives_up_on_a_lost_ack():
    """Before: the server answered an outcome query only once its round had closed, and a client that
    had not heard by its deadline counted the link as failed while the server had counted it."""

    async def give_up(self, state, peer_id, address, received, until):
        answer = await self.ask_outcome(peer_id, address, state.round, until) if address else None
        state.decide(peer_id, Decision.COUNTED if answer else Decision.REFUSED, received, self.now())

    stack = contextlib.ExitStack()
    stack.enter_context(_patched(protocol.LinkProtocol, "settle_by_query", give_up))
    stack.enter_context(_patched(protocol, "OUTCOME_QUERY_TIMEOUT_S", 0.01))  # answers come too late
    return stack


def restart_ignores_the_write_ahead_record():
    """Before: a restart resumed from the checkpoint and lost the round the crash interrupted, while
    its neighbours had mixed its factors in that round."""
    original = node.PeerDaemon.resume

    def resume(self):
        self.persistence.load_wal = lambda: None
        return original(self)

    return _patched(node.PeerDaemon, "resume", resume)


def catch_up_adopts_a_neighbours_factors():
    """Before: a peer that was behind replaced its factors with a neighbour's."""
    original = node.PeerDaemon.catch_up

    async def catch_up(self):
        before = self.round
        await original(self)
        if self.round <= before or not self.known:
            return
        donor = sorted(self.known)[0]
        try:
            message = await self.transport.fetch(
                self.known[donor], self.net.run_id, self.peer_id, timeout=1.0, expect=donor
            )
        except Exception:
            return
        self.local.adapter.load_factors(decode_factors(message.payload, self.schema))

    return _patched(node.PeerDaemon, "catch_up", catch_up)


def auto_schedule_without_freeze_or_adoption():
    """Before: every peer re-proposed up to the decision round (a late rise reached only that round's
    neighbours), a silent peer proposed T_max, and peers that decided differently never reconciled."""
    stack = contextlib.ExitStack()
    stack.enter_context(_patched(AgreedSchedule, "proposals_close", property(lambda self: 1 << 30)))
    stack.enter_context(_patched(AgreedSchedule, "adopt", lambda self, *args, **kwargs: False))

    def old_proposal(self, peers):  # every link assumed up before any round; no link at all: T_max
        estimate = self.link_estimate()
        return interval_for_link_rate(peers, 1.0 if estimate is None else estimate)

    stack.enter_context(_patched(phases.PhaseAgreement, "own_proposal", old_proposal))
    return stack


def head_mixed_by_a_plain_mean():
    """Not a past defect but a planted one: the head averaged over the peer and its neighbours with
    equal weights. Each row still sums to one, the columns do not, so the network-wide sum of the
    head drifts while A's and B's stay exact; it shows that the checker watches the head too."""
    original = Strategy.combine

    def combine(self, own, received, weights, self_weight, sent=None):
        mixed = original(self, own, received, weights, self_weight, sent)
        for name in own:
            if name.startswith(HEAD_PREFIX):
                values = [own[name], *(tensors[name] for tensors in received.values())]
                mixed[name] = sum(values) / len(values)
        return mixed

    return _patched(Strategy, "combine", combine)


def compressed_gossip_mixed_plainly():
    """Not a past defect but a planted one: compressed factors mixed as ``w_ii x_i + Σ_j w_ij Q(x_j)``,
    without the difference form. Each peer keeps its exact own factors while its neighbours saw
    ``Q(x_i)``, so every lossy link moves the network-wide sums; fp32 runs stay exact."""
    original = LocalPeer.mix

    def mix(self, round_, received, weights, self_weight, sent=None):
        return original(self, round_, received, weights, self_weight, None)

    return _patched(LocalPeer, "mix", mix)


def deadline_learns_from_failed_waits():
    """Before: the adaptive deadline recorded the whole exchange phase, waits for failed links
    included, so it climbed to the maximum once links started to fail."""
    original = node.PeerDaemon._exchange

    async def exchange(self, state, tentative):
        seconds = await original(self, state, tentative)
        if state.counted:  # replace what the fixed daemon learned (time to the last counted link)
            self.deadline.samples.pop()
            self.deadline.samples.append(seconds)
        return seconds

    return _patched(node.PeerDaemon, "_exchange", exchange)


def no_backoff():
    """Before: a neighbour that never answered was attempted in every round."""
    return _patched(node.LinkBackoff, "attempt", lambda self, peer_id, round_: True)


DEFECTS = {
    "client gives up on a lost ack": client_gives_up_on_a_lost_ack,
    "restart ignores the write-ahead record": restart_ignores_the_write_ahead_record,
    "catch-up adopts a neighbour's factors": catch_up_adopts_a_neighbours_factors,
    "auto T without freeze or adoption": auto_schedule_without_freeze_or_adoption,
}


def consensus_checkpoint_after_training():
    """Never was: a round's checkpoint written without the optimizer even when the round trained (its
    moments changed), so the checkpoint holds the moments of the whole one before. The ``state``
    invariant is what catches it."""
    original = Persistence.round_files

    def round_files(self, record, next_state, optimizer_unchanged=False):
        return original(self, record, next_state, optimizer_unchanged=True)

    return _patched(Persistence, "round_files", round_files)
