"""Local training of one peer's adapter: K steps of AdamW on the active factor(s), and evaluation.

Determinism: the batches and the dropout masks of peer i in round r come from seeds derived from
(run seed, i, r) alone, so a peer produces the same update whether it runs in the simulator beside
nine others or alone in a daemon process, and after a restart.

Optimizer state: one AdamW per peer (Hugging Face's defaults: betas (0.9, 0.999), eps 1e-8, no weight
decay; constant learning rate), kept across rounds. When a factor becomes trainable again after a
phase in which it was frozen, its moments are reset: they describe the loss surface of T rounds ago,
before the other factor moved. A frozen factor has no gradient, so AdamW leaves it untouched.
"""

from __future__ import annotations

import numpy as np
import torch

from peer.training.adapters import Adapter
from peer.training.tokenizer import Encoded


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def collate(data: Encoded, indices, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of them."""
    rows = [data.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[n, : len(row)] = 1
    batch = {"input_ids": ids, "attention_mask": mask,
             "labels": torch.as_tensor(data.labels[np.asarray(indices, dtype=np.int64)])}
    if data.token_type_ids is not None:
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for n, i in enumerate(indices):
            types[n, : len(data.token_type_ids[i])] = torch.tensor(data.token_type_ids[i], dtype=torch.long)
        batch["token_type_ids"] = types
    return {k: v.to(device) for k, v in batch.items()}


class LocalTrainer:
    """Trains one adapter on one peer's shard."""

    def __init__(self, adapter: Adapter, shard: Encoded, batch_size: int, learning_rate: float,
                 seed: int, peer_index: int) -> None:
        if len(shard) == 0:
            raise ValueError(f"peer {peer_index} has no training examples")
        self.adapter, self.shard, self.batch_size = adapter, shard, batch_size
        self.seed, self.peer_index = seed, peer_index
        self.optimizer = torch.optim.AdamW(adapter.parameters(), lr=learning_rate, betas=(0.9, 0.999),
                                           eps=1e-8, weight_decay=0.0)
        self.last_trained: frozenset[str] = frozenset()

    def _batches(self, round_: int, steps: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.peer_index, round_, 0xBA7C])
        needed = steps * self.batch_size
        order = np.concatenate([rng.permutation(len(self.shard)) for _ in range(-(-needed // len(self.shard)))])
        return [order[s * self.batch_size:(s + 1) * self.batch_size] for s in range(steps)]

    def _reset_moments_of_reactivated(self, factors: frozenset[str]) -> None:
        for factor in factors - self.last_trained:
            for param in self.adapter.parameters([factor]):
                self.optimizer.state.pop(param, None)

    def train_round(self, round_: int, factors: frozenset[str], steps: int) -> float:
        """Run ``steps`` optimizer steps on ``factors``; returns the mean training loss."""
        self.adapter.activate(factors)
        self._reset_moments_of_reactivated(factors)
        self.last_trained = factors
        model = self.adapter.owner.peft_model
        model.train()
        torch.manual_seed(derive_seed(self.seed, self.peer_index, round_))
        losses = []
        for indices in self._batches(round_, steps):
            loss = model(**collate(self.shard, indices, self.adapter.owner.device)).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else float("nan")

    @torch.inference_mode()
    def evaluate(self, data: Encoded, batch_size: int = 128) -> float:
        """Accuracy of this peer's model on ``data``."""
        self.adapter.activate()
        model = self.adapter.owner.peft_model
        model.eval()
        correct = 0
        by_length = np.argsort([len(ids) for ids in data.input_ids], kind="stable")  # less padding
        for start in range(0, len(data), batch_size):
            indices = by_length[start:start + batch_size]
            batch = collate(data, indices, self.adapter.owner.device)
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        return correct / max(1, len(data))
