import json

import numpy as np
import pytest
import torch
from peft import PeftModel

from peer.algorithm import factor_of
from peer.core.run_setup import prepare_data, strategy_for, topology_for
from peer.sim.simulator import _mix_round, build_peers, simulate
from peer.training.adapters import _build_base


def _not_json(constant: str):
    raise AssertionError(f"{constant} in a JSON file: not JSON")


def test_simulate_writes_metrics_summary_and_loadable_adapters(tmp_path, tiny_cfg):
    summary = simulate(tiny_cfg, out=tmp_path, progress=False)
    lines = [json.loads(text) for text in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in lines] == list(range(tiny_cfg.rounds))
    for line in lines:
        assert {"round", "phase", "train_loss", "consensus_a", "consensus_b"} <= line.keys()
        assert len(line["train_loss"]) == tiny_cfg.peers
    evals = [entry for entry in lines if "accuracy" in entry]
    assert [entry["round"] for entry in evals] == [1, 3]
    assert evals[-1]["mean_accuracy"] == pytest.approx(np.mean(list(evals[-1]["accuracy"].values())))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["mean_accuracy"] == pytest.approx(summary["mean_accuracy"])
    assert on_disk["config"]["strategy"] == "tad"
    for i in range(tiny_cfg.peers):
        folder = tmp_path / "peers" / f"peer-{i:02d}" / "adapter"
        assert PeftModel.from_pretrained(_build_base("tiny-bert", 2, 0), str(folder)) is not None


def test_same_seed_same_result_and_another_seed_differs(tiny_cfg):
    first = simulate(tiny_cfg, progress=False)
    again = simulate(tiny_cfg, progress=False)
    assert first["accuracy"] == again["accuracy"]
    tiny_cfg.seed = 1
    tiny_cfg.eval_samples = 0
    other = simulate(tiny_cfg, progress=False)
    assert other["accuracy"] != first["accuracy"]


@pytest.mark.parametrize("strategy", ["lora", "tad", "rolora", "fedsa", "ffa"])
def test_each_round_mixes_exactly_the_planned_factors_and_keeps_their_sums(strategy, tiny_cfg):
    # rounds 0-2 train, 3-4 are consensus rounds: they train nothing and mix as the strategy mixes
    tiny_cfg.strategy, tiny_cfg.peers, tiny_cfg.topology, tiny_cfg.edge_prob = strategy, 5, "er", 0.6
    tiny_cfg.rounds, tiny_cfg.consensus_rounds = 3, 2
    topology = topology_for(tiny_cfg)
    strat = strategy_for(tiny_cfg, topology)
    peers = build_peers(tiny_cfg, prepare_data(tiny_cfg), strat)
    for r in range(tiny_cfg.total_rounds):
        untrained = [p.adapter.factors() for p in peers]
        losses = [p.train(r) for p in peers]
        before = [p.adapter.factors() for p in peers]
        if r >= tiny_cfg.rounds:
            assert all(np.isnan(loss) for loss in losses)
            assert all(torch.equal(u[k], b[k]) for u, b in zip(untrained, before, strict=True) for k in u)
        _mix_round(peers, r, topology)
        after = [p.adapter.factors() for p in peers]
        for key in before[0]:
            factor = factor_of(key)  # A, B, or the head (H), which trains and mixes every round by default
            total_before = sum(s[key] for s in before)
            total_after = sum(s[key] for s in after)
            assert torch.allclose(total_before, total_after, atol=1e-5)
            if factor not in strat.plan(r).mix:  # never sent: must stay exactly local
                assert all(torch.equal(b[key], a[key]) for b, a in zip(before, after))


def test_tad_frozen_factor_reaches_consensus_on_a_complete_graph(tiny_cfg):
    tiny_cfg.topology, tiny_cfg.peers = "complete", 4
    topology = topology_for(tiny_cfg)
    peers = build_peers(tiny_cfg, prepare_data(tiny_cfg), strategy_for(tiny_cfg, topology))
    for r in range(2):
        for p in peers:
            p.train(r)
        _mix_round(peers, r, topology)
        states = [p.adapter.factors() for p in peers]
        for key in states[0]:
            assert all(torch.allclose(states[0][key], s[key], atol=1e-6) for s in states)


def test_consensus_rounds_end_every_peer_at_the_network_average_on_a_complete_graph(tmp_path, tiny_cfg):
    tiny_cfg.topology, tiny_cfg.consensus_rounds = "complete", 2
    summary = simulate(tiny_cfg, out=tmp_path, progress=False)
    text = (tmp_path / "metrics.jsonl").read_text()
    lines = [json.loads(line, parse_constant=_not_json) for line in text.splitlines()]
    assert [line["round"] for line in lines] == list(range(6))
    assert summary["rounds"] == 6 and summary["consensus_rounds"] == 2
    # a consensus round trains nothing: no loss, written as null (NaN is not JSON)
    assert [any(v is None for v in line["train_loss"].values()) for line in lines] == [False] * 4 + [True] * 2
    assert set(summary["accuracy"].values()) == {summary["network_average"]}  # one mix with all: the average


@pytest.mark.slow
def test_tiny_model_learns_the_synthetic_task(tiny_cfg):
    tiny_cfg.strategy, tiny_cfg.rounds, tiny_cfg.eval_every, tiny_cfg.eval_samples = "lora", 20, 20, 0
    tiny_cfg.local_steps, tiny_cfg.batch_size = 5, 16
    tiny_cfg.topology = "complete"
    assert simulate(tiny_cfg, progress=False)["mean_accuracy"] > 0.8
