"""What the fault simulator finds in the daemon as it is, and with each defect it was built to find put
back (``peer/faultsim/mutations.py``): violations by kind over the same random schedules.

    python benchmarks/faultsim_before_after.py --schedules 1000 --jobs 2
"""

from __future__ import annotations

import argparse
import contextlib
import time

from peer.faultsim.mutations import DEFECTS
from peer.faultsim.run import run_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    seeds = list(range(args.schedules))
    variants = {"the daemon as it is": contextlib.nullcontext, **DEFECTS}
    print(
        "| daemon | schedules | with violations | violations by kind | auto T: rounds with phases apart "
        "after a split (measured) | seconds |"
    )
    print("|---|---|---|---|---|---|")
    for name, defect in variants.items():
        started = time.monotonic()
        with defect():
            summary = run_many(seeds, args.jobs)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.violations.items())) or "none"
        print(
            f"| {name} | {summary.schedules} | {len(summary.failed)} | {kinds} | "
            f"{summary.measured['phase-after-split']} | {time.monotonic() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
