"""Turning a ``RunConfig`` into the pieces of a run: task, shards, model, strategy, topology.

Shared by every driver, so that the simulator and the daemon build bit-identical peers from the same
configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from peer.algorithm.robust import MixingRule
from peer.algorithm.schedule import auto_switch_interval, interval_for_link_rate
from peer.algorithm.strategies import Strategy, make_strategy
from peer.algorithm.topology import Topology, make_topology
from peer.config import ConfigError, RunConfig
from peer.data.instructions import InstructionTask, load_instruction_task
from peer.data.partition import partition
from peer.data.task_type import TaskType
from peer.data.tasks import TextTask, load_task
from peer.training.adapters import Adapter, AdapterModel, LoraSettings, load_tokenizer, model_path
from peer.training.causal import CausalEvaluator, ScoringSet, encode_instructions, scoring_set
from peer.training.precision import Precision, resolve_precision
from peer.training.tokenizer import Encoded, encode
from peer.training.trainer import Batching, Evaluator, LocalTrainer, LrSchedule


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(name)


def lora_settings(cfg: RunConfig) -> LoraSettings:
    targets = tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())
    return LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=targets)


def topology_for(cfg: RunConfig) -> Topology:
    return make_topology(cfg.topology, cfg.peers, p=cfg.edge_prob, seed=cfg.seed)


def resolve_switch_interval(cfg: RunConfig, topology: Topology) -> int | None:
    """The integer T of the run: as given, from the topology's spectral gap (``auto``), or None
    for the strategy's own default."""
    if cfg.switch_interval == "default":
        return None
    if cfg.switch_interval == "auto":
        if cfg.topology in ("er", "complete"):  # the daemon's proposals use the same rule: they agree
            return interval_for_link_rate(cfg.peers, 1.0 if cfg.topology == "complete" else cfg.edge_prob)
        return auto_switch_interval(topology.contraction())
    return int(cfg.switch_interval)


def strategy_for(cfg: RunConfig, topology: Topology) -> Strategy:
    return make_strategy(
        cfg.strategy,
        resolve_switch_interval(cfg, topology),
        train_head=bool(cfg.train_head),
        training_rounds=cfg.rounds,
    )


def precision_for(cfg: RunConfig, device: torch.device) -> Precision:
    return resolve_precision(cfg.precision, device)


def build_model(cfg: RunConfig, num_labels: int, adapter_names: list[str]) -> AdapterModel:
    """The frozen base with one adapter per name, on the run's device."""
    return AdapterModel(
        cfg.model,
        num_labels,
        adapter_names,
        lora_settings(cfg),
        seed=cfg.seed,
        device=pick_device(cfg.device),
        train_head=bool(cfg.train_head),
        task_type=TaskType(cfg.task_type),
    )


def build_trainer(
    cfg: RunConfig,
    adapter: Adapter,
    shard: Encoded,
    peer_index: int,
    total_steps: int | None = None,
    reference: bool = False,
) -> LocalTrainer:
    """Peer ``peer_index``'s trainer: the same batches, seeds, precision and learning rates in every driver.
    ``total_steps`` (default: the run's rounds x local steps) is where a decaying learning rate reaches 0
    and what the warm-up is a fraction of. A ``reference`` trains at the references' rate, without warm-up."""
    return LocalTrainer(
        adapter,
        shard,
        cfg.batch_size,
        cfg.reference_rate if reference else cfg.learning_rate,
        cfg.seed,
        peer_index,
        precision_for(cfg, adapter.owner.device),
        Batching(cfg.batching),
        LrSchedule(cfg.lr_schedule),
        total_steps or cfg.rounds * cfg.local_steps,
        0.0 if reference else cfg.lr_warmup,
        cfg.local_steps,
    )


@dataclass
class PreparedData:
    task: TextTask | InstructionTask
    shards: list[Encoded]
    validation: Encoded
    scoring: ScoringSet | None = None  # causal LM: the validation set with its prompts and candidates
    tokenizer: object = None


def mixing_rule_for(cfg: RunConfig) -> MixingRule:
    """A fresh rule object per peer (the clipped rule keeps per-peer history)."""
    return MixingRule(cfg.mixing_rule, cfg.clip_multiplier, cfg.trim)


def check_task_and_model(cfg: RunConfig) -> None:
    """What the daemons of a testbed would each do at start, done once before they start: read the task
    (a bad data file is one error, not one per daemon) and, for a causal LM, build the model's cache
    folder (else every daemon of a fresh machine de-quantizes SmolLM2 at the same time)."""
    if cfg.task_type == TaskType.CAUSAL_LM:
        load_instruction_task(cfg.task, cfg.category_column)
        model_path(cfg.model, TaskType.CAUSAL_LM)
    else:
        load_task(cfg.task)


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Load the task, split it across ``cfg.peers`` peers and tokenize each shard and the validation set."""
    if cfg.task_type == TaskType.CAUSAL_LM:
        return _prepare_instructions(cfg)
    task = load_task(cfg.task)
    tokenizer = load_tokenizer(cfg.model)
    parts = _partition(cfg, task.train_labels)
    train = encode(tokenizer, task.train_texts, task.train_pairs, task.train_labels, cfg.max_length)
    val_idx = _validation_indices(cfg, len(task.val_texts))
    validation = encode(
        tokenizer,
        [task.val_texts[i] for i in val_idx],
        [task.val_pairs[i] for i in val_idx] if task.val_pairs else None,
        task.val_labels[val_idx],
        cfg.max_length,
    )
    return PreparedData(task, [train.subset(p) for p in parts], validation, tokenizer=tokenizer)


def _partition(cfg: RunConfig, labels: np.ndarray) -> list[np.ndarray]:
    return partition(
        labels,
        cfg.peers,
        cfg.partition,
        seed=cfg.seed,
        alpha=cfg.dirichlet_alpha,
        samples_per_peer=cfg.samples_per_peer or None,
    )


def _validation_indices(cfg: RunConfig, n_val: int) -> np.ndarray:
    return np.arange(n_val)[: cfg.eval_samples] if cfg.eval_samples else np.arange(n_val)


def _prepare_instructions(cfg: RunConfig) -> PreparedData:
    """The causal-LM counterpart: instructions split by their category, tokenized with answer masks.
    Only the shards' examples are tokenized (the whole training set of a hub dataset may be large)."""
    task = load_instruction_task(cfg.task, cfg.category_column)
    tokenizer = load_tokenizer(cfg.model, TaskType.CAUSAL_LM)
    try:
        parts = _partition(cfg, task.train_labels)
    except ValueError as exc:  # label skew over a single category, say: name the column
        raise ConfigError(f"partition: {exc} (categories from the column {cfg.category_column!r})") from None
    shards = [encode_instructions(tokenizer, [task.train[i] for i in part], cfg.max_length) for part in parts]
    val = [task.val[i] for i in _validation_indices(cfg, len(task.val))]
    scoring = scoring_set(tokenizer, val, task.candidates, cfg.max_length)
    return PreparedData(task, shards, scoring.data, scoring, tokenizer)


def evaluator_for(cfg: RunConfig, data: PreparedData, device: torch.device) -> Evaluator | CausalEvaluator:
    """What scores a model of the run on its validation set: accuracy, and for a causal LM perplexity."""
    if data.scoring is not None:
        return CausalEvaluator(data.scoring, data.tokenizer, device, precision_for(cfg, device))
    return Evaluator(data.validation, device, precision_for(cfg, device))
