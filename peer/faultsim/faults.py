"""A seeded fault schedule: what the network and the machines do to the peers during one run.

Drawn from one seed: the run's shape (peers, rounds, fixed or ``auto`` T, synthetic edge probability),
a loss probability per protocol step, message latencies with occasional long delays, repeated
commits, partitions (two-way or one-way) that heal, and crashes (at a moment of virtual time, which
is wherever the peer's tasks are awaiting then, or at the n-th write to its store, which is the middle
of a checkpoint, a write-ahead record or a log line), each followed by a restart from the store.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from peer.transport.base import NetworkFaults, Step

PROTOCOL_STEPS = tuple(Step)
T = TypeVar("T")


@dataclass(frozen=True)
class Partition:
    start: float
    end: float
    side: frozenset[int]  # peers cut from the others
    one_way: bool = False  # only messages from ``side`` to the others are lost


@dataclass(frozen=True)
class Crash:
    peer: int
    at_time: float | None  # a crash at this virtual time ...
    at_write: int | None  # ... or instead of the peer's n-th store write after its (re)start
    restart_after: float


# half of the schedules send compressed factors (bf16 and fp16 alike lose bits; int8 most)
WIRE_DTYPE_DRAW = ("fp32", "fp32", "bf16", "int8")


@dataclass
class FaultSchedule(NetworkFaults):
    seed: int
    peers: int
    rounds: int
    switch_interval: str
    edge_prob: float
    loss: dict[Step, float]
    latency: tuple[float, float]
    long_delay_probability: float
    duplicate_probability: float
    partitions: list[Partition]
    crashes: list[Crash]
    wire_dtype: str = "fp32"  # how the factors travel: a lossy form must keep the sums exact too
    injected: Counter = field(default_factory=Counter)
    indexes: dict[str, int] = field(default_factory=dict)  # address -> peer (gRPC: loopback ports)
    guard: Callable[[str, Callable[[], Awaitable]], Awaitable] | None = None  # the runner's: crashes in handlers

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 0xFA17])

    @classmethod
    def draw(cls, seed: int, allow_crashes: bool = True, allow_partitions: bool = True) -> FaultSchedule:
        rng = np.random.default_rng([seed, 0x5C4E])
        peers = int(rng.integers(2, 6))
        rounds = int(rng.integers(6, 13))
        interval = "auto" if rng.random() < 0.35 else str(int(rng.integers(1, 4)))
        lossy = rng.random() < 0.8
        loss = {step: (float(rng.choice([0.0, 0.05, 0.15, 0.3])) if lossy else 0.0) for step in PROTOCOL_STEPS}
        partitions = []
        if allow_partitions and peers >= 2 and rng.random() < 0.3:
            start = float(rng.uniform(0.0, 4.0))
            side = frozenset(int(i) for i in rng.choice(peers, size=int(rng.integers(1, peers)), replace=False))
            partitions.append(Partition(start, start + float(rng.uniform(0.5, 6.0)), side, bool(rng.random() < 0.3)))
        crashes = []
        if allow_crashes and rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 3))):
                at_write = int(rng.integers(0, 40)) if rng.random() < 0.5 else None
                crashes.append(
                    Crash(
                        int(rng.integers(0, peers)),
                        None if at_write is not None else float(rng.uniform(0.0, 6.0)),
                        at_write,
                        float(rng.uniform(0.0, 3.0)),
                    )
                )
        return cls(
            seed=seed,
            peers=peers,
            rounds=rounds,
            switch_interval=interval,
            edge_prob=float(rng.choice([1.0, 1.0, 0.7, 0.4])),
            loss=loss,
            latency=(0.0005, float(rng.choice([0.002, 0.02, 0.1]))),
            long_delay_probability=float(rng.choice([0.0, 0.02, 0.05])),
            duplicate_probability=float(rng.choice([0.0, 0.1, 0.5])),
            partitions=partitions,
            crashes=crashes,
            # its own stream, so that a seed's other draws stay what they were before this one existed
            wire_dtype=str(np.random.default_rng([seed, 0x317E]).choice(WIRE_DTYPE_DRAW)),
        )

    def describe(self) -> str:
        lossy = {s.value: p for s, p in self.loss.items() if p}
        return (
            f"seed {self.seed}: {self.peers} peers, {self.rounds} rounds, T={self.switch_interval}, "
            f"edge-prob {self.edge_prob}, loss {lossy or 'none'}, latency {self.latency}, "
            f"long delays {self.long_delay_probability}, duplicate commits {self.duplicate_probability}, "
            f"partitions {self.partitions}, crashes {self.crashes}, wire {self.wire_dtype}"
        )

    # ---------------------------------------------------------------- NetworkFaults

    def _cut(self, source: int, destination: int, now: float) -> bool:
        for p in self.partitions:
            crosses = p.start <= now < p.end and (source in p.side) != (destination in p.side)
            if crosses and (not p.one_way or source in p.side):
                return True
        return False

    async def deliver(self, step: Step, source: str, destination: str) -> bool:
        delay = float(self.rng.uniform(*self.latency))
        if self.rng.random() < self.long_delay_probability:
            delay += float(self.rng.uniform(0.5, 3.0))
            self.injected["delay"] += 1
        lost = self.rng.random() < self.loss[step]
        await asyncio.sleep(delay)
        if lost:
            self.injected[f"loss:{step.value}"] += 1
            return False
        if self._cut(self._index(source), self._index(destination), asyncio.get_running_loop().time()):
            self.injected[f"partition:{step.value}"] += 1
            return False
        return True

    async def at_server(self, destination: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.guard is None:
            return await call()
        return await self.guard(destination, call)

    def duplicate(self, step: Step, source: str, destination: str) -> bool:
        repeat = bool(self.rng.random() < self.duplicate_probability)
        if repeat:
            self.injected[f"duplicate:{step.value}"] += 1
        return repeat

    def _index(self, address: str) -> int:
        if address in self.indexes:
            return self.indexes[address]
        return int(address.rsplit("-", 1)[1]) if address.startswith("sim-") else -1


def address_of(index: int) -> str:
    return f"sim-{index}"
