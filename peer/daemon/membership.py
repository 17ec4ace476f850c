"""Who this peer may link with: peers announced by mDNS or given as static addresses, each known only
once it has answered for its id.

What holds, with and without TLS (the README's security section says the same):

- An address for a peer id that is already known changes only when the new address proves the
  identity: it answers a Status call with that peer id and this run (over mutual TLS, on a connection
  whose certificate comes from the run's authority). A fake announcement of a known id at another
  address is refused (``identity``) or, if it never answers, never taken.
- Over TLS that proof runs over a handshake with a certificate of the run's authority: a peer that
  cannot complete it is refused (``membership``).
- A goodbye (an mDNS record withdrawn) removes a peer only at the address it was announced at, and
  only once that address no longer answers for the id: mDNS is not authenticated, so a forged
  goodbye for the real peer's own service name is checked, not believed.
- An announcement is remembered (up to ``MAX_REMEMBERED_ANNOUNCEMENTS``): one whose admission was
  skipped (too many in flight) or failed is tried again every ``ADMISSION_RETRY_EVERY_S``, so a crowd
  of fakes delays a real peer's admission but cannot keep it out.
- Every announced peer, with or without TLS, is known only once it answers a Status call with its id
  and this run: an announcement at a dead port, a tarpit that never answers, a crowd of fake services
  never enter the rounds. Without TLS anyone on the LAN who runs the protocol can still claim a new
  id; only TLS keeps such a peer out.
- A known peer that stops answering costs a bounded number of waiting rounds, then is dormant (not
  attempted, not in the degree) until it answers again (``peer.daemon.links``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from peer.daemon.timing import (
    ADMISSION_RETRY_EVERY_S,
    ADMISSION_RETRY_S,
    ADMISSION_STATUS_TIMEOUT_S,
    ADMISSION_TRIES,
    GOODBYE_CHECK_TIMEOUT_S,
    STATIC_STATUS_TIMEOUT_S,
)
from peer.transport.base import ExchangeFailed, HandshakeRefused, Reason, Transport
from peer.transport.ids import peer_id_problem

log = logging.getLogger("tadlora.daemon")

# Admissions in flight at once: each is a few Status calls; beyond this, announcements wait for their
# retry instead of piling up tasks for a crowd of fakes.
MAX_PENDING_ADMISSIONS = 64
# Peers known at once. Without TLS every machine that answers the protocol for the run is a member,
# so a crowd of them can join (and weigh in the mixing); this bounds what they cost in memory, in
# the Status answer and in rounds. Far above any lab's run.
MAX_KNOWN_PEERS = 1024
# Announcements remembered for the retries (oldest forgotten first): a crowd of fakes cannot grow memory.
MAX_REMEMBERED_ANNOUNCEMENTS = 1024


class Membership:
    def __init__(
        self,
        peer_id: str,
        run_id: str,
        digest: bytes,
        transport: Transport,
        tls: bool,
        count_rejection: Callable[[str, str, str], None],
    ) -> None:
        self.peer_id, self.run_id, self.digest, self.transport, self.tls = peer_id, run_id, digest, transport, tls
        self.count_rejection = count_rejection
        self.known: dict[str, str] = {}  # peer id -> address
        self.admissions: dict[tuple[str, str], asyncio.Task] = {}
        self.announced: OrderedDict[str, str] = OrderedDict()  # peer id -> last announced address
        self.tried_at: dict[tuple[str, str], float] = {}
        self.checks: set[asyncio.Task] = set()

    def add_peer(self, peer_id: str, address: str) -> None:
        """A peer announced by mDNS: known once it answers for its id and this run (``_admit``)."""
        if peer_id == self.peer_id:
            return
        self.announced[peer_id] = address
        self.announced.move_to_end(peer_id)
        if len(self.announced) > MAX_REMEMBERED_ANNOUNCEMENTS:
            forgotten, _ = self.announced.popitem(last=False)
            self.tried_at = {k: v for k, v in self.tried_at.items() if k[0] != forgotten}
        if self.known.get(peer_id) != address:
            self._admit_later(peer_id, address)

    def retry_admissions(self) -> None:
        """Between rounds: announced peers not admitted at their address, tried again now and then."""
        now = asyncio.get_running_loop().time()
        waiting = [
            (self.tried_at.get((pid, address), -1e18), pid, address)
            for pid, address in self.announced.items()
            if self.known.get(pid) != address
        ]
        for tried, peer_id, address in sorted(waiting):  # least recently tried first: a crowd cannot starve one
            if now - tried >= ADMISSION_RETRY_EVERY_S:
                self._admit_later(peer_id, address)

    async def answers_as(self, address: str, peer_id: str) -> bool:
        """Does ``address`` answer a Status call as ``peer_id`` of this run?"""
        try:
            status = await self.transport.status(address, timeout=GOODBYE_CHECK_TIMEOUT_S, expect=peer_id)
        except ExchangeFailed:
            return False
        return status.peer_id == peer_id and status.run_id == self.run_id

    def know(self, peer_id: str, address: str) -> None:
        if peer_id not in self.known and len(self.known) >= MAX_KNOWN_PEERS:
            self.count_rejection(Reason.MEMBERSHIP, f"{peer_id} not taken: {MAX_KNOWN_PEERS} peers known", address)
            return
        moved = self.known.get(peer_id)
        self.known[peer_id] = address
        log.info("%s: found %s at %s%s", self.peer_id, peer_id, address, f" (was {moved})" if moved else "")

    def _admit_later(self, peer_id: str, address: str) -> None:
        key = (peer_id, address)
        if key in self.admissions or len(self.admissions) >= MAX_PENDING_ADMISSIONS:
            return
        self.tried_at[key] = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self._admit(peer_id, address))
        self.admissions[key] = task
        task.add_done_callback(lambda _: self.admissions.pop(key, None))

    async def _admit(self, peer_id: str, address: str) -> None:
        """Ask the announced address who it is (over mutual TLS when the run has it: only a certificate
        of the run's authority completes the handshake). Known only if it answers with ``peer_id`` and
        this run; a failed handshake or another identity is refused (logged, counted); an address that
        never answers in ``ADMISSION_TRIES`` tries is not taken."""
        for _ in range(ADMISSION_TRIES):
            try:
                status = await self.transport.status(address, timeout=ADMISSION_STATUS_TIMEOUT_S, expect=peer_id)
            except ExchangeFailed as exc:
                if isinstance(exc, HandshakeRefused):
                    self.count_rejection(
                        Reason.MEMBERSHIP,
                        f"{peer_id} cannot prove membership of run {self.run_id!r}: TLS handshake failed",
                        address,
                    )
                    return
                await asyncio.sleep(ADMISSION_RETRY_S)
                continue
            if status.peer_id != peer_id or status.run_id != self.run_id:
                self.count_rejection(
                    Reason.IDENTITY,
                    f"announced as {peer_id} of run {self.run_id!r}, "
                    f"answers as {status.peer_id[:60]!r} of run {status.run_id[:60]!r}",
                    address,
                )
                return
            self.know(peer_id, address)
            return
        log.info("%s: not taking %s at %s: it never answered", self.peer_id, peer_id, address)

    def remove_peer(self, peer_id: str, address: str | None = None) -> None:
        """A peer's announcement withdrawn (a goodbye): removed if it is known at that ``address`` and
        that address no longer answers for it (checked in the background); ``None``: at once."""
        if address is None:
            self._forget(peer_id)
            return
        if self.announced.get(peer_id) == address:
            del self.announced[peer_id]
        if self.known.get(peer_id) != address:
            return
        task = asyncio.ensure_future(self._check_goodbye(peer_id, address))
        self.checks.add(task)
        task.add_done_callback(self.checks.discard)

    async def _check_goodbye(self, peer_id: str, address: str) -> None:
        if await self.answers_as(address, peer_id):
            log.info("%s: a goodbye for %s at %s, which still answers: kept", self.peer_id, peer_id, address)
            self.announced.setdefault(peer_id, address)
            return
        if self.known.get(peer_id) == address:
            self._forget(peer_id)

    def _forget(self, peer_id: str) -> None:
        if self.known.pop(peer_id, None):
            log.info("%s: lost %s", self.peer_id, peer_id)

    async def add_static_peer(self, address: str) -> bool:
        """Ask a static address who it is and keep it if it is of this run and schema; False while it
        does not answer (it may start later)."""
        try:
            status = await self.transport.status(address, timeout=STATIC_STATUS_TIMEOUT_S)
        except ExchangeFailed as exc:
            if isinstance(exc, HandshakeRefused):
                self.count_rejection(
                    Reason.MEMBERSHIP,
                    f"static peer cannot prove membership of run {self.run_id!r}: TLS handshake failed",
                    address,
                )
                return True  # refused for good: stop asking
            return False
        if why := peer_id_problem(status.peer_id):
            self.count_rejection(Reason.IDENTITY, f"static peer answers with an invalid id: {why}", address)
            return True
        if status.run_id == self.run_id and status.schema_digest == self.digest:
            if status.peer_id == self.peer_id or self.known.get(status.peer_id) == address:
                return True
            if status.peer_id in self.known:
                self.add_peer(status.peer_id, address)  # a known id at another address proves it first
            elif self.tls and not await self.answers_as(address, status.peer_id):
                # any member's certificate answered: only one that names the id it claims is taken
                self.count_rejection(
                    Reason.IDENTITY, f"static peer answers as {status.peer_id!r} without its certificate", address
                )
            else:
                self.know(status.peer_id, address)
        else:
            log.info(
                "%s: ignoring %s at %s: run %r or another schema",
                self.peer_id,
                status.peer_id[:60],
                address,
                status.run_id[:60],
            )
        return True

    def close(self) -> None:
        for task in [*self.admissions.values(), *self.checks]:
            task.cancel()
