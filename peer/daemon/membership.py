"""Who this peer may link with: peers announced by mDNS or given as static addresses, admitted once they
prove (over mutual TLS) or claim (without it) that they belong to the run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from peer.transport.base import ExchangeFailed, Transport

log = logging.getLogger("tadlora.daemon")

ADMISSION_TRIES = 5
ADMISSION_STATUS_TIMEOUT_S = 3.0
ADMISSION_RETRY_S = 1.0
STATIC_STATUS_TIMEOUT_S = 2.0


def tls_refused(exc: ExchangeFailed) -> bool:
    """The remote end failed the TLS handshake: it holds no certificate of this run's authority."""
    return "handshake" in str(exc).lower()


class Membership:
    def __init__(self, peer_id: str, run_id: str, digest: bytes, transport: Transport, tls: bool,
                 count_rejection: Callable[[str, str, str], None]) -> None:
        self.peer_id, self.run_id, self.digest, self.transport, self.tls = peer_id, run_id, digest, transport, tls
        self.count_rejection = count_rejection
        self.known: dict[str, str] = {}          # peer id -> address
        self.admissions: set[asyncio.Task] = set()

    def add_peer(self, peer_id: str, address: str) -> None:
        """A peer announced by mDNS. Over TLS it joins only after proving membership (``_admit``)."""
        if peer_id == self.peer_id or self.known.get(peer_id) == address:
            return
        if self.tls:
            task = asyncio.ensure_future(self._admit(peer_id, address))
            self.admissions.add(task)
            task.add_done_callback(self.admissions.discard)
            return
        self.know(peer_id, address)

    def know(self, peer_id: str, address: str) -> None:
        self.known[peer_id] = address
        log.info("%s: found %s at %s", self.peer_id, peer_id, address)

    async def _admit(self, peer_id: str, address: str) -> None:
        """Open a mutual-TLS connection to an announced peer: only a certificate of this run's
        authority completes the handshake. A failed handshake refuses the peer (logged, counted as
        ``membership``); a peer that does not answer yet is tried again, then taken like any silent
        peer (every later exchange is over the same TLS, so nothing unproven is ever mixed)."""
        for _ in range(ADMISSION_TRIES):
            try:
                status = await self.transport.status(address, timeout=ADMISSION_STATUS_TIMEOUT_S)
            except ExchangeFailed as exc:
                if tls_refused(exc):
                    self.count_rejection("membership", f"{peer_id} cannot prove membership of run "
                                         f"{self.run_id!r}: TLS handshake failed", address)
                    return
                await asyncio.sleep(ADMISSION_RETRY_S)
                continue
            if status.peer_id != peer_id or status.run_id != self.run_id:
                self.count_rejection("identity", f"announced as {peer_id} of run {self.run_id!r}, "
                                     f"answers as {status.peer_id} of run {status.run_id!r}", address)
                return
            break
        self.know(peer_id, address)

    def remove_peer(self, peer_id: str) -> None:
        if self.known.pop(peer_id, None):
            log.info("%s: lost %s", self.peer_id, peer_id)

    async def add_static_peer(self, address: str) -> bool:
        """Ask a static address who it is and keep it if it is of this run and schema; False while it
        does not answer (it may start later)."""
        try:
            status = await self.transport.status(address, timeout=STATIC_STATUS_TIMEOUT_S)
        except ExchangeFailed as exc:
            if self.tls and tls_refused(exc):
                self.count_rejection("membership", f"static peer cannot prove membership of run "
                                     f"{self.run_id!r}: TLS handshake failed", address)
                return True  # refused for good: stop asking
            return False
        if status.run_id == self.run_id and status.schema_digest == self.digest:
            if status.peer_id != self.peer_id and self.known.get(status.peer_id) != address:
                self.know(status.peer_id, address)  # its answer came over this run's TLS, if any
        else:
            log.info("%s: ignoring %s at %s: run %r or another schema", self.peer_id, status.peer_id, address,
                     status.run_id)
        return True

    def close(self) -> None:
        for task in self.admissions:
            task.cancel()
