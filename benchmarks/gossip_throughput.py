"""The gossip path against a raw TCP socket: one round's factor swap between two processes on loopback.

    python benchmarks/gossip_throughput.py [--sizes-mb 0.3,3,30,200] [--repeats 5] [--chunk-kb 1024]

gossip: the client serializes its factors with safetensors, checksums them (xxh3-128) and sends
them to a server process, which checks size and hash, decodes and validates every tensor against its
schema (names, dtypes, shapes, finite values); the server sends its own factors of the same size as
soon as the header passed its screen (as the daemon does; ``--reply-after-validation``: only after
validating the incoming ones, the order before), and the client checks and decodes them the same
way; then the commit round trip. Two ways side by side: the payloads in chunks on the gRPC stream
(the daemon's ``--lane 0``), and on the payload lane (``peer/transport/lane.py``), every payload here
whatever its size, where the daemon keeps those under ``--lane-min-bytes`` (4 MiB) in chunks. Every
process keeps the memory it frees for reuse, as ``tadlora run`` does (``--freed-memory return``:
glibc's default). This is ``GrpcTransport.exchange`` and the daemon's validation, exactly: after the
first swap (not timed) each runs on the stream the previous one kept open, as a daemon's swaps with a
neighbour do from round to round. Each process runs one torch thread, as the testbed runs its daemons.

raw: the same number of bytes each way over one plain TCP connection (length prefix, sendall,
recv_into a preallocated buffer): the floor that any protocol over loopback pays.

Prints, per payload size, the median swap time of each and the ratio of throughputs (raw time /
gossip time; 1.0 = as fast as the raw socket): of the swap alone, and of the swap on the lane with the
client's encode and checksum (the daemon does those once a round, for all its neighbours); and the
lane's speed-up over chunks. Target (issue 14): >= 0.5 from 30 MB up, 0.3 MB within 3 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import struct
import time
from enum import StrEnum

import torch

from peer.daemon.memory import keep_freed_memory_for_reuse
from peer.transport.base import ExchangeServer, Header
from peer.transport.codec import decode_factors, encode_factors, schema_digest, schema_of
from peer.transport.framing import Limits, seal
from peer.transport.grpc_transport import GrpcTransport


def factors(total_bytes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 tensors of 1M elements (4 MB) each, plus a remainder: like a large adapter's factors."""
    g = torch.Generator().manual_seed(seed)
    numel, out, i = total_bytes // 4, {}, 0
    while numel > 0:
        n = min(numel, 1 << 20)
        out[f"layer.{i}.lora_A.weight"] = torch.randn(n, generator=g)
        numel -= n
        i += 1
    return out


class EchoPeer(ExchangeServer):
    """Decodes and validates what arrives, answers with its own factors of the same size. ``early``: the
    answer is given at the screen and streamed while the incoming factors arrive, as the daemon does;
    False: only after they were validated (the order before both directions overlapped)."""

    def __init__(self, reply_tensors: dict, early: bool = True) -> None:
        self.schema, self.early = schema_of(reply_tensors), early
        self.reply = seal(
            Header("bench", "server", 0, "A", ("A",), schema_digest(self.schema)), encode_factors(reply_tensors)
        )

    async def screen(self, header):
        return self.reply if self.early else None

    async def respond(self, incoming):
        decode_factors(incoming.payload, self.schema, set(self.schema))
        return self.reply

    async def commit(self, header):
        return True

    async def abort(self, header):
        pass

    def status(self):
        raise NotImplementedError

    async def current_factors(self, run_id, peer_id):
        raise NotImplementedError

    def outcome(self, peer_id, round_, run_id):
        return None


# Each process stands for one peer on its own machine, as the testbed runs daemons: one torch thread each.
# Two pools of two threads on a two-core machine oversubscribe it whenever both peers decode at once
# (which the overlapped directions make them do), and a parallel reduction then waits for tens of ms.
TORCH_THREADS = 1


def set_up_process(reuse_freed_memory: bool) -> None:
    """One torch thread; and freed memory kept for reuse, as ``tadlora run`` does (``peer.daemon.memory``)."""
    torch.set_num_threads(TORCH_THREADS)
    if reuse_freed_memory:
        keep_freed_memory_for_reuse()


class Path(StrEnum):
    """How a swap's payloads travel."""

    RAW = "raw"  # not a swap: the bytes each way on one plain TCP connection
    CHUNKS = "chunks"  # in chunks on the gRPC stream
    LANE = "lane"  # on the payload lane, whatever their size


def limits(chunk: int, path: Path) -> Limits:
    return Limits(
        chunk_size=chunk,
        max_payload_bytes=1 << 30,
        max_chunks=1 << 20,
        lane_min_bytes=0 if path == Path.LANE else None,
    )


def grpc_server(size: int, chunk: int, early: bool, reuse: bool, path: Path, ready, stop) -> None:
    set_up_process(reuse)

    async def main():
        transport = GrpcTransport(limits(chunk, path))
        address = await transport.serve(EchoPeer(factors(size, seed=1), early), "127.0.0.1:0")
        ready.send(address)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await transport.close()

    asyncio.run(main())


def raw_server(size: int, reuse: bool, ready, stop) -> None:
    set_up_process(reuse)
    server = socket.create_server(("127.0.0.1", 0))
    ready.send(f"127.0.0.1:{server.getsockname()[1]}")
    server.settimeout(0.2)
    reply = bytes(size)
    buffer = bytearray(size)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                header = conn.recv(8, socket.MSG_WAITALL)
                if len(header) < 8:
                    break
                _recv_exact(conn, buffer, struct.unpack("<Q", header)[0])
                conn.sendall(struct.pack("<Q", size))
                conn.sendall(reply)


def _recv_exact(conn, buffer: bytearray, n: int) -> None:
    view, got = memoryview(buffer)[:n], 0
    while got < n:
        got += conn.recv_into(view[got:], n - got)


def time_grpc_parts(
    address: str, size: int, chunk: int, repeats: int, path: Path = Path.LANE
) -> list[tuple[float, float]]:
    """(encode and checksum, swap) of each swap: the daemon encodes its factors once a round and sends
    that one message to every neighbour, so the swap alone is what each link costs. The first swap,
    not timed, opens the channel and learns the server's lane from its reply."""
    torch.set_num_threads(TORCH_THREADS)
    tensors = factors(size)
    schema = schema_of(factors(size, seed=1))

    async def main():
        transport = GrpcTransport(limits(chunk, path))

        async def validate(reply):
            decode_factors(reply.payload, schema, set(schema))

        times = []
        for _ in range(repeats + 1):  # the first swap opens the channel: not timed
            start = time.perf_counter()
            message = seal(
                Header("bench", "client", 0, "A", ("A",), schema_digest(schema_of(tensors))), encode_factors(tensors)
            )
            encoded = time.perf_counter()
            await transport.exchange(address, message, validate, timeout=600)
            times.append((encoded - start, time.perf_counter() - encoded))
        await transport.close()
        return times[1:]

    return asyncio.run(main())


def time_raw(address: str, size: int, repeats: int) -> list[float]:
    host, port = address.rsplit(":", 1)
    payload, buffer = bytes(size), bytearray(size)
    times = []
    with socket.create_connection((host, int(port))) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            conn.sendall(struct.pack("<Q", size))
            conn.sendall(payload)
            n = struct.unpack("<Q", conn.recv(8, socket.MSG_WAITALL))[0]
            _recv_exact(conn, buffer, n)
            times.append(time.perf_counter() - start)
    return times[1:]


def measure(
    path: Path, size: int, chunk: int, repeats: int, early: bool = True, reuse: bool = True
) -> list[tuple[float, float]]:
    """(client's encode and checksum, swap) per repeat; the raw socket encodes nothing. The client runs
    in this process, which ``main`` set up."""
    ctx = mp.get_context("spawn")
    ready_recv, ready_send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    target, args = (
        (raw_server, (size, reuse, ready_send, stop))
        if path == Path.RAW
        else (grpc_server, (size, chunk, early, reuse, path, ready_send, stop))
    )
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        address = ready_recv.recv()
        if path == Path.RAW:
            return [(0.0, t) for t in time_raw(address, size, repeats)]
        return time_grpc_parts(address, size, chunk, repeats, path)
    finally:
        stop.set()
        proc.join(10)


# Small swaps take milliseconds and a median of 5 moves with every hiccup of a shared machine: they are
# repeated until about this many bytes went each way (up to MAX_REPEATS times), large ones --repeats times.
REPEAT_BYTES = 60_000_000
MAX_REPEATS = 200


class FreedMemory(StrEnum):
    REUSE = "reuse"
    RETURN = "return"


def add_freed_memory_argument(parser: argparse.ArgumentParser) -> None:
    """``--freed-memory``, shared with shaped_link.py; ``set_up_process`` applies it."""
    parser.add_argument(
        "--freed-memory",
        choices=list(FreedMemory),
        default=FreedMemory.REUSE,
        help="reuse: kept for reuse in every process, as tadlora run does (peer.daemon.memory); "
        "return: glibc's default, large buffers mapped fresh and given back each time",
    )


def repeats_for(size: int, repeats: int) -> int:
    return max(repeats, min(MAX_REPEATS, REPEAT_BYTES // size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="0.3,3,30,200")
    parser.add_argument("--repeats", type=int, default=5, help="at least; small payloads are repeated more")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="gRPC chunk size (the daemon's --chunk-size)")
    parser.add_argument(
        "--reply-after-validation",
        action="store_true",
        help="the server answers only once it validated the incoming factors (no overlap of the directions)",
    )
    add_freed_memory_argument(parser)
    args = parser.parse_args()
    reuse = args.freed_memory == FreedMemory.REUSE
    set_up_process(reuse)
    print(
        "| payload | raw socket (median s) | chunks: swap (median s) | lane: swap (median s)"
        " | lane: with the encode (median s) | lane MB/s | ratio raw/chunks | ratio raw/lane"
        " | ratio raw/(encode + lane) | lane speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    early, chunk = not args.reply_after_validation, args.chunk_kb << 10
    for mb in [float(x) for x in args.sizes_mb.split(",")]:
        size = int(mb * 1e6) // 4 * 4
        repeats = repeats_for(size, args.repeats)
        raw = statistics.median(swap for _, swap in measure(Path.RAW, size, 0, repeats, reuse=reuse))
        chunks = statistics.median(swap for _, swap in measure(Path.CHUNKS, size, chunk, repeats, early, reuse))
        parts = measure(Path.LANE, size, chunk, repeats, early, reuse)
        lane = statistics.median(swap for _, swap in parts)
        whole = statistics.median(encode + swap for encode, swap in parts)
        print(
            f"| {mb:g} MB | {raw:.4f} | {chunks:.4f} | {lane:.4f} | {whole:.4f} | {2 * size / lane / 1e6:.0f}"
            f" | {raw / chunks:.2f} | {raw / lane:.2f} | {raw / whole:.2f} | {chunks / lane:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
