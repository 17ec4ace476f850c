"""Delay and jitter for the namespace testbed, without ``tc netem`` (which this kernel lacks).

The kernel needs CONFIG_NETFILTER_XT_TARGET_NFQUEUE (iptables' NFQUEUE target); nft's own ``queue``
statement needs CONFIG_NFT_QUEUE, which kernels often leave out, hence iptables.

An iptables NFQUEUE rule in a peer's namespace sends the packets it addresses to the lab's subnet to an
NFQUEUE; this process, started inside that namespace by ``NetnsLab.set_delay``, holds each packet for
``delay ± jitter`` (uniform) and then lets it go. Release times never go backwards, so packets leave
in the order they came: jitter stretches gaps between packets but does not reorder a TCP stream
(netem reorders, which makes TCP retransmit spuriously; that is a different fault).

Only the verdict crosses into user space (no payload copy), so the cost is one netlink message per
packet: on loopback-speed veths this process caps a peer's send rate at a few tens of thousands of
packets a second, far above what one gRPC stream of factors needs.

Run by hand (as root, inside a namespace of your own)::

    iptables -A OUTPUT -d 10.213.7.0/24 -j NFQUEUE --queue-num 0 --queue-bypass
    python -m peer.testbed.netdelay --queue 0 --delay-ms 50 --jitter-ms 10

Needs the PyPI package ``netfilterqueue`` (built against libnetfilter-queue; ``apt-get install
libnetfilter-queue-dev`` first). It prints ``ready`` once bound, and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import random
import select
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any


def release_times(arrivals: Iterable[float], delay: float, jitter: float, rng: random.Random) -> list[float]:
    """When each packet leaves: arrival + delay + U(-jitter, +jitter), never before the previous one."""
    if delay < 0 or jitter < 0 or jitter > delay:
        raise ValueError(f"need 0 <= jitter <= delay, got delay {delay}, jitter {jitter}")
    out, last = [], float("-inf")
    for arrival in arrivals:
        last = max(last, arrival + delay + rng.uniform(-jitter, jitter))
        out.append(last)
    return out


class DelayQueue:
    """Holds packets from one NFQUEUE and accepts each at its release time (single-threaded)."""

    def __init__(self, queue: int, delay: float, jitter: float, seed: int = 0) -> None:
        release_times([], delay, jitter, random.Random())  # validate early
        self.queue, self.delay, self.jitter = queue, delay, jitter
        self.rng = random.Random(seed)
        self.held: list[tuple[float, int, Any]] = []  # (due, sequence, netfilterqueue.Packet)
        self.last_due = float("-inf")
        self.sequence = 0
        self.stopping = False

    def _on_packet(self, packet) -> None:
        due = release_times([time.monotonic()], self.delay, self.jitter, self.rng)[0]
        self.last_due = due = max(due, self.last_due)
        heapq.heappush(self.held, (due, self.sequence, packet))  # verdict later: allowed since 1.0
        self.sequence += 1

    def _release_due(self) -> None:
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            heapq.heappop(self.held)[2].accept()

    def run(self) -> None:
        from netfilterqueue import COPY_META, NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(self.queue, self._on_packet, max_len=4096, mode=COPY_META)
        print("ready", flush=True)
        try:
            while not self.stopping:
                timeout = max(0.0, self.held[0][0] - time.monotonic()) if self.held else 0.5
                readable, _, _ = select.select([nfq.get_fd()], [], [], timeout)
                if readable:
                    nfq.run(block=False)
                self._release_due()
        finally:
            for _, _, packet in self.held:  # never strand packets: let the rest through at once
                packet.accept()
            nfq.unbind()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m peer.testbed.netdelay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number the nftables rule uses")
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        queue = DelayQueue(args.queue, args.delay_ms / 1000, args.jitter_ms / 1000, args.seed)
    except ValueError as exc:
        print(f"netdelay: {exc}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        queue.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queue.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
