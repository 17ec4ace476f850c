"""tadlora's daemons against Flower: the same LoRA adapter averaged among N processes on loopback.

    sudo python benchmarks/flower_compare.py --flower-python /path/to/venv-with-flwr/bin/python

Flower: its own server (FedAvg, the legacy ``start_server``/``start_client`` gRPC stack of flwr) and N
clients (benchmarks/flower_side.py), clients returning the parameters at once (no training).
tadlora: N ``tadlora run`` daemons (MiniLM-L6, r = 8, strategy lora so that both factors are swapped
every round as FedAvg averages the whole adapter, complete graph), run twice: training one step of
one example per round, and in rounds that train nothing (consensus rounds, ``--consensus-rounds``),
as Flower's clients train nothing. Their round time beyond training is ``seconds - train_seconds``
from rounds.jsonl (exchange, validation, mixing, checkpoint). Only the second is like for like:
in the first, a round also waits for the neighbours that are still training (N processes training
on a shared machine rarely finish together), which Flower's clients never make their server do.

Both run inside a network namespace of their own that has only a loopback interface, so the bytes
its loopback counted are exactly the bytes of the run, every protocol overhead included (mDNS,
status probes and TLS-free gRPC for tadlora; gRPC for Flower). Needs root for that; without root
the bytes column shows the payload bytes from the logs instead.

``--cpu`` also measures the CPU seconds that all of each side's processes spend per round (Flower's
server and clients; the daemons in rounds that train nothing), from two runs of each, ``--rounds`` and
``CPU_LONG_RUN`` times as many, so that start-up cancels. Divided by the cores, it says whether a round
is bound by CPU: when it is, only less work per round shortens it, not less waiting. On a noisy
machine start-ups differ by more than many rounds' worth (three runs of the same code once gave
1.24, 1.79 and 0.77 times Flower's CPU); ``consensus_cpu.py`` reads the daemons' CPU over steady
rounds only, for comparing two versions of tadlora.

The two move different amounts by design: a star moves 2·N adapters a round through one server;
gossip on a complete graph moves N·(N-1) (every pair swaps both ways), with no server. ``--equal-bytes``
runs the daemons on a random graph of edge probability 2/(N-1) instead (``--topology er``): N·(N-1)
adapters times that probability, 2·N a round on average, as the star moves.
Flower runs in a separate environment (flwr pins a protobuf that tadlora's generated code refuses).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from peer.config import load_config
from peer.testbed import Testbed

HERE = Path(__file__).resolve().parent


class Loopback:
    """A namespace with only 'lo' (multicast on, so that mDNS works on it); removed on exit."""

    def __init__(self) -> None:
        self.name = f"tdlbench{uuid.uuid4().hex[:4]}" if os.geteuid() == 0 else None

    def __enter__(self):
        if self.name:
            for cmd in (
                ["ip", "netns", "add", self.name],
                ["ip", "-n", self.name, "link", "set", "lo", "up"],
                ["ip", "-n", self.name, "link", "set", "lo", "multicast", "on"],
                ["ip", "-n", self.name, "route", "add", "224.0.0.0/4", "dev", "lo"],
            ):
                subprocess.run(cmd, check=True)
        return self

    def __exit__(self, *exc):
        if self.name:
            subprocess.run(["ip", "netns", "del", self.name], check=False)

    def wrap(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command] if self.name else command

    def bytes(self) -> int | None:
        if not self.name:
            return None
        out = subprocess.run(
            self.wrap(["cat", "/sys/class/net/lo/statistics/tx_bytes"]), capture_output=True, text=True, check=True
        )
        return int(out.stdout)


def run_flower(python: str, clients: int, rounds: int, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    with Loopback() as ns:
        before = ns.bytes()
        times = folder / "flower_times.json"
        side = str(HERE / "flower_side.py")
        server = subprocess.Popen(
            ns.wrap([python, side, "server", "--clients", str(clients), "--rounds", str(rounds), "--out", str(times)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(3)
        procs = [
            subprocess.Popen(
                ns.wrap([python, side, "client", "--seed", str(i + 1)]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(clients)
        ]
        server.wait(timeout=600)
        for p in procs:
            p.wait(timeout=60)
        total = None if before is None else ns.bytes() - before
    result = json.loads(times.read_text())
    rounds_after_first = result["round_seconds"][1:]  # the first round waits for the clients to connect
    return {
        "overhead": statistics.median(rounds_after_first),
        "bytes_per_round": total / rounds if total else None,
        "payload": result["payload_bytes"],
    }


class NamespacedTestbed(Testbed):
    def __init__(self, *args, ns: Loopback, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ns = ns

    def command(self, index, extra=None):
        return self.ns.wrap(super().command(index, extra))


def exchange_config(peers: int, rounds: int, training: bool = True, equal_bytes: bool = False, **overrides):
    """MiniLM's adapter swapped whole (strategy lora) on a complete graph (``equal_bytes``: on a random
    graph that moves as many adapters a round, on average, as a star of ``peers``), one step of one example per
    round that trains, no evaluation. ``training``: every round trains; otherwise one round trains,
    then ``rounds`` consensus rounds only exchange and mix. Shared with lane_rounds.py."""
    return load_config(
        overrides=dict(
            references="none",
            strategy="lora",
            consensus_rounds=0 if training else rounds,
            peers=peers,
            topology="er" if equal_bytes else "complete",
            edge_prob=2 / (peers - 1) if equal_bytes else 0.5,
            rounds=rounds if training else 1,
            local_steps=1,
            batch_size=1,
            max_length=16,
            eval_every=10**6,
            eval_samples=10,
            device="cpu",
            **overrides,
        )
    )


# --cpu: the longer of the two runs whose difference is the CPU of rounds alone, in multiples of --rounds
CPU_LONG_RUN = 10


def children_cpu_seconds() -> float:
    """User and system CPU seconds of this process's children that ended and were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_per_round(run, rounds: int) -> float:
    """CPU seconds per round of every process ``run(n)`` starts (and waits for) to run ``n`` rounds:
    ``rounds`` and ``CPU_LONG_RUN`` times as many, differenced, so that imports and loading cancel."""
    spent = []
    for n in (rounds, CPU_LONG_RUN * rounds):
        before = children_cpu_seconds()
        run(n)
        spent.append(children_cpu_seconds() - before)
    return (spent[1] - spent[0]) / ((CPU_LONG_RUN - 1) * rounds)


# a round's parts beyond training that rounds.jsonl times (``*_seconds``), in the order they happen
ROUND_PARTS = ("files_wait", "write_ahead", "exchange", "mix")


def run_tadlora(
    peers: int, rounds: int, folder: Path, wire_dtype: str = "fp32", training: bool = True, equal_bytes: bool = False
) -> dict:
    """``training``: every round trains one step; otherwise one round trains, then ``rounds`` consensus
    rounds only exchange and mix (measured from the third round on, when no neighbour still trains)."""
    cfg = exchange_config(peers, rounds, training, equal_bytes, wire_dtype=wire_dtype)
    with Loopback() as ns:
        bed = NamespacedTestbed(cfg, folder, dict(discovery_wait=60.0, round_timeout_max=30.0), ns=ns)
        before = ns.bytes()
        bed.run_all(timeout=1200)  # bytes of the whole run, discovery and start-up included, as for Flower
        after = ns.bytes()
    skip = 1 if training else 2  # the first round waits for start-up; without training, also the trained one
    records = [r for i in range(peers) for r in bed.rounds(i)[skip:]]
    payload = sum(r["bytes_sent"] for i in range(peers) for r in bed.rounds(i)) / cfg.total_rounds
    return {
        "overhead": statistics.median(r["seconds"] - r["train_seconds"] for r in records),
        # of which, part by part (medians: they need not add up to the overhead), the exchange phase:
        # swaps, and waiting for neighbours that still train
        "parts": {
            part: statistics.median(r[f"{part}_seconds"] for r in records)
            for part in ROUND_PARTS
            if all(f"{part}_seconds" in r for r in records)
        },
        "bytes_per_round": (after - before) / cfg.total_rounds if before is not None else payload,
        "payload_per_round": payload,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--flower-python", default=sys.executable, help="a Python with flwr and numpy installed")
    parser.add_argument("--wire-dtype", default="fp32", help="how the daemons send their factors (fp32 | bf16 | int8)")
    parser.add_argument(
        "--equal-bytes",
        action="store_true",
        help="the daemons on a random graph of edge probability 2/(N-1): as many adapters a round as Flower's star",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help=f"also the CPU seconds per round of each side's processes (two more runs of each: --rounds and "
        f"{CPU_LONG_RUN} times as many)",
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tadlora-flower-"))
    flower = run_flower(args.flower_python, args.peers, args.rounds, folder)
    training = run_tadlora(args.peers, args.rounds, folder / "tadlora", args.wire_dtype, equal_bytes=args.equal_bytes)
    mixing = run_tadlora(
        args.peers,
        args.rounds,
        folder / "tadlora-mixing",
        args.wire_dtype,
        training=False,
        equal_bytes=args.equal_bytes,
    )
    mb = 1e6
    print(f"adapter payload: {flower['payload'] / 1e3:.0f} KB; {args.peers} processes; {args.rounds} rounds\n")
    print("| | round time beyond training (median s) | bytes on the wire per round (MB) |\n|---|---|---|")
    print(
        f"| Flower (FedAvg server + {args.peers} clients) | {flower['overhead']:.3f} | "
        f"{flower['bytes_per_round'] / mb if flower['bytes_per_round'] else float('nan'):.2f} |"
    )
    graph = f"random graph p = 2/{args.peers - 1}" if args.equal_bytes else "complete graph"
    runs = (("one training step a round", training), ("rounds that train nothing", mixing))
    for what, ours in runs:
        print(
            f"| tadlora ({args.peers} daemons, {graph}, {args.wire_dtype}, {what}; exchange phase "
            f"{ours['parts']['exchange']:.3f}) | {ours['overhead']:.3f} | {ours['bytes_per_round'] / mb:.2f} |"
        )
    byte_ratio = training["bytes_per_round"] / flower["bytes_per_round"] if flower["bytes_per_round"] else float("nan")
    print(
        f"\nratio tadlora/Flower: time {mixing['overhead'] / flower['overhead']:.2f} like for like (nobody trains), "
        f"{training['overhead'] / flower['overhead']:.2f} with one training step a round; bytes {byte_ratio:.2f}"
        f" (payload per round: tadlora {training['payload_per_round'] / mb:.2f} MB sent, Flower 2 x {args.peers} x "
        f"{flower['payload'] / mb:.2f} MB)"
    )
    for what, ours in runs:
        parts = ", ".join(f"{part} {seconds * 1e3:.1f}" for part, seconds in ours["parts"].items())
        print(f"tadlora's round beyond training, part by part ({what}; medians, ms): {parts or 'not timed'}")
    if args.cpu:
        report_cpu(args, folder, flower["overhead"], mixing["overhead"])


def report_cpu(args, folder: Path, flower_round: float, tadlora_round: float) -> None:
    """CPU per round of each side, against its round time on this machine's cores."""
    flower = cpu_per_round(
        lambda n: run_flower(args.flower_python, args.peers, n, folder / f"cpu-flower-{n}"), args.rounds
    )
    tadlora = cpu_per_round(
        lambda n: run_tadlora(
            args.peers, n, folder / f"cpu-tadlora-{n}", args.wire_dtype, training=False, equal_bytes=args.equal_bytes
        ),
        args.rounds,
    )
    cores = os.cpu_count() or 1
    print(f"\nCPU per round, all processes of a side ({cores} cores; rounds that train nothing for tadlora):")
    print("| | CPU per round (ms) | per process (ms) | CPU / cores (ms) | round time (ms) |\n|---|---|---|---|---|")
    for name, cpu, processes, round_time in (
        (f"Flower (server + {args.peers} clients)", flower, args.peers + 1, flower_round),
        (f"tadlora ({args.peers} daemons)", tadlora, args.peers, tadlora_round),
    ):
        print(
            f"| {name} | {cpu * 1e3:.1f} | {cpu * 1e3 / processes:.1f} | {cpu * 1e3 / cores:.1f} | "
            f"{round_time * 1e3:.1f} |"
        )
    print(f"ratio tadlora/Flower, CPU per round: {tadlora / flower:.2f}")


if __name__ == "__main__":
    main()
