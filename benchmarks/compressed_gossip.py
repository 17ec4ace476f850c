"""What compressing the gossip costs in accuracy and saves in bytes: tad with factors sent as fp32, bf16
or int8 (mixed in the difference form, which keeps the network-wide sums exact), seed-averaged.

    python benchmarks/compressed_gossip.py [--seeds 0,1,2] [--wires fp32,bf16,int8] [--edge-prob 0.5]

Every run is the embedded default of ``tadlora simulate`` (4 peers, MiniLM + LoRA r=8, movie reviews,
label skew, 60 rounds of 2 steps) with only ``--wire-dtype`` and the seed changed. Prints, per wire
form, the peers' final mean accuracy and the network average (mean ± standard deviation over seeds),
the bytes of one round's message and their ratio to fp32. A difference in accuracy smaller than the
spread over seeds is no difference.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from grid import markdown_table, mean_spread, run

from peer.config import load_config
from peer.core.run_setup import build_model
from peer.transport.codec import encode_factors


def message_bytes(wire: str) -> int:
    """The payload of one round's message of the default adapter: one factor (A or B) in ``wire`` form."""
    cfg = load_config(overrides={"references": "none"})
    adapter = build_model(cfg, 2, ["probe"])["probe"]
    return len(encode_factors(adapter.factors(frozenset({"A"})), wire))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compressed"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--wires", default="fp32,bf16,int8")
    parser.add_argument("--edge-prob", type=float, default=0.5)
    args = parser.parse_args()
    seeds, wires = [int(s) for s in args.seeds.split(",")], args.wires.split(",")
    results: dict[tuple[str, int], dict] = {}
    for seed in seeds:  # seed-major: an interrupted study has every wire form of its first seeds
        for wire in wires:
            folder = args.out / f"{wire}-p{args.edge_prob:g}-seed{seed}"
            results[wire, seed] = run(
                folder, wire_dtype=wire, seed=seed, edge_prob=args.edge_prob, eval_every=1000, eval_samples=0
            )
    sizes = {wire: message_bytes(wire) for wire in wires}

    def cell(wire: str, column: str) -> str:
        if column == "bytes per message":
            return f"{sizes[wire]:,}"
        if column == "ratio to fp32":
            return f"{sizes[wire] / sizes.get('fp32', sizes[wire]):.3f}"
        key = "mean_accuracy" if column == "peers' mean accuracy" else "network_average"
        return mean_spread([results[wire, s][key] for s in seeds])

    columns = ["peers' mean accuracy", "network average", "bytes per message", "ratio to fp32"]
    print(f"tad, ER p = {args.edge_prob:g}, seeds {args.seeds}; mean ± sd over seeds")
    print(markdown_table(wires, columns, cell))
    fp32 = [results["fp32", s]["mean_accuracy"] for s in seeds] if "fp32" in wires else []
    for wire in wires:
        if wire != "fp32" and len(fp32) > 1:
            diffs = [results[wire, s]["mean_accuracy"] - f for s, f in zip(seeds, fp32, strict=True)]
            print(f"{wire} − fp32, paired by seed: {statistics.mean(diffs):+.4f} (sd {statistics.stdev(diffs):.4f})")


if __name__ == "__main__":
    main()
