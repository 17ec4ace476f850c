"""How the embedded default's learning settings were chosen: a seeded grid on the simulator.

    python benchmarks/defaults_study.py --out benchmarks/results/defaults [--seeds 0,1,2] [--grid head-lr]

The embedded default (4 peers, label skew, ER p = 0.5, MiniLM, movie reviews) at a fixed budget of
``--steps-per-peer`` steps of 16 sentences per peer, so that every row costs the same compute and
the main command with its references fits in about 4 minutes on 2 cores. Rows vary one thing at a
time; each cell is the mean ± standard deviation over the seeds of the peers' mean accuracy on all
1,000 validation sentences, with the network average and the references (each peer alone, one model
on all the data: ``peer.sim.references``) at the same budget and seed.

Grids:
- ``head-lr``: classification head frozen or trained and mixed, learning rate 2e-3 / 5e-3;
- ``mixing``: how often to mix at the same budget (rounds × local steps) and the phase length T;
- ``schedule``: a learning rate that decays linearly to 0, at two starting rates;
- ``batch``: the same samples per peer in batches of 8 or 4 (more sequential steps);
- ``default``: at the chosen default's budget (60 × 2 steps of 8), the phase length T = 5 against
  T = 1 (what ``auto`` picks for 4 peers at p = 0.5), a higher learning rate, and plain LoRA;
- ``rate``: at the same budget, the peers' learning rate with and without a warm-up over the first
  10 % of the steps, and 3 or 10 consensus rounds (mixing only) after training. Its references train
  at 2e-3 whatever the peers' rate (``--reference-learning-rate``; see peer/sim/references.py);
- ``all``: the first four.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grid import mean_spread, references, run

BASE = {"peers": 4, "topology": "er", "edge_prob": 0.5, "strategy": "tad", "eval_samples": 0}


def head_lr_rows(steps: int) -> dict[str, dict]:
    rows = {}
    for head in (0, 1):
        for lr in (2e-3, 5e-3):
            rows[f"head {'trained' if head else 'frozen'}, lr {lr:g}, {steps // 2} x 2, T 5"] = {
                "train_head": head,
                "learning_rate": lr,
                "rounds": steps // 2,
                "local_steps": 2,
                "switch_interval": "5",
            }
    return rows


def mixing_rows(steps: int, head: int, lr: float) -> dict[str, dict]:
    rows = {}
    for local_steps, interval in ((1, 10), (1, 20), (1, 5), (2, 5), (2, 10), (5, 2)):
        rounds = steps // local_steps
        rows[f"{rounds} x {local_steps}, T {interval} ({interval * local_steps} steps a phase)"] = {
            "train_head": head,
            "learning_rate": lr,
            "rounds": rounds,
            "local_steps": local_steps,
            "switch_interval": str(interval),
        }
    for local_steps in (1, 2):
        rows[f"lora {steps // local_steps} x {local_steps}"] = {
            "train_head": head,
            "learning_rate": lr,
            "rounds": steps // local_steps,
            "local_steps": local_steps,
            "strategy": "lora",
        }
    return rows


def schedule_rows(steps: int, head: int) -> dict[str, dict]:
    rows = {}
    for lr in (2e-3, 4e-3):
        for local_steps, interval in ((2, 5), (1, 20)):
            rounds = steps // local_steps
            rows[f"linear decay from {lr:g}, {rounds} x {local_steps}, T {interval}"] = {
                "train_head": head,
                "learning_rate": lr,
                "lr_schedule": "linear",
                "rounds": rounds,
                "local_steps": local_steps,
                "switch_interval": str(interval),
            }
        rows[f"lora, linear decay from {lr:g}, {steps // 2} x 2"] = {
            "train_head": head,
            "learning_rate": lr,
            "lr_schedule": "linear",
            "rounds": steps // 2,
            "local_steps": 2,
            "strategy": "lora",
        }
    return rows


def batch_rows(steps: int, head: int, lr: float) -> dict[str, dict]:
    """The same samples per peer in smaller batches: more sequential steps for every peer (and for the
    centralized reference, which gains less: it is nearer its plateau)."""
    samples = steps * 16
    rows = {}
    for batch, local_steps, interval in ((8, 2, 5), (4, 2, 10), (4, 2, 5), (8, 2, 10)):
        rounds = samples // batch // local_steps
        rows[f"batch {batch}, {rounds} x {local_steps}, T {interval}"] = {
            "train_head": head,
            "learning_rate": lr,
            "batch_size": batch,
            "rounds": rounds,
            "local_steps": local_steps,
            "switch_interval": str(interval),
        }
        rows.setdefault(
            f"lora, batch {batch}, {rounds} x {local_steps}",
            {
                "train_head": head,
                "learning_rate": lr,
                "batch_size": batch,
                "rounds": rounds,
                "local_steps": local_steps,
                "strategy": "lora",
            },
        )
    return rows


def default_rows() -> dict[str, dict]:
    """Around the chosen default (60 rounds × 2 steps of 8, head trained, lr 2e-3, T 5)."""
    base = {"train_head": 1, "batch_size": 8, "rounds": 60, "local_steps": 2}
    return {
        "T 5, lr 2e-3 (the default)": {**base, "learning_rate": 2e-3, "switch_interval": "5"},
        "T 1, lr 2e-3": {**base, "learning_rate": 2e-3, "switch_interval": "1"},
        "T 5, lr 3e-3": {**base, "learning_rate": 3e-3, "switch_interval": "5"},
        "lora, lr 2e-3": {**base, "learning_rate": 2e-3, "strategy": "lora"},
    }


def rate_rows() -> dict[str, dict]:
    """The peers' rate (with the references at 2e-3 throughout), warm-up, and consensus rounds."""
    base = {"train_head": 1, "batch_size": 8, "rounds": 60, "local_steps": 2, "switch_interval": "5"}
    fixed = {"reference_learning_rate": "0.002"}
    return {
        "lr 2e-3 (the previous default)": {**base, **fixed, "learning_rate": 2e-3},
        "lr 2e-3, 10 consensus rounds": {**base, **fixed, "learning_rate": 2e-3, "consensus_rounds": 10},
        "lr 3e-3, warm-up 0.1": {**base, **fixed, "learning_rate": 3e-3, "lr_warmup": 0.1},
        "lr 4e-3": {**base, **fixed, "learning_rate": 4e-3},
        "lr 4e-3, warm-up 0.1": {**base, **fixed, "learning_rate": 4e-3, "lr_warmup": 0.1},
        "lr 4e-3, warm-up 0.1, 3 consensus rounds": {
            **base,
            **fixed,
            "learning_rate": 4e-3,
            "lr_warmup": 0.1,
            "consensus_rounds": 3,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/defaults"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps-per-peer", type=int, default=60)
    parser.add_argument(
        "--grid", default="head-lr", choices=["head-lr", "mixing", "schedule", "batch", "default", "rate", "all"]
    )
    parser.add_argument("--head", type=int, default=1, help="mixing grid: train the head (1) or not (0)")
    parser.add_argument("--learning-rate", type=float, default=5e-3, help="mixing grid: learning rate")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    if args.grid in ("head-lr", "all"):
        rows.update(head_lr_rows(args.steps_per_peer))
    if args.grid in ("mixing", "all"):
        rows.update(mixing_rows(args.steps_per_peer, args.head, args.learning_rate))
    if args.grid in ("schedule", "all"):
        rows.update(schedule_rows(args.steps_per_peer, args.head))
    if args.grid in ("batch", "all"):
        rows.update(batch_rows(args.steps_per_peer, args.head, args.learning_rate))
    if args.grid == "default":
        rows.update(default_rows())
    if args.grid == "rate":
        rows.update(rate_rows())
    table = {}
    for seed in seeds:
        for name, settings in rows.items():
            settings = {**BASE, **settings, "seed": seed, "eval_every": settings["rounds"]}
            slug = "-".join(f"{k}{v}" for k, v in sorted(settings.items()) if k not in BASE and k != "eval_every")
            summary = run(args.out / slug, **settings)
            budget = {
                k: settings.get(k, "constant") for k in ("train_head", "learning_rate", "lr_schedule", "seed", "peers")
            }
            if budget["lr_schedule"] == "constant":
                del budget["lr_schedule"]  # the folder names of the first runs, made before the setting existed
            if settings.get("batch_size", 16) != 16:
                budget["batch_size"] = settings["batch_size"]
            budget.update({k: settings[k] for k in ("reference_learning_rate", "lr_warmup") if k in settings})
            steps_per_peer = settings["rounds"] * settings["local_steps"]
            refs = references(
                args.out / "references" / "-".join(f"{k}{v}" for k, v in sorted(budget.items())),
                **{**BASE, **budget, "rounds": steps_per_peer, "local_steps": 1},
            )
            table.setdefault(name, []).append(
                {"peers": summary["mean_accuracy"], "network_average": summary["network_average"], **refs}
            )
            print(json.dumps({"row": name, "seed": seed, **table[name][-1]}), flush=True)
    print(f"\n{args.steps_per_peer} steps of 16 per peer; mean ± sd over seeds {args.seeds}\n")
    print("| setting | alone | peers | network average | centralized |\n|---|---|---|---|---|")
    for name, cells in table.items():
        column = {k: [c[k] for c in cells] for k in ("alone", "peers", "network_average", "centralized")}
        print(f"| {name} | " + " | ".join(mean_spread(column[k]) for k in column) + " |")
    (args.out / "table.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
