"""``tadlora run``: start one peer daemon in this process (asyncio on uvloop) and run it to the end.

Writes to ``--out DIR``: ``endpoint.json`` (peer id, address, pid) as soon as it listens,
``rounds.jsonl`` (one line per round), ``checkpoint.pt`` (every round), and at the end
``summary.json`` and ``peers/<peer-id>/adapter/`` (PEFT format). SIGINT and SIGTERM stop it at any
moment within a few seconds (``peer.daemon.signals``); a restart with the same ``--out`` resumes from
the checkpoint.

Listening on every interface (``0.0.0.0``, the default), it announces this machine's own address
(``peer.discovery.mdns.announced_address``), in mDNS and in ``endpoint.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path

from peer.config import ConfigError, DaemonConfig, RunConfig
from peer.daemon.memory import keep_freed_memory_for_reuse
from peer.daemon.node import PeerDaemon
from peer.daemon.observe import observers_for
from peer.daemon.signals import StopSignals, exit_if_shutdown_hangs
from peer.daemon.timing import PEER_WAIT_POLL_S, SHUTDOWN_GRACE_S, STATIC_PEER_RETRY_S
from peer.discovery.mdns import DUPLICATE_WINDOW_S, DuplicatePeerId, MdnsDiscovery, PeerRecord, announced_address
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
            if await daemon.membership.add_static_peer(address):
                pending.discard(address)
        await asyncio.sleep(STATIC_PEER_RETRY_S)


async def _wait_for_peers(daemon: PeerDaemon, expected: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    while len(daemon.known) < expected and time.monotonic() < until:
        await asyncio.sleep(PEER_WAIT_POLL_S)


def lock_folder(out: Path) -> object:
    """Hold ``out/.lock`` for the life of the process: a second daemon pointed at the same folder (the
    same peer id and run with the default --out, say) would resume from and overwrite the first one's
    checkpoint. The lock goes with the process, also when it is killed."""
    handle = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held open on purpose: the lock lives as long as the handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"out: the folder {out} is in use by another daemon; give each daemon its own --out"
        ) from None
    return handle


async def run_daemon(run: RunConfig, net: DaemonConfig, out: Path, signals: StopSignals | None = None) -> dict:
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    held = lock_folder(out)  # noqa: F841 - released when the process ends
    tls = load_tls(net.tls_ca, net.tls_cert, net.tls_key, net.peer_id, net.run_id) if net.tls else None
    lane_min_bytes = net.lane_min_bytes if net.lane else None
    limits = Limits(chunk_size=net.chunk_size, frame_timeout=net.frame_timeout, lane_min_bytes=lane_min_bytes)
    transport = GrpcTransport(limits, tls, lane_port=net.lane_port)
    daemon = PeerDaemon.from_config(run, net, out, transport)
    keep_freed_memory_for_reuse()  # after the model is built: loading it leaves no memory behind
    daemon.resume()
    daemon.address = announced_address(await transport.serve(daemon, net.listen), net.mdns_interface)
    daemon.observer = observers_for(net.metrics, net.tensorboard, daemon.peer_id, net.run_id)
    metrics_port = next((o.port for o in daemon.observer.observers if hasattr(o, "port")), None)
    (out / "endpoint.json").write_text(
        json.dumps(
            {"peer_id": daemon.peer_id, "address": daemon.address, "pid": os.getpid(), "metrics_port": metrics_port}
        )
    )
    if metrics_port is not None:
        log.info(
            "%s: Prometheus metrics at http://%s:%d/metrics",
            daemon.peer_id,
            net.metrics.rsplit(":", 1)[0] or "0.0.0.0",
            metrics_port,
        )
    log.info("%s: listening on %s (run %s)", daemon.peer_id, daemon.address, net.run_id)
    if transport.lane_port:
        log.info(
            "%s: payloads of %d bytes and more go on lanes; this peer's listens on port %d",
            daemon.peer_id,
            lane_min_bytes,
            transport.lane_port,
        )
    trainer = daemon.local.trainer
    # where the work runs: with --device auto, a user reads here whether the GPU was found
    log.info(
        "%s: training %s on %s in %s; factors sent as %s",
        daemon.peer_id,
        run.model,
        trainer.device,
        trainer.precision.value,
        run.wire_dtype,
    )
    if daemon.address.rsplit(":", 1)[0] != net.listen.rsplit(":", 1)[0]:
        log.info(
            "%s: bound to every interface (%s); peers are told %s (--mdns-interface to tell another)",
            daemon.peer_id,
            net.listen,
            daemon.address,
        )
    if tls is None:
        log.warning(
            "%s: NO CERTIFICATES: this daemon accepts factors from ANY machine that claims run %r; "
            "fine for a local testbed, not for a shared LAN (see tadlora certs)",
            daemon.peer_id,
            net.run_id,
        )
    else:
        log.info("%s: mutual TLS: only peers with a certificate of run %r are accepted", daemon.peer_id, net.run_id)
    discovery = None
    static = None
    withdrawn = False  # refused to start: leave no trace in the folder
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    try:
        if net.mdns:
            interface = net.mdns_interface or daemon.address.rsplit(":", 1)[0]
            discovery = MdnsDiscovery(
                PeerRecord(daemon.peer_id, net.run_id, daemon.address, PROTOCOL_VERSION, daemon.digest.hex()),
                on_found=lambda rec: daemon.membership.add_peer(rec.peer_id, rec.address),
                on_lost=daemon.membership.remove_peer,
                interfaces=[interface],
                on_refused=lambda reason, detail, name: daemon.count_rejection(f"mdns-{reason}", detail, name),
            )
            try:
                await discovery.start()
            except DuplicatePeerId as duplicate:
                # a real twin answers for our id and run; a fake announcement of it (anyone can send one)
                # must not keep this daemon from starting: then start again without the check
                if await daemon.membership.answers_as(duplicate.address, daemon.peer_id):
                    withdrawn = True
                    raise  # the finally below cleans up
                log.warning(
                    "%s: %s announces this peer id but does not answer for it; ignoring it",
                    daemon.peer_id,
                    duplicate.address,
                )
                await discovery.start(check_duplicate=False)
        static = asyncio.create_task(_static_peers(daemon, net.static_peers))
        if signals is not None:
            signals.serving(loop, lambda: _stop_now(daemon, current))
        try:
            waited = DUPLICATE_WINDOW_S if discovery is not None else 0.0  # start() browsed that long
            await _wait_for_peers(daemon, run.peers - 1, max(0.0, net.discovery_wait - waited))
            log.info(
                "%s: starting at round %d with %d of %d peers known",
                daemon.peer_id,
                daemon.round,
                len(daemon.known),
                run.peers - 1,
            )
            await daemon.run_rounds()
            # links whose outcome is still unknown: a neighbour that was down may answer now
            await daemon.settle_remaining(net.round_timeout_max)
        except asyncio.CancelledError:
            if not daemon.stopping.is_set():
                raise
            log.info("%s: stopping at round %d", daemon.peer_id, daemon.round)
            return {"peer_id": daemon.peer_id, "rounds": daemon.round, "stopped": True}
        if signals is not None:  # from here on a stop lets the results be written; its watchdog bounds that
            signals.serving(loop, daemon.stopping.set)
        summary = await loop.run_in_executor(daemon.worker, daemon.finish)
        # keep answering until the neighbours are done too: one may still ask the outcome of a last link
        await daemon.linger(net.round_timeout_max, grace=net.round_timeout_min)
        return summary
    finally:
        if signals is not None:  # a stop during the clean-up lets it finish; its watchdog bounds it
            signals.serving(loop, daemon.stopping.set)
        exit_if_shutdown_hangs(SHUTDOWN_GRACE_S, lambda: daemon.stopping.is_set() or (out / "summary.json").exists())
        daemon.observer.close()  # first: a hung step below ends in the watchdog's os._exit, which flushes nothing
        if static is not None:
            static.cancel()
        if discovery is not None:
            await discovery.close()
        daemon.kill()  # probes and outcome queries must not outlive the transport
        await transport.close()
        if daemon.worker is not None:
            daemon.worker.shutdown(wait=False, cancel_futures=True)
        if signals is not None:
            signals.leaving()
        if withdrawn:
            _withdraw(out, created)


def _stop_now(daemon: PeerDaemon, rounds: asyncio.Task | None) -> None:
    """A stop signal while the rounds run: stop after the current step (the rounds' task is cancelled)."""
    daemon.stopping.set()
    if rounds is not None:
        rounds.cancel()


def _withdraw(out: Path, created: bool) -> None:
    """A daemon that may not run (another answers for its id) leaves no trace: its endpoint.json names
    an address that is closed now, and a folder it created holds nothing else."""
    (out / "endpoint.json").unlink(missing_ok=True)
    if created:
        (out / LOCK_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else was written there after all: keep it
            out.rmdir()


LOCK_FILE = ".lock"


def main(run: RunConfig, net: DaemonConfig, out: Path, signals: StopSignals | None = None) -> dict:
    """Run the daemon to its end; ``signals``: the stop handlers, installed already (``tadlora run``
    does it first thing), else installed here."""
    if signals is None:
        signals = StopSignals()
        signals.install()
    try:
        import uvloop
    except ImportError:  # declared as a dependency; still run without it rather than not at all
        return asyncio.run(run_daemon(run, net, out, signals))
    return uvloop.run(run_daemon(run, net, out, signals))
