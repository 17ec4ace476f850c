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

1. The client connects to the lane port the server named in an earlier reply header (or takes the
   connection kept from its last swap with that server) and sends a hello: ``LANE_MAGIC``, a random
   token and its payload's size; its payload follows on the same connection. Its header, on the
   stream, carries the token.
2. The server claims the connection whose hello carried the token of the header it read (waiting
   for the hello at most ``frame_timeout``). With its reply ready at once (a daemon's own factors),
   it sets the reply's payload going on the lane, then sends a reply header on the stream that
   carries the same token, while it reads the client's payload; otherwise it reads the payload
   first. Each side sets its payload going before it writes its header: on a shaped link, two
   directions that started even a tenth of a millisecond apart on a new connection lost up to a
   tenth of the link's rate (``benchmarks/README.md``, section 5).
3. A swap that ends with the ack leaves the connection open for the next swap between the two: the
   server says so in the ack (``CommitAck.lane_kept``) once the connection waits for its next hello,
   as long as a kept stream (``grpc_transport.KEPT_STREAM_IDLE_S``); the client reuses it within half
   that. Any other end closes it at
   both ends, so a swap cut short leaves nothing behind for the next. A peer that predates this
   never says it keeps a lane, and closes it.

Over TLS there is no lane: every payload goes through gRPC, encrypted. A server that listens for
lanes names the port in each reply header; a client sends on the lane only payloads of at least
``Limits.lane_min_bytes``. A peer that predates the lane never names a port, so it is never sent a
token.

What a remote peer can make a server hold: connections that wait for their hello or their claim,
at most ``Limits.max_streams`` in all and ``max_streams_per_address`` from one address, each closed
after ``frame_timeout`` (a kept lane: after its keep time, or at once when a new connection needs
its slot); a hello is 32 bytes; a payload is read only into the buffer of a header that
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
from peer.transport.codec import Buffer, new_payload_digest, unfilled_bytearray

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

    def __init__(self, sock: socket.socket, host: str = "") -> None:
        sock.setblocking(True)
        self.sock, self.host = sock, host  # host: the remote address, on a server's side
        self._lock = threading.Lock()  # guards the three below, from the loop and the threads
        self._using, self._shut, self._released = 0, False, False
        self._sent = False  # a payload went out whole on it (set by the sending thread)

    async def send(self, payload: Buffer, deadline: float, hello: bytes = b"") -> None:
        """``hello`` (a client's, ``hello_for``), then all of ``payload``, by the event loop's time
        ``deadline``; LaneBroken, or TimeoutError at the deadline (the lane is closed then)."""
        view = memoryview(payload).cast("B")

        def write() -> None:
            if hello:
                self.sock.sendall(hello)
            self.sock.sendall(view)
            self._sent = True

        await self._bounded(write, deadline)

    async def receive(self, size: int, deadline: float) -> tuple[bytearray, bytes]:
        """``size`` bytes by ``deadline``, and their ``payload_digest``; LaneBroken, or TimeoutError at
        the deadline (the lane is closed then)."""
        digest, buffer = new_payload_digest(), unfilled_bytearray(size)

        def read() -> bytearray:
            view, got = memoryview(buffer), 0
            while got < size:
                n = self.sock.recv_into(view[got : got + RECEIVE_SLICE_BYTES])
                if n == 0:
                    raise LaneBroken(f"the lane ended after {got} of {size} bytes")
                digest.update(view[got : got + n])
                got += n
            return buffer

        return await self._bounded(read, deadline), digest.digest()

    async def _bounded(self, work: Callable[[], T], deadline: float) -> T:
        def guarded() -> T:
            with self._lock:
                if self._shut:
                    raise LaneBroken("the lane was closed")
                self._using += 1
            try:
                return work()
            finally:
                self._leave()

        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                return await _in_thread(guarded)
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

    def still_open(self) -> bool:
        """Whether a kept lane is still good for a swap: the other end has neither closed it nor sent
        anything unasked (between swaps it sends nothing). Does not block."""
        return _peek(self.sock) is None

    def detach(self) -> socket.socket | None:
        """The connection, to be kept for a next swap: once a payload went out whole on it, while no
        thread uses it and it is not closed; the Lane is done with it then. None otherwise (the
        caller closes the Lane, as after any swap)."""
        with self._lock:
            if self._shut or self._using or not self._sent:
                return None
            self._shut = self._released = True
        return self.sock

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


def hello_for(token: bytes, size: int) -> bytes:
    """What a client sends on a lane before each payload: the swap's token, and the payload's size."""
    return _HELLO.pack(LANE_MAGIC, token, size)


async def open_lane(address: str, port: int, deadline: float) -> Lane:
    """A connection to the lane of the peer at ``address`` (its gRPC ``host:port``): to each address
    its host resolves to in turn, until one connects; OSError if none does, and
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
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            return Lane(sock)
        raise failure


def _peek(sock: socket.socket) -> bytes | None:
    """Without blocking or reading it: the first byte waiting on ``sock``; None if none waits yet, b""
    if the other end closed it (or it failed)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""


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
    connections that may wait for their hello or their claim; ``wait_s``: how long each may. A lane
    whose swap ended with an ack comes back (``keep``) to wait ``kept_s`` for the hello of the
    client's next swap, within the same caps."""

    def __init__(self, max_waiting: int, max_waiting_per_address: int, wait_s: float, kept_s: float) -> None:
        self.max_waiting, self.max_waiting_per_address, self.wait_s = max_waiting, max_waiting_per_address, wait_s
        self.kept_s = kept_s
        self.waiting: dict[str, int] = {}  # per address: connections before their claim
        self.arrived: dict[bytes, _Arrival] = {}  # by token: hello read, not claimed yet
        self.claims: dict[bytes, asyncio.Future[_Arrival]] = {}  # by token: swaps waiting for a hello
        self.greeting: dict[asyncio.Task, tuple[socket.socket, str]] = {}  # hellos being read: connection, address
        self.idle_kept: dict[asyncio.Task, str] = {}  # of those, kept lanes before their next hello: address
        self.evicted: set[asyncio.Task] = set()  # of those, closed to make room: their slot is free already
        self.closing = False
        self.claimed = 0  # connections handed to swaps, in all
        self.accepted = 0  # connections accepted within the caps, in all (a kept lane is accepted once)
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
            if not self._admit(sock, str(remote[0])):
                sock.close()
                continue
            self.accepted += 1

    def keep(self, sock: socket.socket, host: str) -> bool:
        """Wait for the next hello on the lane of a swap that ended with an ack, ``kept_s`` at most;
        False (the caller closes it) where the caps leave no room, or the listener closes."""
        if self.closing or self._full(host):
            return False
        self.idle_kept[self._wait_for_hello(sock, host, self.kept_s)] = host
        return True

    def _admit(self, sock: socket.socket, host: str) -> bool:
        """Wait for the hello of a new connection, ``wait_s`` at most; at a cap, a kept lane that still
        waits for its next swap is closed to make room (the oldest; of ``host`` if that address is at
        its cap), whose caller's next swap opens a new one. False where none is."""
        if self._full(host) and not self._close_oldest_idle(host):
            return False
        self._wait_for_hello(sock, host, self.wait_s)
        return True

    def _full(self, host: str) -> bool:
        at_cap = sum(self.waiting.values()) >= self.max_waiting
        return at_cap or self.waiting.get(host, 0) >= self.max_waiting_per_address

    def _close_oldest_idle(self, host: str) -> bool:
        at_address_cap = self.waiting.get(host, 0) >= self.max_waiting_per_address
        for task, owner in self.idle_kept.items():
            if task.done() or (at_address_cap and owner != host) or _peek(self.greeting[task][0]):
                continue  # ended already; not the address at its cap; or a next swap's hello is coming
            del self.idle_kept[task]
            self.evicted.add(task)
            self._forget(owner)  # its slot is free now; its greeting closes the connection
            task.cancel()
            return True
        return False

    def _wait_for_hello(self, sock: socket.socket, host: str, within: float) -> asyncio.Task:
        self.waiting[host] = self.waiting.get(host, 0) + 1
        task = asyncio.ensure_future(self._greet(sock, host, asyncio.get_running_loop().time() + within))
        self.greeting[task] = (sock, host)
        task.add_done_callback(self._greeted)
        return task

    def _greeted(self, task: asyncio.Task) -> None:
        self.idle_kept.pop(task, None)
        sock, host = self.greeting.pop(task)
        if task.cancelled():  # cancelled before it ran (close, or making room): its connection is closed here
            self._free_slot(task, host)
            sock.close()
        self.evicted.discard(task)

    async def _greet(self, sock: socket.socket, host: str, until: float) -> None:
        """Read the hello by ``until``; the connection then waits for its claim until then too (``wait_s``
        at most), or goes to the swap already waiting for it."""
        loop, me = asyncio.get_running_loop(), asyncio.current_task()
        try:
            sock.setblocking(False)
            hello, got = bytearray(HELLO_BYTES), 0
            async with asyncio.timeout_at(until):
                while got < HELLO_BYTES:
                    n = await loop.sock_recv_into(sock, memoryview(hello)[got:])
                    if n == 0:
                        raise LaneBroken("closed before its hello")
                    if me is not None:
                        self.idle_kept.pop(me, None)  # a next swap's hello: no longer closed to make room
                    got += n
            magic, token, size = _HELLO.unpack(hello)
            if magic != LANE_MAGIC or token in self.arrived:
                raise LaneBroken("not a lane's hello")
        except (OSError, TimeoutError, asyncio.CancelledError):
            self._free_slot(me, host)
            sock.close()
            return  # a cancelled greeting ends here: its task is not marked cancelled, nor closed twice
        arrival = _Arrival(sock, size, host)
        waiter = self.claims.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(arrival)
            return
        arrival.expiry = loop.call_at(min(until, loop.time() + self.wait_s), self._expire, token, arrival)
        self.arrived[token] = arrival

    def _expire(self, token: bytes, arrival: _Arrival) -> None:
        if self.arrived.get(token) is arrival:
            del self.arrived[token]
            self._drop(arrival)

    def _free_slot(self, greeting: asyncio.Task | None, host: str) -> None:
        """The slot of a greeting that ended without a hello; one closed to make room freed it then."""
        if greeting not in self.evicted:
            self._forget(host)

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
        return Lane(arrival.sock, arrival.host)

    def _drop(self, arrival: _Arrival) -> None:
        self._forget(arrival.host)
        arrival.sock.close()

    async def close(self) -> None:
        self.closing = True
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
