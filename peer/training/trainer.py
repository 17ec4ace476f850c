"""Local training of one peer's adapter: K steps of AdamW on the active factor(s), and evaluation.

Determinism: the batches and the dropout masks of peer i in round r come from seeds derived from
(run seed, i, r) alone, so a peer produces the same update whether it runs in the simulator beside
nine others or alone in a daemon process, and after a restart.

Which examples, in which batches
--------------------------------
A peer walks through its shard in epochs, each a fresh seeded permutation, so every example is seen
equally often. With ``Batching.BY_LENGTH`` (the default) the stream is cut into pools of whole
rounds, about ``POOL_BATCHES`` batches; inside a pool the examples are sorted by length and cut into
batches. The examples a peer sees, and how often, are exactly those of the random order; only which
of them share a batch changes, so a batch pads to its own longest sentence instead of to the longest
of a random draw (measured on the movie reviews: random batches of 16 are 43 % padding).
``Batching.RANDOM`` keeps the random order's batches. Batch ``g`` of the run is a pure function of
the seed, the peer, the round's steps and ``g``, so a restarted round trains on the same batches.

A pool's batches are dealt to its rounds so that every round holds short and long batches alike
(``balanced_rounds``), then the rounds and the steps inside each are shuffled. Rounds are
synchronous, so every peer waits for the slowest peer's round: with the batches shuffled at random,
one peer's round of long batches beside another's of short ones made the bare loops of the MiniLM
benchmark lose 6 to 8 % to that wait (``benchmarks/training_overhead.py``); dealt, a round costs
about the same on every peer.

Optimizer state: one AdamW per peer (Hugging Face's defaults: betas (0.9, 0.999), eps 1e-8, no weight
decay), kept across rounds. The learning rate is constant or decays linearly to 0 over the run's
steps (``LrSchedule``): with decay the last rounds' local steps barely move a peer away from what it
mixed, so the peers end close to their consensus. Either schedule can start with a linear warm-up over
a fraction of the run's steps. When a factor becomes trainable again after a
phase in which it was frozen, its moments are reset: they describe the loss surface of T rounds ago,
before the other factor moved. A frozen factor has no gradient, so AdamW leaves it untouched.

Precision: the forward pass runs under ``peer.training.precision.autocast``; the parameters, their
gradients and the optimizer's moments stay fp32.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

import numpy as np
import torch

from peer.errors import DataError
from peer.training.adapters import Adapter
from peer.training.causal import answer_labels, answer_loss, collate_answers
from peer.training.precision import Precision, autocast, gradient_scaler
from peer.training.tokenizer import Encoded

# Batches per length-sorted pool, at least (a pool holds whole rounds). Larger pools pad less but put
# ever more similar lengths together; 32 batches of 16 (512 sentences) already cut the padding of the
# movie reviews to a few percent.
POOL_BATCHES = 32
EVAL_BATCH_SIZE = 128


class Batching(StrEnum):
    BY_LENGTH = "by-length"
    RANDOM = "random"


class LrSchedule(StrEnum):
    CONSTANT = "constant"
    LINEAR = "linear"  # from the learning rate down to 0 at the run's last step (Hugging Face Trainer's default)


def learning_rate_at(schedule: LrSchedule, base: float, step: int, total_steps: int, warmup: float = 0.0) -> float:
    """The learning rate of a peer's ``step``-th optimizer step (counted from 0 over the whole run).
    A function of the step alone, so a restarted or caught-up peer uses the rate of the round it is in.
    ``warmup``: the fraction of ``total_steps`` over which the rate first rises linearly to the schedule's
    (Adam's first steps, before its second moments have settled, are the ones that can throw a run off)."""
    warmup_steps = warmup * total_steps
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps >= 1 else 1.0
    if schedule is LrSchedule.CONSTANT:
        return base * ramp
    return base * ramp * max(0.0, 1.0 - step / max(1, total_steps))


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def collate(data: Encoded, indices, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest of them. For instructions (a causal LM), the labels are the
    answer tokens, every other position ignored by the loss."""
    rows = [data.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[n, : len(row)] = 1
    if data.answer_starts is not None:
        labels = answer_labels(ids, mask, [data.answer_starts[i] for i in indices])
    else:
        labels = torch.as_tensor(data.labels[np.asarray(indices, dtype=np.int64)])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if data.token_type_ids is not None:
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for n, i in enumerate(indices):
            types[n, : len(data.token_type_ids[i])] = torch.tensor(data.token_type_ids[i], dtype=torch.long)
        batch["token_type_ids"] = types
    return {k: v.to(device) for k, v in batch.items()}


def balanced_rounds(batch_count: int, round_steps: int, rng: np.random.Generator) -> list[int]:
    """An order of ``batch_count`` batches, sorted from cheapest to dearest, in which every run of
    ``round_steps`` (a round) holds one batch of each of ``round_steps`` cost bands: band ``s`` is the
    ``s``-th slice of ``batch_count // round_steps`` batches, dealt to the rounds forwards in even bands
    and backwards in odd ones, so that a round with a dear batch of one band gets a cheap one of the
    next. The rounds and the steps inside each are shuffled. ``batch_count`` is a multiple of
    ``round_steps``."""
    rounds = batch_count // round_steps
    dealt = [
        [band * rounds + (r if band % 2 == 0 else rounds - 1 - r) for band in range(round_steps)] for r in range(rounds)
    ]
    order: list[int] = []
    for r in rng.permutation(rounds):
        order.extend(dealt[r][s] for s in rng.permutation(round_steps))
    return order


class BatchPlan:
    """Which shard examples make up batch ``g`` of a peer's run (see the module docstring); a round is
    ``round_steps`` batches, ``g // round_steps`` its index."""

    def __init__(
        self,
        shard_size: int,
        batch_size: int,
        lengths,
        seed: int,
        peer_index: int,
        batching: Batching = Batching.BY_LENGTH,
        round_steps: int = 1,
    ) -> None:
        self.shard_size, self.batch_size, self.seed, self.peer_index = shard_size, batch_size, seed, peer_index
        self.lengths = np.asarray(lengths)
        self.batching = Batching(batching)
        self.round_steps = max(1, round_steps)
        self.pool_batches = -(-POOL_BATCHES // self.round_steps) * self.round_steps  # whole rounds
        self._pool = lru_cache(maxsize=2)(self._build_pool)

    def batch(self, g: int) -> np.ndarray:
        return self._pool(g // self.pool_batches)[g % self.pool_batches]

    def _epoch(self, e: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.peer_index, e, 0xE90C]).permutation(self.shard_size)

    def _stream(self, start: int, stop: int) -> np.ndarray:
        """Positions ``start:stop`` of the endless stream of epochs."""
        first, last = start // self.shard_size, (stop - 1) // self.shard_size
        epochs = np.concatenate([self._epoch(e) for e in range(first, last + 1)])
        offset = first * self.shard_size
        return epochs[start - offset : stop - offset]

    def _build_pool(self, pool: int) -> list[np.ndarray]:
        size = self.pool_batches * self.batch_size
        examples = self._stream(pool * size, (pool + 1) * size)
        if self.batching is Batching.RANDOM:
            return [examples[b * self.batch_size : (b + 1) * self.batch_size] for b in range(self.pool_batches)]
        by_length = examples[np.argsort(self.lengths[examples], kind="stable")]  # stable: ties keep random order
        batches = [by_length[b * self.batch_size : (b + 1) * self.batch_size] for b in range(self.pool_batches)]
        rng = np.random.default_rng([self.seed, self.peer_index, pool, 0xBA7C])
        return [batches[b] for b in balanced_rounds(self.pool_batches, self.round_steps, rng)]


class Evaluator:
    """Accuracy on one dataset, with its batches collated once (length-sorted, so little padding) and
    reused for every model scored on it: the simulator scores every peer on the same batches."""

    def __init__(
        self,
        data: Encoded,
        device: torch.device,
        precision: Precision = Precision.FP32,
        batch_size: int = EVAL_BATCH_SIZE,
    ) -> None:
        self.size, self.device, self.precision = len(data), device, precision
        by_length = np.argsort([len(ids) for ids in data.input_ids], kind="stable")
        self.batches = [collate(data, by_length[s : s + batch_size], device) for s in range(0, len(data), batch_size)]

    def evaluate(self, adapter: Adapter) -> dict[str, float]:
        """The scores of a model (the causal LM's evaluator adds ``answer_loss`` and ``perplexity``)."""
        return {"accuracy": self.accuracy(adapter)}

    @torch.inference_mode()
    def accuracy(self, adapter: Adapter) -> float:
        adapter.activate()
        model = adapter.owner.peft_model
        model.eval()
        correct = 0
        for batch in self.batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with autocast(self.device, self.precision):
                logits = model(**inputs).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
        return correct / max(1, self.size)


class LocalTrainer:
    """Trains one adapter on one peer's shard."""

    def __init__(
        self,
        adapter: Adapter,
        shard: Encoded,
        batch_size: int,
        learning_rate: float,
        seed: int,
        peer_index: int,
        precision: Precision = Precision.FP32,
        batching: Batching = Batching.BY_LENGTH,
        schedule: LrSchedule = LrSchedule.CONSTANT,
        total_steps: int = 0,
        warmup: float = 0.0,
        round_steps: int = 1,
    ) -> None:
        if len(shard) == 0:
            raise DataError(f"peer {peer_index} has no training examples")
        self.adapter, self.shard, self.batch_size = adapter, shard, batch_size
        self.seed, self.peer_index, self.precision = seed, peer_index, Precision(precision)
        self.device = adapter.owner.device
        lengths = [len(ids) for ids in shard.input_ids]
        self.plan = BatchPlan(len(shard), batch_size, lengths, seed, peer_index, batching, round_steps)
        self.optimizer = torch.optim.AdamW(
            adapter.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        self.scaler = gradient_scaler(self.device, self.precision)
        self.learning_rate, self.schedule, self.total_steps = learning_rate, LrSchedule(schedule), total_steps
        self.warmup = warmup
        self.last_trained: frozenset[str] = frozenset()

    def _batches(self, round_: int, steps: int) -> list[np.ndarray]:
        return [self.plan.batch(round_ * steps + s) for s in range(steps)]

    def _reset_moments_of_reactivated(self, factors: frozenset[str]) -> None:
        for factor in factors - self.last_trained:
            for param in self.adapter.parameters([factor]):
                self.optimizer.state.pop(param, None)

    def _loss(self, model, indices) -> torch.Tensor:
        if self.shard.answer_starts is not None:  # instructions: the answer tokens' logits alone
            return answer_loss(model, collate_answers(self.shard, indices, self.device))
        return model(**collate(self.shard, indices, self.device)).loss

    def train_round(self, round_: int, factors: frozenset[str], steps: int) -> float:
        """Run ``steps`` optimizer steps on ``factors``; returns the mean training loss."""
        self.adapter.activate(factors)
        self._reset_moments_of_reactivated(factors)
        self.last_trained = factors
        model = self.adapter.owner.peft_model
        model.train()
        torch.manual_seed(derive_seed(self.seed, self.peer_index, round_))
        losses = []
        for s, indices in enumerate(self._batches(round_, steps)):
            step = round_ * steps + s
            rate = learning_rate_at(self.schedule, self.learning_rate, step, self.total_steps, self.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            with autocast(self.device, self.precision):
                loss = self._loss(model, indices)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else float("nan")
