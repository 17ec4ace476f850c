"""``tadlora simulate``: N virtual peers in one process sharing one base model (one adapter each).

Each round, every peer trains (sequentially, on this process's device), the round's graph comes from
the seeded topology, every peer's outgoing factors are snapshotted, and then every peer mixes with
its neighbours' snapshots using Metropolis–Hastings weights. The per-peer arithmetic is
``peer.core.local_peer.LocalPeer``, the same the daemon runs.

What N peers on one base share, so that they cost little more than one: the base model's weights
(one copy, one adapter per peer), the tokenized data, and the validation batches (collated once,
length-sorted, and scored for every peer, ``Evaluator``).

Outputs under ``--out DIR``:

- ``metrics.jsonl``: one object per round: ``round``, ``phase``, ``edges``, ``train_loss`` (per peer),
  ``consensus_a`` / ``consensus_b`` (mean squared distance of each peer's factor to the peers'
  average, summed over tensors, after mixing), ``seconds``; on evaluation rounds also ``accuracy``
  (per peer), ``mean_accuracy`` and ``network_average`` (the accuracy of the peers' averaged factors);
  for a causal LM also ``perplexity`` (per peer, on the right answers) and ``mean_perplexity``.
- ``generations.jsonl`` (causal LM): on every evaluation round, each peer's and the network average's
  greedy answers to a few fixed validation prompts: ``round``, ``peer``, ``prompt``, ``expected``,
  ``answer``.
- ``summary.json``: ``config``, ``switch_interval`` (resolved), ``mean_accuracy`` (final, over peers),
  ``accuracy`` per peer, ``network_average``, ``references`` (``alone``, ``centralized``: see
  ``peer.sim.references``), ``rounds``, ``seconds``, ``samples_per_second`` (training samples over the
  time spent training).
- ``peers/<peer-id>/adapter/``: each peer's final adapter in PEFT's format.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from peer import strict_json
from peer.algorithm.compression import WireDtype, round_trip
from peer.algorithm.factors import A, B
from peer.algorithm.mixing import consensus_distance, metropolis_hastings_matrix
from peer.config import RunConfig, default_peer_id
from peer.core.local_peer import LocalPeer
from peer.core.run_setup import (
    build_model,
    build_trainer,
    evaluator_for,
    mixing_rule_for,
    precision_for,
    prepare_data,
    strategy_for,
    topology_for,
)
from peer.sim.references import NETWORK_AVERAGE, load_average, parse_references, run_references
from peer.training.causal import CausalEvaluator
from peer.training.trainer import Evaluator

AVERAGE_ADAPTER = "network-average"


def build_peers(cfg: RunConfig, data, strategy) -> list[LocalPeer]:
    """The run's peers on one shared base model, which also carries an adapter for the network average."""
    ids = [default_peer_id(i) for i in range(cfg.peers)]
    model = build_model(cfg, data.task.num_labels, [*ids, AVERAGE_ADAPTER])
    return [
        LocalPeer(
            pid,
            model[pid],
            build_trainer(cfg, model[pid], data.shards[i], i),
            strategy,
            cfg.local_steps,
            mixing_rule_for(cfg),
        )
        for i, pid in enumerate(ids)
    ]


def _mix_round(
    peers: list[LocalPeer],
    round_: int,
    topology,
    tamper: Tamper | None = None,
    wire: WireDtype = WireDtype.FP32,
) -> int:
    """Every peer mixes with the snapshots of its neighbours' outgoing factors; returns the edge count.
    ``tamper(index, round, factors)`` may replace what a peer sends (faulty-peer experiments).
    ``wire``: the form factors travel in; a lossy one is mixed in the difference form, as the daemon
    does (each peer's own ``sent`` is what its neighbours decode)."""
    edges = topology.edges(round_)  # drawn once: the matrix and the count come from the same set
    w = metropolis_hastings_matrix(len(peers), edges)
    sent = [round_trip(p.outgoing(round_), wire) if wire != WireDtype.FP32 else None for p in peers]
    outgoing = [s if s is not None else p.outgoing(round_) for s, p in zip(sent, peers, strict=True)]
    if tamper is not None:
        outgoing = [tamper(i, round_, factors) for i, factors in enumerate(outgoing)]
    for i, p in enumerate(peers):
        neighbours = [j for j in range(len(peers)) if j != i and w[i, j] > 0]
        p.mix(round_, {j: outgoing[j] for j in neighbours}, {j: w[i, j] for j in neighbours}, w[i, i], sent[i])
    return len(edges)


def _consensus(peers: list[LocalPeer]) -> tuple[float, float]:
    return (
        consensus_distance([p.adapter.factors([A]) for p in peers]),
        consensus_distance([p.adapter.factors([B]) for p in peers]),
    )


def _is_eval_round(cfg: RunConfig, round_: int) -> bool:
    return (round_ + 1) % cfg.eval_every == 0 or round_ == cfg.total_rounds - 1


def _evaluate(peers: list[LocalPeer], evaluator: Evaluator | CausalEvaluator) -> dict:
    """Every peer's accuracy, their mean, and the accuracy of their averaged factors (and for a causal
    LM the same of perplexity)."""
    scores = {p.peer_id: evaluator.evaluate(p.adapter) for p in peers}
    average = peers[0].adapter.owner[AVERAGE_ADAPTER]
    load_average(average, [p.adapter for p in peers])
    record = {
        "accuracy": {pid: s["accuracy"] for pid, s in scores.items()},
        "mean_accuracy": float(np.mean([s["accuracy"] for s in scores.values()])),
        NETWORK_AVERAGE: evaluator.accuracy(average),
    }
    if isinstance(evaluator, CausalEvaluator):
        record["perplexity"] = {pid: s["perplexity"] for pid, s in scores.items()}
        record["mean_perplexity"] = float(np.mean([s["perplexity"] for s in scores.values()]))
    return record


def _write_generations(path: Path, round_: int, peers: list[LocalPeer], evaluator: CausalEvaluator) -> None:
    """What the peers (and their average, loaded by ``_evaluate``) answer to the sample prompts."""
    adapters = [(p.peer_id, p.adapter) for p in peers] + [(AVERAGE_ADAPTER, peers[0].adapter.owner[AVERAGE_ADAPTER])]
    with path.open("a") as f:
        for name, adapter in adapters:
            for sample in evaluator.generations(adapter):
                f.write(strict_json.dumps({"round": round_, "peer": name, **sample}) + "\n")


Tamper = Callable[[int, int, dict], dict]


def simulate(
    cfg: RunConfig, out: str | Path | None = None, progress: bool = True, tamper: Tamper | None = None
) -> dict:
    """Run the configured simulation; returns the summary (also written to ``out/summary.json``)."""
    started = time.perf_counter()
    topology = topology_for(cfg)
    strategy = strategy_for(cfg, topology)
    data = prepare_data(cfg)
    peers = build_peers(cfg, data, strategy)
    evaluator = evaluator_for(cfg, data, peers[0].trainer.device)
    out_dir = Path(out) if out is not None else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").write_text("")
        (out_dir / "generations.jsonl").unlink(missing_ok=True)
    scores: dict = {}
    training_s = 0.0
    bar = tqdm(
        range(cfg.total_rounds),
        desc=f"{cfg.strategy} {topology.describe()}",
        unit="round",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for r in bar:
        t0 = time.perf_counter()
        plan = strategy.plan(r)
        losses = {p.peer_id: p.train(r) for p in peers}
        training_s += time.perf_counter() - t0
        edges = _mix_round(peers, r, topology, tamper, WireDtype(cfg.wire_dtype))
        cons_a, cons_b = _consensus(peers)
        record = {
            "round": r,
            "phase": plan.phase,
            "edges": edges,
            "train_loss": losses,
            "consensus_a": cons_a,
            "consensus_b": cons_b,
        }
        if _is_eval_round(cfg, r):
            scores = _evaluate(peers, evaluator)
            record.update(scores)
            if out_dir and isinstance(evaluator, CausalEvaluator):
                _write_generations(out_dir / "generations.jsonl", r, peers, evaluator)
        record["seconds"] = time.perf_counter() - t0
        bar.set_postfix(
            phase=plan.phase,
            loss=f"{np.mean(list(losses.values())):.3f}",
            acc=f"{record.get('mean_accuracy', float('nan')):.3f}",
        )
        if out_dir:
            with (out_dir / "metrics.jsonl").open("a") as f:
                f.write(strict_json.dumps(record) + "\n")
    bar.close()
    references = run_references(cfg, data, parse_references(cfg.references), progress, evaluator)
    summary = {
        "config": cfg.as_dict(),
        "switch_interval": strategy.switch_interval,
        "topology": topology.describe(),
        "precision": str(precision_for(cfg, peers[0].trainer.device)),
        "rounds": cfg.total_rounds,  # every round run, as a daemon counts them
        "consensus_rounds": cfg.consensus_rounds,  # the last of them, which only mixed
        **scores,
        "references": references,
        "seconds": time.perf_counter() - started,
        "samples_per_second": cfg.peers * cfg.rounds * cfg.local_steps * cfg.batch_size / max(training_s, 1e-9),
    }
    if out_dir:
        for p in peers:
            p.adapter.save_pretrained(out_dir / "peers" / p.peer_id / "adapter")
        (out_dir / "summary.json").write_text(strict_json.dumps(summary, indent=2) + "\n")
    return summary
