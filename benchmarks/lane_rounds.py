"""A daemon's round with a large adapter: its payloads in chunks on the gRPC stream against on the
payload lane, among N ``tadlora run`` daemons on loopback.

    python benchmarks/lane_rounds.py [--peers 4] [--rounds 10] [--lora-r 256] [--runs 2]

The daemons train MiniLM-L6 with a LoRA adapter of rank ``--lora-r`` (r = 256 on the query and value
projections: 9.4 MB a message, both factors, as strategy lora sends them), on a complete graph; one
round trains one step, then ``--rounds`` consensus rounds only exchange and mix, as in
``flower_compare.py``'s like-for-like runs. Each run starts the daemons once with ``--lane 0``
(every payload in chunks) and once with ``--lane 1`` (payloads of 4 MiB and more on the lane, the
default), alternating; per run it prints the median round time beyond training (exchange,
validation, mixing, the round's files) from the third round on, and the ratio chunks / lane.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from enum import StrEnum
from pathlib import Path

from flower_compare import exchange_config

from peer.testbed import Testbed


class Payloads(StrEnum):
    CHUNKS = "chunks"  # --lane 0
    LANE = "lane"  # --lane 1


def round_time(peers: int, rounds: int, lora_r: int, payloads: Payloads, folder: Path) -> tuple[float, float]:
    """Median seconds beyond training of the rounds that train nothing, and the payload of a message."""
    cfg = exchange_config(peers, rounds, training=False, lora_r=lora_r)
    lane = 1 if payloads == Payloads.LANE else 0
    bed = Testbed(cfg, folder, dict(discovery_wait=60.0, round_timeout_max=60.0, lane=lane))
    bed.run_all(timeout=1800)
    skip = 2  # the first round waits for start-up, the second for the neighbours that still train
    records = [r for i in range(peers) for r in bed.rounds(i)[skip:]]
    message = next(r["bytes_sent"] / len(r["neighbours"]) for r in bed.rounds(0) if r["neighbours"])
    return statistics.median(r["seconds"] - r["train_seconds"] for r in records), message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lora-r", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tadlora-lane-rounds-"))
    print("| run | message (MB) | chunks: round beyond training (median s) | lane (median s) | chunks / lane |")
    print("|---|---|---|---|---|")
    for run in range(args.runs):
        seconds = {}
        for payloads in Payloads:
            seconds[payloads], message = round_time(
                args.peers, args.rounds, args.lora_r, payloads, folder / f"{run}-{payloads}"
            )
        chunks, lane = seconds[Payloads.CHUNKS], seconds[Payloads.LANE]
        print(f"| {run + 1} | {message / 1e6:.1f} | {chunks:.3f} | {lane:.3f} | {chunks / lane:.2f} |", flush=True)


if __name__ == "__main__":
    main()
