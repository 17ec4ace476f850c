"""Run one fault schedule: real daemons, stand-in peers, the memory transport, virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from peer.algorithm.strategies import make_strategy
from peer.config import DaemonConfig, RunConfig, default_peer_id
from peer.daemon.node import PeerDaemon
from peer.daemon.persistence import CopyFormat, FileFormat, MemoryStore, Persistence, SimulatedCrash
from peer.faultsim.checker import Violation, check, check_states
from peer.faultsim.clock import Deadlock, VirtualTimeLoop
from peer.faultsim.faults import Crash, FaultSchedule, address_of
from peer.faultsim.stand_in import stand_in_peer
from peer.transport.base import ConnectionLost, ExchangeServer, Reason, Rejected
from peer.transport.framing import Limits
from peer.transport.grpc_transport import GrpcTransport
from peer.transport.memory import MemoryNetwork, MemoryTransport

RUN_ID = "faultsim"


@dataclass(frozen=True)
class Timings:
    """Protocol timings of the simulated peers (virtual seconds; real ones over gRPC)."""

    round_timeout_min: float = 0.5
    round_timeout_max: float = 3.0
    frame_timeout: float = 1.0
    train_seconds: tuple[float, float] = (0.05, 0.3)  # local training of one round


SCHEDULE_WINDOW = 4  # rounds between auto-T decisions (the daemon's default is 10)
SETTLE_SECONDS = 30.0  # how long a finished peer keeps asking for pending outcomes (30 tries)
TIME_LIMIT_PER_ROUND = 40.0  # virtual seconds; beyond it a peer is stranded
FILE_FORMAT_EVERY = 10  # one schedule in this many keeps its files as real bytes, as a folder holds them
# over gRPC, one schedule in this many sends every payload on the payload lane (``peer.transport.lane``,
# each peer learns its neighbours' lanes from their replies); the others send the stand-ins' small
# payloads in chunks, as the daemon's default threshold does
LANE_EVERY = 2


@dataclass
class ScheduleResult:
    schedule: FaultSchedule
    violations: list[Violation]
    injected: Counter
    crashes: Counter = field(default_factory=Counter)
    virtual_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(v.counts for v in self.violations)


class _SimPeer:
    def __init__(self, index: int) -> None:
        self.index, self.peer_id, self.address = index, default_peer_id(index), address_of(index)
        self.store = MemoryStore()
        self.daemon: PeerDaemon | None = None
        self.task: asyncio.Task | None = None
        self.alive = False
        self.done = False


class _Guarded(ExchangeServer):
    """A daemon as gRPC serves it in the simulator: once its process is dead, it answers nothing more
    (a dead process's socket would be closed; the stream breaks)."""

    def __init__(self, daemon: PeerDaemon) -> None:
        self.daemon, self.dead = daemon, False

    def _check(self) -> None:
        if self.dead:
            raise Rejected(Reason.DOWN, "this peer crashed")

    async def screen(self, header):
        self._check()
        return await self.daemon.screen(header)  # the reply, streamed while the payload arrives

    async def respond(self, incoming):
        self._check()
        return await self.daemon.respond(incoming)

    async def commit(self, header):
        self._check()
        try:
            return await self.daemon.commit(header)
        except SimulatedCrash:
            return False  # died before the write: the link did not count here, and the client learns so

    async def abort(self, header):
        if not self.dead:
            await self.daemon.abort(header)

    def status(self):
        self._check()
        return self.daemon.status()

    async def current_factors(self, run_id, peer_id):
        self._check()
        return await self.daemon.current_factors(run_id, peer_id)

    def outcome(self, peer_id, round_, run_id):
        return None if self.dead else self.daemon.outcome(peer_id, round_, run_id)

    def count_rejection(self, reason, detail="", source=""):
        if not self.dead:
            self.daemon.count_rejection(reason, detail, source)


def consensus_rounds_of(schedule: FaultSchedule) -> int:
    """1 to 3, from the seed alone: the schedule's drawn faults stay those of its seed."""
    return 1 + schedule.seed % 3


class Simulation:
    """``transport``: "memory" (virtual time, the default) or "grpc" (real sockets on loopback, real time)."""

    def __init__(self, schedule: FaultSchedule, transport: str = "memory", timings: Timings = Timings()) -> None:
        self.schedule, self.transport, self.timings = schedule, transport, timings
        self.network = MemoryNetwork(schedule)
        schedule.guard = self._at_server
        self.peers = [_SimPeer(i) for i in range(schedule.peers)]
        self.guards: dict[int, _Guarded] = {}
        self.closing: list[asyncio.Future] = []
        self.crashes: Counter = Counter()
        consensus_rounds = consensus_rounds_of(schedule)
        self.run = RunConfig(
            strategy="tad",
            peers=schedule.peers,
            # the last 1 to 3 rounds of a schedule are consensus rounds (mixing only), whose write-ahead
            # record leaves the local state in the round's checkpoint: crashes must meet them too
            rounds=schedule.rounds - consensus_rounds,
            consensus_rounds=consensus_rounds,
            switch_interval=schedule.switch_interval,
            topology="er" if schedule.edge_prob < 1 else "complete",
            edge_prob=schedule.edge_prob,
            seed=schedule.seed,
            device="cpu",
            wire_dtype=schedule.wire_dtype,
        )
        self.crash_at_write: dict[int, list[Crash]] = {}  # per peer, one per (re)start, in order
        for crash in schedule.crashes:
            if crash.at_write is not None:
                self.crash_at_write.setdefault(crash.peer, []).append(crash)

    # ---------------------------------------------------------------- peers

    def _daemon(self, peer: _SimPeer) -> PeerDaemon:
        from peer.core.run_setup import resolve_switch_interval, topology_for

        strategy = make_strategy(
            "tad",
            resolve_switch_interval(self.run, topology_for(self.run)),
            train_head=True,
            training_rounds=self.run.rounds,
        )
        net = DaemonConfig(
            peer_index=peer.index,
            peer_id=peer.peer_id,
            run_id=RUN_ID,
            mdns=0,
            round_timeout_min=self.timings.round_timeout_min,
            round_timeout_max=self.timings.round_timeout_max,
            frame_timeout=self.timings.frame_timeout,
        )
        rng, train_seconds = self.schedule.rng, self.timings.train_seconds

        async def offload(fn, *args):
            await asyncio.sleep(float(rng.uniform(*train_seconds)))  # training takes time, evaluation none
            return fn(*args)

        local = stand_in_peer(peer.peer_id, peer.index, self.schedule.seed, strategy)
        lane_min_bytes = 0 if self.schedule.seed % LANE_EVERY == 0 else None
        limits = Limits(frame_timeout=self.timings.frame_timeout, lane_min_bytes=lane_min_bytes)
        transport = (
            MemoryTransport(self.network, limits)
            if self.transport == "memory"
            else GrpcTransport(limits, faults=self.schedule, name=peer.address)
        )
        form = FileFormat if self.schedule.seed % FILE_FORMAT_EVERY == 0 else CopyFormat
        daemon = PeerDaemon(
            local, self.run, net, Persistence(peer.store, form), transport, offload, schedule_window=SCHEDULE_WINDOW
        )
        return daemon

    async def _start(self, peer: _SimPeer) -> None:
        pending = self.crash_at_write.get(peer.index)
        crash = pending.pop(0) if pending else None
        if crash is not None:
            peer.store.crash_after_writes = crash.at_write
            peer.store.on_crash = lambda: self._crash(peer, crash)
        daemon = peer.daemon = self._daemon(peer)
        peer.alive = True
        try:
            daemon.resume()
        except SimulatedCrash:
            return
        await self._serve(peer, daemon)
        for other in self.peers:
            if other is not peer:
                daemon.membership.known[other.peer_id] = other.address
        peer.task = asyncio.ensure_future(self._main(peer, daemon))

    async def _serve(self, peer: _SimPeer, daemon: PeerDaemon) -> None:
        if self.transport == "memory":
            await daemon.transport.serve(daemon, peer.address)
            return
        guard = self.guards[peer.index] = _Guarded(daemon)
        await daemon.transport.serve(guard, peer.address)

    def _unbind(self, peer: _SimPeer) -> None:
        if self.transport == "memory":
            self.network.unbind(peer.address)
            return
        self.guards[peer.index].dead = True
        assert peer.daemon is not None, "only a started peer is unbound"
        close = asyncio.ensure_future(peer.daemon.transport.close())
        self.closing.append(close)

    async def _main(self, peer: _SimPeer, daemon: PeerDaemon) -> None:
        try:
            await daemon.run_rounds()
            await daemon.settle_remaining(SETTLE_SECONDS)
        except SimulatedCrash:
            return
        peer.done = True

    def _crash(self, peer: _SimPeer, crash: Crash) -> None:
        """The process dies now: no more messages, no more writes; it restarts from its store later."""
        if not peer.alive:
            return
        peer.alive = False
        self.crashes["at-write" if crash.at_write is not None else "at-time"] += 1
        self._unbind(peer)
        peer.store.frozen = True
        peer.store = peer.store.snapshot()
        if peer.daemon is not None:
            peer.daemon.kill()
        if peer.task is not None and peer.task is not asyncio.current_task():
            peer.task.cancel()
        asyncio.get_running_loop().call_later(crash.restart_after, lambda: asyncio.ensure_future(self._restart(peer)))

    async def _restart(self, peer: _SimPeer) -> None:
        await asyncio.gather(*self.closing, return_exceptions=True)  # the old server has let go of the port
        await self._start(peer)

    async def _at_server(self, destination: str, call: Callable[[], Awaitable]):
        if self.network.servers.get(destination) is None:
            raise ConnectionLost(f"{destination} is down")
        try:
            return await call()
        except SimulatedCrash:
            raise ConnectionLost(f"{destination} crashed") from None

    # ---------------------------------------------------------------- the run

    async def main(self) -> list[Violation]:
        loop = asyncio.get_running_loop()
        for crash in self.schedule.crashes:
            if crash.at_time is not None:
                loop.call_at(crash.at_time, self._crash, self.peers[crash.peer], crash)
        if self.transport == "grpc":
            self._pick_ports()
        for peer in self.peers:
            await self._start(peer)
        limit = loop.time() + TIME_LIMIT_PER_ROUND * self.schedule.rounds
        while not all(p.done and p.alive for p in self.peers):
            if loop.time() > limit:
                stranded = [p.peer_id for p in self.peers if not p.done]
                return [Violation("stranded", f"{stranded} not finished after {limit:g} s")]
            await asyncio.sleep(0.5)
        return []

    def _pick_ports(self) -> None:
        """Loopback addresses that stay the same across restarts (peers know each other by address)."""
        for peer in self.peers:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                peer.address = f"127.0.0.1:{probe.getsockname()[1]}"
            self.schedule.indexes[peer.address] = peer.index

    async def close(self) -> None:
        if self.transport == "grpc":
            for peer in self.peers:
                if peer.daemon is not None:
                    peer.daemon.kill()
                    await peer.daemon.transport.close()


def run_schedule(
    seed: int, allow_crashes: bool = True, allow_partitions: bool = True, transport: str = "memory"
) -> ScheduleResult:
    schedule = FaultSchedule.draw(seed, allow_crashes, allow_partitions)
    sim = Simulation(schedule, transport)
    loop = VirtualTimeLoop() if transport == "memory" else asyncio.new_event_loop()
    previous = logging.getLogger("tadlora").level
    logging.getLogger("tadlora").setLevel(logging.ERROR)
    try:
        violations = loop.run_until_complete(sim.main())
    except Deadlock as exc:
        violations = [Violation("deadlock", str(exc))]
    finally:
        virtual = loop.time()
        loop.run_until_complete(sim.close())
        _close(loop)
        logging.getLogger("tadlora").setLevel(previous)
    form = FileFormat if seed % FILE_FORMAT_EVERY == 0 else CopyFormat
    violations += check(schedule, [p.store for p in sim.peers], SCHEDULE_WINDOW, form)
    if not any(v.counts for v in violations):  # every peer finished: its checkpoint holds what it holds
        live = [p.daemon.local.state() for p in sim.peers if p.daemon is not None]  # all of them, finished
        violations += check_states([p.store for p in sim.peers], live, form)
    return ScheduleResult(schedule, violations, Counter(schedule.injected), sim.crashes, virtual)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    async def drain() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with contextlib.suppress(Deadlock):
        loop.run_until_complete(drain())
    loop.close()


@dataclass
class Summary:
    """What a batch of schedules found: the seeds that failed, violations and faults by kind."""

    schedules: int = 0
    failed: dict[int, list[str]] = field(default_factory=dict)
    violations: Counter = field(default_factory=Counter)
    injected: Counter = field(default_factory=Counter)
    crashes: Counter = field(default_factory=Counter)
    partitions: int = 0
    auto_schedules: int = 0
    measured: Counter = field(default_factory=Counter)  # not violations (phase-after-split)

    def add(self, result: ScheduleResult) -> None:
        self.schedules += 1
        self.injected.update(result.injected)
        self.crashes.update(result.crashes)
        self.partitions += len(result.schedule.partitions)
        self.auto_schedules += result.schedule.switch_interval == "auto"
        self.measured.update(v.kind for v in result.violations if not v.counts)
        if not result.ok:
            self.failed[result.schedule.seed] = [str(v) for v in result.violations if v.counts]
            self.violations.update(v.kind for v in result.violations if v.counts)


def _run_chunk(seeds: list[int], transport: str) -> Summary:
    summary = Summary()
    for seed in seeds:
        summary.add(run_schedule(seed, transport=transport))
    return summary


def run_many(seeds: list[int], jobs: int = 1, transport: str = "memory") -> Summary:
    """Run ``seeds`` in ``jobs`` processes (each schedule is independent and single-threaded)."""
    if jobs <= 1:
        return _run_chunk(list(seeds), transport)
    from concurrent.futures import ProcessPoolExecutor

    chunks = [list(seeds)[i::jobs] for i in range(jobs)]
    total = Summary()
    with ProcessPoolExecutor(jobs) as pool:
        for part in pool.map(_run_chunk, chunks, [transport] * jobs):
            total.schedules += part.schedules
            total.failed.update(part.failed)
            for name in ("violations", "injected", "crashes", "measured"):
                getattr(total, name).update(getattr(part, name))
            total.partitions += part.partitions
            total.auto_schedules += part.auto_schedules
    return total
