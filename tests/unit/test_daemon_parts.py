"""The daemon's parts, each alone: the round book, the link protocol's decisions, link backoff, the
agreed phase schedule, and the files a peer keeps (no model, no network)."""

import asyncio
import itertools
import json
import os
import types

import pytest
import torch

from peer.algorithm.compression import WireDtype
from peer.algorithm.mixing import metropolis_hastings_weights
from peer.algorithm.schedule import AgreedSchedule
from peer.daemon.checkpoint import CHECKPOINT, CheckpointError, dump_state
from peer.daemon.links import DORMANT_AFTER_FAILURES, MAX_BACKOFF_ROUNDS, LinkBackoff
from peer.daemon.node import PeerDaemon
from peer.daemon.persistence import (
    BASE_CHECKPOINT,
    CHECKPOINT_ID,
    CONSENSUS_CHECKPOINT,
    ROUNDS_LOG,
    WAL,
    WAL_LINKS,
    FolderStore,
    MemoryStore,
    Persistence,
    recorded_payload,
)
from peer.daemon.protocol import Identity, LinkProtocol
from peer.daemon.rounds import Decision, Received, RoundBook, RoundState
from peer.daemon.settlement import PendingLink
from peer.transport.base import Header, Reason, Rejected
from peer.transport.codec import decode_factors, encode_factors, schema_digest, schema_of
from peer.transport.framing import seal

TENSORS = {
    "l.lora_A.weight": torch.ones(2, 3, dtype=torch.float64),
    "l.lora_B.weight": torch.zeros(3, 2, dtype=torch.float64),
}
PAYLOAD = encode_factors(TENSORS)


def _received(degree: int) -> Received:
    """TENSORS as a neighbour of ``degree`` sent them, with the payload they came in."""
    return Received(dict(TENSORS), degree, len(PAYLOAD), PAYLOAD, ("A", "B"))


def _protocol(store=None) -> tuple[LinkProtocol, RoundBook, Persistence]:
    schema = schema_of(TENSORS)
    me = Identity("peer-05", "run", schema, schema_digest(schema))  # answers links opened by lower ids
    book, files = RoundBook(), Persistence(store or MemoryStore())
    return LinkProtocol(me, book, files, None, 1.0, lambda: 0, lambda h: None, lambda p, r: None), book, files


def _open(book: RoundBook, files: Persistence, candidates=("peer-00", "peer-02")) -> RoundState:
    files.open_round(0, {}, list(candidates), {})
    own = seal(Header("run", "peer-05", 0, "B", ("A", "B"), b""), b"x")
    return book.opened(RoundState(0, frozenset(candidates), own))


def _header(sender: str) -> Header:
    return Header("run", sender, 0, "B", ("A", "B"), b"")


def test_a_server_decision_is_final_and_answered_at_once():
    async def go():
        protocol, book, files = _protocol()
        state = _open(book, files)
        state.staged["peer-00"] = _received(2)
        assert protocol.commit(_header("peer-00")) is True
        assert protocol.commit(_header("peer-00")) is True  # a repeated commit: same answer
        assert files.wal.links["peer-00"]["final"] is True  # written before the ack
        assert protocol.outcome("peer-00", 0) is True
        # a query that arrives before the commit refuses the link for good
        state.staged["peer-02"] = _received(2)
        assert protocol.outcome("peer-02", 0) is False
        assert protocol.commit(_header("peer-02")) is False
        assert protocol.outcome("peer-02", 0) is False
        assert protocol.outcome("peer-04x", 0) is False and "peer-04x" not in state.decisions
        assert protocol.outcome("peer-07", 0) is None  # a higher id never opens a link to us
        book.close(0)
        assert protocol.outcome("peer-00", 0) is True and protocol.outcome("peer-02", 0) is False
        assert protocol.outcome("peer-00", 5) is False  # never opened here: nothing counted

    asyncio.run(go())


def test_an_aborted_stream_refuses_the_link_and_settles_it():
    async def go():
        protocol, book, files = _protocol()
        state = _open(book, files)
        state.staged["peer-00"] = _received(1)
        protocol.abort(_header("peer-00"))
        assert state.decisions["peer-00"] is Decision.REFUSED and state.event("peer-00").is_set()
        assert protocol.commit(_header("peer-00")) is False

    asyncio.run(go())


def test_a_late_settlement_adds_exactly_the_missing_term():
    sent = {"a": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    received = {"a": torch.tensor([3.0, 0.0], dtype=torch.float64)}
    link = PendingLink(4, "peer-02", "addr", 0.25, sent, received)
    # the server mixed w·(sent − its own); the client's missing term is w·(received − sent): they cancel
    server_term = (sent["a"] - received["a"]) * 0.25
    assert torch.equal(link.correction()["a"] + server_term, torch.zeros(2, dtype=torch.float64))


def test_backoff_skips_a_failing_neighbour_and_both_ends_meet_again():
    slow, fast = LinkBackoff(), LinkBackoff()
    for _ in range(3):
        slow.outcome("x", counted=False)
    fast.outcome("x", counted=False)
    assert fast.period("x") == 1 and slow.period("x") == 4
    common = [r for r in range(40) if slow.attempt("x", r) and fast.attempt("x", r)]
    assert common == [r for r in range(40) if r % 4 == 0]
    for _ in range(20):
        slow.outcome("x", counted=False)
    assert slow.period("x") == MAX_BACKOFF_ROUNDS
    slow.outcome("x", counted=True)
    assert slow.period("x") == 1


def test_a_neighbour_that_never_answers_costs_a_bounded_number_of_rounds_then_none():
    # issue 12, part 2: attempted (and waited for) in at most DORMANT_AFTER_FAILURES rounds, then never
    backoff, attempted = LinkBackoff(), []
    for round_ in range(200):
        if backoff.attempt("ghost", round_):
            attempted.append(round_)
            backoff.outcome("ghost", counted=False)
    assert len(attempted) == DORMANT_AFTER_FAILURES and attempted[-1] < 20 and backoff.dormant("ghost")
    backoff.outcome("ghost", counted=True)  # it answered a status probe: attempted again at once
    assert backoff.attempt("ghost", 201) and not backoff.dormant("ghost")


def test_proposals_freeze_half_way_through_the_window():
    s = AgreedSchedule(2, gossip_rounds=6)
    s.propose(3, round_=1)
    s.propose(9, round_=3)  # too late: a rise now would reach only some peers before the decision
    assert s.proposal() == 3
    s.merge(0, 5)  # a neighbour's (frozen) proposal still spreads
    for r in range(8):
        s.decide(r)
    assert s.segment(6)[:2] == (6, 5)


def test_a_later_decision_is_adopted_and_the_order_is_total():
    a, b = AgreedSchedule(2, gossip_rounds=4), AgreedSchedule(2, gossip_rounds=4)
    a.propose(3, 0)
    b.propose(5, 0)
    for r in range(5):
        a.decide(r)
        b.decide(r)
    assert a.segment(4)[1] == 3 and b.segment(4)[1] == 5  # decided apart (no gossip between them)
    assert a.adopt(*b.segment(4)) and not b.adopt(*a.segment(4))
    assert [a.phase(r) for r in range(4, 12)] == [b.phase(r) for r in range(4, 12)]


def test_a_jumping_peer_continues_a_neighbours_phases_backwards_and_forwards():
    s = AgreedSchedule.continuing(start=10, length=3, factor="A", decided_at=10, round_=8, gossip_rounds=10)
    assert [s.phase(r) for r in range(8, 14)] == ["B", "B", "A", "A", "A", "B"]
    s = AgreedSchedule.continuing(start=10, length=3, factor="A", decided_at=10, round_=17, gossip_rounds=10)
    assert s.phase(17) == "A" and s.phase(19) == "B"  # A for 10-12, B 13-15, A 16-18, B 19-21


def test_files_resume_after_a_crash_between_checkpoint_and_log_line(tmp_path):
    files = Persistence(FolderStore(tmp_path))
    files.open_round(0, {"x": torch.ones(1)}, ["peer-02"], {"k": 1})
    files.record_link(0, "peer-02", _received(2), final=True)
    again = Persistence(FolderStore(tmp_path)).load_wal()
    link = again.links["peer-02"]
    # the record holds the payload as it came, which decodes to the same factors
    assert again.round == 0 and link["final"] and link["bytes"] == len(PAYLOAD)
    assert bytes(recorded_payload(link)) == PAYLOAD
    assert torch.equal(
        decode_factors(recorded_payload(link), schema_of(TENSORS))["l.lora_A.weight"], TENSORS["l.lora_A.weight"]
    )
    files.save_checkpoint({"round": 1, "record": {"round": 0}})  # ... and the process dies here
    restarted = Persistence(FolderStore(tmp_path))
    restarted.log_round(restarted.load_checkpoint()["record"])
    restarted.log_round({"round": 0})  # once only
    assert [json.loads(line)["round"] for line in (tmp_path / ROUNDS_LOG).read_text().splitlines()] == [0]
    restarted.discard_wal()
    assert not (tmp_path / WAL).exists()


def test_a_torn_last_log_line_is_not_read(tmp_path):
    (tmp_path / ROUNDS_LOG).write_text('{"round": 0}\n{"round": 1, "neigh')
    assert Persistence(FolderStore(tmp_path)).last_logged_round == 0


def test_the_deadline_learns_from_counted_links_only_and_stretches_when_nothing_counts():
    from peer.daemon.clock import AdaptiveDeadline

    deadline = AdaptiveDeadline(minimum=2.0, maximum=60.0)
    assert deadline.current() == 60.0  # nothing measured: the start-up allowance
    for _ in range(30):
        deadline.observe(0.4)  # links count 0.4 s into the exchange
    assert deadline.current() == 2.0  # 2 × 0.4 clamped to the minimum
    # rounds in which some links counted and others failed at the deadline never raise it
    assert deadline.current() == 2.0
    deadline.nothing_counted()  # a lossy round: nothing got through
    assert deadline.current() == 4.0
    for _ in range(10):
        deadline.nothing_counted()
    assert deadline.current() == 60.0  # up to the maximum, not beyond
    deadline.observe(0.4)  # a link counts again: back to what it learned
    assert deadline.current() == 2.0


def test_a_line_after_a_torn_one_starts_clean(tmp_path):
    (tmp_path / ROUNDS_LOG).write_text('{"round": 0}\n{"round": 1, "neigh')
    files = Persistence(FolderStore(tmp_path))
    files.log_round({"round": 1})
    assert [json.loads(line)["round"] for line in (tmp_path / ROUNDS_LOG).read_text().splitlines()] == [0, 1]


def test_an_append_that_failed_midway_is_cut_before_the_next_line(tmp_path, monkeypatch):
    store = FolderStore(tmp_path)
    store.append_line(ROUNDS_LOG, '{"round": 0}')  # the file checked once: later appends skip the check
    real_fsync = os.fsync

    def torn_then_failed(fd):  # the disk took half a line, then the append raised
        os.ftruncate(fd, os.fstat(fd).st_size - 5)
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", torn_then_failed)
    with pytest.raises(OSError):
        store.append_line(ROUNDS_LOG, '{"round": 1}')
    monkeypatch.setattr(os, "fsync", real_fsync)
    store.append_line(ROUNDS_LOG, '{"round": 2}')
    assert store.lines(ROUNDS_LOG) == ['{"round": 0}', '{"round": 2}']


def test_links_are_appended_records_and_a_torn_last_one_is_never_read(tmp_path):
    files = Persistence(FolderStore(tmp_path))
    files.open_round(3, {"x": torch.ones(1)}, ["peer-02", "peer-03"], {})
    files.record_link(3, "peer-02", _received(2), final=True)
    wal_bytes = (tmp_path / WAL).read_bytes()
    files.record_link(3, "peer-03", _received(1), final=False)
    assert (tmp_path / WAL).read_bytes() == wal_bytes  # a link does not rewrite the round's state
    whole = (tmp_path / WAL_LINKS).read_bytes()
    (tmp_path / WAL_LINKS).write_bytes(whole[:-5])  # a crash in the middle of the second record
    restarted = Persistence(FolderStore(tmp_path))
    wal = restarted.load_wal()
    assert wal.round == 3 and set(wal.links) == {"peer-02"} and wal.links["peer-02"]["final"]
    restarted.wal = wal  # finishing the round from its WAL appends after the cut, not after the torn bytes
    restarted.record_link(3, "peer-03", _received(1), final=False)
    assert set(Persistence(FolderStore(tmp_path)).load_wal().links) == {"peer-02", "peer-03"}


def test_link_records_of_an_earlier_round_are_ignored_and_a_finished_round_clears_them(tmp_path):
    files = Persistence(FolderStore(tmp_path))
    files.open_round(0, {"x": torch.ones(1)}, ["peer-02"], {})
    files.record_link(0, "peer-02", _received(2), final=True)
    stale = (tmp_path / WAL_LINKS).read_bytes()
    files.finish_round(files.round_files({"round": 0}, {"round": 1}))
    assert (tmp_path / WAL_LINKS).read_bytes() == b"" and not (tmp_path / WAL).exists()
    files.open_round(1, {"x": torch.ones(1)}, ["peer-02"], {})
    (tmp_path / WAL_LINKS).write_bytes(stale)  # a power cut undid the clearing: round 0's record is back
    assert Persistence(FolderStore(tmp_path)).load_wal().links == {}


def test_a_server_that_answered_and_then_claims_it_has_not_reached_the_round_is_refused_not_asked_again():
    # a hostile server could otherwise make the client write the link ahead every AHEAD_RETRY_S
    schema = schema_of(TENSORS)
    digest = schema_digest(schema)

    class AnswersThenSaysAhead:
        calls = 0

        async def exchange(self, address, message, validate, timeout, expect=None):
            self.calls += 1
            await validate(seal(Header("run", "peer-07", 1, "B", ("A", "B"), digest), encode_factors(TENSORS)))
            raise Rejected(Reason.ROUND_AHEAD, "not reached", 0)  # "at round 0": one behind ours

    async def go():
        transport = AnswersThenSaysAhead()
        book, files = RoundBook(), Persistence(MemoryStore())
        me = Identity("peer-05", "run", schema, digest)
        protocol = LinkProtocol(me, book, files, transport, 1.0, lambda: 1, lambda h: None, lambda p, r: None)
        files.open_round(1, {}, ["peer-07"], {})
        own = seal(Header("run", "peer-05", 1, "B", ("A", "B"), digest), encode_factors(TENSORS))
        state = book.opened(RoundState(1, frozenset({"peer-07"}), own))
        await protocol.open_link(state, "peer-07", "127.0.0.1:1", until=protocol.now() + 5.0)
        assert transport.calls == 1 and state.decisions["peer-07"] is Decision.REFUSED
        assert len(files.store.records(WAL_LINKS)) == 1

    asyncio.run(go())


def test_link_records_of_another_write_ahead_record_of_the_same_round_are_not_its_links(tmp_path):
    # a run started over in the same folder (its checkpoint and wal.pt deleted, wal-links.bin kept)
    files = Persistence(FolderStore(tmp_path))
    files.open_round(0, {"x": torch.ones(1)}, ["peer-02"], {})
    files.record_link(0, "peer-02", _received(2), final=True)
    (tmp_path / WAL).unlink()
    again = Persistence(FolderStore(tmp_path))
    again.open_round(0, {"x": torch.ones(1)}, ["peer-02", "peer-03"], {})
    assert Persistence(FolderStore(tmp_path)).load_wal().links == {}
    again.record_link(0, "peer-03", _received(2), final=False)
    assert set(Persistence(FolderStore(tmp_path)).load_wal().links) == {"peer-03"}


def test_the_self_weight_has_the_same_bits_whatever_order_the_links_committed_in():
    # own degree 5, neighbours of degrees 5, 7 and 8: summed in commit order, some orders differ in the last bit
    degrees = {"peer-01": 5, "peer-02": 7, "peer-03": 8}
    own = seal(Header("run", "peer-00", 0, "B", ("A", "B"), b""), b"x")
    in_commit_order, in_daemon_order = set(), set()
    for order in itertools.permutations(degrees):
        state = RoundState(0, frozenset([*degrees, "peer-04", "peer-05"]), own)
        for pid in order:
            state.decide(pid, Decision.COUNTED, Received(TENSORS, degrees[pid], 1))
        in_commit_order.add(metropolis_hastings_weights(5, {p: r.degree for p, r in state.counted.items()})[0])
        in_daemon_order.add(PeerDaemon._weights(state)[0])
    assert len(in_commit_order) > 1  # the case this test is about
    assert len(in_daemon_order) == 1


def test_a_link_record_holds_the_payload_as_it_came_and_a_compressed_one_stays_compressed(tmp_path):
    factors = {
        "l.lora_A.weight": torch.linspace(-1.0, 1.0, 8 * 384).reshape(8, 384),
        "l.lora_B.weight": torch.linspace(2.0, -2.0, 384 * 8).reshape(384, 8),
    }
    schema = schema_of(factors)
    payload = bytearray(encode_factors(factors, WireDtype.INT8))
    received = Received(decode_factors(payload, schema, set(factors)), 3, len(payload), payload, ("A", "B"))
    files = Persistence(FolderStore(tmp_path))
    files.open_round(0, {"x": torch.ones(1)}, ["peer-02"], {})
    files.record_link(0, "peer-02", received, final=False)
    fp32_bytes = sum(t.numel() * 4 for t in factors.values())
    assert (tmp_path / WAL_LINKS).stat().st_size < fp32_bytes / 3  # int8 on disk as on the wire
    link = Persistence(FolderStore(tmp_path)).load_wal().links["peer-02"]
    again = decode_factors(recorded_payload(link), schema, set(factors))
    assert (link["degree"], link["bytes"], link["final"]) == (3, len(payload), False)
    assert all(torch.equal(again[name], received.tensors[name]) for name in factors)  # the very factors mixed


def test_a_round_that_trained_nothing_leaves_its_state_in_the_checkpoint_and_a_restart_needs_it(tmp_path):
    files = Persistence(FolderStore(tmp_path))
    files.save_checkpoint({"round": 4, "local": {"x": torch.ones(4096)}})
    files.open_round(4, None, ["peer-02"], {})
    assert (tmp_path / WAL).stat().st_size < 4096  # the state is not written again
    restarted = Persistence(FolderStore(tmp_path))
    wal = restarted.load_wal()
    assert wal.local_state_in_checkpoint and restarted.checkpoint_round is None
    assert restarted.load_checkpoint()["round"] == restarted.checkpoint_round == 4
    with pytest.raises(AssertionError, match="only the checkpoint of the round"):
        files.open_round(5, None, ["peer-02"], {})  # the checkpoint is of round 4: it holds not round 5's
    # a restart without that checkpoint cannot finish the round, and says so in one line
    for checkpoint_round in (None, 3):
        stub = types.SimpleNamespace(persistence=types.SimpleNamespace(checkpoint_round=checkpoint_round))
        with pytest.raises(CheckpointError, match="left its state in the checkpoint") as missing:
            PeerDaemon._reopen(stub, wal)
        assert "\n" not in str(missing.value)


def _opening_daemon(checkpoint_round: int, trains: bool, settled: list):
    """``PeerDaemon._train_and_open``'s collaborators, the round's own decisions left to it."""
    files = Persistence(MemoryStore())
    files.checkpoint_round = checkpoint_round
    plan = types.SimpleNamespace(train=frozenset({"A"}) if trains else frozenset(), phase="A" if trains else "AB")

    async def offload(fn, *args):
        return fn(*args)

    async def files_written():
        return None

    return types.SimpleNamespace(
        settlements=types.SimpleNamespace(apply=lambda add: settled),
        phases=None,
        known={},
        strategy=types.SimpleNamespace(plan=lambda r: plan),
        local=types.SimpleNamespace(train=lambda r: 0.5 if trains else float("nan"), state=lambda: {"adapter": "now"}),
        now=lambda: 0.0,
        offload=offload,
        files_written=files_written,
        persistence=files,
        _add_settled_term=None,
        _choose_links=lambda r: ["peer-02"],
        _round_extras=lambda: {},
        _open_round=lambda r, candidates: None,
    )


@pytest.mark.parametrize(
    "checkpoint_round, trains, settled, in_checkpoint",
    [
        (4, False, [], True),  # a consensus round, nothing changed since the checkpoint of round 4
        (4, True, [], False),  # it trained
        (4, False, [{"round": 2, "peer": "peer-02"}], False),  # a late settlement changed the factors
        (3, False, [], False),  # the checkpoint is of another round (a first round, say)
        (None, False, [], False),
    ],
)
def test_only_an_unchanged_round_leaves_its_state_in_the_checkpoint(checkpoint_round, trains, settled, in_checkpoint):
    daemon = _opening_daemon(checkpoint_round, trains, settled)
    asyncio.run(PeerDaemon._train_and_open(daemon, 4))
    wal = daemon.persistence.wal
    assert wal.local_state_in_checkpoint is in_checkpoint
    assert in_checkpoint or wal.local_state == {"adapter": "now"}


class _RecordingStore(MemoryStore):
    """A ``MemoryStore`` that keeps the order of its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, str]] = []

    def write(self, name, data):
        self.ops.append(("write", name))
        super().write(name, data)

    def delete(self, name):
        self.ops.append(("delete", name))
        super().delete(name)

    def append_line(self, name, line):
        self.ops.append(("line", name))
        super().append_line(name, line)

    def clear_records(self, name):
        self.ops.append(("clear", name))
        super().clear_records(name)


def test_a_round_that_trains_nothing_writes_the_last_rounds_files_itself_before_its_record():
    daemon = _opening_daemon(checkpoint_round=3, trains=False, settled=[])
    store = _RecordingStore()
    daemon.persistence = Persistence(store)
    daemon.persistence.open_round(3, {"x": torch.ones(1)}, ["peer-02"], {})  # round 3, finished, not yet written
    store.ops.clear()
    daemon.writing, daemon.observer = None, types.SimpleNamespace(checkpoint=lambda seconds: None)
    daemon.unwritten = daemon.persistence.round_files({"round": 3}, {"round": 4, "local": {"x": torch.ones(1)}})
    daemon.files_written = lambda: PeerDaemon.files_written(daemon)  # the daemon's own, not a stub
    asyncio.run(PeerDaemon._train_and_open(daemon, 4))
    # round 3's files, in their order, all before round 4's record: the crash guarantees of the writer
    assert store.ops == [
        ("write", CHECKPOINT),
        ("line", ROUNDS_LOG),
        ("delete", WAL),
        ("clear", WAL_LINKS),
        ("write", WAL),
    ]
    assert daemon.unwritten is None and daemon.persistence.wal.round == 4
    assert daemon.persistence.wal.local_state_in_checkpoint  # the checkpoint just written is round 4's


def _record_reader(schema):
    """``PeerDaemon._recorded`` of a daemon of this schema, without the rest of a daemon."""
    stub = types.SimpleNamespace(schema=schema, me=types.SimpleNamespace(device=torch.device("cpu")))
    stub._decoded = lambda state, payload: PeerDaemon._decoded(stub, state, payload)
    return lambda state, link: PeerDaemon._recorded(stub, state, link)


def test_a_restart_decodes_a_recorded_payload_reads_an_earlier_builds_factors_and_refuses_a_broken_record(tmp_path):
    schema = schema_of(TENSORS)
    own = seal(Header("run", "peer-05", 0, "B", ("A", "B"), schema_digest(schema)), encode_factors(TENSORS))
    state = RoundState(0, frozenset({"peer-02"}), own)
    recorded = _record_reader(schema)
    payload = bytearray(encode_factors(TENSORS, WireDtype.INT8))
    files = Persistence(FolderStore(tmp_path))
    files.open_round(0, {"x": torch.ones(1)}, ["peer-02"], {})
    received = Received(decode_factors(payload, schema, set(TENSORS)), 2, len(payload), payload, ("A", "B"))
    files.record_link(0, "peer-02", received, final=False)
    link = Persistence(FolderStore(tmp_path)).load_wal().links["peer-02"]
    again = recorded(state, link)
    assert (again.degree, again.payload_bytes) == (2, len(payload))
    assert all(torch.equal(again.tensors[name], received.tensors[name]) for name in TENSORS)
    assert link["tensors"] is again.tensors  # decoded once: the round's later readers find the factors
    earlier_build = {"tensors": dict(TENSORS), "degree": 1, "bytes": 10, "final": True}
    assert recorded(state, earlier_build).tensors == earlier_build["tensors"]
    with pytest.raises(CheckpointError, match="does not decode") as broken:
        recorded(state, {"degree": 1, "bytes": 10, "final": True})
    assert "\n" not in str(broken.value)
    # an int8 payload names no tensors: one recorded as A alone is never read as this round's A and B
    with pytest.raises(CheckpointError, match=r"holds \['A'\], the round mixes \['A', 'B'\]"):
        recorded(state, {**Persistence(FolderStore(tmp_path)).load_wal().links["peer-02"], "factors": ["A"]})


def _peer_state(round_: int, factor: float, moment: float) -> dict:
    optimizer = {"state": {0: {"exp_avg": torch.full((4,), moment)}}, "param_groups": [{"lr": 0.1}]}
    return {"round": round_, "local": {"adapter": {"a": torch.full((2,), factor)}, "optimizer": optimizer}}


def test_a_round_that_trained_nothing_writes_its_checkpoint_without_the_optimizer_which_restarts_find(tmp_path):
    files = Persistence(FolderStore(tmp_path))
    files.save_checkpoint(_peer_state(4, factor=1.0, moment=7.0))
    whole = (tmp_path / CHECKPOINT).read_bytes()
    files.finish_round(files.round_files({"round": 4}, _peer_state(5, 2.0, 7.0), optimizer_unchanged=True))
    assert (tmp_path / CHECKPOINT).read_bytes() == whole  # the whole one stays as it was
    assert (tmp_path / CONSENSUS_CHECKPOINT).stat().st_size < len(whole)  # no moments in it
    restarted = Persistence(FolderStore(tmp_path))
    state = restarted.load_checkpoint()
    assert state["round"] == 5 and restarted.checkpoint_round == 5 and state["record"] == {"round": 4}
    assert state["local"]["adapter"]["a"].tolist() == [2.0, 2.0]  # the consensus round's factors
    assert state["local"]["optimizer"]["state"][0]["exp_avg"].tolist() == [7.0] * 4  # the whole one's moments
    assert CHECKPOINT_ID not in state and BASE_CHECKPOINT not in state
    # a round that trained writes a whole checkpoint again, and the consensus one goes
    restarted.finish_round(restarted.round_files({"round": 5}, _peer_state(6, 3.0, 8.0)))
    assert not (tmp_path / CONSENSUS_CHECKPOINT).exists()
    state = Persistence(FolderStore(tmp_path)).load_checkpoint()
    assert state["round"] == 6 and state["local"]["optimizer"]["state"][0]["exp_avg"].tolist() == [8.0] * 4


def test_a_consensus_checkpoint_made_over_another_whole_one_is_stale(tmp_path):
    files = Persistence(FolderStore(tmp_path))
    files.save_checkpoint(_peer_state(4, 1.0, 7.0))
    files.finish_round(files.round_files({"round": 4}, _peer_state(5, 2.0, 7.0), optimizer_unchanged=True))
    stale = (tmp_path / CONSENSUS_CHECKPOINT).read_bytes()
    files.save_checkpoint(_peer_state(5, 9.0, 8.0))  # a whole one of the same round (a jump, a start)
    (tmp_path / CONSENSUS_CHECKPOINT).write_bytes(stale)  # its removal lost in a power cut
    state = Persistence(FolderStore(tmp_path)).load_checkpoint()
    assert state["local"]["adapter"]["a"].tolist() == [9.0, 9.0]


def test_without_the_id_of_an_earlier_builds_checkpoint_a_round_writes_a_whole_one(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(bytes(dump_state(_peer_state(4, 1.0, 7.0))))  # no checkpoint_id
    files = Persistence(FolderStore(tmp_path))
    assert files.load_checkpoint()["round"] == 4
    files.finish_round(files.round_files({"round": 4}, _peer_state(5, 2.0, 7.0), optimizer_unchanged=True))
    assert not (tmp_path / CONSENSUS_CHECKPOINT).exists()
    assert Persistence(FolderStore(tmp_path)).load_checkpoint()["round"] == 5


def test_a_stale_consensus_checkpoint_that_cannot_be_removed_does_not_stop_the_round():
    class NoDeleting(MemoryStore):
        def delete(self, name):
            if name == CONSENSUS_CHECKPOINT:
                raise OSError("read-only")
            super().delete(name)

    files = Persistence(NoDeleting())
    files.save_checkpoint(_peer_state(4, 1.0, 7.0))
    files.finish_round(files.round_files({"round": 4}, _peer_state(5, 2.0, 7.0), optimizer_unchanged=True))
    files.finish_round(files.round_files({"round": 5}, _peer_state(6, 3.0, 8.0)))  # whole: the removal fails
    assert files.consensus_on_disk  # tried again at the next whole checkpoint
    state = Persistence(files.store).load_checkpoint()
    assert state["round"] == 6 and state["local"]["adapter"]["a"].tolist() == [3.0, 3.0]
