"""Splitting a ``FactorMessage`` into frames and reassembling it with every size and hash check.

Shared by the transports so that each refuses exactly the same things for the same reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from peer.algorithm.schedule import ScheduleGossip
from peer.transport.base import PROTOCOL_VERSION, FactorMessage, Header, Reason, Rejected, shown
from peer.transport.codec import new_payload_digest, payload_digest, unfilled_bytearray
from peer.transport.defaults import DEFAULT_CHUNK_SIZE, DEFAULT_FRAME_TIMEOUT_S, DEFAULT_LANE_MIN_BYTES
from peer.transport.pb import peer_pb2 as pb

# A header is ids, digests, a few numbers and the factor names: well under 1 KiB. One that is larger
# is refused before the server waits for its round with it in memory.
MAX_HEADER_FRAME_BYTES = 16 << 10


@dataclass(frozen=True)
class Limits:
    """Caps on what a peer accepts, and how long it waits for the next frame.

    - ``chunk_size``: bytes per chunk sent (``peer.transport.defaults`` says how to choose it).
    - ``max_payload_bytes``: largest payload accepted (a r=8 adapter of RoBERTa-large is ~3 MB; the
      default 256 MiB leaves room for big models and high ranks).
    - ``lane_min_bytes``: the smallest payload a client sends on the payload lane, when the server
      has one (``peer.transport.lane``); None: this peer neither listens for lanes nor sends on one.
    - ``max_chunks``: most chunks in one stream, so a sender cannot trickle tiny chunks forever.
    - ``frame_timeout``: seconds to wait for the next frame of a stream before giving up (the same).

    - ``min_bytes_per_s``: the slowest a stream may deliver its payload: a whole message must arrive
      within ``frame_timeout + payload_size / min_bytes_per_s``, so that a sender cannot hold a stream
      open by trickling one byte per frame timeout. Too large shows as ``stalled`` refusals of big
      adapters on slow links.
    - ``max_streams`` / ``max_streams_per_address``: swaps being received at once, in all and from one
      IP address (loopback testbeds put every peer on one address: keep it above twice the peers).
    - ``max_buffered_bytes``: payload bytes that swaps being received may announce, together; a swap
      that would go over is refused (``busy``) before its payload is read.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_payload_bytes: int = 256 << 20
    lane_min_bytes: int | None = DEFAULT_LANE_MIN_BYTES
    max_chunks: int = 1 << 16
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT_S
    min_bytes_per_s: float = 64 << 10
    max_streams: int = 256
    max_streams_per_address: int = 64
    max_buffered_bytes: int = 1 << 30


def header_to_pb(h: Header) -> pb.Header:
    return pb.Header(
        protocol_version=h.protocol_version,
        run_id=h.run_id,
        sender_id=h.sender_id,
        round=h.round,
        phase=h.phase,
        factors=list(h.factors),
        schema_digest=h.schema_digest,
        payload_digest=h.payload_digest,
        payload_size=h.payload_size,
        degree=h.degree,
        link_estimate=h.schedule.link_estimate,
        switch_interval=h.schedule.switch_interval,
        schedule_round=h.schedule.schedule_round,
        proposed_interval=h.schedule.proposed_interval,
        phase_start=h.schedule.phase_start,
    )


def header_from_pb(h: pb.Header) -> Header:
    return Header(
        run_id=h.run_id,
        sender_id=h.sender_id,
        round=h.round,
        phase=h.phase,
        factors=tuple(h.factors),
        schema_digest=bytes(h.schema_digest),
        payload_digest=bytes(h.payload_digest),
        payload_size=h.payload_size,
        degree=h.degree,
        schedule=ScheduleGossip(
            switch_interval=h.switch_interval,
            schedule_round=h.schedule_round,
            proposed_interval=h.proposed_interval,
            phase_start=h.phase_start,
            link_estimate=h.link_estimate,
        ),
        protocol_version=h.protocol_version,
    )


def seal(header: Header, payload: bytes) -> FactorMessage:
    """A message whose header carries the payload's size and hash."""
    header.payload_size, header.payload_digest = len(payload), payload_digest(payload)
    return FactorMessage(header, payload)


class ChunkFrame:
    """A ``Frame`` holding a ``Chunk``, written and read without protobuf: ``data`` is a view of the
    sender's payload (no copy until the wire bytes are built) or of the received message's bytes (no
    copy until it is placed in the payload buffer). Every other frame is a ``pb.Frame``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data


Frame = pb.Frame | ChunkFrame

# Protobuf wire tags (field number << 3 | wire type 2, length-delimited) of peer.proto's
# Frame.chunk (field 2) and Chunk.data (field 1): a chunk frame is 0x12 len 0x0a len data.
_FRAME_CHUNK_TAG = 0x12
_CHUNK_DATA_TAG = 0x0A
_VARINT_MORE = 0x80
_VARINT_BITS = 7
_MAX_VARINT_BYTES = 10
_MAX_PORT = 65535


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= _VARINT_MORE:
        out.append(n & (_VARINT_MORE - 1) | _VARINT_MORE)
        n >>= _VARINT_BITS
    out.append(n)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int] | None:
    """The varint at ``pos`` and the position after it; None if ``raw`` ends inside it or it is too long."""
    value, shift = 0, 0
    for i in range(pos, min(len(raw), pos + _MAX_VARINT_BYTES)):
        value |= (raw[i] & (_VARINT_MORE - 1)) << shift
        if raw[i] < _VARINT_MORE:
            return value, i + 1
        shift += _VARINT_BITS
    return None


def encode_frame(frame: Frame) -> bytes:
    """A frame's wire bytes (the gRPC serializer). A chunk's are built by hand, in one copy of its data
    (protobuf would copy it into a message, then serialize it); they parse as peer.proto's ``Frame``."""
    if not isinstance(frame, ChunkFrame):
        return frame.SerializeToString()
    size = len(frame.data)
    inner = bytes((_CHUNK_DATA_TAG,)) + _varint(size) if size else b""  # proto3 leaves out an empty field
    return b"".join((bytes((_FRAME_CHUNK_TAG,)), _varint(len(inner) + size), inner, frame.data))


def decode_frame(raw: bytes) -> Frame:
    """A frame from its wire bytes (the gRPC deserializer): a chunk in exactly the form ``encode_frame``
    writes becomes a ``ChunkFrame`` viewing ``raw``; anything else is parsed by protobuf, which decides
    what it means (or fails) exactly as it did before this fast path."""
    if raw[:1] == bytes((_FRAME_CHUNK_TAG,)):
        outer = _read_varint(raw, 1)
        if outer is not None and outer[1] + outer[0] == len(raw):
            start = outer[1]
            if start == len(raw):
                return ChunkFrame(b"")
            if raw[start] == _CHUNK_DATA_TAG:
                inner = _read_varint(raw, start + 1)
                if inner is not None and inner[1] + inner[0] == len(raw):
                    return ChunkFrame(memoryview(raw)[inner[1] :])
    return pb.Frame.FromString(raw)


def kind_of(frame: Frame) -> str | None:
    """Which of ``Frame``'s fields a frame holds: "header", "chunk", "commit", "ack", "reject" (None: empty)."""
    return "chunk" if isinstance(frame, ChunkFrame) else frame.WhichOneof("kind")


def header_frame(header: Header, lane_token: bytes = b"", lane_port: int = 0) -> pb.Frame:
    """A message's first frame. ``lane_token``: its payload comes on the lane connection that opened
    with this token, not in chunks; ``lane_port``: a server's lane port (``peer.transport.lane``)."""
    frame = pb.Frame(header=header_to_pb(header))
    frame.header.lane_token, frame.header.lane_port = lane_token, lane_port
    return frame


def to_frames(message: FactorMessage, chunk_size: int, lane_port: int = 0) -> Iterator[Frame]:
    """The header, then the payload in chunks that view it (``encode_frame`` makes their bytes)."""
    yield header_frame(message.header, lane_port=lane_port)
    view = memoryview(message.payload)
    for start in range(0, len(view), chunk_size):
        yield ChunkFrame(view[start : start + chunk_size])


def reject_frame(r: Rejected) -> pb.Frame:
    return pb.Frame(reject=pb.Reject(reason=r.reason, detail=r.detail, current_round=r.current_round))


def check_header(header: Header, limits: Limits) -> None:
    if header.protocol_version != PROTOCOL_VERSION:
        raise Rejected(
            Reason.PROTOCOL_VERSION, f"version {header.protocol_version}, this peer speaks {PROTOCOL_VERSION}"
        )
    if header.payload_size > limits.max_payload_bytes:
        raise Rejected(Reason.TOO_LARGE, f"{header.payload_size} bytes announced, limit {limits.max_payload_bytes}")


def check_payload(message: FactorMessage, digest: bytes | None = None) -> None:
    """Size and checksum against the header; ``digest``: the checksum when already computed on arrival."""
    if len(message.payload) != message.header.payload_size:
        raise Rejected(Reason.TRUNCATED, f"{len(message.payload)} of {message.header.payload_size} bytes arrived")
    if digest is None:
        whole = new_payload_digest()
        whole.update(message.payload)
        digest = whole.digest()
    if digest != message.header.payload_digest:
        raise Rejected(Reason.PAYLOAD_HASH, "payload does not match the hash in its header")


NextFrame = Callable[[], Awaitable[Frame | None]]


class FrameReader:
    """Reads one message (Header, Chunk*) from a stream, in two steps so that a server can answer
    between them: ``header`` (checked, before any payload is read), then ``payload``. Raises Rejected
    for anything malformed, oversized or stalled; ``frame`` reads what follows (a commit, an ack)."""

    def __init__(self, next_frame: NextFrame, limits: Limits) -> None:
        self.next_frame, self.limits = next_frame, limits
        self.loop = asyncio.get_running_loop()
        self.deadline: float | None = None  # the whole message's, once the header says how large it is
        # from the header: the token of the lane its payload comes on (empty: in chunks), and the
        # sender's lane port, if it is a server with one (``peer.transport.lane``)
        self.lane_token, self.lane_port = b"", 0

    async def frame(self) -> Frame:
        """The next frame within the frame timeout (and the message's deadline); a Reject raised."""
        limits = self.limits
        left = limits.frame_timeout if self.deadline is None else self.deadline - self.loop.time()
        try:
            async with asyncio.timeout(max(0.0, min(limits.frame_timeout, left))):  # no task per frame
                f = await self.next_frame()
        except TimeoutError:
            if left < limits.frame_timeout:
                raise Rejected(Reason.STALLED, f"slower than {limits.min_bytes_per_s:g} bytes/s") from None
            raise Rejected(Reason.STALLED, f"no frame for {limits.frame_timeout:g} s") from None
        if f is None:
            # gRPC also ends the stream this way when a frame is over its message cap (chunk size + 64 KiB)
            raise Rejected(Reason.TRUNCATED, "stream ended mid-message (or a frame was over the message cap)")
        if isinstance(f, pb.Frame) and f.HasField("reject"):
            raise Rejected(Reason.of(f.reject.reason), shown(f.reject.detail), f.reject.current_round)
        return f

    async def header(self) -> Header:
        first = await self.frame()
        if not isinstance(first, pb.Frame) or not first.HasField("header"):
            raise Rejected(Reason.FRAMING, "a message must start with a header")
        if first.ByteSize() > MAX_HEADER_FRAME_BYTES:  # it is held while the round is awaited: keep it small
            raise Rejected(Reason.FRAMING, f"a header of {first.ByteSize()} bytes (at most {MAX_HEADER_FRAME_BYTES})")
        header = header_from_pb(first.header)
        check_header(header, self.limits)
        self.lane_token = bytes(first.header.lane_token)
        self.lane_port = first.header.lane_port if first.header.lane_port <= _MAX_PORT else 0  # u32 on the wire
        return header

    def start_payload(self, header: Header) -> None:
        """The whole payload's deadline starts now (after any wait for the round: the screen)."""
        self.deadline = self.loop.time() + self.limits.frame_timeout + header.payload_size / self.limits.min_bytes_per_s

    async def payload(self, header: Header) -> FactorMessage:
        """The payload ``header`` announced, in one buffer of that size (a ``bytearray``: the decoder
        reads it in place). Each chunk is copied in and hashed as it arrives, while the next ones are
        still on the wire; the deadline starts now, after any wait for the round (the screen)."""
        limits = self.limits
        self.start_payload(header)
        payload = bytearray()  # sized at the first chunk: a sender that stalls after its header costs nothing
        received, chunks, digest = 0, 0, new_payload_digest()
        while received < header.payload_size:
            data = _chunk_data(await self.frame())
            if chunks >= limits.max_chunks:
                raise Rejected(Reason.TOO_MANY_CHUNKS, f"more than {limits.max_chunks} chunks")
            chunks += 1
            end = received + len(data)
            if end > header.payload_size:
                raise Rejected(Reason.TOO_LARGE, f"more bytes than the {header.payload_size} announced")
            if not payload:
                payload = unfilled_bytearray(header.payload_size)  # each byte is written before any is read
            payload[received:end] = data
            digest.update(data)
            received = end
        message = FactorMessage(header, payload)
        check_payload(message, digest.digest())
        return message


def _chunk_data(frame: Frame) -> bytes | memoryview:
    if isinstance(frame, ChunkFrame):
        return frame.data
    if not frame.HasField("chunk"):
        raise Rejected(Reason.FRAMING, "expected a chunk")
    return frame.chunk.data


async def read_message(
    next_frame: NextFrame,
    limits: Limits,
    screen: Callable[[Header], Awaitable[object]] | None = None,
) -> FactorMessage:
    """Read Header, Chunk* from a stream; raise Rejected for anything malformed, oversized or stalled.
    ``screen`` sees the header before any payload is read (``ExchangeServer.screen``)."""
    reader = FrameReader(next_frame, limits)
    header = await reader.header()
    if screen is not None:
        await screen(header)
    return await reader.payload(header)
