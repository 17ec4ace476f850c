"""The gRPC transport: factor swaps as bidirectional streams of chunks (``proto/tadlora/v1/peer.proto``).

One channel per remote address is kept open and reused across rounds, and on it the Exchange stream of
the last swap that ended with an ack, for the next swap to that address (the next round's): opening a
stream costs about a millisecond, most of a small adapter's swap. Anything but an ack ends a stream,
so within a stream every swap starts clean; one that ends before its commit counts at neither end,
as before. Messages are split into ``Limits.chunk_size`` chunks, so no single gRPC message comes near
the 2 GB limit whatever the adapter's size; the gRPC message cap is set just above one chunk. A
payload of at least ``Limits.lane_min_bytes`` goes instead on the server's payload lane, once a reply
named it (``peer.transport.lane``): the stream then carries only the headers, refusals, commit and ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc

from peer.transport.base import (
    ExchangeFailed,
    ExchangeOutcomeUnknown,
    ExchangeServer,
    FactorMessage,
    HandshakeRefused,
    Header,
    NeighbourInfo,
    NetworkFaults,
    Reason,
    Rejected,
    StatusInfo,
    Step,
    Transport,
    Validator,
    shown,
)
from peer.transport.framing import (
    Frame,
    FrameReader,
    Limits,
    NextFrame,
    check_payload,
    decode_frame,
    encode_frame,
    header_frame,
    kind_of,
    read_message,
    reject_frame,
    to_frames,
)
from peer.transport.lane import (
    TOKEN_BYTES,
    Lane,
    LaneBroken,
    LaneListener,
    hello_for,
    host_of,
    new_token,
    open_lane,
)
from peer.transport.pb import peer_pb2 as pb
from peer.transport.tls import TLS_NAME, TlsMaterial

log = logging.getLogger("tadlora.transport")

# What a frame may carry beyond its chunk's data (the tags and lengths, or a header): the message cap
# is one chunk plus this.
FRAME_SLACK_BYTES = 64 << 10
SERVICE = "tadlora.v1.Peer"  # peer.proto's service, as gRPC names it on the wire

# Client channels kept open, one per remote address, oldest closed first beyond this (a real run has
# one per neighbour; announcements of fake addresses must not grow the cache without bound).
MAX_CHANNELS = 256

# How long a server keeps an Exchange stream open after a swap's ack, waiting for the caller's next
# swap; it holds one of the caller's stream slots (``Limits.max_streams_per_address``) meanwhile. A
# round longer than this only costs the next swap the opening of a new stream. A swap's payload lane
# is kept as long, in one of the caller's lane slots.
KEPT_STREAM_IDLE_S = 60.0
# A client reuses a kept stream (or lane) only if it has been idle for less than this: well inside the
# server's wait, so that the server rarely ends one just as a swap starts on it (a swap that finds its
# kept stream ended before any answer is sent again on a new stream; one whose kept lane the server
# closed meanwhile fails, as any swap whose connection breaks).
REUSE_KEPT_STREAM_WITHIN_S = KEPT_STREAM_IDLE_S / 2
# How long a client whose lane broke mid-reply waits for the server's refusal on the stream, which
# says why (the server sends it before it closes the lane); without one the swap failed on the network.
LANE_REFUSAL_WAIT_S = 1.0
# How long a client tries to connect to a neighbour's lane before it sends in chunks instead. A LAN
# connects in a millisecond; a firewall that drops the port costs this once per neighbour (the port
# is not tried again for ``LANE_RETRY_AFTER_S``, unless the neighbour names another).
LANE_CONNECT_TIMEOUT_S = 1.0
# How long a lane port that could not be reached is left alone: a firewall costs a try this often, a
# neighbour that restarts on a fixed --lane-port gets its lane back this long after.
LANE_RETRY_AFTER_S = 300.0


def _channel_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC's message caps just above one chunk; and a stream's flow-control window of one such frame:
    gRPC opens each stream with a window of 64 KiB, so a chunk of a fresh stream (a swap opens one
    unless it has a kept one) went out in pieces, each waiting for a window update from the receiver
    (a 0.3 MB swap took twice as long). The window is what a stream may have in flight unread: a
    frame, which the cap allows."""
    cap = limits.chunk_size + FRAME_SLACK_BYTES
    return [
        ("grpc.max_receive_message_length", cap),
        ("grpc.max_send_message_length", cap),
        ("grpc.http2.lookahead_bytes", cap),
    ]


def status_to_pb(s: StatusInfo) -> pb.StatusReply:
    return pb.StatusReply(
        protocol_version=s.protocol_version,
        peer_id=s.peer_id,
        run_id=s.run_id,
        round=s.round,
        phase=s.phase,
        schema_digest=s.schema_digest,
        switch_interval=s.switch_interval,
        rejected=s.rejected,
        phase_start=s.phase_start,
        schedule_round=s.schedule_round,
        neighbours=[
            pb.Neighbour(
                peer_id=n.peer_id, address=n.address, last_round=n.last_round, last_exchange_unix=n.last_exchange_unix
            )
            for n in s.neighbours
        ],
    )


def status_from_pb(s: pb.StatusReply) -> StatusInfo:
    return StatusInfo(
        peer_id=s.peer_id,
        run_id=s.run_id,
        round=s.round,
        phase=s.phase,
        schema_digest=bytes(s.schema_digest),
        switch_interval=s.switch_interval,
        rejected=dict(s.rejected),
        protocol_version=s.protocol_version,
        phase_start=s.phase_start,
        schedule_round=s.schedule_round,
        neighbours=[NeighbourInfo(n.peer_id, n.address, n.last_round, n.last_exchange_unix) for n in s.neighbours],
    )


class _CallReader:
    """``next_frame`` for ``read_message`` over a client call (None at the end of the stream), counting
    the frames read: a reused stream that ends before its first frame was closed before the swap."""

    def __init__(self, call) -> None:
        self.call, self.frames = call, 0

    async def __call__(self) -> Frame | None:
        frame = await self.call.read()
        if frame is grpc.aio.EOF:
            return None
        self.frames += 1
        return frame


def _request_frames(request_iterator) -> NextFrame:
    """``next_frame`` over a server call's request stream: None at its end."""
    frames = request_iterator.__aiter__()

    async def next_frame() -> Frame | None:
        try:
            return await frames.__anext__()
        except StopAsyncIteration:
            return None

    return next_frame


def _starting_with(first: Frame, next_frame: NextFrame) -> NextFrame:
    """``next_frame`` that gives ``first`` (already read) before the rest of the stream."""
    pending = [first]

    async def frame() -> Frame | None:
        return pending.pop() if pending else await next_frame()

    return frame


def _check_identity(context, header, tls: TlsMaterial | None) -> None:
    """Over TLS, the header's sender must be the common name of the client's certificate."""
    _check_caller(context, header.sender_id, tls)


def _check_caller(context, peer_id: str, tls: TlsMaterial | None) -> None:
    """Over TLS, the peer id a caller gives must be the common name of its certificate."""
    if tls is None:
        return
    names = context.auth_context().get("x509_common_name", [])
    if [peer_id.encode()] != list(names):
        named = b",".join(names).decode(errors="replace") or "none"
        raise Rejected(Reason.IDENTITY, f"sender {peer_id[:60]!r} but certificate of {named[:60]!r}")


# gRPC reports a failed TLS handshake only in the text of an UNAVAILABLE error: a certificate of
# another authority reads "Handshake failed", one that does not name the expected peer "Hostname
# Verification Check failed" (grpcio 1.6x). Recognised here, once, and raised as HandshakeRefused.
_HANDSHAKE_FAILURE_MARKS = ("handshake failed", "verification check failed")


def _failure(address: str, exc: grpc.aio.AioRpcError) -> ExchangeFailed:
    details = (exc.details() or "").lower()
    kind = HandshakeRefused if any(mark in details for mark in _HANDSHAKE_FAILURE_MARKS) else ExchangeFailed
    return kind(f"{address}: {exc.code().name} {shown(exc.details() or '')}")


# What grpc-aio reports when a write fails because the server ended the stream meanwhile: it may
# replace the stream's plain end (status OK) with this (grpc/grpc#36066, grpcio 1.85).
_FAILED_WRITE_DETAILS = "Internal error from Core"


def _ended_before_answer(exc: grpc.aio.AioRpcError) -> bool:
    """Whether an error on a kept stream, before any answer, says the stream was over: the connection
    broke (a restart), or the server ended it while this swap's first frames were being written."""
    code = exc.code()
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.INTERNAL and exc.details() == _FAILED_WRITE_DETAILS
    )


def _call_cancelled_under_us() -> bool:
    """Whether a CancelledError came from gRPC cancelling the call, its channel closed (evicted from the
    cache of channels) while it ran, rather than from a cancellation of the calling task itself."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


@contextlib.contextmanager
def _call_failures(address: str) -> Iterator[None]:
    """A unary or server-streaming call's gRPC error as ``ExchangeFailed``; so too gRPC's CancelledError
    when the call's channel is closed under it. A cancellation of the calling task itself propagates."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise _failure(address, exc) from None
    except asyncio.CancelledError:
        if not _call_cancelled_under_us():
            raise
        raise ExchangeFailed(f"{address}: the channel was closed during the call") from None


def _host_of(grpc_peer: str) -> str:
    """``ipv4:10.0.0.2:54321`` -> ``ipv4:10.0.0.2`` (streams are capped per address, not per port)."""
    return grpc_peer.rsplit(":", 1)[0] if grpc_peer.count(":") >= 2 else grpc_peer


class _Slot:
    """One caller's stream slot and the payload bytes its current swap reserved. The bytes are given
    back at the end of each swap; the slot once, however the stream ends: by the handler's own end, by
    a kept stream giving its slot to a new one (``_Servicer._end_oldest_idle``), or by gRPC's done
    callback once the handler's task is over (a backstop: a second release does nothing)."""

    def __init__(self, servicer: _Servicer, host: str) -> None:
        self.servicer, self.host, self.bytes, self.open = servicer, host, 0, True
        self.ended = asyncio.Event()  # set to end the stream's wait for its caller's next swap
        servicer.streams[host] = servicer.streams.get(host, 0) + 1

    def reserve(self, payload_bytes: int) -> None:
        self.servicer.buffered += payload_bytes
        self.bytes += payload_bytes

    def unreserve(self) -> None:
        self.servicer.buffered -= self.bytes
        self.bytes = 0

    def release(self, *_) -> None:
        if not self.open:
            return
        self.open = False
        self.unreserve()
        streams = self.servicer.streams
        streams[self.host] -= 1
        if not streams[self.host]:
            del streams[self.host]


def _cancel_after(seconds: float) -> asyncio.TimerHandle:
    """Cancel the running RPC handler after ``seconds``: a caller that stops reading blocks the handler's
    writes forever (HTTP/2 flow control), and with them its stream slot. Cancel the handle when done."""
    task = asyncio.current_task()
    assert task is not None
    return asyncio.get_running_loop().call_later(seconds, task.cancel)


def _sending_time(limits: Limits, payload_bytes: int) -> float:
    """The longest a peer may take to read a message of ``payload_bytes`` (the rate floor, both ways)."""
    return limits.frame_timeout + payload_bytes / limits.min_bytes_per_s


class _Servicer:
    def __init__(
        self,
        server: ExchangeServer,
        limits: Limits,
        tls: TlsMaterial | None,
        lanes: LaneListener | None = None,
        lane_port: int = 0,
    ) -> None:
        self.server, self.limits, self.tls = server, limits, tls
        self.lanes, self.lane_port = lanes, lane_port  # the payload lane's listener and port (none over TLS)
        # streams open, per remote address: swaps and fetches in progress, and kept streams between swaps
        self.streams: dict[str, int] = {}
        self.buffered = 0  # payload bytes the swaps in progress announced (screened headers)
        self.idle: dict[_Slot, None] = {}  # the slots of kept streams waiting for a next swap, oldest first
        self.stopping = False  # the server stops: kept streams end instead of waiting

    async def next_swap(self, frames: NextFrame, slot: _Slot) -> Frame | None:
        """The first frame of the caller's next swap on a kept stream; None when the stream ends, stays
        idle for ``KEPT_STREAM_IDLE_S``, gives its slot to a new stream (``_end_oldest_idle``) or the
        server stops (``end_idle``). The handler then returns: a cancelled handler would leave the call
        open at gRPC's level, and the server's stop would wait its whole grace for it."""
        if self.stopping:
            return None
        self.idle[slot] = None
        frame = asyncio.ensure_future(frames())
        ended = asyncio.ensure_future(slot.ended.wait())
        try:
            await asyncio.wait((frame, ended), timeout=KEPT_STREAM_IDLE_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.idle.pop(slot, None)
            for waiter in (frame, ended):
                waiter.cancel()
            if frame.done() and not frame.cancelled():
                frame.exception()  # read, so that a broken stream's error is not logged as never retrieved
        if not slot.open or not frame.done() or frame.cancelled() or frame.exception() is not None:
            return None  # its slot went to another stream, idle too long, stopping, or the stream broke
        return frame.result()

    def end_idle(self) -> None:
        """End the kept streams that wait for a next swap (the server stops: it need not wait for them)."""
        self.stopping = True
        for slot in list(self.idle):
            slot.ended.set()

    def _end_oldest_idle(self, host: str) -> bool:
        """Free a slot for a new stream from ``host`` by ending the kept stream that has waited longest
        for its next swap (of ``host``, if that address is at its cap). Its caller's next swap opens a
        new stream. False if no kept stream is waiting."""
        at_address_cap = self.streams.get(host, 0) >= self.limits.max_streams_per_address
        for slot in self.idle:
            if not at_address_cap or slot.host == host:
                del self.idle[slot]
                slot.release()
                slot.ended.set()
                return True
        return False

    def _busy(self, host: str) -> Rejected | None:
        if sum(self.streams.values()) >= self.limits.max_streams:
            return Rejected(Reason.BUSY, f"{self.limits.max_streams} swaps in progress")
        if self.streams.get(host, 0) >= self.limits.max_streams_per_address:
            return Rejected(Reason.BUSY, f"{self.limits.max_streams_per_address} swaps in progress from this address")
        return None

    def _hold(self, context) -> _Slot | None:
        """A stream slot for this caller (ending kept streams that wait, oldest first, to make room), or
        None if it is over a cap."""
        host = _host_of(context.peer())
        while self._busy(host) is not None:
            if not self._end_oldest_idle(host):
                return None
        slot = _Slot(self, host)
        context.add_done_callback(slot.release)
        return slot

    def _refuse_busy(self, context) -> pb.Frame:
        busy = self._busy(_host_of(context.peer())) or Rejected(Reason.BUSY, "over a stream cap")
        self.server.count_rejection(busy.reason, busy.detail, context.peer())
        return reject_frame(busy)

    async def Exchange(self, request_iterator, context):
        slot = self._hold(context)
        if slot is None:
            yield self._refuse_busy(context)
            return

        async def screen(header: Header) -> FactorMessage | None:
            """Before the payload: the sender's certificate (TLS), the server's own checks, then the byte
            budget of all swaps. Returns the reply to stream at once, if the server gave one."""
            _check_identity(context, header, self.tls)
            reply = await self.server.screen(header)
            if self.buffered + header.payload_size > self.limits.max_buffered_bytes:
                raise Rejected(Reason.BUSY, f"{self.limits.max_buffered_bytes} payload bytes in flight")
            slot.reserve(header.payload_size)
            return reply

        frames, peer = _request_frames(request_iterator), context.peer()
        try:
            next_frame = frames
            while True:  # one swap, then more on the same stream while each ends with an ack
                swap = _Swap(self, peer, next_frame)
                async for frame in swap.run(screen):
                    yield frame
                slot.unreserve()
                acked = swap.acked
                del swap  # what it received is not held while the stream waits
                first = await self.next_swap(frames, slot) if acked else None
                if first is None:
                    return
                next_frame = _starting_with(first, frames)
        finally:
            slot.release()

    async def Status(self, request, context):
        return status_to_pb(self.server.status())

    async def Fetch(self, request, context):
        slot = self._hold(context)  # the same stream caps as swaps: a reader that never reads holds a slot
        if slot is None:
            yield self._refuse_busy(context)
            return
        try:
            try:
                _check_caller(context, request.peer_id, self.tls)
                message = await self.server.current_factors(request.run_id, request.peer_id)
            except Rejected as r:
                self.server.count_rejection(r.reason, r.detail, context.peer())
                yield reject_frame(r)
                return
            watchdog = _cancel_after(_sending_time(self.limits, message.header.payload_size))
            try:
                for frame in to_frames(message, self.limits.chunk_size):
                    yield frame
            finally:
                watchdog.cancel()
        finally:
            slot.release()

    async def Outcome(self, request, context):
        try:
            _check_caller(context, request.peer_id, self.tls)
        except Rejected as r:
            self.server.count_rejection(r.reason, r.detail, context.peer())
            return pb.OutcomeReply(counted=False, known=False)
        counted = self.server.outcome(request.peer_id, request.round, request.run_id)
        return pb.OutcomeReply(counted=bool(counted), known=counted is not None)


class _Swap:
    """The server's side of one swap on an Exchange stream.

    The incoming message's header is screened first. If the server gave its reply there
    (``ExchangeServer.screen``), the reply is streamed at once while the incoming payload is still being
    received (both directions at once: the reply does not depend on it, only the commit does);
    ``respond`` then validates and stages the incoming factors, and a refusal of them is sent where
    the ack would be. Otherwise the whole message is read and passed to ``respond`` first, and its
    answer is streamed after. Either way the link counts only at the commit, and ``abort`` forgets
    what ``respond`` staged when the swap ends without one. ``acked``: the swap ended with an ack, and
    the stream may carry the caller's next one.

    ``peer`` is read when the call starts: the receiving task may count a refusal after the call ended,
    when asking gRPC for the peer of a finished call crashes the process (grpcio 1.85)."""

    def __init__(self, servicer: _Servicer, peer: str, next_frame: NextFrame) -> None:
        self.server, self.limits, self.peer = servicer.server, servicer.limits, peer
        self.lanes, self.lane_port = servicer.lanes, servicer.lane_port
        self.reader = FrameReader(next_frame, self.limits)
        self.lane: Lane | None = None  # the payload lane of this swap, if the client sends on one
        self.sending: asyncio.Future[None] | None = None  # the reply's payload going out on the lane
        self.receiving: asyncio.Future[tuple[FactorMessage, FactorMessage]] | None = None
        self.counted: Rejected | None = None  # the refusal counted already (by the receiving task)
        self.acked = False

    def _count(self, r: Rejected) -> None:
        if r is not self.counted:
            self.counted = r
            self.server.count_rejection(r.reason, r.detail, self.peer)

    def _refused(self, r: Rejected) -> Frame:
        self._count(r)
        return reject_frame(r)

    async def _receive(self, header: Header) -> tuple[FactorMessage, FactorMessage]:
        """The incoming payload, validated and staged by ``respond``; with ``respond``'s answer. A
        refusal is counted here, at once: the stream may be cancelled before the handler sees it
        (gRPC ends a stream whose frame is over the message cap)."""
        try:
            incoming = await (self.reader.payload(header) if self.lane is None else self._from_lane(self.lane, header))
            return incoming, await self.server.respond(incoming)
        except Rejected as r:
            self._count(r)
            raise

    async def _claim_lane(self, header: Header) -> Lane:
        token = self.reader.lane_token
        if self.lanes is None:
            raise Rejected(Reason.FRAMING, "a payload on a lane, and this peer listens for none")
        if len(token) != TOKEN_BYTES:
            raise Rejected(Reason.FRAMING, f"a lane token of {len(token)} bytes")
        return await self.lanes.claim(token, header.payload_size)

    async def _from_lane(self, lane: Lane, header: Header) -> FactorMessage:
        """The payload ``header`` announced, from the lane, by the same deadline as in chunks."""
        self.reader.start_payload(header)
        assert self.reader.deadline is not None
        try:
            payload, digest = await lane.receive(header.payload_size, self.reader.deadline)
        except LaneBroken as exc:
            raise Rejected(Reason.TRUNCATED, str(exc)) from None
        except TimeoutError:
            raise Rejected(Reason.STALLED, f"slower than {self.limits.min_bytes_per_s:g} bytes/s") from None
        message = FactorMessage(header, payload)
        check_payload(message, digest)
        return message

    async def run(self, screen) -> AsyncIterator[Frame]:
        committed, early = False, None
        try:
            try:
                header = await self.reader.header()
                if self.reader.lane_token:  # before the screen: the connection waits for its claim only so long
                    self.lane = await self._claim_lane(header)
                early = await screen(header)
                if early is not None and self.lane is not None:
                    self._send_on_lane(early)  # before the receive starts: its thread must not wait behind it
                self.receiving = asyncio.ensure_future(self._receive(header))
                if early is not None:
                    async for frame in self._send(early):
                        yield frame
                incoming, reply = await self.receiving
            except Rejected as r:
                yield self._refused(r)
                if early is not None:
                    await self._answer()  # the reply went out: let the client's commit land before the end
                return
            if early is None:
                async for frame in self._send(reply):
                    yield frame
            answer = await self._answer()
            kind = None if answer is None else kind_of(answer)
            if kind == "commit" and answer.commit.round == incoming.header.round:  # type: ignore[union-attr]
                committed = await self.server.commit(incoming.header)
                if committed:
                    lane_kept = self._keep_lane()
                    yield pb.Frame(ack=pb.CommitAck(round=incoming.header.round, lane_kept=lane_kept))
                    self.acked = True
                else:
                    yield reject_frame(Rejected(Reason.ROUND_CLOSED, "the server mixed this round already"))
            elif answer is not None and kind != "reject":
                # anything but a commit (or the client's own refusal) where the commit belongs
                yield self._refused(Rejected(Reason.FRAMING, f"expected a commit for round {incoming.header.round}"))
        finally:
            await self._end(committed)

    async def _send(self, reply: FactorMessage) -> AsyncIterator[Frame]:
        """The reply's frames, cut by the rate floor: a caller that stops reading blocks the writes
        (HTTP/2 flow control). Stops early when the incoming message is refused meanwhile. On a lane,
        only the header goes on the stream, once the payload is on its way on the lane (``_end`` closes it)."""
        if self.lane is not None:  # the payload first, as the client does (``_ClientSwap._on_lane``)
            if self.sending is None:
                self._send_on_lane(reply)
            yield header_frame(reply.header, lane_token=self.reader.lane_token, lane_port=self.lane_port)
            return
        watchdog = _cancel_after(_sending_time(self.limits, reply.header.payload_size))
        try:
            for frame in to_frames(reply, self.limits.chunk_size, self.lane_port):
                if self._refused_meanwhile():
                    return
                yield frame
        finally:
            watchdog.cancel()

    def _send_on_lane(self, reply: FactorMessage) -> None:
        assert self.lane is not None
        deadline = asyncio.get_running_loop().time() + _sending_time(self.limits, reply.header.payload_size)
        self.sending = asyncio.ensure_future(self.lane.send(reply.payload, deadline))

    def _refused_meanwhile(self) -> bool:
        return self.receiving is not None and _failed(self.receiving)

    async def _answer(self) -> Frame | None:
        """The frame where the commit belongs, or None after a frame timeout (or the stream's end). A
        reply still going out on the lane bounds the wait by its own deadline until it is out (in
        chunks, the last of them went out before this wait began): the client commits only once it
        has all of it. The frame is read meanwhile, so a commit is taken the moment it comes (waiting
        for the sending thread to report first cost a swap of 0.3 MB about a millisecond)."""
        loop, sending, frame_timeout = asyncio.get_running_loop(), self.sending, self.limits.frame_timeout
        going_out = sending is not None and not sending.done()
        timeout = asyncio.timeout(None if going_out else frame_timeout)

        def reply_out(_: asyncio.Future) -> None:
            with contextlib.suppress(RuntimeError):  # the wait ended meanwhile
                timeout.reschedule(loop.time() + frame_timeout)

        try:
            async with timeout:
                if going_out:
                    sending.add_done_callback(reply_out)  # type: ignore[union-attr]
                return await self.reader.next_frame()
        except TimeoutError:
            return None
        finally:
            if going_out:
                sending.remove_done_callback(reply_out)  # type: ignore[union-attr]

    def _keep_lane(self) -> bool:
        """Hand the lane to the listener for the client's next swap, once the reply went out whole on
        it (the client committed, so it has all of it: the sending thread is done, or about to be; if
        not yet, the lane is not kept): on a shaped link a kept connection carries more of the link's
        rate than a new one."""
        lane = self.lane
        if lane is None or self.lanes is None or (sock := lane.detach()) is None:
            return False
        if not self.lanes.keep(sock, lane.host):
            sock.close()
            return False
        self.lane = None
        return True

    async def _end(self, committed: bool) -> None:
        receiving = self.receiving
        cut_short = receiving is not None and not receiving.done()
        if cut_short:  # cancelled before the lane closes under it: a cut swap is no refusal of its payload
            receiving.cancel()  # type: ignore[union-attr]
        if self.lane is not None:  # after an ack the client has all of the reply: closing cuts nothing short
            self.lane.close()
        staged = receiving is not None and not cut_short and not receiving.cancelled() and receiving.exception() is None
        if staged and not committed:  # first: a handler being cancelled stops at its first await
            await self.server.abort(receiving.result()[0].header)  # type: ignore[union-attr]
        tasks = [task for task in (receiving, self.sending) if task is not None]
        for task in tasks:  # a reply whose lane the client cut failed: read, or asyncio logs it as never retrieved
            if task.done() and not task.cancelled():
                task.exception()
        pending = [task for task in tasks if not task.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _handlers(servicer: _Servicer) -> grpc.GenericRpcHandler:
    """peer.proto's service, with the frames of Exchange and Fetch (de)serialized by ``encode_frame``
    and ``decode_frame`` (chunks without protobuf; the wire is the same)."""
    methods = {
        "Exchange": grpc.stream_stream_rpc_method_handler(
            servicer.Exchange, request_deserializer=decode_frame, response_serializer=encode_frame
        ),
        "Fetch": grpc.unary_stream_rpc_method_handler(
            servicer.Fetch, request_deserializer=pb.FetchRequest.FromString, response_serializer=encode_frame
        ),
        "Status": grpc.unary_unary_rpc_method_handler(
            servicer.Status,
            request_deserializer=pb.StatusRequest.FromString,
            response_serializer=pb.StatusReply.SerializeToString,
        ),
        "Outcome": grpc.unary_unary_rpc_method_handler(
            servicer.Outcome,
            request_deserializer=pb.OutcomeRequest.FromString,
            response_serializer=pb.OutcomeReply.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


@dataclass
class _KeptStream:
    call: grpc.aio.StreamStreamCall
    idle_since: float  # the loop's time of its last swap's ack


class _StreamEndedBeforeSwap(Exception):
    """A kept stream turned out to be ended (by the server's idle wait, or a restart) before this
    swap's first answer: nothing of the swap reached a live handler, so it is sent on a new stream."""


@dataclass
class _KeptLane:
    sock: socket.socket
    port: int  # the lane port it was opened to
    idle_since: float  # the loop's time of its last swap's ack


@dataclass
class _Peer:
    """A kept channel to one address and its methods (made once: a stub per call costs), and the
    Exchange stream and payload lane of its last swap that ended with an ack, for the next swap."""

    channel: grpc.aio.Channel
    kept: _KeptStream | None = None
    kept_lane: _KeptLane | None = None
    lane_port: int = 0  # the server's payload lane, as its last reply header named it (0: none)
    unreachable_lane: int = 0  # a lane port that could not be connected to: not tried again before
    unreachable_until: float = 0.0  # this time of the event loop (``LANE_RETRY_AFTER_S`` after the try)
    lane_used: bool = False  # a swap with it went on its lane (said once in the log per channel)
    closed: bool = False  # its channel was closed: nothing is kept for it any more

    def take_kept(self, now: float) -> grpc.aio.StreamStreamCall | None:
        """The kept stream for one swap (it is no longer kept meanwhile), if it is open and fresh."""
        kept, self.kept = self.kept, None
        if kept is None:
            return None
        if kept.call.done() or now - kept.idle_since > REUSE_KEPT_STREAM_WITHIN_S:
            kept.call.cancel()
            return None
        return kept.call

    def keep(self, call: grpc.aio.StreamStreamCall, now: float) -> bool:
        """Keep ``call`` for the next swap, unless another stream is kept already."""
        if self.kept is not None or self.closed:
            return False
        self.kept = _KeptStream(call, now)
        return True

    def take_lane(self, port: int, now: float) -> Lane | None:
        """The kept lane for one swap to ``port`` (it is no longer kept meanwhile), if it is open and
        fresh."""
        kept, self.kept_lane = self.kept_lane, None
        if kept is None:
            return None
        lane = Lane(kept.sock)
        if kept.port == port and now - kept.idle_since <= REUSE_KEPT_STREAM_WITHIN_S and lane.still_open():
            return lane
        lane.close()
        return None

    def keep_lane(self, sock: socket.socket, port: int, now: float) -> bool:
        """Keep a lane for the next swap, unless another one is kept already."""
        if self.kept_lane is not None or self.closed:
            return False
        self.kept_lane = _KeptLane(sock, port, now)
        return True

    def drop_kept(self) -> None:
        """End the kept stream and close the kept lane, and keep nothing from now on (the channel
        closes)."""
        self.closed = True
        if self.kept is not None:
            self.kept.call.cancel()
        self.kept = None
        self.drop_kept_lane()

    def drop_kept_lane(self) -> None:
        if self.kept_lane is not None:
            self.kept_lane.sock.close()
        self.kept_lane = None

    def __post_init__(self) -> None:
        c = self.channel
        self.exchange = c.stream_stream(
            f"/{SERVICE}/Exchange", request_serializer=encode_frame, response_deserializer=decode_frame
        )
        self.fetch = c.unary_stream(
            f"/{SERVICE}/Fetch",
            request_serializer=pb.FetchRequest.SerializeToString,
            response_deserializer=decode_frame,
        )
        self.status = c.unary_unary(
            f"/{SERVICE}/Status",
            request_serializer=pb.StatusRequest.SerializeToString,
            response_deserializer=pb.StatusReply.FromString,
        )
        self.outcome = c.unary_unary(
            f"/{SERVICE}/Outcome",
            request_serializer=pb.OutcomeRequest.SerializeToString,
            response_deserializer=pb.OutcomeReply.FromString,
        )


class _ClientSwap:
    """The client's side of one swap: on a kept stream (``reused``) or a new one. Kept for the next
    swap only when it ends with the ack; ended (cancelled) otherwise, which the server reads as "no
    commit" if none was sent."""

    def __init__(
        self,
        transport: GrpcTransport,
        peer: _Peer,
        address: str,
        outgoing: FactorMessage,
        validate: Validator,
        timeout: float,
        deadline: float,
    ) -> None:
        self.transport, self.peer, self.address = transport, peer, address
        self.outgoing, self.validate = outgoing, validate
        self.timeout, self.deadline = timeout, deadline
        self.lane: Lane | None = None  # the payload lane of the attempt under way, if it uses one
        self.sending: asyncio.Future[None] | None = None  # our payload going out on the lane
        self.receiving: asyncio.Future[tuple[bytearray, bytes]] | None = None  # the reply's payload on the lane
        self.after_reply: asyncio.Future[Frame | None] | None = None  # on a lane: the frame after the reply
        self.lane_port = 0  # the port of that lane

    async def on(self, call, *, reused: bool) -> FactorMessage:
        address, lost = self.address, self.transport._lost
        committed, reply, kept, lane_kept = False, None, False, False
        next_frame = _CallReader(call)
        self.lane = self.sending = self.receiving = self.after_reply = None
        try:
            async with asyncio.timeout_at(self.deadline):
                reply = await self._send_and_receive(call, next_frame)
                if await lost(Step.REPLY, address, to_server=False):
                    raise ExchangeFailed(f"{address}: reply lost")
                try:
                    await self.validate(reply)
                except Rejected as r:
                    await call.write(reject_frame(r))
                    raise
                if await lost(Step.COMMIT, address):
                    raise ExchangeOutcomeUnknown(reply)  # we count as committed; the server never hears it
                committed = True  # from here on a broken call may have delivered the commit: outcome unknown
                await call.write(pb.Frame(commit=pb.Commit(round=self.outgoing.header.round)))
                ack = await (next_frame() if self.after_reply is None else self.after_reply)
                if await lost(Step.ACK, address, to_server=False):
                    raise ExchangeOutcomeUnknown(reply)
                if isinstance(ack, pb.Frame) and ack.HasField("reject"):
                    # the server refused our factors (after streaming its own) or mixed the round already
                    raise Rejected(Reason.of(ack.reject.reason), shown(ack.reject.detail), ack.reject.current_round)
                if ack is None or kind_of(ack) != "ack":
                    raise ExchangeOutcomeUnknown(reply)
                lane_kept = isinstance(ack, pb.Frame) and ack.ack.lane_kept
            now = asyncio.get_running_loop().time()
            kept = self.peer.keep(call, now)
            if lane_kept:
                self._keep_lane(now)
            return reply  # the ack is the protocol's last word: no half-close, the stream waits for the next swap
        except TimeoutError:
            if committed and reply is not None:
                raise ExchangeOutcomeUnknown(reply) from None
            # the words gRPC's own deadline used: the round's clock (clock.py) names this symptom
            raise ExchangeFailed(f"{address}: DEADLINE_EXCEEDED, no answer within {self.timeout:g} s") from None
        except asyncio.CancelledError:
            if not _call_cancelled_under_us():
                raise  # this swap itself is being cancelled
            if committed and reply is not None:
                raise ExchangeOutcomeUnknown(reply) from None
            raise ExchangeFailed(f"{address}: the channel was closed during the swap") from None
        except grpc.aio.AioRpcError as exc:
            if committed and reply is not None:  # the reply came before the commit was sent
                raise ExchangeOutcomeUnknown(reply) from None
            if reused and not next_frame.frames and _ended_before_answer(exc):
                raise _StreamEndedBeforeSwap from None
            raise _failure(address, exc) from None
        except asyncio.InvalidStateError:
            # a write after the server ended the stream (it refused ours midway, or its watchdog cut
            # it): gRPC sent nothing, so no commit reached it and the link counts at neither end
            raise ExchangeFailed(f"{address}: the server ended the stream before taking all of ours") from None
        except Rejected as r:
            if reused and not next_frame.frames and r.reason == Reason.TRUNCATED:
                # the stream's plain end, read where the answer was due: the server ended the kept
                # stream (its idle wait, a slot given to another stream, its stop) before this swap
                raise _StreamEndedBeforeSwap from None
            raise
        finally:
            if not kept:
                call.cancel()
            if self.lane is not None:
                self.lane.close()
            tasks: tuple[asyncio.Future | None, ...] = (self.sending, self.receiving, self.after_reply)
            pending = [task for task in tasks if task is not None]
            await asyncio.gather(*pending, return_exceptions=True)

    def _keep_lane(self, now: float) -> None:
        """Keep the lane for the next swap, as the server does (its ack said so); both transfers are done
        (``_on_lane`` returns only then)."""
        if self.lane is None or (sock := self.lane.detach()) is None:
            return
        if self.peer.keep_lane(sock, self.lane_port, now):
            self.lane = None
        else:
            sock.close()

    async def _send_and_receive(self, call, next_frame: _CallReader) -> FactorMessage:
        """Send ours and read the server's reply at the same time: a server may stream its reply (or
        refuse, after the header) before it has the whole of ours. On the server's payload lane if it
        has one and ours is large enough, else in chunks on the stream."""
        limits = self.transport.limits
        if self._lane_wanted():
            lane, token = await self._open_lane()
            if lane is not None:
                return await self._on_lane(call, next_frame, lane, token)
        else:  # a kept lane that this swap does not want is not left open until the server closes it
            self.peer.drop_kept_lane()

        async def write_message() -> None:
            for frame in to_frames(self.outgoing, limits.chunk_size):
                await call.write(frame)

        writer = asyncio.ensure_future(write_message())
        try:
            reader = FrameReader(next_frame, limits)
            header = await reader.header()
            self.peer.lane_port = reader.lane_port
            reply = await reader.payload(header)
        except BaseException:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            raise
        await writer  # the reply may be complete before our message is: it still goes out whole
        return reply

    def _lane_wanted(self) -> bool:
        least = self.transport.limits.lane_min_bytes
        return (
            bool(self.peer.lane_port)
            and (
                self.peer.lane_port != self.peer.unreachable_lane
                or asyncio.get_running_loop().time() >= self.peer.unreachable_until
            )
            and least is not None
            and self.transport.tls is None
            and len(self.outgoing.payload) >= least
        )

    async def _open_lane(self) -> tuple[Lane | None, bytes]:
        """A lane to the server, and this swap's token for its hello: the lane kept from the last swap
        if it is still open, else a new one; None if it cannot be opened within a frame timeout (the
        server restarted without one, say): the swap then goes in chunks, and the lane is forgotten
        until a reply header names one again."""
        token, loop, port = new_token(), asyncio.get_running_loop(), self.peer.lane_port
        self.lane_port = port
        if (kept := self.peer.take_lane(port, loop.time())) is not None:
            return kept, token
        deadline = min(self.deadline, loop.time() + min(LANE_CONNECT_TIMEOUT_S, self.transport.limits.frame_timeout))
        try:
            lane = await open_lane(self.address, port, deadline)
        except (OSError, TimeoutError) as exc:
            log.info("%s: its lane (port %d) cannot be reached (%s): payloads go in chunks", self.address, port, exc)
            self.peer.lane_port, self.peer.unreachable_lane = 0, port
            self.peer.unreachable_until = loop.time() + LANE_RETRY_AFTER_S
            return None, token
        return lane, token

    async def _on_lane(self, call, next_frame: _CallReader, lane: Lane, token: bytes) -> FactorMessage:
        """Our header on the stream and our payload on the lane; the server's reply header on the
        stream and its payload on the lane. Whatever comes on the stream meanwhile is a refusal (or its
        end): it is read beside the lane, and kept as the frame where the ack belongs."""
        self.lane, limits = lane, self.transport.limits
        # the payload first: the header's write waits on gRPC's own thread (about a millisecond), and
        # on a shaped link each direction's flow loses more than its delay when it starts apart
        payload = self.outgoing.payload
        self.sending = asyncio.ensure_future(lane.send(payload, self.deadline, hello_for(token, len(payload))))
        await call.write(header_frame(self.outgoing.header, lane_token=token))
        reader = FrameReader(next_frame, limits)
        try:
            header = await reader.header()
        except Rejected as r:
            if r.reason in _LANE_REFUSALS:
                # the port may be another process's since the server restarted (its claim then waits
                # in vain), or its lane is off: the next swap goes in chunks, and learns it again
                self.peer.lane_port = 0
            raise
        self.peer.lane_port = reader.lane_port
        if reader.lane_token != token:
            raise Rejected(Reason.FRAMING, "the reply to a payload on a lane came without the lane")
        reader.start_payload(header)
        assert reader.deadline is not None
        self.receiving = receiving = asyncio.ensure_future(lane.receive(header.payload_size, reader.deadline))
        self.after_reply = after = asyncio.ensure_future(next_frame())
        transfers = (receiving, self.sending)
        while not after.done() and not all(t.done() for t in transfers) and not any(map(_failed, transfers)):
            # only what is still pending: a done one would return at once, and the loop would spin,
            # holding the GIL that the lane's threads need (a 0.3 MB swap took a millisecond longer)
            pending = [t for t in transfers if not t.done()]
            await asyncio.wait((*pending, after), return_when=asyncio.FIRST_COMPLETED)
        # on any way out, the lane is closed (ending the other transfer) and both are gathered by ``on``
        if after.done():  # before both payloads went whole: a refusal, or the stream's end
            lane.close()
            raise _before_commit(after.result())
        failure = next((t.exception() for t in transfers if _failed(t)), None)
        if failure is not None:
            lane.close()
            if isinstance(failure, (LaneBroken, TimeoutError)):
                raise await self._why_lane_broke(failure) from None
            raise failure
        payload, digest = receiving.result()
        reply = FactorMessage(header, payload)
        check_payload(reply, digest)
        if not self.peer.lane_used:
            self.peer.lane_used = True
            log.info("%s: payloads go on its lane (port %d)", self.address, self.peer.lane_port)
        return reply

    async def _why_lane_broke(self, exc: Exception) -> Exception:
        """The server's refusal, if it sends one soon (it does so before it closes the lane); else the
        lane's own failure."""
        assert self.after_reply is not None
        await asyncio.wait((self.after_reply,), timeout=LANE_REFUSAL_WAIT_S)
        if self.after_reply.done() and not self.after_reply.cancelled() and self.after_reply.exception() is None:
            frame = self.after_reply.result()
            if isinstance(frame, pb.Frame) and frame.HasField("reject"):
                return _before_commit(frame)
        if isinstance(exc, TimeoutError):
            return TimeoutError()  # the swap's deadline, or the rate floor of the payload: as in chunks
        return ExchangeFailed(f"{self.address}: {exc}")


# refusals, where the server's reply header was due, that may say the lane it named is not there: its
# claim waited in vain (the port is another process's), or the server has no lane; or no frame came
# at all. A server that answers only after the payload (no early reply) refuses a slow or malformed
# payload with them too: the lane is then forgotten for one swap in chunks, which names it again.
_LANE_REFUSALS = (Reason.STALLED, Reason.FRAMING)


def _failed(task: asyncio.Future) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _before_commit(frame: Frame | None) -> Rejected:
    """What a frame that came before the commit was due means: a refusal, or the stream's end."""
    if frame is None:
        return Rejected(Reason.TRUNCATED, "stream ended mid-message (or a frame was over the message cap)")
    if isinstance(frame, pb.Frame) and frame.HasField("reject"):
        return Rejected(Reason.of(frame.reject.reason), shown(frame.reject.detail), frame.reject.current_round)
    return Rejected(Reason.FRAMING, f"a {kind_of(frame)} frame where none was due")


class GrpcTransport(Transport):
    """``tls``: this peer's certificates (``peer.transport.tls.load``); None serves and dials in the
    clear and accepts anyone who speaks the protocol.

    ``faults`` (the fault simulator's, ``peer.faultsim``; none by default) loses this client's messages
    the way a network does, each at its own step: a lost request is silence until the timeout, a lost
    reply or commit cancels the stream (the server sees it end without a commit), a lost ack is read
    and dropped (the server counted the link; the client does not know).

    ``lane_port``: where its payload lane listens when it serves (``peer.transport.lane``; 0: a port
    the system picks, named to callers in every reply header). No lane over TLS, or with
    ``Limits.lane_min_bytes`` None."""

    def __init__(
        self,
        limits: Limits | None = None,
        tls: TlsMaterial | None = None,
        faults: NetworkFaults | None = None,
        name: str = "",
        lane_port: int = 0,
    ) -> None:
        self.limits, self.tls = limits or Limits(), tls
        self.listen_lane_port = lane_port
        self.faults, self.name = faults or NetworkFaults(), name
        self._server: grpc.aio.Server | None = None
        self._lanes: LaneListener | None = None
        self._channels: dict[tuple[str, str], _Peer] = {}  # (address, certificate name)
        self._closing: set[asyncio.Future] = set()

    async def _lost(self, step: Step, address: str, to_server: bool = True) -> bool:
        source, destination = (self.name, address) if to_server else (address, self.name)
        return not await self.faults.deliver(step, source, destination)

    async def serve(self, server: ExchangeServer, address: str) -> str:
        self._server = grpc.aio.server(options=_channel_options(self.limits))
        lane_port = 0
        if self.tls is None and self.limits.lane_min_bytes is not None:
            limits = self.limits
            self._lanes = LaneListener(
                limits.max_streams, limits.max_streams_per_address, limits.frame_timeout, KEPT_STREAM_IDLE_S
            )
            lane_port = await self._lanes.start(host_of(address), self.listen_lane_port)
        self.servicer = _Servicer(server, self.limits, self.tls, self._lanes, lane_port)
        self._server.add_generic_rpc_handlers((_handlers(self.servicer),))
        if self.tls is None:
            port = self._server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.key, self.tls.cert)], root_certificates=self.tls.ca, require_client_auth=True
            )
            port = self._server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await self._server.start()
        return f"{address.rsplit(':', 1)[0]}:{port}"

    def _stub(self, address: str, expect: str | None) -> _Peer:
        """The kept channel to ``address`` whose server must hold a certificate naming ``expect``
        (every peer certificate names its peer id and TLS_NAME, which any member of the run passes)."""
        name = expect or TLS_NAME
        peer = self._channels.pop((address, name), None)
        if peer is None:
            peer = _Peer(self._dial(address, name))
            if len(self._channels) >= MAX_CHANNELS:  # announcements of many fake addresses: drop the least
                oldest = next(iter(self._channels))  # recently used; its calls in flight get a frame timeout
                stale = self._channels.pop(oldest)
                stale.drop_kept()
                closing = stale.channel.close(grace=self.limits.frame_timeout)
                self._closing.add(task := asyncio.ensure_future(closing))  # kept until done
                task.add_done_callback(self._closing.discard)
        self._channels[(address, name)] = peer  # most recently used last: a crowd evicts itself
        return peer

    def _dial(self, address: str, name: str) -> grpc.aio.Channel:
        options = _channel_options(self.limits)
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca, private_key=self.tls.key, certificate_chain=self.tls.cert
        )
        # peers are dialled by address: the name checked in the handshake is the expected peer's
        override = ("grpc.ssl_target_name_override", name)
        return grpc.aio.secure_channel(address, credentials, options=[*options, override])

    @property
    def lane_port(self) -> int:
        """The port this peer's payload lane listens on; 0 if it has none (not serving, TLS, or off)."""
        return 0 if self._server is None else self.servicer.lane_port

    def learn_lane(self, address: str, port: int, expect: str | None = None) -> None:
        """Use the payload lane at ``port`` for swaps with ``address`` from now on, as if a reply had
        named it (a swap learns it from the server's reply header otherwise)."""
        self._stub(address, expect).lane_port = port

    async def exchange(
        self, address: str, outgoing: FactorMessage, validate: Validator, timeout: float, *, expect: str | None = None
    ) -> FactorMessage:
        if await self._lost(Step.SWAP, address):
            await asyncio.sleep(timeout)
            raise ExchangeFailed(f"{address}: no answer within {timeout:g} s")
        peer = self._stub(address, expect)
        loop = asyncio.get_running_loop()
        swap = _ClientSwap(self, peer, address, outgoing, validate, timeout, loop.time() + timeout)
        kept = peer.take_kept(loop.time())
        if kept is not None:
            try:
                return await swap.on(kept, reused=True)
            except _StreamEndedBeforeSwap:
                pass
        try:
            call = peer.exchange()
        except grpc.aio.UsageError:  # the channel was closed meanwhile (a crowd of addresses evicted it)
            raise ExchangeFailed(f"{address}: its channel was closed") from None
        return await swap.on(call, reused=False)

    async def status(self, address: str, timeout: float, *, expect: str | None = None) -> StatusInfo:
        if await self._lost(Step.STATUS, address):
            await asyncio.sleep(timeout)
            raise ExchangeFailed(f"{address}: no answer within {timeout:g} s")
        with _call_failures(address):
            return status_from_pb(await self._stub(address, expect).status(pb.StatusRequest(), timeout=timeout))

    async def fetch(
        self, address: str, run_id: str, peer_id: str, timeout: float, *, expect: str | None = None
    ) -> FactorMessage:
        if await self._lost(Step.FETCH, address):
            await asyncio.sleep(timeout)
            raise ExchangeFailed(f"{address}: no answer within {timeout:g} s")
        call = self._stub(address, expect).fetch(pb.FetchRequest(run_id=run_id, peer_id=peer_id), timeout=timeout)
        try:
            with _call_failures(address):
                return await read_message(_CallReader(call), self.limits)
        finally:
            call.cancel()

    async def outcome(
        self, address: str, run_id: str, peer_id: str, round_: int, timeout: float, *, expect: str | None = None
    ) -> bool | None:
        if await self._lost(Step.OUTCOME, address):
            await asyncio.sleep(timeout)
            return None
        try:
            reply = await self._stub(address, expect).outcome(
                pb.OutcomeRequest(run_id=run_id, peer_id=peer_id, round=round_), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None
        except asyncio.CancelledError:
            if not _call_cancelled_under_us():
                raise
            return None  # the channel was closed during the call: no answer
        return reply.counted if reply.known else None

    async def close(self) -> None:
        for peer in self._channels.values():
            peer.drop_kept()
            await peer.channel.close()
        self._channels.clear()
        if self._server is not None:
            self.servicer.end_idle()
            await self._server.stop(grace=0.5)
            self._server = None
        if self._lanes is not None:
            await self._lanes.close()
            self._lanes = None
