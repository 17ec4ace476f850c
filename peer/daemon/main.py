"""``tadlora run``: start one peer daemon in this process (asyncio on uvloop) and run it to the end.

Writes to ``--out DIR``: ``endpoint.json`` (peer id, address, pid) as soon as it listens,
``rounds.jsonl`` (one line per round), ``checkpoint.pt`` (every round), and at the end
``summary.json`` and ``peers/<peer-id>/adapter/`` (PEFT format). SIGINT and SIGTERM stop it
cleanly after the current step; a restart with the same ``--out`` resumes from the checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from peer.config import DaemonConfig, RunConfig
from peer.daemon.node import PeerDaemon
from peer.daemon.observe import observers_for
from peer.discovery.mdns import MdnsDiscovery, PeerRecord
from peer.transport.base import PROTOCOL_VERSION
from peer.transport.framing import Limits
from peer.transport.grpc_transport import GrpcTransport
from peer.transport.tls import load as load_tls

log = logging.getLogger("tadlora.daemon")


async def _static_peers(daemon: PeerDaemon, addresses: list[str]) -> None:
    """Keep asking static addresses until each answered (peers may start later than us)."""
    pending = set(addresses)
    while pending:
        for address in list(pending):
            if await daemon.add_static_peer(address):
                pending.discard(address)
        await asyncio.sleep(1.0)


async def _wait_for_peers(daemon: PeerDaemon, expected: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    while len(daemon.known) < expected and time.monotonic() < until:
        await asyncio.sleep(0.1)


async def run_daemon(run: RunConfig, net: DaemonConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tls = load_tls(net.tls_ca, net.tls_cert, net.tls_key, net.peer_id, net.run_id) if net.tls else None
    transport = GrpcTransport(Limits(chunk_size=net.chunk_size, frame_timeout=net.frame_timeout), tls)
    daemon = PeerDaemon(run, net, out, transport)
    daemon.resume()
    daemon.address = await transport.serve(daemon, net.listen)
    daemon.observer = observers_for(net.metrics, net.tensorboard, daemon.peer_id, net.run_id)
    metrics_port = next((o.port for o in daemon.observer.observers if hasattr(o, "port")), None)
    (out / "endpoint.json").write_text(json.dumps({"peer_id": daemon.peer_id, "address": daemon.address,
                                                   "pid": os.getpid(), "metrics_port": metrics_port}))
    if metrics_port is not None:
        log.info("%s: Prometheus metrics at http://%s:%d/metrics", daemon.peer_id,
                 net.metrics.rsplit(":", 1)[0] or "0.0.0.0", metrics_port)
    log.info("%s: listening on %s (run %s)", daemon.peer_id, daemon.address, net.run_id)
    if tls is None:
        log.warning("%s: NO CERTIFICATES: this daemon accepts factors from ANY machine that claims run %r; "
                    "fine for a local testbed, not for a shared LAN (see tadlora certs)", daemon.peer_id, net.run_id)
    else:
        log.info("%s: mutual TLS: only peers with a certificate of run %r are accepted", daemon.peer_id, net.run_id)
    discovery = None
    if net.mdns:
        interface = net.mdns_interface or net.listen.rsplit(":", 1)[0]
        discovery = MdnsDiscovery(
            PeerRecord(daemon.peer_id, net.run_id, daemon.address, PROTOCOL_VERSION, daemon.digest.hex()),
            on_found=lambda rec: daemon.add_peer(rec.peer_id, rec.address), on_lost=daemon.remove_peer,
            interfaces=[interface])
        await discovery.start()
    static = asyncio.create_task(_static_peers(daemon, net.static_peers))
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (daemon.stopping.set(), current.cancel()))
    try:
        try:
            await _wait_for_peers(daemon, run.peers - 1, net.discovery_wait)
            await daemon.run_rounds()
        except asyncio.CancelledError:
            log.info("%s: stopping at round %d", daemon.peer_id, daemon.round)
            return {"peer_id": daemon.peer_id, "rounds": daemon.round, "stopped": True}
        summary = await loop.run_in_executor(daemon.worker, daemon.finish)
        await asyncio.sleep(1.0)  # let neighbours finish their last exchanges with us
        return summary
    finally:
        _exit_if_shutdown_hangs(SHUTDOWN_GRACE_S, lambda: daemon.stopping.is_set() or (out / "summary.json").exists())
        static.cancel()
        if discovery is not None:
            await discovery.close()
        await transport.close()
        daemon.observer.close()
        daemon.worker.shutdown(wait=False, cancel_futures=True)


SHUTDOWN_GRACE_S = 20.0


def _exit_if_shutdown_hangs(seconds: float, work_done) -> None:
    """grpc.aio can block for good joining its poller thread while it shuts down (grpc/grpc#40989;
    seen here after a run under 80 % packet loss). A daemon whose results are written must still
    exit: after ``seconds`` of shutdown it leaves hard, with 0 if ``work_done()``, else 1."""
    def leave() -> None:
        code = 0 if work_done() else 1
        log.warning("shutdown still blocked after %.0f s (gRPC runtime); exiting with %d", seconds, code)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()


def main(run: RunConfig, net: DaemonConfig, out: Path) -> dict:
    try:
        import uvloop
    except ImportError:  # declared as a dependency; still run without it rather than not at all
        return asyncio.run(run_daemon(run, net, out))
    return uvloop.run(run_daemon(run, net, out))
