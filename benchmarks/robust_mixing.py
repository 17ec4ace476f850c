"""One faulty peer against plain and robust mixing: the honest peers' accuracy, side by side.

    python benchmarks/robust_mixing.py --out benchmarks/results/robust

Peer 0 sends, every round, either its factors scaled by ``--scale`` ("scaled") or its factors plus
Gaussian noise of standard deviation ``--noise`` ("noisy"); it trains normally otherwise. The other
peers mix with ``average`` (plain gossip), ``clipped`` or ``trimmed-mean`` (peer/algorithm/robust.py).
Reported: final mean accuracy over the honest peers (peer 0 excluded), per attack and rule, plus an
attack-free reference per rule (what the robust rule costs when nobody misbehaves). Runs in the
simulator, whose mixing code is the daemon's.

Default setting (scaled for 2 CPU cores): tad, 8 peers, Erdős–Rényi p = 0.5, 20 rounds x 4 steps,
batch 8, length 48, MiniLM on movie-reviews; ``--model tiny-bert --task synthetic`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from grid import markdown_table, plot_curves

from peer.config import load_config
from peer.sim import simulate

ATTACKS = ["none", "scaled", "noisy"]
RULES = ["average", "clipped", "trimmed-mean"]


def tamper_for(attack: str, scale: float, noise: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def tamper(index: int, round_: int, factors: dict) -> dict:
        if index != 0 or attack == "none":
            return factors
        if attack == "scaled":
            return {k: v * scale for k, v in factors.items()}
        return {k: v + noise * torch.randn(v.shape, generator=generator).to(v) for k, v in factors.items()}

    return tamper


def honest_accuracy(summary: dict) -> float:
    return float(np.mean([acc for pid, acc in sorted(summary["accuracy"].items())[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/robust"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="movie-reviews")
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help="which to run (a second process can take some of them; the table reads all that exist)",
    )
    args = parser.parse_args()
    common = dict(
        strategy="tad",
        peers=args.peers,
        topology="er",
        edge_prob=0.5,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=8,
        max_length=48,
        learning_rate=5e-3,
        lr_warmup=0.0,  # measured before the warm-up and the consensus rounds became defaults
        consensus_rounds=0,
        eval_every=args.eval_every,
        eval_samples=300,
        seed=args.seed,
        model=args.model,
        task=args.task,
    )
    results, folders = {}, {}
    wanted = args.attacks.split(",")
    for attack in ATTACKS:
        for rule in RULES:
            folder = args.out / f"{attack}-{rule}"
            folders[attack, rule] = folder
            if (folder / "summary.json").exists():
                results[attack, rule] = json.loads((folder / "summary.json").read_text())
                continue
            if attack not in wanted:
                continue
            print(f"running {folder.name}", flush=True)
            cfg = load_config(overrides=dict(common, mixing_rule=rule))
            results[attack, rule] = simulate(
                cfg, out=folder, progress=True, tamper=tamper_for(attack, args.scale, args.noise, args.seed)
            )

    def cell(rule, col):
        result = results.get((col.split(": ")[1], rule))
        return f"{honest_accuracy(result):.4f}" if result else "not run"

    table = markdown_table(RULES, [f"attack: {a}" for a in ATTACKS], cell)
    print(
        f"\nhonest peers' final mean accuracy ({args.model}, {args.peers} peers, peer 0 faulty; "
        f"scaled x{args.scale:g}, noise sd {args.noise:g})\n"
    )
    print(table)
    plot_curves(
        args.out / "accuracy.png",
        {f"attack: {a}": {rule: folders[a, rule] for rule in RULES if (a, rule) in results} for a in ATTACKS},
        "mean accuracy over all peers (faulty one included) against rounds",
    )
    print(f"\nplot: {args.out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
