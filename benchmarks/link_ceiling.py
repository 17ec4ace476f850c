"""What the shaped link of ``shaped_link.py`` gives a swap at best: TCP sending both ways at once, in C
(``both_ways.c``, built here with ``cc``), on a new connection per swap or on one kept for all, with
the server's reply starting at once or some microseconds after the request came. Needs root and a C
compiler.

    sudo .venv/bin/python benchmarks/link_ceiling.py [--size-mb 30] [--swaps 7] [--delays-us 0,100,300,3000]

Prints, per connection kind and delay, the median swap time and what each direction achieved as a
fraction of the link rate. It shows the ceiling that ``shaped_link.py``'s gossip is held to, and why
a swap's payload lane is kept from one swap to the next, and each side starts its payload first
(``peer/transport/lane.py``): on a new connection, directions that start apart lose up to a tenth of
the rate.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from shaped_link import BURST

from peer.testbed.netns import NetnsLab, netns_available

SOURCE = Path(__file__).with_name("both_ways.c")
PORT = 50_611


def build(into: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("link_ceiling: needs a C compiler (cc)")
    binary = into / "both_ways"
    subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def median_swap(lab: NetnsLab, binary: Path, port: int, size: int, swaps: int, kind: str, delay_us: int) -> float:
    server = subprocess.Popen(
        lab.wrap(1, [str(binary), "serve", lab.address(1), str(port), str(size), str(delay_us)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server.stdout.readline()  # type: ignore[union-attr]
        client = [str(binary), "client", lab.address(1), str(port), str(size), str(swaps), kind, "0"]
        out = subprocess.run(lab.wrap(0, client), capture_output=True, text=True, check=True)
        return statistics.median(float(line) for line in out.stdout.split())
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mbit", type=int, default=1000)
    parser.add_argument("--size-mb", type=float, default=30)
    parser.add_argument("--swaps", type=int, default=7)
    parser.add_argument("--delays-us", default="0,100,300,3000")
    args = parser.parse_args()
    if why := netns_available():
        sys.exit(f"link_ceiling: {why}")
    size, rate = int(args.size_mb * 1e6), args.rate_mbit * 1e6 / 8
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))
        lab = NetnsLab(2).up()
        try:
            for i in range(2):
                lab.limit_bandwidth(i, f"{args.rate_mbit}mbit", burst=BURST)
            print(f"link: {args.rate_mbit} Mbit/s each way (tc tbf, burst {BURST}); {args.size_mb:g} MB each way")
            print("| connection | reply starts after | swap (median s) | each way / link |")
            print("|---|---|---|---|")
            port = PORT
            for kind in ("new", "kept"):
                for delay in [int(d) for d in args.delays_us.split(",")]:
                    port += 1  # a fresh port per server: no wait for the last one's TIME_WAIT
                    t = median_swap(lab, binary, port, size, args.swaps, kind, delay)
                    print(f"| {kind} | {delay} µs | {t:.4f} | {size / t / rate:.3f} |", flush=True)
        finally:
            lab.down()


if __name__ == "__main__":
    main()
