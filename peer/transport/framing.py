"""Splitting a ``FactorMessage`` into frames and reassembling it with every size and hash check.

Shared by the transports so that each refuses exactly the same things for the same reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from peer.algorithm.schedule import ScheduleGossip
from peer.transport.base import PROTOCOL_VERSION, FactorMessage, Header, Reason, Rejected, shown
from peer.transport.codec import new_payload_digest, payload_digest
from peer.transport.defaults import DEFAULT_CHUNK_SIZE, DEFAULT_FRAME_TIMEOUT_S
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


def to_frames(message: FactorMessage, chunk_size: int) -> Iterator[pb.Frame]:
    yield pb.Frame(header=header_to_pb(message.header))
    view = memoryview(message.payload)
    for start in range(0, len(view), chunk_size):
        yield pb.Frame(chunk=pb.Chunk(data=bytes(view[start : start + chunk_size])))


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
    if (digest if digest is not None else payload_digest(message.payload)) != message.header.payload_digest:
        raise Rejected(Reason.PAYLOAD_HASH, "payload does not match the hash in its header")


async def read_message(
    next_frame: Callable[[], Awaitable[pb.Frame | None]],
    limits: Limits,
    screen: Callable[[Header], Awaitable[None]] | None = None,
) -> FactorMessage:
    """Read Header, Chunk* from a stream; raise Rejected for anything malformed, oversized or stalled.
    ``screen`` sees the header before any payload is read (``ExchangeServer.screen``)."""
    loop = asyncio.get_running_loop()
    deadline: list[float] = []  # the whole message's, once the header says how large it is

    async def frame() -> pb.Frame:
        left = deadline[0] - loop.time() if deadline else limits.frame_timeout
        try:
            f = await asyncio.wait_for(next_frame(), max(0.0, min(limits.frame_timeout, left)))
        except TimeoutError:
            if left < limits.frame_timeout:
                raise Rejected(Reason.STALLED, f"slower than {limits.min_bytes_per_s:g} bytes/s") from None
            raise Rejected(Reason.STALLED, f"no frame for {limits.frame_timeout:g} s") from None
        if f is None:
            # gRPC also ends the stream this way when a frame is over its message cap (chunk size + 64 KiB)
            raise Rejected(Reason.TRUNCATED, "stream ended mid-message (or a frame was over the message cap)")
        if f.HasField("reject"):
            raise Rejected(Reason.of(f.reject.reason), shown(f.reject.detail), f.reject.current_round)
        return f

    first = await frame()
    if not first.HasField("header"):
        raise Rejected(Reason.FRAMING, "a message must start with a header")
    if first.ByteSize() > MAX_HEADER_FRAME_BYTES:  # it is held while the round is awaited: keep it small
        raise Rejected(Reason.FRAMING, f"a header of {first.ByteSize()} bytes (at most {MAX_HEADER_FRAME_BYTES})")
    header = header_from_pb(first.header)
    check_header(header, limits)
    if screen is not None:
        await screen(header)
    deadline.append(loop.time() + limits.frame_timeout + header.payload_size / limits.min_bytes_per_s)
    # chunks are kept as they come and joined once; the hash is updated chunk by chunk, while the
    # next chunks are still on the wire, rather than over the whole payload at the end
    parts: list[bytes] = []
    received, digest = 0, new_payload_digest()
    while received < header.payload_size:
        f = await frame()
        if not f.HasField("chunk"):
            raise Rejected(Reason.FRAMING, "expected a chunk")
        if len(parts) >= limits.max_chunks:
            raise Rejected(Reason.TOO_MANY_CHUNKS, f"more than {limits.max_chunks} chunks")
        data = f.chunk.data
        received += len(data)
        if received > header.payload_size:
            raise Rejected(Reason.TOO_LARGE, f"more bytes than the {header.payload_size} announced")
        digest.update(data)
        parts.append(data)
    message = FactorMessage(header, parts[0] if len(parts) == 1 else b"".join(parts))
    check_payload(message, digest.digest())
    return message
