"""A peer without a model: two LoRA-named float64 tensors and a head, and 'training' that adds seeded noise.

The daemon gets a real ``LocalPeer`` (real strategy, real mixing rule) around these stand-ins, so
every line of the daemon and the algorithm runs; only the model is missing. float64 keeps the
conservation check tight (1e-9). The head (``head/…``) is there because runs train it by default: the
strategy trains and mixes it every round, so its network-wide sum is checked like A's and B's.
"""

from __future__ import annotations

import numpy as np
import torch

from peer.algorithm.factors import HEAD_PREFIX, blocks_of, factor_of, select
from peer.algorithm.robust import MixingRule
from peer.algorithm.strategies import Strategy
from peer.core.local_peer import LocalPeer

SHAPES = {
    "layer.0.q.lora_A.weight": (2, 3),
    "layer.0.q.lora_B.weight": (3, 2),
    f"{HEAD_PREFIX}classifier.weight": (2, 3),
}
TENSOR_NAMES = tuple(SHAPES)
BLOCKS = blocks_of(TENSOR_NAMES)


class StandInAdapter:
    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0xADA])
        self.tensors = {name: torch.tensor(rng.normal(size=SHAPES[name])) for name in TENSOR_NAMES}

    def factors(self, which=BLOCKS) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in select(self.tensors, which).items()}

    def load_factors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, value in tensors.items():
            if name not in self.tensors or tuple(value.shape) != SHAPES[name]:
                raise ValueError(f"stand-in adapter: bad tensor {name}")
        for name, value in tensors.items():
            self.tensors[name] = value.detach().clone().to(torch.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return self.factors()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_factors(state)


class _Optimizer:
    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])


class StandInTrainer:
    def __init__(self, adapter: StandInAdapter, seed: int, index: int) -> None:
        self.adapter, self.seed, self.index = adapter, seed, index
        self.optimizer = _Optimizer()
        self.last_trained: frozenset[str] = frozenset()

    def train_round(self, round_: int, factors: frozenset[str], steps: int) -> float:
        rng = np.random.default_rng([self.seed, self.index, round_])
        for name, value in self.adapter.tensors.items():
            if factor_of(name) in factors:
                self.adapter.tensors[name] = value + torch.tensor(rng.normal(scale=0.1, size=value.shape))
        self.optimizer.steps += steps
        self.last_trained = frozenset(factors)
        return float(rng.random())


def stand_in_peer(peer_id: str, index: int, seed: int, strategy: Strategy) -> LocalPeer:
    adapter = StandInAdapter(seed * 1000 + index)
    trainer = StandInTrainer(adapter, seed, index)
    return LocalPeer(peer_id, adapter, trainer, strategy, local_steps=1, rule=MixingRule())  # type: ignore[arg-type]
