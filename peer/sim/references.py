"""The references that make a decentralized result readable, run at the run's own budget and seed.

- ``alone``: each peer fine-tunes on its own shard, never mixing, for the run's rounds × local
  steps, on exactly the batches it trains on in the run (same seed, same peer index). The figure is
  the mean of the peers' accuracies: what the labs would get without each other.
- ``centralized``: one model fine-tunes on the union of the peers' shards in random order, for
  peers × rounds × local steps steps of the same batch size: every sample the peers trained on, one
  after the other, as if the data had been pooled.

Learning rate: both are single models whose every step sees one batch, where a mixed step of the run
averages the steps of several peers. They train at ``reference_learning_rate``, by default the peers'
divided by √peers: the square-root scaling rule for Adam (Malladi et al., 2022), under which a step
over a batch N times larger takes a rate √N times larger. At the embedded default that is 2e-3 for
the peers' 4e-3, the rate at which one model on all the data learns best of those measured: at 3e-3
and 4e-3 it collapses to 0.49-0.75 (benchmarks/README.md section 8). They take no warm-up: at their
rate it is not needed, and it cost one model on all the data 0.4 to 2.8 points in the three seeds
measured. The schedule is the run's.

Both train with plain LoRA (A and B every step), the standard way to fine-tune one model, and train
the classification head when the run does. The third figure, the ``network average``, comes from the
run itself: the average of the peers' factors (and head) loaded into one adapter and scored. It is
what the network as a whole knows; a peer's own model approaches it as the peers reach consensus.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from peer.algorithm.strategies import make_strategy
from peer.config import RunConfig
from peer.core.run_setup import PreparedData, build_model, build_trainer, evaluator_for
from peer.training.adapters import Adapter
from peer.training.causal import CausalEvaluator
from peer.training.tokenizer import Encoded
from peer.training.trainer import Evaluator


class Reference(StrEnum):
    ALONE = "alone"
    CENTRALIZED = "centralized"


NETWORK_AVERAGE = "network_average"
EXPORT_FILE = "adapter_model.safetensors"  # PEFT's file name in an exported adapter folder


def parse_references(text: str) -> tuple[Reference, ...]:
    """``"alone,centralized"`` -> the references; ``""`` or ``"none"`` -> none; anything else names itself."""
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in Reference.__members__.values()]
    if unknown:
        raise ValueError(
            f"unknown reference(s) {', '.join(unknown)}; choose from {', '.join(r.value for r in Reference)} or none"
        )
    return tuple(Reference(n) for n in dict.fromkeys(names))


def trained_blocks(cfg: RunConfig) -> frozenset[str]:
    """What plain LoRA trains in this run: both factors, and the head when the run trains it."""
    return make_strategy("lora", train_head=bool(cfg.train_head)).plan(0).train


def concatenate(parts: list[Encoded]) -> Encoded:
    """One dataset made of several (the peers' shards pooled)."""
    types = [t for p in parts for t in (p.token_type_ids or [])] if all(p.token_type_ids for p in parts) else None
    instructions = all(p.answer_starts is not None for p in parts)  # an empty shard's list is empty, not None
    starts = [s for p in parts for s in (p.answer_starts or [])] if instructions else None
    return Encoded(
        [ids for p in parts for ids in p.input_ids],
        types,
        np.concatenate([p.labels for p in parts]),
        parts[0].pad_id,
        starts,
    )


@torch.no_grad()
def load_average(target: Adapter, sources: list[Adapter]) -> None:
    """Load the plain mean of the sources' blocks (factors, and head when it trains) into ``target``."""
    states = [s.factors() for s in sources]
    target.load_factors({name: torch.stack([s[name] for s in states]).mean(0) for name in states[0]})


def _train(trainer, blocks: frozenset[str], rounds: int, steps: int, bar) -> None:
    for r in range(rounds):
        trainer.train_round(r, blocks, steps)
        bar.update(steps)


def run_references(
    cfg: RunConfig,
    data: PreparedData,
    kinds: tuple[Reference, ...],
    progress: bool = True,
    evaluator: Evaluator | CausalEvaluator | None = None,
) -> dict[str, float]:
    """Train and score the asked references; returns {reference name: mean accuracy}."""
    if not kinds:
        return {}
    names = [f"alone-{i:02d}" for i in range(cfg.peers)] * (Reference.ALONE in kinds) + ["centralized"] * (
        Reference.CENTRALIZED in kinds
    )
    model = build_model(cfg, data.task.num_labels, names)
    evaluator = evaluator or evaluator_for(cfg, data, model.device)
    blocks = trained_blocks(cfg)
    total = cfg.peers * cfg.rounds * cfg.local_steps * len(kinds)
    results: dict[str, float] = {}
    with tqdm(
        total=total, desc="references", unit="step", disable=not progress, file=sys.stderr, dynamic_ncols=True
    ) as bar:
        if Reference.ALONE in kinds:
            accuracies = []
            for i in range(cfg.peers):
                name = f"alone-{i:02d}"
                trainer = build_trainer(cfg, model[name], data.shards[i], i, reference=True)
                _train(trainer, blocks, cfg.rounds, cfg.local_steps, bar)
                accuracies.append(evaluator.accuracy(model[name]))
            results[Reference.ALONE] = float(np.mean(accuracies))
        if Reference.CENTRALIZED in kinds:
            # peer index ``peers``: a batch stream of its own, not any peer's
            trainer = build_trainer(
                cfg,
                model["centralized"],
                concatenate(data.shards),
                cfg.peers,
                total_steps=cfg.peers * cfg.rounds * cfg.local_steps,
                reference=True,
            )
            _train(trainer, blocks, cfg.peers * cfg.rounds, cfg.local_steps, bar)
            results[Reference.CENTRALIZED] = evaluator.accuracy(model["centralized"])
    return results


def score_average_of_exports(
    cfg: RunConfig,
    data: PreparedData,
    adapter_dirs: list[Path],
    evaluator: Evaluator | CausalEvaluator | None = None,
) -> float:
    """The accuracy of the average of the adapters that daemons exported (PEFT format)."""
    from safetensors.torch import load_file

    names = [f"export-{i}" for i in range(len(adapter_dirs))]
    model = build_model(cfg, data.task.num_labels, [*names, "network-average"])
    evaluator = evaluator or evaluator_for(cfg, data, model.device)
    for name, folder in zip(names, adapter_dirs):
        model[name].load_state(load_file(str(Path(folder) / EXPORT_FILE)))
    load_average(model["network-average"], [model[n] for n in names])
    return evaluator.accuracy(model["network-average"])


def headline(summary: dict) -> str:
    """``alone 0.62 · peers 0.80 · network average 0.81 · centralized 0.83``: the run among its references."""
    references = summary.get("references", {})
    parts = []
    if Reference.ALONE in references:
        parts.append(f"alone {references[Reference.ALONE]:.3f}")
    parts.append(f"peers {summary['mean_accuracy']:.3f}")
    if summary.get(NETWORK_AVERAGE) is not None:
        parts.append(f"network average {summary[NETWORK_AVERAGE]:.3f}")
    if Reference.CENTRALIZED in references:
        parts.append(f"centralized {references[Reference.CENTRALIZED]:.3f}")
    return " · ".join(parts)
