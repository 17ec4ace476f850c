"""An in-process transport: peers in one event loop call each other directly.

It runs the same swap and commit protocol and the same payload checks as gRPC, so the contract tests
hold for both; it skips only the bytes on a socket. Addresses are names in a ``MemoryNetwork``.

A ``NetworkFaults`` object, given to the network, decides the fate of every message (``Step``): lost,
delayed, or delivered twice. A lost message looks to its sender as it would on a socket: silence until
its timeout, and the stream's other end gives up after one frame timeout. The fault simulator
(``peer.faultsim``) drives these; by default nothing is lost.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import TypeVar

from peer.transport.base import (
    ConnectionLost,
    ExchangeFailed,
    ExchangeOutcomeUnknown,
    ExchangeServer,
    FactorMessage,
    NetworkFaults,
    Reason,
    Rejected,
    StatusInfo,
    Step,
    Transport,
    Validator,
)
from peer.transport.framing import Limits, check_header, check_payload

T = TypeVar("T")


class MemoryNetwork:
    """A namespace of addresses; each test makes its own."""

    def __init__(self, faults: NetworkFaults | None = None) -> None:
        self.servers: dict[str, ExchangeServer] = {}
        self.faults = faults or NetworkFaults()
        self._next = 0
        self._background: set[asyncio.Task] = set()

    def bind(self, address: str, server: ExchangeServer) -> str:
        if address.endswith(":0"):
            self._next += 1
            address = f"{address[:-2]}:{self._next}"
        if address in self.servers:
            raise OSError(f"address {address} is in use")
        self.servers[address] = server
        return address

    def unbind(self, address: str) -> None:
        self.servers.pop(address, None)

    def later(self, delay: float, call: Callable[[], Awaitable]) -> None:
        """Run ``call`` after ``delay`` seconds (a server noticing that a stream died)."""

        async def run():
            await asyncio.sleep(delay)
            await call()

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class MemoryTransport(Transport):
    def __init__(self, network: MemoryNetwork, limits: Limits | None = None) -> None:
        self.network, self.limits = network, limits or Limits()
        self.bound: list[str] = []

    @property
    def faults(self) -> NetworkFaults:
        return self.network.faults

    @property
    def me(self) -> str:
        return self.bound[0] if self.bound else "client"

    def _server(self, address: str) -> ExchangeServer:
        server = self.network.servers.get(address)
        if server is None:
            raise ExchangeFailed(f"nothing listens at {address}")
        return server

    def _receive(self, server: ExchangeServer, message: FactorMessage) -> FactorMessage:
        try:
            check_header(message.header, self.limits)
            check_payload(message)
        except Rejected as r:
            server.count_rejection(r.reason, r.detail, "memory")
            raise
        return copy.deepcopy(message)  # the receiver must never share the sender's buffers

    async def _arrives(self, step: Step, remote: str, server: ExchangeServer, to_server: bool = True) -> bool:
        """A message to (or from) the server at ``remote`` was delivered, and that server still listens
        there (it did not crash or restart meanwhile)."""
        source, destination = (self.me, remote) if to_server else (remote, self.me)
        delivered = await self.faults.deliver(step, source, destination)
        return delivered and self.network.servers.get(remote) is server

    @staticmethod
    async def _silence_until(until: float) -> None:
        await asyncio.sleep(max(0.0, until - asyncio.get_running_loop().time()))

    async def serve(self, server: ExchangeServer, address: str) -> str:
        bound = self.network.bind(address, server)
        self.bound.append(bound)
        return bound

    async def exchange(
        self, address: str, outgoing: FactorMessage, validate: Validator, timeout: float, *, expect: str | None = None
    ) -> FactorMessage:
        until = asyncio.get_running_loop().time() + timeout
        server = self._server(address)
        incoming = self._receive(server, outgoing)
        header = incoming.header
        if not await self._arrives(Step.SWAP, address, server):
            await self._silence_until(until)
            raise ExchangeFailed(f"{address} did not answer within {timeout:g} s")
        reply, responding = await self._respond(address, server, incoming, until)
        if not await self._arrives(Step.REPLY, address, server, to_server=False):
            self.network.later(self.limits.frame_timeout, lambda: self._abort(server, header, responding))
            await self._silence_until(until)
            raise ExchangeFailed(f"{address} did not answer within {timeout:g} s")
        try:
            check_header(reply.header, self.limits)
            check_payload(reply)
            await validate(reply)
        except Rejected:
            await self._abort(server, header, responding)
            raise
        if responding is not None:
            await responding  # the server's refusal of our factors, which came after its reply: nothing counts
        committed = await self._commit(address, server, header, reply)
        if not await self._arrives(Step.ACK, address, server, to_server=False):
            await asyncio.sleep(self.limits.frame_timeout)
            raise ExchangeOutcomeUnknown(reply)
        if not committed:
            raise Rejected(Reason.ROUND_CLOSED, "the server mixed this round already")
        return copy.deepcopy(reply)

    async def _respond(
        self, address: str, server: ExchangeServer, incoming: FactorMessage, until: float
    ) -> tuple[FactorMessage, asyncio.Future[FactorMessage] | None]:
        """As over gRPC: the header first (``screen``), then the whole message (``respond``). The server's
        reply; and, when it gave the reply at the screen already, its ``respond`` still running: the
        reply reaches the client while the server validates the client's factors."""
        header = incoming.header

        async def screened() -> tuple[FactorMessage, asyncio.Future[FactorMessage] | None]:
            early = await server.screen(header)
            if early is None:
                return await server.respond(incoming), None
            responding = asyncio.ensure_future(
                self._at_server(address, server, header, lambda: server.respond(incoming), until)
            )
            # a client that gives up (its round's deadline) leaves it running: its refusal is no error then
            responding.add_done_callback(lambda done: done.cancelled() or done.exception())
            return early, responding

        return await self._at_server(address, server, header, screened, until)

    async def _at_server(
        self, address: str, server: ExchangeServer, header, call: Callable[[], Awaitable[T]], until: float
    ) -> T:
        left = max(0.0, until - asyncio.get_running_loop().time())
        try:
            return await asyncio.wait_for(self.faults.at_server(address, call), left)
        except Rejected as r:  # counted where it was refused, as over gRPC
            server.count_rejection(r.reason, r.detail, "memory")
            raise
        except TimeoutError:
            await server.abort(header)
            raise ExchangeFailed(f"{address} did not answer within {left:g} s") from None

    @staticmethod
    async def _abort(server: ExchangeServer, header, responding: asyncio.Future | None) -> None:
        """The stream ends without a commit: once the server is done with our factors (over gRPC it
        reads them to the end), it forgets what it staged."""
        if responding is not None:
            await asyncio.gather(responding, return_exceptions=True)
        await server.abort(header)

    async def _commit(self, address: str, server: ExchangeServer, header, reply: FactorMessage) -> bool:
        if not await self._arrives(Step.COMMIT, address, server):
            self.network.later(self.limits.frame_timeout, lambda: server.abort(header))
            await asyncio.sleep(self.limits.frame_timeout)
            raise ExchangeOutcomeUnknown(reply)
        try:
            committed = await self.faults.at_server(address, lambda: server.commit(header))
            if self.faults.duplicate(Step.COMMIT, self.me, address):
                committed = await self.faults.at_server(address, lambda: server.commit(header))
        except ConnectionLost:
            raise ExchangeOutcomeUnknown(reply) from None
        return committed

    async def _call(self, step: Step, address: str, timeout: float):
        """The server at ``address`` once the request and the answer both arrive, else ExchangeFailed."""
        server = self._server(address)
        until = asyncio.get_running_loop().time() + timeout
        if not await self._arrives(step, address, server):
            await self._silence_until(until)
            raise ExchangeFailed(f"{address}: no answer within {timeout:g} s")
        return server

    async def _answered(self, step: Step, address: str, server: ExchangeServer, until: float) -> None:
        if not await self._arrives(step, address, server, to_server=False):
            await self._silence_until(until)
            raise ExchangeFailed(f"{address}: no answer")

    async def status(self, address: str, timeout: float, *, expect: str | None = None) -> StatusInfo:
        until = asyncio.get_running_loop().time() + timeout
        server = await self._call(Step.STATUS, address, timeout)
        answer = copy.deepcopy(server.status())
        await self._answered(Step.STATUS, address, server, until)
        return answer

    async def fetch(
        self, address: str, run_id: str, peer_id: str, timeout: float, *, expect: str | None = None
    ) -> FactorMessage:
        until = asyncio.get_running_loop().time() + timeout
        server = await self._call(Step.FETCH, address, timeout)
        try:
            answer = copy.deepcopy(
                await self.faults.at_server(address, lambda: server.current_factors(run_id, peer_id))
            )
        except Rejected as r:
            server.count_rejection(r.reason, r.detail, "memory")
            raise
        await self._answered(Step.FETCH, address, server, until)
        return answer

    async def outcome(
        self, address: str, run_id: str, peer_id: str, round_: int, timeout: float, *, expect: str | None = None
    ) -> bool | None:
        until = asyncio.get_running_loop().time() + timeout
        try:
            server = await self._call(Step.OUTCOME, address, timeout)
            answer = server.outcome(peer_id, round_, run_id)
            await self._answered(Step.OUTCOME, address, server, until)
        except ExchangeFailed:
            return None
        return answer

    async def close(self) -> None:
        for address in self.bound:
            self.network.servers.pop(address, None)
        self.bound.clear()
