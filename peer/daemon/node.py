"""The peer daemon: one peer's round loop over a real transport, built from parts that each do one job.

Round r, at every peer:

1. Apply the settlements learned since the last round (links of past rounds whose outcome arrived
   late, ``protocol.PendingLink``) and, with ``auto``, start the next phase (``AgreedSchedule``).
2. Train K local steps on the factor(s) of the plan (in a worker thread: the event loop keeps
   answering neighbours meanwhile).
3. Open the round: choose the links it attempts (the peers it knows, thinned by the seeded synthetic
   drops of ``--edge-prob`` and by the backoff of neighbours that keep failing, ``links.py``); its
   degree is their number. Write the write-ahead record (``persistence.py``) and seal its factors.
4. Exchange (``protocol.py``): for each link the peer with the smaller id opens a stream; the other
   answers. A link counts at both ends or at neither. The phase ends when every attempted link is
   decided, or at the adaptive deadline (``clock.py``).
5. Mix the plan's factors with those of the links that counted, with weights
   ``w_ij = 1 / (1 + max(deg_i, deg_j))`` (``algorithm/mixing.py``; degrees travel in the headers) and
   ``w_ii = 1 − Σ w_ij``: the matrix is symmetric and doubly stochastic whatever links failed, so the
   network-wide sum of every factor is kept.
6. Write the checkpoint of round r + 1 (which holds the round's line too), append the line to
   ``rounds.jsonl``, drop the WAL: on a thread of their own, beside round r + 1's training; when round
   r + 1 trains nothing, that round writes them itself before it opens (``files_written``).

Round clock: the round number travels in every header and a factor of another round is never mixed
(refused with ``round-behind`` / ``round-ahead``). A peer two or more rounds behind a neighbour (a late
joiner, a restart, the other side of a healed partition) jumps forward to the neighbour's round and
takes its phase schedule, but keeps its own factors: the following rounds mix them with everyone's, so
no side's work is replaced and the network sums are kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from peer import strict_json
from peer.algorithm.compression import WireDtype
from peer.algorithm.factors import blocks_of, select
from peer.algorithm.mixing import metropolis_hastings_weights
from peer.algorithm.schedule import ScheduleGossip
from peer.config import DaemonConfig, RunConfig
from peer.core.local_peer import LocalPeer
from peer.daemon.checkpoint import CHECKPOINT, CheckpointError
from peer.daemon.clock import AdaptiveDeadline
from peer.daemon.links import LinkBackoff, synthetic_link_up
from peer.daemon.membership import Membership
from peer.daemon.observe import Observer, Observers
from peer.daemon.persistence import (
    WAL,
    WAL_LINKS,
    FolderStore,
    Persistence,
    RoundFiles,
    WriteAhead,
    recorded_payload,
    snapshot,
)
from peer.daemon.phases import PhaseAgreement
from peer.daemon.protocol import Identity, LinkProtocol
from peer.daemon.rounds import Decision, Received, RoundBook, RoundState
from peer.daemon.settlement import PendingLink, Settlements, block_sums
from peer.daemon.timing import (
    FETCH_TIMEOUT_S,
    LAGGING_NEIGHBOUR_ALLOWANCE,
    LINGER_POLL_S,
    SCHEDULE_WINDOW_ROUNDS,
    SETTLE_POLL_FRACTION,
    STATUS_TIMEOUT_S,
    WATCH_INTERVAL_S,
    WATCH_STATUS_TIMEOUT_S,
    WATCH_UNREACHABLE_TRIES,
)
from peer.discovery.mdns import Refusal as MdnsRefusal
from peer.transport.base import (
    ExchangeFailed,
    ExchangeServer,
    FactorMessage,
    Header,
    NeighbourInfo,
    Reason,
    Rejected,
    StatusInfo,
    Transport,
    shown,
)
from peer.transport.codec import Buffer, DecodeError, decode_factors, encode_factors, schema_digest, schema_of
from peer.transport.framing import seal

log = logging.getLogger("tadlora.daemon")

# Every key of the refusal counters, metric labels and Status answer: the transport's reasons and
# discovery's (counted as ``mdns-<reason>``).
REFUSAL_REASONS = frozenset([r.value for r in Reason] + [f"mdns-{r.value}" for r in MdnsRefusal])
PAYLOAD_HEADER_ROOM = 4096
# The name of the daemon's one adapter inside its PEFT model. Not the peer id: PEFT adapter names are
# module names (no '.'), and nothing outside the process sees this name.
LOCAL_ADAPTER = "local"
GENERATIONS_FILE = "generations.jsonl"  # a causal LM's answers to sample prompts, per evaluation
# A neighbour one round ahead is normal (it was not linked with us last round); two or more means we
# missed rounds and jump forward.
JUMP_WHEN_BEHIND_BY = 2
# After a neighbour's claim to be far ahead was not confirmed by its own address (a forged header, or a
# neighbour that does not answer Status), its claims are ignored for this many rounds: each check costs
# up to STATUS_TIMEOUT_S on the round's path.
UNCONFIRMED_CLAIM_PAUSE_ROUNDS = 8

Offload = Callable[..., Awaitable[Any]]


async def run_inline(fn, *args):
    """An ``Offload`` that runs ``fn`` on the loop's own thread (tests, the fault simulator)."""
    return fn(*args)


def thread_offload(worker: ThreadPoolExecutor) -> Offload:
    """Run blocking work (training, evaluation) in ``worker`` so the loop keeps answering neighbours."""

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

    return run


class PeerDaemon(ExchangeServer):
    """One peer: ``local`` (its model, trainer and strategy), its settings, its files and transport.

    ``offload`` runs blocking work; ``evaluate`` scores the local model: ``accuracy``, and for a causal LM
    ``answer_loss`` and ``perplexity`` (None: no evaluation)."""

    def __init__(
        self,
        local: LocalPeer,
        run: RunConfig,
        net: DaemonConfig,
        persistence: Persistence,
        transport: Transport,
        offload: Offload,
        evaluate: Callable[[], Mapping[str, float]] | None = None,
        schedule_window: int = SCHEDULE_WINDOW_ROUNDS,
        write_behind: Offload = run_inline,
    ) -> None:
        self.local, self.run, self.net, self.persistence, self.transport = local, run, net, persistence, transport
        self.wire = WireDtype(run.wire_dtype)  # how this peer's factors travel (it decodes any form)
        self.offload, self.evaluate = offload, evaluate
        # the round's files are written by write_behind while the next round trains (_write_round);
        # before a round that trains nothing, that round writes them itself (unwritten, files_written)
        self.write_behind = write_behind
        self.writing: asyncio.Task | None = None
        self.unwritten: RoundFiles | None = None
        self.peer_id = net.peer_id
        self.strategy = local.strategy
        factors = local.factors()
        self.schema = schema_of(factors)
        self.digest = schema_digest(self.schema)
        device = next(iter(factors.values())).device
        self.me = Identity(self.peer_id, net.run_id, self.schema, self.digest, device)
        self.book = RoundBook()
        self.protocol = LinkProtocol(
            self.me,
            self.book,
            persistence,
            transport,
            net.frame_timeout,
            lambda: self.round,
            self._on_header,
            self._on_later_round,
            self._on_phase_refused,
            self.count_rejection,
        )
        self.membership = Membership(self.peer_id, net.run_id, self.digest, transport, net.tls, self.count_rejection)
        self.backoff = LinkBackoff()
        self.edge_prob = 1.0 if run.topology == "complete" else run.edge_prob
        self.deadline = AdaptiveDeadline(net.round_timeout_min, net.round_timeout_max)
        self.round = 0
        self.rejected: Counter[str] = Counter()
        self.observer: Observer = Observers([])  # metrics, TensorBoard: set by the runner (daemon.main)
        self.last_link: dict[str, tuple[int, float]] = {}
        self.latest: FactorMessage | None = None  # mixed factors (A and B), ready for round latest.header.round
        # the largest payload a peer of this run can send: every block of this schema (the same names,
        # shapes and dtypes encode to the same size), with room for the container's header
        self.max_payload_bytes = len(encode_factors(self.local.factors())) + PAYLOAD_HEADER_ROOM
        self.behind: tuple[int, str] | None = None
        self.unconfirmed: dict[str, int] = {}  # known peer -> round until which its round claims are ignored
        self.settlements = Settlements(self.protocol, self.known.get, self._spawn, net.round_timeout_min)
        self.probing: dict[str, asyncio.Task] = {}  # status calls to neighbours in backoff
        self.recovered: tuple[RoundState, dict, dict[str, Received]] | None = None
        self.tasks: dict[asyncio.Task, None] = {}  # a dict: cancelled in creation order (replayable)
        self.out: Path | None = None
        self.worker: ThreadPoolExecutor | None = None
        self.stopping = asyncio.Event()
        self.address = ""
        # switch-interval auto: phase lengths agreed at run time from the measured link availability
        self.phases = PhaseAgreement(self.strategy, schedule_window) if run.switch_interval == "auto" else None

    @classmethod
    def from_config(cls, run: RunConfig, net: DaemonConfig, out_dir: Path, transport: Transport) -> PeerDaemon:
        """The daemon of ``tadlora run``: the model, the data shard and the optimizer built from the config."""
        from peer.core.run_setup import (
            build_model,
            build_trainer,
            evaluator_for,
            mixing_rule_for,
            prepare_data,
            strategy_for,
            topology_for,
        )
        from peer.training.causal import CausalEvaluator

        data = prepare_data(run)
        adapter = build_model(run, data.task.num_labels, [LOCAL_ADAPTER])[LOCAL_ADAPTER]
        trainer = build_trainer(run, adapter, data.shards[net.peer_index], net.peer_index)
        evaluator = evaluator_for(run, data, trainer.device)

        def evaluate() -> dict[str, float]:
            """The scores; for a causal LM also its answers to the sample prompts, in generations.jsonl
            (``round``: the round just done; after the run, the number of rounds)."""
            scores = evaluator.evaluate(adapter)
            if isinstance(evaluator, CausalEvaluator):
                with (Path(out_dir) / GENERATIONS_FILE).open("a") as f:
                    for sample in evaluator.generations(adapter):
                        f.write(strict_json.dumps({"round": daemon.round, "peer": net.peer_id, **sample}) + "\n")
            return scores

        local = LocalPeer(
            net.peer_id, adapter, trainer, strategy_for(run, topology_for(run)), run.local_steps, mixing_rule_for(run)
        )
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"train-{net.peer_id}")
        # a thread of its own: a checkpoint queued behind the next round's training would not overlap it
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"write-{net.peer_id}")
        daemon = cls(
            local,
            run,
            net,
            Persistence(FolderStore(out_dir)),
            transport,
            thread_offload(worker),
            evaluate,
            write_behind=thread_offload(writer),
        )
        daemon.out, daemon.worker = Path(out_dir), worker
        return daemon

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    @property
    def known(self) -> dict[str, str]:
        return self.membership.known

    # ------------------------------------------------------------------ server side (ExchangeServer)

    async def screen(self, header: Header) -> FactorMessage | None:
        return await self.protocol.screen(header, self.max_payload_bytes, self.net.round_timeout_max)

    async def respond(self, incoming: FactorMessage) -> FactorMessage:
        return await self.protocol.respond(incoming, self.net.round_timeout_max)

    async def commit(self, header: Header) -> bool:
        return self.protocol.commit(header)

    async def abort(self, header: Header) -> None:
        self.protocol.abort(header)

    def outcome(self, peer_id: str, round_: int, run_id: str) -> bool | None:
        """Answered only within this run (another run's query is counted and learns nothing). Not only
        to peers known now: a neighbour this peer lost since (a goodbye, a restart at a new address)
        must still learn how its link of that round ended, or the link could count at one end only;
        for a peer that was no link of that round the answer is ``False`` or ``None`` anyway."""
        if run_id != self.net.run_id:
            self.count_rejection(Reason.RUN, f"outcome query from {peer_id[:60]!r} of run {run_id[:60]!r}")
            return None
        return self.protocol.outcome(peer_id, round_)

    def status(self) -> StatusInfo:
        start, length, _, decided = (
            self.phases.schedule.segment(self.round) if self.phases else (0, self.strategy.switch_interval, "", 0)
        )
        return StatusInfo(
            peer_id=self.peer_id,
            run_id=self.net.run_id,
            round=self.round,
            phase=self.strategy.plan(self.round).phase,
            schema_digest=self.digest,
            switch_interval=length,
            phase_start=start,
            schedule_round=decided,
            rejected=dict(self.rejected),
            neighbours=[
                NeighbourInfo(pid, addr, *self.last_link.get(pid, (-1, 0.0)))
                for pid, addr in sorted(self.known.items())
            ],
        )

    async def current_factors(self, run_id: str, peer_id: str) -> FactorMessage:
        if run_id != self.net.run_id:
            raise Rejected(Reason.RUN, f"this peer belongs to run {self.net.run_id!r}")
        if peer_id not in self.known:
            raise Rejected(Reason.MEMBERSHIP, f"{peer_id[:60]!r} is not a known peer of this run")
        if self.latest is None:
            raise Rejected(Reason.NO_FACTORS, "nothing mixed yet")
        return self.latest

    def count_rejection(self, reason: str, detail: str = "", source: str = "") -> None:
        """One log line and one count per refused message; the message itself is dropped. The counter
        key is from the fixed vocabulary (``REFUSAL_REASONS``; anything else counts as ``unknown``) and
        the detail and source are escaped and cut: they may carry what a remote peer wrote."""
        key = reason if reason in REFUSAL_REASONS else Reason.UNKNOWN.value
        self.rejected[key] += 1
        self.observer.rejected(key)
        log.warning("%s: refused (%s) from %s: %s", self.peer_id, key, shown(source or "?", 80), shown(detail))

    # ------------------------------------------------------------------ what neighbours tell us

    def _on_header(self, h: Header) -> None:
        if h.sender_id not in self.known:
            return  # only a known peer of this run may steer our backoff and our phase schedule
        self.backoff.outcome(h.sender_id, counted=True)  # alive and of this run: attempt it again
        if self.phases is not None:
            self.phases.heard(h)

    def _on_phase_refused(self, address: str) -> None:
        """A neighbour refused our factors for their phase: a schedule split. Its refusal does not carry
        its schedule, so ask for it (Status); the later of the two is adopted at the next round."""
        if self.phases is not None:
            self._spawn(self._learn_phase_of(address))

    async def _learn_phase_of(self, address: str) -> None:
        try:
            status = await self.transport.status(address, timeout=STATUS_TIMEOUT_S)
        except ExchangeFailed:
            return
        if self.phases is not None and status.run_id == self.net.run_id:
            self.phases.consider(status.phase_start, status.switch_interval, status.phase, status.schedule_round)

    def _on_later_round(self, peer_id: str, round_: int) -> None:
        if peer_id not in self.known:
            return  # only a known peer of this run can tell us that we are behind
        if self.round < self.unconfirmed.get(peer_id, -1):
            return  # its last claim was not confirmed by its own address: not asked again for a while
        if self.behind is None or round_ > self.behind[0]:
            self.behind = (round_, peer_id)

    # ------------------------------------------------------------------ one round

    def _header(self, round_: int, degree: int, factors: tuple[str, ...] | None = None) -> Header:
        plan = self.strategy.plan(round_)
        schedule = self.phases.gossip(round_) if self.phases else ScheduleGossip(self.strategy.switch_interval)
        return Header(
            run_id=self.net.run_id,
            sender_id=self.peer_id,
            round=round_,
            phase=plan.phase,
            factors=factors or tuple(sorted(plan.mix)),
            schema_digest=self.digest,
            degree=degree,
            schedule=schedule,
        )

    def _choose_links(self, round_: int) -> list[str]:
        links = []
        for pid in sorted(self.known):
            if not synthetic_link_up(self.run.seed, round_, self.peer_id, pid, self.edge_prob):
                continue
            if self.backoff.attempt(pid, round_):
                links.append(pid)
            else:
                self._probe(pid)
        return links

    def _probe(self, peer_id: str) -> None:
        """Ask a neighbour in backoff whether it answers again (a Status call, in the background): one
        that does is attempted from the next round on, and tells its round (a peer behind catches up).
        A hung neighbour costs only this call's timeout, off the round's path."""
        if peer_id in self.probing:
            return
        self.probing[peer_id] = task = self._spawn(self._ask_alive(peer_id))
        task.add_done_callback(lambda _: self.probing.pop(peer_id, None))

    async def _ask_alive(self, peer_id: str) -> None:
        address = self.known.get(peer_id)
        try:
            status = await self.transport.status(address, timeout=STATUS_TIMEOUT_S, expect=peer_id) if address else None
        except ExchangeFailed:
            return
        if status is not None and status.run_id == self.net.run_id and status.peer_id == peer_id:
            self.backoff.outcome(peer_id, counted=True)  # attempted again from the next round on
            self._on_later_round(peer_id, status.round)

    def _open_round(self, round_: int, candidates: list[str]) -> RoundState:
        payload = encode_factors(self.local.outgoing(round_), self.wire)
        own = seal(self._header(round_, len(candidates)), payload)
        return self.book.opened(RoundState(round_, frozenset(candidates), own))

    def _spawn(self, coroutine) -> asyncio.Task:
        """Every task of the daemon is tracked, so that ``kill`` can stop all of them at once."""
        task = asyncio.ensure_future(coroutine)
        self.tasks[task] = None
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)
        if not task.cancelled() and isinstance(task.exception(), Exception):
            log.error("%s: a background task failed: %r", self.peer_id, task.exception())

    def kill(self) -> None:
        """Stop every task of this daemon where it stands (the fault simulator's crash)."""
        for task in list(self.tasks):
            task.cancel()
        self.membership.close()

    async def _exchange(self, state: RoundState, tentative: dict[str, Received]) -> float:
        """Open this round's links (``tentative``: links of a recovered round that may have counted at
        the server: asked about instead of opened again) and wait until all are decided or the deadline."""
        start = self.now()
        until = start + self.deadline.current()
        # a swap we open may wait for a neighbour one round behind to open our round (it finishes its
        # round and trains): allow it longer than our own deadline, or the two stay a round apart
        open_until = start + max(self.deadline.current(), LAGGING_NEIGHBOUR_ALLOWANCE * self.net.round_timeout_min)
        links = sorted(state.candidates)
        tasks = [
            self._spawn(self.protocol.settle_by_query(state, pid, self.known.get(pid), received, until))
            for pid, received in sorted(tentative.items())
        ]
        tasks += [
            self._spawn(self._open(state, pid, open_until))
            for pid in links
            if self.peer_id < pid and pid not in state.decisions and pid not in tentative
        ]
        tasks += [self._spawn(self._watch(state, pid, until)) for pid in links if pid < self.peer_id]
        waits = [self._spawn(state.event(pid).wait()) for pid in links]
        try:
            if waits:
                await asyncio.wait(waits, timeout=max(0.0, until - self.now()))
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in waits + tasks:
                task.cancel()
        timed_out = self._settle_the_rest(state, links)
        if state.last_counted_at is not None:
            # learn from the time the last counted link took, never from waits for links that failed
            self.deadline.observe(max(0.0, state.last_counted_at - start))
        elif timed_out:
            self.deadline.nothing_counted()
        return self.now() - start

    def _settle_the_rest(self, state: RoundState, links: list[str]) -> bool:
        """Links without a decision at the deadline: refused, unless this peer may have committed one
        (written tentatively ahead): that one is unresolved and settled later. True if any was left."""
        tentative = self.persistence.wal.links if self.persistence.wal is not None else {}
        left = [
            pid for pid in links if pid not in state.decisions and (state.round, pid) not in self.protocol.unresolved
        ]
        for pid in left:
            link = tentative.get(pid)
            if link is not None and not link["final"]:
                self.protocol.unresolved[(state.round, pid)] = self._recorded(state, link)
            else:
                state.decide(pid, Decision.REFUSED)
        return bool(left)

    async def _open(self, state: RoundState, peer_id: str, until: float) -> None:
        started = self.now()
        await self.protocol.open_link(state, peer_id, self.known.get(peer_id), until)
        self.observer.exchange(peer_id, self.now() - started, peer_id in state.counted)

    async def _watch(self, state: RoundState, peer_id: str, until: float) -> None:
        """Refuse a link that a neighbour of lower id should open, as soon as it cannot come any more:
        the neighbour is unreachable (crashed, partitioned) or already past this round. Without this a
        dead neighbour would hold every round it is attempted in until the deadline."""
        event, unreachable = state.event(peer_id), 0
        while not event.is_set() and self.now() < until:
            try:  # wake at once when the link settles
                await asyncio.wait_for(event.wait(), WATCH_INTERVAL_S)
                return
            except TimeoutError:
                pass
            gone = await self._opener_gone(peer_id, state.round)
            unreachable = unreachable + 1 if gone is None else 0
            if gone or unreachable >= WATCH_UNREACHABLE_TRIES:
                state.decide(peer_id, Decision.REFUSED)  # final: a commit that comes later is refused
                return

    async def _opener_gone(self, peer_id: str, round_: int) -> bool | None:
        """True: past this round, or no longer known; None: no answer (down, cut off, or one lost message)."""
        address = self.known.get(peer_id)
        if address is None:
            return True
        try:
            return (await self.transport.status(address, WATCH_STATUS_TIMEOUT_S, expect=peer_id)).round > round_
        except ExchangeFailed:
            return None

    @staticmethod
    def _counted_in_order(state: RoundState) -> dict:
        """The round's counted links by neighbour id, not in the order they committed in: every float
        sum over them (the self weight, the mix, a robust rule's) then comes out the same bits in every
        run, whatever order the links happened to commit in."""
        return dict(sorted(state.counted.items()))

    @staticmethod
    def _weights(state: RoundState) -> tuple[float, dict[str, float]]:
        counted = PeerDaemon._counted_in_order(state)
        return metropolis_hastings_weights(state.degree, {pid: r.degree for pid, r in counted.items()})

    def _mix(self, state: RoundState) -> dict:
        self_weight, weights = self._weights(state)
        before = self.local.factors()
        # compressed: the own factors as the neighbours decoded them, for the difference form
        sent = None if self.wire == WireDtype.FP32 or not state.counted else self._sent(state)
        received = {pid: r.tensors for pid, r in self._counted_in_order(state).items()}
        self.local.mix(state.round, received, weights, self_weight, sent)
        after = self.local.factors()
        self._remember_unresolved(state)
        if self.phases is not None:
            self.phases.observe_links(len(state.counted), len(self.known))
        now = time.time()
        for pid in sorted(state.candidates):
            counted = pid in state.counted
            self.backoff.outcome(pid, counted or self.settlements.is_pending(state.round, pid))
            if counted:
                self.last_link[pid] = (state.round, now)
        return {
            "neighbours": sorted(state.counted),
            "weights": weights,
            "self_weight": self_weight,
            "attempted": sorted(state.candidates),
            "degree": state.degree,
            "unresolved": sorted(pid for (r, pid) in self.settlements.pending if r == state.round),
            "bytes_sent": len(state.own.payload) * len(state.counted),
            "bytes_received": sum(r.payload_bytes for r in state.counted.values()),
            **block_sums(before, "sum_{}_before"),
            **block_sums(after, "sum_{}_after"),
            **({"mixing": self.local.rule.last} if self.local.rule.last else {}),
        }

    def _remember_unresolved(self, state: RoundState) -> None:
        """Links whose outcome is unknown: keep what their late settlement needs (``PendingLink``)."""
        for (round_, pid), received in list(self.protocol.unresolved.items()):
            if round_ != state.round:
                continue
            del self.protocol.unresolved[(round_, pid)]
            sent = self._sent(state)
            weight = 1.0 / (1 + max(state.degree, received.degree))
            self.settlements.add(PendingLink(round_, pid, self.known.get(pid, ""), weight, sent, received.tensors))

    def _sent(self, state: RoundState) -> dict[str, torch.Tensor]:
        """This peer's factors of the round as every neighbour decodes them: from the very bytes sent."""
        return self._decoded(state, state.own.payload)

    def _decoded(self, state: RoundState, payload: Buffer) -> dict[str, torch.Tensor]:
        """A payload of the round's factors as every peer decodes it (an int8 payload does not name them)."""
        return decode_factors(payload, self.schema, set(select(self.schema, state.own.header.factors)), self.me.device)

    def _recorded(self, state: RoundState, link: dict) -> Received:
        """A link of the round's write-ahead record as it was received. A link recorded by a restarted
        process holds the payload, decoded here with the round's factors exactly as when it came (and
        kept in ``link``); one recorded by this process, or by an earlier build, holds the factors."""
        if "tensors" not in link:
            mixed = list(state.own.header.factors)
            if link.get("factors", mixed) != mixed:
                raise CheckpointError(
                    f"{WAL_LINKS}: a link of round {state.round} holds {link['factors']}, the round mixes "
                    f"{mixed}; this round cannot be finished from these files: start afresh with a new --out"
                )
            try:
                link["tensors"] = self._decoded(state, recorded_payload(link))
            except (DecodeError, KeyError, TypeError, AttributeError) as exc:
                # the record's digest matched, so it was written so: by a build or a run of another adapter
                raise CheckpointError(
                    f"{WAL_LINKS}: a link of round {state.round} does not decode ({type(exc).__name__}: {exc}); "
                    "this round cannot be finished from these files: start afresh with a new --out"
                ) from None
        return Received(link["tensors"], int(link["degree"]), int(link["bytes"]))

    def _publish_latest(self, next_round: int) -> None:
        header = self._header(next_round, 0, factors=blocks_of(self.schema))
        self.latest = seal(header, encode_factors(self.local.factors()))

    def _checkpoint_state(self, next_round: int) -> dict:
        return {
            "peer_id": self.peer_id,
            "run_id": self.net.run_id,
            "round": next_round,
            "local": self.local.state(),
            "decisions": self.book.to_state(),
            **self._round_extras(),
        }

    def _round_extras(self) -> dict:
        """The auto-T schedule and the pending links: kept by the checkpoint and by the WAL alike, so a
        restart finishes the round identically."""
        return {"phases": self.phases.to_state() if self.phases else {}, "pending": self.settlements.to_state()}

    async def _run_round(self, round_: int) -> None:
        t0 = self.now()
        if self.recovered is not None and self.recovered[0].round == round_:
            state, record, tentative = self.recovered
            self.recovered = None
        else:
            (state, record), tentative = await self._train_and_open(round_), {}
        record["exchange_seconds"] = await self._exchange(state, tentative)
        mixing = self.now()
        record.update(self._mix(state))
        record["mix_seconds"] = self.now() - mixing
        record["deadline"] = self.deadline.current()
        if self.evaluate is not None and self._evaluation_due(round_):
            record.update(await self.offload(self.evaluate))
        self.book.close(round_)
        self._publish_latest(round_ + 1)
        record["seconds"] = self.now() - t0  # the round's time, up to its files
        next_state = self._checkpoint_state(round_ + 1)
        if self.strategy.plan(round_ + 1).train:
            self.writing = self._spawn(self._write_round(record, snapshot(next_state)))
        else:  # nothing to write them beside: the next round writes them first, on this thread
            trained = bool(self.strategy.plan(round_).train)
            self.unwritten = self.persistence.round_files(record, next_state, optimizer_unchanged=not trained)
        self.round = round_ + 1
        self.observer.round_done(record)
        log.info(
            "%s: round %d phase %s loss %.4f links %s",
            self.peer_id,
            round_,
            record["phase"],
            record["train_loss"],
            ",".join(record["neighbours"]) or "-",
        )

    async def _write_round(self, record: dict, next_state: dict) -> None:
        """The round's files (the next round's checkpoint, the round's line, the WAL's removal),
        encoded and written beside the next round's training from a private copy of the state (a copy
        where the state lives, on the GPU say, holds up training less than encoding it there would).
        The next round opens its WAL only after they are durable (``files_written``): a crash before
        that finishes this round again from its WAL, exactly as a crash between the mix and the
        checkpoint always did, and nothing of the next round has been sent by then."""
        started = self.now()
        await self.write_behind(lambda: self.persistence.finish_round(self.persistence.round_files(record, next_state)))
        self.observer.checkpoint(self.now() - started)

    async def files_written(self) -> None:
        """Wait until the last round's files are durable (raises what writing them raised). Those of a
        round followed by one that trains nothing are written here: the writer thread would overlap
        nothing, and waking it and then the event loop again cost such a round two thread switches."""
        writing, self.writing = self.writing, None
        if writing is not None:
            await writing
        unwritten, self.unwritten = self.unwritten, None
        if unwritten is not None:
            started = self.now()
            self.persistence.finish_round(unwritten)
            self.observer.checkpoint(self.now() - started)

    async def _train_and_open(self, round_: int) -> tuple[RoundState, dict]:
        settled = self.settlements.apply(self._add_settled_term)
        schedule_info = self.phases.advance(round_, len(self.known) + 1) if self.phases else {}
        plan = self.strategy.plan(round_)
        trained = self.now()
        # a round that trains nothing does not wake the training thread: a consensus round is all
        # overhead, and the hop there and back is two thread switches on a loaded machine
        loss = await self.offload(self.local.train, round_) if plan.train else float("nan")
        record = {
            "round": round_,
            "phase": plan.phase,
            "train_loss": loss,
            **schedule_info,
            "train_seconds": self.now() - trained,
            **({"settled": settled} if settled else {}),
        }
        candidates = self._choose_links(round_)
        waited = self.now()
        await self.files_written()  # the previous round's: written while this one trained, or now
        opened = self.now()
        # nothing trained, nothing settled: the checkpoint of this round holds the local state already
        unchanged = not plan.train and not settled and self.persistence.checkpoint_round == round_
        local_state = None if unchanged else self.local.state()
        self.persistence.open_round(round_, local_state, candidates, {**self._round_extras(), "record": record})
        # where a slow round's time went, beside train_seconds and exchange_seconds (rounds.jsonl)
        record.update(files_wait_seconds=opened - waited, write_ahead_seconds=self.now() - opened)
        return self._open_round(round_, candidates), record

    def _reopen(self, wal: WriteAhead) -> tuple[RoundState, dict, dict[str, Received]]:
        """Reopen the round a crash interrupted, from its write-ahead record: the same trained factors,
        the same links and degree. Links written as final count at once (before the transport serves,
        so that an outcome query finds them); tentative ones are returned, to be asked about."""
        if not wal.local_state_in_checkpoint:
            self.local.load_state(wal.local_state)
        elif self.persistence.checkpoint_round != wal.round:  # resume() loaded it when it is there
            raise CheckpointError(
                f"{WAL}: round {wal.round} left its state in the checkpoint of that round, and "
                f"{CHECKPOINT} is {'missing' if self.persistence.checkpoint_round is None else 'of another round'}; "
                "this round cannot be finished from these files: start afresh with a new --out"
            )
        if self.phases is not None:
            self.phases.load_state(wal.extras.get("phases", {}))
        self.settlements.load_state(wal.extras.get("pending", []))
        state = self._open_round(wal.round, wal.candidates)
        self.persistence.wal = wal
        tentative = {}
        for pid, link in wal.links.items():
            received = self._recorded(state, link)
            if link["final"]:
                state.decide(pid, Decision.COUNTED, received, self.now())
            else:
                tentative[pid] = received
        record = dict(
            wal.extras.get("record")
            or {"round": wal.round, "phase": state.own.header.phase, "train_loss": float("nan")}
        )
        record["recovered"] = True
        return state, record, tentative

    def _evaluation_due(self, round_: int) -> bool:
        """Every ``eval_every`` rounds, as in the simulator; the last round is evaluated by ``finish``."""
        return (round_ + 1) % self.run.eval_every == 0 and round_ + 1 < self.run.total_rounds

    # ------------------------------------------------------------------ late settlements

    def _add_settled_term(self, correction: dict) -> bool:
        """The missing term of a past round's plain-average mix; a robust rule (clipped, trimmed mean)
        does not keep the sums anyway, and adding an unclipped term would bypass it: skipped."""
        if self.local.rule.rule != "average":
            return False
        self.local.apply_correction(correction)
        return True

    async def settle_remaining(self, seconds: float) -> None:
        """At the end of the run: wait up to ``seconds`` for pending outcomes, apply them, write them."""
        await self.files_written()
        until = self.now() + seconds
        while self.settlements.pending and self.now() < until:
            self.settlements.ask()
            await asyncio.sleep(self.net.round_timeout_min * SETTLE_POLL_FRACTION)
            settled = self.settlements.apply(self._add_settled_term)
            if settled:
                for entry in settled:
                    self.persistence.append_event({"event": "settled", "at_round": self.round, **entry})
                self.persistence.save_checkpoint(self._checkpoint_state(self.round))

    # ------------------------------------------------------------------ joining, resuming

    def resume(self) -> bool:
        """Continue from the files of an earlier process: its checkpoint, and its write-ahead record
        when it died inside a round."""
        state = self.persistence.load_checkpoint()
        wal = self.persistence.load_wal()
        if state is None and wal is None:
            return False
        if state is not None:
            self._load_checkpoint(state)
            if state.get("record"):
                self.persistence.log_round(state["record"])  # the crash came between checkpoint and line
        self.book.skip_to(self.round)
        if wal is not None and wal.round == self.round:
            self.recovered = self._reopen(wal)
        elif wal is not None:
            self.persistence.discard_wal()  # a round whose checkpoint was written: already finished
        self._publish_latest(self.round)
        log.info(
            "%s: resumed at round %d%s",
            self.peer_id,
            self.round,
            " (finishing it from its write-ahead record)" if self.recovered else "",
        )
        return True

    def _load_checkpoint(self, state: dict) -> None:
        if state["peer_id"] != self.peer_id or state["run_id"] != self.net.run_id:
            raise CheckpointError(f"checkpoint belongs to {state['peer_id']} of run {state['run_id']}")
        self.local.load_state(state["local"])
        if self.phases is not None:
            self.phases.load_state(state.get("phases", {}))
        self.book.load_state(state.get("decisions", {}))
        self.settlements.load_state(state.get("pending", []))
        self.round = int(state["round"])

    async def catch_up(self) -> None:
        """Jump forward to a neighbour's round when this peer is two or more rounds behind, keeping
        its own factors (they keep the network sum, and the next rounds mix them with everyone's)."""
        await self.files_written()  # it may write a checkpoint of its own
        asked = self.behind is None
        if asked:
            await self._ask_neighbours_their_round()
        if self.behind is None or self.behind[0] < self.round + JUMP_WHEN_BEHIND_BY:
            self.behind = None
            return
        claimed, pid = self.behind
        self.behind = None
        # a round asked just now came from the peer's own address already; a claim from a header is
        # the sender's word until that address confirms it
        target = claimed if asked else await self._confirmed_round_of(pid)
        if target is None or target < self.round + JUMP_WHEN_BEHIND_BY:
            # a round told in a swap's header is the sender's word: without TLS anyone can claim a
            # member's id, and a forged far-ahead round must not move this peer
            self.unconfirmed[pid] = self.round + UNCONFIRMED_CLAIM_PAUSE_ROUNDS
            log.info(
                "%s: %s's round %d not confirmed by its own address (it says %s); not jumping",
                self.peer_id,
                pid,
                claimed,
                "nothing" if target is None else target,
            )
            return
        if self.phases is not None:
            header = await self._latest_header_of(pid)
            if header is None:
                return
            target = max(target, header.round)
            self.phases.continue_from(header, target)
        log.info(
            "%s: behind (round %d); jumping to round %d of %s, keeping its own factors",
            self.peer_id,
            self.round,
            target,
            pid,
        )
        self.persistence.append_event({"event": "jump", "from": self.round, "to": target, "peer": pid})
        self.round = target
        self.book.skip_to(target)
        self.persistence.save_checkpoint(self._checkpoint_state(target))
        self._publish_latest(target)

    async def _ask_neighbours_their_round(self) -> None:
        for pid in list(self.known):
            round_ = await self._confirmed_round_of(pid)
            if round_ is not None:
                self._on_later_round(pid, round_)

    async def _confirmed_round_of(self, pid: str) -> int | None:
        """The round ``pid`` reports from its known (admitted) address, or None if it does not answer
        there as itself."""
        address = self.known.get(pid)
        try:
            status = await self.transport.status(address, timeout=STATUS_TIMEOUT_S, expect=pid) if address else None
        except ExchangeFailed:
            return None
        if status is None or status.peer_id != pid or status.run_id != self.net.run_id:
            return None
        return status.round

    async def _latest_header_of(self, pid: str) -> Header | None:
        """The header of a neighbour's latest factors: its round and its phase schedule."""
        try:
            return (
                await self.transport.fetch(
                    self.known[pid], self.net.run_id, self.peer_id, timeout=FETCH_TIMEOUT_S, expect=pid
                )
            ).header
        except (ExchangeFailed, Rejected, KeyError) as exc:
            log.warning("%s: could not fetch the schedule of %s: %s", self.peer_id, pid, exc)
            return None

    # ------------------------------------------------------------------ whole run

    async def run_rounds(self) -> None:
        if self.recovered is None:
            await self.catch_up()
        while self.round < self.run.total_rounds and not self.stopping.is_set():
            self.settlements.ask()
            self.membership.retry_admissions()
            await self._run_round(self.round)
            if self.behind is not None:
                await self.catch_up()
        await self.files_written()

    async def linger(self, at_most: float, grace: float) -> None:
        """After the last round: keep serving until every neighbour has finished its rounds too (or does
        not answer), then ``grace`` seconds more for its last outcome queries; ``at_most`` in all."""
        until = self.now() + at_most
        while self.now() < until and not self.stopping.is_set() and not await self._neighbours_done():
            await asyncio.sleep(LINGER_POLL_S)
        await asyncio.sleep(max(0.0, min(grace, until - self.now())))

    async def _neighbours_done(self) -> bool:
        for pid, address in list(self.known.items()):
            try:
                status = await self.transport.status(address, timeout=STATUS_TIMEOUT_S, expect=pid)
                if status.round < self.run.total_rounds:
                    return False
            except ExchangeFailed:
                continue  # gone: nothing to wait for
        return True

    def finish(self) -> dict:
        """Export the adapter in PEFT's format, evaluate it, write summary.json."""
        assert self.out is not None, "from_config sets the output folder"
        self.local.adapter.save_pretrained(self.out / "peers" / self.peer_id / "adapter")
        scores = dict(self.evaluate()) if self.evaluate is not None else {"accuracy": float("nan")}
        accuracy = scores.pop("accuracy")
        summary = {
            "peer_id": self.peer_id,
            "run_id": self.net.run_id,
            "rounds": self.round,
            "consensus_rounds": self.run.consensus_rounds,  # the last of the rounds, which only mixed
            "accuracy": {self.peer_id: accuracy},
            "mean_accuracy": accuracy,
            **scores,
            "switch_interval": self.strategy.switch_interval,
            "rejected": dict(self.rejected),
            "unsettled_links": len(self.settlements.pending),
            "config": self.run.as_dict(),
        }
        (self.out / "summary.json").write_text(strict_json.dumps(summary, indent=2) + "\n")
        return summary
