"""Round time and discovery time for 4 to 32 daemons on one machine (tiny model), at a fixed degree.

    python benchmarks/scale.py [--sizes 4,8,16,32] [--degree 3] [--rounds 8]

Each size starts N real ``tadlora run`` daemons on loopback (real gRPC and mDNS, one torch thread
each, tiny model, 2 local steps a round, tad) with ``--edge-prob degree/(N-1)``, so that a peer has
``degree`` links a round on average whatever N. Reported per N, from the daemons' logs and
rounds.jsonl:

- discovery: seconds from a daemon listening to knowing all N-1 others by mDNS (median and max over
  daemons);
- round time: median and p95 of the rounds' wall time (round 0 excluded: it waits for the slowest
  starter), and the median time in the exchange phase alone;
- links per round actually mixed (mean over peers and rounds).

All daemons share the machine's cores, so with N above the core count rounds also get slower
because every daemon trains on a share of a core: the exchange column isolates the network part.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from peer.config import load_config
from peer.testbed import Testbed


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def discovery_seconds(log: Path, others: int) -> float | None:
    """From 'listening on' to the last of the first ``others`` 'found' lines."""
    start, found = None, []
    for line in log.read_text(errors="replace").splitlines():
        if start is None and ": listening on " in line:
            start = _stamp(line)
        elif start is not None and ": found " in line:
            found.append(_stamp(line))
    return found[others - 1] - start if start is not None and len(found) >= others else None


def run_size(n: int, degree: float, rounds: int, out: Path) -> dict:
    cfg = load_config(
        overrides=dict(
            references="none",
            model="tiny-bert",
            consensus_rounds=0,  # per-round figures: every round trains
            task="synthetic",
            peers=n,
            rounds=rounds,
            local_steps=2,
            batch_size=8,
            max_length=32,
            eval_every=10**6,
            eval_samples=32,
            device="cpu",
            topology="er",
            edge_prob=min(1.0, degree / (n - 1)),
            strategy="tad",
        )
    )
    bed = Testbed(cfg, out, dict(discovery_wait=60.0 + n, round_timeout_min=2.0, round_timeout_max=30.0))
    began = time.monotonic()
    bed.run_all(timeout=1800)
    discovery = [d for i in range(n) if (d := discovery_seconds(bed.peer_dir(i) / "daemon.log", n - 1)) is not None]
    records = [r for i in range(n) for r in bed.rounds(i) if r["round"] > 0]
    seconds = [r["seconds"] for r in records]
    return {
        "peers": n,
        "edge_prob": cfg.edge_prob,
        "discovered": len(discovery),
        "discovery_median": statistics.median(discovery) if discovery else float("nan"),
        "discovery_max": max(discovery) if discovery else float("nan"),
        "round_median": statistics.median(seconds),
        "round_p95": float(np.percentile(seconds, 95)),
        "exchange_median": statistics.median(r["exchange_seconds"] for r in records),
        "links": float(np.mean([len(r["neighbours"]) for r in records])),
        "wall": time.monotonic() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,8,16,32")
    parser.add_argument("--degree", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tadlora-scale-"))
    print(
        "| peers | edge p | discovery s (median / max) | round s (median / p95) | exchange s (median) "
        "| links per round | wall s |\n|---|---|---|---|---|---|---|"
    )
    for n in [int(x) for x in args.sizes.split(",")]:
        r = run_size(n, args.degree, args.rounds, out / f"n{n}")
        partial = "" if r["discovered"] == n else f" ({r['discovered']} of {n} found all)"
        print(
            f"| {n} | {r['edge_prob']:.3f} | {r['discovery_median']:.2f} / {r['discovery_max']:.2f}{partial} "
            f"| {r['round_median']:.2f} / {r['round_p95']:.2f} | {r['exchange_median']:.2f} | {r['links']:.2f} "
            f"| {r['wall']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
