"""Real daemons as OS processes on loopback: real gRPC, real mDNS, real kill -9."""

import asyncio
import functools
import json
import operator
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peer.config import load_config
from peer.daemon.signals import STOP_GRACE_S
from peer.sim import simulate
from peer.testbed import Testbed
from peer.testbed.processes import same_code_env
from peer.testbed.runner import collect, mixing_sum_drift
from peer.transport.base import Header, Rejected
from peer.transport.codec import encode_factors
from peer.transport.framing import seal
from peer.transport.grpc_transport import GrpcTransport

pytestmark = pytest.mark.slow

TINY = dict(
    model="tiny-bert",
    task="synthetic",
    batch_size=8,
    max_length=32,
    eval_samples=64,
    references="none",
    learning_rate=1e-2,
    device="cpu",
    consensus_rounds=0,  # the tests that are about them ask for them
)
NET = dict(discovery_wait=30.0, round_timeout_min=2.0, round_timeout_max=30.0)


def _all_rounds(bed: Testbed) -> dict[int, list[dict]]:
    by_round: dict[int, list[dict]] = {}
    for i in range(bed.run.peers):
        for record in bed.rounds(i):
            record["peer"] = f"peer-{i:02d}"
            by_round.setdefault(record["round"], []).append(record)
    return by_round


def run_bed(cfg, folder: Path, settings: dict, extra: dict | None = None, timeout: float = 150) -> Testbed:
    """Start every peer of ``cfg`` (``extra``: per-peer settings), wait for all, stop whatever is left."""
    bed = Testbed(cfg, folder, settings)
    try:
        for i in range(cfg.peers):
            bed.start(i, (extra or {}).get(i))
        bed.wait(timeout=timeout)
    finally:
        bed.stop_all()
    return bed


def _wait_for_rounds(bed: Testbed, index: int, count: int, timeout: float = 60) -> None:
    until = time.monotonic() + timeout
    while len(bed.rounds(index)) < count:
        assert time.monotonic() < until, f"peer-{index:02d} did not reach {count} rounds"
        assert bed.procs[index].poll() is None, f"peer-{index:02d} exited early"
        time.sleep(0.1)


def test_daemons_equal_the_simulator_on_a_complete_graph(tmp_path):
    # the head trains and travels as a third block: the daemons' factors and heads equal the simulator's,
    # and the assessment of the daemons' folders (network average, references; what compose's
    # ``tadlora collect`` prints, the run's settings read back from a daemon's summary) equals the simulator's;
    # the last two rounds are consensus rounds: the daemons train nothing in them, as the simulator does not
    cfg = load_config(
        overrides=dict(TINY, peers=3, rounds=4, consensus_rounds=2, local_steps=2, topology="complete", train_head=1)
    )
    bed = run_bed(cfg, tmp_path / "bed", NET, timeout=120)
    cfg.references = "alone,centralized"
    sim_summary = simulate(cfg, out=tmp_path / "sim", progress=False)
    assessed = collect(tmp_path / "bed", references="alone,centralized")
    assert set(assessed["peers"]) == {f"peer-{i:02d}" for i in range(3)}
    assert assessed["network_average"] == pytest.approx(sim_summary["network_average"])
    assert assessed["references"] == sim_summary["references"]
    for i in range(3):
        pid = f"peer-{i:02d}"
        net = load_file(str(tmp_path / "bed" / pid / "peers" / pid / "adapter" / "adapter_model.safetensors"))
        sim = load_file(str(tmp_path / "sim" / "peers" / pid / "adapter" / "adapter_model.safetensors"))
        assert net.keys() == sim.keys()
        for key in net:
            assert torch.allclose(net[key], sim[key], atol=1e-6), key
    by_round = _all_rounds(bed)
    assert sorted(by_round) == list(range(6))
    for round_, records in by_round.items():
        assert len(records) == 3 and {r["phase"] for r in records} == {"B" if round_ < 5 else "A"}  # T = 5
        assert all(len(r["neighbours"]) == 2 for r in records)
        assert all((r["train_loss"] is None) == (round_ >= 4) for r in records)  # no loss: null, not NaN


def _status_and_bad_message(address: str) -> tuple:
    async def go():
        transport = GrpcTransport()
        try:
            status = await transport.status(address, timeout=5)

            async def accept(_):
                return None

            async def refusal(sender, round_):
                header = Header(
                    run_id=status.run_id,
                    sender_id=sender,
                    round=round_,
                    phase="B",
                    factors=("A", "B"),
                    schema_digest=status.schema_digest,
                )
                with pytest.raises(Rejected) as info:
                    await transport.exchange(address, seal(header, encode_factors({})), accept, timeout=5)
                return info.value.reason

            # refused for its round, before the payload; in the current round: no link of this peer
            far, stale = await refusal("intruder", status.round + 1000), await refusal("intruder", 0)
            assert await refusal("intruder", status.round) == "not-a-link"
            after = await transport.status(address, timeout=5)
            return status, far, stale, after
        finally:
            await transport.close()

    return asyncio.run(go())


def test_kill_9_and_restart_resumes_and_rejoins(tmp_path):
    cfg = load_config(overrides=dict(TINY, peers=3, rounds=40, local_steps=40, topology="complete"))
    bed = Testbed(cfg, tmp_path / "bed", dict(NET, round_timeout_min=1.0, round_timeout_max=20.0))
    try:
        for i in range(3):
            bed.start(i)
        _wait_for_rounds(bed, 0, 3)
        address = json.loads((bed.peer_dir(0) / "endpoint.json").read_text())["address"]
        status, far_reason, stale_reason, after = _status_and_bad_message(address)
        assert status.peer_id == "peer-00" and {n.peer_id for n in status.neighbours} == {"peer-01", "peer-02"}
        assert far_reason == "round-ahead" and stale_reason == "round-behind"
        assert sum(after.rejected.values()) >= 3

        bed.kill(1, signal.SIGKILL)
        killed_at = len(bed.rounds(1))
        time.sleep(1.0)
        bed.start(1)
        bed.wait(timeout=180)
    finally:
        bed.stop_all()
    log = (bed.peer_dir(1) / "daemon.log").read_text()
    assert "resumed at round" in log
    after_restart = bed.rounds(1)[killed_at:]
    assert after_restart, "the restarted peer ran no round"
    assert any(r["neighbours"] for r in after_restart), "the restarted peer never linked again"
    assert json.loads((bed.peer_dir(1) / "summary.json").read_text())["rounds"] == 40
    assert max(r["round"] for r in bed.rounds(1)) == 39


def test_late_joiner_jumps_to_the_current_round_keeping_its_factors(tmp_path):
    cfg = load_config(overrides=dict(TINY, peers=3, rounds=60, local_steps=25, topology="complete"))
    bed = Testbed(cfg, tmp_path / "bed", dict(NET, discovery_wait=1.0, round_timeout_min=1.0, round_timeout_max=3.0))
    try:
        bed.start(0)
        bed.start(1)
        _wait_for_rounds(bed, 0, 5)
        bed.start(2, {"discovery_wait": 30.0})  # it waits to know both before it trains
        bed.wait(timeout=180)
    finally:
        bed.stop_all()
    log = (bed.peer_dir(2) / "daemon.log").read_text()
    assert "jumping to round" in log
    jump = json.loads((bed.peer_dir(2) / "events.jsonl").read_text().splitlines()[0])
    late = bed.rounds(2)
    assert jump["event"] == "jump" and late[0]["round"] == jump["to"] >= 4, "the late peer did not jump"
    assert any(r["neighbours"] for r in late)


def test_lossy_links_keep_sums_both_ends_agree_and_auto_agrees_across_peers(tmp_path):
    # an Erdős–Rényi graph drops links every round; each peer sends its factors in another form
    # (compressed gossip keeps the sums too, in any mixture); the peers' link estimates differ, and
    # the auto switching interval still agrees. The two peers that dial most links (the smaller id
    # dials) send every payload on their neighbours' payload lanes, and one peer has none: lanes and
    # chunks, and both in one swap, all in one network
    cfg = load_config(
        overrides=dict(
            TINY,
            peers=4,
            rounds=24,
            local_steps=2,
            topology="er",
            edge_prob=0.3,
            switch_interval="auto",
            strategy="tad",
        )
    )
    wires = {
        0: {"lane_min_bytes": 0},
        1: {"wire_dtype": "bf16", "lane_min_bytes": 0},
        2: {"wire_dtype": "int8", "lane": 0},
        3: {"wire_dtype": "fp16"},
    }
    bed = run_bed(cfg, tmp_path / "bed", NET, extra=wires, timeout=150)
    for i in (0, 1):
        assert "payloads go on its lane" in (bed.peer_dir(i) / "daemon.log").read_text()
    rounds = _all_rounds(bed)
    assert any(len(r["neighbours"]) < 3 for records in rounds.values() for r in records)  # some links dropped
    for round_, records in rounds.items():
        links = {(r["peer"], n) for r in records for n in r["neighbours"]}
        assert all((b, a) in links for a, b in links), f"one-sided link in round {round_}"
        for r in records:
            assert r["self_weight"] + sum(r["weights"].values()) == pytest.approx(1.0)
    # a peer that starts late adopts the current round and skips the ones before: check every round
    # that all four ran, and that these include rounds after the first decision (round >= 10)
    full = {r: recs for r, recs in rounds.items() if len(recs) == 4}
    assert len(full) >= 10 and max(full) >= 12
    for round_, records in full.items():
        assert len({r["phase"] for r in records}) == 1, f"phases differ in round {round_}"
        assert len({r["switch_interval"] for r in records}) == 1, f"intervals differ in round {round_}"
        for factor in ("a", "b"):
            before = sum(r[f"sum_{factor}_before"] for r in records)
            after = sum(r[f"sum_{factor}_after"] for r in records)
            assert after == pytest.approx(before, abs=1e-4)
    assert mixing_sum_drift([bed.peer_dir(i) for i in range(4)]) < 1e-5  # fp32 rounding, nothing more
    message = [
        next(r["bytes_sent"] // len(r["neighbours"]) for r in bed.rounds(i) if r["neighbours"]) for i in range(3)
    ]
    assert message[2] < message[1] < message[0]  # int8 < bf16 < fp32
    estimates = {round(r["link_estimate"], 3) for recs in full.values() for r in recs if r["link_estimate"] is not None}
    assert len(estimates) > 1, "the peers' local link estimates never differed"
    assert {r["phase"] for recs in full.values() for r in recs} == {"A", "B"}  # it did switch


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_static_peers_without_mdns(tmp_path):
    cfg = load_config(overrides=dict(TINY, peers=2, rounds=3, local_steps=2, topology="complete"))
    ports = _free_ports(2)
    bed = run_bed(
        cfg,
        tmp_path / "bed",
        dict(NET, mdns=0),
        {i: {"listen": f"127.0.0.1:{ports[i]}", "peer": f"127.0.0.1:{ports[1 - i]}"} for i in range(2)},
    )
    for i in range(2):
        assert all(len(r["neighbours"]) == 1 for r in bed.rounds(i))
        assert "found peer-" in (bed.peer_dir(i) / "daemon.log").read_text()


def test_a_daemon_listening_on_every_interface_announces_this_machines_address(tmp_path):
    from peer.discovery.mdns import WILDCARD_HOSTS, own_address

    # a lone peer without mDNS: it binds every interface but sends nothing anywhere
    cfg = load_config(overrides=dict(TINY, peers=1, rounds=1, local_steps=1, topology="complete"))
    bed = run_bed(cfg, tmp_path / "bed", dict(NET, listen="0.0.0.0:0", mdns=0), timeout=90)
    host, port = json.loads((bed.peer_dir(0) / "endpoint.json").read_text())["address"].rsplit(":", 1)
    assert host not in WILDCARD_HOSTS and host == own_address() and int(port) > 0


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _ignore_sigint() -> None:
    """What a background job of a non-interactive shell (a CI script) inherits: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _kill_left_over(pids: list[int]) -> None:
    import os

    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_a_daemon_cleanly_and_ctrl_c_stops_the_whole_testbed(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "bed"
    cmd = [
        sys.executable,
        "-m",
        "peer.cli",
        "testbed",
        "--out",
        str(out),
        "--peers",
        "3",
        "--rounds",
        "500",
        "--local-steps",
        "20",
        "--topology",
        "complete",
        *functools.reduce(operator.iadd, (["--" + k.replace("_", "-"), str(v)] for k, v in TINY.items()), []),
    ]
    # started as CI starts it in the background, with SIGINT ignored: Ctrl-C must still stop it
    bed = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_ignore_sigint
    )
    pids: list[int] = []
    try:
        until = time.monotonic() + 90
        while not all((out / f"peer-{i:02d}" / "rounds.jsonl").exists() for i in range(3)):
            assert time.monotonic() < until and bed.poll() is None, "testbed did not start"
            time.sleep(0.2)
        pids += [json.loads((out / f"peer-{i:02d}" / "endpoint.json").read_text())["pid"] for i in range(3)]
        os.kill(pids[2], signal.SIGTERM)  # one daemon alone: it stops by itself, cleanly
        until = time.monotonic() + 30
        while _alive(pids[2]):
            assert time.monotonic() < until, "daemon ignored SIGTERM"
            time.sleep(0.1)
        assert "stopping at round" in (out / "peer-02" / "daemon.log").read_text()
        bed.send_signal(signal.SIGINT)  # Ctrl-C on the testbed: every daemon goes
        assert bed.wait(timeout=30) != 0
        for pid in pids:
            until = time.monotonic() + 15
            while _alive(pid):
                assert time.monotonic() < until, f"daemon {pid} left behind"
                time.sleep(0.1)
    finally:
        if bed.poll() is None:
            bed.kill()
        _kill_left_over(pids)


STOP_WITHIN_S = STOP_GRACE_S + 3.0  # the daemon's own bound, and slack for a loaded 2-core machine


def _caught_signals(pid: int) -> int:
    """The bit mask of signals the process has handlers for (/proc/PID/status SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def _wait_until(condition, proc, what: str, timeout: float = 90) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"daemon exited before {what}"
        assert time.monotonic() < until, f"daemon never reached {what}"
        time.sleep(0.05)


def _starting(proc, folder: Path) -> None:
    """Its stop handlers are installed; it is still importing torch, preparing data, loading the model."""
    _wait_until(lambda: _caught_signals(proc.pid) & (1 << (signal.SIGTERM - 1)), proc, "its stop handlers")


def _discovering(proc, folder: Path) -> None:
    """It serves and waits for a peer that never comes (discovery_wait 60 s)."""
    _wait_until(lambda: (folder / "endpoint.json").exists(), proc, "listening")
    time.sleep(2.0)


def _training(proc, folder: Path) -> None:
    """Mid-round: a lone peer trains round 0 (a few hundred steps) in its worker thread (discovery, with
    mDNS's duplicate-id window, comes before the rounds start)."""
    _wait_until(lambda: "starting at round 0" in (folder / "daemon.log").read_text(), proc, "round 0")
    time.sleep(1.0)


@pytest.mark.parametrize(
    "moment, sig, peers",
    [
        (_starting, signal.SIGINT, 2),
        (_discovering, signal.SIGTERM, 2),
        (_training, signal.SIGTERM, 1),  # one handler serves both signals: SIGINT is the starting case
    ],
    ids=["starting-sigint", "discovering-sigterm", "training-sigterm"],
)
def test_a_stop_signal_at_any_moment_ends_the_daemon_within_seconds(tmp_path, moment, sig, peers):
    import subprocess

    cfg = load_config(overrides=dict(TINY, peers=peers, rounds=50, local_steps=400, topology="complete"))
    bed = Testbed(cfg, tmp_path / "bed", dict(NET, discovery_wait=60.0))
    folder = bed.peer_dir(0)
    folder.mkdir(parents=True)
    with (folder / "daemon.log").open("ab") as log:
        # SIGINT ignored, as a daemon started in the background by a script inherits it
        proc = subprocess.Popen(
            bed.command(0),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_ignore_sigint,
            env=same_code_env(),
        )
    try:
        moment(proc, folder)
        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=STOP_WITHIN_S + 30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < STOP_WITHIN_S, f"{moment.__name__}: {took:.1f} s from {sig.name} to exit"
    assert code == 0, (folder / "daemon.log").read_text()[-2000:]
    if moment is _training:
        assert "stopping at round 0" in (folder / "daemon.log").read_text()
