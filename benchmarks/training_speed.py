"""Training and scoring speed of one peer, before and after the engine of issue 11, side by side.

    python benchmarks/training_speed.py [--steps 10] [--repeats 5] [--precision auto]

One process, one MiniLM base with two adapters trained on the same shard of the embedded default
(movie reviews, label skew, batch 16, max length 64), alternating blocks of ``--steps`` steps:

- before: fp32, random batches (what a peer trained with until issue 11);
- after: ``--precision`` (auto: bf16 where the CPU or GPU computes it natively, else fp32) and
  batches of similar length cut from the same random order (``Batching.BY_LENGTH``).

Then scoring the 1,000 validation sentences with each precision. Prints samples/s (median over the
repeats), the padding share of the batches, and the ratios after/before.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from peer.algorithm.factors import A, B
from peer.config import load_config
from peer.core.run_setup import build_model, pick_device, prepare_data
from peer.training.precision import Precision, resolve_precision
from peer.training.trainer import Batching, Evaluator, LocalTrainer


def padding_share(trainer: LocalTrainer, batches: int) -> float:
    lengths = np.array([len(ids) for ids in trainer.shard.input_ids])
    real = padded = 0
    for g in range(batches):
        chosen = lengths[trainer.plan.batch(g)]
        real += chosen.sum()
        padded += chosen.max() * len(chosen)
    return 1 - real / padded


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    cfg = load_config(overrides={"eval_samples": 0, "device": args.device})
    device = pick_device(cfg.device)
    precision = resolve_precision(args.precision, device)
    data = prepare_data(cfg)
    model = build_model(cfg, data.task.num_labels, ["before", "after"])
    shard = data.shards[2]  # a balanced peer
    trainers = {
        "before": LocalTrainer(
            model["before"], shard, cfg.batch_size, cfg.learning_rate, 0, 2, Precision.FP32, Batching.RANDOM
        ),
        "after": LocalTrainer(
            model["after"], shard, cfg.batch_size, cfg.learning_rate, 0, 2, precision, Batching.BY_LENGTH
        ),
    }
    samples = args.steps * cfg.batch_size
    speeds: dict[str, list[float]] = {name: [] for name in trainers}
    for trainer in trainers.values():  # warm-up
        trainer.train_round(0, frozenset({A, B}), 1)
    for r in range(1, args.repeats + 1):
        for name, trainer in trainers.items():
            speeds[name].append(samples / timed(lambda t=trainer, r=r: t.train_round(r, frozenset({A, B}), args.steps)))
    evaluators = {
        "before": Evaluator(data.validation, device, Precision.FP32),
        "after": Evaluator(data.validation, device, precision),
    }
    scoring: dict[str, list[float]] = {name: [] for name in evaluators}
    for _ in range(max(2, args.repeats // 2)):
        for name, evaluator in evaluators.items():
            scoring[name].append(len(data.validation) / timed(lambda e=evaluator, n=name: e.accuracy(model[n])))
    print(f"device {device}, precision after: {precision}, torch threads {torch.get_num_threads()}")
    for name in trainers:
        print(
            f"{name:>6}: training {statistics.median(speeds[name]):6.1f} samples/s "
            f"(padding {padding_share(trainers[name], 64):.0%}), scoring {statistics.median(scoring[name]):6.1f} "
            f"sentences/s"
        )
    training_ratio = statistics.median(speeds["after"]) / statistics.median(speeds["before"])
    print(
        f"ratio after/before: training {training_ratio:.2f}x, "
        f"scoring {statistics.median(scoring['after']) / statistics.median(scoring['before']):.2f}x"
    )


if __name__ == "__main__":
    main()
