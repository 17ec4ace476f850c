"""An in-process transport: peers in one event loop call each other directly.

It runs the same swap and commit protocol and the same payload checks as gRPC, so the contract tests
hold for both; it skips only the bytes on a socket. Addresses are names in a ``MemoryNetwork``.
"""

from __future__ import annotations

import asyncio
import copy

from peer.transport.base import (ExchangeFailed, ExchangeServer, FactorMessage, Rejected, StatusInfo, Transport,
                                 Validator)
from peer.transport.framing import Limits, check_header, check_payload


class MemoryNetwork:
    """A namespace of addresses; each test makes its own."""

    def __init__(self) -> None:
        self.servers: dict[str, ExchangeServer] = {}
        self._next = 0

    def bind(self, address: str, server: ExchangeServer) -> str:
        if address.endswith(":0"):
            self._next += 1
            address = f"{address[:-2]}:{self._next}"
        if address in self.servers:
            raise OSError(f"address {address} is in use")
        self.servers[address] = server
        return address


class MemoryTransport(Transport):
    def __init__(self, network: MemoryNetwork, limits: Limits = Limits()) -> None:
        self.network, self.limits = network, limits
        self.bound: list[str] = []

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

    async def serve(self, server: ExchangeServer, address: str) -> str:
        bound = self.network.bind(address, server)
        self.bound.append(bound)
        return bound

    async def exchange(self, address: str, outgoing: FactorMessage, validate: Validator,
                       timeout: float) -> FactorMessage:
        server = self._server(address)
        incoming = self._receive(server, outgoing)
        try:
            reply = await asyncio.wait_for(server.respond(incoming), timeout)
        except Rejected as r:  # counted where it was refused, as over gRPC
            server.count_rejection(r.reason, r.detail, "memory")
            raise
        except asyncio.TimeoutError:
            await server.abort(incoming.header)
            raise ExchangeFailed(f"{address} did not answer within {timeout:g} s") from None
        check_header(reply.header, self.limits)
        check_payload(reply)
        try:
            await validate(reply)
        except Rejected:
            await server.abort(incoming.header)
            raise
        if not await server.commit(incoming.header):
            raise Rejected("round-closed", "the server mixed this round already")
        return copy.deepcopy(reply)

    async def status(self, address: str, timeout: float) -> StatusInfo:
        return copy.deepcopy(self._server(address).status())

    async def fetch(self, address: str, run_id: str, timeout: float) -> FactorMessage:
        return copy.deepcopy(await self._server(address).current_factors(run_id))

    async def outcome(self, address: str, run_id: str, peer_id: str, round_: int, timeout: float) -> bool | None:
        return self._server(address).outcome(peer_id, round_)

    async def close(self) -> None:
        for address in self.bound:
            self.network.servers.pop(address, None)
        self.bound.clear()
