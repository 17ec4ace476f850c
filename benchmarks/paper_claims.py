"""The paper's claims with seeds: method × edge probability, and ``--switch-interval auto`` against fixed T.

    python benchmarks/paper_claims.py --out benchmarks/results/claims [--seeds 0,1,2] [--report-only]

Table 1 (the paper's main comparison): lora, ffa, rolora, fedsa and tad (T = 5) with 10 peers on a
time-varying Erdős–Rényi graph, p ∈ {0.5, 0.1, 0.02}. Table 2: tad with T ∈ {1, 2, 5, 10} and
``auto`` on the two sparse graphs (``auto`` picks T from the expected graph's spectral gap: a run
with the same T is the same run and is not repeated). Every cell is the mean ± standard deviation
over the seeds of the peers' mean accuracy, beside the references of the same seed and budget (each
peer alone, one model on all the data), which do not depend on the method or the graph.

Settings that are scaled from the paper are flags (``benchmarks/README.md`` lists them). Runs are
ordered seed by seed, so an interrupted benchmark leaves whole seeds; every run resumes from its
folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from grid import mean_spread, references, run

from peer.algorithm.schedule import interval_for_link_rate

METHODS = ["lora", "ffa", "rolora", "fedsa", "tad"]
EDGE_PROBS = [0.5, 0.1, 0.02]
SPARSE = [0.1, 0.02]
INTERVALS = ["1", "2", "5", "10", "auto"]
PEERS = 10


def settings_from(args) -> dict:
    return dict(
        peers=PEERS,
        topology="er",
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        train_head=args.train_head,
        eval_every=args.rounds,
        eval_samples=args.eval_samples,
    )


def cells(seed: int, tables: str = "methods,intervals") -> list[tuple[str, str, float, dict]]:
    """(table, row, p, run settings) of one seed, table 1 first."""
    out = [("methods", m, p, {"strategy": m, "edge_prob": p}) for p in EDGE_PROBS for m in METHODS]
    if "intervals" not in tables:
        return out if "methods" in tables else []
    if "methods" not in tables:
        out = []
    for p in SPARSE:
        auto = str(interval_for_link_rate(PEERS, p))
        for t in INTERVALS:
            fixed = auto if t == "auto" else t
            out.append(("intervals", t, p, {"strategy": "tad", "edge_prob": p, "switch_interval": fixed}))
    return out


def folder_of(root: Path, seed: int, settings: dict) -> Path:
    interval = settings.get("switch_interval", "default")
    interval = "5" if interval == "default" and settings["strategy"] == "tad" else interval
    return root / f"seed{seed}" / f"{settings['strategy']}-T{interval}-p{settings['edge_prob']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/claims"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--train-head", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=300)
    parser.add_argument("--report-only", action="store_true", help="tabulate the runs that exist; run nothing")
    parser.add_argument("--tables", default="methods,intervals", help="methods (table 1), intervals (table 2) or both")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 lets two processes (one seed each) share 2 cores",
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    common = settings_from(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    found: dict[tuple[str, str, float], list[float]] = {}
    averaged: dict[tuple[str, str, float], list[float]] = {}  # the network average's accuracy
    chosen: dict[float, str] = {}
    refs: dict[str, list[float]] = {"alone": [], "centralized": []}
    for seed in seeds:
        ref_dir = args.out / f"seed{seed}" / "references"
        if not args.report_only or (ref_dir / "references.json").exists():
            for name, value in references(ref_dir, **common, seed=seed, strategy="lora").items():
                refs[name].append(value)
        for table, row, p, settings in cells(seed, args.tables):
            folder = folder_of(args.out, seed, settings)
            if args.report_only and not (folder / "summary.json").exists():
                continue
            summary = run(folder, **common, **settings, seed=seed)
            found.setdefault((table, row, p), []).append(summary["mean_accuracy"])
            averaged.setdefault((table, row, p), []).append(summary["network_average"])
            if row == "auto":
                chosen[p] = str(summary["switch_interval"])
    print(
        f"\n10 peers, seeds {args.seeds}; {args.rounds} rounds x {args.local_steps} steps of {args.batch_size}; "
        f"lr {args.learning_rate:g}; head {'trained and mixed' if args.train_head else 'frozen'}"
    )
    print(
        f"references (same budget and seeds): alone {mean_spread(refs['alone'])}, "
        f"centralized {mean_spread(refs['centralized'])}\n"
    )
    for title, values in (
        ("the peers' own models (mean over peers)", found),
        ("the network average (the peers' factors averaged, one model)", averaged),
    ):
        print(f"\n{title}\n")
        print(
            "| method | "
            + " | ".join(f"p = {p:g}" for p in EDGE_PROBS)
            + " |\n|---" * 1
            + "|---" * len(EDGE_PROBS)
            + "|"
        )
        for m in METHODS:
            print(f"| {m} | " + " | ".join(mean_spread(values.get(("methods", m, p), [])) for p in EDGE_PROBS) + " |")
        print("\n| T | " + " | ".join(f"p = {p:g}" for p in SPARSE) + " |\n|---" + "|---" * len(SPARSE) + "|")
        for t in INTERVALS:
            label = "auto" if t == "auto" else f"T = {t}"
            print(
                f"| {label} | "
                + " | ".join(
                    mean_spread(values.get(("intervals", t, p), []))
                    + (f" (T = {chosen[p]})" if t == "auto" and p in chosen else "")
                    for p in SPARSE
                )
                + " |"
            )
    table = {f"{t}|{r}|{p:g}": v for (t, r, p), v in found.items()}
    network = {f"{t}|{r}|{p:g}": v for (t, r, p), v in averaged.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(
        json.dumps({"cells": table, "network_average": network, "references": refs, "settings": common}, indent=2)
        + "\n"
    )
    spreads = [statistics.stdev(v) for v in found.values() if len(v) > 1]
    if spreads:
        print(f"\nmedian spread of a cell over seeds: {statistics.median(spreads):.3f}")


if __name__ == "__main__":
    main()
