"""Section 9's table 1 again, as if its runs had ended with consensus rounds: from the saved adapters.

    python benchmarks/claims_consensus.py --out benchmarks/results/claims [--seeds 0,1,2] [--rounds 5]

A consensus round trains nothing (``--consensus-rounds``), so a run with K of them is the saved run
followed by K rounds of mixing on the same graphs. This loads each run's final adapters (``peers/*/
adapter``, kept on the machine that ran ``paper_claims.py``), mixes them for K rounds exactly as the
simulator would (rounds ``rounds`` to ``rounds + K - 1`` of the run's seeded topology, with the
strategy's own mixing: fedsa still keeps B local, ffa mixes B only), and scores every peer. The first
run of each seed is also scored before mixing, which must reproduce its recorded accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from grid import mean_spread
from paper_claims import EDGE_PROBS, METHODS, folder_of
from safetensors.torch import load_file

from peer.config import load_config
from peer.core.run_setup import evaluator_for, prepare_data, strategy_for, topology_for
from peer.sim.references import EXPORT_FILE
from peer.sim.simulator import _mix_round, build_peers


def after_consensus(folder: Path, rounds: int, data_cache: dict, check: bool) -> tuple[float, float]:
    """(recorded mean accuracy, mean accuracy after ``rounds`` consensus rounds) of one saved run."""
    summary = json.loads((folder / "summary.json").read_text())
    cfg = load_config(overrides={**summary["config"], "consensus_rounds": rounds})
    seed = cfg.seed
    if seed not in data_cache:
        data_cache.clear()
        data_cache[seed] = prepare_data(cfg)
    data = data_cache[seed]
    topology = topology_for(cfg)
    peers = build_peers(cfg, data, strategy_for(cfg, topology))
    for p in peers:
        p.adapter.load_state(load_file(str(folder / "peers" / p.peer_id / "adapter" / EXPORT_FILE)))
    evaluator = evaluator_for(cfg, data, peers[0].trainer.device)
    if check:
        before = float(np.mean([evaluator.accuracy(p.adapter) for p in peers]))
        assert abs(before - summary["mean_accuracy"]) < 1e-9, (folder, before, summary["mean_accuracy"])
    for r in range(cfg.rounds, cfg.total_rounds):
        _mix_round(peers, r, topology)
    return summary["mean_accuracy"], float(np.mean([evaluator.accuracy(p.adapter) for p in peers]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/claims"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=5, help="consensus rounds")
    args = parser.parse_args()
    results_path = args.out / f"consensus{args.rounds}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    cache: dict = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for n, (m, p) in enumerate((m, p) for p in EDGE_PROBS for m in METHODS):
            key = f"seed{seed}/{m}/p{p:g}"
            if key in results:
                continue
            folder = folder_of(args.out, seed, {"strategy": m, "edge_prob": p})
            recorded, after = after_consensus(folder, args.rounds, cache, check=n == 0)
            results[key] = {"recorded": recorded, "after": after}
            print(json.dumps({key: results[key]}), file=sys.stderr, flush=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nthe peers' own models, as recorded | after {args.rounds} consensus rounds\n")
    print("| method | " + " | ".join(f"p = {p:g}" for p in EDGE_PROBS) + " |\n|---" + "|---" * len(EDGE_PROBS) + "|")
    for m in METHODS:
        cells = []
        for p in EDGE_PROBS:
            runs = [v for k, v in results.items() if k.endswith(f"/{m}/p{p:g}")]
            cells.append(f"{mean_spread([r['recorded'] for r in runs])} → {mean_spread([r['after'] for r in runs])}")
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
