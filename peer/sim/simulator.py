"""``tadlora simulate``: N virtual peers in one process sharing one base model (one adapter each).

Each round, every peer trains (sequentially, on this process's device), the round's graph comes from
the seeded topology, every peer's outgoing factors are snapshotted, and then every peer mixes with
its neighbours' snapshots using Metropolis–Hastings weights. The per-peer arithmetic is
``peer.local_peer.LocalPeer``, the same the daemon runs.

Outputs under ``--out DIR``:

- ``metrics.jsonl``: one object per round: ``round``, ``phase``, ``edges``, ``train_loss`` (per peer),
  ``consensus_a`` / ``consensus_b`` (mean squared distance of each peer's factor to the peers'
  average, summed over tensors, after mixing), ``seconds``; on evaluation rounds also ``accuracy``
  (per peer) and ``mean_accuracy``.
- ``summary.json``: ``config``, ``switch_interval`` (resolved), ``mean_accuracy`` (final, over peers),
  ``accuracy`` per peer, ``rounds``, ``seconds``.
- ``peers/<peer-id>/adapter/``: each peer's final adapter in PEFT's format.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from peer.algorithm.factors import A, B
from peer.algorithm.mixing import consensus_distance, metropolis_hastings_matrix
from peer.config import RunConfig
from peer.local_peer import LocalPeer
from peer.run_setup import (lora_settings, mixing_rule_for, peer_id, pick_device, prepare_data, strategy_for,
                             topology_for)
from peer.training.adapters import AdapterModel
from peer.training.trainer import LocalTrainer


def build_peers(cfg: RunConfig, data, strategy) -> list[LocalPeer]:
    ids = [peer_id(i) for i in range(cfg.peers)]
    model = AdapterModel(cfg.model, data.task.num_labels, ids, lora_settings(cfg), seed=cfg.seed,
                         device=pick_device(cfg.device))
    return [LocalPeer(pid, model[pid],
                      LocalTrainer(model[pid], data.shards[i], cfg.batch_size, cfg.learning_rate, cfg.seed, i),
                      strategy, cfg.local_steps, mixing_rule_for(cfg))
            for i, pid in enumerate(ids)]


def _mix_round(peers: list[LocalPeer], round_: int, topology, tamper: Tamper | None = None) -> int:
    """Every peer mixes with the snapshots of its neighbours' outgoing factors; returns the edge count.
    ``tamper(index, round, factors)`` may replace what a peer sends (faulty-peer experiments)."""
    edges = topology.edges(round_)  # drawn once: the matrix and the count come from the same set
    w = metropolis_hastings_matrix(len(peers), edges)
    outgoing = [p.outgoing(round_) for p in peers]
    if tamper is not None:
        outgoing = [tamper(i, round_, factors) for i, factors in enumerate(outgoing)]
    for i, p in enumerate(peers):
        neighbours = [j for j in range(len(peers)) if j != i and w[i, j] > 0]
        p.mix(round_, {j: outgoing[j] for j in neighbours}, {j: w[i, j] for j in neighbours}, w[i, i])
    return len(edges)


def _consensus(peers: list[LocalPeer]) -> tuple[float, float]:
    return (consensus_distance([p.adapter.factors([A]) for p in peers]),
            consensus_distance([p.adapter.factors([B]) for p in peers]))


def _is_eval_round(cfg: RunConfig, round_: int) -> bool:
    return (round_ + 1) % cfg.eval_every == 0 or round_ == cfg.rounds - 1


Tamper = Callable[[int, int, dict], dict]


def simulate(cfg: RunConfig, out: str | Path | None = None, progress: bool = True,
             tamper: Tamper | None = None) -> dict:
    """Run the configured simulation; returns the summary (also written to ``out/summary.json``)."""
    started = time.perf_counter()
    topology = topology_for(cfg)
    strategy = strategy_for(cfg, topology)
    data = prepare_data(cfg)
    peers = build_peers(cfg, data, strategy)
    out_dir = Path(out) if out is not None else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").write_text("")
    accuracy: dict[str, float] = {}
    bar = tqdm(range(cfg.rounds), desc=f"{cfg.strategy} {topology.describe()}", unit="round",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for r in bar:
        t0 = time.perf_counter()
        plan = strategy.plan(r)
        losses = {p.peer_id: p.train(r) for p in peers}
        edges = _mix_round(peers, r, topology, tamper)
        cons_a, cons_b = _consensus(peers)
        record = {"round": r, "phase": plan.phase, "edges": edges, "train_loss": losses,
                  "consensus_a": cons_a, "consensus_b": cons_b}
        if _is_eval_round(cfg, r):
            accuracy = {p.peer_id: p.trainer.evaluate(data.validation) for p in peers}
            record["accuracy"] = accuracy
            record["mean_accuracy"] = float(np.mean(list(accuracy.values())))
        record["seconds"] = time.perf_counter() - t0
        bar.set_postfix(phase=plan.phase, loss=f"{np.mean(list(losses.values())):.3f}",
                        acc=f"{record.get('mean_accuracy', float('nan')):.3f}")
        if out_dir:
            with (out_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
    summary = {
        "config": cfg.as_dict(),
        "switch_interval": strategy.switch_interval,
        "topology": topology.describe(),
        "rounds": cfg.rounds,
        "accuracy": accuracy,
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "seconds": time.perf_counter() - started,
    }
    if out_dir:
        for p in peers:
            p.adapter.save_pretrained(out_dir / "peers" / p.peer_id / "adapter")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
