"""The paper's main comparison, scaled to 2 CPU cores: lora, ffa, rolora and tad with 10 peers on a
time-varying Erdős–Rényi graph with edge probability p ∈ {0.5, 0.1, 0.02}.

    python benchmarks/paper_table.py --out benchmarks/results/paper

Prints a method × p table of the final mean accuracy over peers and writes ``accuracy.png``
(accuracy against rounds, one panel per p). Settings that differ from the paper are flags, with
defaults chosen to finish in about an hour on 2 cores; ``benchmarks/README.md`` lists them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import markdown_table, plot_curves, run

METHODS = ["lora", "ffa", "rolora", "tad"]
EDGE_PROBS = [0.5, 0.1, 0.02]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paper"))
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    common = dict(
        peers=args.peers,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        seed=args.seed,
        topology="er",
    )
    results, folders = {}, {}
    for p in EDGE_PROBS:
        for method in methods:
            folder = args.out / f"{method}-p{p:g}"
            results[method, p] = run(folder, strategy=method, edge_prob=p, **common)
            folders[method, p] = folder
    cols = [f"p = {p:g}" for p in EDGE_PROBS]
    print(markdown_table(methods, cols, lambda m, c: f"{results[m, float(c.split('= ')[1])]['mean_accuracy']:.4f}"))
    plot_curves(
        args.out / "accuracy.png",
        {f"ER p = {p:g}": {m: folders[m, p] for m in methods} for p in EDGE_PROBS},
        f"{args.peers} peers, MiniLM-L6 + LoRA r=8, movie reviews, label skew",
    )
    print(f"plot: {args.out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
