"""One contract, two transports: every test here runs over gRPC on loopback (its payloads in chunks on
the stream, over TLS, and on the payload lane) and in memory, and with a server that answers at the
screen (streams its reply while the client's factors still arrive, as the daemon does) as well as one
that answers only after validating them."""

import asyncio
import contextlib
import dataclasses

import pytest
import torch

from peer.transport.base import ExchangeFailed, ExchangeServer, FactorMessage, Header, Rejected, StatusInfo
from peer.transport.codec import DecodeError, decode_factors, encode_factors, schema_digest, schema_of
from peer.transport.framing import Limits, seal
from peer.transport.grpc_transport import GrpcTransport
from peer.transport.memory import MemoryNetwork, MemoryTransport
from peer.transport.tls import TLS_NAME

LIMITS = Limits(chunk_size=1024, max_payload_bytes=1 << 20, frame_timeout=2.0, lane_min_bytes=None)
# every payload on the payload lane, once a first swap learned the server's lane port
LANE_LIMITS = dataclasses.replace(LIMITS, lane_min_bytes=0)


def tensors(value: float, n: int = 3) -> dict[str, torch.Tensor]:
    return {f"layer.{i}.lora_A.weight": torch.full((4, 16), value + i) for i in range(n)}


SCHEMA = schema_of(tensors(0.0))


def message(sender: str, round_: int, value: float, run: str = "run-1") -> FactorMessage:
    payload = encode_factors(tensors(value))
    return seal(
        Header(
            run_id=run, sender_id=sender, round=round_, phase="A", factors=("A",), schema_digest=schema_digest(SCHEMA)
        ),
        payload,
    )


class FakePeer(ExchangeServer):
    """``early``: the reply is given at the screen (the daemon's way); else only by ``respond``."""

    def __init__(self, peer_id: str, round_: int, value: float, early: bool = False) -> None:
        self.peer_id, self.round, self.value, self.early = peer_id, round_, value, early
        self.commits, self.aborts, self.received, self.rejections = [], [], [], {}
        self.closed = False

    def check(self, h):
        if h.run_id != "run-1":
            raise Rejected("run", f"run {h.run_id!r}", self.round)
        if h.round != self.round:
            raise Rejected("round-behind" if h.round < self.round else "round-ahead", "", self.round)

    async def screen(self, header):
        self.check(header)
        return message(self.peer_id, self.round, self.value) if self.early else None

    async def respond(self, incoming):
        self.check(incoming.header)
        try:
            self.received.append(decode_factors(incoming.payload, SCHEMA))
        except DecodeError as exc:  # as the daemon does
            raise Rejected(exc.reason, exc.detail, self.round) from None
        return message(self.peer_id, self.round, self.value)

    async def commit(self, header):
        if self.closed:
            return False
        self.commits.append((header.sender_id, header.round))
        return True

    async def abort(self, header):
        self.aborts.append((header.sender_id, header.round))

    def status(self):
        return StatusInfo(self.peer_id, "run-1", self.round, "A", schema_digest(SCHEMA), 3, [], dict(self.rejections))

    async def current_factors(self, run_id, peer_id):
        if run_id != "run-1":
            raise Rejected("run", "other run")
        if peer_id != "peer-a":
            raise Rejected("membership", "not a known peer")
        return message(self.peer_id, self.round, self.value)

    def outcome(self, peer_id, round_, run_id):
        if run_id != "run-1" or peer_id != "peer-a":
            return None
        return (peer_id, round_) in self.commits if round_ == self.round else None

    def count_rejection(self, reason, detail="", source=""):
        self.rejections[reason] = self.rejections.get(reason, 0) + 1


async def accept(_):
    return None


@pytest.fixture(scope="module")
def run_certs(tmp_path_factory):
    from peer.transport.tls import make_run

    folder = tmp_path_factory.mktemp("certs")
    make_run(folder, "run-1", ["peer-a", "peer-b"])
    return folder


@pytest.fixture(params=["grpc", "grpc-tls", "grpc-lane", "memory", "grpc+early", "grpc-lane+early", "memory+early"])
def transports(request, run_certs):
    """Makes the transport of one peer (``peer-a`` dials, ``peer-b`` serves); ``make.early``: whether the
    server of ``pair`` answers at the screen."""
    from peer.transport.tls import load

    network = MemoryNetwork()
    kind, _, early = request.param.partition("+")

    def make(peer_id="peer-a"):
        if kind == "memory":
            return MemoryTransport(network, LIMITS)
        tls = None
        if kind == "grpc-tls":
            f = run_certs
            tls = load(f / "ca.pem", f / f"{peer_id}.pem", f / f"{peer_id}.key", peer_id, "run-1")
        return GrpcTransport(LANE_LIMITS if kind == "grpc-lane" else LIMITS, tls)

    make.early, make.lane = bool(early), kind == "grpc-lane"
    return make


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def pair(make, server_round=5, value=7.0):
    """A server peer and a client transport; both transports closed on the way out."""
    server_t, client_t = make("peer-b"), make("peer-a")
    peer = FakePeer("peer-b", server_round, value, make.early)
    address = await server_t.serve(peer, "127.0.0.1:0")
    if make.lane:  # as if an earlier swap's reply had named the lane
        client_t.learn_lane(address, server_t.lane_port)
    try:
        yield client_t, peer, address
        if make.lane and peer.commits:  # a link counted: then the lane carried a swap (none of these falls back)
            assert server_t._lanes.claimed > 0
    finally:
        await client_t.close()
        await server_t.close()


def test_swap_delivers_both_ways_and_both_ends_count_it(transports):
    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            reply = await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            got = decode_factors(reply.payload, SCHEMA)
            assert torch.equal(got["layer.2.lora_A.weight"], torch.full((4, 16), 9.0))
            assert torch.equal(peer.received[0]["layer.0.lora_A.weight"], torch.full((4, 16), 1.0))
            assert peer.commits == [("peer-a", 5)] and peer.aborts == []
            assert await client_t.outcome(address, "run-1", "peer-a", 5, timeout=2) is True

    run(scenario())


def test_payload_larger_than_many_chunks(transports):
    big = {f"t{i}.lora_B.weight": torch.randn(64, 64) for i in range(8)}  # 128 KiB in 1 KiB chunks
    schema = schema_of(big)

    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            peer.respond, peer.early = _echo, False  # the echo depends on the incoming factors
            out = seal(Header("run-1", "peer-a", 5, "B", ("B",), schema_digest(schema)), encode_factors(big))
            reply = await client_t.exchange(address, out, accept, timeout=10)
            back = decode_factors(reply.payload, schema)
            assert all(torch.equal(back[k], v) for k, v in big.items())

    async def _echo(incoming):
        return FactorMessage(incoming.header, incoming.payload)

    run(scenario())


def test_message_of_the_wrong_round_is_rejected_and_nothing_counts(transports):
    async def scenario():
        async with pair(transports, server_round=6) as (client_t, peer, address):
            with pytest.raises(Rejected) as info:
                await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert info.value.reason == "round-behind" and info.value.current_round == 6
            assert peer.commits == [] and peer.received == []

    run(scenario())


def test_client_refusing_the_answer_counts_at_neither_end(transports):
    async def refuse(_):
        raise Rejected("schema", "not for me")

    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            with pytest.raises(Rejected):
                await client_t.exchange(address, message("peer-a", 5, 1.0), refuse, timeout=5)
            for _ in range(50):  # the server learns of the abort when the stream closes
                if peer.aborts:
                    break
                await asyncio.sleep(0.02)
            assert peer.commits == [] and peer.aborts == [("peer-a", 5)]

    run(scenario())


def test_corrupted_payload_is_refused_by_hash(transports):
    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            bad = message("peer-a", 5, 1.0)
            bad.payload = bad.payload[:-1] + bytes([bad.payload[-1] ^ 1])
            with pytest.raises(Rejected) as info:
                await client_t.exchange(address, bad, accept, timeout=5)
            assert info.value.reason == "payload-hash"
            assert peer.received == [] and peer.rejections == {"payload-hash": 1}

    run(scenario())


def test_oversized_payload_is_refused(transports):
    async def scenario():
        async with pair(transports) as (client_t, _peer, address):
            big = seal(Header("run-1", "peer-a", 5, "A", ("A",), b""), b"\0" * (LIMITS.max_payload_bytes + 1))
            with pytest.raises(Rejected) as info:
                await client_t.exchange(address, big, accept, timeout=5)
            assert info.value.reason == "too-large"

    run(scenario())


def test_status_fetch_and_unreachable_peer(transports):
    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            status = await client_t.status(address, timeout=2)
            assert (status.peer_id, status.round, status.switch_interval) == ("peer-b", 5, 3)
            fetched = await client_t.fetch(address, "run-1", "peer-a", timeout=2)
            assert decode_factors(fetched.payload, SCHEMA)["layer.0.lora_A.weight"][0, 0] == 7.0
            with pytest.raises(Rejected):
                await client_t.fetch(address, "run-2", "peer-a", timeout=2)
            # only a known peer of the run gets the factors or a link's outcome; each refusal is counted
            # (over TLS the claim is refused before: the certificate names another peer)
            with pytest.raises(Rejected, match=r"membership|identity"):
                await client_t.fetch(address, "run-1", "stranger", timeout=2)
            assert peer.rejections.get("run") == 1 and sum(peer.rejections.values()) == 2
            assert await client_t.outcome(address, "run-2", "peer-a", 5, timeout=2) is None
        closed = transports()  # the server is gone now
        with pytest.raises(ExchangeFailed):
            await closed.exchange(address, message("peer-a", 5, 1.0), accept, timeout=1)
        await closed.close()

    run(scenario())


def test_commit_after_the_server_closed_the_round_counts_nowhere(transports):
    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            peer.closed = True
            with pytest.raises(Rejected) as info:
                await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert info.value.reason == "round-closed" and peer.commits == []

    run(scenario())


BIG = {f"t{i}.lora_A.weight": torch.randn(64, 64) for i in range(8)}  # 128 KiB: 128 chunks of 1 KiB


def big_message(sender: str, value: float) -> FactorMessage:
    tensors = {name: torch.full_like(t, value) for name, t in BIG.items()}
    return seal(Header("run-1", sender, 5, "A", ("A",), schema_digest(schema_of(BIG))), encode_factors(tensors))


def test_the_reply_streams_while_the_client_still_sends_and_before_the_server_validated(transports):
    # the server's respond waits until the client has validated the reply: in the old order (the whole
    # message, validation, then the reply) the swap could never finish
    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            validated = asyncio.Event()

            async def screen(header):
                return big_message("peer-b", 2.0)

            async def respond(incoming):
                await asyncio.wait_for(validated.wait(), 5)
                peer.received.append(decode_factors(incoming.payload, schema_of(BIG)))
                return big_message("peer-b", 2.0)

            peer.screen, peer.respond = screen, respond

            async def validate(reply):
                assert not peer.received, "the server validated ours before its reply arrived"
                decode_factors(reply.payload, schema_of(BIG))
                validated.set()

            reply = await client_t.exchange(address, big_message("peer-a", 1.0), validate, timeout=10)
            assert decode_factors(reply.payload, schema_of(BIG))["t0.lora_A.weight"][0, 0] == 2.0
            assert peer.received[0]["t7.lora_A.weight"][63, 63] == 1.0  # all of ours arrived, intact
            assert peer.commits == [("peer-a", 5)] and peer.aborts == []

    run(scenario())


@pytest.mark.parametrize("fault", ["tensors", "hash"])
def test_a_payload_refused_after_the_reply_went_out_counts_at_neither_end(transports, fault):
    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            peer.early, seen = True, []
            out = message("peer-a", 5, 1.0)
            if fault == "hash":
                out.payload = out.payload[:-1] + bytes([out.payload[-1] ^ 1])
            else:
                out = seal(out.header, encode_factors(tensors(float("nan"))))

            async def validate(reply):
                seen.append(reply)

            with pytest.raises(Rejected) as info:
                await client_t.exchange(address, out, validate, timeout=5)
            assert info.value.reason == ("payload-hash" if fault == "hash" else "non-finite")
            assert peer.commits == [] and peer.received == [] and sum(peer.rejections.values()) == 1
            assert await client_t.outcome(address, "run-1", "peer-a", 5, timeout=2) is False

    run(scenario())


def test_grpc_a_payload_refused_midway_after_the_reply_ends_the_swap_at_neither_end():
    # gRPC only (the memory transport has no chunks): the server streams its reply at the screen, then
    # refuses the incoming payload at its fifth chunk and ends the stream while the client still writes
    async def scenario():
        server_t = GrpcTransport(Limits(chunk_size=1024, max_payload_bytes=1 << 20, max_chunks=4, frame_timeout=2.0))
        client_t = GrpcTransport(LIMITS)
        peer = FakePeer("peer-b", 5, 7.0, early=True)
        address = await server_t.serve(peer, "127.0.0.1:0")
        try:
            with pytest.raises((Rejected, ExchangeFailed)) as info:
                await client_t.exchange(address, big_message("peer-a", 1.0), accept, timeout=5)
            assert not isinstance(info.value, Rejected) or info.value.reason == "too-many-chunks"
            assert peer.commits == [] and peer.rejections == {"too-many-chunks": 1}
        finally:
            await client_t.close()
            await server_t.close()

    run(scenario())


def test_swaps_of_consecutive_rounds_each_count_once_at_both_ends(transports):
    # over gRPC the later swaps run on the stream the first one opened (kept after its ack: the
    # gRPC tests below check that it is the same stream)
    async def scenario():
        async with pair(transports) as (client_t, peer, address):
            for round_ in (5, 6, 7):
                peer.round = round_
                reply = await client_t.exchange(address, message("peer-a", round_, float(round_)), accept, timeout=5)
                assert reply.header.round == round_
                assert torch.equal(peer.received[-1]["layer.0.lora_A.weight"], torch.full((4, 16), float(round_)))
            assert peer.commits == [("peer-a", 5), ("peer-a", 6), ("peer-a", 7)] and peer.aborts == []

    run(scenario())


@contextlib.asynccontextmanager
async def grpc_pair(early: bool = True, peer: FakePeer | None = None):
    """A plain gRPC server peer (``peer``, or a FakePeer at round 5), its servicer and a client
    transport; both closed on the way out."""
    server_t, client_t = GrpcTransport(LIMITS), GrpcTransport(LIMITS)
    peer = peer or FakePeer("peer-b", 5, 7.0, early)
    address = await server_t.serve(peer, "127.0.0.1:0")
    try:
        yield client_t, peer, address, server_t.servicer
    finally:
        await client_t.close()
        await server_t.close()


def kept_call(client_t: GrpcTransport, address: str):
    peer = client_t._channels[(address, TLS_NAME)]
    return None if peer.kept is None else peer.kept.call


async def until(condition, seconds: float = 2.0) -> bool:
    """Whether ``condition()`` holds within ``seconds`` (the server's side runs on after the client's
    call returned: it gives the swap's bytes back once gRPC took its ack)."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def test_grpc_a_stream_carries_the_next_rounds_swap_and_gives_its_bytes_back_after_each():
    async def scenario():
        async with grpc_pair() as (client_t, peer, address, servicer):
            await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            first = kept_call(client_t, address)
            assert first is not None and not first.done()
            assert await until(lambda: servicer.buffered == 0)  # idle: a slot, no bytes
            assert sum(servicer.streams.values()) == 1
            peer.round = 6
            await client_t.exchange(address, message("peer-a", 6, 2.0), accept, timeout=5)
            assert kept_call(client_t, address) is first
            assert await until(lambda: servicer.buffered == 0)
            assert sum(servicer.streams.values()) == 1
            assert peer.commits == [("peer-a", 5), ("peer-a", 6)]

    run(scenario())


def test_grpc_a_swap_that_ends_without_an_ack_ends_its_stream():
    async def scenario():
        async with grpc_pair() as (client_t, peer, address, servicer):
            await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            first = kept_call(client_t, address)
            with pytest.raises(Rejected):  # the server is at round 5: a refusal, on the kept stream
                await client_t.exchange(address, message("peer-a", 4, 1.0), accept, timeout=5)
            assert peer.rejections == {"round-behind": 1}  # answered: not sent again on a new stream
            assert kept_call(client_t, address) is None and first.done()
            assert await until(lambda: not servicer.streams)  # the stream ended, its slot is free
            assert servicer.buffered == 0
            peer.round = 6  # the next swap opens a new stream
            await client_t.exchange(address, message("peer-a", 6, 1.0), accept, timeout=5)
            assert kept_call(client_t, address) not in (None, first)
            assert peer.commits == [("peer-a", 5), ("peer-a", 6)]

    run(scenario())


def test_grpc_a_kept_stream_the_server_ended_is_replaced_and_the_swap_counts_once(monkeypatch):
    import peer.transport.grpc_transport as grpc_transport

    monkeypatch.setattr(grpc_transport, "KEPT_STREAM_IDLE_S", 0.2)

    async def scenario():
        async with grpc_pair() as (client_t, peer, address, servicer):
            await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            stale = kept_call(client_t, address)
            assert await until(lambda: not servicer.streams)  # the server ends the idle stream
            peer.round = 6
            # the swap on the ended stream is told apart from a failure: nothing of it was answered
            swap = grpc_transport._ClientSwap(
                client_t, client_t._channels[(address, TLS_NAME)], address, message("peer-a", 6, 2.0), accept, 5, 1e12
            )
            with pytest.raises(grpc_transport._StreamEndedBeforeSwap):
                await swap.on(stale, reused=True)
            # and the transport sends such a swap again on a new stream
            client_t._channels[(address, TLS_NAME)].kept = grpc_transport._KeptStream(stale, 0.0)
            monkeypatch.setattr(grpc_transport, "REUSE_KEPT_STREAM_WITHIN_S", 1e12)
            monkeypatch.setattr(stale, "done", lambda: False)  # as if its end had not been read yet
            await client_t.exchange(address, message("peer-a", 6, 2.0), accept, timeout=5)
            assert peer.commits == [("peer-a", 5), ("peer-a", 6)] and peer.aborts == []

    run(scenario())


def test_grpc_a_server_stops_without_waiting_for_the_streams_kept_for_it():
    async def scenario():
        server_t, client_t = GrpcTransport(LIMITS), GrpcTransport(LIMITS)
        address = await server_t.serve(FakePeer("peer-b", 5, 7.0, early=True), "127.0.0.1:0")
        try:
            await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert kept_call(client_t, address) is not None and await until(lambda: server_t.servicer.buffered == 0)
            started = asyncio.get_running_loop().time()
            await server_t.close()  # its grace (0.5 s) is for swaps under way, not for idle streams
            assert asyncio.get_running_loop().time() - started < 0.4
            assert await until(kept_call(client_t, address).done)
        finally:
            await client_t.close()
            await server_t.close()

    run(scenario())


def test_grpc_a_kept_stream_holds_none_of_what_its_last_swap_received():
    import gc
    import weakref

    class Forgetful(FakePeer):
        """Remembers what it received only weakly (FakePeer keeps the decoded tensors, views of it)."""

        async def respond(self, incoming):
            self.check(incoming.header)
            self.last = weakref.ref(incoming)
            return message(self.peer_id, self.round, self.value)

    async def scenario():
        async with grpc_pair(peer=Forgetful("peer-b", 5, 7.0, early=True)) as (client_t, peer, address, servicer):
            await client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert await until(lambda: servicer.idle)  # the stream waits for the next swap
            gc.collect()
            assert peer.last() is None, "an idle kept stream held the last payload, outside the byte budget"

    run(scenario())


def test_grpc_a_new_stream_over_a_cap_takes_the_slot_of_a_kept_one_that_waits():
    # one stream per address: each client's swap ends the other's kept stream instead of being refused
    async def scenario():
        server_t = GrpcTransport(Limits(chunk_size=1024, frame_timeout=2.0, max_streams_per_address=1))
        first_t, second_t = GrpcTransport(LIMITS), GrpcTransport(LIMITS)
        peer = FakePeer("peer-b", 5, 7.0, early=True)
        address = await server_t.serve(peer, "127.0.0.1:0")
        try:
            await first_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert await until(lambda: server_t.servicer.idle)
            await second_t.exchange(address, message("peer-c", 5, 2.0), accept, timeout=5)
            assert await until(kept_call(first_t, address).done)  # its slot went to the second
            assert await until(lambda: server_t.servicer.idle)  # the second's stream waits in its turn
            peer.round = 6
            await first_t.exchange(address, message("peer-a", 6, 3.0), accept, timeout=5)  # on a new stream
            assert peer.commits == [("peer-a", 5), ("peer-c", 5), ("peer-a", 6)] and peer.rejections == {}
            assert sum(server_t.servicer.streams.values()) <= 1
        finally:
            await first_t.close()
            await second_t.close()
            await server_t.close()

    run(scenario())


def test_grpc_a_swap_whose_channel_is_closed_under_it_fails_cleanly():
    # a crowd of announced addresses evicts the channel of a swap in flight (MAX_CHANNELS): the swap
    # fails as an exchange, not with the CancelledError that gRPC raises for its closed call
    class Slow(FakePeer):
        async def screen(self, header):
            await asyncio.sleep(2)
            return await super().screen(header)

    async def scenario():
        async with grpc_pair(peer=Slow("peer-b", 5, 7.0, early=True)) as (client_t, peer, address, _):
            swap = asyncio.ensure_future(client_t.exchange(address, message("peer-a", 5, 1.0), accept, timeout=5))
            await asyncio.sleep(0.3)
            await client_t._channels[(address, TLS_NAME)].channel.close()
            with pytest.raises(ExchangeFailed):
                await swap
            assert peer.commits == []

    run(scenario())
