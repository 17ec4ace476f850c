"""Daemons of one run train over mutual TLS, as OS processes, and refuse a stranger found by mDNS."""

import json

import pytest

from peer.transport.tls import make_run


@pytest.mark.slow
def test_daemons_of_one_run_train_over_tls_and_refuse_a_stranger_found_by_mdns(tmp_path):
    from peer.config import load_config
    from peer.testbed import Testbed

    tiny = dict(
        model="tiny-bert",
        task="synthetic",
        batch_size=8,
        max_length=32,
        eval_samples=64,
        learning_rate=1e-2,
        device="cpu",
        peers=3,
        rounds=4,
        consensus_rounds=0,
        local_steps=2,
        topology="complete",
    )
    cfg = load_config(overrides=tiny)
    net = dict(discovery_wait=20.0, round_timeout_min=2.0, round_timeout_max=20.0)
    bed = Testbed(cfg, tmp_path / "bed", net, tls=True)
    # the stranger announces itself by mDNS as a peer of the same run, with a certificate of its own making
    make_run(tmp_path / "forged", bed.run_id, ["intruder"])
    forged = tmp_path / "forged"
    stranger = Testbed(cfg, tmp_path / "stranger", {**net, "run_id": bed.run_id})
    try:
        stranger.start(
            0,
            {
                "peer_id": "intruder",
                "tls_ca": str(forged / "ca.pem"),
                "tls_cert": str(forged / "intruder.pem"),
                "tls_key": str(forged / "intruder.key"),
            },
        )
        for i in range(3):
            bed.start(i)
        bed.wait(timeout=150)
    finally:
        bed.stop_all()
        stranger.stop_all()
    refused = 0
    for i in range(3):
        summary = json.loads((bed.peer_dir(i) / "summary.json").read_text())
        assert summary["rounds"] == 4
        refused += summary["rejected"].get("membership", 0)
        rounds = bed.rounds(i)
        assert all(set(r["neighbours"]) <= {"peer-00", "peer-01", "peer-02"} for r in rounds)
        assert sum(len(r["neighbours"]) for r in rounds) >= 4, "members should link with each other over TLS"
    assert refused >= 1, "the stranger was never refused"
    logs = "".join((bed.peer_dir(i) / "daemon.log").read_text() for i in range(3))
    assert "refused (membership) from" in logs and "intruder cannot prove membership" in logs
    assert "mutual TLS: only peers with a certificate" in logs
    assert all(not r["neighbours"] for r in stranger.rounds(0))
