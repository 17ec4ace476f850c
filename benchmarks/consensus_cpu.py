"""CPU per consensus round of 4 daemons, this checkout against another, in alternating runs.

    sudo python benchmarks/consensus_cpu.py --other /path/to/another/checkout [--rounds 400] [--pairs 3]

Each run starts 4 ``tadlora run`` daemons in a loopback-only namespace (``flower_compare.py``'s
setting at equal bytes: MiniLM r = 8, strategy lora, a random graph of edge probability 2/3, one
round that trains, then ``--rounds`` rounds that train nothing) and reads, every half second, each
daemon's CPU seconds (user and system, all its threads) from ``/proc`` and peer 0's round from its
``rounds.jsonl``. CPU per round is the difference between the first reading after round
``WARM_ROUNDS`` and the last before the final ``COOL_ROUNDS``, divided by the rounds between: the
steady state alone, without start-up, discovery or shutdown (``flower_compare.py --cpu`` differences
two whole runs instead, whose start-ups differed by more than 180 rounds' worth on this VM). Each side
runs from its own folder (``PYTHONPATH``), the other side first in each pair. Prints each run and the
ratio of the medians, this checkout over the other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM_ROUNDS = 20  # discovery, the training round and the deadline's first estimates are over by then
COOL_ROUNDS = 10  # peers finish one after another: the last rounds wait for the slowest
SAMPLE_EVERY_S = 0.5
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: str) -> float:
    """User and system seconds of a process, all its threads (``/proc/PID/stat``, fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def daemons() -> list[str]:
    found = subprocess.run(["pgrep", "-f", "peer.cli run --peer-index"], capture_output=True, text=True)
    return found.stdout.split()


def one_run(rounds: int) -> dict:
    """This interpreter's checkout (the caller sets PYTHONPATH): 4 daemons, CPU per steady round."""
    sys.path.insert(0, str(HERE))
    from flower_compare import Loopback, NamespacedTestbed, exchange_config

    folder = Path(tempfile.mkdtemp(prefix="consensus-cpu-"))
    readings: list[tuple[float, int, dict[str, float]]] = []
    done = threading.Event()

    def watch() -> None:
        log = folder / "peer-00" / "rounds.jsonl"
        while not done.is_set():
            reached = len(log.read_text().splitlines()) if log.exists() else 0
            cpu = {}
            for pid in daemons():
                with contextlib.suppress(OSError):  # it ended between pgrep and the read
                    cpu[pid] = cpu_seconds(pid)
            readings.append((time.monotonic(), reached, cpu))
            time.sleep(SAMPLE_EVERY_S)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    config = exchange_config(4, rounds, training=False, equal_bytes=True)
    with Loopback() as namespace:
        bed = NamespacedTestbed(config, folder, {"discovery_wait": 60.0, "round_timeout_max": 30.0}, ns=namespace)
        bed.run_all(timeout=1200)
    done.set()
    watcher.join()
    steady = [r for r in readings if WARM_ROUNDS < r[1] < rounds - COOL_ROUNDS and len(r[2]) == 4]
    first, last = steady[0], steady[-1]
    between = last[1] - first[1]
    per_daemon = sorted((last[2][pid] - first[2][pid]) / between for pid in first[2] if pid in last[2])
    return {
        "rounds": between,
        "wall_ms": (last[0] - first[0]) / between * 1e3,
        "cpu_ms_per_daemon": [round(x * 1e3, 2) for x in per_daemon],
        "cpu_ms": sum(per_daemon) * 1e3,
    }


def run_in(checkout: Path, rounds: int) -> dict:
    """One run with ``checkout``'s package, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    script = checkout / "benchmarks" / Path(__file__).name
    if not script.exists():  # an older checkout: run this script against its package
        script = Path(__file__).resolve()
    code = f"import json, runpy; m = runpy.run_path({str(script)!r}); print(json.dumps(m['one_run']({rounds})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: the run failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="another checkout of tadlora to compare against")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    this = HERE.parent
    results: dict[str, list[float]] = {"other": [], "this": []}
    print("| pair | side | rounds | wall per round (ms) | CPU per round per daemon (ms) | all four (ms) |")
    print("|---|---|---|---|---|---|")
    for pair in range(1, args.pairs + 1):
        for side, checkout in (("other", args.other), ("this", this)):
            run = run_in(checkout.resolve(), args.rounds)
            results[side].append(run["cpu_ms"])
            wall, total = f"{run['wall_ms']:.1f}", f"{run['cpu_ms']:.1f}"
            cells = (pair, side, run["rounds"], wall, run["cpu_ms_per_daemon"], total)
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    this_median, other_median = statistics.median(results["this"]), statistics.median(results["other"])
    ratios = [t / o for t, o in zip(results["this"], results["other"], strict=True)]
    print(
        f"CPU per consensus round, all four daemons: this {this_median:.1f} ms, other {other_median:.1f} ms "
        f"(medians); this / other {this_median / other_median:.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
