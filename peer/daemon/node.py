"""The peer daemon: one peer's round loop over a real transport, and the server side of its links.

Round r, at every peer:

1. Train K local steps on the factor(s) of the plan (in a worker thread: the event loop keeps
   answering neighbours meanwhile).
2. Decide the links it attempts: the peers it knows, thinned by the seeded synthetic drops of
   ``--edge-prob`` (both ends compute the same). Its degree for the round is their number.
3. Exchange: for each such link the peer with the smaller id opens a stream (``Transport.exchange``);
   the other answers. A link counts once the commit is acknowledged, at both ends. The phase ends when
   every attempted link has counted or failed, or at the adaptive deadline (``clock.py``).
4. Mix the plan's factors with those of the links that counted, with weights
   ``w_ij = 1 / (1 + max(deg_i, deg_j))`` (degrees travel in the headers) and ``w_ii = 1 − Σ w_ij``.
   This is Metropolis–Hastings on the round's graph: when every attempted link counts the degrees
   are the graph's; when a link fails midway, both ends drop it and keep their weight on themselves,
   so the matrix stays symmetric and doubly stochastic and the network-wide sum of every factor is
   kept exactly.
5. Append to ``rounds.jsonl``, write the checkpoint atomically, go to r + 1.

Round clock: the round number travels in every header and a factor of another round is never mixed
(refused with ``round-behind`` / ``round-ahead``). A peer that learns it is behind (a refusal that
names a later round, or the status of its neighbours at start) fetches a neighbour's latest mixed
factors and adopts its round before it trains again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

from peer.algorithm.factors import A, B, FACTORS, select
from peer.algorithm.schedule import AgreedSchedule, auto_switch_interval
from peer.algorithm.topology import ErdosRenyi
from peer.config import DaemonConfig, RunConfig
from peer.daemon.checkpoint import load_checkpoint, save_checkpoint
from peer.daemon.clock import AdaptiveDeadline
from peer.daemon.links import synthetic_link_up
from peer.daemon.observe import Observer, Observers
from peer.local_peer import LocalPeer
from peer.run_setup import lora_settings, mixing_rule_for, pick_device, prepare_data, strategy_for, topology_for
from peer.training.adapters import AdapterModel
from peer.training.trainer import LocalTrainer
from peer.transport.base import (ExchangeFailed, ExchangeOutcomeUnknown, ExchangeServer, FactorMessage, Header,
                                 NeighbourInfo, Rejected, StatusInfo, Transport)
from peer.transport.codec import DecodeError, decode_factors, encode_factors, schema_digest, schema_of
from peer.transport.framing import seal

log = logging.getLogger("tadlora.daemon")


def _tls_refused(exc: ExchangeFailed) -> bool:
    """The remote end failed the TLS handshake: it holds no certificate of this run's authority."""
    return "handshake" in str(exc).lower()


class PeerDaemon(ExchangeServer):
    def __init__(self, run: RunConfig, net: DaemonConfig, out_dir: Path, transport: Transport) -> None:
        self.run, self.net, self.out, self.transport = run, net, Path(out_dir), transport
        self.peer_id = net.peer_id
        self.strategy = strategy_for(run, topology_for(run))
        self.data = prepare_data(run)
        model = AdapterModel(run.model, self.data.task.num_labels, [self.peer_id], lora_settings(run),
                             seed=run.seed, device=pick_device(run.device))
        self.adapter = model[self.peer_id]
        self.trainer = LocalTrainer(self.adapter, self.data.shards[net.peer_index], run.batch_size,
                                    run.learning_rate, run.seed, net.peer_index)
        self.local = LocalPeer(self.peer_id, self.adapter, self.trainer, self.strategy, run.local_steps,
                               mixing_rule_for(run))
        self.schema = schema_of(self.adapter.factors())
        self.digest = schema_digest(self.schema)
        self.edge_prob = 1.0 if run.topology == "complete" else run.edge_prob
        self.deadline = AdaptiveDeadline(net.round_timeout_min, net.round_timeout_max)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"train-{self.peer_id}")
        self.round = 0
        self.closed_upto = -1                    # rounds <= this are mixed: no more commits
        self.known: dict[str, str] = {}          # peer id -> address
        self.candidates: dict[int, set[str]] = {}
        self.own: dict[int, FactorMessage] = {}
        self.own_ready: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.staged: dict[tuple[int, str], tuple[dict, int, int]] = {}
        self.counted: dict[int, dict[str, tuple[dict, int, int]]] = defaultdict(dict)  # tensors, degree, bytes
        self.settled: dict[int, dict[str, asyncio.Event]] = defaultdict(lambda: defaultdict(asyncio.Event))
        self.rejected: Counter[str] = Counter()
        self.admissions: set[asyncio.Task] = set()
        self.observer: Observer = Observers([])  # metrics, TensorBoard: set by the runner (daemon.main)
        self.last_link: dict[str, tuple[int, float]] = {}
        self.history: dict[int, set[str]] = {}    # links that counted, by round (recent rounds only)
        self.latest: FactorMessage | None = None  # mixed factors (A and B), ready for round latest.header.round
        self.behind: tuple[int, str] | None = None
        self.stopping = asyncio.Event()
        self.address = ""
        # switch-interval auto: phase lengths agreed at run time from the measured link availability
        self.schedule = AgreedSchedule(self.strategy.switch_interval) if run.switch_interval == "auto" else None
        if self.schedule is not None:
            self.strategy.schedule = self.schedule
        self.link_window: deque[tuple[int, int]] = deque(maxlen=20)  # (links counted, links possible)

    # ------------------------------------------------------------------ server side (ExchangeServer)

    async def respond(self, incoming: FactorMessage) -> FactorMessage:
        h = incoming.header
        self._check_identity(h)
        if h.round <= self.closed_upto:
            raise Rejected("round-behind", f"round {h.round} is over here", self.round)
        if h.round > self.round + 1:
            self._note_behind(h.round, h.sender_id)
            raise Rejected("round-ahead", f"this peer is at round {self.round}", self.round)
        try:
            await asyncio.wait_for(self.own_ready[h.round].wait(), self.net.round_timeout_max)
        except asyncio.TimeoutError:
            raise Rejected("round-ahead", f"round {h.round} not reached in time", self.round) from None
        if h.round <= self.closed_upto:
            raise Rejected("round-behind", f"round {h.round} is over here", self.round)
        if h.sender_id not in self.candidates.get(h.round, ()):
            raise Rejected("not-a-link", f"{h.sender_id} is not a link of round {h.round} here", self.round)
        if h.sender_id in self.counted.get(h.round, {}):
            raise Rejected("replay", f"{h.sender_id} already swapped factors in round {h.round}", self.round)
        if h.degree < 1:
            raise Rejected("degree", f"degree {h.degree}: a sender attempts at least this link", self.round)
        own = self.own[h.round]
        tensors = self._decode(incoming, own.header)
        self._merge_proposal(h)
        self.staged[(h.round, h.sender_id)] = (tensors, h.degree, h.payload_size)
        return own

    async def commit(self, header: Header) -> bool:
        staged = self.staged.pop((header.round, header.sender_id), None)
        if staged is None or header.round <= self.closed_upto:
            return False
        self.counted[header.round][header.sender_id] = staged
        self.settled[header.round][header.sender_id].set()
        return True

    async def abort(self, header: Header) -> None:
        self.staged.pop((header.round, header.sender_id), None)
        if header.round > self.closed_upto:
            self.settled[header.round][header.sender_id].set()

    def status(self) -> StatusInfo:
        return StatusInfo(
            peer_id=self.peer_id, run_id=self.net.run_id, round=self.round,
            phase=self.strategy.plan(self.round).phase, schema_digest=self.digest,
            switch_interval=self.strategy.switch_interval, rejected=dict(self.rejected),
            neighbours=[NeighbourInfo(pid, addr, *self.last_link.get(pid, (-1, 0.0)))
                        for pid, addr in sorted(self.known.items())])

    async def current_factors(self, run_id: str) -> FactorMessage:
        if run_id != self.net.run_id:
            raise Rejected("run", f"this peer belongs to run {self.net.run_id!r}")
        if self.latest is None:
            raise Rejected("no-factors", "nothing mixed yet")
        return self.latest

    def outcome(self, peer_id: str, round_: int) -> bool | None:
        if round_ > self.closed_upto or round_ not in self.history:
            return None  # still open (not decided yet), or too old to remember
        return peer_id in self.history[round_]

    def count_rejection(self, reason: str, detail: str = "", source: str = "") -> None:
        """One log line and one count per refused message; the message itself is dropped."""
        self.rejected[reason] += 1
        self.observer.rejected(reason)
        log.warning("%s: refused (%s) from %s: %s", self.peer_id, reason, source or "?", detail)

    # ------------------------------------------------------------------ validation

    def _check_identity(self, h: Header) -> None:
        if h.run_id != self.net.run_id:
            raise Rejected("run", f"run {h.run_id!r}, this peer belongs to {self.net.run_id!r}", self.round)
        if h.schema_digest != self.digest:
            raise Rejected("schema", "adapter schema differs (model, rank or targets)", self.round)
        if h.sender_id == self.peer_id:
            raise Rejected("self", "a message from this peer's own id", self.round)

    def _decode(self, message: FactorMessage, own: Header) -> dict[str, torch.Tensor]:
        h = message.header
        if h.phase != own.phase or tuple(h.factors) != tuple(own.factors):
            raise Rejected("phase", f"phase {h.phase} {h.factors}, this round is {own.phase} {own.factors}", self.round)
        wanted = set(select(self.schema, own.factors))
        try:
            return decode_factors(message.payload, self.schema, wanted)
        except DecodeError as exc:
            raise Rejected(exc.reason, exc.detail, self.round) from None

    def _merge_proposal(self, h: Header) -> None:
        if self.schedule is not None:
            self.schedule.merge(h.schedule_round, h.proposed_interval)

    def link_estimate(self) -> float:
        """Fraction of possible links that counted over the recent rounds (the configured p before any)."""
        counted, possible = map(sum, zip(*self.link_window)) if self.link_window else (0, 0)
        return counted / possible if possible else self.edge_prob

    def own_proposal(self) -> int:
        """T for the next phase from this peer's measurement: the spectral-gap rule of
        ``auto_switch_interval`` applied to an Erdős–Rényi graph with the estimated link probability."""
        return _interval_for(len(self.known) + 1, round(self.link_estimate(), 2))

    def _note_behind(self, round_: int, peer_id: str) -> None:
        if peer_id not in self.known:
            return  # only a known peer of this run can tell us that we are behind
        if self.behind is None or round_ > self.behind[0]:
            self.behind = (round_, peer_id)

    # ------------------------------------------------------------------ client side

    def _header(self, round_: int, phase: str | None = None, factors: tuple[str, ...] | None = None) -> Header:
        plan = self.strategy.plan(round_)
        return Header(run_id=self.net.run_id, sender_id=self.peer_id, round=round_, phase=phase or plan.phase,
                      factors=factors or tuple(sorted(plan.mix)), schema_digest=self.digest,
                      degree=len(self.candidates.get(round_, ())), switch_interval=self.strategy.switch_interval,
                      schedule_round=self.schedule.decided_at if self.schedule else 0,
                      phase_start=self.schedule.current[0] if self.schedule else 0,
                      proposed_interval=self.schedule.proposal() if self.schedule else 0,
                      link_estimate=self.link_estimate())

    async def _link(self, round_: int, peer_id: str, until: float) -> None:
        """Open the exchange with a neighbour of higher id; settle the link either way."""
        staged: dict = {}

        async def validate(reply: FactorMessage) -> None:
            self._check_identity(reply.header)
            if reply.header.sender_id != peer_id or reply.header.round != round_:
                raise Rejected("round", f"answer for round {reply.header.round} from {reply.header.sender_id}")
            staged["tensors"] = self._decode(reply, self.own[round_].header)
            self._merge_proposal(reply.header)
            staged["degree"] = reply.header.degree
            staged["bytes"] = reply.header.payload_size

        address = self.known.get(peer_id)
        started = time.monotonic()
        try:
            if address is None:
                raise ExchangeFailed(f"{peer_id} has no address")
            await self._exchange_retrying_while_behind(address, round_, validate, until)
            self._count(round_, peer_id, staged)
        except ExchangeOutcomeUnknown:
            if await self._ask_outcome(address, round_, peer_id, until) and staged:
                self._count(round_, peer_id, staged)
        except Rejected as r:
            if r.reason in ("round-behind", "round-closed") and r.current_round > round_:
                self._note_behind(r.current_round, peer_id)
            log.info("%s: link to %s in round %d refused: %s", self.peer_id, peer_id, round_, r)
        except ExchangeFailed as exc:
            log.info("%s: link to %s in round %d failed: %s", self.peer_id, peer_id, round_, exc)
        finally:
            self.settled[round_][peer_id].set()
            self.observer.exchange(peer_id, time.monotonic() - started, peer_id in self.counted.get(round_, {}))

    async def _exchange_retrying_while_behind(self, address: str, round_: int, validate, until: float) -> None:
        # A neighbour two rounds behind refuses with "round-ahead"; it is catching up, so wait for it
        # (until the deadline) rather than run ahead alone.
        while True:
            try:
                await self.transport.exchange(address, self.own[round_], validate, max(0.1, until - time.monotonic()))
                return
            except Rejected as r:
                if r.reason != "round-ahead" or time.monotonic() + 0.2 >= until:
                    raise
            await asyncio.sleep(0.2)

    async def _watch(self, round_: int, peer_id: str, until: float) -> None:
        """Settle a link that the neighbour should open as soon as it cannot come any more: the
        neighbour is unreachable (crashed, partitioned) or already past this round. Without this a
        dead neighbour of lower id would hold every round until the deadline."""
        event = self.settled[round_][peer_id]
        while not event.is_set() and time.monotonic() < until:
            try:  # wake at once when the link settles: a plain sleep here held every round 0.5 s
                await asyncio.wait_for(event.wait(), 0.5)
                break
            except asyncio.TimeoutError:
                pass
            if peer_id not in self.known:
                break
            try:
                status = await self.transport.status(self.known[peer_id], timeout=1.0)
            except ExchangeFailed:
                break
            if status.round > round_:
                break
        event.set()

    def _count(self, round_: int, peer_id: str, staged: dict) -> None:
        if round_ > self.closed_upto:
            self.counted[round_][peer_id] = (staged["tensors"], staged["degree"], staged["bytes"])

    async def _ask_outcome(self, address: str, round_: int, peer_id: str, until: float) -> bool:
        # The server decides at commit; ask it until our own deadline (plus one frame timeout, because
        # the server may close the round a little after us).
        while time.monotonic() < until + self.net.frame_timeout:
            answer = await self.transport.outcome(address, self.net.run_id, self.peer_id, round_, timeout=1.0)
            if answer is not None:
                return answer
            await asyncio.sleep(0.2)
        log.warning("%s: outcome of the link to %s in round %d unknown", self.peer_id, peer_id, round_)
        return False

    # ------------------------------------------------------------------ the round loop

    async def _train(self, round_: int) -> float:
        return await asyncio.get_running_loop().run_in_executor(self.worker, self.local.train, round_)

    def _open_round(self, round_: int) -> None:
        self.candidates[round_] = {pid for pid in self.known
                                   if synthetic_link_up(self.run.seed, round_, self.peer_id, pid, self.edge_prob)}
        payload = encode_factors(self.local.outgoing(round_))
        self.own[round_] = seal(self._header(round_), payload)
        self.own_ready[round_].set()

    async def _exchange(self, round_: int) -> float:
        start = time.monotonic()
        until = start + self.deadline.current()
        links = self.candidates[round_]
        clients = [asyncio.create_task(self._link(round_, pid, until)) for pid in links if self.peer_id < pid]
        clients += [asyncio.create_task(self._watch(round_, pid, until)) for pid in links if pid < self.peer_id]
        waits = [asyncio.create_task(self.settled[round_][pid].wait()) for pid in links]
        if waits:
            await asyncio.wait(waits, timeout=max(0.0, until - time.monotonic()))
        for task in waits:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        self.closed_upto = round_
        if self.counted.get(round_):
            self.deadline.observe(time.monotonic() - start)
        return time.monotonic() - start

    def _mix(self, round_: int) -> dict:
        links = self.counted.pop(round_, {})
        own_degree = len(self.candidates[round_])
        weights = {pid: 1.0 / (1 + max(own_degree, degree)) for pid, (_, degree, _) in links.items()}
        self_weight = 1.0 - sum(weights.values())
        before = self.adapter.factors()
        self.local.mix(round_, {pid: t for pid, (t, _, _) in links.items()}, weights, self_weight)
        after = self.adapter.factors()
        now = time.time()
        self.link_window.append((len(links), len(self.known)))
        self.history[round_] = set(links)
        for pid in links:
            self.last_link[pid] = (round_, now)

        def total(tensors, factor):
            return float(sum(float(v.double().sum()) for v in select(tensors, [factor]).values()))

        return {"neighbours": sorted(links), "weights": weights, "self_weight": self_weight,
                "attempted": sorted(self.candidates[round_]),
                "bytes_sent": len(self.own[round_].payload) * len(links),
                "bytes_received": sum(n for _, _, n in links.values()),
                "sum_a_before": total(before, A), "sum_a_after": total(after, A),
                "sum_b_before": total(before, B), "sum_b_after": total(after, B),
                **({"mixing": self.local.rule.last} if self.local.rule.last else {})}

    def _publish_latest(self, next_round: int) -> None:
        header = self._header(next_round, factors=FACTORS)
        if self.schedule is not None:
            header.phase = self.schedule.current[2]  # the phase that began at schedule_round
        self.latest = seal(header, encode_factors(self.adapter.factors()))

    def _checkpoint(self, next_round: int) -> None:
        save_checkpoint(self.out, {
            "peer_id": self.peer_id, "run_id": self.net.run_id, "round": next_round,
            "adapter": self.adapter.state(), "optimizer": self.trainer.optimizer.state_dict(),
            "last_trained": sorted(self.trainer.last_trained),
            "schedule": self.schedule.to_state() if self.schedule else {}})

    def _forget(self, round_: int) -> None:
        for table in (self.own, self.own_ready, self.candidates, self.settled, self.history):
            for old in [k for k in table if k <= round_ - 8]:
                table.pop(old, None)
        for key in [k for k in self.staged if k[0] <= round_]:
            self.staged.pop(key)

    def _use_schedule(self, schedule: AgreedSchedule) -> None:
        self.schedule = schedule
        self.strategy.schedule = schedule

    def _advance_schedule(self, round_: int) -> dict:
        if self.schedule is None:
            return {}
        self.schedule.decide(round_)
        self.schedule.propose(self.own_proposal())
        return {"switch_interval": self.schedule.interval, "phase_start": self.schedule.current[0],
                "decided_at": self.schedule.decided_at,
                "proposal": self.own_proposal(), "link_estimate": self.link_estimate()}

    async def _run_round(self, round_: int) -> None:
        t0 = time.monotonic()
        schedule_info = self._advance_schedule(round_)
        plan = self.strategy.plan(round_)
        trained = time.monotonic()
        loss = await self._train(round_)
        train_seconds = time.monotonic() - trained
        self._open_round(round_)
        exchange_seconds = await self._exchange(round_)
        record = {"round": round_, "phase": plan.phase, "train_loss": loss, **schedule_info, **self._mix(round_),
                  "train_seconds": train_seconds, "exchange_seconds": exchange_seconds,
                  "deadline": self.deadline.current()}
        if self._evaluation_due(round_):
            record["accuracy"] = await asyncio.get_running_loop().run_in_executor(
                self.worker, self.trainer.evaluate, self.data.validation)
        self._publish_latest(round_ + 1)
        saved = time.monotonic()
        self._checkpoint(round_ + 1)
        self.observer.checkpoint(time.monotonic() - saved)
        self.round = round_ + 1
        self._forget(round_)
        record["seconds"] = time.monotonic() - t0
        self.observer.round_done(record)
        with (self.out / "rounds.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("%s: round %d phase %s loss %.4f links %s", self.peer_id, round_, plan.phase, loss,
                 ",".join(record["neighbours"]) or "-")

    def _evaluation_due(self, round_: int) -> bool:
        """Every ``eval_every`` rounds, as in the simulator; the last round is evaluated by ``finish``."""
        return (round_ + 1) % self.run.eval_every == 0 and round_ + 1 < self.run.rounds

    # ------------------------------------------------------------------ joining, resuming

    def resume(self) -> bool:
        state = load_checkpoint(self.out)
        if state is None:
            return False
        if state["peer_id"] != self.peer_id or state["run_id"] != self.net.run_id:
            raise RuntimeError(f"checkpoint in {self.out} belongs to {state['peer_id']} of run {state['run_id']}")
        self.adapter.load_state(state["adapter"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.last_trained = frozenset(state["last_trained"])
        if self.schedule is not None and state.get("schedule"):
            self._use_schedule(AgreedSchedule.from_state(state["schedule"]))
        self.round = int(state["round"])
        self.closed_upto = self.round - 1
        self._publish_latest(self.round)
        log.info("%s: resumed at round %d from %s", self.peer_id, self.round, self.out)
        return True

    async def catch_up(self) -> None:
        """Adopt a neighbour's round and factors when this peer is behind."""
        if self.behind is None:
            statuses = []
            for pid, address in list(self.known.items()):
                try:
                    statuses.append(((await self.transport.status(address, timeout=2.0)).round, pid))
                except ExchangeFailed:
                    continue
            if statuses:
                self._note_behind(*max(statuses))
        # One round of lag is normal between peers that were not linked in the last round; only a
        # peer two or more rounds behind has missed rounds and must adopt.
        if self.behind is None or self.behind[0] <= self.round + 1:
            self.behind = None
            return
        target, pid = self.behind
        self.behind = None
        try:
            message = await self.transport.fetch(self.known[pid], self.net.run_id, timeout=10.0)
            tensors = decode_factors(message.payload, self.schema, set(self.schema))
        except (ExchangeFailed, Rejected, DecodeError, KeyError) as exc:
            log.warning("%s: could not fetch factors from %s: %s", self.peer_id, pid, exc)
            return
        if message.header.round <= self.round + 1:
            return
        self.adapter.load_factors(tensors)
        self.trainer.last_trained = frozenset()  # fresh moments: the factors are someone else's
        self.trainer.optimizer.state.clear()
        if self.schedule is not None:  # and its phase schedule
            h = message.header
            self._use_schedule(AgreedSchedule(max(1, h.switch_interval), int(h.phase_start), h.phase,
                                              decided_at=int(h.schedule_round)))
            self.schedule.merge(h.schedule_round, h.proposed_interval)
        log.info("%s: behind (round %d); adopted round %d and the factors of %s", self.peer_id, self.round,
                 message.header.round, pid)
        self.round = int(message.header.round)
        self.closed_upto = self.round - 1
        self._publish_latest(self.round)

    # ------------------------------------------------------------------ membership

    def add_peer(self, peer_id: str, address: str) -> None:
        """A peer announced by mDNS. Over TLS it joins only after proving membership (``_admit``)."""
        if peer_id == self.peer_id or self.known.get(peer_id) == address:
            return
        if self.net.tls:
            task = asyncio.ensure_future(self._admit(peer_id, address))
            self.admissions.add(task)
            task.add_done_callback(self.admissions.discard)
            return
        self._know(peer_id, address)

    def _know(self, peer_id: str, address: str) -> None:
        self.known[peer_id] = address
        log.info("%s: found %s at %s", self.peer_id, peer_id, address)

    async def _admit(self, peer_id: str, address: str, tries: int = 5) -> None:
        """Open a mutual-TLS connection to an announced peer: only a certificate of this run's
        authority completes the handshake. A failed handshake refuses the peer (logged, counted as
        ``membership``); a peer that does not answer yet is tried again, then taken like any silent
        peer (every later exchange is over the same TLS, so nothing unproven is ever mixed)."""
        for _ in range(tries):
            try:
                status = await self.transport.status(address, timeout=3.0)
            except ExchangeFailed as exc:
                if _tls_refused(exc):
                    self.count_rejection("membership", f"{peer_id} cannot prove membership of run "
                                         f"{self.net.run_id!r}: TLS handshake failed", address)
                    return
                await asyncio.sleep(1.0)
                continue
            if status.peer_id != peer_id or status.run_id != self.net.run_id:
                self.count_rejection("identity", f"announced as {peer_id} of run {self.net.run_id!r}, "
                                     f"answers as {status.peer_id} of run {status.run_id!r}", address)
                return
            break
        self._know(peer_id, address)

    def remove_peer(self, peer_id: str) -> None:
        if self.known.pop(peer_id, None):
            log.info("%s: lost %s", self.peer_id, peer_id)

    async def add_static_peer(self, address: str) -> bool:
        """Ask a static address who it is and keep it if it is of this run and schema; False while it
        does not answer (it may start later)."""
        try:
            status = await self.transport.status(address, timeout=2.0)
        except ExchangeFailed as exc:
            if self.net.tls and _tls_refused(exc):
                self.count_rejection("membership", f"static peer cannot prove membership of run "
                                     f"{self.net.run_id!r}: TLS handshake failed", address)
                return True  # refused for good: stop asking
            return False
        if status.run_id == self.net.run_id and status.schema_digest == self.digest:
            if status.peer_id != self.peer_id and self.known.get(status.peer_id) != address:
                self._know(status.peer_id, address)  # its answer came over this run's TLS, if any
        else:
            log.info("%s: ignoring %s at %s: run %r or another schema", self.peer_id, status.peer_id, address,
                     status.run_id)
        return True

    # ------------------------------------------------------------------ whole run

    async def run_rounds(self) -> None:
        await self.catch_up()
        while self.round < self.run.rounds and not self.stopping.is_set():
            await self._run_round(self.round)
            if self.behind is not None:
                await self.catch_up()

    def finish(self) -> dict:
        """Export the adapter in PEFT's format, evaluate it, write summary.json."""
        self.adapter.save_pretrained(self.out / "peers" / self.peer_id / "adapter")
        accuracy = self.trainer.evaluate(self.data.validation)
        summary = {"peer_id": self.peer_id, "run_id": self.net.run_id, "rounds": self.round,
                   "accuracy": {self.peer_id: accuracy}, "mean_accuracy": accuracy,
                   "switch_interval": self.strategy.switch_interval, "rejected": dict(self.rejected),
                   "config": self.run.as_dict()}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


@lru_cache(maxsize=256)
def _interval_for(n_peers: int, link_probability: float) -> int:
    return auto_switch_interval(ErdosRenyi(n=n_peers, seed=0, p=link_probability).contraction(samples=200))
