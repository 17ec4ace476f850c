"""Issue 12's attacks, re-run against real daemons on loopback: what each costs after the fixes.

    python benchmarks/hostile_lan.py [--out benchmarks/results/hostile] [--rounds 120] [--only crowd,...]

Three daemons (tiny model, complete graph, real gRPC and mDNS on 127.0.0.1) per scenario:

- ``baseline``: nothing else on the LAN: rounds per second;
- ``hijack``: a fake mDNS service announces ``peer_id=peer-02`` of the run, with the run's schema, at
  a dead port, and withdraws it (its goodbye) a few seconds later: peer-02's links per round after;
- ``ghosts``: one service with an empty peer id, one valid-looking at a dead port, one tarpit (a TCP
  port that accepts and never answers): rounds per second;
- ``crowd``: 200 valid-looking fake services at dead ports: rounds per second and the degree;
- ``slow-streams``: four streams from a "known sender" that announce 200 MB and then trickle a byte
  every 8 s, and four that announce the true size and trickle: the attacked daemon's peak RSS;
- ``reason-spam``: 300 Reject frames with 60 KB reasons and forged log lines: the Status answer's
  size, ``tadlora status``'s exit code, the daemon's summary size, forged lines in its log.

Traffic only on 127.0.0.1; every fake service is withdrawn at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from peer.config import load_config
from peer.discovery.mdns import SERVICE_TYPE
from peer.testbed import Testbed
from peer.transport.base import PROTOCOL_VERSION, Header
from peer.transport.framing import header_to_pb
from peer.transport.pb import peer_pb2 as pb
from peer.transport.pb import peer_pb2_grpc as pb_grpc

LOOPBACK = "127.0.0.1"
DEAD_PORT = 9  # discard: nothing listens there on this machine


class FakeServices:
    """Raw mDNS announcements on loopback, from a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.zc = self._call(self._open())

    async def _open(self):
        return AsyncZeroconf(ip_version=IPVersion.V4Only, interfaces=[LOOPBACK])

    def _call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def announce(self, name: str, port: int, properties: dict) -> AsyncServiceInfo:
        return self.announce_many([(name, port, properties)])[0]

    def announce_many(self, services: list[tuple[str, int, dict]]) -> list[AsyncServiceInfo]:
        """Register them all at once (each registration probes for about 1.5 s)."""
        infos = [
            AsyncServiceInfo(
                SERVICE_TYPE,
                f"{name}.{SERVICE_TYPE}",
                addresses=[socket.inet_aton(LOOPBACK)],
                port=port,
                properties=properties,
            )
            for name, port, properties in services
        ]

        async def register_all():
            announcing = await asyncio.gather(*(self.zc.async_register_service(info) for info in infos))
            await asyncio.gather(*announcing)  # each registration returns its announcements' task

        self._call(register_all(), timeout=600)
        return infos

    def withdraw(self, info: AsyncServiceInfo) -> None:
        self._call(self.zc.async_unregister_service(info))

    def close(self) -> None:
        self._call(self.zc.async_unregister_all_services())
        self._call(self.zc.async_close())
        self.loop.call_soon_threadsafe(self.loop.stop)


def tarpit() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind((LOOPBACK, 0))
    server.listen(64)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    return server, server.getsockname()[1]


def start_bed(out: Path, rounds: int) -> Testbed:
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: daemons would resume from an old folder
    cfg = load_config(
        overrides=dict(
            model="tiny-bert",
            task="synthetic",
            peers=3,
            consensus_rounds=0,  # per-round figures: every round trains
            rounds=rounds,
            local_steps=1,
            batch_size=8,
            max_length=32,
            eval_samples=32,
            eval_every=rounds,
            references="none",
            topology="complete",
            device="cpu",
        )
    )
    bed = Testbed(cfg, out, dict(discovery_wait=30.0, round_timeout_min=1.0, round_timeout_max=10.0))
    for i in range(3):
        bed.start(i)
    return bed


def wait_for_round(bed: Testbed, round_: int, timeout: float = 120) -> None:
    until = time.monotonic() + timeout
    while min(len(bed.rounds(i)) for i in range(3)) < round_:
        if time.monotonic() > until:
            raise TimeoutError(f"the daemons did not reach round {round_}")
        time.sleep(0.2)


def endpoint(bed: Testbed, index: int) -> dict:
    return json.loads((bed.peer_dir(index) / "endpoint.json").read_text())


def status_of(address: str) -> pb.StatusReply:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.PeerStub(channel).Status(pb.StatusRequest(), timeout=5)


def run_properties(bed: Testbed) -> dict:
    status = status_of(endpoint(bed, 0)["address"])
    return {"run_id": status.run_id, "proto": str(PROTOCOL_VERSION), "schema": status.schema_digest.hex()}


def rounds_per_second(bed: Testbed, after: int = 3) -> float:
    """Rounds per second of round time (training, exchange, mixing) from round ``after`` on, mean over peers."""
    rates = []
    for i in range(3):
        records = [r for r in bed.rounds(i) if r["round"] >= after]
        rates.append(len(records) / sum(r["seconds"] for r in records))
    return sum(rates) / len(rates)


def finish(bed: Testbed, timeout: float = 300) -> None:
    try:
        bed.wait(timeout=timeout)
    finally:
        bed.stop_all()


def scenario_baseline(out: Path, rounds: int) -> dict:
    bed = start_bed(out, rounds)
    finish(bed)
    return {"rounds_per_s": rounds_per_second(bed)}


def scenario_hijack(out: Path, rounds: int) -> dict:
    bed = start_bed(out, rounds * 2)
    fakes = FakeServices()
    try:
        wait_for_round(bed, 3)
        info = fakes.announce("fake-hijack", DEAD_PORT, {"peer_id": "peer-02", **run_properties(bed)})
        time.sleep(5.0)
        fakes.withdraw(info)  # its goodbye
        attacked_at = len(bed.rounds(2))
        finish(bed)
    finally:
        fakes.close()
    after = bed.rounds(2)[attacked_at:]
    links = [len(r["neighbours"]) for r in after]
    logs = [(bed.peer_dir(i) / "daemon.log").read_text() for i in (0, 1)]
    return {
        "rounds_logged_after": len(after),
        "peer_02_mean_links_after": sum(links) / max(1, len(links)),
        "rounds_with_0_links_after": sum(1 for n in links if n == 0),
        "fake_not_taken_by": sum("not taking peer-02" in log for log in logs),
        "peer_02_lost_by": sum("lost peer-02" in log for log in logs),
    }


def scenario_ghosts(out: Path, rounds: int, crowd: int = 0) -> dict:
    bed = start_bed(out, rounds)
    fakes, pit = FakeServices(), None
    try:
        wait_for_round(bed, 2)
        props = run_properties(bed)
        if crowd:
            fakes.announce_many(
                [(f"crowd-{i}", DEAD_PORT, {"peer_id": f"fake-{i:03d}", **props}) for i in range(crowd)]
            )
        else:
            pit, pit_port = tarpit()
            fakes.announce("ghost-empty", DEAD_PORT, {"peer_id": "", **props})
            fakes.announce("ghost-valid", DEAD_PORT, {"peer_id": "peer-77", **props})
            fakes.announce("ghost-tarpit", pit_port, {"peer_id": "peer-78", **props})
        finish(bed)
    finally:
        fakes.close()
        if pit is not None:
            pit.close()
    degrees = [r["degree"] for i in range(3) for r in bed.rounds(i)]
    log = (bed.peer_dir(0) / "daemon.log").read_text()
    summary = json.loads((bed.peer_dir(0) / "summary.json").read_text())
    return {
        "rounds_per_s": rounds_per_second(bed),
        "max_degree": max(degrees),
        "peer_00_not_taking": log.count(": not taking "),
        "peer_00_refused": summary["rejected"],
        "min_self_weight": min(r["self_weight"] for i in range(3) for r in bed.rounds(i)),
    }


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scenario_slow_streams(out: Path, rounds: int) -> dict:
    bed = start_bed(out, rounds * 2)
    try:
        wait_for_round(bed, 2)
        target = endpoint(bed, 0)
        status = status_of(target["address"])
        before = _peak_rss_mb(target["pid"])

        def stream(announced: int) -> None:
            header = Header(
                run_id=status.run_id,
                sender_id="peer-01",
                round=status.round + 1,
                phase="B",
                factors=("B",),
                schema_digest=status.schema_digest,
                payload_size=announced,
                payload_digest=b"\0" * 16,
                degree=1,
            )

            def frames():
                yield pb.Frame(header=header_to_pb(header))
                chunk = pb.Frame(chunk=pb.Chunk(data=b"x" * (1 << 20)))
                for _ in range(announced >> 20):  # as fast as the daemon takes them (it should take none)
                    yield chunk
                for _ in range(4):
                    time.sleep(8.0)
                    yield pb.Frame(chunk=pb.Chunk(data=b"x"))

            with grpc.insecure_channel(target["address"]) as channel, contextlib.suppress(grpc.RpcError):
                list(pb_grpc.PeerStub(channel).Exchange(frames(), timeout=60))

        threads = [threading.Thread(target=stream, args=(size,)) for size in [200 << 20] * 4 + [10_000] * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = _peak_rss_mb(target["pid"])
        refused = dict(status_of(target["address"]).rejected)
    finally:
        bed.stop_all()
    return {"peak_rss_mb_before": before, "peak_rss_mb_after_attack": peak, "refused": refused}


def scenario_reason_spam(out: Path, rounds: int) -> dict:
    bed = start_bed(out, rounds)
    try:
        wait_for_round(bed, 2)
        target = endpoint(bed, 0)
        forged = "ok\n2026-11-29 00:00:00 INFO tadlora.daemon: peer-00: forged line\n"
        with grpc.insecure_channel(target["address"]) as channel:
            stub = pb_grpc.PeerStub(channel)
            for i in range(300):
                with contextlib.suppress(grpc.RpcError):
                    list(
                        stub.Exchange(
                            iter([pb.Frame(reject=pb.Reject(reason=f"spam-{i}-" + "x" * 60_000, detail=forged))]),
                            timeout=5,
                        )
                    )
        reply = status_of(target["address"])
        cli = subprocess.run(
            [sys.executable, "-m", "peer.cli", "status", target["address"]], capture_output=True, text=True, timeout=60
        )
        finish(bed)
    finally:
        bed.stop_all()
    log = (bed.peer_dir(0) / "daemon.log").read_text()
    return {
        "status_bytes": reply.ByteSize(),
        "status_reasons": len(reply.rejected),
        "tadlora_status_exit": cli.returncode,
        "summary_bytes": (bed.peer_dir(0) / "summary.json").stat().st_size,
        "forged_lines_in_log": log.count("\n2026-11-29 00:00:00 INFO"),
    }


SCENARIOS = {
    "baseline": scenario_baseline,
    "hijack": scenario_hijack,
    "ghosts": scenario_ghosts,
    "crowd": lambda out, rounds: scenario_ghosts(out, rounds, crowd=200),
    "slow-streams": scenario_slow_streams,
    "reason-spam": scenario_reason_spam,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hostile"))
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = parser.parse_args()
    results = {}
    for name in args.only.split(","):
        started = time.monotonic()
        results[name] = SCENARIOS[name](args.out / name, args.rounds)
        results[name]["wall_s"] = round(time.monotonic() - started, 1)
        print(json.dumps({name: results[name]}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
