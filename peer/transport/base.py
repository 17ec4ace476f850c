"""The transport interface: how two peers swap one round's factors, whatever carries the bytes.

Two implementations stand behind it and pass the same contract tests (``tests/inprocess/test_transport_contract.py``):
``GrpcTransport`` (real sockets, ``peer.transport.grpc_transport``) and ``MemoryTransport`` (one
process, for fast tests and the simulator-like drivers).

The swap is asymmetric on the wire but symmetric in effect: the client sends its factors, the
server answers with its own (or a ``Rejected``), the client validates them and commits, and the
server acknowledges. Each end counts the link only after that last step, so that both ends agree on
whether the link was part of the round's graph (see ``ExchangeOutcomeUnknown`` for the one case
where they may not, and how the daemon resolves it).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from peer.algorithm.schedule import ScheduleGossip
from peer.errors import TadloraError

T = TypeVar("T")

PROTOCOL_VERSION = 3  # 2: payload checksum xxh3-128 (was sha256); 3: int8 packed into two tensors, bf16 scales


class Step(enum.Enum):
    """The messages of the protocol, each of which a network can lose, delay or repeat."""

    SWAP = "swap"  # client -> server: the client's factors
    REPLY = "reply"  # server -> client: the server's factors (or a refusal)
    COMMIT = "commit"  # client -> server
    ACK = "ack"  # server -> client
    OUTCOME = "outcome"  # client -> server: did the link count? (and the answer)
    STATUS = "status"
    FETCH = "fetch"


@dataclass
class Header:
    run_id: str
    sender_id: str
    round: int
    phase: str
    factors: tuple[str, ...]
    schema_digest: bytes
    payload_digest: bytes = b""
    payload_size: int = 0
    degree: int = 0
    schedule: ScheduleGossip = field(default_factory=ScheduleGossip)  # the daemons' phase gossip
    protocol_version: int = PROTOCOL_VERSION


@dataclass
class FactorMessage:
    header: Header
    payload: bytes | bytearray  # received over gRPC: a bytearray (the decoder reads it in place)


@dataclass
class NeighbourInfo:
    peer_id: str
    address: str
    last_round: int = -1
    last_exchange_unix: float = 0.0


@dataclass
class StatusInfo:
    peer_id: str
    run_id: str
    round: int
    phase: str
    schema_digest: bytes
    switch_interval: int = 0
    neighbours: list[NeighbourInfo] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    protocol_version: int = PROTOCOL_VERSION
    phase_start: int = 0
    schedule_round: int = 0


class Reason(enum.StrEnum):
    """Why a message was refused: the whole vocabulary. It becomes counter keys, metric labels and
    the Status answer, so a reason a remote peer sends that is not one of these is counted as
    ``UNKNOWN``: nothing a peer sends can create a new label."""

    # the stream
    FRAMING = "framing"
    STALLED = "stalled"
    TRUNCATED = "truncated"
    TOO_LARGE = "too-large"
    TOO_MANY_CHUNKS = "too-many-chunks"
    PAYLOAD_HASH = "payload-hash"
    PROTOCOL_VERSION = "protocol-version"
    # who sends it
    RUN = "run"
    SCHEMA = "schema"
    SELF = "self"
    IDENTITY = "identity"
    MEMBERSHIP = "membership"
    # when: the round and its links
    PHASE = "phase"
    ROUND = "round"
    ROUND_AHEAD = "round-ahead"
    ROUND_BEHIND = "round-behind"
    ROUND_CLOSED = "round-closed"
    NOT_A_LINK = "not-a-link"
    REPLAY = "replay"
    DEGREE = "degree"
    NO_FACTORS = "no-factors"
    DOWN = "down"
    # the tensors (peer.transport.codec.DecodeError)
    MALFORMED_PAYLOAD = "malformed-payload"
    NON_FINITE = "non-finite"
    TENSOR_DTYPE = "tensor-dtype"
    TENSOR_NAMES = "tensor-names"
    TENSOR_SHAPE = "tensor-shape"
    # this peer's own bounds (too many streams or bytes in flight at once)
    BUSY = "busy"
    UNKNOWN = "unknown"

    @classmethod
    def of(cls, text: str) -> Reason:
        """``text`` as a Reason, or ``UNKNOWN`` (for reasons that arrive from the network)."""
        return cls._value2member_map_.get(text, cls.UNKNOWN)  # type: ignore[return-value]


# What of a remote peer's text (a refusal's detail, an id) reaches a log line: escaped, so that a
# newline cannot forge a line, and cut, so that it cannot flood the log.
MAX_SHOWN_CHARS = 200


def shown(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` made safe for one log line: non-printable characters escaped, at most ``limit`` characters."""
    escaped = ascii(text[:limit])[1:-1]
    return escaped[:limit] + ("…" if len(text) > limit or len(escaped) > limit else "")


class Rejected(TadloraError):
    """A peer refused a message; ``reason`` is a stable code (a ``Reason`` value), ``current_round`` the
    refuser's round."""

    def __init__(self, reason: Reason, detail: str = "", current_round: int = 0) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.current_round = reason, detail, current_round


class ExchangeFailed(TadloraError):
    """The stream broke or timed out before the client committed: the link counts at neither end."""


class HandshakeRefused(ExchangeFailed):
    """The remote end failed TLS authentication: no certificate of this run's authority, or not one
    that names the peer id the caller expected. Retrying will not help."""


class ExchangeOutcomeUnknown(TadloraError):
    """The client committed but no acknowledgement came back: the server may have counted the link.

    The daemon asks the server (``Transport.outcome``), whose answer is immediate and final, until its
    deadline plus one frame timeout; without an answer by then the link is settled later
    (``peer.daemon.settlement``).
    """

    def __init__(self, message: FactorMessage) -> None:
        super().__init__("commit sent, acknowledgement lost")
        self.message = message


class ConnectionLost(ExchangeFailed):
    """The other end went away in the middle of a call (it crashed)."""


class NetworkFaults:
    """No faults: every message arrives at once, exactly once."""

    async def deliver(self, step: Step, source: str, destination: str) -> bool:
        """Wait out the message's delay; False if it is lost."""
        return True

    def duplicate(self, step: Step, source: str, destination: str) -> bool:
        return False

    async def at_server(self, destination: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a server's handler (where a simulated crash of that server surfaces as ConnectionLost)."""
        return await call()


class ExchangeServer(abc.ABC):
    """What a peer offers to the transport (implemented by the daemon)."""

    @abc.abstractmethod
    async def respond(self, incoming: FactorMessage) -> FactorMessage:
        """Validate the client's factors and return this peer's own for the same round, or raise Rejected."""

    @abc.abstractmethod
    async def commit(self, header: Header) -> bool:
        """The client accepted our factors: count the link for ``header.round``.

        Returns False when it is too late (the round's mixing already happened): then the link counts
        at neither end and the client is told so.
        """

    @abc.abstractmethod
    async def abort(self, header: Header) -> None:
        """The stream ended without a commit: forget what ``respond`` staged for this link."""

    @abc.abstractmethod
    def status(self) -> StatusInfo: ...

    async def screen(self, header: Header) -> FactorMessage | None:
        """Called with a swap's header before any of its payload is read: raise Rejected for a message
        that ``respond`` would refuse anyway (another run, a sender that is no link of the round, a
        round far off, a payload larger than any of this run's), so that it costs no memory. It may
        wait (for the round to open); the transport reads no payload meanwhile.

        Returns this peer's reply when it does not depend on the incoming payload (the daemon's own
        factors of the round): the transport then streams it while the payload is still arriving, and
        ``respond`` (which must still validate and stage the payload) has its refusal sent where the
        ack would be; the link counts at neither end. None keeps the order: the whole message, then
        ``respond``'s answer. The default screens nothing and returns None."""
        return None

    @abc.abstractmethod
    async def current_factors(self, run_id: str, peer_id: str) -> FactorMessage:
        """The latest mixed factors, for ``peer_id`` of run ``run_id`` (a late joiner); raise Rejected if
        there are none, or the asker is not a known peer of this run."""

    @abc.abstractmethod
    def outcome(self, peer_id: str, round_: int, run_id: str) -> bool | None:
        """Did the link with ``peer_id`` (who asks) count in ``round_``? None when unknown, and for an
        asker that is not a known peer of run ``run_id``."""

    def count_rejection(self, reason: str, detail: str = "", source: str = "") -> None:
        """Called by transports for every incoming message they refuse, in framing (size, hash,
        stalls) or in ``respond``; ``source`` is the remote address as the transport knows it."""
        return None


Validator = Callable[[FactorMessage], Awaitable[None]]


class Transport(abc.ABC):
    @abc.abstractmethod
    async def serve(self, server: ExchangeServer, address: str) -> str:
        """Start answering at ``address`` (``host:port``, port 0 for any); returns the bound address."""

    # Every call to another peer takes ``expect``: the peer id the answering end must prove (over TLS,
    # a certificate naming it; a transport without authentication ignores it). None accepts any peer
    # of the run, for an address whose owner is not known yet.

    @abc.abstractmethod
    async def exchange(
        self, address: str, outgoing: FactorMessage, validate: Validator, timeout: float, *, expect: str | None = None
    ) -> FactorMessage:
        """Swap factors with the peer at ``address``; returns its factors once the link counted.

        ``validate`` checks the server's answer and raises Rejected to refuse it (then nothing counts).
        Raises Rejected, ExchangeFailed or ExchangeOutcomeUnknown.
        """

    @abc.abstractmethod
    async def status(self, address: str, timeout: float, *, expect: str | None = None) -> StatusInfo: ...

    @abc.abstractmethod
    async def fetch(
        self, address: str, run_id: str, peer_id: str, timeout: float, *, expect: str | None = None
    ) -> FactorMessage:
        """The latest factors of the peer at ``address``, asked as ``peer_id`` of ``run_id``."""

    @abc.abstractmethod
    async def outcome(
        self, address: str, run_id: str, peer_id: str, round_: int, timeout: float, *, expect: str | None = None
    ) -> bool | None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
