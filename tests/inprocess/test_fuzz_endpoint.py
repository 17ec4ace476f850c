"""Fuzzing the running gRPC endpoint of a real daemon: thousands of malformed headers, chunks, frames
and tensors. Each one is refused with a reason, counted once, and nothing of the peer changes: not its
factors, not its checkpoint, not its round state; it keeps answering."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from peer.config import load_daemon_config
from peer.daemon.node import PeerDaemon
from peer.transport.base import Header
from peer.transport.codec import payload_digest
from peer.transport.framing import Limits, header_to_pb
from peer.transport.grpc_transport import GrpcTransport
from peer.transport.pb import peer_pb2 as pb
from peer.transport.pb import peer_pb2_grpc as pb_grpc

SENDER = "peer-x"  # a known neighbour with a link in round 0: messages get as deep as decoding


class LiveDaemon:
    """A PeerDaemon serving on loopback from an event loop in a background thread, with round 0 open
    and a checkpoint on disk, as in the middle of a run."""

    def __init__(self, out: Path) -> None:
        run, net = load_daemon_config(
            None,
            dict(
                model="tiny-bert",
                task="synthetic",
                peers=2,
                rounds=3,
                local_steps=1,
                batch_size=4,
                max_length=16,
                eval_samples=8,
                device="cpu",
                topology="complete",
                peer_index=0,
                run_id="fuzz",
                round_timeout_min=0.5,
                round_timeout_max=0.5,
                frame_timeout=0.5,
            ),
            {},
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        limits = Limits(chunk_size=4096, max_payload_bytes=1 << 20, max_chunks=64, frame_timeout=0.5)
        self.daemon = PeerDaemon.from_config(run, net, out, GrpcTransport(limits))
        self.call(self._start())
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.PeerStub(self.channel)

    async def _start(self):
        d = self.daemon
        self.address = await d.transport.serve(d, "127.0.0.1:0")
        d.membership.known[SENDER] = "127.0.0.1:9"  # never dialled: the test only sends to the daemon
        d.persistence.save_checkpoint(d._checkpoint_state(0))
        d.persistence.open_round(0, d.local.state(), [SENDER], {})
        d._open_round(0, [SENDER])

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def snapshot(self) -> dict:
        d = self.daemon
        factors = {k: v.clone() for k, v in d.local.factors().items()}
        checkpoint = hashlib.sha256((d.out / "checkpoint.pt").read_bytes()).hexdigest()
        return {
            "factors": factors,
            "checkpoint": checkpoint,
            "round": d.round,
            "staged": {r: dict(s.staged) for r, s in d.book.open.items() if s.staged},
            "counted": {r: dict(s.counted) for r, s in d.book.open.items() if s.counted},
        }

    def close(self):
        self.channel.close()
        self.call(self.daemon.transport.close())
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _next_round(self):
        """Round 0 over (the fuzzing decided its link with SENDER: refused, for good), round 1 open."""
        d = self.daemon
        d.book.close(d.round)
        d.round += 1
        d.persistence.open_round(d.round, d.local.state(), [SENDER], {})
        d._open_round(d.round, [SENDER])

    def next_round(self) -> None:
        self.call(self._next_round())

    @property
    def own(self):
        return self.daemon.book.open[self.daemon.round].own

    def good_header(self, **changes) -> Header:
        own = self.own.header
        fields = dict(
            run_id="fuzz",
            sender_id=SENDER,
            round=self.daemon.round,
            phase=own.phase,
            factors=own.factors,
            schema_digest=own.schema_digest,
            degree=1,
        )
        fields.update(changes)
        return Header(**fields)

    def send(self, frames, pause: float = 0.0) -> list[pb.Frame]:
        """Write the frames in one Exchange stream (then stay silent ``pause`` s), read what comes back."""

        def writer():
            yield from frames
            time.sleep(pause)

        try:
            return list(self.stub.Exchange(writer(), timeout=5))
        except grpc.RpcError as exc:  # the stream may be cut; the daemon must survive either way
            return [pb.Frame(reject=pb.Reject(reason=f"rpc-{exc.code().name}"))]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    daemon = LiveDaemon(tmp_path_factory.mktemp("fuzz"))
    yield daemon
    daemon.close()


def frames_for(header: Header, payload: bytes, chunk: int = 4096) -> list[pb.Frame]:
    return [pb.Frame(header=header_to_pb(header))] + [
        pb.Frame(chunk=pb.Chunk(data=payload[i : i + chunk])) for i in range(0, len(payload), chunk)
    ]


def sealed(header: Header, payload: bytes) -> Header:
    header.payload_size, header.payload_digest = len(payload), payload_digest(payload)
    return header


def bad_tensors(live: LiveDaemon, kind: str, seed: int) -> bytes:
    own = live.own
    names = sorted(live.daemon.schema)
    tensors = {n: t.clone() for n, t in st_load(bytes(own.payload)).items()}
    name = sorted(tensors)[seed % len(tensors)]
    if kind == "nan":
        tensors[name].view(-1)[seed % tensors[name].numel()] = float("nan")
    elif kind == "inf":
        tensors[name].view(-1)[0] = float("inf")
    elif kind == "shape":
        tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    elif kind == "dtype":
        tensors[name] = tensors[name].double()
    elif kind == "missing":
        del tensors[name]
    elif kind == "extra":
        tensors["unknown.lora_A.weight"] = torch.zeros(2, 2)
    elif kind == "other-factor":
        other = [n for n in names if n not in tensors]
        if other:
            tensors[other[seed % len(other)]] = torch.zeros(*live.daemon.schema[other[seed % len(other)]][1])
        else:
            del tensors[name]
    return st_save(tensors)


HEADER_MUTATIONS = st.one_of(
    st.builds(dict, run_id=st.text(max_size=20)),
    st.builds(dict, sender_id=st.text(max_size=20)),
    st.builds(dict, round=st.integers(1, 2**63)),
    st.builds(dict, phase=st.text(max_size=4)),
    st.builds(dict, factors=st.lists(st.sampled_from(["A", "B", "C", ""]), max_size=3).map(tuple)),
    st.builds(dict, schema_digest=st.binary(max_size=40)),
    st.builds(dict, degree=st.just(0)),
    st.builds(dict, protocol_version=st.integers(2, 2**32 - 1)),
)

CASES = st.one_of(
    st.tuples(st.just("header"), HEADER_MUTATIONS, st.binary(max_size=64)),
    st.tuples(st.just("garbage-payload"), st.binary(min_size=1, max_size=5000), st.booleans()),
    st.tuples(
        st.just("tensors"),
        st.sampled_from(["nan", "inf", "shape", "dtype", "missing", "extra", "other-factor"]),
        st.integers(0, 10**6),
    ),
    st.tuples(st.just("hash"), st.integers(0, 10**6), st.booleans()),
    st.tuples(st.just("sizes"), st.sampled_from(["short", "long", "too-large", "too-many-chunks"]), st.booleans()),
    st.tuples(
        st.just("framing"),
        st.sampled_from(["chunk-first", "commit-first", "empty", "two-headers", "commit-mid"]),
        st.booleans(),
    ),
)


def build(live: LiveDaemon, case) -> list[pb.Frame]:
    kind, a, b = case
    good_payload = bytes(live.own.payload)
    if kind == "header":
        # NaN tensors as well: a mutation that happens to leave the header valid still makes a bad message
        payload = bad_tensors(live, "nan", 0)
        return frames_for(sealed(live.good_header(**a), payload), payload)
    if kind == "garbage-payload":
        payload = a if b else struct.pack("<Q", len(a)) + a  # raw bytes, or a bogus safetensors length prefix
        return frames_for(sealed(live.good_header(), payload), payload)
    if kind == "tensors":
        payload = bad_tensors(live, a, b)
        return frames_for(sealed(live.good_header(), payload), payload)
    if kind == "hash":
        payload = bytearray(good_payload)
        payload[a % len(payload)] ^= 0xFF
        h = sealed(live.good_header(), good_payload)  # the header hashes the original
        return frames_for(h, bytes(payload), 4096 if b else 1000)
    if kind == "sizes":
        h = sealed(live.good_header(), good_payload)
        if a == "short":
            return frames_for(h, good_payload)[:-1]
        if a == "long":
            return [*frames_for(h, good_payload), pb.Frame(chunk=pb.Chunk(data=b"x"))]
        if a == "too-large":
            h.payload_size = (1 << 20) + 1
            return frames_for(h, good_payload)
        return frames_for(h, good_payload, 1)[:80]  # one-byte chunks: past the chunk cap
    if a == "chunk-first":
        return [pb.Frame(chunk=pb.Chunk(data=good_payload[:10]))]
    if a == "commit-first":
        return [pb.Frame(commit=pb.Commit(round=0))]
    if a == "empty":
        return []
    if a == "two-headers":
        h = sealed(live.good_header(), good_payload)
        return [pb.Frame(header=header_to_pb(h))] * 2
    h = sealed(live.good_header(), good_payload)
    frames = frames_for(h, good_payload)
    return [*frames[:1], pb.Frame(commit=pb.Commit(round=0)), *frames[1:]]


# what the screen refuses from the header alone, before the daemon answers with its own factors
SCREEN_REASONS = {"run", "identity", "schema", "self", "protocol-version", "round-ahead", "round-behind"}
SCREEN_REASONS |= {"not-a-link", "replay", "degree"}


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=CASES)
def test_daemon_refuses_every_malformed_message_and_stays_unchanged(live, case):
    before = live.snapshot()
    refused_before = sum(live.daemon.rejected.values())
    replies = live.send(build(live, case))
    assert not any(f.HasField("ack") for f in replies), f"committed {case[:2]}"
    assert replies and replies[-1].HasField("reject"), f"not refused {case[:2]}"
    # the daemon streams its own factors as soon as a header passed its screen (they do not depend on
    # the payload): they may come back before the refusal of the payload, never for a refused header
    if replies[-1].reject.reason in SCREEN_REASONS:
        assert not any(f.HasField("header") for f in replies), f"answered a refused header {case[:2]}"
    live.call(asyncio.sleep(0))  # let the server's clean-up (abort) run
    after = live.snapshot()
    assert after["checkpoint"] == before["checkpoint"] and after["round"] == before["round"]
    assert after["counted"] == {} and after["staged"] == {}
    assert all(torch.equal(after["factors"][k], v) for k, v in before["factors"].items())
    assert sum(live.daemon.rejected.values()) == refused_before + 1, "each refusal is counted once"


def test_after_the_fuzzing_a_stalled_stream_is_cut_and_a_good_message_still_goes_through(live):
    live.next_round()  # a link whose stream ended without a commit stays refused for its round
    h = sealed(live.good_header(), bytes(live.own.payload))
    stalled = live.send([pb.Frame(header=header_to_pb(h))], pause=1.5)  # header, then silence
    assert [f.reject.reason for f in stalled if f.HasField("reject")] == ["stalled"]
    status = live.stub.Status(pb.StatusRequest(), timeout=5)
    assert status.peer_id == "peer-00" and sum(status.rejected.values()) == sum(live.daemon.rejected.values())
    good = live.send(frames_for(h, bytes(live.own.payload)))
    assert good[0].HasField("header"), "a well-formed message from a real neighbour is still answered"


def test_a_peer_cannot_write_the_daemons_vocabulary(live, caplog):
    # issue 12, part 4: a client's own Reject frames with huge reasons and forged log lines in the detail
    from peer.daemon.node import REFUSAL_REASONS

    # 20 KB each: the frame stays under the endpoint's message cap (chunk size + 64 KiB), so it is read
    reason, detail = "x" * 20_000, "ok\n2026-11-29 00:00:00 INFO tadlora.daemon: forged line\n" + "y" * 20_000
    with caplog.at_level("WARNING", logger="tadlora.daemon"):
        for _ in range(50):
            live.send([pb.Frame(reject=pb.Reject(reason=reason, detail=detail))])
    assert set(live.daemon.rejected) <= REFUSAL_REASONS and live.daemon.rejected["unknown"] >= 50
    status = live.stub.Status(pb.StatusRequest(), timeout=5)
    assert status.ByteSize() < 4096 and all(len(k) < 40 for k in status.rejected)
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) >= 50 and all("\n" not in line and len(line) < 600 for line in lines)


def test_a_frame_over_the_message_cap_is_refused_logged_and_counted(live, caplog):
    # issue 12, part 5: gRPC drops the frame before the daemon sees it; the stream's end is the refusal
    live.next_round()  # a fresh link: the header passes the screen, the payload is read
    before = sum(live.daemon.rejected.values())
    h = sealed(live.good_header(), bytes(live.own.payload))
    cap = 4096 + (64 << 10)  # the LiveDaemon's chunk size + the transport's allowance for the frame
    with caplog.at_level("WARNING", logger="tadlora.daemon"):
        replies = live.send([pb.Frame(header=header_to_pb(h)), pb.Frame(chunk=pb.Chunk(data=b"x" * (cap + 1)))])
    live.call(asyncio.sleep(0.1))
    assert not any(f.HasField("header") or f.HasField("ack") for f in replies)
    assert sum(live.daemon.rejected.values()) == before + 1
    assert any("refused (truncated)" in r.getMessage() and "message cap" in r.getMessage() for r in caplog.records)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_sender_cannot_make_the_daemon_hold_memory(live):
    # issue 12, part 3: four streams announce 50 MB each from a known sender of the run, in the current
    # round, and start sending. The header is screened before any payload: refused at once, nothing held.
    h = live.good_header()
    h.payload_size, h.payload_digest = 50 << 20, b"\0" * 16
    chunks = [pb.Frame(chunk=pb.Chunk(data=b"x" * 4096))] * 2000  # 8 MB offered, lazily
    before = _rss_mb()
    started = time.monotonic()
    for _ in range(4):
        replies = live.send([pb.Frame(header=header_to_pb(h)), *chunks])
        assert [f.reject.reason for f in replies if f.HasField("reject")] in (["too-large"], ["rpc-CANCELLED"])
    assert time.monotonic() - started < 20
    assert _rss_mb() - before < 50, "the daemon buffered a refused payload"


def test_a_sender_that_is_no_link_of_the_round_is_refused_before_its_payload(live):
    # issue 12, part 3: the link of the round is checked from the header; a stranger of the run (valid
    # id, right run and schema, a plausible size) sends nothing that is read
    payload = bytes(live.own.payload)
    stranger = sealed(live.good_header(sender_id="peer-77"), payload)

    def offered():
        yield pb.Frame(header=header_to_pb(stranger))
        for i in range(0, len(payload), 4096):
            yield pb.Frame(chunk=pb.Chunk(data=payload[i : i + 4096]))

    replies = list(live.stub.Exchange(offered(), timeout=10))
    assert [f.reject.reason for f in replies if f.HasField("reject")] == ["not-a-link"]
    assert live.daemon.rejected["not-a-link"] >= 1


def test_a_forged_far_ahead_round_does_not_move_the_daemon(live):
    # issue 12: without TLS anyone can send a header under a member's id; the round it claims is only
    # believed once the member's own (admitted) address confirms it. SENDER's address never answers.
    round_ = live.daemon.round
    live.daemon.behind = None  # the fuzzing above claimed far-ahead rounds too (up to 2**63: never confirmed)
    h = sealed(live.good_header(round=round_ + 1000), bytes(live.own.payload))
    replies = live.send(frames_for(h, bytes(live.own.payload)))
    assert [f.reject.reason for f in replies if f.HasField("reject")] == ["round-ahead"]
    assert live.daemon.behind == (round_ + 1000, SENDER)
    live.call(live.daemon.catch_up())
    assert live.daemon.round == round_ and live.daemon.behind is None


def test_a_trickling_stream_is_cut_by_the_rate_floor_not_only_the_frame_timeout(live, caplog):
    # one byte every 0.3 s never trips the 0.5-s frame timeout; the whole message is due after
    # frame timeout + size / min_bytes_per_s, and is cut then
    live.next_round()
    payload = bytes(live.own.payload)
    h = sealed(live.good_header(), payload)

    def trickle():
        yield pb.Frame(header=header_to_pb(h))
        for i in range(40):
            time.sleep(0.3)
            yield pb.Frame(chunk=pb.Chunk(data=payload[i : i + 1]))

    started = time.monotonic()
    with caplog.at_level("WARNING", logger="tadlora.daemon"):
        try:
            replies = list(live.stub.Exchange(trickle(), timeout=15))
        except grpc.RpcError:
            replies = []
    assert time.monotonic() - started < 5
    assert [f.reject.reason for f in replies if f.HasField("reject")] == ["stalled"]
    assert any("slower than" in r.getMessage() for r in caplog.records)


def test_swaps_in_flight_are_capped_in_all_and_per_address():
    from peer.transport.framing import Limits
    from peer.transport.grpc_transport import _Servicer

    servicer = _Servicer(None, Limits(max_streams=3, max_streams_per_address=2), None)
    servicer.streams = {"ipv4:10.0.0.2": 2}
    assert servicer._busy("ipv4:10.0.0.2").reason == "busy" and servicer._busy("ipv4:10.0.0.3") is None
    servicer.streams["ipv4:10.0.0.3"] = 1
    assert servicer._busy("ipv4:10.0.0.4").reason == "busy"


def test_a_stream_the_client_cancels_gives_its_slot_back(live):
    h = sealed(live.good_header(), bytes(live.own.payload))

    def header_then_wait():
        yield pb.Frame(header=header_to_pb(h))
        time.sleep(30)

    call = live.stub.Exchange(header_then_wait(), timeout=30)
    servicer = live.daemon.transport.servicer
    until = time.monotonic() + 5
    while not servicer.streams and time.monotonic() < until:
        time.sleep(0.02)
    assert sum(servicer.streams.values()) == 1
    call.cancel()
    until = time.monotonic() + 5
    while servicer.streams and time.monotonic() < until:
        time.sleep(0.02)
    assert servicer.streams == {} and servicer.buffered == 0


def test_a_caller_that_stops_reading_the_reply_loses_its_slot():
    # issue 12, part 3: the reply has a rate floor too. An echo server answers with 8 MB; the caller
    # sends its message and then reads nothing, so flow control blocks the server's writes; the
    # handler is cut after frame timeout + size / min_bytes_per_s (about 1.1 s here) and the slot freed.
    from peer.transport.base import ExchangeServer

    class Echo(ExchangeServer):
        async def respond(self, incoming):
            return incoming

        async def commit(self, header):
            return True

        async def abort(self, header):
            pass

        def status(self):
            raise NotImplementedError

        async def current_factors(self, run_id, peer_id):
            raise NotImplementedError

        def outcome(self, peer_id, round_, run_id):
            return None

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    transport = GrpcTransport(Limits(chunk_size=1 << 20, frame_timeout=1.0, min_bytes_per_s=64 << 20))
    address = asyncio.run_coroutine_threadsafe(transport.serve(Echo(), "127.0.0.1:0"), loop).result(10)
    payload = b"p" * (8 << 20)
    h = sealed(Header("echo", SENDER, 0, "A", ("A",), b"\0" * 32, degree=1), payload)
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 2 << 20)])
    try:
        call = pb_grpc.PeerStub(channel).Exchange(iter(frames_for(h, payload, chunk=1 << 20)), timeout=30)
        servicer = transport.servicer
        until = time.monotonic() + 5
        while not servicer.streams and time.monotonic() < until:
            time.sleep(0.05)
        assert servicer.streams, "the swap never started"
        until = time.monotonic() + 10
        while servicer.streams and time.monotonic() < until:
            time.sleep(0.1)
        assert not servicer.streams and servicer.buffered == 0, "a caller that reads nothing kept its slot"
        call.cancel()
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(transport.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def test_a_header_too_large_to_hold_while_the_round_is_awaited_is_refused(live):
    h = sealed(live.good_header(), bytes(live.own.payload))
    h.factors = tuple(f"f{i:05d}" for i in range(4000))  # ~32 KB of factor names
    replies = live.send([pb.Frame(header=header_to_pb(h))])
    assert [f.reject.reason for f in replies if f.HasField("reject")] == ["framing"]


def test_a_forged_header_of_a_dormant_peer_does_not_wake_it(live):
    # without TLS anyone can send a header under a known id; one from a peer that is no link of the
    # round (here: dormant, so not attempted) must not reset its back-off
    d = live.daemon
    d.membership.known["peer-y"] = "127.0.0.1:9"
    for _ in range(5):
        d.backoff.outcome("peer-y", counted=False)
    assert not any(d.backoff.attempt("peer-y", r) for r in range(32))
    h = sealed(live.good_header(sender_id="peer-y"), bytes(live.own.payload))
    replies = live.send(frames_for(h, bytes(live.own.payload)))
    assert [f.reject.reason for f in replies if f.HasField("reject")] == ["not-a-link"]
    assert not any(d.backoff.attempt("peer-y", r) for r in range(32))
    del d.membership.known["peer-y"]


def test_the_channel_cache_evicts_the_least_recently_used(monkeypatch):
    # a crowd of announced addresses must not push out the channel of a neighbour swapped with every round
    import peer.transport.grpc_transport as gt

    monkeypatch.setattr(gt, "MAX_CHANNELS", 2)

    async def scenario():
        t = GrpcTransport(Limits())
        for address in ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:3"):
            t._stub(address, None)
        assert [address for address, _ in t._channels] == ["127.0.0.1:1", "127.0.0.1:3"]
        await t.close()
        await asyncio.gather(*t._closing, return_exceptions=True)

    asyncio.run(scenario())


def test_a_live_daemon_hands_its_factors_and_outcomes_only_to_its_run(live):
    # issue 12, part 5, on the daemon itself (the contract test uses a stand-in server)
    before = dict(live.daemon.rejected)
    frames = list(live.stub.Fetch(pb.FetchRequest(run_id="fuzz", peer_id="peer-77"), timeout=5))
    assert [f.reject.reason for f in frames if f.HasField("reject")] == ["membership"]
    assert not any(f.HasField("chunk") for f in frames)
    frames = list(live.stub.Fetch(pb.FetchRequest(run_id="another-run", peer_id=SENDER), timeout=5))
    assert [f.reject.reason for f in frames if f.HasField("reject")] == ["run"]
    answer = live.stub.Outcome(pb.OutcomeRequest(run_id="another-run", peer_id=SENDER, round=0), timeout=5)
    assert not answer.known
    assert live.daemon.rejected["membership"] == before.get("membership", 0) + 1
    assert live.daemon.rejected["run"] == before.get("run", 0) + 2
