"""The network-namespace testbed: real hosts on one machine, a link flap and a peer restart.

Runs when the suite runs as root with network namespaces available; skipped with the reason
otherwise. Everything it creates lives inside namespaces of its own and is removed at the end.
"""

import importlib.util
import itertools
import json
import shutil
import statistics
import subprocess
import time

import pytest

from peer.config import load_config
from peer.testbed import NetnsTestbed
from peer.testbed.netns import NetnsLab, netns_available
from peer.testbed.scenario import Event, load_scenario

WHY_NOT = netns_available()
needs_netns = pytest.mark.skipif(bool(WHY_NOT), reason=f"network-namespace testbed skipped: {WHY_NOT}")

CAN_DELAY = shutil.which("iptables") is not None and importlib.util.find_spec("netfilterqueue") is not None
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


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _blackholes() -> str:
    return subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True).stdout


def test_scenario_files_are_checked(tmp_path):
    good = tmp_path / "s.toml"
    good.write_text(
        '[[event]]\nat_round = 4\naction = "kill"\npeer = 1\n'
        '[[event]]\nat_seconds = 2.5\naction = "bandwidth"\npeer = 0\nrate = "1mbit"\n'
    )
    events = load_scenario(good, peers=3)
    assert events == [Event("kill", 1, at_round=4), Event("bandwidth", 0, at_seconds=2.5, rate="1mbit")]
    for text, message in [
        ('[[event]]\nat_round = 1\naction = "explode"\npeer = 0\n', "action"),
        ('[[event]]\nat_round = 1\naction = "partition"\npeer = 0\n', "needs other"),
        ('[[event]]\nat_round = 1\naction = "loss"\npeer = 0\npercent = 120\n', "percent"),
        ('[[event]]\nat_round = 1\naction = "kill"\npeer = 7\n', "peer must be"),
        ('[[event]]\naction = "kill"\npeer = 0\n', "exactly one"),
        ('[[event]]\nat_round = 1\naction = "bandwidth"\npeer = 0\n', "rate"),
        ('[[event]]\nat_round = 1\naction = "delay"\npeer = 0\n', "delay_ms"),
        ('[[event]]\nat_round = 1\naction = "delay"\npeer = 0\ndelay_ms = 10\njitter_ms = 20\n', "jitter_ms"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_scenario(bad, peers=3)


@needs_netns
def test_lab_is_isolated_and_leaves_nothing_behind():
    lab = NetnsLab(2)
    lab.up()
    try:
        assert f"{lab.subnet}.0/24" in _blackholes()  # the root namespace cannot reach the lab
        assert lab.tag in _namespaces()
        show = ["tc", "-n", lab.bridge_ns, "qdisc", "show", "dev", f"{lab.tag}b1"]
        lab.limit_bandwidth(1, "1mbit")
        assert "tbf" in subprocess.run(show, capture_output=True, text=True).stdout
        lab.limit_bandwidth(1, None)
        assert "tbf" not in subprocess.run(show, capture_output=True, text=True).stdout
    finally:
        lab.down()
        lab.down()  # twice is harmless
    assert lab.tag not in _namespaces() and f"{lab.subnet}.0/24" not in _blackholes()


@needs_netns
@pytest.mark.slow
def test_three_peers_in_namespaces_survive_a_link_flap_and_a_restart(tmp_path):
    cfg = load_config(overrides=dict(TINY, peers=3, rounds=30, local_steps=40, topology="complete"))
    lab = NetnsLab(3)
    lab.up()
    try:
        bed = NetnsTestbed(
            cfg, tmp_path / "bed", lab, dict(discovery_wait=30.0, round_timeout_min=1.0, round_timeout_max=10.0)
        )
        events = [
            Event("link-down", 2, at_round=3),
            Event("link-up", 2, at_round=6),
            Event("kill", 1, at_round=9),
            Event("restart", 1, at_round=10),
        ]
        if CAN_DELAY:  # 40 ± 10 ms on everything peer-00 sends, for six rounds
            events += [
                Event("delay", 0, at_round=13, delay_ms=40, jitter_ms=10),
                Event("delay", 0, at_round=19, delay_ms=0),
            ]
        bed.run_all(timeout=240, events=events)
    finally:
        lab.down()
    assert lab.tag not in _namespaces() and f"{lab.subnet}.0/24" not in _blackholes()

    rounds = {i: bed.rounds(i) for i in range(3)}
    assert any(not r["neighbours"] for r in rounds[2]), "peer-02 kept its links while unplugged"
    assert all(r["neighbours"] for r in rounds[2][-3:]), "peer-02 did not reconnect"
    assert "resumed at round" in (bed.peer_dir(1) / "daemon.log").read_text()
    assert any(r["neighbours"] for r in rounds[1][12:]), "peer-01 never linked again after its restart"
    for i in range(3):
        assert json.loads((bed.peer_dir(i) / "summary.json").read_text())["rounds"] == 30
    if CAN_DELAY:
        assert all(r["neighbours"] for r in rounds[0][15:19]), "a 40 ms delay should not cut peer-00's links"


@needs_netns
@pytest.mark.skipif(shutil.which("nft") is None, reason="loss and partition faults need nftables (nft)")
def test_random_loss_and_one_way_partition_drop_what_they_should():
    import sys

    lab = NetnsLab(2)
    lab.up()

    def received(count=600):
        listener = subprocess.Popen(
            lab.wrap(
                1,
                [
                    sys.executable,
                    "-c",
                    (
                        "import socket\n"
                        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        f"s.bind(('{lab.address(1)}', 9999)); s.settimeout(1.5)\n"
                        "n=0\n"
                        "try:\n    while True: s.recv(64); n+=1\nexcept OSError: pass\n"
                        "print(n)\n"
                    ),
                ],
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.8)
        subprocess.run(
            lab.wrap(
                0,
                [
                    sys.executable,
                    "-c",
                    (
                        "import socket, time\n"
                        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        f"for i in range({count}): s.sendto(b'x', ('{lab.address(1)}', 9999)); time.sleep(0.0005)\n"
                    ),
                ],
            ),
            check=True,
        )
        return int(listener.communicate(timeout=20)[0])

    try:
        assert received() == 600
        lab.set_drop(1, 0, 30)
        assert 0.55 * 600 < received() < 0.85 * 600
        lab.set_drop(1, 0, 100)
        assert received() == 0
        lab.set_drop(1, 0, 0)
        assert received() == 600
    finally:
        lab.down()


def _tcp_round_trips(lab: NetnsLab, count: int = 40) -> list[float]:
    """Seconds per request/answer over one TCP connection from peer 0 to an echo server in peer 1."""
    import sys

    server = subprocess.Popen(
        lab.wrap(
            1,
            [
                sys.executable,
                "-c",
                (
                    "import socket\n"
                    f"s=socket.create_server(('{lab.address(1)}', 9998)); print('up', flush=True)\n"
                    "c,_=s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
                    "while (d:=c.recv(64)): c.sendall(d)\n"
                ),
            ],
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "up"
        client = subprocess.run(
            lab.wrap(
                0,
                [
                    sys.executable,
                    "-c",
                    (
                        "import socket, time\n"
                        f"c=socket.create_connection(('{lab.address(1)}', 9998))\n"
                        "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
                        f"for i in range({count}):\n"
                        "    t=time.monotonic(); c.sendall(b'ping'); c.recv(64); print(time.monotonic()-t)\n"
                    ),
                ],
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [float(x) for x in client.stdout.split()]
    finally:
        server.kill()
        server.wait()


@needs_netns
@pytest.mark.skipif(
    not CAN_DELAY,
    reason="delay needs iptables (NFQUEUE) and netfilterqueue "
    "(apt-get install libnetfilter-queue-dev; pip install netfilterqueue)",
)
def test_delay_and_jitter_hold_packets_in_order_and_come_off_cleanly():
    lab = NetnsLab(2)
    lab.up()
    try:
        assert statistics.median(_tcp_round_trips(lab)) < 0.02
        lab.set_delay(0, 60, 20)  # only peer 0's packets wait: one-way delay on each round trip
        delayed = _tcp_round_trips(lab)
        assert 0.04 <= statistics.median(delayed) <= 0.09
        assert max(delayed) - min(delayed) > 0.005, "jitter should spread the round trips"
        proc = lab.delayers[0]
        lab.set_delay(0, 0)
        assert proc.poll() is not None and 0 not in lab.delayers
        assert statistics.median(_tcp_round_trips(lab)) < 0.02
        lab.set_delay(1, 30)
        kept = lab.delayers[1]
    finally:
        lab.down()
    assert kept.poll() is not None, "down() stops the delay processes"


def test_release_times_add_delay_within_jitter_and_never_reorder():
    import random

    from peer.testbed.netdelay import release_times

    for spacing in (0.001, 0.1):  # packets far closer than the jitter, and far apart
        arrivals = [i * spacing for i in range(2000)]
        out = release_times(arrivals, delay=0.05, jitter=0.02, rng=random.Random(1))
        assert all(b >= a for a, b in itertools.pairwise(out)), "packets leave in arrival order"
        waits = [o - a for o, a in zip(out, arrivals)]
        assert min(waits) >= 0.03 - 1e-9 and max(waits) <= 0.07 + 1e-9
    assert 0.048 < statistics.mean(waits) < 0.052 and statistics.pstdev(waits) > 0.01  # uniform ±20 ms
    assert release_times(arrivals, 0.01, 0.0, random.Random(0)) == [a + 0.01 for a in arrivals]
    with pytest.raises(ValueError, match="jitter"):
        release_times(arrivals, 0.01, 0.02, random.Random(0))
