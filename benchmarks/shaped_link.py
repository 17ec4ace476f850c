"""The gossip swap on a real, shaped link: two network namespaces joined by a bridge, each port limited
to 1 Gbit/s with ``tc tbf``; one swap between a client in one namespace and a server in the other,
against the same bytes over a plain TCP connection on the same link. Needs root (it creates the
namespaces, and removes them, their processes and its blackhole route on any exit).

    sudo .venv/bin/python benchmarks/shaped_link.py [--rate-mbit 1000] [--sizes-mb 3,30,200] [--repeats 4]

Prints, per payload size, the median time of a swap (each side sends ``size`` bytes, the server its
reply) and what each direction achieved as a fraction of the link rate: the raw socket sends, then
answers (its directions one after the other); gossip sends both directions at once when the server
streams its reply while it receives. Gossip with its payloads in chunks on the gRPC stream, and on the
payload lane (``peer/transport/lane.py``): the swap alone (the daemon encodes its factors once a
round, for all its neighbours, before any swap), and on the lane with the client's encode and
checksum. A lane is kept from one swap to the next, as between a daemon and each neighbour: the
first timed swap opens it (its own column), the others reuse it. Target: gossip at least 0.9 of the
link rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
from pathlib import Path as FilePath

from gossip_throughput import (
    EchoPeer,
    FreedMemory,
    Path,
    _recv_exact,
    add_freed_memory_argument,
    factors,
    limits,
    set_up_process,
    time_grpc_parts,
    time_raw,
)

from peer.testbed.netns import NetnsLab, netns_available
from peer.transport.framing import Limits
from peer.transport.grpc_transport import GrpcTransport

CHUNK = Limits().chunk_size
PORT = 50_601
# the bucket holds a few timer ticks of traffic at 1 Gbit/s (rate / HZ is 125 KB at HZ 1000)
BURST = "512kb"


def serve(kind: str, host: str, size: int) -> None:
    """Answer swaps (or raw exchanges) at host:PORT until stdin closes; prints the address when ready."""
    if kind == Path.RAW:
        server = socket.create_server((host, PORT))
        print(f"{host}:{PORT}", flush=True)
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer, reply = bytearray(size), bytes(size)
        while (header := conn.recv(8, socket.MSG_WAITALL)) and len(header) == 8:
            _recv_exact(conn, buffer, struct.unpack("<Q", header)[0])
            conn.sendall(struct.pack("<Q", size))
            conn.sendall(reply)
        return

    async def main():
        transport = GrpcTransport(limits(CHUNK, Path(kind)))
        address = await transport.serve(EchoPeer(factors(size, seed=1)), f"{host}:{PORT}")
        print(address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await transport.close()

    asyncio.run(main())


def client(kind: str, address: str, size: int, repeats: int) -> list[tuple[float, float]]:
    """(client's encode and checksum, swap) of each swap (the first, which opens the connection, not
    counted): gossip_throughput's clients. The raw socket encodes nothing."""
    if kind == Path.RAW:
        return [(0.0, t) for t in time_raw(address, size, repeats)]
    return time_grpc_parts(address, size, CHUNK, repeats, Path(kind))


def measure(lab: NetnsLab, kind: str, size: int, repeats: int, freed: str) -> tuple[float, float, float]:
    """Median swap time, median time of encode + swap, and the first swap's time; on the lane, the
    medians leave out that first swap, which opened the lane."""
    me = [sys.executable, str(FilePath(__file__).resolve()), "--freed-memory", freed]
    server = subprocess.Popen(
        lab.wrap(1, [*me, "--serve", kind, "--host", lab.address(1), "--size", str(size)]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = server.stdout.readline().strip()  # type: ignore[union-attr]
        out = subprocess.run(
            lab.wrap(0, [*me, "--client", kind, "--address", address, "--size", str(size), "--repeats", str(repeats)]),
            capture_output=True,
            text=True,
            check=True,
        )
        first, *rest = json.loads(out.stdout.strip().splitlines()[-1])
        parts = rest if kind == Path.LANE else [first, *rest]
        swaps = statistics.median(swap for _, swap in parts)
        return swaps, statistics.median(encode + swap for encode, swap in parts), first[1]
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mbit", type=int, default=1000)
    parser.add_argument("--sizes-mb", default="3,30,200")
    parser.add_argument("--repeats", type=int, default=4, help="timed swaps per path and size (the lane: one more)")
    parser.add_argument("--serve", choices=list(Path))
    parser.add_argument("--client", choices=list(Path))
    parser.add_argument("--host")
    parser.add_argument("--address")
    parser.add_argument("--size", type=int)
    add_freed_memory_argument(parser)
    args = parser.parse_args()
    if args.serve or args.client:
        set_up_process(args.freed_memory == FreedMemory.REUSE)
    if args.serve:
        serve(args.serve, args.host, args.size)
        return
    if args.client:
        print(json.dumps(client(args.client, args.address, args.size, args.repeats)))
        return
    if why := netns_available():
        sys.exit(f"shaped_link: {why}")
    rate = args.rate_mbit * 1e6 / 8  # bytes per second, each way
    lab = NetnsLab(2).up()
    try:
        for i in range(2):
            lab.limit_bandwidth(i, f"{args.rate_mbit}mbit", burst=BURST)
        print(f"link: {args.rate_mbit} Mbit/s each way (tc tbf, burst {BURST}), between two namespaces")
        print(
            "| payload | raw swap (median s) | raw, each way / link | chunks: swap (median s) | chunks / link"
            " | lane: swap (median s) | lane / link | lane with the encode (median s) | with the encode / link"
            " | new lane: swap (s) | new lane / link |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for mb in [float(x) for x in args.sizes_mb.split(",")]:
            size = int(mb * 1e6) // 4 * 4
            raw, _, _ = measure(lab, Path.RAW, size, args.repeats, args.freed_memory)
            chunks, _, _ = measure(lab, Path.CHUNKS, size, args.repeats, args.freed_memory)
            lane, whole, new_lane = measure(lab, Path.LANE, size, args.repeats + 1, args.freed_memory)
            # raw: two transfers one after the other; gossip: each direction carries size bytes
            # (and the safetensors header) during the swap, at once where the protocol allows
            print(
                f"| {mb:g} MB | {raw:.3f} | {2 * size / raw / rate:.2f} | {chunks:.3f} | {size / chunks / rate:.2f}"
                f" | {lane:.3f} | {size / lane / rate:.2f} | {whole:.3f} | {size / whole / rate:.2f}"
                f" | {new_lane:.3f} | {size / new_lane / rate:.2f} |",
                flush=True,
            )
    finally:
        lab.down()


if __name__ == "__main__":
    main()
