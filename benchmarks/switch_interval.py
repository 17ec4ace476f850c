"""``--switch-interval auto`` against fixed T ∈ {1, 2, 5, 10} for tad on sparse graphs.

    python benchmarks/switch_interval.py --out benchmarks/results/switch

Same scaled setting as ``paper_table.py`` (10 peers, Erdős–Rényi p ∈ {0.02, 0.1}); prints the final
mean accuracy per T and the T that ``auto`` chose from the topology's spectral gap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grid import markdown_table, plot_curves, run

from peer.algorithm import auto_switch_interval, make_topology

INTERVALS = ["1", "2", "5", "10", "auto"]
EDGE_PROBS = "0.02,0.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/switch"))
    parser.add_argument(
        "--reuse",
        type=Path,
        default=Path("benchmarks/results/paper"),
        help="folder of paper_table.py's runs: its tad T=5 runs are reused, not repeated",
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--edge-probs", default=EDGE_PROBS, help="comma-separated edge probabilities")
    parser.add_argument("--report-only", action="store_true", help="tabulate the runs that exist; run nothing")
    args = parser.parse_args()
    edge_probs = [float(p) for p in args.edge_probs.split(",")]
    common = dict(
        strategy="tad",
        peers=10,
        topology="er",
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=8,
        max_length=48,
        learning_rate=5e-3,
        eval_every=10,
        eval_samples=400,
        seed=args.seed,
    )
    results, folders = {}, {}
    for p in edge_probs:
        auto_t = str(auto_switch_interval(make_topology("er", 10, p=p, seed=args.seed).contraction()))
        for t in INTERVALS:
            fixed = auto_t if t == "auto" else t  # auto picks one of the fixed T: the same run, not run twice
            folders[t, p] = (args.reuse / f"tad-p{p:g}" if fixed == "5" else args.out / f"T{fixed}-p{p:g}"), fixed
    # the most telling runs first (auto, the extremes), so that an interrupted run has them
    for t in ["auto", "1", "10", "2", "5"]:
        for p in edge_probs:
            folder, fixed = folders[t, p]
            if args.report_only:
                if (folder / "summary.json").exists():
                    results[t, p] = json.loads((folder / "summary.json").read_text())
                continue
            results[t, p] = run(folder, switch_interval=fixed, edge_prob=p, **common)
    folders = {k: v[0] for k, v in folders.items()}
    cols = [f"p = {p:g}" for p in edge_probs]

    def cell(t, col):
        r = results.get((t, float(col.split("= ")[1])))
        if r is None:
            return "not run"
        return f"{r['mean_accuracy']:.4f}" + (f" (chose T={r['switch_interval']})" if t == "auto" else "")

    print(
        markdown_table(
            [f"T = {t}" if t != "auto" else "auto" for t in INTERVALS],
            cols,
            lambda row, col: cell(row.replace("T = ", ""), col),
        )
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(
        args.out / "accuracy.png",
        {f"ER p = {p:g}": {f"T={t}": folders[t, p] for t in INTERVALS if (t, p) in results} for p in edge_probs},
        "tad: switching interval",
    )
    print(f"plot: {args.out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
