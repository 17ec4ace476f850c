"""The payload lane (``peer.transport.lane``) over real sockets on loopback: how a client learns it, what
it falls back to, and what a remote peer can and cannot make a server hold through it. The contract
suite (``test_transport_contract.py``) runs every swap contract over the lane as well."""

import asyncio
import contextlib
import dataclasses
import socket

import pytest
import torch

from peer.transport.base import ExchangeFailed, FactorMessage, Header, Rejected
from peer.transport.codec import decode_factors, encode_factors, schema_digest, schema_of
from peer.transport.framing import Limits, header_frame, seal
from peer.transport.grpc_transport import GrpcTransport
from peer.transport.lane import _HELLO, HELLO_BYTES, LANE_MAGIC, new_token
from peer.transport.pb import peer_pb2 as pb
from peer.transport.tls import TLS_NAME
from tests.inprocess.test_transport_contract import SCHEMA, FakePeer, accept, message, until

# every payload on the lane once its port is known; a frame timeout short enough for the tests that wait it out
LIMITS = Limits(chunk_size=1024, max_payload_bytes=1 << 24, frame_timeout=1.0, lane_min_bytes=0)


def run(coro):
    return asyncio.run(coro)


class Pair:
    """A FakePeer served over gRPC with a lane, and a client; both closed on the way out."""

    def __init__(self, server_limits: Limits = LIMITS, client_limits: Limits = LIMITS, peer: FakePeer | None = None):
        self.server_t, self.client_t = GrpcTransport(server_limits), GrpcTransport(client_limits)
        self.peer = peer or FakePeer("peer-b", 5, 7.0, early=True)

    async def __aenter__(self):
        self.address = await self.server_t.serve(self.peer, "127.0.0.1:0")
        return self

    async def __aexit__(self, *_):
        await self.client_t.close()
        await self.server_t.close()

    @property
    def lanes(self):
        return self.server_t._lanes

    def known_port(self) -> int:
        return self.client_t._channels[(self.address, TLS_NAME)].lane_port


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (a reset, where it left bytes of ours unread)."""
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_client_learns_the_lane_from_a_reply_and_sends_the_next_swaps_on_it():
    async def scenario():
        async with Pair() as p:
            assert p.server_t.lane_port > 0
            await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert p.lanes.claimed == 0 and p.known_port() == p.server_t.lane_port  # in chunks, port learned
            p.peer.round = 6
            reply = await p.client_t.exchange(p.address, message("peer-a", 6, 2.0), accept, timeout=5)
            assert p.lanes.claimed == 1
            assert torch.equal(decode_factors(reply.payload, SCHEMA)["layer.0.lora_A.weight"], torch.full((4, 16), 7.0))
            assert torch.equal(p.peer.received[-1]["layer.0.lora_A.weight"], torch.full((4, 16), 2.0))
            assert p.peer.commits == [("peer-a", 5), ("peer-a", 6)] and p.peer.aborts == []
            assert await until(lambda: p.lanes.waiting == {"127.0.0.1": 1} and not p.lanes.arrived)  # kept

    run(scenario())


async def swap(p: Pair, round_: int, value: float = 1.0) -> FactorMessage:
    p.peer.round = round_
    return await p.client_t.exchange(p.address, message("peer-a", round_, value), accept, timeout=5)


def kept_lane(p: Pair):
    return p.client_t._channels[(p.address, TLS_NAME)].kept_lane


def test_a_lane_is_kept_after_each_acked_swap_and_carries_the_next():
    # a new connection per swap starts each direction apart on a shaped link (benchmarks/README.md)
    async def scenario():
        async with Pair() as p:
            p.client_t.learn_lane(p.address, p.server_t.lane_port)
            for round_ in (5, 6, 7):
                reply = decode_factors((await swap(p, round_, float(round_))).payload, SCHEMA)
                assert torch.equal(reply["layer.0.lora_A.weight"], torch.full((4, 16), 7.0))
                assert torch.equal(p.peer.received[-1]["layer.0.lora_A.weight"], torch.full((4, 16), float(round_)))
                assert kept_lane(p) is not None
            assert p.lanes.claimed == 3 and p.lanes.accepted == 1  # one connection for all three
            assert p.peer.commits == [("peer-a", 5), ("peer-a", 6), ("peer-a", 7)]
            await p.client_t.close()  # the client's close closes its kept lane: the server forgets it
            assert await until(lambda: not p.lanes.waiting and not p.lanes.greeting)

    run(scenario())


def test_a_kept_lane_the_server_closed_is_replaced_and_one_kept_too_long_is_not_used():
    async def scenario():
        async with Pair() as p:
            p.client_t.learn_lane(p.address, p.server_t.lane_port)
            await swap(p, 5)
            p.lanes.kept_s = 0.2  # the server's wait for the next swap on it: over before that swap
            await swap(p, 6)
            assert await until(lambda: not p.lanes.waiting)  # the kept lane waited its time, and was closed
            p.lanes.kept_s = 60.0
            await swap(p, 7)  # the client sees it closed, and opens a new one
            assert p.lanes.accepted == 2 and p.lanes.claimed == 3
            await swap(p, 8)
            stub = p.client_t._channels[(p.address, TLS_NAME)]
            stub.kept_lane.idle_since -= 3600  # idle longer than a client reuses one: closed, not used
            await swap(p, 9)
            assert p.lanes.accepted == 3 and p.lanes.claimed == 5
            assert await until(lambda: p.lanes.waiting == {"127.0.0.1": 1})  # the stale one closed, the new one kept
            assert p.peer.commits == [("peer-a", r) for r in range(5, 10)]

    run(scenario())


def test_a_server_that_answers_after_the_payload_keeps_its_lane_too():
    async def scenario():
        async with Pair(peer=FakePeer("peer-b", 5, 7.0, early=False)) as p:
            p.client_t.learn_lane(p.address, p.server_t.lane_port)
            for round_ in (5, 6):
                reply = decode_factors((await swap(p, round_)).payload, SCHEMA)
                assert torch.equal(reply["layer.0.lora_A.weight"], torch.full((4, 16), 7.0))
            assert p.lanes.claimed == 2 and p.lanes.accepted == 1 and kept_lane(p) is not None

    run(scenario())


def test_no_lane_is_kept_after_a_refusal_or_where_the_server_has_no_room():
    async def scenario():
        async with Pair() as p:
            p.client_t.learn_lane(p.address, p.server_t.lane_port)
            p.peer.round = 9
            with pytest.raises(Rejected):
                await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert kept_lane(p) is None and await until(lambda: not p.lanes.waiting)
            keep = p.lanes.keep
            p.lanes.keep = lambda sock, host: False  # no room to keep it (the caps): the ack says so
            await swap(p, 6)
            assert kept_lane(p) is None and await until(lambda: not p.lanes.waiting)
            p.lanes.keep = keep
            await swap(p, 7)
            assert kept_lane(p) is not None and p.lanes.accepted == 3 and p.lanes.claimed == 3
            assert p.peer.commits == [("peer-a", 6), ("peer-a", 7)]

    run(scenario())


def test_a_new_lane_at_the_cap_closes_the_oldest_kept_lane_waiting_and_the_stop_closes_the_rest():
    async def scenario():
        async with Pair() as p, Pair(peer=FakePeer("peer-b", 5, 7.0, early=True)) as q:
            for pair in (p, q):  # two clients, each with a lane kept at p's server: on loopback, one address
                pair.client_t.learn_lane(p.address, p.server_t.lane_port)
                await pair.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)
                p.peer.commits.clear()
            assert await until(lambda: p.lanes.waiting == {"127.0.0.1": 2})
            p.lanes.max_waiting_per_address = 2
            first = p.client_t._channels[(p.address, TLS_NAME)].kept_lane.sock
            second = q.client_t._channels[(p.address, TLS_NAME)].kept_lane.sock
            sock = socket.create_connection(("127.0.0.1", p.server_t.lane_port))  # a new lane, at the cap
            assert await until(lambda: p.lanes.accepted == 3 and p.lanes.waiting == {"127.0.0.1": 2})
            assert closed_by_server(first)  # the oldest kept lane made room
            second.sendall(LANE_MAGIC[:4])  # a next swap's hello begins on the other one
            third = socket.create_connection(("127.0.0.1", p.server_t.lane_port))  # at the cap again
            await asyncio.sleep(0.2)
            assert p.lanes.accepted == 3 and closed_by_server(third)  # nothing idle to close: refused
            sock.close()
            lanes = p.lanes
            await p.server_t.close()
            assert closed_by_server(second) and not lanes.greeting and not lanes.waiting and not lanes.evicted

    run(scenario())


def test_payloads_below_the_threshold_stay_in_chunks():
    async def scenario():
        small = dataclasses.replace(LIMITS, lane_min_bytes=1 << 20)
        async with Pair(client_limits=small) as p:
            p.client_t.learn_lane(p.address, p.server_t.lane_port)
            await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert p.lanes.claimed == 0 and p.peer.commits == [("peer-a", 5)]

    run(scenario())


def test_a_large_adapter_goes_whole_both_ways_on_the_lane_with_default_limits():
    big = {f"layer.{i}.lora_B.weight": torch.randn(512, 1024) for i in range(4)}  # 8 MiB
    schema = schema_of(big)

    async def echo(incoming):
        return FactorMessage(incoming.header, incoming.payload)

    async def scenario():
        async with Pair(Limits(), Limits(), FakePeer("peer-b", 5, 7.0)) as p:
            p.peer.respond = echo
            p.client_t.learn_lane(p.address, p.server_t.lane_port)
            out = seal(Header("run-1", "peer-a", 5, "B", ("B",), schema_digest(schema)), encode_factors(big))
            reply = await p.client_t.exchange(p.address, out, accept, timeout=30)
            back = decode_factors(reply.payload, schema)
            assert all(torch.equal(back[k], v) for k, v in big.items()) and p.lanes.claimed == 1

    run(scenario())


def test_no_lane_where_it_is_off_and_a_wrong_port_falls_back_to_chunks():
    async def scenario():
        off = dataclasses.replace(LIMITS, lane_min_bytes=None)
        async with Pair(server_limits=off) as p:
            assert p.server_t.lane_port == 0 and p.lanes is None
            await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert p.known_port() == 0  # its replies name no lane
            with socket.create_server(("127.0.0.1", 0)) as taken:  # a port where nobody answers afterwards
                dead = taken.getsockname()[1]
            p.client_t.learn_lane(p.address, dead)
            p.peer.round = 6
            await p.client_t.exchange(p.address, message("peer-a", 6, 1.0), accept, timeout=5)
            assert p.peer.commits == [("peer-a", 5), ("peer-a", 6)] and p.known_port() == 0
            # named again, a port that could not be reached is not tried again (a firewall costs one try)
            p.client_t.learn_lane(p.address, dead)
            stub = p.client_t._channels[(p.address, TLS_NAME)]
            assert stub.unreachable_lane == dead
            p.peer.round = 7
            await p.client_t.exchange(p.address, message("peer-a", 7, 1.0), accept, timeout=5)
            assert p.known_port() == 0 and stub.unreachable_lane == dead

    run(scenario())


def test_a_lane_listens_on_the_port_it_is_given():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]

    async def scenario():
        server_t = GrpcTransport(LIMITS, lane_port=port)
        await server_t.serve(FakePeer("peer-b", 5, 7.0), "127.0.0.1:0")
        try:
            assert server_t.lane_port == port
        finally:
            await server_t.close()

    run(scenario())


def test_tls_has_no_lane(tmp_path):
    from peer.transport.tls import load, make_run

    make_run(tmp_path, "run-1", ["peer-b"])
    tls = load(tmp_path / "ca.pem", tmp_path / "peer-b.pem", tmp_path / "peer-b.key", "peer-b", "run-1")
    server_t = GrpcTransport(LIMITS, tls)

    async def scenario():
        await server_t.serve(FakePeer("peer-b", 5, 7.0), "127.0.0.1:0")
        try:
            assert server_t.lane_port == 0 and server_t._lanes is None
        finally:
            await server_t.close()

    run(scenario())


async def raw_swap(p: Pair, header_frame_, lane_bytes: bytes | None, payload: bytes = b""):
    """A header written by hand on a new Exchange stream, and ``lane_bytes`` (a hello) then ``payload``
    on a connection to the lane; the server's first answer."""
    stub = p.client_t._stub(p.address, None)
    call = stub.exchange()
    lane = None
    try:
        if lane_bytes is not None:
            lane = socket.create_connection(("127.0.0.1", p.server_t.lane_port))
            lane.sendall(lane_bytes + payload)
        await call.write(header_frame_)
        return await call.read()
    finally:
        call.cancel()
        if lane is not None:
            lane.close()


@contextlib.asynccontextmanager
async def swap_by_hand(p: Pair, out: FactorMessage, payload_bytes: bytes | None = None, cut_lane: bool = False):
    """Our header, by hand, on a new Exchange stream, and on a lane its hello then ``payload_bytes`` (the
    whole payload by default), the lane closed after them if ``cut_lane``; the call and the lane, both
    ended on the way out."""
    token = new_token()
    call = p.client_t._stub(p.address, None).exchange()
    lane = socket.create_connection(("127.0.0.1", p.server_t.lane_port))
    try:
        sent = bytes(out.payload) if payload_bytes is None else payload_bytes
        lane.sendall(_HELLO.pack(LANE_MAGIC, token, len(out.payload)) + sent)
        if cut_lane:
            lane.close()
        await call.write(header_frame(out.header, lane_token=token))
        yield call, lane, token
    finally:
        call.cancel()
        lane.close()


def large_message(sender: str, round_: int, factor: str) -> FactorMessage:
    """32 MiB of factors: beyond any socket buffer of loopback, so a send of it blocks on its reader."""
    big = {f"layer.{i}.lora_{factor}.weight": torch.randn(1024, 1024) for i in range(8)}
    return seal(Header("run-1", sender, round_, factor, (factor,), schema_digest(schema_of(big))), encode_factors(big))


def test_a_header_whose_lane_never_comes_is_refused_after_the_frame_timeout():
    async def scenario():
        async with Pair() as p:
            out = message("peer-a", 5, 1.0)
            answer = await raw_swap(p, header_frame(out.header, lane_token=new_token()), None)
            assert answer.reject.reason == "stalled" and p.peer.commits == [] and p.peer.received == []
            assert not p.lanes.claims

    run(scenario())


def test_a_lane_that_announces_another_size_than_its_header_is_refused():
    async def scenario():
        async with Pair() as p:
            out, token = message("peer-a", 5, 1.0), new_token()
            hello = _HELLO.pack(LANE_MAGIC, token, len(out.payload) + 1)
            answer = await raw_swap(p, header_frame(out.header, lane_token=token), hello, out.payload)
            assert answer.reject.reason == "framing" and "announced" in answer.reject.detail
            assert p.peer.commits == [] and await until(lambda: not p.lanes.waiting)

    run(scenario())


def test_a_payload_on_the_lane_that_does_not_match_its_hash_is_refused_and_nothing_counts():
    async def scenario():
        async with Pair(peer=FakePeer("peer-b", 5, 7.0, early=False)) as p:
            out, token = message("peer-a", 5, 1.0), new_token()
            tampered = bytes(out.payload[:-1]) + bytes([out.payload[-1] ^ 1])
            hello = _HELLO.pack(LANE_MAGIC, token, len(out.payload))
            answer = await raw_swap(p, header_frame(out.header, lane_token=token), hello, tampered)
            assert answer.reject.reason == "payload-hash" and p.peer.received == [] and p.peer.commits == []

    run(scenario())


def test_a_token_of_the_wrong_length_and_a_lane_to_a_peer_without_one_are_refused():
    async def scenario():
        async with Pair() as p:
            out = message("peer-a", 5, 1.0)
            answer = await raw_swap(p, header_frame(out.header, lane_token=b"short"), None)
            assert answer.reject.reason == "framing"
        async with Pair(server_limits=dataclasses.replace(LIMITS, lane_min_bytes=None)) as p:
            answer = await raw_swap(p, header_frame(out.header, lane_token=new_token()), None)
            assert answer.reject.reason == "framing" and "listens for none" in answer.reject.detail

    run(scenario())


def test_connections_that_send_no_hello_or_garbage_are_closed_and_capped():
    async def scenario():
        capped = dataclasses.replace(LIMITS, max_streams=4, max_streams_per_address=3)
        async with Pair(server_limits=capped) as p:
            port = p.server_t.lane_port
            silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
            garbage = socket.create_connection(("127.0.0.1", port))
            garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(HELLO_BYTES))
            try:
                # at most 3 from this address wait; the rest are closed at once, the garbage at its hello
                assert await until(lambda: sum(p.lanes.waiting.values()) == 3)
                assert await until(lambda: not p.lanes.waiting, seconds=3 * LIMITS.frame_timeout)
                for sock in silent:  # every one of them was closed by the server
                    assert closed_by_server(sock)
            finally:
                for sock in [*silent, garbage]:
                    sock.close()
            # a hello whose claim never comes waits its frame timeout, then is closed too
            orphan = socket.create_connection(("127.0.0.1", port))
            orphan.sendall(_HELLO.pack(LANE_MAGIC, new_token(), 10))
            assert await until(lambda: len(p.lanes.arrived) == 1)
            assert await until(lambda: not p.lanes.arrived and not p.lanes.waiting, seconds=3 * LIMITS.frame_timeout)
            orphan.close()
            # and the lane still works
            p.client_t.learn_lane(p.address, port)
            await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert p.lanes.claimed == 1

    run(scenario())


async def refusal_of_swap_by_hand(p: Pair, out: FactorMessage, payload_bytes: bytes, cut_lane: bool):
    """``swap_by_hand``'s refusal (after the early reply's header)."""
    async with swap_by_hand(p, out, payload_bytes, cut_lane) as (call, _, _):
        while (frame := await call.read()).WhichOneof("kind") != "reject":
            pass
        return frame


def test_a_lane_cut_mid_payload_is_refused_as_truncated_and_nothing_counts_or_stays_held():
    async def scenario():
        async with Pair() as p:
            out = message("peer-a", 5, 1.0)
            answer = await refusal_of_swap_by_hand(p, out, bytes(out.payload[: len(out.payload) // 2]), cut_lane=True)
            assert answer.reject.reason == "truncated" and "ended after" in answer.reject.detail
            assert p.peer.commits == [] and p.peer.received == [] and p.peer.rejections == {"truncated": 1}
            servicer = p.server_t.servicer
            assert await until(lambda: not servicer.streams and servicer.buffered == 0)
            assert not p.lanes.waiting and not p.lanes.arrived and not p.lanes.claims

    run(scenario())


def test_a_lane_that_stalls_mid_payload_is_refused_as_stalled_by_the_payload_deadline():
    async def scenario():
        async with Pair() as p:  # frame timeout 1 s; the payload's deadline adds its size at 64 KiB/s
            out = message("peer-a", 5, 1.0)
            answer = await refusal_of_swap_by_hand(p, out, bytes(out.payload[:100]), cut_lane=False)
            assert answer.reject.reason == "stalled" and p.peer.commits == [] and p.peer.received == []

    run(scenario())


def test_a_reply_read_slower_than_the_frame_timeout_still_commits():
    # the server waits for the commit only once its reply went out on the lane, as in chunks
    reply = large_message("peer-b", 5, "B")

    async def slow_reader(p: Pair) -> str:
        async with swap_by_hand(p, message("peer-a", 5, 1.0)) as (call, lane, token):
            first = await call.read()
            assert first.header.lane_token == token
            await asyncio.sleep(2.5 * LIMITS.frame_timeout)  # nothing read meanwhile
            got, size = 0, first.header.payload_size
            while got < size and (data := await asyncio.to_thread(lane.recv, 1 << 20)):
                got += len(data)
            assert got == size, "the server closed the lane before its reply went out"
            await call.write(pb.Frame(commit=pb.Commit(round=5)))
            return (await call.read()).WhichOneof("kind")

    async def scenario():
        async with Pair() as p:
            p.peer.early = False
            p.peer.respond = lambda incoming: asyncio.sleep(0, reply)
            assert await slow_reader(p) == "ack"
            assert p.peer.commits == [("peer-a", 5)]

    run(scenario())


def test_bad_hellos_are_closed_and_forgotten():
    async def scenario():
        async with Pair() as p:
            port, token = p.server_t.lane_port, new_token()
            garbage = socket.create_connection(("127.0.0.1", port))
            garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(HELLO_BYTES))
            first = socket.create_connection(("127.0.0.1", port))
            first.sendall(_HELLO.pack(LANE_MAGIC, token, 10))
            assert await until(lambda: token in p.lanes.arrived)
            second = socket.create_connection(("127.0.0.1", port))  # the same token again
            second.sendall(_HELLO.pack(LANE_MAGIC, token, 10))
            try:
                assert await until(lambda: sum(p.lanes.waiting.values()) == 1)  # only the first's hello waits
                for sock in (garbage, second):
                    assert await asyncio.to_thread(closed_by_server, sock)
                assert list(p.lanes.arrived) == [token]
            finally:
                for sock in (garbage, first, second):
                    sock.close()

    run(scenario())


def test_an_unreachable_lane_is_tried_again_after_a_while(monkeypatch):
    from peer.transport import grpc_transport

    async def scenario():
        async with Pair() as p:
            with socket.create_server(("127.0.0.1", 0)) as taken:
                dead = taken.getsockname()[1]
            p.client_t.learn_lane(p.address, dead)
            await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)  # in chunks
            stub = p.client_t._channels[(p.address, TLS_NAME)]
            assert stub.unreachable_lane == dead and p.known_port() == p.server_t.lane_port
            monkeypatch.setattr(grpc_transport, "LANE_RETRY_AFTER_S", 0.0)
            p.client_t.learn_lane(p.address, dead)
            p.peer.round = 6
            await p.client_t.exchange(p.address, message("peer-a", 6, 1.0), accept, timeout=5)
            assert stub.unreachable_until > 0 and p.lanes.claimed == 0  # tried again: still dead, in chunks
            p.peer.round = 7
            await p.client_t.exchange(p.address, message("peer-a", 7, 1.0), accept, timeout=5)
            assert p.lanes.claimed == 1  # the port its reply named

    run(scenario())


def test_a_lane_port_that_now_belongs_to_another_peer_costs_one_swap_then_is_learned_again():
    # a neighbour restarted and another peer's lane took its old port: the server waits for a lane
    # that went elsewhere, refuses the swap, and the client forgets the port
    async def scenario():
        async with Pair() as p, Pair() as other:
            p.client_t.learn_lane(p.address, other.server_t.lane_port)
            with pytest.raises((Rejected, ExchangeFailed)):
                await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)
            assert p.known_port() == 0 and p.peer.commits == []
            await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)  # in chunks
            assert p.known_port() == p.server_t.lane_port and p.lanes.claimed == 0
            p.peer.round = 6
            await p.client_t.exchange(p.address, message("peer-a", 6, 1.0), accept, timeout=5)
            assert p.lanes.claimed == 1 and p.peer.commits == [("peer-a", 5), ("peer-a", 6)]
            assert await until(lambda: not other.lanes.arrived, seconds=3 * LIMITS.frame_timeout)

    run(scenario())


def test_a_swap_cancelled_while_its_payload_blocks_leaves_no_thread_socket_or_slot():
    import os
    import threading

    out = large_message("peer-a", 6, "A")
    limits = dataclasses.replace(LIMITS, max_payload_bytes=1 << 26)

    def lane_threads() -> int:
        return sum(t.name == "tadlora-lane" for t in threading.enumerate())

    async def scenario():
        async with Pair(limits, limits) as p:
            held = asyncio.Event()

            async def screen_forever(header):
                held.set()
                await asyncio.Event().wait()  # the server never reads the payload

            p.client_t.learn_lane(p.address, p.server_t.lane_port)
            await p.client_t.exchange(p.address, message("peer-a", 5, 1.0), accept, timeout=5)  # opens the channel
            assert await until(lambda: lane_threads() == 0 and not p.server_t.servicer.buffered)
            descriptors = len(os.listdir("/proc/self/fd"))
            p.peer.screen, p.peer.round = screen_forever, 6
            swap = asyncio.ensure_future(p.client_t.exchange(p.address, out, accept, timeout=30))
            await asyncio.wait_for(held.wait(), 5)
            assert p.lanes.claimed == 2 and lane_threads() == 1  # the client's send, blocked
            swap.cancel()
            with pytest.raises(asyncio.CancelledError):
                await swap
            assert await until(lambda: lane_threads() == 0)
            servicer = p.server_t.servicer
            assert await until(lambda: not servicer.streams and servicer.buffered == 0)
            assert p.peer.commits == [("peer-a", 5)] and not p.lanes.waiting and not p.lanes.arrived
            assert await until(lambda: len(os.listdir("/proc/self/fd")) <= descriptors)

    run(scenario())


def test_a_reply_whose_lane_the_client_cuts_leaves_no_unread_error():
    # the server's send of its reply fails (the client closed the lane after the reply's header): the
    # failure is read at the swap's end, not left for asyncio to report as never retrieved
    import gc

    reply = large_message("peer-b", 5, "B")

    async def scenario():
        errors = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        async with Pair() as p:
            p.peer.screen = lambda header: asyncio.sleep(0, reply)  # the early reply: 32 MiB on the lane
            async with swap_by_hand(p, message("peer-a", 5, 1.0)) as (call, lane, token):
                assert (await call.read()).header.lane_token == token
                lane.close()  # the reply's payload is cut
                await asyncio.sleep(0.2)
            servicer = p.server_t.servicer
            assert await until(lambda: not servicer.streams and servicer.buffered == 0)
            assert p.peer.commits == []
        gc.collect()
        await asyncio.sleep(0.05)
        assert errors == []

    run(scenario())
