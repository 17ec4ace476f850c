"""The payload lane: a swap's payloads on a plain TCP connection beside its gRPC stream.

gRPC's Python API copies every message it receives, slice by slice into a ``bytearray`` and then
into ``bytes``, and every message it sends into a slice of its own; HTTP/2 frames it in 16 KiB
pieces on top. At 30 MB that held a swap to about 0.4 of a raw socket (``benchmarks/README.md``
section 5). On the lane the bytes go as on the raw socket: ``sendall`` from the encoded payload,
``recv_into`` the payload buffer (hashed as it lands), each direction in a thread of its own (the
socket calls release the GIL), both directions at once.

The stream still carries everything else: both headers, any refusal, the commit and its ack. So a
swap's outcome is decided exactly as before, and a link counts at both ends or at neither. A swap
on the lane:

1. The client connects to the lane port the server named in an earlier reply header and sends a
   hello: ``LANE_MAGIC``, a random token and its payload's size; its payload follows on the same
   connection. Its header, on the stream, carries the token.
2. The server claims the connection whose hello carried the token of the header it read (waiting
   for the hello at most ``frame_timeout``), reads the payload from it, and sends its own reply's
   payload on it, after a reply header on the stream that carries the same token.
3. Both close the connection when the swap ends: a lane carries one swap, so a swap cut short
   leaves nothing behind for the next.

Over TLS there is no lane: every payload goes through gRPC, encrypted. A server that listens for
lanes names the port in each reply header; a client sends on the lane only payloads of at least
``Limits.lane_min_bytes``. A peer that predates the lane never names a port, so it is never sent a
token.

What a remote peer can make a server hold: connections that wait for their hello or their claim,
at most ``Limits.max_streams`` in all and ``max_streams_per_address`` from one address, each closed
after ``frame_timeout``; a hello is 32 bytes; a payload is read only into the buffer of a header that
passed the screen and the byte budget. The lane adds no authentication to an insecure run's: as on
its gRPC streams, anyone who can reach the port can talk to it (a token is 128 random bits, so a
third party cannot take over a swap's lane without seeing the traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from peer.errors import TadloraError
from peer.transport.base import Reason, Rejected
from peer.transport.codec import Buffer, new_payload_digest

log = logging.getLogger("tadlora.transport")

LANE_MAGIC = b"TADLANE1"
TOKEN_BYTES = 16
# the hello: magic, token, the size of the payload that follows (little endian)
_HELLO = struct.Struct("<8s16sQ")
HELLO_BYTES = _HELLO.size
# received bytes are hashed in slices of this size as they land, while they are still in the cache
RECEIVE_SLICE_BYTES = 1 << 20

T = TypeVar("T")


class LaneBroken(TadloraError, ConnectionError):
    """The lane's connection failed, or ended before the whole payload came."""


def new_token() -> bytes:
    return os.urandom(TOKEN_BYTES)


def host_of(address: str) -> str:
    """``10.0.0.2:50051`` -> ``10.0.0.2``; ``[::1]:50051`` -> ``::1``."""
    return address.rsplit(":", 1)[0].strip("[]")


async def _in_thread(work: Callable[[], T]) -> T:
    """``work`` in a thread of its own. Not a pool: a send that blocks on a slow reader must never
    keep the receive of the same swap, or of another, waiting for a free worker."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result, error) -> None:
        if done.done():  # the awaiting task was cancelled meanwhile
            return
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def run() -> None:
        result, error = None, None
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the event loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="tadlora-lane", daemon=True).start()
    return await done


class Lane:
    """One swap's connection. Its socket blocks, and only threads of ``_in_thread`` call it. ``close``
    (from the event loop) shuts it down, which ends any call blocked on it at once; its descriptor is
    closed only once no thread uses it any more, so that a thread between two calls never meets a
    descriptor number that the process has given to another connection meanwhile."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self._lock = threading.Lock()  # guards the three below, from the loop and the threads
        self._using, self._shut, self._released = 0, False, False

    async def send(self, payload: Buffer, deadline: float) -> None:
        """All of ``payload`` by the event loop's time ``deadline``; LaneBroken, or TimeoutError at the
        deadline (the lane is closed then)."""
        view = memoryview(payload).cast("B")
        await self._bounded(lambda: self.sock.sendall(view), deadline)

    async def receive(self, size: int, deadline: float) -> tuple[bytearray, bytes]:
        """``size`` bytes by ``deadline``, and their ``payload_digest``; LaneBroken, or TimeoutError at
        the deadline (the lane is closed then)."""
        buffer, digest = bytearray(size), new_payload_digest()

        def read() -> None:
            view, got = memoryview(buffer), 0
            while got < size:
                n = self.sock.recv_into(view[got : got + RECEIVE_SLICE_BYTES])
                if n == 0:
                    raise LaneBroken(f"the lane ended after {got} of {size} bytes")
                digest.update(view[got : got + n])
                got += n

        await self._bounded(read, deadline)
        return buffer, digest.digest()

    async def _bounded(self, work: Callable[[], None], deadline: float) -> None:
        def guarded() -> None:
            with self._lock:
                if self._shut:
                    raise LaneBroken("the lane was closed")
                self._using += 1
            try:
                work()
            finally:
                self._leave()

        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                await _in_thread(guarded)
        except TimeoutError as exc:  # an OSError too: the deadline's, or the connection's own (ETIMEDOUT)
            self.close()
            if timeout.expired():
                raise
            raise LaneBroken(f"the lane broke: {exc.strerror or exc}") from None
        except LaneBroken:
            self.close()
            raise
        except OSError as exc:  # the peer closed or reset it, or we did (close)
            self.close()
            raise LaneBroken(f"the lane broke: {exc.strerror or exc}") from None
        except BaseException:  # a cancellation: the thread ends once the lane is shut down
            self.close()
            raise

    def _leave(self) -> None:
        with self._lock:
            self._using -= 1
            release = self._shut and not self._using and not self._released
            self._released |= release
        if release:
            self.sock.close()

    def close(self) -> None:
        """Shut the connection down (ending the calls blocked on it); its descriptor is closed now, or by
        the last thread that still uses it."""
        with self._lock:  # shut down under the lock: a thread leaving meanwhile must not close it first
            if self._shut:
                return
            self._shut = True
            release = not self._using
            self._released |= release
            with contextlib.suppress(OSError):  # not connected any more
                self.sock.shutdown(socket.SHUT_RDWR)
        if release:
            self.sock.close()


async def open_lane(address: str, port: int, token: bytes, size: int, deadline: float) -> Lane:
    """A connection to the lane of the peer at ``address`` (its gRPC ``host:port``), the hello sent:
    to each address its host resolves to in turn, until one connects; OSError if none does, and
    TimeoutError at ``deadline``. An address that drops the connection silently takes what is left of
    the time: only those that refuse at once fall through to the next."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout_at(deadline):
        failure: OSError = OSError(f"{host_of(address)} resolves to no address")
        for family, kind, proto, _, target in await loop.getaddrinfo(host_of(address), port, type=socket.SOCK_STREAM):
            try:
                sock = socket.socket(family, kind, proto)  # this machine may lack the family (IPv6 off)
            except OSError as exc:
                failure = exc
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, target)
                await loop.sock_sendall(sock, _HELLO.pack(LANE_MAGIC, token, size))
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            return Lane(sock)
        raise failure


@dataclass
class _Arrival:
    """A connection whose hello was read, waiting for the swap that claims its token."""

    sock: socket.socket
    size: int
    host: str
    expiry: asyncio.TimerHandle | None = None


class LaneListener:
    """A server's lane port: accepts connections, reads their hellos, and hands each one to the swap
    whose header names its token (``claim``). ``max_waiting`` / ``max_waiting_per_address``:
    connections that may wait for their hello or their claim; ``wait_s``: how long each may."""

    def __init__(self, max_waiting: int, max_waiting_per_address: int, wait_s: float) -> None:
        self.max_waiting, self.max_waiting_per_address, self.wait_s = max_waiting, max_waiting_per_address, wait_s
        self.waiting: dict[str, int] = {}  # per address: connections before their claim
        self.arrived: dict[bytes, _Arrival] = {}  # by token: hello read, not claimed yet
        self.claims: dict[bytes, asyncio.Future[_Arrival]] = {}  # by token: swaps waiting for a hello
        self.greeting: dict[asyncio.Task, tuple[socket.socket, str]] = {}  # hellos being read: connection, address
        self.claimed = 0  # connections handed to swaps, in all
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task | None = None

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on ``host`` (the gRPC server's) at ``port`` (0: one the system picks); the port."""
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family)
        self.listener.setblocking(False)
        self.accepting = asyncio.ensure_future(self._accept(self.listener))
        return self.listener.getsockname()[1]

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, remote = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, say: the listener itself stays
                log.warning("lane: accept failed: %s", exc)
                await asyncio.sleep(self.wait_s / 10)
                continue
            host = str(remote[0])
            if sum(self.waiting.values()) >= self.max_waiting or (
                self.waiting.get(host, 0) >= self.max_waiting_per_address
            ):
                sock.close()
                continue
            self.waiting[host] = self.waiting.get(host, 0) + 1
            task = asyncio.ensure_future(self._greet(sock, host, loop.time() + self.wait_s))
            self.greeting[task] = (sock, host)
            task.add_done_callback(self._greeted)

    def _greeted(self, task: asyncio.Task) -> None:
        sock, host = self.greeting.pop(task)
        if task.cancelled():  # cancelled before it ran (close): its connection is closed here
            self._forget(host)
            sock.close()

    async def _greet(self, sock: socket.socket, host: str, until: float) -> None:
        """Read the hello by ``until``; the connection then waits for its claim until then too, or goes
        to the swap already waiting for it."""
        loop = asyncio.get_running_loop()
        try:
            sock.setblocking(False)
            hello, got = bytearray(HELLO_BYTES), 0
            async with asyncio.timeout_at(until):
                while got < HELLO_BYTES:
                    n = await loop.sock_recv_into(sock, memoryview(hello)[got:])
                    if n == 0:
                        raise LaneBroken("closed before its hello")
                    got += n
            magic, token, size = _HELLO.unpack(hello)
            if magic != LANE_MAGIC or token in self.arrived:
                raise LaneBroken("not a lane's hello")
        except (OSError, TimeoutError, asyncio.CancelledError):
            self._forget(host)
            sock.close()
            return  # a cancelled greeting ends here: its task is not marked cancelled, nor closed twice
        arrival = _Arrival(sock, size, host)
        waiter = self.claims.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(arrival)
            return
        arrival.expiry = loop.call_at(until, self._expire, token, arrival)
        self.arrived[token] = arrival

    def _expire(self, token: bytes, arrival: _Arrival) -> None:
        if self.arrived.get(token) is arrival:
            del self.arrived[token]
            self._drop(arrival)

    def _forget(self, host: str) -> None:
        self.waiting[host] -= 1
        if not self.waiting[host]:
            del self.waiting[host]

    async def claim(self, token: bytes, size: int) -> Lane:
        """The connection whose hello carried ``token``, waiting ``wait_s`` for it at most; Rejected if
        none came, or if its hello announced another size than the header."""
        arrival = self.arrived.pop(token, None)
        if arrival is None:
            if token in self.claims:
                raise Rejected(Reason.FRAMING, "a lane token already being claimed")
            waiter: asyncio.Future[_Arrival] = asyncio.get_running_loop().create_future()
            self.claims[token] = waiter
            try:
                async with asyncio.timeout(self.wait_s):
                    arrival = await asyncio.shield(waiter)
            except TimeoutError:
                raise Rejected(Reason.STALLED, f"no lane connection within {self.wait_s:g} s") from None
            finally:
                del self.claims[token]
                if not waiter.done():
                    waiter.cancel()
                elif arrival is None and not waiter.cancelled():  # came as we gave up, or were cancelled
                    self._drop(waiter.result())
        if arrival.expiry is not None:
            arrival.expiry.cancel()
        self._forget(arrival.host)
        if arrival.size != size:
            arrival.sock.close()
            raise Rejected(Reason.FRAMING, f"the lane announced {arrival.size} bytes, the header {size}")
        self.claimed += 1
        return Lane(arrival.sock)

    def _drop(self, arrival: _Arrival) -> None:
        self._forget(arrival.host)
        arrival.sock.close()

    async def close(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
            await asyncio.gather(self.accepting, return_exceptions=True)
        if self.listener is not None:
            self.listener.close()
        greeting = list(self.greeting)
        for task in greeting:
            task.cancel()
        await asyncio.gather(*greeting, return_exceptions=True)
        for token in list(self.arrived):
            arrival = self.arrived.pop(token)
            if arrival.expiry is not None:
                arrival.expiry.cancel()
            self._drop(arrival)
        for waiter in self.claims.values():
            waiter.cancel()
