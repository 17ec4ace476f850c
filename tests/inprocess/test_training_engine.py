"""The training engine of issue 11: batches of similar length from the same examples, precision, the
trained head as a mixed block, the shared evaluator, and the references a run is read against."""

from collections import Counter

import numpy as np
import pytest
import torch

from peer.algorithm.factors import HEAD, HEAD_PREFIX, A, B, factor_of
from peer.algorithm.strategies import available_strategies, make_strategy
from peer.config import ConfigError, load_config
from peer.core.run_setup import build_model, build_trainer, prepare_data
from peer.sim import simulate
from peer.sim.references import Reference, headline, load_average, parse_references, score_average_of_exports
from peer.training import precision as precision_module
from peer.training.precision import Precision, autocast, resolve_precision
from peer.training.trainer import (
    POOL_BATCHES,
    Batching,
    BatchPlan,
    Evaluator,
    LrSchedule,
    balanced_rounds,
    collate,
    learning_rate_at,
)

LENGTHS = np.random.default_rng(0).integers(5, 60, size=300)


def plan(batching: Batching, seed: int = 0) -> BatchPlan:
    return BatchPlan(len(LENGTHS), 16, LENGTHS, seed, peer_index=1, batching=batching)


def test_by_length_batches_hold_the_same_examples_as_the_random_order():
    grouped, random = plan(Batching.BY_LENGTH), plan(Batching.RANDOM)
    for pool in range(3):
        batches = range(pool * POOL_BATCHES, (pool + 1) * POOL_BATCHES)
        assert Counter(np.concatenate([grouped.batch(g) for g in batches]).tolist()) == Counter(
            np.concatenate([random.batch(g) for g in batches]).tolist()
        )


def test_every_example_is_seen_once_per_epoch():
    shard = LENGTHS[:256]  # a pool of 32 batches of 16 is exactly two epochs of it
    grouped = BatchPlan(len(shard), 16, shard, seed=0, peer_index=1, batching=Batching.BY_LENGTH)
    for pool in range(3):
        seen = Counter(
            np.concatenate([grouped.batch(g) for g in range(pool * POOL_BATCHES, (pool + 1) * POOL_BATCHES)]).tolist()
        )
        assert set(seen.values()) == {2} and len(seen) == len(shard)


def test_by_length_batches_pad_less_and_are_a_function_of_seed_and_index_only():
    def padding(p: BatchPlan) -> float:
        return float(np.mean([LENGTHS[p.batch(g)].max() * 16 - LENGTHS[p.batch(g)].sum() for g in range(64)]))

    assert padding(plan(Batching.BY_LENGTH)) < 0.2 * padding(plan(Batching.RANDOM))
    fresh = plan(Batching.BY_LENGTH)
    assert all(np.array_equal(plan(Batching.BY_LENGTH).batch(g), fresh.batch(g)) for g in (70, 3, 40))
    assert not np.array_equal(plan(Batching.BY_LENGTH, seed=1).batch(0), fresh.batch(0))


def test_balanced_rounds_deal_one_batch_of_every_cost_band_to_each_round():
    order = balanced_rounds(40, 10, np.random.default_rng(3))
    assert sorted(order) == list(range(40))
    rounds = [order[at : at + 10] for at in range(0, 40, 10)]
    assert all(sorted(b // 4 for b in r) == list(range(10)) for r in rounds)  # band = a slice of 4 batches
    # dealt forwards then backwards: every round's batches add up to within one band's spread
    assert max(sum(r) for r in rounds) - min(sum(r) for r in rounds) <= 10
    assert balanced_rounds(32, 1, np.random.default_rng(3)) == list(np.random.default_rng(3).permutation(32))


def round_costs(p: BatchPlan, steps: int, rounds: int) -> np.ndarray:
    """The padded tokens of each round of ``steps`` batches."""
    padded = [LENGTHS[p.batch(g)].max() * p.batch_size for g in range(rounds * steps)]
    return np.add.reduceat(padded, range(0, rounds * steps, steps))


def test_by_length_rounds_cost_alike_and_hold_the_random_orders_examples():
    """Rounds are synchronous: a peer's round of long batches beside another's of short ones makes the
    second wait. Dealt, the padded tokens of a round vary a few percent instead of tens."""
    dealt = BatchPlan(len(LENGTHS), 8, LENGTHS, 0, peer_index=1, round_steps=10)
    shuffled = BatchPlan(len(LENGTHS), 8, LENGTHS, 0, peer_index=1)  # rounds of one step: the batches shuffled
    spread = {
        name: float(np.std(costs) / np.mean(costs))
        for name, costs in [("dealt", round_costs(dealt, 10, 32)), ("shuffled", round_costs(shuffled, 10, 32))]
    }
    assert spread["dealt"] < 0.4 * spread["shuffled"], spread
    assert dealt.pool_batches == 40  # whole rounds
    random = BatchPlan(len(LENGTHS), 8, LENGTHS, 0, peer_index=1, batching=Batching.RANDOM, round_steps=10)
    pools = [range(pool * 40, (pool + 1) * 40) for pool in range(3)]
    assert all(
        Counter(np.concatenate([dealt.batch(g) for g in pool]).tolist())
        == Counter(np.concatenate([random.batch(g) for g in pool]).tolist())
        for pool in pools
    )


def test_auto_precision_follows_the_hardware_and_fp16_needs_cuda(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_computes_bf16_natively", lambda: True)
    assert resolve_precision("auto", cpu) is Precision.BF16
    monkeypatch.setattr(precision_module, "cpu_computes_bf16_natively", lambda: False)
    assert resolve_precision("auto", cpu) is Precision.FP32
    assert resolve_precision("bf16", cpu) is Precision.BF16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="precision"):
        load_config(overrides={"precision": "fp8"})


def test_bf16_training_keeps_the_factors_and_the_optimizer_state_in_fp32(tiny_cfg):
    tiny_cfg.precision = "bf16"
    data = prepare_data(tiny_cfg)
    model = build_model(tiny_cfg, data.task.num_labels, ["p"])
    trainer = build_trainer(tiny_cfg, model["p"], data.shards[0], 0)
    assert trainer.precision is Precision.BF16
    before = model["p"].factors()
    loss = trainer.train_round(0, frozenset({A, B}), 1)  # bf16 is emulated on CPUs without it: one step
    assert np.isfinite(loss)
    after = model["p"].factors()
    assert all(t.dtype == torch.float32 for t in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    moments = [s["exp_avg"] for s in trainer.optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    with autocast(torch.device("cpu"), Precision.BF16):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16


def test_the_evaluator_scores_as_a_plain_loop_does(tiny_cfg):
    data = prepare_data(tiny_cfg)
    model = build_model(tiny_cfg, data.task.num_labels, ["p"])
    build_trainer(tiny_cfg, model["p"], data.shards[0], 0).train_round(0, frozenset({A, B}), 3)
    model["p"].activate()
    model.peft_model.eval()
    with torch.inference_mode():
        batch = collate(data.validation, range(len(data.validation)), torch.device("cpu"))
        labels = batch.pop("labels")
        expected = float((model.peft_model(**batch).logits.argmax(-1) == labels).float().mean())
    assert Evaluator(data.validation, torch.device("cpu"), batch_size=7).accuracy(model["p"]) == pytest.approx(expected)


@pytest.mark.parametrize("name", available_strategies())
def test_a_trained_head_trains_and_mixes_in_every_round_of_every_strategy(name):
    strategy = make_strategy(name, train_head=True)
    for r in range(12):
        p = strategy.plan(r)
        assert HEAD in p.train and HEAD in p.mix
        assert p.train - {HEAD} == make_strategy(name).plan(r).train
    assert all(HEAD not in make_strategy(name).plan(r).mix for r in range(12))


def test_the_head_is_a_block_of_the_adapter_only_when_it_trains(tiny_cfg):
    tiny_cfg.train_head = 0
    data = prepare_data(tiny_cfg)
    frozen = build_model(tiny_cfg, data.task.num_labels, ["p"])["p"]
    assert frozen.block_names == (A, B)
    tiny_cfg.train_head = 1
    trained = build_model(tiny_cfg, data.task.num_labels, ["p"])["p"]
    assert trained.block_names == (A, B, HEAD)
    heads = {k: v for k, v in trained.factors([HEAD]).items()}
    assert heads and all(k.startswith(HEAD_PREFIX) and factor_of(k) == HEAD for k in heads)
    trained.activate({HEAD})
    assert all(p.requires_grad for p in trained.parameters([HEAD]))
    assert not any(p.requires_grad for p in trained.parameters([A, B]))


def test_a_trained_head_reaches_consensus_on_the_complete_graph(tiny_cfg):
    tiny_cfg.train_head, tiny_cfg.strategy, tiny_cfg.topology, tiny_cfg.references = 1, "lora", "complete", "none"
    from peer.core.run_setup import strategy_for, topology_for
    from peer.sim.simulator import _mix_round, build_peers

    topology = topology_for(tiny_cfg)
    peers = build_peers(tiny_cfg, prepare_data(tiny_cfg), strategy_for(tiny_cfg, topology))
    for p in peers:
        p.train(0)
    total = {k: sum(p.adapter.factors([HEAD])[k] for p in peers) for k in peers[0].adapter.factors([HEAD])}
    _mix_round(peers, 0, topology)
    heads = [p.adapter.factors([HEAD]) for p in peers]
    for k in total:
        assert torch.allclose(sum(h[k] for h in heads), total[k], atol=1e-5)  # the sum is kept
        assert all(torch.allclose(h[k], heads[0][k], atol=1e-6) for h in heads)  # and all agree


def test_alone_is_the_isolated_run_and_the_summary_carries_every_reference(tiny_cfg, tmp_path):
    tiny_cfg.strategy, tiny_cfg.topology, tiny_cfg.edge_prob = "lora", "er", 0.0
    tiny_cfg.eval_samples = 0
    # the references' own rate and warm-up made equal to the peers': then nothing else differs
    tiny_cfg.reference_learning_rate, tiny_cfg.lr_warmup = str(tiny_cfg.learning_rate), 0.0
    summary = simulate(tiny_cfg, out=tmp_path, progress=False)
    # each peer alone trains exactly as a peer that never mixes: same batches, same seeds
    assert summary["references"][Reference.ALONE] == pytest.approx(summary["mean_accuracy"])
    assert 0.0 <= summary["references"][Reference.CENTRALIZED] <= 1.0
    assert 0.0 <= summary["network_average"] <= 1.0
    line = headline(summary)
    assert line.startswith("alone ") and " · peers " in line and " · network average " in line
    assert line.endswith(f"centralized {summary['references']['centralized']:.3f}")


def test_the_average_of_exports_scores_as_the_average_of_the_adapters(tiny_cfg, tmp_path):
    tiny_cfg.references = "none"
    summary = simulate(tiny_cfg, out=tmp_path, progress=False)
    exports = sorted((tmp_path / "peers").glob("*/adapter"))
    assert score_average_of_exports(tiny_cfg, prepare_data(tiny_cfg), exports) == pytest.approx(
        summary["network_average"]
    )


def test_load_average_is_the_plain_mean(tiny_cfg):
    data = prepare_data(tiny_cfg)
    model = build_model(tiny_cfg, data.task.num_labels, ["x", "y", "avg"])
    model["y"].load_factors({k: v + 1.0 for k, v in model["y"].factors().items()})
    load_average(model["avg"], [model["x"], model["y"]])
    for k, v in model["avg"].factors().items():
        assert torch.allclose(v, model["x"].factors()[k] + 0.5)


def test_references_parse_and_a_bad_one_is_named():
    assert parse_references("alone,centralized") == (Reference.ALONE, Reference.CENTRALIZED)
    assert parse_references("none") == () == parse_references("")
    with pytest.raises(ConfigError, match="references: unknown reference"):
        load_config(overrides={"references": "oracle"})


def test_the_warm_up_rises_over_its_fraction_of_the_steps_then_the_schedule_takes_over():
    assert [learning_rate_at(LrSchedule.CONSTANT, 1.0, s, 40, 0.1) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert learning_rate_at(LrSchedule.LINEAR, 1.0, 10, 40, 0.1) == pytest.approx(1 - 10 / 40)
    assert learning_rate_at(LrSchedule.CONSTANT, 1.0, 0, 5, 0.1) == 1.0  # under one step of warm-up: none


def test_the_peers_warm_up_and_the_references_train_at_their_own_rate_without(tiny_cfg):
    tiny_cfg.lr_warmup, tiny_cfg.rounds, tiny_cfg.local_steps = 0.25, 8, 2  # a ramp over 4 of 16 steps
    data = prepare_data(tiny_cfg)
    model = build_model(tiny_cfg, data.task.num_labels, ["peer", "reference"])
    peer = build_trainer(tiny_cfg, model["peer"], data.shards[0], 0)
    peer.train_round(0, frozenset({A, B}), 2)  # steps 0 and 1: the last at 2/4 of the rate
    assert peer.optimizer.param_groups[0]["lr"] == pytest.approx(tiny_cfg.learning_rate / 2)
    reference = build_trainer(tiny_cfg, model["reference"], data.shards[0], 0, reference=True)
    reference.train_round(0, frozenset({A, B}), 2)
    assert reference.optimizer.param_groups[0]["lr"] == pytest.approx(tiny_cfg.learning_rate / 3**0.5)  # 3 peers


def test_a_linear_schedule_decays_to_zero_at_the_last_step_and_depends_on_the_step_alone(tiny_cfg):
    assert learning_rate_at(LrSchedule.CONSTANT, 1e-3, 50, 100) == 1e-3
    assert [learning_rate_at(LrSchedule.LINEAR, 1.0, s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    tiny_cfg.lr_schedule = "linear"
    data = prepare_data(tiny_cfg)
    model = build_model(tiny_cfg, data.task.num_labels, ["p"])
    trainer = build_trainer(tiny_cfg, model["p"], data.shards[0], 0)
    assert trainer.total_steps == tiny_cfg.rounds * tiny_cfg.local_steps
    trainer.train_round(tiny_cfg.rounds - 1, frozenset({A, B}), tiny_cfg.local_steps)  # the run's last round
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(tiny_cfg.learning_rate / trainer.total_steps)
