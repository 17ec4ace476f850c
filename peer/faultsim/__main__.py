"""``python -m peer.faultsim --schedules N`` runs N random fault schedules and checks every invariant;
``--seed S`` replays one schedule and prints it; ``--transport grpc`` runs them over real gRPC on
loopback (real time: about 10 s a schedule)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from peer.faultsim.run import run_many, run_schedule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peer.faultsim", description=__doc__)
    parser.add_argument("--schedules", type=int, default=200, help="random schedules to run (default 200)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first schedule")
    parser.add_argument("--seed", type=int, default=None, help="replay this one schedule and describe it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--transport", choices=("memory", "grpc"), default="memory")
    args = parser.parse_args(argv)
    if args.seed is not None:
        result = run_schedule(args.seed, transport=args.transport)
        print(result.schedule.describe())
        print(f"faults injected: {dict(result.injected)}; crashes: {dict(result.crashes)}")
        for violation in result.violations:
            print(f"  {violation}" + ("" if violation.counts else " (measured, not a violation)"))
        print("no violation" if result.ok else f"{len(result.violations)} violations")
        return 0 if result.ok else 1
    started = time.monotonic()
    summary = run_many(list(range(args.first_seed, args.first_seed + args.schedules)), args.jobs, args.transport)
    for seed, violations in sorted(summary.failed.items()):
        print(f"seed {seed}: replay with python -m peer.faultsim --seed {seed}")
        for shown in violations[:10]:
            print(f"  {shown}")
    print(
        f"{summary.schedules} schedules ({args.transport}) in {time.monotonic() - started:.1f} s: "
        f"{len(summary.failed)} with violations {dict(summary.violations) or ''}"
    )
    print(f"faults injected: {dict(sorted(summary.injected.items()))}")
    print(
        f"crashes: {dict(summary.crashes)}; partitions: {summary.partitions}; "
        f"schedules with switch-interval auto: {summary.auto_schedules}"
    )
    print(
        f"auto: rounds with phases apart after a decision that could not be shared: "
        f"{summary.measured['phase-after-split']}"
    )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
