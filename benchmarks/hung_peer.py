"""How much a hung neighbour (SIGSTOP: it accepts a stream and never answers) slows the healthy peers,
with the daemon's real default timeouts, in the fault simulator's virtual time (deterministic; no noise).

Four peers, a complete graph, 60 rounds, training 0.1 s a round; peer-03 hung from the start. Rows:
no hung peer; hung with the daemon as it is; hung with the old deadline (it learned from waits for
failed links) and without backoff, as before issue 10.

    python benchmarks/hung_peer.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics

from peer.daemon.persistence import ROUNDS_LOG
from peer.faultsim import mutations
from peer.faultsim.clock import VirtualTimeLoop
from peer.faultsim.faults import FaultSchedule
from peer.faultsim.run import Simulation, Timings
from peer.transport.base import ExchangeFailed, ExchangeServer, Step

ROUNDS, PEERS, HUNG = 60, 4, 3
DAEMON_DEFAULTS = Timings(round_timeout_min=2.0, round_timeout_max=60.0, frame_timeout=10.0, train_seconds=(0.1, 0.1))


class HungServer(ExchangeServer):
    """Accepts every call and never answers (a stopped process whose socket is still open)."""

    async def respond(self, incoming):
        await asyncio.Event().wait()

    async def commit(self, header):
        await asyncio.Event().wait()

    async def abort(self, header):
        return None

    def status(self):
        # the memory transport's status call is synchronous: no answer shows as a failed call (over
        # gRPC it would cost its 2 s timeout, once at start and once per catch-up check)
        raise ExchangeFailed("hung: never answers")

    async def current_factors(self, run_id, peer_id):
        await asyncio.Event().wait()

    def outcome(self, peer_id, round_, run_id):
        return None


class HungSimulation(Simulation):
    def __init__(self, schedule, hung: bool) -> None:
        super().__init__(schedule, timings=DAEMON_DEFAULTS)
        self.hung = hung

    async def _start(self, peer):
        if self.hung and peer.index == HUNG:
            self.network.bind(peer.address, HungServer())
            peer.alive = peer.done = True
            return
        await super()._start(peer)


def _schedule(seed: int) -> FaultSchedule:
    return FaultSchedule(
        seed=seed,
        peers=PEERS,
        rounds=ROUNDS,
        switch_interval="5",
        edge_prob=1.0,
        loss={step: 0.0 for step in Step},
        latency=(0.001, 0.005),
        long_delay_probability=0.0,
        duplicate_probability=0.0,
        partitions=[],
        crashes=[],
    )


STEADY_FROM = 10  # rounds before this include the start-up (the first round waits up to the maximum)


def rounds_per_minute(hung: bool, seed: int = 0) -> tuple[float, float, float]:
    """Healthy peers' rounds per virtual minute over the whole run and from round STEADY_FROM on, and
    their last deadline (s); medians over the healthy peers."""
    sim = HungSimulation(_schedule(seed), hung)
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(sim.main())
    finally:
        loop.close()
    logs = [
        [json.loads(line) for line in p.store.lines(ROUNDS_LOG)] for p in sim.peers if not (hung and p.index == HUNG)
    ]
    total = statistics.median(sum(r["seconds"] for r in log) for log in logs)
    steady = statistics.median(sum(r["seconds"] for r in log if r["round"] >= STEADY_FROM) for log in logs)
    return (
        60.0 * ROUNDS / total,
        60.0 * (ROUNDS - STEADY_FROM) / steady,
        statistics.median(log[-1]["deadline"] for log in logs),
    )


def main() -> None:
    rows = [
        ("no hung peer", False, contextlib.nullcontext),
        ("peer-03 hung, the daemon as it is", True, contextlib.nullcontext),
        ("peer-03 hung, old deadline, no backoff", True, _both),
    ]
    print(
        f"| run | healthy peers' rounds/min, all {ROUNDS} rounds | from round {STEADY_FROM} on | "
        f"deadline at the end (s) |"
    )
    print("|---|---|---|---|")
    results = {}
    for name, hung, defect in rows:
        with defect():
            rate, steady, deadline = rounds_per_minute(hung)
        results[name] = (rate, steady)
        print(f"| {name} | {rate:.0f} | {steady:.0f} | {deadline:.1f} |", flush=True)
    base, base_steady = results["no hung peer"]
    for name, (rate, steady) in list(results.items())[1:]:
        print(f"{name}: {base / rate:.1f}x slower over the run, {base_steady / steady:.1f}x from round {STEADY_FROM}")


@contextlib.contextmanager
def _both():
    with mutations.deadline_learns_from_failed_waits(), mutations.no_backoff():
        yield


if __name__ == "__main__":
    main()
